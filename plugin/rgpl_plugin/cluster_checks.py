"""Checks on what kind of cluster a backend talks to, before it sends anything the cluster cannot do.

* Amazon OpenSearch Serverless (SigV4 service ``aoss``, hosts ``*.aoss.amazonaws.com``) has no
  scroll, no aliases and assigns its own ``_id`` in vector collections: refused with a clear error.
* elasticsearch-py must match the server's major: the 9 client sends ``compatible-with=9`` headers
  that an 8.x server rejects (``media_type_header_exception``).
* Elasticsearch's ``rrf`` and ``linear`` retrievers need an Enterprise or trial licence
  (``GET _license``); on another licence the backend fuses on the client.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rgpl_plugin.errors import UnsupportedClusterError, parse_version

SERVERLESS_HINT = (
    "Amazon OpenSearch Serverless is not supported: it has no scroll or aliases (so no zero-downtime "
    "publish) and vector collections assign their own document ids. Use an Amazon OpenSearch Service "
    "managed domain (aws_service='es') or a self-managed OpenSearch cluster."
)

RETRIEVER_LICENCES = ("enterprise", "trial")


def refuse_serverless(service: str | None, urls: Iterable[str] = ()) -> None:
    """Raise :class:`UnsupportedClusterError` for an OpenSearch Serverless endpoint."""
    urls = tuple(urls)
    if service == "aoss" or any(".aoss." in u for u in urls):
        raise UnsupportedClusterError(f"{', '.join(urls) or 'this endpoint'}: {SERVERLESS_HINT}")


def refuse_serverless_info(info: Any) -> None:
    """The root endpoint of a Serverless collection reports ``distribution: aoss`` (or answers nothing)."""
    version = info.get("version", {}) if isinstance(info, dict) else {}
    if str(version.get("distribution", "")).lower() == "aoss":
        raise UnsupportedClusterError(SERVERLESS_HINT)


def es_client_major() -> int | None:
    """The installed elasticsearch-py major, or None when it is not installed."""
    try:
        from elasticsearch import __versionstr__
    except ImportError:
        return None
    return parse_version(__versionstr__)[0]


def client_install_hint(server_major: int | str) -> str:
    major = int(server_major)
    return f"pip install 'elasticsearch>={major},<{major + 1}'  (or the rgpl-adapt extra elasticsearch{major})"


def check_es_client_major(server_version: str, client_major: int | None) -> None:
    """Raise when elasticsearch-py's major differs from the server's (both 8 and 9 refuse the mix)."""
    server_major = parse_version(server_version)[0]
    if client_major is not None and server_major and client_major != server_major:
        raise UnsupportedClusterError(
            f"this Elasticsearch server runs {server_version} but elasticsearch-py {client_major} is installed; "
            f"the {client_major} client sends compatible-with={client_major} headers the server rejects. "
            f"Install the matching client: {client_install_hint(server_major)}"
        )


def explain_client_mismatch(exc: BaseException) -> UnsupportedClusterError | None:
    """The clear error for a request rejected because of the client's compatibility header, else None."""
    text = f"{type(exc).__name__} {exc} {getattr(exc, 'body', '')}"
    if "media_type_header_exception" not in text and "compatible-with" not in text:
        return None
    client = es_client_major()
    server = 8 if client == 9 else 9
    return UnsupportedClusterError(
        f"the Elasticsearch server rejected elasticsearch-py {client}'s compatibility header "
        f"(media_type_header_exception): the client's major does not match the server's. Install the client "
        f"of the server's major, e.g. {client_install_hint(server)}"
    )


def licence_allows_retrievers(licence: Any) -> tuple[bool, str]:
    """``(allowed, type)`` from a ``GET _license`` answer (active Enterprise/trial only)."""
    lic = licence.get("license", {}) if isinstance(licence, dict) else {}
    kind = str(lic.get("type", "unknown")).lower()
    active = str(lic.get("status", "active")).lower() == "active"
    return kind in RETRIEVER_LICENCES and active, kind
