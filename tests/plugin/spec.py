"""The OpenSearch maintainers' OpenAPI specification as a test oracle.

Loads ``spec/namespaces/*.yaml`` and ``spec/schemas/*.yaml`` (OpenAPI 3.1, split across files
with relative ``$ref``s) into a ``referencing`` registry, finds the operation for a
(method, path) and validates request bodies and responses with jsonschema (draft 2020-12).

Two adjustments, both making validation stricter, never looser, and ``SPEC_FIXES`` where the spec
contradicts what the engine reads (each documented there):

* ``QueryContainer`` gets ``additionalProperties: false``, so a misspelt or invented query type
  fails (the spec leaves every object open); so does ``SortOptions`` (only ``_score``, ``_geo_distance``,
  ``_script``), else every field sort ``{"f": {"order": "desc"}}`` is also an "options" sort and the
  ``oneOf`` of ``SortCombinations`` rejects it;
* ``_msearch`` bodies are validated pairwise (header, body): the spec's ``oneOf`` of two open
  objects cannot tell them apart.
"""

from __future__ import annotations

import json
import re
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_ROOT = Path("/work/shared/opensearch-api-spec/spec")
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
STRICT = {("schemas/_common.query_dsl.yaml", "QueryContainer"), ("schemas/_common.yaml", "SortOptions")}
#: Where the spec is wrong about what the engine reads, the engine's behaviour wins (each fix says why).
#: ``ScoreRankerCombination`` lists ``rank_constant`` beside ``technique`` only; neural-search 2.19 reads it
#: from ``combination.parameters`` and silently ignores it beside the technique (measured on a real 2.19.1
#: node, tests/cluster/test_findings_node.py). The fix adds ``parameters`` and closes the object, so a
#: misspelt key fails.
SPEC_FIXES = {
    ("schemas/search_pipeline._common.yaml", "ScoreRankerCombination"): {
        "properties": {
            "parameters": {
                "type": "object",
                "properties": {
                    "rank_constant": {"type": "integer", "minimum": 1, "maximum": 10000},
                    "weights": {"type": "array", "items": {"type": "number"}},
                },
                "additionalProperties": False,
            }
        },
        "additionalProperties": False,
    },
}


class SpecError(AssertionError):
    """A request or response does not follow the specification."""


def _pointer(*parts: str) -> str:
    return "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


class OpenSearchSpec:
    """Operations and schemas of the OpenSearch REST API."""

    def __init__(self, root: Path = SPEC_ROOT) -> None:
        if not root.is_dir():
            raise FileNotFoundError(f"OpenSearch API spec not found at {root}")
        self.root = root
        self.documents: dict[str, dict[str, Any]] = {}
        for sub in ("namespaces", "schemas"):
            for path in sorted((root / sub).glob("*.yaml")):
                with open(path) as fh:
                    self.documents[path.resolve().as_uri()] = yaml.load(fh, Loader=_LOADER)
        for rel, name in STRICT:
            schema = self.documents[(root / rel).resolve().as_uri()]["components"]["schemas"][name]
            schema["additionalProperties"] = False
        for (rel, name), fix in SPEC_FIXES.items():
            schema = self.documents[(root / rel).resolve().as_uri()]["components"]["schemas"][name]
            schema.setdefault("properties", {}).update(fix.get("properties", {}))
            if "additionalProperties" in fix:
                schema["additionalProperties"] = fix["additionalProperties"]
        self.registry = Registry().with_resources(
            (uri, Resource.from_contents(doc, default_specification=DRAFT202012)) for uri, doc in self.documents.items()
        )

    @cached_property
    def operations(self) -> list[tuple[re.Pattern[str], int, str, str, dict[str, Any]]]:
        """(path regex, number of path parameters, template, file URI, path item) for every path."""
        ops = []
        for uri, doc in self.documents.items():
            if "/namespaces/" not in uri:
                continue
            for template, item in (doc.get("paths") or {}).items():
                regex = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
                ops.append((re.compile(f"^{regex}$"), template.count("{"), template, uri, item))
        return ops

    def operation(self, method: str, path: str) -> tuple[str, str, dict[str, Any]]:
        """``(file URI, JSON pointer, operation)`` for a request; the most literal template wins."""
        path = path.split("?")[0].rstrip("/") or "/"
        matches = [o for o in self.operations if o[0].match(path) and method.lower() in o[4]]
        if not matches:
            raise SpecError(f"no operation in the spec for {method} {path}")
        _, _, template, uri, item = min(matches, key=lambda o: (o[1], -len(o[2])))
        return uri, _pointer("paths", template, method.lower()), item[method.lower()]

    def operation_id(self, method: str, path: str) -> str:
        return self.operation(method, path)[2]["operationId"]

    def _resolve(self, uri: str, pointer: str) -> tuple[str, str, Any]:
        """Follow ``$ref`` chains from ``uri#pointer``; returns the final location and contents."""
        contents = self.registry.resolver().lookup(f"{uri}#{pointer}").contents
        while isinstance(contents, dict) and "$ref" in contents:
            target, _, fragment = urljoin(uri, contents["$ref"]).partition("#")
            uri, pointer = target, fragment
            contents = self.registry.resolver().lookup(f"{uri}#{pointer}").contents
        return uri, pointer, contents

    def _validate(self, instance: Any, uri: str, pointer: str, what: str) -> None:
        validator = jsonschema.Draft202012Validator({"$ref": f"{uri}#{pointer}"}, registry=self.registry)
        errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
        if errors:
            best = jsonschema.exceptions.best_match(errors)
            raise SpecError(f"{what}: {best.message} at {list(best.absolute_path)}")

    def validate_request(self, method: str, path: str, body: Any) -> None:
        """Raise :class:`SpecError` unless ``body`` (parsed JSON, or a list for NDJSON) is valid."""
        uri, pointer, op = self.operation(method, path)
        if "requestBody" not in op:
            if body not in (None, b"", ""):
                raise SpecError(f"{method} {path} takes no body")
            return
        buri, bpointer, request_body = self._resolve(uri, pointer + "/requestBody")
        if body is None:
            if request_body.get("required"):
                raise SpecError(f"{method} {path} requires a body")
            return
        content = request_body["content"]
        media = "application/x-ndjson" if "application/x-ndjson" in content else "application/json"
        if media == "application/x-ndjson" and not isinstance(body, list):
            raise SpecError(f"{method} {path} takes NDJSON lines")
        spointer = bpointer + _pointer("content", media, "schema")
        if self.operation_id(method, path).startswith("msearch."):
            self._validate_msearch(body, method, path)
            return
        self._validate(body, buri, spointer, f"request body of {method} {path}")

    def _validate_msearch(self, lines: list[Any], method: str, path: str) -> None:
        if len(lines) % 2:
            raise SpecError(f"{method} {path}: NDJSON must alternate header and body lines")
        schemas = (self.root / "schemas/_core.msearch.yaml").resolve().as_uri()
        for i, line in enumerate(lines):
            name = "MultisearchHeader" if i % 2 == 0 else "MultisearchBody"
            self._validate(line, schemas, _pointer("components", "schemas", name), f"{name} #{i // 2} of {path}")

    def validate_response(self, method: str, path: str, status: int, body: Any) -> None:
        """Raise :class:`SpecError` unless the response body follows the status's schema."""
        uri, pointer, op = self.operation(method, path)
        responses = op.get("responses", {})
        key = str(status) if str(status) in responses else "default" if "default" in responses else None
        if key is None:
            if status >= 400:
                return  # error bodies are described once, globally
            raise SpecError(f"{method} {path}: status {status} is not a documented response")
        ruri, rpointer, response = self._resolve(uri, pointer + _pointer("responses", key))
        if "schema" not in (response.get("content") or {}).get("application/json", {}):
            return
        self._validate(body, ruri, rpointer + _pointer("content", "application/json", "schema"),
                       f"response {status} of {method} {path}")


def parse_body(raw: Any) -> Any:
    """A request body as sent on the wire: JSON, NDJSON (a list of lines, ends with a newline), or None."""
    if raw in (None, b"", ""):
        return None
    text = raw.decode() if isinstance(raw, (bytes, bytearray)) else str(raw)
    if text.endswith("\n"):
        return [json.loads(line) for line in text.split("\n") if line.strip()]
    return json.loads(text)
