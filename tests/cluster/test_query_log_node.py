"""Example queries read from a query-log index on the real node, through the backend's read path and the CLI."""

from __future__ import annotations

import json

from click.testing import CliRunner
from opensearchpy.helpers import bulk
from rgpl_adapt.cli import _build_config, cli
from rgpl_adapt.query_style import example_queries_from_log
from rgpl_plugin.opensearch import OpenSearchBackend

LOG = ["aspirin stroke", "Vitamin D  bones", "statins", "vitamin d bones", "aspirin stroke", "vitamin d bones",
       "zinc colds"]  # oldest first


def _log_index(client, name, *, timestamps=True):
    props = {"query": {"type": "text", "fields": {"raw": {"type": "keyword"}}}, "user": {"type": "keyword"}}
    if timestamps:
        props["@timestamp"] = {"type": "date"}
    client.indices.create(index=name, body={"settings": {"number_of_replicas": 0}, "mappings": {"properties": props}})
    docs = [{"_index": name, "_id": f"l{n}", "query": q, "user": "u",
             **({"@timestamp": f"2026-11-0{n + 1}T10:00:00Z"} if timestamps else {})} for n, q in enumerate(LOG)]
    bulk(client, list(reversed(docs)) if timestamps else docs, refresh=True)  # written out of time order


def test_most_frequent_of_the_newest_on_the_node(os_client, index_name):
    _log_index(os_client, index_name)
    backend = OpenSearchBackend(os_client, index_name)
    assert example_queries_from_log(backend.read_hits, index_name, limit=2) == ["vitamin d bones", "aspirin stroke"]
    # a window of the 3 newest entries only (zinc 11-07, vitamin 11-06, aspirin 11-05): each once, newest first
    from rgpl_adapt import query_style

    old = query_style.LOG_WINDOW_FACTOR
    query_style.LOG_WINDOW_FACTOR = 1
    try:
        assert example_queries_from_log(backend.read_hits, index_name, limit=3) == [
            "zinc colds", "vitamin d bones", "aspirin stroke"]
    finally:
        query_style.LOG_WINDOW_FACTOR = old
    assert os_client.count(index=index_name)["count"] == len(LOG)  # read only


def test_a_log_without_timestamps_is_read_in_index_order(os_client, index_name):
    _log_index(os_client, index_name, timestamps=False)  # sorting on unmapped @timestamp must not fail
    backend = OpenSearchBackend(os_client, index_name)
    assert example_queries_from_log(backend.read_hits, index_name, limit=3) == ["Vitamin D bones", "aspirin stroke",
                                                                                 "statins"]


def test_cli_reads_the_log_into_the_config_and_the_run(opensearch_node, os_client, index_name, tmp_path, beir_dir,
                                                        tiny_t5, tiny_cross_encoder, tiny_student, monkeypatch):
    _log_index(os_client, index_name)
    monkeypatch.setenv("OPENSEARCH_URL", opensearch_node.url)
    cfg = _build_config({"example_queries_index": index_name, "example_queries_limit": 3, "scale": "cpu"})
    assert cfg.generation.example_queries == ("vitamin d bones", "aspirin stroke", "zinc colds")  # ties: newest
    bad = CliRunner().invoke(cli, ["--corpus", str(beir_dir), "--example-queries-index", index_name,
                                   "--example-queries-field", "nope"], env={"OPENSEARCH_URL": opensearch_node.url})
    assert bad.exit_code == 1 and "--example-queries-field" in bad.output and "'query'" in bad.output
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "--corpus", str(beir_dir), "--out", str(run), "--example-queries-index", index_name,
        "--generator", str(tiny_t5), "--teacher", str(tiny_cross_encoder), "--student", str(tiny_student),
        "--retriever", str(tiny_student), "--queries-per-passage", "1", "--max-query-len", "6", "--steps", "2",
        "--batch-size", "4", "--remine-every", "0", "--max-seq-len", "32", "--no-onnx", "--device", "cpu",
        "--scale", "cpu"], env={"OPENSEARCH_URL": opensearch_node.url, "HF_HUB_OFFLINE": "1"})
    assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text())["generation"]["example_queries"][0] == "vitamin d bones"
    queries = json.loads((run / "report.json").read_text())["stages"]["queries"]
    assert queries["example_queries"] == 4 and queries["style_oversample"] == 3  # 4 distinct queries
    assert queries["style_candidates"] > queries["style_kept"] == queries["queries"]
