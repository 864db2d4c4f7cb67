"""Pure request bodies and mapping rules (no cluster); OpenSearch bodies also checked by the spec."""

from __future__ import annotations

import numpy as np
import pytest
from rgpl_plugin import mappings as m


def test_names_never_collide_with_the_user_index():
    assert m.shadow_index_name("corpus", "Student-R1") == "corpus-rgpl-shadow-student-r1"
    assert m.version_index_name("corpus", 3) == "corpus-rgpl-3"
    for bad in ("", "a b", "UP/per", "_hidden"):
        with pytest.raises(ValueError):
            m.shadow_index_name("corpus", bad)


@pytest.mark.parametrize(
    "available, chars, expected",
    [
        (["title", "text", "body"], None, ("title", ("text",))),
        (["body", "title"], None, ("title", ("body",))),
        (["abstract"], None, (None, ("abstract",))),
        (["title", "summary", "notes"], {"summary": 10, "notes": 500, "title": 900}, ("title", ("notes",))),
        (["summary", "notes"], {"summary": 10, "notes": 5}, (None, ("summary",))),
        (["title"], None, (None, ("title",))),
    ],
)
def test_choose_text_fields_follows_the_documented_rule(available, chars, expected):
    assert m.choose_text_fields(available, chars) == expected


def test_text_fields_of_descends_objects_and_skips_nested_and_keywords():
    props = {
        "title": {"type": "text"},
        "tag": {"type": "keyword"},
        "meta": {"properties": {"abstract": {"type": "text"}, "n": {"type": "long"}}},
        "comments": {"type": "nested", "properties": {"body": {"type": "text"}}},
    }
    assert m.text_fields_of(props) == ["title", "meta.abstract"]
    assert m.get_path({"meta": {"abstract": "x"}}, "meta.abstract") == "x"
    assert m.get_path({"meta.abstract": "flat"}, "meta.abstract") == "flat"
    assert m.get_path({"meta": "x"}, "meta.abstract") is None
    with pytest.raises(ValueError, match="text_fields"):
        m.choose_text_fields([])


def test_scores_invert_to_inner_products():
    for dot in (-3.0, -0.5, 0.0, 0.25, 2.0):
        score = dot + 1 if dot >= 0 else 1 / (1 - dot)
        assert m.dot_from_score(score) == pytest.approx(dot)


def test_opensearch_bodies_follow_the_spec(spec):
    vec = np.arange(4, dtype=np.float32)
    shadow = m.shadow_index_body(4, text_properties={"text": {"type": "text"}}, engine="faiss")
    spec.validate_request("PUT", "/corpus-rgpl-shadow-x", shadow)
    assert shadow["mappings"]["properties"]["rgpl_vector"]["method"]["engine"] == "faiss"
    version = m.version_index_body(
        {"properties": {"text": {"type": "text"}}, "_meta": {"owner": "me"}},
        {"number_of_shards": "3", "analysis": {"analyzer": {"a": {"type": "standard"}}}, "uuid": "x"},
        4, meta={"version": "v1"},
    )
    assert version["settings"]["index"]["number_of_shards"] == "3" and "uuid" not in version["settings"]["index"]
    assert version["mappings"]["_meta"] == {"owner": "me", "rgpl": {"version": "v1"}}
    spec.validate_request("PUT", "/corpus-rgpl-v1", version)
    spec.validate_request("PUT", "/_search/pipeline/p", m.normalization_pipeline(0.3))
    spec.validate_request("PUT", "/_search/pipeline/p", m.rrf_pipeline(60))
    spec.validate_request("PUT", "/x/_settings", m.after_load_settings())
    spec.validate_request("POST", "/x/_search", m.search_body(m.hybrid_query("q", ["title", "text"], "v", vec, 5), 5))
    spec.validate_request("POST", "/x/_search", m.search_body(m.exact_knn_query("v", vec), 5))
    with pytest.raises(ValueError, match="already has a field"):
        m.version_index_body({"properties": {"rgpl_vector": {"type": "text"}}}, {}, 4)
    with pytest.raises(ValueError):
        m.normalization_pipeline(1.5)
    with pytest.raises(ValueError, match="NaN"):
        m.knn_query("v", np.array([np.nan]), 1)
    with pytest.raises(ValueError, match="engine"):
        m.knn_vector_field(4, engine="nmslib")


def test_elasticsearch_bodies():
    vec = np.ones(3, dtype=np.float32)
    field = m.es_shadow_index_body(3)["mappings"]["properties"]["rgpl_vector"]
    assert field == {"type": "dense_vector", "dims": 3, "index": True, "similarity": "max_inner_product",
                     "index_options": {"type": "hnsw"}}  # float, not quantised (finding 13)
    knn = m.es_knn_section("v", vec, 10)
    assert knn["k"] == 10 and knn["num_candidates"] >= 10
    rrf = m.es_hybrid_retriever("q", ["text"], "v", vec, 5, method="rrf")
    assert [next(iter(r)) for r in rrf["rrf"]["retrievers"]] == ["standard", "knn"]
    linear = m.es_hybrid_retriever("q", ["text"], "v", vec, 5, weight=0.2)
    assert [r["weight"] for r in linear["linear"]["retrievers"]] == [0.8, 0.2]
    assert {r["normalizer"] for r in linear["linear"]["retrievers"]} == {"minmax"}
    assert "knn" not in m.version_index_body({"properties": {}}, {}, 3, es=True)["settings"]["index"]


def test_shadow_and_version_bodies_copy_analysis_and_limits_not_identity():
    """Finding 9: custom analyzers and index limits travel into shadow and version indices;
    uuid, creation_date, version, provided_name, routing and the replicas do not."""
    source = {
        "number_of_shards": "2", "number_of_replicas": "1", "uuid": "abc", "creation_date": "1",
        "provided_name": "docs", "version": {"created": "136387927"}, "routing": {"allocation": {"x": "y"}},
        "max_ngram_diff": "5", "mapping": {"total_fields": {"limit": "3000"}},
        "analysis": {"analyzer": {"grams": {"type": "custom", "tokenizer": "standard", "filter": ["g"]}},
                     "filter": {"g": {"type": "ngram", "min_gram": "2", "max_gram": "6"}}},
    }
    copied = m.copyable_index_settings(source)
    assert copied == {k: source[k] for k in ("analysis", "max_ngram_diff", "mapping")}
    flat = m.copyable_index_settings({"index.max_ngram_diff": "5", "index.mapping.total_fields.limit": "3000",
                                      "index.uuid": "abc"})
    assert flat == {"max_ngram_diff": "5", "mapping": {"total_fields": {"limit": "3000"}}}
    shadow = m.shadow_index_body(4, text_properties={"text": {"type": "text", "analyzer": "grams"}},
                                 source_settings=source)["settings"]["index"]
    assert shadow["analysis"] == source["analysis"] and shadow["max_ngram_diff"] == "5"
    assert shadow["number_of_replicas"] == 0 and "uuid" not in shadow and "routing" not in shadow
    version = m.version_index_body({"properties": {}}, source, 4)["settings"]["index"]
    assert version["analysis"] == source["analysis"] and version["mapping"]["total_fields"]["limit"] == "3000"
    assert version["number_of_shards"] == "2" and not {"uuid", "provided_name", "version", "creation_date"} & set(version)
    es = m.es_shadow_index_body(4, source_settings=source)["settings"]["index"]
    assert es["analysis"] == source["analysis"]
