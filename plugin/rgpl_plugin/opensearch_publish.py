"""Zero-downtime write-back on OpenSearch (and Elasticsearch): a new version index behind an alias.

:func:`publish_version` serves a vector space of an :class:`~rgpl_plugin.opensearch.OpenSearchBackend`:

1. create ``<alias>-rgpl-<version>`` with the source index's mapping and analysis settings plus
   the ``knn_vector`` field (no replicas, no refresh while loading); the mapping's
   ``_meta.rgpl`` records the version, the space and the index it replaces;
2. fill it (:mod:`rgpl_plugin.version_load`): by default read the source once and bulk-index each
   document's ``_source`` with its vector in one write, over a few parallel bulk streams (429s
   retried, every refused id reported); ``write="reindex"`` copies with a ``_reindex`` task and
   adds the vectors in a second pass of partial updates (every document written twice);
3. restore replicas and refresh interval, refresh, and verify: as many documents as the read of
   the source saw (writes to the source meanwhile do not fail it), and a vector on each document
   that had one;
4. :func:`swap_alias` in ONE ``_aliases`` call (remove old, add new), so readers never see a
   missing or doubled alias.

Any failure before the swap deletes the half-built version index (it is ours) and leaves the
alias where it was. :func:`rollback` points the alias back at the index a version replaced.

An ``alias`` that does not exist yet is created next to the user's index (``backend.index``),
which stays untouched and is what :func:`rollback` points the alias back to.

A concrete index named like the alias cannot coexist with the alias: taking its name over
deletes that index in the same ``_aliases`` call (``remove_index``), so it needs
``allow_alias_takeover=True`` and cannot be rolled back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from rgpl_adapt.progress import ProgressFactory, silent

from rgpl_plugin import mappings as m
from rgpl_plugin.base import BackendError
from rgpl_plugin.errors import AliasSwapError, IndexMissingError
from rgpl_plugin.version_load import (
    WRITE_METHODS,
    VectorSource,
    WriteMethod,
    _body,
    _is_es,
    load_by_reindex,
    load_one_pass,
    space_vectors,
    wait_for_task,  # noqa: F401 - re-exported
)

log = logging.getLogger(__name__)

AliasState = Literal["alias", "index", "absent"]


@dataclass(frozen=True, slots=True)
class PublishResult:
    """What :func:`publish_version` did."""

    alias: str
    index: str
    previous: str | None
    documents: int
    vectors: int
    write: str = "bulk"
    seconds: float = 0.0
    """Seconds the load (copy + vectors) took."""


def _first(resp: Any) -> dict[str, Any]:
    """The body of the only index in a per-index response (``{index: {...}}``)."""
    return next(iter(_body(resp).values()))



def _delete_index(client: Any, index: str) -> None:
    if _is_es(client):
        client.indices.delete(index=index, ignore_unavailable=True)
    else:
        client.indices.delete(index=index, params={"ignore_unavailable": "true"})


def alias_state(client: Any, name: str) -> tuple[AliasState, list[str]]:
    """Whether ``name`` is an alias (and its indices), a concrete index, or absent."""
    if client.indices.exists_alias(name=name):
        return "alias", sorted(_body(client.indices.get_alias(name=name)))
    if client.indices.exists(index=name):
        return "index", [name]
    return "absent", []


ALIAS_PROPERTIES = ("filter", "index_routing", "search_routing", "is_write_index")


def alias_properties(client: Any, alias: str, index: str) -> dict[str, Any]:
    """What ``index`` carries under ``alias`` (filter, routing, is_write_index), to carry over on a swap."""
    entry = _body(client.indices.get_alias(index=index, name=alias)).get(index, {}).get("aliases", {}).get(alias, {})
    return {key: entry[key] for key in ALIAS_PROPERTIES if entry.get(key) is not None}


def _takeover_refused(name: str) -> AliasSwapError:
    return AliasSwapError(
        f"{name!r} is a concrete index, not an alias. Serving a new version without downtime needs an alias "
        f"named {name!r}, and an alias cannot share its name with an index: the swap would DELETE index "
        f"{name!r} (an '_aliases' remove_index action) in the same call that adds the alias, and that cannot "
        f"be rolled back. Either point your application at an alias you create yourself and pass alias=..., "
        f"or snapshot the index and pass allow_alias_takeover=True. Nothing was changed."
    )


def swap_alias(client: Any, alias: str, old_index: str | None, new_index: str, *, takeover: bool = False) -> None:
    """Point ``alias`` from ``old_index`` to ``new_index`` in one ``_aliases`` call.

    ``old_index=None`` adds a new alias. ``takeover=True`` (only via :func:`publish_version` with
    ``allow_alias_takeover``) replaces the concrete index ``alias`` by the alias.
    Raises :class:`AliasSwapError` (alias untouched) when the alias does not point where expected.
    """
    if not client.indices.exists(index=new_index):
        raise IndexMissingError(f"cannot point {alias!r} at {new_index!r}: that index does not exist")
    state, current = alias_state(client, alias)
    if takeover:
        if state != "index":
            raise AliasSwapError(f"alias takeover expected a concrete index named {alias!r}, found {state}")
        actions: list[dict[str, Any]] = [
            {"add": {"index": new_index, "alias": alias}},
            {"remove_index": {"index": alias}},
        ]
    elif state == "index":
        raise _takeover_refused(alias)
    elif old_index is None:
        if state != "absent":
            raise AliasSwapError(f"alias {alias!r} already points at {current}; pass old_index to swap it")
        actions = [{"add": {"index": new_index, "alias": alias}}]
    else:
        if current != [old_index]:
            raise AliasSwapError(
                f"alias {alias!r} points at {current or 'nothing'}, not at {old_index!r}; someone else changed it. "
                "Nothing was changed; check GET _alias/" + alias
            )
        # the new index gets what the old one had under this alias (filter, routing, is_write_index);
        # must_exist makes the call fail, changing nothing, if someone removed the alias meanwhile
        actions = [
            {"remove": {"index": old_index, "alias": alias, "must_exist": True}},
            {"add": {"index": new_index, "alias": alias, **alias_properties(client, alias, old_index)}},
        ]
    client.indices.update_aliases(body={"actions": actions})
    log.info("alias %s: %s -> %s", alias, old_index, new_index)


def version_meta(client: Any, index: str) -> dict[str, Any]:
    """The ``_meta.rgpl`` record of a version index ({} for other indices)."""
    body = _first(client.indices.get_mapping(index=index))
    return dict(body.get("mappings", {}).get("_meta", {}).get("rgpl", {}))


def rollback(client: Any, alias: str) -> str:
    """Point ``alias`` back at the index its current version replaced; returns that index."""
    state, current = alias_state(client, alias)
    if state != "alias" or len(current) != 1:
        raise AliasSwapError(f"{alias!r} is not an alias of one index ({state}: {current}); nothing to roll back")
    previous = version_meta(client, current[0]).get("previous")
    if not previous:
        raise AliasSwapError(
            f"{current[0]!r} records no previous index (not an rgpl version, or it took over a concrete index); "
            "nothing to roll back to"
        )
    if not client.indices.exists(index=previous):
        raise AliasSwapError(f"the previous index {previous!r} no longer exists; cannot roll back {alias!r}")
    swap_alias(client, alias, current[0], previous)
    return previous


def create_version_index(
    client: Any,
    alias: str,
    version: str | int,
    source_index: str,
    dimension: int,
    *,
    vector_field: str = "rgpl_vector",
    engine: str = "lucene",
    meta: dict[str, Any] | None = None,
) -> str:
    """Create ``<alias>-rgpl-<version>`` = source mapping + vector field; never overwrites."""
    name = m.version_index_name(alias, version)
    if client.indices.exists(index=name):
        raise AliasSwapError(f"version index {name!r} already exists; choose a new version (or delete it first)")
    mapping = _first(client.indices.get_mapping(index=source_index))["mappings"]
    settings = _first(client.indices.get_settings(index=source_index))["settings"]["index"]
    body = m.version_index_body(
        mapping, settings, dimension, vector_field=vector_field, engine=engine, meta=meta, es=_is_es(client)
    )
    client.indices.create(index=name, body=body)
    return name


def _restore_settings(client: Any, index: str, source_settings: dict[str, Any]) -> None:
    replicas = int(source_settings.get("number_of_replicas", 1))
    refresh = source_settings.get("refresh_interval", "1s")
    client.indices.put_settings(index=index, body=m.after_load_settings(replicas, refresh))
    client.indices.refresh(index=index)


def publish_version(
    backend: Any,
    space: str,
    version: str | int,
    *,
    alias: str | None = None,
    allow_alias_takeover: bool = False,
    write: WriteMethod = "bulk",
    vectors: VectorSource | None = None,
    threads: int = 4,
    reindex_timeout_s: float = 3600.0,
    before_swap: Callable[[str], None] | None = None,
    progress: ProgressFactory = silent,
) -> PublishResult:
    """Serve vector space ``space`` of ``backend`` as version ``version`` behind ``alias``
    (default: the backend's index name). See the module docstring for the steps.

    ``write`` picks how the version index is filled (:mod:`rgpl_plugin.version_load`): ``"bulk"``
    reads the source once and writes ``_source`` + vector in one bulk pass over ``threads`` streams,
    with the vectors of ``vectors`` (default: the space's shadow index, by ``_id``); ``"reindex"``
    copies with ``_reindex`` and adds the vectors with a second pass of partial updates.

    ``before_swap(target_index)`` runs after verification and before the alias moves (e.g. to
    create search/ingest pipelines and set them as the new index's defaults); when it raises,
    the version index is deleted and the alias stays where it was, like any other failure."""
    if write not in WRITE_METHODS:
        raise ValueError(f"write must be one of {WRITE_METHODS}, not {write!r}")
    if vectors is not None and write != "bulk":
        raise ValueError("vectors=... is for write='bulk'; the reindex path copies the space's shadow index")
    client = backend.client
    alias = alias or backend.index
    if backend.id_field is not None:
        raise BackendError("publish_version copies vectors by _id; it does not support id_field backends")
    shadow = backend.shadow_index(space)
    if not backend.has_vectors(space):
        raise IndexMissingError(f"vector space {space!r} ({shadow}) does not exist; write it with put_vectors first")
    backend.finish_vectors(space)
    state, current = alias_state(client, alias)
    if state == "absent":
        if alias == backend.index:
            raise IndexMissingError(f"{alias!r} is neither an index nor an alias; nothing to publish a version of")
        # a new alias next to the user's index: the version copies what backend.index names, and
        # rollback points the new alias back at that index
        _, current = alias_state(client, backend.index)
        if not current:
            raise IndexMissingError(f"{backend.index!r} is neither an index nor an alias; nothing to publish a version of")
    if state == "index" and not allow_alias_takeover:
        raise _takeover_refused(alias)
    if len(current) != 1:
        raise AliasSwapError(f"alias {alias!r} points at several indices {current}; publish needs exactly one")
    source = current[0]
    field = _first(client.indices.get_mapping(index=shadow))["mappings"]["properties"][backend.vector_field]
    dimension = int(field.get("dimension") or field["dims"])
    previous = source if state in ("alias", "absent") else None
    meta = {"version": str(version), "space": space, "source_index": source, "previous": previous}
    target = create_version_index(
        client, alias, version, source, dimension, vector_field=backend.vector_field, engine=backend.engine, meta=meta
    )
    try:
        n_vectors = int(_body(client.count(index=shadow))["count"])
        if write == "bulk":
            load = load_one_pass(backend, source, target, vectors or space_vectors(backend, space),
                                 threads=threads, progress=progress)
        else:
            load = load_by_reindex(backend, source, target, space, timeout_s=reindex_timeout_s, progress=progress)
        source_settings = _first(client.indices.get_settings(index=source))["settings"]["index"]
        _restore_settings(client, target, source_settings)
        n_target = _body(client.count(index=target))["count"]
        exists = {"query": {"exists": {"field": backend.vector_field}}}
        with_vec = _body(client.count(index=target, body=exists))["count"]
        # against what the load read (PIT/scroll snapshot, or the reindex's total): writes to the
        # source meanwhile are not in this version and do not fail the check
        expected_vec = load.with_vector if write == "bulk" else n_vectors
        if n_target != load.read or load.written != load.read or with_vec != expected_vec:
            raise AliasSwapError(
                f"verification failed for {target}: {n_target} documents (the read saw {load.read}, "
                f"{load.written} written), {with_vec} with a vector (expected {expected_vec}; the space has "
                f"{n_vectors})"
            )
        if write == "bulk" and load.with_vector < load.read:
            log.warning("%d of %d documents of %s have no vector in space %s (written after it was "
                        "encoded?); they are served without one", load.read - load.with_vector, load.read, source, space)
        if before_swap is not None:
            before_swap(target)
        swap_alias(client, alias, source if state == "alias" else None, target, takeover=state == "index")
    except Exception as exc:
        try:
            _delete_index(client, target)
        except Exception as cleanup:  # the alias is untouched either way; report the first error
            log.info("could not delete %s after a failed publish: %s", target, type(cleanup).__name__)
        if isinstance(exc, BackendError):
            raise
        raise backend._error(exc, f"publishing version {version} of {alias!r}", target) from None
    log.info("published %s as %s (previous %s; %s, %d documents in %.1fs)", target, alias, previous, write,
             load.read, load.seconds)
    return PublishResult(alias=alias, index=target, previous=previous, documents=n_target, vectors=with_vec,
                         write=write, seconds=round(load.seconds, 3))
