"""Publishing requests on the real node: the alias swap keeps what the alias carried (finding 11)."""

from __future__ import annotations

import pytest
from rgpl_plugin.opensearch_publish import swap_alias


def test_alias_swap_carries_filter_routing_and_write_index(os_client, index_name):
    old, new, alias = f"{index_name}-a", f"{index_name}-b", f"{index_name}-live"
    for name in (old, new):
        os_client.indices.create(index=name, body={"settings": {"number_of_replicas": 0},
                                                   "mappings": {"properties": {"year": {"type": "integer"}}}})
    carried = {"filter": {"range": {"year": {"gte": 2010}}}, "index_routing": "r1", "search_routing": "r1,r2",
               "is_write_index": True}
    os_client.indices.update_aliases(body={"actions": [{"add": {"index": old, "alias": alias, **carried}}]})
    swap_alias(os_client, alias, old, new)
    got = os_client.indices.get_alias(name=alias)
    assert set(got) == {new}
    assert got[new]["aliases"][alias] == carried


def test_alias_swap_fails_whole_when_the_alias_vanished_meanwhile(os_client, index_name, monkeypatch):
    old, new, alias = f"{index_name}-a", f"{index_name}-b", f"{index_name}-live"
    for name in (old, new):
        os_client.indices.create(index=name, body={"settings": {"number_of_replicas": 0}})
    os_client.indices.update_aliases(body={"actions": [{"add": {"index": old, "alias": alias}}]})
    real = os_client.indices.update_aliases

    def racing(body, **kw):  # another process removes the alias between our check and our call
        real(body={"actions": [{"remove": {"index": old, "alias": alias}}]})
        return real(body=body, **kw)

    monkeypatch.setattr(os_client.indices, "update_aliases", racing)
    with pytest.raises(Exception, match="aliases_not_found|missing|not found"):
        swap_alias(os_client, alias, old, new)
    assert not os_client.indices.exists_alias(name=alias)  # must_exist: the add did not happen either
