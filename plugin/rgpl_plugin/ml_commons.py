"""OpenSearch ML Commons: upload the adapted ONNX model, deploy it, embed new documents at ingest.

``rgpl-adapt --register-model`` (OpenSearch only) does, in this order:

1. ``POST /_plugins/_ml/model_groups/_register`` -- a model group for the index's models
   (ML Commons 2.9+; group names are unique cluster-wide, so the name carries the version);
2. ``POST /_plugins/_ml/models/_register_meta`` -- the model's metadata: ``model_format: ONNX``,
   ``function_name: TEXT_EMBEDDING``, ``model_content_hash_value`` (sha256 of the zip),
   ``model_config`` (pooling, dimension, normalisation; from
   :func:`rgpl_adapt.export.package_for_ml_commons`) and ``total_chunks``;
3. ``POST /_plugins/_ml/models/<id>/upload_chunk/<n>`` for n = 0..total_chunks-1 -- the zip in
   chunks of at most 10 MB, each sent as the raw bytes of the request body;
4. ``POST /_plugins/_ml/models/<id>/_deploy`` and polling ``GET /_plugins/_ml/tasks/<task>``
   until the task is ``COMPLETED`` (``FAILED`` / timeout raise :class:`MLCommonsError`);
5. an ingest pipeline (``PUT _ingest/pipeline/<name>``) that joins title and text the way the
   adapter embeds passages (a ``script`` processor), runs the ``text_embedding`` processor into
   the vector field and removes the temporary field; it becomes the new version index's
   ``index.default_pipeline``, so documents indexed later get vectors from the same model;
6. :func:`neural_query_enricher` -- a ``request_processors`` entry for the search pipeline that
   sets the default model id, so ``neural`` queries need no ``model_id``.

This is ML Commons' documented route for a model file on the client machine (as used by
opensearch-py-ml's ``ModelUploader``): register the metadata, then upload the chunks
(``upload_chunk``, ML Commons 2.7+; the older ``models/<id>/chunk/<n>`` is deprecated since 2.7).
``_register`` with a ``url`` is the alternative when the cluster can download the zip itself.
Docs: https://opensearch.org/docs/latest/ml-commons-plugin/api/model-apis/register-model/ ,
.../model-apis/deploy-model/ , .../ingest-processors/text-embedding/ ,
.../search-pipelines/neural-query-enricher/ .

The clusters's ML settings may need ``plugins.ml_commons.only_run_on_ml_node: false`` (no ML
node) and ``plugins.ml_commons.allow_registering_model_via_local_file`` /
``..._via_url``; the errors raised here say so.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rgpl_plugin.base import BackendError

log = logging.getLogger(__name__)

ML = "/_plugins/_ml"
CHUNK_BYTES = 10_000_000
TEXT_TMP_FIELD = "rgpl_embedding_text"
DONE_STATES = {"COMPLETED"}
FAILED_STATES = {"FAILED", "COMPLETED_WITH_ERROR", "CANCELLED", "EXPIRED"}


class MLCommonsError(BackendError):
    """A model registration, upload or deployment step failed; the message says what to check."""


@dataclass(frozen=True, slots=True)
class RegisteredModel:
    """A model uploaded and deployed to ML Commons."""

    model_id: str
    model_group_id: str
    name: str
    version: str
    sha256: str
    chunks: int
    ingest_pipeline: str | None = None


def _request(client: Any, method: str, path: str, body: Any = None, action: str = "") -> dict[str, Any]:
    """One ML Commons call through the client's transport; errors become :class:`MLCommonsError`."""
    try:
        resp = client.transport.perform_request(method, path, body=body)
    except Exception as exc:  # noqa: BLE001 - client errors of every kind are translated/logged
        status = getattr(exc, "status_code", None)
        info = getattr(exc, "info", None)
        reason = info.get("error", info) if isinstance(info, dict) else str(exc)
        hint = ""
        if status in (400, 404) and "no handler" in str(reason).lower():
            hint = " The ml-commons plugin is missing: install opensearch-ml (bundled with the full distribution)."
        elif "only_run_on_ml_node" in str(reason) or "No eligible node" in str(reason):
            hint = (
                " No ML node can run the model: add an ML node, or set the cluster setting "
                "plugins.ml_commons.only_run_on_ml_node to false."
            )
        elif "allow_registering_model_via" in str(reason):
            hint = " Allow it with the cluster setting named in the message."
        raise MLCommonsError(
            f"ML Commons refused {action or method + ' ' + path} (status {status}): {str(reason)[:400]}.{hint}"
        ) from None
    return resp if isinstance(resp, dict) else {}


def iter_chunks(path: str | os.PathLike, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The file in consecutive pieces of at most ``chunk_bytes`` bytes."""
    with open(path, "rb") as fh:
        while True:
            piece = fh.read(chunk_bytes)
            if not piece:
                return
            yield piece


def model_group_body(name: str, description: str) -> dict[str, Any]:
    """``POST _plugins/_ml/model_groups/_register`` body."""
    return {"name": name, "description": description}


def register_meta_body(
    name: str,
    version: str,
    group_id: str,
    sha256: str,
    model_config: dict[str, Any],
    total_chunks: int,
    *,
    size_bytes: int | None = None,
    description: str = "",
) -> dict[str, Any]:
    """``POST _plugins/_ml/models/_register_meta`` body for an ONNX text-embedding model."""
    body: dict[str, Any] = {
        "name": name,
        "version": str(version),
        "description": description or f"{name}: dense retriever adapted by rgpl-adapt",
        "function_name": "TEXT_EMBEDDING",
        "model_format": "ONNX",
        "model_group_id": group_id,
        "model_content_hash_value": sha256,
        "model_config": dict(model_config),
        "total_chunks": int(total_chunks),
    }
    if size_bytes is not None:
        body["model_content_size_in_bytes"] = int(size_bytes)
    return body


def embedding_script(
    title_field: str | None, text_fields: Sequence[str], target: str = TEXT_TMP_FIELD
) -> str:
    """Painless source that writes the passage text the way :meth:`Document.full_text` builds it:
    the text fields joined by a blank line, the title in front separated by one space."""
    lines = ["def parts = [];"]
    for f in text_fields:
        lines.append(
            f"if (ctx['{f}'] instanceof String && ctx['{f}'].trim() != '') {{ parts.add(ctx['{f}'].trim()); }}"
        )
    lines.append("String text = String.join('\\n\\n', parts);")
    if title_field:
        lines.append(
            f"if (ctx['{title_field}'] instanceof String && ctx['{title_field}'].trim() != '') "
            f"{{ text = (ctx['{title_field}'].trim() + ' ' + text).trim(); }}"
        )
    lines.append(f"ctx['{target}'] = text;")
    return " ".join(lines)


def text_embedding_pipeline(
    model_id: str, title_field: str | None, text_fields: Sequence[str], vector_field: str
) -> dict[str, Any]:
    """``PUT _ingest/pipeline/<name>`` body: join the text, embed it into ``vector_field``, clean up."""
    for f in (title_field, *text_fields):
        if f and ("'" in f or "\\" in f):
            raise ValueError(f"field name {f!r} cannot be used in an ingest script")
    return {
        "description": f"rgpl-adapt: embed new documents with ML Commons model {model_id}",
        "processors": [
            {"script": {"lang": "painless", "source": embedding_script(title_field, text_fields)}},
            {"text_embedding": {"model_id": model_id, "field_map": {TEXT_TMP_FIELD: vector_field}}},
            {"remove": {"field": TEXT_TMP_FIELD, "ignore_missing": True}},
        ],
    }


def neural_query_enricher(model_id: str) -> dict[str, Any]:
    """A search pipeline request processor that makes ``model_id`` the default for neural queries."""
    return {
        "neural_query_enricher": {"description": "rgpl-adapt default model", "default_model_id": model_id}
    }


def wait_for_task(
    client: Any,
    task_id: str,
    *,
    timeout_s: float = 600.0,
    poll_s: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    action: str = "task",
) -> dict[str, Any]:
    """Poll ``GET _plugins/_ml/tasks/<task_id>`` until it completes; the final task record."""
    deadline = time.monotonic() + timeout_s
    while True:
        task = _request(client, "GET", f"{ML}/tasks/{task_id}", action=f"checking {action} task {task_id}")
        state = str(task.get("state", ""))
        if state in DONE_STATES:
            return task
        if state in FAILED_STATES:
            raise MLCommonsError(
                f"ML Commons {action} task {task_id} ended {state}: {str(task.get('error', ''))[:400]}"
            )
        if time.monotonic() > deadline:
            raise MLCommonsError(
                f"ML Commons {action} task {task_id} still {state or 'unknown'} after {timeout_s:.0f}s; "
                f"check GET {ML}/tasks/{task_id} and the ML node's memory"
            )
        sleep(poll_s)


def register_and_deploy(
    client: Any,
    zip_path: str | os.PathLike,
    sha256: str,
    model_config: dict[str, Any],
    *,
    name: str,
    version: str,
    chunk_bytes: int = CHUNK_BYTES,
    timeout_s: float = 600.0,
    poll_s: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
) -> RegisteredModel:
    """Create a model group, register the model's metadata, upload the zip in chunks, deploy it
    and wait until it is deployed (steps 1-4 of the module docstring)."""
    size = Path(zip_path).stat().st_size
    total = max(1, math.ceil(size / chunk_bytes))
    group = _request(
        client,
        "POST",
        f"{ML}/model_groups/_register",
        model_group_body(f"{name}-{version}", f"rgpl-adapt models of {name}"),
        "registering a model group",
    )
    group_id = str(group.get("model_group_id") or "")
    if not group_id:
        raise MLCommonsError(f"ML Commons returned no model_group_id: {group}")
    meta = _request(
        client,
        "POST",
        f"{ML}/models/_register_meta",
        register_meta_body(name, version, group_id, sha256, model_config, total, size_bytes=size),
        "registering the model metadata",
    )
    model_id = str(meta.get("model_id") or "")
    if not model_id:
        raise MLCommonsError(f"ML Commons returned no model_id for the model metadata: {meta}")
    for n, piece in enumerate(iter_chunks(zip_path, chunk_bytes)):
        _request(
            client,
            "POST",
            f"{ML}/models/{model_id}/upload_chunk/{n}",
            piece,
            f"uploading chunk {n + 1}/{total}",
        )
    log.info("uploaded model %s in %d chunk(s) (%d bytes)", model_id, total, size)
    deploy = _request(client, "POST", f"{ML}/models/{model_id}/_deploy", action="deploying the model")
    if deploy.get("task_id"):
        wait_for_task(
            client, str(deploy["task_id"]), timeout_s=timeout_s, poll_s=poll_s, sleep=sleep, action="deploy"
        )
    return RegisteredModel(model_id, group_id, name, str(version), sha256, total)


def put_ingest_pipeline(client: Any, name: str, body: dict[str, Any]) -> None:
    """Create or replace ingest pipeline ``name``."""
    client.ingest.put_pipeline(id=name, body=body)


def set_default_ingest_pipeline(client: Any, index: str, name: str) -> None:
    """Make ``name`` the ingest pipeline of documents indexed into ``index`` (``index.default_pipeline``)."""
    client.indices.put_settings(index=index, body={"index": {"default_pipeline": name}})
