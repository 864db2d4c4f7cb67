"""Pseudo-query generation: GPL's budget, cleaning rules, batching, and the two model kinds."""

from __future__ import annotations

import json
import random
import shutil
import sys
from collections import Counter
from contextlib import contextmanager
from dataclasses import replace

import pytest

from rgpl_adapt.config import GenerationConfig
from rgpl_adapt.generation import (
    DEFAULT_PROMPT,
    GenerationStats,
    QueryGenerator,
    batch_seed,
    clean_queries,
    filter_queries,
    generate_queries,
    plan_generation,
    queries_per_passage,
    query_drop_reason,
    query_key,
)
from rgpl_adapt.generators import CausalLMGenerator, Seq2SeqGenerator, load_generator
from rgpl_adapt.models import ModelLoadError
from rgpl_adapt.records import Document

# --------------------------------------------------------------------------- budget and sampling


def test_explicit_queries_per_passage_wins():
    assert queries_per_passage(10, GenerationConfig(queries_per_passage=5)) == 5
    with pytest.raises(ValueError, match="at least 1"):
        queries_per_passage(10, GenerationConfig(queries_per_passage=0))


@pytest.mark.parametrize(
    ("n_docs", "expected"),
    [(1_000, 250), (5_183, 49), (83_333, 4), (83_334, 3), (100_000, 3), (5_000_000, 3)],
)
def test_gpl_rule(n_docs, expected):
    # max(3, ceil(250k / n)): 5183 is SciFact's corpus size (250000 / 5183 = 48.2 -> 49).
    assert queries_per_passage(n_docs, GenerationConfig()) == expected


def test_gpl_rule_needs_documents():
    with pytest.raises(ValueError, match="empty"):
        queries_per_passage(0, GenerationConfig())


def _docs(n: int) -> list[Document]:
    return [Document(id=f"p{i}", text=f"passage number {i} " + "word " * (i % 7)) for i in range(n)]


def test_small_corpus_is_never_sampled(documents):
    # 60 passages: ceil(250k / 60) = 4167 per passage, 250,020 in all; the overshoot is rounding.
    selected, qpp = plan_generation(documents, GenerationConfig())
    assert qpp == 4167
    assert selected == list(documents)


def test_minimum_of_three_triggers_sampling_in_corpus_order():
    docs = _docs(1_000)
    cfg = GenerationConfig(max_queries=600)  # 1000 x 3 > 600: keep 600 // 3 = 200 passages
    selected, qpp = plan_generation(docs, cfg)
    assert qpp == 3
    assert len(selected) == 200
    positions = [int(d.id[1:]) for d in selected]
    assert positions == sorted(positions) and len(set(positions)) == 200
    again, _ = plan_generation(docs, cfg)
    assert again == selected
    other, _ = plan_generation(docs, replace(cfg, seed=7))
    assert other != selected
    custom, _ = plan_generation(docs, cfg, random.Random(123))
    assert len(custom) == 200 and custom != selected


def test_explicit_qpp_is_capped_strictly():
    docs = _docs(60)
    selected, qpp = plan_generation(docs, GenerationConfig(queries_per_passage=2, max_queries=101))
    assert qpp == 2 and len(selected) == 50
    kept, _ = plan_generation(docs, GenerationConfig(queries_per_passage=2, max_queries=120))
    assert len(kept) == 60
    with pytest.raises(ValueError, match="raise max_queries"):
        plan_generation(docs, GenerationConfig(queries_per_passage=10, max_queries=5))


def test_plan_of_nothing():
    assert plan_generation([], GenerationConfig()) == ([], 3)


# --------------------------------------------------------------------------- cleaning rules


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("", "empty"),
        ("   \t ", "empty"),
        ("?? !!", "no_words"),
        ("vitamin?", "too_short"),
        ("cancer cancer cancer", "repeated"),
        ("Cancer cancer", "repeated"),
        ("what is is is is is is is is", "repeated"),
        ("vitamin d calcium and bone", "copies_passage"),
        ("vitamin d calcium bone", None),  # skips a word: not a verbatim copy
        ("Vitamin D, calcium and", "copies_passage"),
        (" ".join(f"w{i}" for i in range(33)), "too_long"),
        ("does vitamin d prevent fractures", None),
        ("vitamin d", None),  # a short title-like match of the passage start is a fine query
        ("what is the effect of the drug on the heart", None),
    ],
)
def test_drop_reasons(query, reason):
    passage = "Vitamin D, calcium and bone health in the elderly"
    assert query_drop_reason(query, passage) == reason


def test_max_words_is_configurable():
    query = "one two three four five"
    assert query_drop_reason(query, "x", max_words=4) == "too_long"
    assert query_drop_reason(query, "x", max_words=5) is None


def test_filter_collapses_whitespace_and_dedupes_case_insensitively():
    raw = ["  what   is\nvitamin d ", "What is Vitamin D?", "??", "does dose matter", "what is vitamin d"]
    kept, dropped = filter_queries(raw, "an unrelated passage text")
    assert kept == ["what is vitamin d", "does dose matter"]
    assert dropped == Counter({"duplicate": 2, "no_words": 1})
    assert clean_queries(raw, "an unrelated passage text") == kept


def test_query_key_ignores_case_and_punctuation():
    assert query_key("What is X?") == query_key("what  is x") == "what is x"
    assert query_key("what is y") != query_key("what is x")


def test_batch_seed_is_stable_and_distinct():
    assert batch_seed(42, ["a", "b"]) == batch_seed(42, ["a", "b"])
    assert batch_seed(42, ["a", "b"]) != batch_seed(43, ["a", "b"])
    assert batch_seed(42, ["a", "b"]) != batch_seed(42, ["b", "a"])
    assert 0 <= batch_seed(42, ["a"]) < 2**32


# --------------------------------------------------------------------------- the stage, with a fake generator


class EchoGenerator:
    """Queries built from the passage's own words, so each output shows which passage it came from."""

    def __init__(self, shared: str | None = None) -> None:
        self.calls: list[tuple[list[str], int, int | None]] = []
        self.shared = shared

    def generate(self, passages, n, *, seed=None):
        self.calls.append((list(passages), n, seed))
        out = []
        for p in passages:
            queries = [f"about {p.split()[0]} {p.split()[2]} variant{k}" for k in range(n)]
            if self.shared is not None:
                queries[0] = self.shared
            out.append(queries)
        return out


def recording_progress(log: dict):
    """A progress factory that records its total, unit and updates into ``log``."""

    class Bar:
        def update(self, n=1):
            log["updates"].append(n)

        def set_postfix(self, **values):
            pass

    @contextmanager
    def factory(total=None, desc="", unit="it"):
        log.update(total=total, unit=unit, updates=[])
        yield Bar()

    return factory


def test_fake_satisfies_protocol():
    assert isinstance(EchoGenerator(), QueryGenerator)


def test_generate_restores_corpus_order_and_batches_by_length(documents):
    gen = EchoGenerator()
    cfg = GenerationConfig(queries_per_passage=2, batch_size=7)
    log: dict = {}
    queries, stats = generate_queries(documents, gen, cfg, progress=recording_progress(log))

    # Batches: at most batch_size passages, longest first overall.
    sizes = [len(p) for p, _, _ in gen.calls]
    assert sizes == [7] * 8 + [4]
    lengths = [len(t) for passages, _, _ in gen.calls for t in passages]
    assert lengths == sorted(lengths, reverse=True)
    assert all(n == 2 for _, n, _ in gen.calls)
    assert len({seed for _, _, seed in gen.calls}) == len(gen.calls)

    # Output: corpus order, each query attached to the passage it was generated from.
    assert [q.doc_id for q in queries] == [d.id for d in documents for _ in range(2)]
    by_id = {d.id: d for d in documents}
    for q in queries:
        words = by_id[q.doc_id].full_text().split()
        assert q.text.startswith(f"about {words[0]} {words[2]} ")
    assert [q.qid for q in queries[:2]] == ["d0-q0", "d0-q1"]
    assert len({q.qid for q in queries}) == len(queries)

    assert stats == GenerationStats(
        passages=60, passages_used=60, queries_per_passage=2, generated=120, kept=120, dropped={}
    )
    assert log["total"] == 60 and log["unit"] == "passage" and sum(log["updates"]) == 60


def test_cross_corpus_duplicates_keep_the_first(documents):
    docs = documents[:10]
    gen = EchoGenerator(shared="what is the shared question")
    queries, stats = generate_queries(docs, gen, GenerationConfig(queries_per_passage=2, batch_size=3))
    shared = [q for q in queries if q.text == "what is the shared question"]
    assert [q.doc_id for q in shared] == ["d0"]
    assert stats.dropped == {"duplicate_across": 9}
    assert stats.kept == 11 == len(queries)
    # Numbering counts kept queries: passages that lost their first query still start at q0.
    assert [q.qid for q in queries if q.doc_id == "d1"] == ["d1-q0"]


def test_chunks_share_seen_and_are_deterministic(documents):
    cfg = GenerationConfig(queries_per_passage=2, batch_size=4)
    seen: set[str] = set()
    first, _ = generate_queries(documents[:5], EchoGenerator(shared="same q here"), cfg, qpp=2, seen=seen)
    second, stats = generate_queries(documents[5:9], EchoGenerator(shared="same q here"), cfg, qpp=2, seen=seen)
    assert sum(q.text == "same q here" for q in first + second) == 1
    assert stats.dropped == {"duplicate_across": 4}
    assert query_key("same q here") in seen

    a, b = EchoGenerator(), EchoGenerator()
    generate_queries(documents[5:9], a, cfg, qpp=2)
    generate_queries(documents[5:9], b, cfg, qpp=2)
    assert a.calls == b.calls  # same passages, batches and seeds


def test_explicit_qpp_skips_planning():
    docs = _docs(50)
    cfg = GenerationConfig(max_queries=10)  # planning would sample these 50 passages down to 3
    queries, stats = generate_queries(docs, EchoGenerator(), cfg, qpp=1)
    assert stats.passages_used == 50 and len(queries) == 50


def test_stats_merge(documents):
    cfg = GenerationConfig(queries_per_passage=2)
    seen: set[str] = set()
    _, s1 = generate_queries(documents[:4], EchoGenerator(shared="q q2 shared"), cfg, seen=seen)
    _, s2 = generate_queries(documents[4:6], EchoGenerator(shared="q q2 shared"), cfg, seen=seen)
    total = s1.merged(s2)
    assert total.passages == 6 and total.generated == 12
    assert total.kept == s1.kept + s2.kept
    assert total.dropped["duplicate_across"] == 3 + 2


def test_bad_inputs_fail_clearly(documents):
    dup = [documents[0], documents[0]]
    with pytest.raises(ValueError, match="duplicate document id"):
        generate_queries(dup, EchoGenerator(), GenerationConfig(queries_per_passage=1))

    class Short:
        def generate(self, passages, n, *, seed=None):
            return [["a query"]]

    with pytest.raises(RuntimeError, match="1 query lists for 3 passages"):
        generate_queries(documents[:3], Short(), GenerationConfig(queries_per_passage=1))


def test_passages_left_without_queries_are_counted():
    class Degenerate:
        def generate(self, passages, n, *, seed=None):
            return [["", "!!"] for _ in passages]

    queries, stats = generate_queries(_docs(4), Degenerate(), GenerationConfig(queries_per_passage=2))
    assert queries == []
    assert stats.passages_without_queries == 4
    assert stats.dropped == {"empty": 4, "no_words": 4}


# --------------------------------------------------------------------------- real (tiny) models


SMALL = GenerationConfig(queries_per_passage=3, batch_size=2, max_query_len=8, max_input_len=64)


@pytest.fixture(scope="module")
def t5_gen(tiny_t5):
    return Seq2SeqGenerator(str(tiny_t5), "cpu", replace(SMALL, model=str(tiny_t5)))


@pytest.fixture(scope="module")
def causal_gen(tiny_causal_lm):
    return CausalLMGenerator(str(tiny_causal_lm), "cpu", replace(SMALL, model=str(tiny_causal_lm)))


@pytest.mark.parametrize("which", ["t5_gen", "causal_gen"])
def test_model_generates_n_per_passage_deterministically(which, request, documents):
    gen = request.getfixturevalue(which)
    passages = [d.full_text() for d in documents[:5]]  # 3 internal batches of at most 2
    out = gen.generate(passages, 3, seed=11)
    assert len(out) == 5 and all(len(qs) == 3 for qs in out)
    assert all(isinstance(q, str) and "\n" not in q for qs in out for q in qs)
    assert any(q for qs in out for q in qs)
    assert gen.generate(passages, 3, seed=11) == out
    assert gen.generate(passages, 3, seed=12) != out


@pytest.mark.parametrize("which", ["t5_gen", "causal_gen"])
def test_stage_runs_on_a_model(which, request, documents):
    gen = request.getfixturevalue(which)
    cfg = replace(SMALL, batch_size=4)
    queries, stats = generate_queries(documents[:6], gen, cfg)
    again, _ = generate_queries(documents[:6], gen, cfg)
    assert queries == again
    assert stats.generated == 18 and stats.kept == len(queries)
    assert stats.kept + sum(stats.dropped.values()) == 18
    assert {q.doc_id for q in queries} <= {d.id for d in documents[:6]}


def test_sampling_does_not_disturb_the_global_rng(t5_gen):
    import torch

    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    t5_gen.generate(["vitamin d bone"], 2, seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_causal_prompt_truncates_passages_by_tokens(tiny_causal_lm, documents):
    gen = CausalLMGenerator(str(tiny_causal_lm), "cpu", replace(SMALL, max_input_len=6))
    assert gen.passage_budget == 6
    passage = " ".join(d.text for d in documents[:3])
    prompt = gen.build_prompt(passage)
    assert prompt.startswith(DEFAULT_PROMPT.split("{passage}")[0])
    assert prompt.endswith("\nQuestion:")
    cut = prompt[len(DEFAULT_PROMPT.split("{passage}")[0]) : -len("\nQuestion:")]
    assert passage.startswith(cut) and len(cut) < len(passage)
    assert len(gen.tokenizer(cut, add_special_tokens=False)["input_ids"]) == 6
    assert gen.tokenizer.padding_side == "left"


def test_causal_custom_prompt(tiny_causal_lm):
    prompt = "Text: {passage}\nA JSON-ish {query}:"
    gen = CausalLMGenerator(str(tiny_causal_lm), "cpu", replace(SMALL, prompt=prompt))
    assert gen.build_prompt("vitamin d bone") == "Text: vitamin d bone\nA JSON-ish {query}:"


def test_prompt_without_passage_slot_fails_clearly(tiny_causal_lm):
    with pytest.raises(ValueError, match=r"\{passage\}"):
        CausalLMGenerator(str(tiny_causal_lm), "cpu", replace(SMALL, prompt="Passage: ...\nQuestion:"))


def test_prompt_longer_than_context_fails_clearly(tiny_causal_lm):
    long_prompt = "question " * 1100 + "{passage}"
    with pytest.raises(ValueError, match="shorten the prompt"):
        CausalLMGenerator(str(tiny_causal_lm), "cpu", replace(SMALL, prompt=long_prompt))


def test_pad_token_falls_back_to_eos(tiny_causal_lm, tmp_path):
    model = tmp_path / "no-pad"
    shutil.copytree(tiny_causal_lm, model)
    cfg_path = model / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text())
    tok_cfg.pop("pad_token", None)
    cfg_path.write_text(json.dumps(tok_cfg))
    special = model / "special_tokens_map.json"
    if special.exists():
        data = json.loads(special.read_text())
        data.pop("pad_token", None)
        special.write_text(json.dumps(data))
    gen = CausalLMGenerator(str(model), "cpu", SMALL)
    assert gen.tokenizer.pad_token == gen.tokenizer.eos_token
    out = gen.generate(["vitamin d bone fracture elderly", "tumor"], 2, seed=1)
    assert [len(qs) for qs in out] == [2, 2]


def test_auto_kind_detection(tiny_t5, tiny_causal_lm):
    assert isinstance(load_generator(replace(SMALL, model=str(tiny_t5)), "cpu"), Seq2SeqGenerator)
    assert isinstance(load_generator(replace(SMALL, model=str(tiny_causal_lm)), "cpu"), CausalLMGenerator)
    forced = load_generator(replace(SMALL, model=str(tiny_causal_lm), kind="causal"), "cpu")
    assert isinstance(forced, CausalLMGenerator)
    with pytest.raises(ValueError, match="unknown generator kind"):
        load_generator(replace(SMALL, model=str(tiny_t5), kind="bert"), "cpu")  # type: ignore[arg-type]


def test_missing_model_raises_model_load_error(tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ModelLoadError, match="local path"):
        load_generator(replace(SMALL, model=missing), "cpu")
    with pytest.raises(ModelLoadError, match="local path"):
        Seq2SeqGenerator(missing, "cpu", SMALL)
    with pytest.raises(ModelLoadError, match="local path"):
        CausalLMGenerator(missing, "cpu", SMALL)


def test_gguf_without_the_package_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # makes `import gguf` fail
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF")
    with pytest.raises(ImportError, match=r"rgpl-adapt\[gguf\]"):
        load_generator(replace(SMALL, model=str(path)), "cpu")


def test_prompt_examples_are_never_kept_as_queries(documents):
    """Small causal LMs sometimes copy a few-shot example ("how tall is the eiffel tower"): drop it."""
    from rgpl_adapt.generation import DEFAULT_PROMPT
    from rgpl_adapt.generators import prompt_example_keys

    keys = prompt_example_keys(DEFAULT_PROMPT)
    assert query_key("How tall is the Eiffel Tower?") in keys and len(keys) == 3

    class Copycat:
        example_keys = keys

        def generate(self, passages, n, *, seed=None):
            return [["how tall is the eiffel tower", f"what about {p.split()[0]} levels"] for p in passages]

    queries, stats = generate_queries(documents[:3], Copycat(), GenerationConfig(batch_size=2), qpp=2)
    assert stats.dropped.get("prompt_example") == 3
    assert all("eiffel" not in q.text for q in queries) and len(queries) == 3


def test_the_generators_old_import_path_still_works():
    import rgpl_adapt.generation as generation
    import rgpl_adapt.generators as generators

    from rgpl_adapt.generation import load_generator as old  # noqa: F401 (the import is the test)

    assert old is generators.load_generator and generation.CausalLMGenerator is generators.CausalLMGenerator
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        generation.nope  # noqa: B018
