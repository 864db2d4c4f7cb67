"""ML Commons registration through a recording fake cluster: the documented call sequence
(model group, _register_meta, upload_chunk per chunk, _deploy, task polling), bodies and answers
checked against the OpenSearch API spec, failures named, and the ingest/search pipeline bodies.

:class:`ServingFake` (FakeCluster + aliases, _reindex, settings, ingest pipelines, ML Commons)
is also what the ``rgpl-adapt --index`` contract tests in tests/adapter use."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import pytest
from rgpl_plugin.ml_commons import (
    MLCommonsError,
    check_ml_settings,
    embedding_script,
    ml_commons_model_config,
    neural_query_enricher,
    register_and_deploy,
    text_embedding_pipeline,
    wait_for_task,
)

from tests.plugin.conftest import Exchange, FakeCluster
from tests.plugin.spec import parse_body

ML = "/_plugins/_ml"


@dataclass
class ServingFake(FakeCluster):
    """A FakeCluster that can also publish: aliases, _reindex, index settings, ingest pipelines,
    bulk partial updates, and ML Commons (chunks are kept as raw bytes)."""

    aliases: dict[str, str] = field(default_factory=dict)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    pipelines: dict[str, Any] = field(default_factory=dict)
    ingest: dict[str, Any] = field(default_factory=dict)
    chunks: dict[int, bytes] = field(default_factory=dict)
    task_polls: int = 0
    reindex_tasks: dict[str, Any] = field(default_factory=dict)
    deploy_state: str = "COMPLETED"
    #: what ``GET _cluster/settings?include_defaults`` reports (flat); ML Commons' defaults are the
    #: other way for the first two, so tests of the refusal set them back
    ml_settings: dict[str, str] = field(default_factory=lambda: {
        "plugins.ml_commons.allow_registering_model_via_local_file": "true",
        "plugins.ml_commons.only_run_on_ml_node": "false",
        "plugins.ml_commons.native_memory_threshold": "90",
        "plugins.ml_commons.jvm_heap_memory_threshold": "85",
    })
    node_roles: tuple[str, ...] = ("cluster_manager", "data", "ingest")

    def resolve(self, name: str) -> str:
        return self.aliases.get(name, name)

    def handle(self, method: str, path: str, params: dict, body: Any) -> tuple[int, Any]:
        for override in self.overrides:
            answer = override(method, path, params, body)
            if answer is not None:
                return answer
        parts = [unquote(p) for p in path.strip("/").split("/") if p]
        if parts[:2] == ["_plugins", "_ml"]:
            return self._ml(method, parts[2:], body)
        if parts == ["_cluster", "settings"] and method == "GET":
            return 200, {"persistent": {}, "transient": {}, "defaults": dict(self.ml_settings)}
        if parts == ["_nodes"]:
            return 200, {"_nodes": {"total": 1, "successful": 1, "failed": 0}, "cluster_name": "c",
                         "nodes": {"n1": {"name": "n1", "roles": list(self.node_roles)}}}
        if len(parts) == 3 and parts[1] == "_alias" and method == "GET":  # GET <index>/_alias/<name>
            index, name = parts[0], parts[2]
            if self.aliases.get(name) != index:
                return 404, {"error": f"alias [{name}] missing", "status": 404}
            return 200, {index: {"aliases": {name: {}}}}
        if parts and parts[0] == "_alias":
            name = parts[1]
            if name not in self.aliases:
                return 404, ({"error": f"alias [{name}] missing", "status": 404} if method == "GET" else None)
            return 200, (None if method == "HEAD" else {self.aliases[name]: {"aliases": {name: {}}}})
        if parts == ["_aliases"]:
            for action in body["actions"]:
                ((kind, spec),) = action.items()
                if kind == "add":
                    self.aliases[spec["alias"]] = spec["index"]
                elif kind == "remove":
                    self.aliases.pop(spec["alias"], None)
                elif kind == "remove_index":
                    self.indices.pop(spec["index"], None)
            return 200, {"acknowledged": True}
        if parts == ["_reindex"]:
            src, dest = self.resolve(body["source"]["index"]), body["dest"]["index"]
            self.indices[dest].update({i: dict(s) for i, s in self.indices[src].items()})
            n = len(self.indices[src])
            result = {
                "took": 1,
                "timed_out": False,
                "total": n,
                "created": n,
                "updated": 0,
                "deleted": 0,
                "batches": 1,
                "version_conflicts": 0,
                "noops": 0,
                "failures": [],
                "retries": {"bulk": 0, "search": 0},
                "throttled_millis": 0,
                "requests_per_second": -1.0,
                "throttled_until_millis": 0,
            }
            if params.get("wait_for_completion") in ("false", False):
                self.reindex_tasks["node-1:1"] = result
                return 200, {"task": "node-1:1"}
            return 200, result
        if parts[:1] == ["_tasks"] and parts[1] in self.reindex_tasks:
            return 200, {"completed": True, "task": {"node": "node-1", "id": 1, "type": "transport",
                                                     "action": "indices:data/write/reindex", "cancellable": True,
                                                     "running_time_in_nanos": 1000, "start_time_in_millis": 1,
                                                     "headers": {}},
                         "response": self.reindex_tasks[parts[1]]}
        if parts[:2] == ["_ingest", "pipeline"] and method == "PUT":
            self.ingest[parts[2]] = body
            return 200, {"acknowledged": True}
        if parts[:2] == ["_search", "pipeline"] and len(parts) == 3:
            if method == "PUT":
                self.pipelines[parts[2]] = body
            elif method == "DELETE":
                self.pipelines.pop(parts[2], None)
            return 200, {"acknowledged": True}
        if parts == ["_bulk"]:
            for action, doc in zip(body[::2], body[1::2]):
                ((op, meta),) = action.items()
                if op == "update" and meta["_id"] in self.indices.get(meta["_index"], {}):
                    doc["doc"] = {**self.indices[meta["_index"]][meta["_id"]], **doc["doc"]}
        if parts and not parts[0].startswith("_") and parts[0] in self.aliases:
            parts[0] = self.aliases[parts[0]]
            path = "/" + "/".join(parts)
        if len(parts) == 1 and method == "PUT":
            self.settings[parts[0]] = dict((body or {}).get("settings", {}).get("index", {}))
        if len(parts) == 2 and parts[1] == "_settings":
            if parts[0] not in self.indices:
                return super().handle(method, path, params, body)
            if method == "PUT":
                self.settings.setdefault(parts[0], {}).update(_flatten(body.get("index", body)))
                return 200, {"acknowledged": True}
            index_settings = {
                "number_of_shards": "1",
                "number_of_replicas": "1",
                "refresh_interval": "1s",
                **{
                    k: str(v).lower() if isinstance(v, bool) else v
                    for k, v in self.settings.get(parts[0], {}).items()
                },
            }
            return 200, {parts[0]: {"settings": {"index": index_settings}}}
        return super().handle(method, path, params, body)

    def _ml(self, method: str, rest: list[str], body: Any) -> tuple[int, Any]:
        if rest == ["model_groups", "_register"]:
            return 200, {"model_group_id": "group-1", "status": "CREATED"}
        if rest == ["models", "_register_meta"]:
            self.meta = body
            return 200, {"model_id": "model-1", "status": "CREATED"}
        if rest[:2] == ["models", "model-1"] and rest[2] == "upload_chunk":
            self.chunks[int(rest[3])] = body
            return 200, {"status": "Uploaded"}
        if rest == ["models", "model-1", "_deploy"]:
            return 200, {"task_id": "task-1", "task_type": "DEPLOY_MODEL", "status": "CREATED"}
        if rest == ["tasks", "task-1"]:
            self.task_polls += 1
            state = "RUNNING" if self.task_polls < 2 else self.deploy_state
            task = {
                "model_id": "model-1",
                "task_type": "DEPLOY_MODEL",
                "function_name": "TEXT_EMBEDDING",
                "state": state,
                "worker_node": ["node-1"],
                "create_time": 1,
                "last_update_time": 2,
                "is_async": True,
            }
            if state == "FAILED":
                task["error"] = "model content hash can't match original hash value"
            return 200, task
        return 400, {
            "error": {"type": "illegal_argument_exception", "reason": f"fake: no ML handler for {rest}"},
            "status": 400,
        }


def _flatten(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in settings.items():
        if isinstance(v, dict) and k not in ("analysis",):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def serving_client(cluster: FakeCluster, **kwargs: Any) -> Any:
    """Like ``fake_client``, but a body that is not JSON (a model chunk) is recorded as bytes."""
    from opensearchpy import Connection, OpenSearch

    class RecordingConnection(Connection):
        def perform_request(self, method, url, params=None, body=None, timeout=None, ignore=(), headers=None):
            path = url.split("?")[0]
            try:
                parsed = parse_body(body)
            except (UnicodeDecodeError, json.JSONDecodeError):
                parsed = bytes(body)
            status, response = cluster.handle(method, path, dict(params or {}), parsed)
            cluster.exchanges.append(Exchange(method, path, dict(params or {}), parsed, status, response))
            raw = "" if response is None else json.dumps(response)
            if not (200 <= status < 300) and status not in ignore:
                self._raise_error(status, raw)
            return status, {"content-type": "application/json"}, raw

        def close(self) -> None:
            pass

    return OpenSearch(
        hosts=[{"host": "fake", "port": 9200}], connection_class=RecordingConnection, max_retries=0, **kwargs
    )


def validate_exchanges(spec, exchanges: list[Exchange]) -> set[str]:
    """Validate every request and response against the spec (binary chunk bodies aside: ML Commons
    reads an ``upload_chunk`` body as raw bytes although the spec describes a JSON object);
    returns the operation ids seen."""
    seen = set()
    for ex in exchanges:
        if not isinstance(ex.body, bytes):
            spec.validate_request(ex.method, ex.path, ex.body)
        if ex.path == "/_reindex" and ex.status == 200 and set(ex.response) == {"task"}:
            # a reindex started as a task: the oneOf's task branch
            spec._validate(ex.response["task"], (spec.root / "schemas/_common.yaml").resolve().as_uri(),
                           "/components/schemas/TaskId", "response of POST /_reindex (task)")
        elif ex.path == "/_reindex" and ex.status == 200:
            # the spec's oneOf (a task object with only optional keys | BulkByScrollResponseBase)
            # matches every finished reindex twice; validate against the finished-reindex branch
            spec._validate(
                ex.response,
                (spec.root / "schemas/_common.yaml").resolve().as_uri(),
                "/components/schemas/BulkByScrollResponseBase",
                "response of POST /_reindex",
            )
        else:
            spec.validate_response(ex.method, ex.path, ex.status, ex.response)
        seen.add(spec.operation_id(ex.method, ex.path).rsplit(".", 1)[0])
    return seen


CONFIG = {
    "model_type": "bert",
    "embedding_dimension": 32,
    "framework_type": "sentence_transformers",
    "pooling_mode": "MEAN",
    "normalize_result": False,
    "all_config": "{}",
    "model_max_length": 32,
}


@pytest.fixture
def model_zip(tmp_path):
    data = bytes(range(256)) * 100  # 25,600 bytes
    path = tmp_path / "model.zip"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest(), data


def test_register_uploads_in_order_and_deploys(spec, documents, model_zip):
    path, sha, data = model_zip
    cluster = ServingFake(docs=documents)
    sleeps = []
    model = register_and_deploy(
        serving_client(cluster),
        path,
        sha,
        CONFIG,
        name="docs-rgpl-v1",
        version="1",
        chunk_bytes=10_000,
        sleep=sleeps.append,
        poll_s=0.5,
    )
    assert (model.model_id, model.model_group_id, model.chunks) == ("model-1", "group-1", 3)
    assert b"".join(cluster.chunks[i] for i in range(3)) == data and sorted(cluster.chunks) == [0, 1, 2]
    assert cluster.meta["total_chunks"] == 3 and cluster.meta["model_content_hash_value"] == sha
    assert cluster.meta["model_format"] == "ONNX" and cluster.meta["function_name"] == "TEXT_EMBEDDING"
    assert cluster.meta["model_config"] == {**CONFIG, "pooling_mode": "mean"}
    order = [ex.path for ex in cluster.exchanges]
    assert order.pop(0) == "/_cluster/settings"  # checked before anything is uploaded
    assert order[:2] == [f"{ML}/model_groups/_register", f"{ML}/models/_register_meta"]
    assert order[2:5] == [f"{ML}/models/model-1/upload_chunk/{i}" for i in range(3)]
    assert order[5] == f"{ML}/models/model-1/_deploy" and order[6:] == [f"{ML}/tasks/task-1"] * 2
    assert sleeps == [0.5]  # polled once more after RUNNING
    seen = validate_exchanges(spec, cluster.exchanges)
    assert {
        "ml.register_model_group",
        "ml.register_model_meta",
        "ml.upload_chunk",
        "ml.deploy_model",
        "ml.get_task",
    } <= seen


def test_failed_deploy_and_timeouts_are_named(documents, model_zip):
    path, sha, _ = model_zip
    cluster = ServingFake(docs=documents, deploy_state="FAILED")
    with pytest.raises(MLCommonsError, match="FAILED.*hash"):
        register_and_deploy(
            serving_client(cluster), path, sha, CONFIG, name="m", version="1", sleep=lambda s: None
        )
    stuck = ServingFake(docs=documents)
    stuck.task_polls = -(10**6)  # RUNNING forever
    with pytest.raises(MLCommonsError, match="still RUNNING"):
        wait_for_task(serving_client(stuck), "task-1", timeout_s=0.0, sleep=lambda s: None)
    missing = ServingFake(docs=documents)
    missing.overrides.append(
        lambda method, path, params, body: (
            (
                400,
                {
                    "error": {
                        "type": "illegal_argument_exception",
                        "reason": f"no handler found for uri [{path}]",
                    },
                    "status": 400,
                },
            )
            if path.startswith(ML)
            else None
        )
    )
    with pytest.raises(MLCommonsError, match="opensearch-ml"):
        register_and_deploy(serving_client(missing), path, sha, CONFIG, name="m", version="1")


def test_pipeline_bodies_follow_the_spec(spec):
    body = text_embedding_pipeline("model-1", "title", ["text", "body"], "rgpl_vector")
    spec.validate_request("PUT", "/_ingest/pipeline/p", body)
    embed = body["processors"][1]["text_embedding"]
    assert embed == {"model_id": "model-1", "field_map": {"rgpl_embedding_text": "rgpl_vector"}}
    assert body["processors"][2] == {"remove": {"field": "rgpl_embedding_text", "ignore_missing": True}}
    script = embedding_script("title", ["text", "body"])
    assert "String.join(sep, parts)" in script and "(char) 10" in script and "ctx['title'].trim() + ' ' + text" in script
    with pytest.raises(ValueError, match="ingest script"):
        text_embedding_pipeline("m", None, ["it's"], "v")
    from rgpl_plugin.mappings import normalization_pipeline

    search = {**normalization_pipeline(0.3), "request_processors": [neural_query_enricher("model-1")]}
    spec.validate_request("PUT", "/_search/pipeline/p", search)
    assert search["request_processors"][0]["neural_query_enricher"]["default_model_id"] == "model-1"


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [("weightedmean", "weighted_mean"), ("mean_sqrt_len_tokens", "mean_sqrt_len"), ("mean", "mean"),
     ("MEAN", "mean"), ("cls", "cls"), ("max", "max")],
)
def test_pooling_is_spelt_as_ml_commons_parses_it(ours, theirs):
    """Finding 4: ML Commons parses pooling_mode with PoolingMode.valueOf(text.toUpperCase()), so
    'weightedmean' is 'Wrong pooling method'; the enum constant WEIGHTED_MEAN is the name to send."""
    assert ml_commons_model_config({**CONFIG, "pooling_mode": ours})["pooling_mode"] == theirs
    with pytest.raises(MLCommonsError, match="cannot pool with 'lasttoken'"):
        ml_commons_model_config({**CONFIG, "pooling_mode": "lasttoken"})


def test_token_type_ids_only_for_bert_and_albert():
    """Finding 4: ML Commons feeds token_type_ids to bert/albert only (ONNX translator)."""
    three = ["input_ids", "attention_mask", "token_type_ids"]
    assert ml_commons_model_config({**CONFIG, "model_type": "bert"}, three)
    assert ml_commons_model_config({**CONFIG, "model_type": "mpnet"}, three[:2])
    with pytest.raises(MLCommonsError, match="'electra'.*token_type_ids only for bert/albert"):
        ml_commons_model_config({**CONFIG, "model_type": "electra"}, three)
    with pytest.raises(MLCommonsError, match="Re-export"):
        ml_commons_model_config({**CONFIG, "model_type": "albert"}, three[:2])


def test_settings_are_checked_before_uploading_and_the_call_is_printed(documents, model_zip):
    """Finding 5: ML Commons' defaults refuse a local-file upload (and, without an ml node, the
    deploy); nothing is uploaded and the error carries the exact settings call."""
    path, sha, _ = model_zip
    cluster = ServingFake(docs=documents)
    cluster.ml_settings.update({
        "plugins.ml_commons.allow_registering_model_via_local_file": "false",
        "plugins.ml_commons.only_run_on_ml_node": "true",
    })
    with pytest.raises(MLCommonsError) as err:
        register_and_deploy(serving_client(cluster), path, sha, CONFIG, name="m", version="1")
    assert ('PUT _cluster/settings {"persistent": {"plugins.ml_commons.allow_registering_model_via_local_file": '
            'true, "plugins.ml_commons.only_run_on_ml_node": false}}') in str(err.value)
    assert not any(ex.path.startswith(ML) for ex in cluster.exchanges)  # nothing uploaded
    cluster.node_roles = ("data", "ml")  # an ml node: only the upload setting is missing
    with pytest.raises(MLCommonsError) as err:
        check_ml_settings(serving_client(cluster))
    assert "only_run_on_ml_node" not in str(err.value)
    cluster.ml_settings["plugins.ml_commons.allow_registering_model_via_local_file"] = "true"
    read = check_ml_settings(serving_client(cluster))
    assert read["plugins.ml_commons.native_memory_threshold"] == "90"
    none = ServingFake(docs=documents, ml_settings={})
    with pytest.raises(MLCommonsError, match="ml-commons plugin is missing"):
        check_ml_settings(serving_client(none))


def test_ingest_script_leaves_the_field_out_for_documents_without_text():
    """Finding 6: text_embedding rejects an empty string (and the document); a missing field is skipped."""
    script = embedding_script("title", ["text"])
    assert "if (text != '') { ctx['rgpl_embedding_text'] = text; }" in script
    assert "ctx['rgpl_embedding_text'] = text;" not in script.replace("{ ctx['rgpl_embedding_text'] = text; }", "")
