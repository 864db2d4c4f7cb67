"""Retrieval metrics (nDCG@k, Recall@k, MRR@k) in plain Python, matching BEIR / pytrec_eval.

Contracts are BEIR's: ``results = {qid: {doc_id: score}}``, ``qrels = {qid: {doc_id: grade}}``.

Definitions, as trec_eval (which pytrec_eval wraps and BEIR calls) computes them:

* **Ranking.** Documents sorted by score descending; ties broken by doc id in *descending* string
  order (trec_eval ``form_res_rels.c``, ``comp_sim_docno``: ``strcmp(p2->docno, p1->docno)``; pytrec_eval
  pre-sorts but trec_eval re-sorts with that comparator). Python's str order equals strcmp's byte order
  on UTF-8.
* **nDCG@k** (trec_eval ``ndcg_cut``, https://github.com/usnistgov/trec_eval/blob/master/m_ndcg_cut.c):
  gain is the qrels grade itself (linear, *not* 2^rel - 1), discount ``log2(rank + 1)``
  (``gain / log2(i + 2)`` for 0-based i), DCG over the top k retrieved; ideal DCG from the qrels'
  positive grades sorted descending (judged documents that were not retrieved count), cut at k.
  Non-positive grades contribute nothing. If the ideal DCG is 0 the value is 0.
* **Recall@k** (trec_eval ``recall``): relevant (grade >= 1) docs in the top k / relevant docs in qrels;
  0 when the query has none.
* **MRR@k**: 1 / rank of the first document with grade > 0 within the top k, else 0 (BEIR's
  ``custom_metrics.mrr`` and trec_eval ``recip_rank`` with a cutoff).

Which queries are averaged: pytrec_eval evaluates exactly the queries present in **both** ``results``
and ``qrels`` (a query absent from qrels is skipped; one absent from results is skipped too, which we
log as a warning because it flatters a system that returns nothing). A query whose qrels hold only
zero grades is *not* skipped: trec_eval scores it 0 for every metric, and so do we. BEIR's own MRR
divides by ``len(qrels)`` and sorts ties in dict order; we use the trec_eval query set and tie order
for all three metrics so they are consistent (identical when every qrels query has results and
scores are distinct).

``ignore_identical_ids`` (default True, as BEIR's ``EvaluateRetrieval.evaluate``): a result whose doc
id equals its query id is dropped before ranking (it matters for corpora where queries are documents,
e.g. ArguAna, Quora). Inputs are never mutated (BEIR pops in place). Values are not rounded (BEIR
rounds to 5 decimals).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence

logger = logging.getLogger(__name__)

Results = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]

DEFAULT_METRICS = ("ndcg@10", "recall@100", "mrr@10")


# --------------------------------------------------------------------------------------------------
# loading


def load_qrels(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """Read qrels: BEIR tsv (``query-id corpus-id score``, header optional) or TREC (``qid iter docid rel``).

    Lines are split on tabs when they contain one, else on whitespace; 3 columns are BEIR, 4 are TREC.
    A first line whose last column is not a number is a header and skipped. A later line for the same
    (query, doc) overrides an earlier one.
    """
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                continue
            cols = line.split("\t") if "\t" in line else line.split()
            cols = [c.strip() for c in cols]
            if lineno == 1 and len(cols) in (3, 4) and not _is_number(cols[-1]):
                continue  # header, e.g. "query-id corpus-id score"
            if len(cols) == 3:
                qid, doc_id, grade = cols
            elif len(cols) == 4:
                qid, _, doc_id, grade = cols
            else:
                raise ValueError(
                    f"{path}: line {lineno} has {len(cols)} columns; expected BEIR 'query-id<TAB>corpus-id<TAB>score' "
                    "or TREC 'qid iter docid rel'"
                )
            if not _is_number(grade):
                raise ValueError(f"{path}: line {lineno}: relevance {grade!r} is not a number")
            qrels.setdefault(qid, {})[doc_id] = int(float(grade))
    return qrels


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_queries(path: str | os.PathLike) -> dict[str, str]:
    """Read BEIR ``queries.jsonl`` (``{"_id": ..., "text": ...}`` per line) into ``{qid: text}``."""
    queries: dict[str, str] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            if "_id" not in record or "text" not in record:
                raise ValueError(f"{path}: line {lineno} lacks '_id' or 'text'")
            queries[str(record["_id"])] = str(record["text"])
    return queries


# --------------------------------------------------------------------------------------------------
# per-query math (pure)


def rank_documents(doc_scores: Mapping[str, float]) -> list[str]:
    """Doc ids by score descending, ties by doc id descending (trec_eval's order)."""
    return [doc_id for doc_id, _ in sorted(doc_scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)]


def ndcg_of_ranking(ranking: Sequence[str], rels: Mapping[str, int], k: int) -> float:
    """nDCG@k of one ranked list (trec_eval ndcg_cut: linear gains, log2(rank+1) discount)."""
    dcg = sum(rels.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranking[:k]) if rels.get(d, 0) > 0)
    ideal = sorted((g for g in rels.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_of_ranking(ranking: Sequence[str], rels: Mapping[str, int], k: int) -> float:
    """Relevant docs (grade >= 1) in the top k over all relevant docs; 0 if there are none."""
    relevant = {d for d, g in rels.items() if g >= 1}
    if not relevant:
        return 0.0
    return sum(1 for d in ranking[:k] if d in relevant) / len(relevant)


def reciprocal_rank(ranking: Sequence[str], rels: Mapping[str, int], k: int) -> float:
    """1 / rank of the first doc with grade > 0 within the top k, else 0."""
    for i, d in enumerate(ranking[:k]):
        if rels.get(d, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


# --------------------------------------------------------------------------------------------------
# aggregation


def _rankings(results: Results, qrels: Qrels, ignore_identical_ids: bool) -> dict[str, list[str]]:
    """Rankings of the queries evaluated: those in both results and qrels (pytrec_eval's set)."""
    missing = [q for q in qrels if q not in results]
    if missing:
        logger.warning(
            "%d of %d qrels queries have no results and are skipped, as pytrec_eval does (e.g. %s)",
            len(missing), len(qrels), missing[0],
        )
    out = {}
    for qid, doc_scores in results.items():
        if qid not in qrels:
            continue
        if ignore_identical_ids:
            doc_scores = {d: s for d, s in doc_scores.items() if d != qid}
        out[qid] = rank_documents(doc_scores)
    if not out:
        raise ValueError("no query in results has relevance judgments in qrels: check the query ids")
    return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def ndcg_at_k(results: Results, qrels: Qrels, k: int = 10, *, ignore_identical_ids: bool = True) -> float:
    """Mean nDCG@k over the queries in both results and qrels."""
    _check_k(k)
    ranks = _rankings(results, qrels, ignore_identical_ids)
    return _mean([ndcg_of_ranking(r, qrels[q], k) for q, r in ranks.items()])


def recall_at_k(results: Results, qrels: Qrels, k: int = 100, *, ignore_identical_ids: bool = True) -> float:
    """Mean Recall@k over the queries in both results and qrels."""
    _check_k(k)
    ranks = _rankings(results, qrels, ignore_identical_ids)
    return _mean([recall_of_ranking(r, qrels[q], k) for q, r in ranks.items()])


def mrr_at_k(results: Results, qrels: Qrels, k: int = 10, *, ignore_identical_ids: bool = True) -> float:
    """Mean reciprocal rank (cut at k) over the queries in both results and qrels."""
    _check_k(k)
    ranks = _rankings(results, qrels, ignore_identical_ids)
    return _mean([reciprocal_rank(r, qrels[q], k) for q, r in ranks.items()])


_METRIC_FUNCS = {"ndcg": ndcg_of_ranking, "recall": recall_of_ranking, "mrr": reciprocal_rank}


def _parse_metric(name: str) -> tuple[str, int]:
    base, _, k = name.partition("@")
    if base not in _METRIC_FUNCS or not k.isdigit() or int(k) < 1:
        raise ValueError(f"unknown metric {name!r}: use ndcg@K, recall@K or mrr@K")
    return base, int(k)


def evaluate_per_query(
    results: Results,
    qrels: Qrels,
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    ignore_identical_ids: bool = True,
) -> dict[str, dict[str, float]]:
    """``{qid: {metric: value}}`` for each evaluated query (for significance tests, error analysis)."""
    parsed = [(name, *_parse_metric(name)) for name in metrics]
    ranks = _rankings(results, qrels, ignore_identical_ids)
    return {
        q: {name: _METRIC_FUNCS[base](r, qrels[q], k) for name, base, k in parsed} for q, r in ranks.items()
    }


def evaluate(
    results: Results,
    qrels: Qrels,
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    ignore_identical_ids: bool = True,
) -> dict[str, float]:
    """Mean of each metric; by default ``{"ndcg@10", "recall@100", "mrr@10"}``."""
    per_query = evaluate_per_query(results, qrels, metrics, ignore_identical_ids=ignore_identical_ids)
    return {name: _mean([v[name] for v in per_query.values()]) for name in metrics}


def format_table(rows: Mapping[str, Mapping[str, float]], digits: int = 4) -> str:
    """A plain-text table, one row per system (``bm25``, ``zero-shot``, ``adapted``, ``hybrid``...).

    Columns are the metrics in order of first appearance; a metric a system lacks shows ``-``.
    """
    columns: list[str] = []
    for values in rows.values():
        columns += [m for m in values if m not in columns]
    header = ["system", *columns]
    body = [[name, *(f"{values[m]:.{digits}f}" if m in values else "-" for m in columns)] for name, values in rows.items()]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join([first, *rest]).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in body)])
