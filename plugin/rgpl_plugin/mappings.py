"""Request bodies for OpenSearch and Elasticsearch, and the rules that read mappings.

Everything here is a pure function of its arguments (no client, no network), so the exact JSON
the backends send can be unit-tested and validated against the OpenSearch API specification.

Names
    A vector space ``space`` of index ``index`` lives in the shadow index
    ``f"{index}-rgpl-shadow-{space}"`` (:func:`shadow_index_name`); a serving version is
    ``f"{name}-rgpl-{version}"`` (:func:`version_index_name`). The user's index is never written.

Text fields (:func:`choose_text_fields`)
    1. Fields given by the caller win.
    2. Otherwise, among the mapping's ``text`` fields: ``title`` (if present) is the title, and the
       first of ``text``, ``body``, ``content``, ``abstract``, ``passage``, ``description`` present is
       the text.
    3. Otherwise the text field with the most characters in a sample of documents is the text
       (ties broken by name), and ``title`` is the title when it exists.

Scores
    With ``space_type: innerproduct`` OpenSearch (and Elasticsearch with ``max_inner_product``)
    turn a dot product ``d`` into ``d + 1`` when ``d >= 0`` and ``1 / (1 - d)`` otherwise;
    :func:`dot_from_score` inverts it so hits carry the raw inner product.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

TITLE_NAMES = ("title",)
TEXT_NAMES = ("text", "body", "content", "abstract", "passage", "description")
_NAME_OK = re.compile(r"^[a-z0-9][a-z0-9_.+-]*$")
DEFAULT_RANK_CONSTANT = 60


# -- names ---------------------------------------------------------------------------------------


def _check_part(kind: str, value: str) -> str:
    if not _NAME_OK.match(value) or value in (".", ".."):
        raise ValueError(
            f"{kind} {value!r} cannot be part of an index name: use lowercase letters, digits, '-', '_', '.'"
        )
    return value


def shadow_index_name(index: str, space: str) -> str:
    """The index that holds vector space ``space`` of ``index`` (never ``index`` itself)."""
    return f"{_check_part('index', index)}-rgpl-shadow-{_check_part('space', space.lower())}"


def version_index_name(name: str, version: str | int) -> str:
    """The concrete index of serving version ``version`` behind alias ``name``."""
    return f"{_check_part('name', name)}-rgpl-{_check_part('version', str(version).lower())}"


def hybrid_pipeline_name(method: str, weight: float) -> str:
    """A stable pipeline name for a fusion setting, e.g. ``rgpl-hybrid-min_max-0.30``."""
    return "rgpl-hybrid-rrf" if method == "rrf" else f"rgpl-hybrid-{method}-{weight:.2f}"


# -- mappings ------------------------------------------------------------------------------------


def text_fields_of(properties: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of the ``text`` fields in a mapping's ``properties`` (objects descended,
    ``nested`` skipped since its values are lists of objects)."""
    found: list[str] = []
    for name, spec in properties.items():
        path = f"{prefix}{name}"
        kind = spec.get("type", "object")
        if kind == "text":
            found.append(path)
        elif kind == "object" and "properties" in spec:
            found.extend(text_fields_of(spec["properties"], prefix=f"{path}."))
    return found


def choose_text_fields(
    available: Sequence[str], content_chars: Mapping[str, int] | None = None
) -> tuple[str | None, tuple[str, ...]]:
    """``(title_field, text_fields)`` picked from the ``text`` fields of a mapping (rule in the
    module docstring). ``content_chars`` maps a field to its characters in a sample of documents.
    Raises ValueError when there is no text field at all."""
    if not available:
        raise ValueError("the index mapping has no 'text' field to read passages from; pass text_fields=[...]")
    title = next((n for n in TITLE_NAMES if n in available), None)
    for name in TEXT_NAMES:
        if name in available:
            return title, (name,)
    candidates = [f for f in available if f != title] or list(available)
    chars = content_chars or {}
    best = max(sorted(candidates), key=lambda f: chars.get(f, 0))
    return (title if title != best else None), (best,)


def get_path(source: Mapping[str, Any], path: str) -> Any:
    """``source["a"]["b"]`` for ``"a.b"``; a flat key with dots wins; None when absent."""
    if path in source:
        return source[path]
    value: Any = source
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def knn_vector_field(
    dimension: int, *, engine: str = "lucene", m: int = 16, ef_construction: int = 100
) -> dict[str, Any]:
    """A ``knn_vector`` field searched by inner product with HNSW (``lucene`` or ``faiss``)."""
    if engine not in ("lucene", "faiss"):
        raise ValueError(f"engine must be 'lucene' or 'faiss' (nmslib is deprecated), not {engine!r}")
    return {
        "type": "knn_vector",
        "dimension": int(dimension),
        "method": {
            "name": "hnsw",
            "space_type": "innerproduct",
            "engine": engine,
            "parameters": {"m": int(m), "ef_construction": int(ef_construction)},
        },
    }


def shadow_index_body(
    dimension: int,
    *,
    vector_field: str = "rgpl_vector",
    text_properties: Mapping[str, Any] | None = None,
    engine: str = "lucene",
    m: int = 16,
    ef_construction: int = 100,
    shards: int = 1,
    source_settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``PUT <shadow>`` body: a k-NN index set up for loading (no replicas, no refresh), with the
    source's :func:`copyable_index_settings` so the copied text fields keep their analyzers.

    ``text_properties`` (copied from the source mapping) let the shadow index answer the
    ``hybrid`` query on its own; :func:`after_load_settings` restores the serving settings.
    """
    properties = {k: copy.deepcopy(dict(v)) for k, v in (text_properties or {}).items()}
    properties[vector_field] = knn_vector_field(dimension, engine=engine, m=m, ef_construction=ef_construction)
    index = copyable_index_settings(source_settings or {})
    index.update({"knn": True, "number_of_shards": shards, "number_of_replicas": 0, "refresh_interval": "-1"})
    return {"settings": {"index": index}, "mappings": {"properties": properties}}


def after_load_settings(replicas: int = 1, refresh_interval: str = "1s") -> dict[str, Any]:
    """``PUT <index>/_settings`` body once a load is done."""
    return {"index": {"number_of_replicas": int(replicas), "refresh_interval": refresh_interval}}


#: Index settings that describe how the source's fields are analysed, mapped and searched, and so are
#: copied into shadow and version indices (nested form, as ``GET <index>/_settings`` returns it under
#: ``settings.index``). Everything else stays behind: identity and history (``uuid``, ``creation_date``,
#: ``version``, ``provided_name``, ``history_uuid``), placement (``routing``, ``resize``, ``blocks``),
#: replicas/refresh (set for loading, then restored) and the source's own pipelines.
COPYABLE_SETTINGS = (
    "analysis",
    "similarity",
    "max_ngram_diff",
    "max_shingle_diff",
    "mapping",  # total_fields.limit, depth.limit, nested_fields.limit, field_name_length.limit, ...
    "max_result_window",
    "max_inner_result_window",
    "max_rescore_window",
    "max_docvalue_fields_search",
    "max_script_fields",
    "max_terms_count",
    "max_regex_length",
    "highlight",
    "query",  # query.default_field
)


def copyable_index_settings(source_settings: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`COPYABLE_SETTINGS` of an index's ``settings.index`` object (deep copies; a flat
    ``{"index.x.y": v}`` form is read too)."""
    nested: dict[str, Any] = {}
    for key, value in source_settings.items():
        parts = key.removeprefix("index.").split(".")
        if len(parts) == 1:
            nested[parts[0]] = value
        else:  # flat_settings form
            node = nested
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = value
    return {k: copy.deepcopy(nested[k]) for k in COPYABLE_SETTINGS if k in nested}


def version_index_body(
    source_mapping: Mapping[str, Any],
    source_settings: Mapping[str, Any],
    dimension: int,
    *,
    vector_field: str = "rgpl_vector",
    engine: str = "lucene",
    meta: Mapping[str, Any] | None = None,
    es: bool = False,
) -> dict[str, Any]:
    """``PUT <name>-rgpl-<version>`` body: the source index's mapping and analysis settings plus
    the vector field, set up for loading. ``source_mapping`` is the ``mappings`` object of
    ``GET <index>/_mapping``; ``source_settings`` the ``settings.index`` object of ``_settings``."""
    mappings = copy.deepcopy(dict(source_mapping))
    properties = mappings.setdefault("properties", {})
    # a source that is itself an earlier version (rgpl _meta) has the field: the new version replaces it
    if vector_field in properties and "rgpl" not in mappings.get("_meta", {}):
        raise ValueError(f"the source index already has a field {vector_field!r}; choose another vector_field")
    properties[vector_field] = dense_vector_field(dimension) if es else knn_vector_field(dimension, engine=engine)
    if meta:
        mappings["_meta"] = {**mappings.get("_meta", {}), "rgpl": dict(meta)}
    index: dict[str, Any] = copyable_index_settings(source_settings)
    if "number_of_shards" in source_settings:
        index["number_of_shards"] = copy.deepcopy(source_settings["number_of_shards"])
    if not es:
        index["knn"] = True
    index.update({"number_of_replicas": 0, "refresh_interval": "-1"})
    return {"settings": {"index": index}, "mappings": mappings}


# -- OpenSearch queries --------------------------------------------------------------------------


def multi_match(text: str, fields: Sequence[str]) -> dict[str, Any]:
    """The BM25 query over the text fields."""
    return {"multi_match": {"query": text, "fields": list(fields), "type": "best_fields"}}


def vector_list(vector: np.ndarray) -> list[float]:
    """A float32 vector as a JSON list (finite values only)."""
    arr = np.asarray(vector, dtype=np.float32).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise ValueError("vector contains NaN or infinite values")
    return [float(x) for x in arr]


def knn_query(field: str, vector: np.ndarray, k: int) -> dict[str, Any]:
    """Approximate k-NN query (k-NN plugin ``knn`` query)."""
    return {"knn": {field: {"vector": vector_list(vector), "k": int(k)}}}


def exact_knn_query(field: str, vector: np.ndarray) -> dict[str, Any]:
    """Exact (brute force) inner-product scoring with the k-NN ``knn_score`` script."""
    return {
        "script_score": {
            "query": {"match_all": {}},
            "script": {
                "source": "knn_score",
                "lang": "knn",
                "params": {"field": field, "query_value": vector_list(vector), "space_type": "innerproduct"},
            },
        }
    }


def search_body(query: Mapping[str, Any], size: int) -> dict[str, Any]:
    """A search body that returns ids and scores only."""
    return {"size": int(size), "query": dict(query), "_source": False}


def hybrid_query(text: str, fields: Sequence[str], vector_field: str, vector: np.ndarray, k: int) -> dict[str, Any]:
    """The neural-search ``hybrid`` query: BM25 first, k-NN second (weights follow that order)."""
    return {"hybrid": {"queries": [multi_match(text, fields), knn_query(vector_field, vector, k)]}}


def normalization_pipeline(weight: float) -> dict[str, Any]:
    """Search pipeline: min-max normalisation, weighted arithmetic mean ``[1 - weight, weight]``."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight is the dense share and must lie in [0, 1], not {weight}")
    return {
        "description": f"rgpl hybrid: min_max, arithmetic_mean, dense weight {weight:.2f}",
        "phase_results_processors": [
            {
                "normalization-processor": {
                    "normalization": {"technique": "min_max"},
                    "combination": {
                        "technique": "arithmetic_mean",
                        "parameters": {"weights": [round(1.0 - weight, 6), round(weight, 6)]},
                    },
                }
            }
        ],
    }


def rrf_pipeline(rank_constant: int = DEFAULT_RANK_CONSTANT, *, legacy_shape: bool = False) -> dict[str, Any]:
    """Search pipeline: reciprocal rank fusion (``score-ranker-processor``, OpenSearch 2.19+).

    ``rank_constant`` goes under ``combination.parameters``: that is where neural-search 2.19 reads it
    (measured on a real 2.19.1 node: under ``parameters`` a constant of 40 gives the top document
    2/41; directly under ``combination``, as the OpenAPI spec's ``ScoreRankerCombination`` has it,
    the node acknowledges the pipeline and silently keeps 60). Later neural-search versions read it
    directly under ``combination`` and reject unknown ``parameters``; ``legacy_shape=True`` builds
    that form (:func:`rgpl_plugin.opensearch_vectors.put_hybrid_pipeline` retries with it on a 400).
    The default constant (60) is not sent at all, which every version reads the same way.
    """
    combination: dict[str, Any] = {"technique": "rrf"}
    if int(rank_constant) != DEFAULT_RANK_CONSTANT:
        if legacy_shape:
            combination["rank_constant"] = int(rank_constant)
        else:
            combination["parameters"] = {"rank_constant": int(rank_constant)}
    return {
        "description": f"rgpl hybrid: reciprocal rank fusion, rank_constant {rank_constant}",
        "phase_results_processors": [{"score-ranker-processor": {"combination": combination}}],
    }


def dot_from_score(score: float) -> float:
    """The inner product behind an ``innerproduct`` / ``max_inner_product`` score."""
    return score - 1.0 if score >= 1.0 else 1.0 - 1.0 / score if score > 0 else float("-inf")


# -- Elasticsearch -------------------------------------------------------------------------------


def dense_vector_field(dimension: int) -> dict[str, Any]:
    """An Elasticsearch ``dense_vector`` searched by maximum inner product with float HNSW.

    ``index_options`` is explicit: without it Elasticsearch quantises the vectors (``int8_hnsw`` from
    8.14, ``bbq_hnsw`` from 9.1 for 384+ dimensions), which changes the scores we mine with.
    """
    return {"type": "dense_vector", "dims": int(dimension), "index": True, "similarity": "max_inner_product",
            "index_options": {"type": "hnsw"}}


def es_shadow_index_body(
    dimension: int,
    *,
    vector_field: str = "rgpl_vector",
    text_properties: Mapping[str, Any] | None = None,
    source_settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Elasticsearch shadow index (settings and mappings) set up for loading."""
    properties = {k: copy.deepcopy(dict(v)) for k, v in (text_properties or {}).items()}
    properties[vector_field] = dense_vector_field(dimension)
    index = copyable_index_settings(source_settings or {})
    index.update({"number_of_shards": 1, "number_of_replicas": 0, "refresh_interval": "-1"})
    return {"settings": {"index": index}, "mappings": {"properties": properties}}


def es_knn_section(field: str, vector: np.ndarray, k: int, num_candidates: int | None = None) -> dict[str, Any]:
    """Top-level ``knn`` search section (also the body of a ``knn`` retriever)."""
    return {
        "field": field,
        "query_vector": vector_list(vector),
        "k": int(k),
        "num_candidates": int(num_candidates or max(100, 2 * k)),
    }


def es_hybrid_retriever(
    text: str,
    fields: Sequence[str],
    vector_field: str,
    vector: np.ndarray,
    k: int,
    *,
    method: str = "min_max",
    weight: float = 0.5,
    rank_constant: int = DEFAULT_RANK_CONSTANT,
) -> dict[str, Any]:
    """``rrf`` retriever (8.14+) or ``linear`` retriever with min-max normalisation (8.18+/9.0)."""
    standard = {"standard": {"query": multi_match(text, fields)}}
    knn = {"knn": es_knn_section(vector_field, vector, k)}
    window = max(int(k), 10)
    if method == "rrf":
        return {"rrf": {"retrievers": [standard, knn], "rank_window_size": window, "rank_constant": int(rank_constant)}}
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight is the dense share and must lie in [0, 1], not {weight}")
    return {
        "linear": {
            "retrievers": [
                {"retriever": standard, "weight": round(1.0 - weight, 6), "normalizer": "minmax"},
                {"retriever": knn, "weight": round(weight, 6), "normalizer": "minmax"},
            ],
            "rank_window_size": window,
        }
    }
