"""The re-adaptation state on the real node (``.rgpl-state`` index): a held lock makes ``readapt --index``
answer ``locked`` without touching the alias, and ``status --index`` shows the lock and the alias."""

from __future__ import annotations

import json

from click.testing import CliRunner
from rgpl_adapt.cli import cli
from rgpl_adapt.state import IndexStateStore, hold_lock


def test_readapt_is_locked_out_while_another_run_holds_the_lock(opensearch_node, os_client, index_name, tmp_path,
                                                                tiny_t5, tiny_cross_encoder, tiny_student):
    alias = f"{index_name}-live"
    os_client.indices.create(index=index_name, body={"settings": {"number_of_replicas": 0},
                                                     "mappings": {"properties": {"text": {"type": "text"}}},
                                                     "aliases": {alias: {}}})
    for i in range(12):
        os_client.index(index=index_name, id=f"d{i}", body={"text": f"passage {i} about topic {i % 3}"})
    os_client.indices.refresh(index=index_name)
    env = {"OPENSEARCH_URL": opensearch_node.url, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    store = IndexStateStore(os_client, index=f"{index_name}-state")
    with hold_lock(store, alias, holder="other-host:1234", ttl_s=600):
        result = CliRunner().invoke(cli, [
            "readapt", "--index", alias, "--out", str(tmp_path / "runs"), "--state-index", f"{index_name}-state",
            "--force", "--json", "--generator", str(tiny_t5), "--teacher", str(tiny_cross_encoder),
            "--student", str(tiny_student), "--steps", "2", "--scale", "cpu"], env=env)
        assert result.exit_code == 0, result.output
        outcome = json.loads(result.stdout[result.stdout.index("{"):])
        assert outcome["action"] == "locked" and "other-host:1234" in outcome["reason"]
        status = CliRunner().invoke(cli, ["status", "--index", alias, "--state-index", f"{index_name}-state",
                                          "--json", "--no-drift"], env=env)
        assert status.exit_code == 0, status.output
        info = json.loads(status.stdout[status.stdout.index("{"):])
        assert info["lock"]["holder"] == "other-host:1234"
        assert info["alias"]["indices"] == [index_name]
    assert set(os_client.indices.get_alias(name=alias)) == {index_name}  # nothing moved
    assert not [n for n in os_client.indices.get(index=f"{index_name}*") if "-rgpl-" in n]
