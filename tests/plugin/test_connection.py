"""ClusterSettings: arguments and environment, secrets redacted everywhere, clients built right."""

from __future__ import annotations

import sys
import types

import pytest
from rgpl_plugin.base import BackendError
from rgpl_plugin.connection import ClusterSettings, redact
from rgpl_plugin.errors import ClusterUnreachableError, translate


def test_repr_and_str_redact_every_secret():
    s = ClusterSettings(urls=("https://alice:s3cret-pw@search.example:9200",), api_key=None)
    assert s.urls == ("https://search.example:9200",) and (s.username, s.password) == ("alice", "s3cret-pw")
    for text in (repr(s), str(s), f"{s}", repr([s])):
        assert "s3cret-pw" not in text and "***" in text and "alice" in text
    k = ClusterSettings(urls=("http://es:9200",), api_key="ZW5jb2RlZC1rZXk=")
    assert "ZW5jb2RlZC1rZXk=" not in repr(k) and "api_key='***'" in repr(k)
    assert ClusterSettings().verify_certs is True


def test_from_env_for_both_engines():
    env = {
        "OPENSEARCH_URL": "https://os1:9200, https://os2:9200",
        "OPENSEARCH_USER": "admin",
        "OPENSEARCH_PASSWORD": "pw-123",
        "OPENSEARCH_VERIFY_CERTS": "false",
        "OPENSEARCH_AWS_REGION": "eu-west-1",
        "OPENSEARCH_AWS_SERVICE": "aoss",
        "ELASTICSEARCH_URL": "https://es:9200",
        "ELASTIC_API_KEY": "key-xyz",
    }
    os_settings = ClusterSettings.from_env("opensearch", env)
    assert os_settings.urls == ("https://os1:9200", "https://os2:9200")
    assert (os_settings.username, os_settings.password, os_settings.verify_certs) == ("admin", "pw-123", False)
    assert (os_settings.aws_region, os_settings.aws_service) == ("eu-west-1", "aoss")
    es_settings = ClusterSettings.from_env("elasticsearch", env, timeout=5)
    assert es_settings.urls == ("https://es:9200",) and es_settings.api_key == "key-xyz"
    assert es_settings.timeout == 5 and es_settings.verify_certs is True and es_settings.aws_region is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"urls": ()}, "no cluster URL"),
        ({"urls": ("search.example:9200",)}, "no scheme"),
        ({"aws_service": "lambda"}, "aws_service"),
        ({"password": "x"}, "without a user"),
    ],
)
def test_bad_settings_say_what_to_fix(kwargs, match):
    with pytest.raises(BackendError, match=match):
        ClusterSettings(**kwargs)


def test_redact_scrubs_urls_and_secrets():
    text = "failed GET https://bob:pa55@h:9200/x with key abc123 and pa55"
    out = redact(text, ("abc123", "pa55"))
    assert "pa55" not in out and "abc123" not in out and "bob" not in out and "https://***@h:9200/x" in out


def test_clients_get_tls_auth_and_the_api_key(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not a real certificate")
    s = ClusterSettings(urls=("https://u:p@localhost:9200",), ca_certs=str(ca))
    client = s.opensearch_client()
    conn = client.transport.connection_pool.connections[0]
    assert conn.host == "https://localhost:9200" and conn.use_ssl
    assert "authorization" in {k.lower() for k in conn.headers}  # basic auth header set
    with pytest.raises(BackendError, match="does not exist"):
        ClusterSettings(ca_certs=str(tmp_path / "missing.pem")).opensearch_client()
    with pytest.raises(BackendError, match="Elasticsearch feature"):
        ClusterSettings(api_key="k").opensearch_client()
    es = ClusterSettings(urls=("http://localhost:9200",), api_key="the-key").elasticsearch_client()
    assert es._headers["authorization"] == "ApiKey the-key"
    with pytest.raises(BackendError, match="SigV4"):
        ClusterSettings(aws_region="us-east-1").elasticsearch_client()


def test_aws_sigv4_uses_a_boto3_session(monkeypatch):
    from opensearchpy import AWSV4SignerAuth

    class Session:
        def get_credentials(self):
            return types.SimpleNamespace(access_key="AKIA", secret_key="secret", token=None)

    monkeypatch.setitem(sys.modules, "boto3", types.SimpleNamespace(Session=Session))
    client = ClusterSettings(urls=("https://domain.eu-west-1.es.amazonaws.com",), aws_region="eu-west-1",
                             aws_service="aoss").opensearch_client()
    auth = client.transport.kwargs["http_auth"]
    assert isinstance(auth, AWSV4SignerAuth) and auth.signer.region == "eu-west-1" and auth.service == "aoss"

    class NoCredentials:
        def get_credentials(self):
            return None

    monkeypatch.setitem(sys.modules, "boto3", types.SimpleNamespace(Session=NoCredentials))
    with pytest.raises(BackendError, match="no AWS credentials"):
        ClusterSettings(aws_region="eu-west-1").opensearch_client()
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(ImportError, match="pip install boto3"):
        ClusterSettings(aws_region="eu-west-1").opensearch_client()


def test_unreachable_cluster_error_has_no_credentials():
    import socket

    from rgpl_plugin.opensearch import OpenSearchBackend

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = ClusterSettings(urls=(f"http://admin:topsecret@127.0.0.1:{port}",), max_retries=0, timeout=2)
    with pytest.raises(ClusterUnreachableError) as info:
        OpenSearchBackend(settings, "corpus").count()
    message = str(info.value)
    assert "topsecret" not in message and f"127.0.0.1:{port}" in message and "cannot reach" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert "topsecret" not in str(translate(RuntimeError("x topsecret"), action="a", secrets=("topsecret",)))
