"""Zero-downtime write-back on osmem-server: version index, one-call alias swap, rollback, and
failures that must leave the alias where it was; the request bodies also go through the spec."""

from __future__ import annotations

import numpy as np
import pytest
from rgpl_plugin.errors import AliasSwapError, BulkWriteError, IndexMissingError
from rgpl_plugin.opensearch import OpenSearchBackend
from rgpl_plugin.opensearch_publish import alias_state, publish_version, rollback, swap_alias, version_meta
from rgpl_plugin.version_load import encoded_vectors, space_vectors

from tests.plugin.conftest import load_corpus


@pytest.fixture(autouse=True)
def _osmem_tasks(osmem_tasks):
    pass


@pytest.fixture
def aliased(os_client, documents):
    """``corpus`` is an alias of ``corpus-v0``; space ``dense`` holds a vector per document."""
    load_corpus(os_client, "corpus-v0", documents)
    os_client.indices.update_aliases(body={"actions": [{"add": {"index": "corpus-v0", "alias": "corpus"}}]})
    backend = OpenSearchBackend(os_client, "corpus")
    vecs = np.random.default_rng(2).standard_normal((len(documents), 6)).astype(np.float32)
    backend.put_vectors("dense", [d.id for d in documents], vecs)
    return backend, vecs


@pytest.mark.parametrize("write", ["bulk", "reindex"])
def test_publish_swaps_the_alias_in_one_call_and_rolls_back(aliased, documents, spec, write):
    backend, vecs = aliased
    client = backend.client
    calls = []
    real = client.indices.update_aliases
    client.indices.update_aliases = lambda **kw: (calls.append(kw["body"]), real(**kw))[1]
    result = publish_version(backend, "dense", "v1", write=write)
    assert (result.index, result.previous, result.documents, result.vectors, result.write) == (
        "corpus-rgpl-v1", "corpus-v0", len(documents), len(documents), write)
    assert alias_state(client, "corpus") == ("alias", ["corpus-rgpl-v1"])
    assert calls == [{"actions": [{"remove": {"index": "corpus-v0", "alias": "corpus", "must_exist": True}},
                                  {"add": {"index": "corpus-rgpl-v1", "alias": "corpus"}}]}]
    spec.validate_request("POST", "/_aliases", calls[0])
    served = client.get(index="corpus", id="d4")["_source"]
    assert served["title"] == documents[4].title
    np.testing.assert_allclose(served["rgpl_vector"], vecs[4], rtol=1e-6)
    assert version_meta(client, "corpus-rgpl-v1")["previous"] == "corpus-v0"
    mapping = client.indices.get_mapping(index="corpus-rgpl-v1")["corpus-rgpl-v1"]["mappings"]
    spec.validate_request("PUT", "/corpus-rgpl-v2", {"mappings": mapping})
    settings = client.indices.get_settings(index="corpus-rgpl-v1")["corpus-rgpl-v1"]["settings"]["index"]
    assert settings["number_of_replicas"] == "0" and settings["knn"] == "true"  # replicas as the source had
    assert client.count(index="corpus-v0")["count"] == len(documents)  # the old version is kept
    with pytest.raises(AliasSwapError, match="already exists"):
        publish_version(backend, "dense", "v1")
    assert rollback(client, "corpus") == "corpus-v0"
    assert alias_state(client, "corpus") == ("alias", ["corpus-v0"])
    with pytest.raises(AliasSwapError, match="nothing to roll back"):
        rollback(client, "corpus")


def test_one_pass_publish_writes_each_document_once_with_its_source_and_vector(aliased, documents):
    backend, _ = aliased
    client = backend.client
    sent = []
    real_bulk = client.bulk
    client.bulk = lambda **kw: (sent.append(kw["body"]), real_bulk(**kw))[1]
    reindexed = []
    client.reindex = lambda **kw: reindexed.append(kw)

    def encode(texts):  # a stand-in model: deterministic in the passage text
        return np.array([[len(t), t.count("a"), t.count("e"), 1.0, -1.0, 0.5] for t in texts], dtype=np.float32)

    result = publish_version(backend, "dense", "v5", vectors=encoded_vectors(backend, encode), threads=3)
    assert not reindexed
    ops = [line for body in sent for line in body if "index" in line and len(line) == 1]
    ids = [op["index"]["_id"] for op in ops]
    assert sorted(ids) == sorted(d.id for d in documents)  # one write per document, none twice
    assert {op["index"]["_index"] for op in ops} == {"corpus-rgpl-v5"}
    assert (result.documents, result.vectors) == (len(documents), len(documents))
    served = client.get(index="corpus", id="d3")["_source"]
    assert served["text"] == documents[3].text and served["topic"] == documents[3].title.split()[0]
    np.testing.assert_allclose(served["rgpl_vector"], encode([documents[3].full_text()])[0])
    # the next version reads this one (the alias's index), whose documents carry the old vector: a document
    # the new vectors miss is served without one, never with the old model's
    v6 = publish_version(backend, "dense", "v6", vectors=lambda hits: {h["_id"]: [0.5] * 6 for h in hits
                                                                       if h["_id"] != "d2"})
    assert (v6.documents, v6.vectors) == (len(documents), len(documents) - 1)
    assert "rgpl_vector" not in client.get(index="corpus", id="d2")["_source"]
    assert client.get(index="corpus", id="d1")["_source"]["rgpl_vector"] == [0.5] * 6
    with pytest.raises(ValueError, match="write must be"):
        publish_version(backend, "dense", "v7", write="twice")
    assert not client.indices.exists(index="corpus-rgpl-v7")


def test_a_concrete_index_needs_an_explicit_takeover(os_client, documents):
    load_corpus(os_client, "plain", documents)
    backend = OpenSearchBackend(os_client, "plain")
    backend.put_vectors("dense", [d.id for d in documents], np.ones((len(documents), 4), dtype=np.float32))
    with pytest.raises(AliasSwapError, match="allow_alias_takeover=True") as info:
        publish_version(backend, "dense", 1)
    assert "DELETE" in str(info.value) and "Nothing was changed" in str(info.value)
    assert alias_state(os_client, "plain") == ("index", ["plain"])
    assert not os_client.indices.exists(index="plain-rgpl-1")
    with pytest.raises(AliasSwapError, match="concrete index"):
        swap_alias(os_client, "plain", None, "plain-rgpl-shadow-dense")
    result = publish_version(backend, "dense", 1, allow_alias_takeover=True)
    assert result.previous is None and alias_state(os_client, "plain") == ("alias", ["plain-rgpl-1"])
    assert os_client.count(index="plain")["count"] == len(documents)


def test_any_failure_leaves_the_alias_and_removes_the_half_built_version(aliased, documents):
    backend, vecs = aliased
    client = backend.client
    # the reindex path: a vector for a document the source does not have fails its update (document missing)
    backend.put_vectors("stray", ["d1", "ghost"], vecs[:2])
    with pytest.raises(BulkWriteError, match="failed"):
        publish_version(backend, "stray", "v2", write="reindex")
    assert alias_state(client, "corpus") == ("alias", ["corpus-v0"])
    assert not client.indices.exists(index="corpus-rgpl-v2")
    # the one-pass path: a document the cluster refuses (a vector of the wrong kind) is named by its id
    good = space_vectors(backend, "dense")

    def one_bad(hits):
        out = dict(good(hits))
        if "d7" in out:
            out["d7"] = "not a vector"
        return out

    with pytest.raises(BulkWriteError, match="d7") as info:
        publish_version(backend, "dense", "v2", vectors=one_bad)
    assert [f["index"]["_id"] for f in info.value.failures] == ["d7"]
    assert alias_state(client, "corpus") == ("alias", ["corpus-v0"])
    assert not client.indices.exists(index="corpus-rgpl-v2")
    # the alias moved under our feet: the swap is refused, nothing changes
    with pytest.raises(AliasSwapError, match="someone else"):
        swap_alias(client, "corpus", "corpus-other", "corpus-rgpl-shadow-dense")
    assert alias_state(client, "corpus") == ("alias", ["corpus-v0"])
    with pytest.raises(IndexMissingError):
        publish_version(backend, "never-written", "v3")
    with pytest.raises(IndexMissingError):
        swap_alias(client, "corpus", "corpus-v0", "no-such-index")
    real_reindex = client.reindex

    def reindex_fails(**kwargs):
        real_reindex(**kwargs)
        raise ConnectionResetError("connection dropped during reindex")

    client.reindex = reindex_fails
    with pytest.raises(Exception, match="connection dropped|publishing"):
        publish_version(backend, "dense", "v4", write="reindex")
    assert alias_state(client, "corpus") == ("alias", ["corpus-v0"])
    assert not client.indices.exists(index="corpus-rgpl-v4")
