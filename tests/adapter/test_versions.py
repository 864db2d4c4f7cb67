"""Versions: the promotion rule, MRR@10, retention (never the serving version), the serving pointer,
rollback, and pruning index versions only after the alias moved (osmem-server)."""

from __future__ import annotations

import pytest
from rgpl_adapt.state import FileStateStore, RunRecord
from rgpl_adapt.versions import (
    decide_promotion,
    mrr_at_k,
    next_version,
    plan_retention,
    point_current,
    promote_embedded,
    prune_cluster_indices,
    prune_embedded,
    rollback_embedded,
    rollback_target,
    version_dir,
)

from tests.plugin.conftest import osmem  # noqa: F401  (session fixture)


def test_promotion_rule():
    first = decide_promotion(0.3, None)
    assert first.promoted and "no version serves" in first.reason
    same = decide_promotion(0.495, 0.5, tolerance=0.01, serving_version=3)
    assert same.promoted and "0.4950 >= 0.5000" in same.reason
    worse = decide_promotion(0.48, 0.5, tolerance=0.01, serving_version=3)
    assert not worse.promoted and "v3 keeps serving" in worse.reason
    assert "MRR@10(new) >= MRR@10(serving) - 0.01" in worse.rule
    assert worse.to_dict()["new_mrr"] == 0.48 and worse.to_dict()["serving_mrr"] == 0.5


def test_mrr_at_10():
    rankings = [["a", "b"], ["x", "y", "pos"], ["q"] * 10 + ["late"]]
    assert mrr_at_k(rankings, ["a", "pos", "late"]) == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert mrr_at_k([], []) == 0.0


def runs(*spec):
    return [RunRecord("t", v, float(v), status=s, promoted=s == "promoted") for v, s in spec]


def test_retention_keeps_serving_and_newest_promoted():
    history = runs((1, "promoted"), (2, "promoted"), (3, "rejected"), (4, "promoted"), (5, "failed"))
    assert plan_retention(history, serving=4, keep=2) == [1, 3, 5]
    assert plan_retention(history, serving=4, keep=3) == [3, 5]
    assert plan_retention(history, serving=2, keep=1) == [1, 3, 4, 5]  # after a rollback to v2
    assert 2 not in plan_retention(history, serving=2, keep=1)
    assert plan_retention(runs((1, "promoted"), (2, "running")), serving=1, keep=1) == []
    assert next_version(history) == 6 and next_version([]) == 1
    with pytest.raises(ValueError):
        plan_retention(history, serving=4, keep=0)


def make_versions(root, store, n):
    for v in range(1, n + 1):
        version_dir(root, v).mkdir(parents=True)
        (version_dir(root, v) / "report.json").write_text("{}")
        store.put_run(RunRecord("t", v, float(v), status="promoted", promoted=True, run_dir=str(version_dir(root, v))))
        store.put_snapshot("t", v, {"d": str(v)})
        promote_embedded(store, "t", root, v)


def test_embedded_pointer_prune_and_rollback(tmp_path):
    store = FileStateStore(tmp_path / "state")
    make_versions(tmp_path, store, 3)
    assert (tmp_path / "current").resolve() == version_dir(tmp_path, 3).resolve()
    assert store.serving("t").version == 3 and store.serving("t").previous == 2
    assert prune_embedded(store, "t", tmp_path, keep=2) == [1]
    assert not version_dir(tmp_path, 1).exists() and store.snapshot("t", 1) is None
    assert store.snapshot("t", 2) == {"d": "2"}
    assert rollback_target(store, "t").version == 2
    back = rollback_embedded(store, "t", tmp_path)
    assert back.version == 2 and (tmp_path / "current").resolve().name == "v0002"
    assert version_dir(tmp_path, 3).exists()  # rolled back from, still kept
    with pytest.raises(ValueError, match="no older promoted version"):
        rollback_embedded(store, "t", tmp_path)  # v1 was pruned


def test_pointer_swap_is_a_rename(tmp_path):
    (tmp_path / "versions" / "v0001").mkdir(parents=True)
    (tmp_path / "versions" / "v0002").mkdir(parents=True)
    point_current(tmp_path, 1)
    point_current(tmp_path, 2)
    assert (tmp_path / "current").is_symlink() and (tmp_path / "current").resolve().name == "v0002"
    assert not list(tmp_path.glob(".current*"))


def test_cluster_prune_deletes_old_index_versions_never_the_live_one(osmem):  # noqa: F811
    from opensearchpy import OpenSearch

    clone = osmem.clone()
    client = OpenSearch(hosts=[clone.url], timeout=10)
    try:
        for v in (1, 2, 3):
            client.indices.create(index=f"docs-rgpl-v{v}")
        client.indices.update_aliases(body={"actions": [{"add": {"index": "docs-rgpl-v3", "alias": "docs"}}]})
        history = [RunRecord("docs", v, float(v), status="promoted", promoted=True, index_version=f"docs-rgpl-v{v}")
                   for v in (1, 2, 3)]
        assert prune_cluster_indices(client, "docs", history, serving=3, keep=2) == ["docs-rgpl-v1"]
        assert not client.indices.exists(index="docs-rgpl-v1") and client.indices.exists(index="docs-rgpl-v2")
        # the state says v2 serves but the alias still points at v3 (not moved yet): v3 survives
        assert prune_cluster_indices(client, "docs", history, serving=2, keep=1) == []
        assert client.indices.exists(index="docs-rgpl-v3")
    finally:
        client.close()
        clone.close()
