"""The real OpenSearch node (tests/cluster/node.py) as session fixtures.

``opensearch_node`` is parametrized over ``$RGPL_TEST_OPENSEARCH_VERSIONS`` (default: the versions known to start
from Maven Central). A node that cannot be built here skips its tests with the reason, except under
``RGPL_REQUIRE_TEST_NODE=1`` (set by .ci/run), where that is a failure. ``opensearch_node_factory`` starts a node
with other plugins (e.g. ML Commons), one per spec and session.
"""

from __future__ import annotations

import os
import uuid

import pytest

from tests.cluster.node import DEFAULT_PLUGINS, NodeSpec, NodeUnavailable, requested_versions, start_node


def _unavailable(version: str, exc: NodeUnavailable):
    message = f"real OpenSearch node {version} unavailable: {exc}"
    if os.environ.get("RGPL_REQUIRE_TEST_NODE") == "1":
        pytest.fail(message + " (RGPL_REQUIRE_TEST_NODE=1: a missing node is a failure here)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def opensearch_node_factory():
    nodes = {}
    failures = {}

    def get(spec: NodeSpec):
        if spec in failures:
            _unavailable(spec.version, failures[spec])
        if spec not in nodes:
            try:
                nodes[spec] = start_node(spec)
            except NodeUnavailable as exc:
                failures[spec] = exc
                _unavailable(spec.version, exc)
        node = nodes[spec]
        if node.process.poll() is not None:
            raise AssertionError(f"the OpenSearch {spec.version} node died:\n{node.log_tail()}")
        return node

    yield get
    for node in nodes.values():
        node.stop()


@pytest.fixture(scope="session", params=requested_versions(), ids=lambda v: f"os{v}")
def opensearch_node(request, opensearch_node_factory):
    return opensearch_node_factory(NodeSpec(version=request.param, plugins=DEFAULT_PLUGINS))


@pytest.fixture
def os_client(opensearch_node):
    from opensearchpy import OpenSearch

    client = OpenSearch(hosts=[opensearch_node.url], timeout=60)
    yield client
    client.close()


@pytest.fixture
def index_name():
    """A fresh index name per test (the node is shared by the whole session)."""
    return f"t-{uuid.uuid4().hex[:10]}"
