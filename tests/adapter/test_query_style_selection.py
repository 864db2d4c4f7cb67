"""Example queries steer generation: the causal LM's prompt, or seq2seq candidates kept by style."""

from __future__ import annotations

from dataclasses import asdict, replace

import pytest

from rgpl_adapt.config import AdaptConfig, GenerationConfig, config_hash
from rgpl_adapt.generation import generate_queries
from rgpl_adapt.generators import CausalLMGenerator, Seq2SeqGenerator
from rgpl_adapt.query_style import StyleModel, select_by_style, style_features

CLAIMS = ("Aspirin lowers the risk of stroke.", "Vitamin D deficiency weakens bones.",
          "Smoking increases lung cancer incidence in adults.", "Exercise reduces blood pressure.")
KEYWORDS = ("aspirin stroke", "vitamin d bones", "lung cancer smoking risk", "blood pressure exercise")


def test_style_features():
    assert style_features("What is aspirin?")[1:] == (1.0, 1.0, 0.0, 1.0, 0.0)
    assert style_features("aspirin 100 mg")[1:] == (0.0, 0.0, 0.0, 0.0, 1.0)


def test_claims_prefer_claims_and_keywords_prefer_keywords():
    candidates = ["what does aspirin do to the risk of stroke?", "Aspirin reduces stroke risk.", "aspirin stroke"]
    assert select_by_style(candidates, StyleModel(CLAIMS))[0] == "Aspirin reduces stroke risk."
    assert select_by_style(candidates, StyleModel(KEYWORDS))[0] == "aspirin stroke"
    questions = StyleModel(["how does aspirin work?", "what causes stroke?", "is vitamin d safe?"])
    assert select_by_style(candidates, questions)[0] == candidates[0]
    with pytest.raises(ValueError):
        StyleModel(["  "])


class FakeSeq2Seq:
    """Per passage, candidates in three styles in turn: a question, a claim, keywords (unique per passage)."""

    kind = "seq2seq"

    def __init__(self):
        self.asked: list[int] = []
        self.passages = 0

    def generate(self, passages, n, *, seed=None):
        self.asked.append(n)
        styles = ["what is the {w} of {v} {tag}?", "The {w} changes {v} {tag}.", "{w} {v} {tag}"]
        out = []
        for p in passages:
            words = [w for w in p.split() if w.isalpha()]
            tag = chr(97 + self.passages % 26) + chr(97 + self.passages // 26) + "z"
            self.passages += 1
            out.append([styles[k % 3].format(w=words[k % len(words)], v=words[(k + 1) % len(words)], tag=tag)
                        for k in range(n)])
        return out


def test_seq2seq_oversamples_and_keeps_the_closest_style(documents):
    gen = FakeSeq2Seq()
    cfg = GenerationConfig(queries_per_passage=2, batch_size=8, example_queries=CLAIMS)
    queries, stats = generate_queries(documents[:6], gen, cfg)
    assert set(gen.asked) == {6}  # 3 x 2 candidates per passage
    per_doc = {}
    for q in queries:
        per_doc.setdefault(q.doc_id, []).append(q.text)
    assert all(len(v) == 2 for v in per_doc.values())
    assert all(text.endswith(".") for v in per_doc.values() for text in v)  # the claims, like the examples
    assert stats.style_candidates == stats.style_kept + stats.dropped["style"] + stats.dropped.get("duplicate_across", 0)
    assert stats.style_kept == len(queries) == 12 and stats.dropped["style"] > 0
    plain, plain_stats = generate_queries(documents[:6], gen, replace(cfg, example_queries=()))
    assert gen.asked[-1] == 2 and plain_stats.style_candidates == 0 and "style" not in plain_stats.dropped


def test_causal_generators_are_prompted_not_filtered(documents):
    class FakeCausal(FakeSeq2Seq):
        kind = "causal"

    gen = FakeCausal()
    _, stats = generate_queries(documents[:3], gen, GenerationConfig(queries_per_passage=2, example_queries=CLAIMS))
    assert gen.asked == [2] and stats.style_candidates == 0


def test_causal_prompt_is_built_from_the_example_queries(tiny_causal_lm):
    cfg = GenerationConfig(model=str(tiny_causal_lm), max_query_len=8, max_input_len=64, example_queries=CLAIMS)
    gen = CausalLMGenerator(str(tiny_causal_lm), "cpu", cfg)
    assert f"Question: {CLAIMS[0]}" in gen.prompt and gen.prompt.endswith("Passage: {passage}\nQuestion:")
    own = CausalLMGenerator(str(tiny_causal_lm), "cpu", replace(cfg, prompt="Q for {passage}:"))
    assert own.prompt == "Q for {passage}:"  # an explicit prompt wins


def test_tiny_t5_output_is_filtered_by_style(tiny_t5, documents):
    cfg = GenerationConfig(model=str(tiny_t5), queries_per_passage=2, batch_size=4, max_query_len=6,
                           max_input_len=64, example_queries=KEYWORDS)
    gen = Seq2SeqGenerator(str(tiny_t5), "cpu", cfg)
    queries, stats = generate_queries(documents[:6], gen, cfg)
    assert stats.generated == 6 * 2 * 3
    assert stats.style_candidates > stats.style_kept == len(queries) > 0
    assert stats.style_kept + stats.dropped["style"] + stats.dropped.get("duplicate_across", 0) == stats.style_candidates
    per_doc = [sum(q.doc_id == d.id for q in queries) for d in documents[:6]]
    assert max(per_doc) <= 2  # as many as without examples, chosen from 3x the candidates


def test_pipeline_records_style_counts(tmp_path, tiny_t5, documents):
    from rgpl_adapt.pipeline import Pipeline

    cfg = AdaptConfig(device="cpu")
    cfg = replace(cfg, generation=GenerationConfig(model=str(tiny_t5), queries_per_passage=2, batch_size=4,
                                                   max_query_len=6, max_input_len=64, example_queries=KEYWORDS))
    from rgpl_plugin.docstore import DocStore, DocStoreWriter

    writer = DocStoreWriter(tmp_path / "docs" / "docs.sqlite")
    for _ in writer.append(documents[:6], 6):
        pass
    writer.finish()
    pipe = Pipeline(cfg, tmp_path / "run", backend=object())
    pipe._stage_queries(DocStore(tmp_path / "docs"))  # the pipeline reads passages from its document store
    out = pipe.report["stages"]["queries"]
    assert out["example_queries"] == 4 and out["style_oversample"] == 3
    assert out["style_candidates"] == out["style_kept"] + out["style_dropped"] + out["dropped"].get("duplicate_across", 0)
    assert out["style_kept"] == out["queries"]


def test_new_config_fields_at_their_defaults_keep_old_fingerprints():
    old = asdict(GenerationConfig())
    for name in ("example_queries", "style_oversample"):
        old.pop(name)
    assert config_hash(GenerationConfig()) == config_hash(old)
    assert config_hash(GenerationConfig(example_queries=("a b",))) != config_hash(old)
    mining = asdict(AdaptConfig().mining)
    mining.pop("exact_budget_s")
    assert config_hash(AdaptConfig().mining) == config_hash(mining)
    again = AdaptConfig.from_dict(AdaptConfig(generation=GenerationConfig(example_queries=("a b",))).to_dict())
    assert again.generation.example_queries == ("a b",) and config_hash(again) == config_hash(
        AdaptConfig(generation=GenerationConfig(example_queries=("a b",))))
