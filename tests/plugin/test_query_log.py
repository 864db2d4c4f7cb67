"""Example queries from a query-log index, read through the OpenSearch backend (recording fake transport)."""

from __future__ import annotations

import pytest

from rgpl_adapt.query_style import example_queries_from_log, rank_logged_queries
from rgpl_plugin.base import BackendError
from rgpl_plugin.opensearch import OpenSearchBackend
from tests.plugin.conftest import fake_client

LOG = [  # (timestamp, query): "vitamin d bones" three times, "aspirin stroke" twice, the newest last
    ("2026-11-01T10:00:00Z", "aspirin stroke"),
    ("2026-11-02T10:00:00Z", "Vitamin D  bones"),
    ("2026-11-03T10:00:00Z", "statins"),
    ("2026-11-04T10:00:00Z", "vitamin d bones"),
    ("2026-11-05T10:00:00Z", "aspirin stroke"),
    ("2026-11-06T10:00:00Z", "vitamin d bones"),
    ("2026-11-07T10:00:00Z", "zinc colds"),
]


def _log_answers(cluster, method, path, params, body):
    """The fake's answer to a search of the query log: sorted newest first by ``@timestamp``, ``size`` hits."""
    if path != "/querylog/_search":
        return None
    store = cluster.indices["querylog"]
    ids = sorted(store, key=lambda i: store[i].get("@timestamp", ""), reverse=True)[: body.get("size", 10)]
    return 200, cluster._result([cluster._hit("querylog", i, None, body.get("_source")) for i in ids])


@pytest.fixture
def logged(fake_cluster):
    fake_cluster.indices["querylog"] = {f"l{n}": {"@timestamp": t, "query": q, "user": "u"} for n, (t, q) in enumerate(LOG)}
    fake_cluster.overrides.append(lambda *a: _log_answers(fake_cluster, *a))
    return fake_cluster


def test_rank_logged_queries_by_frequency_then_recency():
    values = ["b", "a", "A", ["c", "b"], None, 3, "  ", "d"]
    assert rank_logged_queries(values, 10) == ["b", "a", "c", "d"]
    assert rank_logged_queries(values, 1) == ["b"]


def test_most_frequent_of_the_newest_entries(spec, logged):
    backend = OpenSearchBackend(fake_client(logged, max_retries=0), "querylog")
    assert example_queries_from_log(backend.read_hits, "querylog", limit=2) == ["vitamin d bones", "aspirin stroke"]
    search = [ex for ex in logged.exchanges if ex.path == "/querylog/_search"][-1]
    assert search.body["size"] == 40 and search.body["_source"] == ["query"]
    assert search.body["sort"][0] == {"@timestamp": {"order": "desc", "unmapped_type": "date"}}
    for ex in logged.exchanges:
        spec.validate_request(ex.method, ex.path, ex.body)
        spec.validate_response(ex.method, ex.path, ex.status, ex.response)
    assert all(ex.method in ("GET", "POST") for ex in logged.exchanges)  # read only


def test_window_limits_what_is_read(logged, monkeypatch):
    from rgpl_adapt import query_style

    monkeypatch.setattr(query_style, "LOG_WINDOW_FACTOR", 1)
    backend = OpenSearchBackend(fake_client(logged, max_retries=0), "querylog")
    # only the 3 newest entries (zinc, vitamin, aspirin): each once, the newest first
    assert example_queries_from_log(backend.read_hits, "querylog", limit=3) == ["zinc colds", "vitamin d bones",
                                                                                "aspirin stroke"]


def test_wrong_field_names_the_fields_and_a_missing_index_is_a_backend_error(logged):
    backend = OpenSearchBackend(fake_client(logged, max_retries=0), "querylog")
    with pytest.raises(ValueError, match=r"no query string in field 'q'.*\['@timestamp', 'query', 'user'\]"):
        example_queries_from_log(backend.read_hits, "querylog", field="q")
    with pytest.raises(BackendError, match="no-such-log"):
        example_queries_from_log(backend.read_hits, "no-such-log")
