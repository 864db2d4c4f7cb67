"""How to reach an OpenSearch or Elasticsearch cluster, without ever leaking a secret.

:class:`ClusterSettings` is one frozen record for both engines: URLs, basic auth, an
Elasticsearch API key, TLS (CA bundle, client certificate, ``verify_certs`` on by default) and
AWS SigV4 signing for Amazon OpenSearch Service / Serverless. Build it from explicit arguments
or from the environment with :meth:`ClusterSettings.from_env`:

==========================  ===================================================
OpenSearch                  Elasticsearch
==========================  ===================================================
``OPENSEARCH_URL``          ``ELASTICSEARCH_URL`` (comma-separated for several)
``OPENSEARCH_USER``         ``ELASTICSEARCH_USER``
``OPENSEARCH_PASSWORD``     ``ELASTICSEARCH_PASSWORD``
(none)                      ``ELASTIC_API_KEY`` (or ``ELASTICSEARCH_API_KEY``)
``OPENSEARCH_CA_CERTS``     ``ELASTICSEARCH_CA_CERTS``
``OPENSEARCH_CLIENT_CERT``  ``ELASTICSEARCH_CLIENT_CERT``
``OPENSEARCH_CLIENT_KEY``   ``ELASTICSEARCH_CLIENT_KEY``
``OPENSEARCH_VERIFY_CERTS`` ``ELASTICSEARCH_VERIFY_CERTS`` (``false``/``0``/``no`` turn it off)
``OPENSEARCH_AWS_REGION``   (none; setting it turns SigV4 signing on)
``OPENSEARCH_AWS_SERVICE``  (none; ``es`` for managed domains, ``aoss`` for Serverless)
==========================  ===================================================

Secrets (password, API key, credentials embedded in a URL) are kept out of ``repr`` and out of
every message: :func:`redact` scrubs them from any text before it reaches an exception.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from rgpl_plugin.base import BackendError

Engine = Literal["opensearch", "elasticsearch"]
REDACTED = "***"
_FALSE = {"0", "false", "no", "off"}
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^@/\s]+)@")
_SECRET_FIELDS = ("password", "api_key")


def _split_url(url: str) -> tuple[str, str | None, str | None]:
    """A URL without its user-info, and the user and password it carried (if any)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None, None
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc)), parts.username, parts.password


@dataclass(frozen=True)
class ClusterSettings:
    """Everything needed to open a client; ``repr`` shows ``***`` for every secret.

    ``urls`` never hold credentials: ``https://user:pw@host:9200`` is split into a clean URL plus
    ``username``/``password`` when the settings are built.
    """

    urls: tuple[str, ...] = ("http://localhost:9200",)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)
    ca_certs: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    verify_certs: bool = True
    aws_region: str | None = None
    aws_service: str = "es"
    timeout: float = 60.0
    max_retries: int = 3

    def __post_init__(self) -> None:
        urls = (self.urls,) if isinstance(self.urls, str) else tuple(self.urls)
        if not urls:
            raise BackendError("no cluster URL given: pass urls=... or set OPENSEARCH_URL / ELASTICSEARCH_URL")
        clean, user, password = [], self.username, self.password
        for url in urls:
            if "://" not in url:
                raise BackendError(f"cluster URL {redact(url)!r} has no scheme; write http://... or https://...")
            bare, u, p = _split_url(url)
            clean.append(bare)
            user = user or u
            password = password or p
        object.__setattr__(self, "urls", tuple(clean))
        object.__setattr__(self, "username", user)
        object.__setattr__(self, "password", password)
        if self.aws_service not in ("es", "aoss"):
            raise BackendError(f"aws_service must be 'es' (managed domain) or 'aoss' (Serverless), not {self.aws_service!r}")
        if self.password is not None and self.username is None:
            raise BackendError("a password was given without a user name; set the user too")

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _SECRET_FIELDS and value is not None:
                value = REDACTED
            shown.append(f"{f.name}={value!r}")
        return f"ClusterSettings({', '.join(shown)})"

    __str__ = __repr__

    @property
    def secrets(self) -> tuple[str, ...]:
        """The secret strings these settings hold (to scrub from messages)."""
        return tuple(s for s in (self.password, self.api_key) if s)

    @classmethod
    def from_env(
        cls, engine: Engine = "opensearch", env: Mapping[str, str] | None = None, **overrides: Any
    ) -> ClusterSettings:
        """Settings from environment variables (see the module docstring); ``overrides`` win."""
        env = os.environ if env is None else env
        p = "OPENSEARCH" if engine == "opensearch" else "ELASTICSEARCH"
        values: dict[str, Any] = {}
        if env.get(f"{p}_URL"):
            values["urls"] = tuple(u.strip() for u in env[f"{p}_URL"].split(",") if u.strip())
        for key, name in (
            ("username", "USER"),
            ("password", "PASSWORD"),
            ("ca_certs", "CA_CERTS"),
            ("client_cert", "CLIENT_CERT"),
            ("client_key", "CLIENT_KEY"),
        ):
            if env.get(f"{p}_{name}"):
                values[key] = env[f"{p}_{name}"]
        if env.get(f"{p}_VERIFY_CERTS"):
            values["verify_certs"] = env[f"{p}_VERIFY_CERTS"].strip().lower() not in _FALSE
        if engine == "elasticsearch":
            key = env.get("ELASTIC_API_KEY") or env.get("ELASTICSEARCH_API_KEY")
            if key:
                values["api_key"] = key
        else:
            if env.get("OPENSEARCH_AWS_REGION"):
                values["aws_region"] = env["OPENSEARCH_AWS_REGION"]
            if env.get("OPENSEARCH_AWS_SERVICE"):
                values["aws_service"] = env["OPENSEARCH_AWS_SERVICE"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def redact(self, text: str) -> str:
        """``text`` with these settings' secrets and any URL credentials replaced by ``***``."""
        return redact(text, self.secrets)

    # -- clients -------------------------------------------------------------------------------

    def _tls_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"verify_certs": self.verify_certs}
        for name in ("ca_certs", "client_cert", "client_key"):
            value = getattr(self, name)
            if value:
                if not os.path.exists(value):
                    raise BackendError(f"{name} file {value!r} does not exist; fix the path")
                kw[name] = value
        return kw

    def opensearch_client(self, **extra: Any) -> Any:
        """An ``opensearchpy.OpenSearch`` client; ``extra`` goes to its constructor (tests pass
        ``connection_class``)."""
        from rgpl_adapt.devices import require

        opensearchpy = require("opensearchpy", extra="opensearch", package="opensearch-py")
        if self.api_key:
            raise BackendError("API keys are an Elasticsearch feature; use a user and password or AWS SigV4 for OpenSearch")
        kw: dict[str, Any] = {
            "hosts": list(self.urls),
            "timeout": self.timeout,
            "max_retries": self.max_retries,
            "retry_on_timeout": True,
            **self._tls_kwargs(),
        }
        if self.aws_region:
            boto3 = require("boto3", package="boto3")
            credentials = boto3.Session().get_credentials()
            if credentials is None:
                raise BackendError(
                    "AWS SigV4 was asked for (aws_region is set) but boto3 found no AWS credentials; "
                    "configure them (AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or an instance role)"
                )
            kw["http_auth"] = opensearchpy.AWSV4SignerAuth(credentials, self.aws_region, self.aws_service)
            kw["connection_class"] = opensearchpy.RequestsHttpConnection
        elif self.username:
            kw["http_auth"] = (self.username, self.password or "")
        kw.update(extra)
        return opensearchpy.OpenSearch(**kw)

    def elasticsearch_client(self, **extra: Any) -> Any:
        """An ``elasticsearch.Elasticsearch`` client (elasticsearch-py 8 or 9); ``extra`` goes to its
        constructor (tests pass ``node_class``)."""
        from rgpl_adapt.devices import require

        elasticsearch = require("elasticsearch", extra="elasticsearch")
        if self.aws_region:
            raise BackendError("AWS SigV4 signing is for Amazon OpenSearch Service; use OpenSearchBackend")
        kw: dict[str, Any] = {
            "hosts": list(self.urls),
            "request_timeout": self.timeout,
            "max_retries": self.max_retries,
            "retry_on_timeout": True,
            **self._tls_kwargs(),
        }
        if self.api_key:
            kw["api_key"] = self.api_key
        elif self.username:
            kw["basic_auth"] = (self.username, self.password or "")
        kw.update(extra)
        return elasticsearch.Elasticsearch(**kw)


def redact(text: str, secrets: tuple[str, ...] | list[str] = ()) -> str:
    """Replace URL user-info (``scheme://user:pw@``) and each of ``secrets`` in ``text`` by ``***``."""
    text = _URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", str(text))
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text
