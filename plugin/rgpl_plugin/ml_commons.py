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

Before step 1, :func:`check_ml_settings` reads ``GET _cluster/settings?include_defaults=true``: a
local-file upload needs ``plugins.ml_commons.allow_registering_model_via_local_file: true`` and, on a
cluster without a node of the ``ml`` role, ``plugins.ml_commons.only_run_on_ml_node: false`` (both are
the other way by default); the error carries the exact ``PUT _cluster/settings`` call to make.
"""

from __future__ import annotations

import json
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


#: ``pooling_mode`` values ML Commons parses: ``PoolingMode.from`` is ``valueOf(text.toUpperCase())``, so the
#: enum *constant* names count (``weighted_mean``, ``mean_sqrt_len``, ``last_token``), not the display names
#: (``weightedmean``, ``lasttoken``) that sentence-transformers and ML Commons' own output use.
#: Source: ml-commons common/.../model/TextEmbeddingModelConfig.java (``PoolingMode``).
POOLING_MODES = {
    "mean": "mean",
    "mean_sqrt_len": "mean_sqrt_len",
    "mean_sqrt_len_tokens": "mean_sqrt_len",
    "max": "max",
    "weighted_mean": "weighted_mean",
    "weightedmean": "weighted_mean",
    "cls": "cls",
}
#: ML Commons' ONNX translator (ONNXSentenceTransformerTextEmbeddingTranslator.processInput) feeds
#: ``token_type_ids`` only to these ``model_type`` values; any other model gets input_ids + attention_mask.
TOKEN_TYPE_MODELS = ("bert", "albert")
#: Cluster settings a local-file ONNX upload needs (ML Commons 2.x defaults in the comments).
REQUIRED_SETTINGS = {
    "plugins.ml_commons.allow_registering_model_via_local_file": "true",  # default false
}


class MLCommonsError(BackendError):
    """A model registration, upload or deployment step failed; the message says what to check."""


def ml_commons_model_config(
    model_config: dict[str, Any], input_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """``model_config`` with ``pooling_mode`` spelt the way ML Commons parses it; raises
    :class:`MLCommonsError` when ML Commons cannot run the graph as exported.

    ``input_names`` are the ONNX graph's inputs: ML Commons feeds ``token_type_ids`` exactly when
    ``model_type`` is bert/albert, so a graph that wants them otherwise (or lacks them for bert)
    fails at the first prediction; this says so before anything is uploaded."""
    config = dict(model_config)
    raw = str(config.get("pooling_mode", "mean"))
    pooling = POOLING_MODES.get(raw.lower())
    if pooling is None:
        raise MLCommonsError(
            f"ML Commons cannot pool with {raw!r}; it knows {sorted(set(POOLING_MODES.values()))}. "
            "Serve this model with OnnxEncoder instead of --register-model."
        )
    config["pooling_mode"] = pooling
    if input_names is not None:
        model_type = str(config.get("model_type", "")).lower()
        fed = {"input_ids", "attention_mask"} | ({"token_type_ids"} if model_type in TOKEN_TYPE_MODELS else set())
        if set(input_names) != fed:
            raise MLCommonsError(
                f"ML Commons feeds a {model_type or 'unknown'!r} model the inputs {sorted(fed)} (token_type_ids only "
                f"for {'/'.join(TOKEN_TYPE_MODELS)}), but the exported graph takes {sorted(input_names)}; "
                "the first prediction would fail. Re-export the model with exactly those inputs."
            )
    return config


def _setting_value(settings: dict[str, Any], name: str) -> str | None:
    """A flat setting from ``GET _cluster/settings?include_defaults&flat_settings`` (transient wins)."""
    for scope in ("transient", "persistent", "defaults"):
        value = (settings.get(scope) or {}).get(name)
        if value is not None:
            return str(value).lower()
    return None


def settings_call(changes: dict[str, Any]) -> str:
    """The exact request that makes ``changes`` (a copy-pasteable Dev Tools / curl body)."""
    return "PUT _cluster/settings " + json.dumps({"persistent": changes}, separators=(", ", ": "))


def check_ml_settings(client: Any, *, has_ml_node: bool | None = None) -> dict[str, str]:
    """Read ``GET _cluster/settings?include_defaults=true`` and raise :class:`MLCommonsError` naming the
    exact settings call when a local-file upload or its deployment would be refused; returns the
    ML Commons settings read (for the report).

    Checked: ``allow_registering_model_via_local_file`` must be true; ``only_run_on_ml_node`` must be
    false unless the cluster has a node with the ``ml`` role (``has_ml_node``; read from
    ``GET _nodes`` when None); ``native_memory_threshold`` and ``jvm_heap_memory_threshold`` at 100
    are not required but are named in the deploy error when a deploy is refused for memory."""
    current = _request(
        client, "GET", "/_cluster/settings", action="reading the cluster settings",
        params={"include_defaults": "true", "flat_settings": "true"},
    )
    read = {
        name: _setting_value(current, name) or ""
        for name in (
            *REQUIRED_SETTINGS,
            "plugins.ml_commons.only_run_on_ml_node",
            "plugins.ml_commons.native_memory_threshold",
            "plugins.ml_commons.jvm_heap_memory_threshold",
        )
    }
    if not any(read.values()):
        raise MLCommonsError(
            "the cluster reports no plugins.ml_commons.* settings: the ml-commons plugin is missing "
            "(install opensearch-ml, bundled with the full distribution)"
        )
    changes: dict[str, Any] = {}
    for name, wanted in REQUIRED_SETTINGS.items():
        if read[name] != wanted:
            changes[name] = wanted == "true"
    if read["plugins.ml_commons.only_run_on_ml_node"] == "true":
        if has_ml_node is None:
            nodes = _request(client, "GET", "/_nodes", action="listing the nodes")
            roles = [set(n.get("roles", [])) for n in (nodes.get("nodes") or {}).values()]
            has_ml_node = any("ml" in r for r in roles)
        if not has_ml_node:
            changes["plugins.ml_commons.only_run_on_ml_node"] = False
    if changes:
        raise MLCommonsError(
            "the cluster's ML Commons settings refuse this upload (" + ", ".join(
                f"{k} is {read.get(k) or 'unset'}" for k in changes
            ) + "). Ask an administrator to run:\n  " + settings_call(changes)
            + "\nor pass --no-register-model. Nothing was uploaded."
        )
    return read


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


def _request(
    client: Any, method: str, path: str, body: Any = None, action: str = "", params: dict[str, str] | None = None
) -> dict[str, Any]:
    """One ML Commons call through the client's transport; errors become :class:`MLCommonsError`."""
    try:
        resp = client.transport.perform_request(method, path, params=params, body=body)
    except Exception as exc:  # noqa: BLE001 - client errors of every kind are translated/logged
        status = getattr(exc, "status_code", None)
        info = getattr(exc, "info", None)
        reason = info.get("error", info) if isinstance(info, dict) else str(exc)
        hint = ""
        if status in (400, 404) and "no handler" in str(reason).lower():
            hint = " The ml-commons plugin is missing: install opensearch-ml (bundled with the full distribution)."
        elif "only_run_on_ml_node" in str(reason) or "No eligible node" in str(reason):
            hint = (
                " No ML node can run the model: add a node with the ml role, or run:\n  "
                + settings_call({"plugins.ml_commons.only_run_on_ml_node": False})
            )
        elif "allow_registering_model_via" in str(reason):
            hint = " Allow it with:\n  " + settings_call({"plugins.ml_commons.allow_registering_model_via_local_file": True})
        elif "memory" in str(reason).lower() and "circuit" in str(reason).lower():
            hint = (
                " An ML Commons memory circuit breaker is open: free memory on the node, or raise it with:\n  "
                + settings_call({"plugins.ml_commons.native_memory_threshold": 100,
                                 "plugins.ml_commons.jvm_heap_memory_threshold": 100})
            )
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
    the text fields joined by a blank line, the title in front separated by one space; nothing when
    the document has no text (then it is indexed without a vector instead of being rejected)."""
    lines = ["def parts = [];"]
    for f in text_fields:
        lines.append(
            f"if (ctx['{f}'] instanceof String && ctx['{f}'].trim() != '') {{ parts.add(ctx['{f}'].trim()); }}"
        )
    # Painless string literals know no \\n escape (a compile error on the node): build the blank line
    lines.append("String sep = String.valueOf((char) 10) + String.valueOf((char) 10);")
    lines.append("String text = String.join(sep, parts);")
    if title_field:
        lines.append(
            f"if (ctx['{title_field}'] instanceof String && ctx['{title_field}'].trim() != '') "
            f"{{ text = (ctx['{title_field}'].trim() + ' ' + text).trim(); }}"
        )
    # only when there is text: text_embedding rejects an empty string (the whole document with it),
    # while a missing field is skipped, so a document without text is indexed without a vector
    lines.append(f"if (text != '') {{ ctx['{target}'] = text; }}")
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


def _task_hint(error: str) -> str:
    """What a failed deploy's error means, where we know it."""
    if "djl.ai" in error or "pytorch" in error.lower() and "download" in error.lower():
        return (
            ". The ML node tried to download DJL's native PyTorch library (ML Commons' ONNX engine uses it for "
            "tensor work) from publish.djl.ai and could not reach it: the model was uploaded but cannot be "
            "deployed. Let the ML nodes reach publish.djl.ai once (the library is cached under ~/.djl.ai / "
            "$DJL_CACHE_DIR), or serve the model with rgpl-adapt's OnnxEncoder (search embeds queries "
            "client-side)."
        )
    if "Charsets.toCharset" in error or "NoSuchMethodError" in error:
        return ". A plugin class conflict on the node (a jar older than ML Commons needs shadows its own)."
    if "hash" in error.lower():
        return ". The uploaded chunks do not hash to model_content_hash_value: upload again."
    return ""


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
            error = str(task.get("error", ""))
            raise MLCommonsError(f"ML Commons {action} task {task_id} ended {state}: {error[:400]}{_task_hint(error)}")
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
    input_names: Sequence[str] | None = None,
    check_settings: bool = True,
) -> RegisteredModel:
    """Create a model group, register the model's metadata, upload the zip in chunks, deploy it
    and wait until it is deployed (steps 1-4 of the module docstring).

    First, before anything is uploaded: ``model_config`` is checked and its pooling name spelt the way
    ML Commons parses it (:func:`ml_commons_model_config`, with the graph's ``input_names`` when given),
    and the cluster settings are read (:func:`check_ml_settings`, skipped with ``check_settings=False``)."""
    model_config = ml_commons_model_config(model_config, input_names)
    if check_settings:
        check_ml_settings(client)
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
