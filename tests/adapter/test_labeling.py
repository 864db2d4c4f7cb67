"""Teachers, the score cache, GPL-style triple sampling and margin labels."""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager

import numpy as np
import pytest

from rgpl_adapt.config import LabelConfig
from rgpl_adapt.labeling import (
    BiEncoderTeacher,
    CrossEncoderTeacher,
    ScoreCache,
    Teacher,
    empty_pool_qids,
    label_triples,
    load_teacher,
    margin_stats,
    sample_triples,
)
from rgpl_adapt.records import GeneratedQuery, LabeledTriple, NegativePool

QUERIES = {"q1": "vitamin bone", "q2": "tumor cell growth", "q3": "brain memory"}
DOCS = {
    "p1": "vitamin d bone fracture",  # 2 words shared with q1
    "p2": "tumor cell growth chemotherapy",  # 3 with q2
    "p3": "brain memory neuron",  # 2 with q3
    "n1": "vitamin calcium",  # 1 with q1
    "n2": "heart artery",  # 0
    "n3": "cell growth",  # 2 with q2
    "n4": "brain bone memory",  # 2 with q3, 1 with q1
}


class OverlapTeacher:
    """A deterministic teacher: the number of distinct words a query and a passage share."""

    def __init__(self) -> None:
        self.pairs: list[tuple[str, str]] = []
        self.batches: list[int] = []

    def score(self, queries, passages) -> np.ndarray:
        self.batches.append(len(queries))
        self.pairs.extend(zip(queries, passages))
        return np.array(
            [len(set(q.split()) & set(p.split())) for q, p in zip(queries, passages)], dtype=np.float32
        )


def overlap(qid: str, doc_id: str) -> int:
    return len(set(QUERIES[qid].split()) & set(DOCS[doc_id].split()))


def recording_progress(log: list):
    @contextmanager
    def factory(total=None, desc="", unit="it"):
        entry = {"total": total, "desc": desc, "unit": unit, "done": 0}
        log.append(entry)

        class Bar:
            def update(self, n=1):
                entry["done"] += n

            def set_postfix(self, **kw):
                pass

        yield Bar()

    return factory


# ----------------------------------------------------------------------------- teachers


def test_cross_encoder_teacher_returns_raw_logits(tiny_cross_encoder, documents):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    qs = ["vitamin d bone", "tumor growth", "brain memory neuron", "virus"]
    ps = [documents[i].full_text() for i in range(4)]
    teacher = CrossEncoderTeacher(str(tiny_cross_encoder), "cpu", batch_size=3, max_seq_len=64)
    assert isinstance(teacher, Teacher)
    scores = teacher.score(qs, ps)

    tok = AutoTokenizer.from_pretrained(tiny_cross_encoder)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_cross_encoder).eval()
    with torch.no_grad():
        features = tok(qs, ps, padding=True, truncation=True, max_length=64, return_tensors="pt")
        logits = model(**features).logits[:, 0].numpy()
    assert scores.shape == (4,) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, logits, rtol=0, atol=1e-5)
    # CrossEncoder.predict's default (sigmoid for one label) would give something else.
    default = teacher.model.predict(list(zip(qs, ps)), show_progress_bar=False)
    assert not np.allclose(default, logits, atol=1e-3)
    assert teacher.score([], []).shape == (0,)
    with pytest.raises(ValueError, match="pair up"):
        teacher.score(qs, ps[:2])


def test_bi_encoder_teacher_is_dot_or_cosine(tiny_student):
    from sentence_transformers import SentenceTransformer

    qs = ["vitamin d bone", "tumor growth", "vitamin d bone"]
    ps = ["vitamin d calcium bone fracture", "brain memory", "tumor cell growth"]
    model = SentenceTransformer(str(tiny_student), device="cpu")
    q = model.encode(qs, convert_to_numpy=True)
    p = model.encode(ps, convert_to_numpy=True)
    dot = BiEncoderTeacher(str(tiny_student), "cpu", batch_size=2, max_seq_len=64).score(qs, ps)
    np.testing.assert_allclose(dot, (q * p).sum(1), rtol=1e-5, atol=1e-5)
    cos = BiEncoderTeacher(str(tiny_student), "cpu", similarity="cosine").score(qs, ps)
    expected = (q * p).sum(1) / np.linalg.norm(q, axis=1) / np.linalg.norm(p, axis=1)
    np.testing.assert_allclose(cos, expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(dot, cos)
    with pytest.raises(ValueError, match="similarity"):
        BiEncoderTeacher(str(tiny_student), "cpu", similarity="l2")  # type: ignore[arg-type]


def test_bi_encoder_teacher_memoises_embeddings_across_calls(tiny_student):
    teacher = BiEncoderTeacher(str(tiny_student), "cpu", batch_size=4, max_seq_len=64)
    encoded_texts: list[str] = []
    real_encode = teacher.model.encode

    def counting_encode(texts, **kw):
        encoded_texts.extend(texts)
        return real_encode(texts, **kw)

    teacher.model.encode = counting_encode
    qs = ["vitamin d bone", "tumor growth"]
    ps = ["vitamin d calcium bone fracture", "brain memory"]
    first = teacher.score(qs, ps)
    assert sorted(encoded_texts) == sorted(qs + ps) and teacher.encoded == 4
    # The same texts again, in new pairs, plus one new passage: only the new text is encoded.
    second = teacher.score(["tumor growth", "vitamin d bone", "tumor growth"], ["brain memory", ps[0], "heart artery"])
    assert encoded_texts[4:] == ["heart artery"] and teacher.encoded == 5
    np.testing.assert_allclose(second[:2], first[::-1], rtol=1e-6)
    # Memoised scores equal a fresh teacher's.
    fresh = BiEncoderTeacher(str(tiny_student), "cpu", max_seq_len=64).score(["tumor growth"], ["heart artery"])
    np.testing.assert_allclose(second[2:], fresh, rtol=1e-5, atol=1e-6)


def test_bi_encoder_teacher_memo_is_bounded(tiny_student):
    teacher = BiEncoderTeacher(str(tiny_student), "cpu", max_seq_len=64, memo_size=3)
    teacher.score(["a b", "c d"], ["e f", "g h"])  # 4 distinct texts, only the newest 3 kept
    assert len(teacher._memo) == 3 and "a b" not in teacher._memo
    teacher.score(["a b"], ["g h"])  # "a b" was forgotten: encoded again; "g h" was kept
    assert teacher.encoded == 5 and len(teacher._memo) == 3
    unmemoised = BiEncoderTeacher(str(tiny_student), "cpu", max_seq_len=64, memo_size=0)
    scores = unmemoised.score(["a b", "a b"], ["e f", "e f"])
    unmemoised.score(["a b"], ["e f"])
    assert unmemoised.encoded == 4 and not unmemoised._memo and scores[0] == scores[1]
    with pytest.raises(ValueError, match="memo_size"):
        BiEncoderTeacher(str(tiny_student), "cpu", memo_size=-1)


def test_load_teacher_detects_kind(tiny_cross_encoder, tiny_student):
    assert isinstance(load_teacher(LabelConfig(teacher=str(tiny_cross_encoder)), "cpu"), CrossEncoderTeacher)
    assert isinstance(load_teacher(LabelConfig(teacher=str(tiny_student)), "cpu"), BiEncoderTeacher)
    forced = load_teacher(LabelConfig(teacher=str(tiny_student), kind="bi-encoder", max_seq_len=32), "cpu")
    assert isinstance(forced, BiEncoderTeacher) and forced.model.max_seq_length == 32


# ----------------------------------------------------------------------------- cache


def test_score_cache_hits_misses_and_round_trip(tmp_path):
    path = tmp_path / "sub" / "scores.jsonl"
    cache = ScoreCache(path, key="teacher-a")
    assert cache.lookup([("q1", "a"), ("q1", "b"), ("q1", "a")]) == [("q1", "a"), ("q1", "b")]
    assert (cache.hits, cache.misses) == (0, 2)
    cache.put_many([("q1", "a"), ("q1", "b")], [1.25, -3.0])
    cache.put_many([("q2", "a")], [np.float32(0.1)])
    assert cache.lookup([("q1", "a"), ("q2", "a"), ("q2", "z")]) == [("q2", "z")]
    assert cache.stats() == {"size": 3, "hits": 4 - 2, "misses": 3, "hit_rate": 2 / 5}

    again = ScoreCache(path, key="teacher-a")
    assert len(again) == 3 and (again.hits, again.misses) == (0, 0)
    assert again.get("q1", "a") == 1.25 and again.get("q1", "b") == -3.0
    assert again.get("q2", "a") == float(np.float32(0.1))  # float32 scores survive exactly
    assert ("q1", "b") in again and again.get("q9", "a") is None
    with pytest.raises(ValueError, match="written for 'teacher-a'"):
        ScoreCache(path, key="teacher-b")


def test_score_cache_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "scores.jsonl"
    ScoreCache(path).put_many([("q", "a"), ("q", "b")], [1.0, 2.0])
    with open(path, "a") as fh:
        fh.write('{"q": "q", "d": "c", "s"')  # a crash mid-write
    cache = ScoreCache(path)
    assert len(cache) == 2 and cache.get("q", "b") == 2.0
    cache.put_many([("q", "c")], [3.0])  # must start on a fresh line, not glued to the torn one
    reread = ScoreCache(path)
    assert len(reread) == 3 and reread.get("q", "c") == 3.0


def test_score_cache_rejects_non_finite_scores():
    with pytest.raises(ValueError, match="nan"):
        ScoreCache().put_many([("q", "a")], [float("nan")])
    with pytest.raises(ValueError, match="2 pairs but 1 scores"):
        ScoreCache().put_many([("q", "a"), ("q", "b")], [1.0])


# ----------------------------------------------------------------------------- triples


def _toy_queries(n: int = 5) -> list[GeneratedQuery]:
    return [GeneratedQuery(f"q{i}", f"text {i}", f"pos{i}") for i in range(n)]


def _toy_pools(n: int = 5) -> list[NegativePool]:
    return [
        NegativePool(f"q{i}", {"bm25": [f"b{i}a", f"b{i}b", "shared"], "dense": [f"d{i}a", "shared"]})
        for i in range(n)
    ]


def test_sample_triples_is_deterministic_and_resumable():
    qs, pools = _toy_queries(), _toy_pools()
    a = sample_triples(qs, pools, 23, seed=7)
    assert a == sample_triples(qs, pools, 23, seed=7)
    assert a != sample_triples(qs, pools, 23, seed=8)
    assert sample_triples(qs, pools, 9, seed=7, start=14) == a[14:23]
    assert sample_triples(qs, pools, 0, seed=7) == []


def test_sample_triples_walks_passes_over_queries_and_draws_from_the_pool_union():
    qs, pools = _toy_queries(), _toy_pools()
    triples = sample_triples(qs, pools, 5 * 400, seed=1)
    # every pass of 5 triples visits each query exactly once, in a pass-dependent order
    passes = [tuple(t[0] for t in triples[i : i + 5]) for i in range(0, len(triples), 5)]
    assert all(sorted(p) == [q.qid for q in qs] for p in passes)
    assert len(set(passes)) > 1
    pos_of = {q.qid: q.doc_id for q in qs}
    union = {p.qid: set(p.all_ids()) for p in pools}
    for qid, pos, neg in triples:
        assert pos == pos_of[qid] and neg in union[qid]
    # uniform over the union (4 distinct ids each; "shared" is in both sources but counted once)
    counts = Counter(neg for qid, _, neg in triples if qid == "q0")
    assert set(counts) == union["q0"]
    assert all(abs(c / 400 - 0.25) < 0.1 for c in counts.values())


def test_sample_triples_skips_empty_pools():
    qs = _toy_queries(4)
    pools = [
        NegativePool("q0", {"bm25": ["x"]}),
        NegativePool("q1", {"bm25": []}),
        NegativePool("q2", {"bm25": ["pos2"]}),  # only its own positive: nothing to sample
    ]  # q3 has no pool
    assert empty_pool_qids(qs, pools) == ["q1", "q3"]
    assert sample_triples(qs, pools, 6, seed=0) == [("q0", "pos0", "x")] * 6
    with pytest.raises(ValueError, match="no query has a hard negative"):
        sample_triples(qs, pools[1:], 3, seed=0)


# ----------------------------------------------------------------------------- labels


def test_label_triples_margins_against_an_overlap_teacher():
    triples = [
        ("q1", "p1", "n1"),
        ("q1", "p1", "n2"),
        ("q2", "p2", "n3"),
        ("q3", "p3", "n4"),
        ("q1", "p1", "n4"),
    ]
    teacher = OverlapTeacher()
    log: list = []
    labeled = label_triples(
        triples,
        teacher,
        query_text=QUERIES,
        doc_text=DOCS,
        cache=ScoreCache(),
        batch_size=3,
        progress=recording_progress(log),
    )
    assert [(t.qid, t.pos_id, t.neg_id) for t in labeled] == triples
    assert [t.margin for t in labeled] == [overlap(q, p) - overlap(q, n) for q, p, n in triples]
    assert [t.margin for t in labeled] == [1, 2, 1, 0, 1]
    # 8 distinct pairs scored once each, in batches of at most 3
    assert len(teacher.pairs) == 8 and teacher.batches == [3, 3, 2]
    assert log == [{"total": 8, "desc": log[0]["desc"], "unit": "pair", "done": 8}]


def test_label_triples_reuses_cached_scores_and_accepts_a_doc_text_function(tmp_path):
    cache = ScoreCache(tmp_path / "s.jsonl", key="overlap")
    first = OverlapTeacher()
    label_triples(
        [("q1", "p1", "n1"), ("q1", "p1", "n2")], first, query_text=QUERIES, doc_text=DOCS, cache=cache
    )
    assert len(first.pairs) == 3 and (cache.hits, cache.misses) == (0, 3)

    # A new round (say after remining): q1's positive and n1 are cached, only (q1, n4) is new.
    fetched: list[list[str]] = []

    def doc_text(ids):
        fetched.append(list(ids))
        return [DOCS[i] for i in ids]

    second = OverlapTeacher()
    reopened = ScoreCache(tmp_path / "s.jsonl", key="overlap")
    labeled = label_triples(
        [("q1", "p1", "n4"), ("q1", "p1", "n1")],
        second,
        query_text=QUERIES,
        doc_text=doc_text,
        cache=reopened,
    )
    assert second.pairs == [(QUERIES["q1"], DOCS["n4"])] and fetched == [["n4"]]
    assert (reopened.hits, reopened.misses) == (2, 1)
    assert [t.margin for t in labeled] == [overlap("q1", "p1") - overlap("q1", "n4"), 1]

    # Everything cached: the teacher is not called at all.
    third = OverlapTeacher()
    label_triples([("q1", "p1", "n4")], third, query_text=QUERIES, doc_text=doc_text, cache=reopened)
    assert third.batches == []


def test_label_triples_errors_say_what_is_missing():
    with pytest.raises(KeyError, match="no query text"):
        label_triples([("qx", "p1", "n1")], OverlapTeacher(), query_text=QUERIES, doc_text=DOCS)
    with pytest.raises(KeyError, match="no text for 1 document"):
        label_triples([("q1", "p1", "nx")], OverlapTeacher(), query_text=QUERIES, doc_text=DOCS)

    class Short(OverlapTeacher):
        def score(self, queries, passages):
            return super().score(queries, passages)[:-1]

    with pytest.raises(ValueError, match="returned 2 scores for 3 pairs"):
        label_triples([("q1", "p1", "n1"), ("q1", "p1", "n2")], Short(), query_text=QUERIES, doc_text=DOCS)


def test_margin_stats():
    margins = [2.0, -1.0, 0.5, 0.0]
    stats = margin_stats([LabeledTriple("q", "p", f"n{i}", m) for i, m in enumerate(margins)])
    assert stats["n_triples"] == 4
    assert stats["margin_mean"] == pytest.approx(np.mean(margins))
    assert stats["margin_std"] == pytest.approx(np.std(margins))
    assert (stats["margin_min"], stats["margin_max"]) == (-1.0, 2.0)
    assert stats["margin_neg_share"] == 0.25
    assert margin_stats([]) == {
        "n_triples": 0,
        "margin_mean": None,
        "margin_std": None,
        "margin_min": None,
        "margin_max": None,
        "margin_neg_share": None,
    }


def test_cross_encoder_truncates_query_and_passage_each_then_the_pair(tiny_cross_encoder):
    from rgpl_adapt.labeling import truncate_tokens

    teacher = CrossEncoderTeacher(str(tiny_cross_encoder), "cpu", batch_size=2, max_seq_len=6, max_pair_len=512)
    tok = teacher.model.tokenizer
    long_q = " ".join(f"vitamin{i % 7} calcium" for i in range(100))
    long_p = " ".join(f"bone{i % 5} fracture density" for i in range(100))
    cut_q, cut_p = truncate_tokens(tok, [long_q, long_p], 6)
    assert long_q.startswith(cut_q) and long_p.startswith(cut_p)  # a prefix of the original text
    assert len(tok(cut_q, add_special_tokens=False)["input_ids"]) == 6
    # a long query no longer crowds the passage out of the pair: both keep their first 6 tokens
    assert teacher.score([long_q], [long_p])[0] == pytest.approx(teacher.score([cut_q], [cut_p])[0], abs=1e-5)
    assert teacher.model.max_length > 12  # the pair limit is the model's (<= 512), not the per-text 6
    assert truncate_tokens(tok, [], 6) == []
