"""Errors named for what the user must do, translated from opensearch-py / elasticsearch-py.

Every public class is a :class:`rgpl_plugin.base.BackendError`, so callers that only care "the backend
failed" catch one type. :func:`translate` turns a client exception into one of these with a
message that says what to do and never carries a credential (it goes through
:func:`rgpl_plugin.connection.redact`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rgpl_plugin.base import BackendError
from rgpl_plugin.connection import redact


class ClusterUnreachableError(BackendError):
    """No node answered (connection refused, DNS, TLS handshake, timeout)."""


class ClusterAuthError(BackendError):
    """401 (bad or missing credentials) or 403 (the user lacks a permission)."""


class IndexMissingError(BackendError, KeyError):
    """The index (or alias) does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class PluginMissingError(BackendError):
    """A cluster plugin the feature needs (k-NN, neural-search) is not installed."""


class FieldMappingError(BackendError):
    """A field name does not exist in the mapping or has the wrong type."""


class VersionTooOldError(BackendError):
    """The cluster is older than the feature needs."""


class LicenseError(BackendError):
    """The cluster's licence does not include the feature (Elasticsearch ``rrf``/``linear`` retrievers)."""


class UnsupportedClusterError(BackendError):
    """A cluster kind the backend cannot work with (OpenSearch Serverless, a client of the wrong major)."""


class AliasSwapError(BackendError):
    """A zero-downtime write-back step was refused; the alias was left where it was."""


class BulkWriteError(BackendError):
    """Some documents of a bulk write failed after the retries."""

    def __init__(self, message: str, failures: list[dict] | None = None) -> None:
        super().__init__(message)
        self.failures = failures or []


class _ResponseError(Exception):
    """One failed response inside an ``_msearch`` answer (carries ``info`` like client errors, so
    :func:`translate` words it); raised and caught inside the cluster backends, never outside them."""

    def __init__(self, response: Mapping[str, Any]) -> None:
        self.info = dict(response)
        self.status_code = int(response.get("status", 500))
        err = response.get("error", {})
        super().__init__(f"{err.get('type', '')}: {err.get('reason', '')}" if isinstance(err, dict) else str(err))


def parse_version(number: str) -> tuple[int, int, int]:
    """``"2.19.1"`` -> ``(2, 19, 1)``; suffixes such as ``-SNAPSHOT`` are ignored."""
    parts = []
    for piece in str(number).split("-")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    while len(parts) < 3:
        parts.append(0)
    return parts[0], parts[1], parts[2]


def require_version(actual: str, needed: str, feature: str, engine: str = "OpenSearch") -> None:
    """Raise :class:`VersionTooOldError` when ``actual`` < ``needed``."""
    if parse_version(actual) < parse_version(needed):
        raise VersionTooOldError(
            f"{feature} needs {engine} {needed} or newer; this cluster runs {actual}. "
            "Upgrade the cluster, or choose another option (e.g. method='min_max' instead of 'rrf')."
        )


def _status(exc: BaseException) -> int | None:
    for attr in ("status_code", "status", "meta"):
        value = getattr(exc, attr, None)
        if attr == "meta" and value is not None:
            value = getattr(value, "status", None)
        if isinstance(value, int):
            return value
    return None


def _error_type_and_reason(exc: BaseException) -> tuple[str, str]:
    """The ``error.type`` and ``error.reason`` of an API error body, when there is one."""
    info: Any = getattr(exc, "info", None)
    if info is None:
        info = getattr(exc, "body", None)
    if isinstance(info, dict):
        err = info.get("error", info)
        if isinstance(err, dict):
            root = (err.get("root_cause") or [{}])[0] if isinstance(err.get("root_cause"), list) else {}
            return str(err.get("type") or root.get("type") or ""), str(err.get("reason") or root.get("reason") or "")
        return "", str(err)
    error = getattr(exc, "error", "")
    return str(error if isinstance(error, str) else ""), ""


def _is_connection_error(exc: BaseException) -> bool:
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "ConnectionError" in names or "ConnectionTimeout" in names or "SSLError" in names:
        return True
    return "TransportError" in names and _status(exc) in (None, "N/A") and "Api" not in type(exc).__name__


def translate(
    exc: BaseException,
    *,
    action: str,
    index: str | None = None,
    urls: tuple[str, ...] = (),
    secrets: tuple[str, ...] = (),
    engine: str = "OpenSearch",
) -> BackendError:
    """The :class:`BackendError` that tells the user what went wrong ``action``-ing and what to do.

    The original exception is not kept as ``__cause__`` by callers that ``raise ... from None``, so
    that a traceback cannot carry a credential either.
    """
    if isinstance(exc, BackendError):
        return exc
    where = ", ".join(urls) or "the cluster"
    status = _status(exc)
    etype, reason = _error_type_and_reason(exc)
    detail = redact(f"{etype}: {reason}" if etype or reason else str(exc), secrets)[:500]
    if status == 401:
        return ClusterAuthError(
            f"{engine} at {where} rejected the credentials while {action} (401). Check the user and password "
            f"(or API key / AWS credentials); they are not shown here."
        )
    if status == 403 and "license" in f"{etype} {reason}".lower():
        return LicenseError(
            f"{engine} at {where} refused {action} because its licence does not include it (403; not a role "
            f"permission). Start a trial or use an Enterprise licence (GET _license shows the type), or fuse on "
            f"the client. Detail: {detail}"
        )
    if status == 403:
        return ClusterAuthError(
            f"{engine} at {where} refused {action} (403: the user lacks a permission). Grant the role the "
            f"index/cluster permissions it needs for {index or 'this index'}. Detail: {detail}"
        )
    if status == 404 or etype in ("index_not_found_exception", "IndexNotFoundException"):
        return IndexMissingError(
            f"index or alias {index!r} does not exist on {where} (while {action}); check the name with "
            f"GET _cat/indices or GET _cat/aliases. Detail: {detail}"
        )
    if _is_connection_error(exc) and status is None:
        return ClusterUnreachableError(
            f"cannot reach {engine} at {where} while {action}: {redact(str(exc), secrets)[:300]}. Check that the "
            "cluster is up, the URL and port are right, and TLS settings (ca_certs, verify_certs) match the server."
        )
    if status == 429:
        return BulkWriteError(
            f"{engine} kept rejecting requests with 429 (too many requests) while {action}; lower the batch "
            "size or raise max_retries/initial_backoff, or add capacity."
        )
    return BackendError(f"{engine} failed while {action} (status {status}): {detail}")
