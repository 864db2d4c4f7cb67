"""Scheduled re-adaptation on the real node: the first ``readapt --index`` adapts and serves a version behind
the alias; with nothing changed the next run is skipped (no drift); after new documents arrive the drift passes
the threshold, a warm-started version is built, promoted, and the alias moves to an index holding every
document (new documents are written through the alias, into the serving version). The state lives in the ``--state-index`` on the node."""

from __future__ import annotations

import json

from click.testing import CliRunner
from rgpl_adapt.cli import cli

WORDS = "vitamin bone fracture calcium tumor cell therapy heart artery blood stroke memory virus immune gene".split()


def _doc(i: int) -> dict:
    return {"text": " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(12)) + f" case {i}"}


def _readapt(env: dict, args: list[str]) -> dict:
    result = CliRunner().invoke(cli, ["readapt", *args], env=env)
    assert result.exit_code in (0, 1), result.output + repr(result.exception)
    return json.loads(result.stdout[result.stdout.index("{"):])


def test_readapt_with_drift_publishes_a_new_version(opensearch_node, os_client, index_name, tmp_path,
                                                    tiny_t5, tiny_cross_encoder, tiny_student):
    alias = f"{index_name}-live"
    os_client.indices.create(index=index_name, body={"settings": {"number_of_replicas": 0},
                                                     "mappings": {"properties": {"text": {"type": "text"}}},
                                                     "aliases": {alias: {}}})
    for i in range(40):
        os_client.index(index=index_name, id=f"d{i}", body=_doc(i))
    os_client.indices.refresh(index=index_name)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"generation": {"max_query_len": 6}}))  # the random T5 writes long word salad
    env = {"OPENSEARCH_URL": opensearch_node.url, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    args = ["--index", alias, "--out", str(tmp_path / "runs"), "--state-index", f"{index_name}-state", "--json",
            "--config", str(config), "--generator", str(tiny_t5), "--teacher", str(tiny_cross_encoder),
            "--student", str(tiny_student), "--retriever", str(tiny_student), "--queries-per-passage", "1",
            "--steps", "2", "--warm-steps", "2", "--batch-size", "4", "--remine-every", "0", "--no-onnx",
            "--device", "cpu", "--scale", "cpu", "--threshold", "0.05", "--tolerance", "1.0"]

    first = _readapt(env, args)
    assert first["action"] == "promoted", first
    served = set(os_client.indices.get_alias(name=alias))
    assert len(served) == 1 and served != {index_name}
    (v1,) = served
    assert os_client.count(index=v1)["count"] == 40

    again = _readapt(env, args)
    assert again["action"] == "skipped", again  # nothing changed: no drift
    assert set(os_client.indices.get_alias(name=alias)) == {v1}

    for i in range(40, 60):  # users write through the alias, i.e. into the serving version
        os_client.index(index=alias, id=f"d{i}", body=_doc(i))
    os_client.indices.refresh(index=alias)
    second = _readapt(env, args)
    assert second["action"] == "promoted", second
    assert (second["drift"]["added"], second["drift"]["now"], second["drift"]["due"]) == (20, 60, True), second
    (v2,) = set(os_client.indices.get_alias(name=alias))
    assert v2 != v1 and os_client.count(index=v2)["count"] == 60
    assert os_client.count(index=index_name)["count"] == 40  # the original index is never written by us

    status = CliRunner().invoke(cli, ["status", "--index", alias, "--state-index", f"{index_name}-state", "--json",
                                      "--no-drift"], env=env)
    assert status.exit_code == 0, status.output
    info = json.loads(status.stdout[status.stdout.index("{"):])
    assert info["alias"]["indices"] == [v2]
