"""Serving an adapted cluster index: publishing it, and querying what was published.

:class:`ClusterPublisher` is the serve stage's cluster half (the pipeline's ``publisher``): the final vectors
of *every* document of the index go into a new version index ``<alias>-rgpl-<version>`` behind the alias
(:func:`rgpl_plugin.opensearch_publish.publish_version`: zero downtime, the alias only moves when everything
is verified). Before the swap it creates the hybrid search pipeline with the weight chosen on held-out pseudo
queries and makes it the new index's ``index.search.default_pipeline`` (OpenSearch); with ``register_model``
it also uploads the ONNX model to ML Commons and sets a ``text_embedding`` ingest pipeline
(:mod:`rgpl_plugin.ml_commons`). Elasticsearch has no search pipelines: the report records the retriever body
to send instead (:func:`es_retriever_template`).

After the run, :func:`read_cluster_report` reads what was published from the run's report.json and
:func:`search_index` queries the served index (or alias) with the run's fields
(``rgpl-adapt search --index``).

The adaptation itself (:class:`~rgpl_adapt.cluster.ClusterBackend`, :func:`~rgpl_adapt.cluster.adapt_index`)
is in :mod:`rgpl_adapt.cluster`, which re-exports these names.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from rgpl_plugin import mappings as m
from rgpl_plugin.base import BackendError, Document
from rgpl_plugin.connection import ClusterSettings, Engine

from rgpl_adapt.progress import ProgressFactory, silent
from rgpl_adapt.runfolder import DENSE_SPACE

if TYPE_CHECKING:  # rgpl_adapt.cluster imports this module
    from rgpl_adapt.cluster import ClusterBackend, ClusterOptions

__all__ = [
    "ClusterPublisher",
    "default_version",
    "es_retriever_template",
    "read_cluster_report",
    "search_index",
]

log = logging.getLogger("rgpl_adapt.cluster")


def _hybrid_pipeline_body(weight: float, model_id: str | None) -> dict[str, Any]:
    body = m.normalization_pipeline(weight)
    if model_id:
        from rgpl_plugin.ml_commons import neural_query_enricher

        body["request_processors"] = [neural_query_enricher(model_id)]
    return body


def default_version() -> str:
    """A new version name: ``v`` + UTC time to the second (sorts by age, valid in index names)."""
    return "v" + time.strftime("%Y%m%d%H%M%S", time.gmtime())


@dataclass
class ClusterPublisher:
    """Publishes the serve stage's ``dense`` space as a new version behind the alias."""

    backend: ClusterBackend
    options: ClusterOptions
    run_dir: Path
    settings: ClusterSettings | None = None
    progress: ProgressFactory = silent
    published: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> dict[str, Any]:
        return self.options.fingerprint()

    def documents(self) -> Iterator[Document]:
        """Every document of the index (no query, no sample): all of them get a served vector."""
        if self.options.query is None:
            yield from self.backend.source.iter_documents()
            return
        from rgpl_adapt.cluster import open_backend  # that module imports this one

        reader = open_backend(self.backend.source.client, self.options, query=False)
        yield from reader.iter_documents()

    def describe(self) -> dict[str, Any]:
        """Cluster facts for report.json (never a credential: URLs are stored without user-info)."""
        src = self.backend.source
        title, texts = src.fields()
        return {
            "engine": self.options.engine,
            "urls": list(self.settings.urls) if self.settings else [],
            "index": self.options.index,
            "miner": self.options.miner,
            "sample": self.options.sample,
            "title_field": title,
            "text_fields": list(texts),
            "vector_field": src.vector_field,
            **self.published,
        }

    def publish(self, export_dir: Path, weights: dict[str, Any]) -> dict[str, Any]:
        """Publish ``dense`` (already written by the serve stage); returns what was created."""
        opts = self.options
        src = self.backend.source
        weight = float(weights.get("hybrid_weight", 0.5))
        if not opts.publish:
            self.published = {"published": False, "hybrid_weight": weight}
            return self.published
        from rgpl_plugin.opensearch_publish import publish_version

        alias = opts.alias or opts.index
        version = (opts.version or default_version()).lower()
        target_name = m.version_index_name(alias, version)
        info: dict[str, Any] = {
            "published": True,
            "alias": alias,
            "version": version,
            "hybrid_weight": weight,
        }
        model = self._register_model(export_dir, target_name) if opts.register_model else None
        if model is not None:
            info.update(
                model_id=model.model_id, model_group_id=model.model_group_id, model_sha256=model.sha256
            )
        es = opts.engine == "elasticsearch"

        def before_swap(target: str) -> None:
            if es or not opts.search_pipeline:
                return
            from rgpl_plugin.errors import parse_version
            from rgpl_plugin.opensearch_vectors import (
                ALIAS_DEFAULT_PIPELINE_SINCE,
                NEURAL_PLUGIN,
                set_default_pipeline,
            )

            name = f"{target}-hybrid"
            try:
                src.client.search_pipeline.put(
                    id=name, body=_hybrid_pipeline_body(weight, model and model.model_id)
                )
                set_default_pipeline(src.client, target, name)
            except BackendError:
                raise
            except Exception as exc:  # noqa: BLE001 - client errors of every kind are translated/logged
                raise src._plugin_error(
                    exc, "creating the hybrid search pipeline", target, NEURAL_PLUGIN
                ) from None
            info["search_pipeline"] = name
            if parse_version(src.version()) < parse_version(ALIAS_DEFAULT_PIPELINE_SINCE):
                # before 2.14 a search through an alias does not apply the index's default search pipeline
                info["search_pipeline_note"] = (
                    f"OpenSearch {src.version()} applies index.search.default_pipeline only to searches "
                    f"that name the index, not the alias (from 2.14 it does): queries to "
                    f"{opts.alias or src.index!r} must pass ?search_pipeline={name}")
                log.warning(info["search_pipeline_note"])
            if model is not None:
                from rgpl_plugin.ml_commons import (
                    put_ingest_pipeline,
                    set_default_ingest_pipeline,
                    text_embedding_pipeline,
                )

                title, texts = src.fields()
                ingest = f"{target}-embed"
                try:
                    put_ingest_pipeline(
                        src.client,
                        ingest,
                        text_embedding_pipeline(model.model_id, title, texts, src.vector_field),
                    )
                    set_default_ingest_pipeline(src.client, target, ingest)
                except Exception as exc:  # noqa: BLE001 - client errors of every kind are translated/logged
                    raise src._error(exc, "creating the text_embedding ingest pipeline", target) from None
                info["ingest_pipeline"] = ingest

        result = publish_version(
            src,
            DENSE_SPACE,
            version,
            alias=alias,
            allow_alias_takeover=opts.allow_alias_takeover,
            write=opts.publish_write,
            before_swap=before_swap,
            progress=self.progress,
        )
        info.update(
            index=result.index, previous=result.previous, documents=result.documents, vectors=result.vectors,
            write=result.write, publish_seconds=result.seconds,
        )
        if es:
            title, texts = src.fields()
            fields = [f for f in (title, *texts) if f]
            info["retriever"] = es_retriever_template(fields, src.vector_field, weight)
        # the served copy is in the version index now; the shadow index is not needed anymore
        self.backend.drop_vectors(DENSE_SPACE)
        self.published = info
        return info

    def _register_model(self, export_dir: Path, target: str) -> Any:
        from rgpl_plugin.ml_commons import register_and_deploy

        from rgpl_adapt.export import package_for_ml_commons

        zip_path, sha, model_config = package_for_ml_commons(
            export_dir, self.run_dir / "serve" / "ml-commons.zip"
        )
        return register_and_deploy(
            self.backend.source.client, zip_path, sha, model_config, name=target, version="1",
            input_names=_onnx_input_names(export_dir),
        )


def _onnx_input_names(export_dir: Path) -> list[str] | None:
    """The exported graph's input names (from ``onnx/rgpl_onnx.json``), None when not recorded."""
    for meta in (Path(export_dir) / "onnx" / "rgpl_onnx.json", Path(export_dir) / "rgpl_onnx.json"):
        if meta.exists():
            names = json.loads(meta.read_text(encoding="utf-8")).get("input_names")
            return list(names) if names else None
    return None


def es_retriever_template(fields: Sequence[str], vector_field: str, weight: float) -> dict[str, Any]:
    """The Elasticsearch ``linear`` retriever to serve hybrid search with (the query vector comes
    from the run's ONNX model; ``rgpl-adapt search`` fills both placeholders)."""
    body = m.es_hybrid_retriever(
        "QUERY_TEXT", fields, vector_field, np.zeros(1, np.float32), 10, weight=weight
    )
    body["linear"]["retrievers"][1]["retriever"]["knn"]["query_vector"] = "QUERY_VECTOR"
    return body


# -- after the run ----------------------------------------------------------------------------


def read_cluster_report(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``cluster`` section of a run's report.json (what was published, which fields)."""
    path = Path(run_dir) / "report.json"
    if not path.exists():
        raise BackendError(f"{run_dir} has no report.json; adapt the index first (rgpl-adapt --index NAME)")
    report = json.loads(path.read_text())
    if "cluster" not in report:
        raise BackendError(f"{run_dir} is not a cluster run (its report has no 'cluster' section)")
    return report["cluster"]


def search_index(
    client: Any,
    engine: Engine,
    index: str,
    text: str,
    vector: np.ndarray,
    info: dict[str, Any],
    *,
    k: int = 10,
    mode: Literal["hybrid", "dense", "bm25"] = "hybrid",
) -> list[dict[str, Any]]:
    """Query the served index (or alias) with the run's fields; hits as ``{id, score, title, text}``."""
    title = info.get("title_field")
    texts = list(info.get("text_fields") or [])
    fields = [f for f in (title, *texts) if f]
    vf = info.get("vector_field", "rgpl_vector")
    weight = float(info.get("hybrid_weight", 0.5))
    body: dict[str, Any] = {"size": int(k), "_source": fields}
    params: dict[str, Any] = {}
    if engine == "elasticsearch":
        if mode == "bm25":
            body["query"] = m.multi_match(text, fields)
        elif mode == "dense":
            body["knn"] = m.es_knn_section(vf, vector, k)
        else:
            body["retriever"] = m.es_hybrid_retriever(text, fields, vf, vector, k, weight=weight)
        resp = client.search(index=index, body=body)
        resp = getattr(resp, "body", resp)
    else:
        if mode == "bm25":
            body["query"] = m.multi_match(text, fields)
        elif mode == "dense":
            body["query"] = m.knn_query(vf, vector, k)
        else:
            body["query"] = m.hybrid_query(text, fields, vf, vector, k)
            if info.get("search_pipeline"):
                params["search_pipeline"] = info["search_pipeline"]
        resp = client.search(index=index, body=body, params=params or None)
    out = []
    for hit in resp["hits"]["hits"]:
        source = hit.get("_source") or {}
        text_value = "\n\n".join(
            str(m.get_path(source, f)) for f in texts if m.get_path(source, f) is not None
        )
        out.append(
            {
                "id": hit["_id"],
                "score": float(hit.get("_score") or 0.0),
                "title": str(m.get_path(source, title) or "") if title else "",
                "text": text_value,
            }
        )
    return out
