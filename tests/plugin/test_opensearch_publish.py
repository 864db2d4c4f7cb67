"""Zero-downtime write-back on osmem-server: version index, one-call alias swap, rollback, and
failures that must leave the alias where it was; the request bodies also go through the spec."""

from __future__ import annotations

import numpy as np
import pytest
from rgpl_plugin.errors import AliasSwapError, BulkWriteError, IndexMissingError
from rgpl_plugin.opensearch import OpenSearchBackend
from rgpl_plugin.opensearch_publish import alias_state, publish_version, rollback, swap_alias, version_meta

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


def test_publish_swaps_the_alias_in_one_call_and_rolls_back(aliased, documents, spec):
    backend, vecs = aliased
    client = backend.client
    calls = []
    real = client.indices.update_aliases
    client.indices.update_aliases = lambda **kw: (calls.append(kw["body"]), real(**kw))[1]
    result = publish_version(backend, "dense", "v1")
    assert (result.index, result.previous, result.documents, result.vectors) == (
        "corpus-rgpl-v1", "corpus-v0", len(documents), len(documents))
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
    # a vector for a document the source does not have: the bulk update fails (document missing)
    backend.put_vectors("stray", ["d1", "ghost"], vecs[:2])
    with pytest.raises(BulkWriteError, match="failed"):
        publish_version(backend, "stray", "v2")
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
        publish_version(backend, "dense", "v4")
    assert alias_state(client, "corpus") == ("alias", ["corpus-v0"])
    assert not client.indices.exists(index="corpus-rgpl-v4")
