"""The model-backed query generators of stage 2 (:mod:`rgpl_adapt.generation` plans, filters and persists).

:class:`Seq2SeqGenerator` wraps a doc2query T5 (GPL's default, ``BeIR/query-gen-msmarco-t5-base-v1``),
:class:`CausalLMGenerator` a prompted causal LM (e.g. Gemma-3-270M, a few-shot prompt ending with the
passage); both implement :class:`rgpl_adapt.generation.QueryGenerator`, sample with GPL's nucleus settings,
and are deterministic given a seed. :func:`load_generator` picks one from the model's config.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from rgpl_adapt.config import GenerationConfig
from rgpl_adapt.devices import require, resolve_device
from rgpl_adapt.generation import DEFAULT_PROMPT, QueryGenerator, query_key
from rgpl_adapt.models import ModelLoadError, _explain

logger = logging.getLogger(__name__)

__all__ = ["CausalLMGenerator", "Seq2SeqGenerator", "load_generator", "prompt_example_keys", "validate_prompt"]


def _source(name: str) -> tuple[str, dict[str, Any]]:
    """``from_pretrained`` arguments for a hub name, a folder, or a local ``.gguf`` file."""
    if name.lower().endswith(".gguf"):
        require("gguf", extra="gguf")
        if not os.path.isfile(name):
            raise ModelLoadError(f"GGUF file {name!r} does not exist; pass the local path of a .gguf file")
        path = os.path.abspath(name)
        return os.path.dirname(path), {"gguf_file": os.path.basename(path)}
    return name, {}


def _dtype(device: str, *, fp16_ok: bool) -> Any:
    """bf16 (or fp16 where the model tolerates it) on CUDA; fp32 elsewhere."""
    import torch

    if not str(device).startswith("cuda"):
        return torch.float32
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16 if fp16_ok else torch.float32  # T5 overflows in fp16


class _HFGenerator:
    """Shared loading, seeding and chunking of the transformers-backed generators."""

    kind = ""

    def __init__(self, model_name_or_path: str, device: str = "cpu", cfg: GenerationConfig | None = None) -> None:
        self.cfg = cfg or GenerationConfig()
        self.name = str(model_name_or_path)
        self.device = resolve_device(device)
        self.tokenizer, self.model = self._load()
        self.model.eval()

    def _load(self) -> tuple[Any, Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    def _sampling(self) -> dict[str, Any]:
        return {
            "do_sample": True,
            "top_p": self.cfg.top_p,
            "top_k": self.cfg.top_k,
            "temperature": self.cfg.temperature,
            "max_new_tokens": self.cfg.max_query_len,
        }

    def generate(self, passages: Sequence[str], n: int, *, seed: int | None = None) -> list[list[str]]:
        """``n`` sampled queries per passage, in passage order, in chunks of ``cfg.batch_size``."""
        import torch

        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        out: list[list[str]] = []
        devices = [torch.device(self.device)] if self.device.startswith("cuda") else []
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            torch.manual_seed(self.cfg.seed if seed is None else seed)
            for start in range(0, len(passages), self.cfg.batch_size):
                out.extend(self._generate_batch(list(passages[start : start + self.cfg.batch_size]), n))
        return out

    def _generate_batch(self, passages: list[str], n: int) -> list[list[str]]:  # pragma: no cover
        raise NotImplementedError


class Seq2SeqGenerator(_HFGenerator):
    """A doc2query encoder-decoder (GPL's ``BeIR/query-gen-msmarco-t5-base-v1``)."""

    kind = "seq2seq"

    def _load(self) -> tuple[Any, Any]:
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        source, extra = _source(self.name)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **extra)
            model = AutoModelForSeq2SeqLM.from_pretrained(
                source, dtype=_dtype(self.device, fp16_ok=False), **extra
            )
        except Exception as exc:  # noqa: BLE001 - many failure kinds; re-raised with the fix
            raise _explain(self.name, exc) from exc
        return tokenizer, model.to(self.device)

    def _generate_batch(self, passages: list[str], n: int) -> list[list[str]]:
        enc = self.tokenizer(
            passages, padding=True, truncation=True, max_length=self.cfg.max_input_len, return_tensors="pt"
        ).to(self.device)
        outs = self.model.generate(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], num_return_sequences=n,
            **self._sampling(),
        )
        texts = self.tokenizer.batch_decode(outs, skip_special_tokens=True)
        return [[t.strip() for t in texts[i * n : (i + 1) * n]] for i in range(len(passages))]


class CausalLMGenerator(_HFGenerator):
    """A decoder-only LM prompted with few-shot examples: ``cfg.prompt``, else the user's
    ``cfg.example_queries`` (:func:`rgpl_adapt.query_style.example_queries_prompt`), else
    :data:`DEFAULT_PROMPT`.

    The prompt must contain ``{passage}`` (replaced literally, so other braces are fine). Passages
    are truncated by tokens to ``max_input_len`` and so that prompt + passage + ``max_query_len``
    new tokens fit the model's context. Batches are left-padded; the pad token falls back to EOS.
    The completion is cut at its first newline. A path ending in ``.gguf`` is loaded with
    transformers' GGUF support (``pip install 'rgpl-adapt[gguf]'``).
    """

    kind = "causal"

    def __init__(self, model_name_or_path: str, device: str = "cpu", cfg: GenerationConfig | None = None) -> None:
        cfg = cfg or GenerationConfig()
        if cfg.prompt is not None:
            self.prompt = validate_prompt(cfg.prompt)
        elif cfg.example_queries:  # the user's queries as few-shot examples (rgpl_adapt.query_style)
            from rgpl_adapt.query_style import example_queries_prompt

            self.prompt = example_queries_prompt(list(cfg.example_queries))
        else:
            self.prompt = DEFAULT_PROMPT
        self.example_keys = prompt_example_keys(self.prompt)
        super().__init__(model_name_or_path, device, cfg)
        self.passage_budget = self._passage_budget()
        self._stop_ids = self._stop_token_ids()

    def _load(self) -> tuple[Any, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        source, extra = _source(self.name)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **extra)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=_dtype(self.device, fp16_ok=True), **extra)
        except Exception as exc:  # noqa: BLE001
            raise _explain(self.name, exc) from exc
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise ModelLoadError(f"the tokenizer of {self.name!r} has neither a pad nor an EOS token")
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer, model.to(self.device)

    def _passage_budget(self) -> int:
        overhead = len(self.tokenizer(self.prompt.replace("{passage}", ""))["input_ids"])
        context = getattr(self.model.config, "max_position_embeddings", None)
        if context is None or context <= 0:
            limit = getattr(self.tokenizer, "model_max_length", 0)
            context = limit if 0 < limit < 1_000_000 else None
        budget = self.cfg.max_input_len
        if context is not None:
            budget = min(budget, context - overhead - self.cfg.max_query_len)
        if budget < 1:
            raise ValueError(
                f"the prompt ({overhead} tokens) plus max_query_len={self.cfg.max_query_len} leaves no room "
                f"for the passage in the model's {context}-token context; shorten the prompt"
            )
        return budget

    def _stop_token_ids(self) -> list[int]:
        """The model's EOS ids plus a newline token when the vocabulary has one (ends the question)."""
        configured = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        stop = list(configured) if isinstance(configured, (list, tuple)) else [configured]
        stop = [i for i in [*stop, self.tokenizer.eos_token_id] if i is not None]
        stop = list(dict.fromkeys(stop))
        newline = self.tokenizer.encode("\n", add_special_tokens=False)
        if len(newline) == 1 and self.tokenizer.decode(newline) == "\n":
            stop.append(newline[0])
        return stop

    def truncate(self, passage: str) -> str:
        """The passage cut to at most :attr:`passage_budget` tokens (on a token boundary)."""
        if self.tokenizer.is_fast:
            enc = self.tokenizer(passage, add_special_tokens=False, return_offsets_mapping=True)
            if len(enc["input_ids"]) <= self.passage_budget:
                return passage
            return passage[: enc["offset_mapping"][self.passage_budget - 1][1]]
        ids = self.tokenizer.encode(passage, add_special_tokens=False)
        if len(ids) <= self.passage_budget:
            return passage
        return self.tokenizer.decode(ids[: self.passage_budget])

    def build_prompt(self, passage: str) -> str:
        return self.prompt.replace("{passage}", self.truncate(" ".join(passage.split())))

    def _generate_batch(self, passages: list[str], n: int) -> list[list[str]]:
        enc = self.tokenizer([self.build_prompt(p) for p in passages], padding=True, return_tensors="pt").to(
            self.device
        )
        outs = self.model.generate(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], num_return_sequences=n,
            pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self._stop_ids or None, **self._sampling(),
        )
        texts = self.tokenizer.batch_decode(outs[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        answers = [t.split("\n", 1)[0].strip() for t in texts]
        return [answers[i * n : (i + 1) * n] for i in range(len(passages))]


def prompt_example_keys(prompt: str) -> frozenset[str]:
    """:func:`query_key` of each example question written in a few-shot prompt ("Question: ..." lines)."""
    return frozenset(
        query_key(m.group(1)) for m in re.finditer(r"^\s*Question:[ \t]*(\S.*)$", prompt, flags=re.MULTILINE)
    )


def validate_prompt(prompt: str) -> str:
    """Return ``prompt`` if it has a ``{passage}`` slot, else raise a ValueError saying how to fix it."""
    if "{passage}" not in prompt:
        raise ValueError(
            "the generation prompt has no {passage} slot: write it as few-shot examples ending with "
            "'Passage: {passage}\\nQuestion:'"
        )
    return prompt


def load_generator(cfg: GenerationConfig, device: str = "auto") -> QueryGenerator:
    """The generator for ``cfg.model``; ``kind="auto"`` reads the model config.

    Encoder-decoder models (``is_encoder_decoder``) are seq2seq doc2query models; anything else
    is prompted as a causal LM. ``.gguf`` files are causal. Loading failures raise
    :class:`~rgpl_adapt.models.ModelLoadError` saying to pass a local path.
    """
    cfg = replace(cfg, model=str(cfg.model))
    kind = cfg.kind
    if kind == "auto":
        if cfg.model.lower().endswith(".gguf"):
            kind = "causal"
        else:
            from transformers import AutoConfig

            try:
                model_cfg = AutoConfig.from_pretrained(cfg.model)
            except Exception as exc:  # noqa: BLE001
                raise _explain(cfg.model, exc) from exc
            kind = "seq2seq" if getattr(model_cfg, "is_encoder_decoder", False) else "causal"
        logger.info("generator %s: detected kind %s", cfg.model, kind)
    if kind == "seq2seq":
        return Seq2SeqGenerator(cfg.model, device, cfg)
    if kind == "causal":
        return CausalLMGenerator(cfg.model, device, cfg)
    raise ValueError(f"unknown generator kind {kind!r}; use 'auto', 'seq2seq' or 'causal'")
