"""The cluster miner's recall check on the real node: lucene HNSW against the k-NN plugin's exact script_score."""

from __future__ import annotations

import numpy as np
from rgpl_adapt.neighbours import measure_backend
from rgpl_plugin.opensearch import OpenSearchBackend


def test_recall_of_the_engines_hnsw_is_measured(os_client, index_name):
    os_client.indices.create(index=index_name, body={"settings": {"number_of_replicas": 0},
                                                     "mappings": {"properties": {"text": {"type": "text"}}}})
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((300, 16)).astype(np.float32)
    ids = [f"d{i}" for i in range(len(vectors))]
    for doc_id in ids:
        os_client.index(index=index_name, id=doc_id, body={"text": f"passage {doc_id}"})
    os_client.indices.refresh(index=index_name)
    backend = OpenSearchBackend(os_client, index_name)
    try:
        backend.put_vectors("s", ids, vectors)
        report = measure_backend(backend, "s", rng.standard_normal((250, 16)).astype(np.float32), 10)
    finally:
        backend.drop_vectors("s")
    assert report.method == "backend" and report.recall_sample == 200, report
    assert 0.9 <= report.recall_at_k <= 1.0  # 300 vectors: HNSW is nearly exact
