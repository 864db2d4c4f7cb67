"""``rgpl-adapt --index`` end to end with tiny models.

* Against the recording fake cluster (cluster miner, --register-model): every request and
  response checked against the OpenSearch API spec; the run leaves a version index behind the
  alias with the hybrid search pipeline as its default, the ML Commons model and ingest
  pipeline, and no shadow index or temporary pipeline.
* Against osmem-server (local miner): reading, BM25, local vectors, versioned publish and alias
  swap; osmem has no search pipelines, so the first publish fails with a clear error and leaves
  the alias, and the rerun with --no-search-pipeline publishes; then rollback.
* Secrets never reach the output or any file of the run folder; a concrete index is refused
  without --allow-alias-takeover, with an explanation.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from rgpl_adapt.cli import cli
from rgpl_plugin.connection import ClusterSettings

from tests.plugin.conftest import load_corpus, osmem, osmem_tasks  # noqa: F401  (fixtures)
from tests.plugin.test_ml_commons import ServingFake, serving_client, validate_exchanges

PASSWORD = "Sup3r-S3cret-pw"


@pytest.fixture(scope="module")
def spec():
    from tests.plugin.spec import OpenSearchSpec

    try:
        return OpenSearchSpec()
    except FileNotFoundError as exc:
        pytest.skip(f"the OpenSearch API spec (../shared/opensearch-api-spec) is not beside the repository: {exc}")


def train_args(tiny_t5, tiny_cross_encoder, tiny_student, *extra) -> list[str]:
    return [
        "--generator",
        str(tiny_t5),
        "--teacher",
        str(tiny_cross_encoder),
        "--student",
        str(tiny_student),
        "--retriever",
        str(tiny_student),
        "--queries-per-passage",
        "2",
        "--steps",
        "4",
        "--batch-size",
        "4",
        "--remine-every",
        "2",
        "--max-seq-len",
        "32",
        "--checkpoint-every",
        "4",
        "--warmup-steps",
        "1",
        "--device",
        "cpu",
        "--scale",
        "cpu",
        *extra,
    ]


def env(url: str) -> dict[str, str]:
    return {
        "OPENSEARCH_URL": url,
        "OPENSEARCH_USER": "adapter",
        "OPENSEARCH_PASSWORD": PASSWORD,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


def assert_no_secret(run: Path, *outputs: str) -> None:
    for text in outputs:
        assert PASSWORD not in text
    for path in run.rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path


# -- the recording fake: cluster miner, ML Commons ---------------------------------------------


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory, documents, tiny_t5, tiny_cross_encoder, tiny_student):
    cluster = ServingFake(docs=documents, index="corpus-v0", aliases={"corpus": "corpus-v0"})
    run = tmp_path_factory.mktemp("fake") / "run"
    mp = pytest.MonkeyPatch()
    seen_auth = []

    def client(self, **extra):
        seen_auth.append((self.username, self.password))
        return serving_client(cluster)

    mp.setattr(ClusterSettings, "opensearch_client", client)
    mp.setattr("rgpl_plugin.ml_commons.time.sleep", lambda s: None)
    args = [
        "--index",
        "corpus",
        "--out",
        str(run),
        "--register-model",
        "--publish-version",
        "v1",
        *train_args(tiny_t5, tiny_cross_encoder, tiny_student),
    ]
    result = CliRunner().invoke(cli, args, env=env("https://search.example:9200"))
    mp.undo()
    assert result.exit_code == 0, result.output + repr(result.exception)
    return cluster, run, result, seen_auth


def test_fake_run_publishes_behind_the_alias_with_the_hybrid_pipeline(fake_run):
    cluster, run, result, seen_auth = fake_run
    assert seen_auth and seen_auth[0] == ("adapter", PASSWORD)  # the credentials reached the client
    assert cluster.aliases == {"corpus": "corpus-rgpl-v1"}
    assert set(cluster.indices) == {"corpus-v0", "corpus-rgpl-v1"}  # shadow indices are gone
    served = cluster.indices["corpus-rgpl-v1"]
    assert set(served) == set(cluster.indices["corpus-v0"])
    assert all(len(doc["rgpl_vector"]) == 32 and doc["title"] for doc in served.values())
    report = json.loads((run / "report.json").read_text())
    info = report["cluster"]
    assert info["index"] == "corpus-rgpl-v1" and info["previous"] == "corpus-v0" and info["alias"] == "corpus"
    assert info["search_pipeline"] == "corpus-rgpl-v1-hybrid" and info["model_id"] == "model-1"
    assert info["urls"] == ["https://search.example:9200"] and info["miner"] == "cluster"
    weight = info["hybrid_weight"]
    assert weight == report["stages"]["serve"]["hybrid_weight"] and 0.0 <= weight <= 1.0
    serve = json.loads((run / "serve" / "manifest.json").read_text())["outputs"]["cluster"]
    assert serve["version"] == "v1" and serve["search_pipeline"] == info["search_pipeline"]
    # the only pipelines left are the served ones (the weight sweep's were removed)
    assert set(cluster.pipelines) == {"corpus-rgpl-v1-hybrid"}
    pipeline = cluster.pipelines["corpus-rgpl-v1-hybrid"]
    weights = pipeline["phase_results_processors"][0]["normalization-processor"]["combination"]["parameters"][
        "weights"
    ]
    assert weights == [round(1 - weight, 6), round(weight, 6)]
    assert pipeline["request_processors"][0]["neural_query_enricher"]["default_model_id"] == "model-1"
    assert cluster.settings["corpus-rgpl-v1"]["search.default_pipeline"] == "corpus-rgpl-v1-hybrid"
    assert cluster.settings["corpus-rgpl-v1"]["default_pipeline"] == "corpus-rgpl-v1-embed"
    assert "text_embedding" in json.dumps(cluster.ingest["corpus-rgpl-v1-embed"])
    assert "serving: alias corpus -> corpus-rgpl-v1" in result.output
    assert_no_secret(run, result.output)


def test_fake_run_requests_follow_the_spec_and_never_write_the_user_index(fake_run, spec):
    cluster, _, _, _ = fake_run
    seen = validate_exchanges(spec, cluster.exchanges)
    assert {
        "create_pit",
        "msearch",
        "bulk",
        "indices.update_aliases",
        "search_pipeline.put",
        "ingest.put_pipeline",
        "ml.register_model_meta",
        "ml.upload_chunk",
        "ml.deploy_model",
    } <= seen
    assert "reindex" not in seen  # the version is written in one bulk pass: every document once
    version_writes = [line["index"]["_id"] for ex in cluster.exchanges if ex.path == "/_bulk"
                      for line in ex.body[::2] if line.get("index", {}).get("_index") == "corpus-rgpl-v1"]
    assert len(version_writes) == len(set(version_writes)) == len(cluster.docs)
    shadows = {
        ex.path.strip("/")
        for ex in cluster.exchanges
        if ex.method == "PUT" and "-rgpl-shadow-" in ex.path and "/" not in ex.path.strip("/")
    }
    assert {"corpus-rgpl-shadow-dense", "corpus-rgpl-shadow-student-r1"} <= shadows
    assert any(s.startswith("corpus-rgpl-shadow-miner-") for s in shadows)
    deleted = {
        ex.path.strip("/") for ex in cluster.exchanges if ex.method == "DELETE" and "shadow" in ex.path
    }
    assert shadows <= deleted
    for ex in cluster.exchanges:
        target = ex.path.strip("/").split("/")[0]
        if target in ("corpus", "corpus-v0") and ex.method in ("PUT", "DELETE"):
            raise AssertionError(f"the user's index was written: {ex.method} {ex.path}")
        if ex.path == "/_bulk":
            assert all(
                line[next(iter(line))]["_index"] not in ("corpus", "corpus-v0") for line in ex.body[::2]
            )
    swap = [ex.body for ex in cluster.exchanges if ex.path == "/_aliases"]
    assert swap == [
        {
            "actions": [
                {"remove": {"index": "corpus-v0", "alias": "corpus", "must_exist": True}},
                {"add": {"index": "corpus-rgpl-v1", "alias": "corpus"}},
            ]
        }
    ]
    # the pipelines were in place before the alias moved
    order = [ex.path for ex in cluster.exchanges]
    assert order.index("/_search/pipeline/corpus-rgpl-v1-hybrid") < order.index("/_aliases")


def test_search_index_embeds_the_query_client_side(fake_run, monkeypatch):
    cluster, run, _, _ = fake_run
    monkeypatch.setattr(ClusterSettings, "opensearch_client", lambda self, **kw: serving_client(cluster))
    before = len(cluster.exchanges)
    r = CliRunner().invoke(
        cli,
        ["search", "--index", "corpus", "--run", str(run), "--json", "-k", "3", "vitamin bone"],
        env=env("https://search.example:9200"),
    )
    assert r.exit_code == 0, r.output + repr(r.exception)
    hits = json.loads(r.output)
    assert len(hits) == 3 and all(h["id"].startswith("d") and h["text"] for h in hits)
    ex = cluster.exchanges[before]
    assert ex.path == "/corpus/_search" and ex.params["search_pipeline"] == "corpus-rgpl-v1-hybrid"
    knn = ex.body["query"]["hybrid"]["queries"][1]["knn"]["rgpl_vector"]
    assert len(knn["vector"]) == 32 and np.isfinite(knn["vector"]).all()


# -- osmem-server: local miner, publish, failure, rollback --------------------------------------


def test_osmem_local_miner_publish_failure_then_publish_and_rollback(
    osmem_tasks,
    osmem,  # noqa: F811
    documents,
    tmp_path,
    tiny_t5,
    tiny_cross_encoder,
    tiny_student,
):
    from opensearchpy import OpenSearch

    clone = osmem.clone()
    client = OpenSearch(hosts=[clone.url], timeout=10)
    try:
        load_corpus(client, "docs-v0", documents)
        client.indices.update_aliases(body={"actions": [{"add": {"index": "docs-v0", "alias": "docs"}}]})
        run = tmp_path / "run"
        base = [
            "--index",
            "docs",
            "--out",
            str(run),
            "--miner",
            "local",
            "--publish-version",
            "v1",
            *train_args(tiny_t5, tiny_cross_encoder, tiny_student),
        ]
        first = CliRunner().invoke(cli, base, env=env(clone.url))
        # osmem has no search pipelines: the publish fails before the swap, with the plugin named
        assert first.exit_code == 1, first.output
        assert "neural-search" in first.output or "search pipeline" in first.output
        assert client.indices.get_alias(name="docs") == {"docs-v0": {"aliases": {"docs": {}}}}
        assert not client.indices.exists(index="docs-rgpl-v1")
        assert not client.indices.exists(index="docs-rgpl-shadow-dense")  # removed on failure too
        assert not any(p.is_dir() for p in (run / "vectors").glob("*"))  # local spaces too
        assert (run / "train" / "manifest.json").exists() and not (run / "serve" / "manifest.json").exists()

        second = CliRunner().invoke(cli, [*base, "--no-search-pipeline"], env=env(clone.url))
        assert second.exit_code == 0, second.output + repr(second.exception)
        assert "[train] skipped" in second.output and "[serve] done" in second.output
        assert client.indices.get_alias(name="docs") == {"docs-rgpl-v1": {"aliases": {"docs": {}}}}
        assert client.count(index="docs")["count"] == len(documents)
        served = client.get(index="docs", id="d7")["_source"]
        assert served["title"] == documents[7].title and len(served["rgpl_vector"]) == 32
        from rgpl_adapt.pipeline import load_encoder

        expected = load_encoder(run / "export").encode([documents[7].full_text()])[0]
        got = np.asarray(served["rgpl_vector"])  # written by the corpus path (torch bf16 on bf16 CPUs)
        assert float(got @ expected / np.linalg.norm(got) / np.linalg.norm(expected)) > 0.9999
        assert sorted(client.indices.get(index="docs*")) == ["docs-rgpl-v1", "docs-v0"]  # no shadow left
        info = json.loads((run / "report.json").read_text())["cluster"]
        assert info["miner"] == "local" and info["previous"] == "docs-v0" and "search_pipeline" not in info
        assert_no_secret(run, first.output, second.output)

        bm25 = CliRunner().invoke(
            cli,
            ["search", "--index", "docs", "--run", str(run), "--mode", "bm25", "--json", "vitamin calcium"],
            env=env(clone.url),
        )
        assert bm25.exit_code == 0, bm25.output
        assert json.loads(bm25.output)[0]["title"].startswith("vitamin")

        back = CliRunner().invoke(cli, ["rollback", "--index", "docs"], env=env(clone.url))
        assert back.exit_code == 0, back.output
        assert "docs-rgpl-v1 -> docs-v0" in back.output
        assert client.indices.get_alias(name="docs") == {"docs-v0": {"aliases": {"docs": {}}}}
        assert client.indices.exists(index="docs-rgpl-v1")  # kept
        again = CliRunner().invoke(cli, ["rollback", "--index", "docs"], env=env(clone.url))
        assert again.exit_code == 1 and "nothing to roll back" in again.output
    finally:
        client.close()
        clone.close()


def test_concrete_index_is_refused_with_an_explanation(osmem, documents, tmp_path):  # noqa: F811
    from opensearchpy import OpenSearch

    clone = osmem.clone()
    client = OpenSearch(hosts=[clone.url], timeout=10)
    try:
        load_corpus(client, "plain", documents)
        r = CliRunner().invoke(cli, ["--index", "plain", "--out", str(tmp_path / "r")], env=env(clone.url))
        assert r.exit_code == 2, r.output
        for words in (
            "concrete index",
            "--alias NAME",
            "--allow-alias-takeover",
            "DELETE",
            "Nothing was changed",
        ):
            assert words in r.output
        assert not (tmp_path / "r").exists() and PASSWORD not in r.output
        assert sorted(client.indices.get(index="plain*")) == ["plain"]
    finally:
        client.close()
        clone.close()


def test_connection_errors_and_usage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(
        cli,
        ["--index", "docs", "--url", "http://127.0.0.1:9", "--miner", "local"],
        env={**env("http://127.0.0.1:9"), "OPENSEARCH_URL": ""},
    )
    assert r.exit_code == 1 and "cannot reach" in r.output and PASSWORD not in r.output
    r = CliRunner().invoke(
        cli,
        [
            "--index",
            "docs",
            "--url",
            f"https://admin:{PASSWORD}@h:9200",
            "--insecure",
            "--query",
            "{not json",
        ],
        env={},
    )
    assert r.exit_code == 2 and "--query" in r.output and PASSWORD not in r.output
    assert "verification is OFF" in r.output
    cfg = tmp_path / "cluster.json"
    cfg.write_text(json.dumps({"url": "http://h:9200", "passwrd": "x"}))
    r = CliRunner().invoke(cli, ["--index", "docs", "--cluster-config", str(cfg)], env={})
    assert r.exit_code == 2 and "passwrd" in r.output
    r = CliRunner().invoke(cli, ["--corpus", str(tmp_path), "--text-field", "a", "--text-field", "b"], env={})
    assert r.exit_code == 2 and "--text-field" in r.output
