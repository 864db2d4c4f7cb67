"""The user's query style: real example queries steer generation towards it.

Generated queries are questions; real ones often are not (claims, keywords, titles). A handful of
real queries (no judgements needed; ``--example-queries FILE`` or a cluster's query log,
``GenerationConfig.example_queries``) is used in one of two ways, by generator kind:

* **Causal LMs** take them as few-shot examples (Promptagator): :func:`example_queries_prompt`
  replaces the generic examples of the prompt. The prompt keeps the ``Question:`` line format so
  that :func:`rgpl_adapt.generators.prompt_example_keys` still recognises (and drops) verbatim copies.
* **Seq2seq doc2query models (T5)** cannot be prompted, so we *filter*: the generator samples
  ``style_oversample`` times the usual number of candidates per passage, and the ones whose style
  is closest to the examples are kept (:func:`StyleModel.distance`), as many as a passage would
  have had without examples.

The style score is deliberately cheap and transparent: a few surface features that tell query
styles apart (:func:`style_features`: length in words (log), a trailing question mark, an
interrogative first word, a trailing full stop, a capitalised first letter, a digit), each
standardised against the examples (their mean and standard deviation, the deviation floored at
``STYLE_MIN_STD`` so that a feature on which every example agrees does not dominate), and the mean
squared z-score as the distance (a diagonal Mahalanobis distance to the examples' centre). Features
on which the examples vary (length of keyword queries) thus weigh little, features on which they
agree (all claims end with a full stop, none with a question mark) weigh much. It needs no model,
runs on every candidate at no measurable cost, is deterministic, and its choice can be read off
the features; a learned style classifier would need negatives (non-user queries) and a model to load.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "load_example_queries",
    "example_queries_prompt",
    "MAX_PROMPT_EXAMPLES",
    "StyleModel",
    "style_features",
    "select_by_style",
    "rank_logged_queries",
    "example_queries_from_log",
]

MAX_PROMPT_EXAMPLES = 8
"""At most this many examples go into one prompt (Promptagator uses up to 8)."""


def load_example_queries(path: str | Path) -> list[str]:
    """Read example queries: one per line, or JSONL objects with a ``text`` or ``query`` field.

    Blank lines and duplicates are dropped (first occurrence kept). Raises ValueError naming the
    file when it holds no query.
    """
    out: list[str] = []
    seen: set[str] = set()
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            obj = json.loads(line)
            text = obj.get("text") or obj.get("query")
            if not isinstance(text, str):
                raise ValueError(f"{path}:{n}: a JSON line needs a 'text' or 'query' string field")
            line = text.strip()
        q = " ".join(line.split())
        if q and q.lower() not in seen:
            seen.add(q.lower())
            out.append(q)
    if not out:
        raise ValueError(f"{path} holds no example query: write one query per line")
    return out


def example_queries_prompt(examples: list[str], *, max_examples: int = MAX_PROMPT_EXAMPLES) -> str:
    """A causal-LM prompt whose few-shot examples are the user's real queries.

    Without judgements there is no passage for each example, so the prompt shows the queries as a
    style guide and then asks for one query of the same style for the passage.
    """
    shown = [" ".join(q.split()) for q in examples if q.strip()][:max_examples]
    if not shown:
        raise ValueError("no example query to build a prompt from")
    lines = "".join(f"Question: {q}\n" for q in shown)
    return (
        "Examples of the queries users write, in their style:\n"
        f"{lines}\n"
        "Write one more query in exactly that style which the passage answers.\n"
        "Passage: {passage}\nQuestion:"
    )


# --------------------------------------------------------------------------- style of seq2seq queries

STYLE_FEATURES = ("log_words", "question_mark", "interrogative", "full_stop", "capitalised", "digit")
STYLE_MIN_STD = 0.25
"""Floor of each feature's standard deviation (binary features agree fully on a consistent log)."""

INTERROGATIVES = frozenset(
    "who whom whose what when where why how which is are was were do does did can could should would will "
    "has have had may might".split()
)
_WORD = re.compile(r"\w+")


def style_features(query: str) -> tuple[float, ...]:
    """The surface features of a query's style, in the order of :data:`STYLE_FEATURES`."""
    text = query.strip()
    words = _WORD.findall(text)
    return (
        math.log1p(len(words)),
        float(text.endswith("?")),
        float(bool(words) and words[0].casefold() in INTERROGATIVES),
        float(text.endswith(".")),
        float(text[:1].isupper()),
        float(any(c.isdigit() for c in text)),
    )


class StyleModel:
    """The examples' mean and (floored) standard deviation per feature; :meth:`distance` to them."""

    def __init__(self, examples: Sequence[str]) -> None:
        rows = [style_features(q) for q in examples if q.strip()]
        if not rows:
            raise ValueError("no example query to learn a style from")
        n = len(rows)
        self.mean = tuple(sum(col) / n for col in zip(*rows))
        self.std = tuple(
            max(STYLE_MIN_STD, math.sqrt(sum((v - m) ** 2 for v in col) / n))
            for col, m in zip(zip(*rows), self.mean)
        )

    def distance(self, query: str) -> float:
        """Mean squared z-score of the query's features against the examples (0: the examples' centre)."""
        z = [(f - m) / s for f, m, s in zip(style_features(query), self.mean, self.std)]
        return sum(v * v for v in z) / len(z)


def select_by_style(candidates: Sequence[str], style: StyleModel) -> list[str]:
    """``candidates`` ordered closest style first (stable: ties keep the generation order)."""
    return sorted(candidates, key=style.distance)


# --------------------------------------------------------------------------- a cluster's query log

DEFAULT_LOG_FIELD = "query"
DEFAULT_LOG_LIMIT = 100
LOG_WINDOW_FACTOR = 20  # read the newest limit x this log entries (at most MAX_LOG_WINDOW) ...
MAX_LOG_WINDOW = 10_000  # ... one search page (index.max_result_window's default)
LOG_TIME_FIELDS = ("@timestamp", "timestamp")


def rank_logged_queries(values: Iterable[Any], limit: int) -> list[str]:
    """Distinct query strings, most frequent first, ties to the one seen first (the newest in a log read
    newest first); at most ``limit``. Whitespace is collapsed; case-insensitive repeats count together and
    keep their first spelling. Non-strings and blanks are skipped; a list value counts each string in it."""
    counts: Counter[str] = Counter()
    first: dict[str, tuple[int, str]] = {}
    n = 0
    for value in values:
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, str) or not item.strip():
                continue
            text = " ".join(item.split())
            key = text.casefold()
            counts[key] += 1
            first.setdefault(key, (n, text))
            n += 1
    ranked = sorted(counts, key=lambda key: (-counts[key], first[key][0]))
    return [first[key][1] for key in ranked[:limit]]


def _get_path(source: Mapping[str, Any], path: str) -> Any:
    from rgpl_plugin.mappings import get_path

    return get_path(source, path)


def example_queries_from_log(
    read_hits: Callable[..., list[dict[str, Any]]],
    index: str,
    *,
    field: str = DEFAULT_LOG_FIELD,
    limit: int = DEFAULT_LOG_LIMIT,
    time_fields: Sequence[str] = LOG_TIME_FIELDS,
) -> list[str]:
    """Up to ``limit`` example queries from a query-log index: the most frequent among its newest entries.

    ``read_hits(index, body, action=...)`` is a cluster backend's read path
    (:meth:`rgpl_plugin.opensearch.OpenSearchBackend.read_hits`). The newest ``limit x LOG_WINDOW_FACTOR``
    entries (at most one page of ``MAX_LOG_WINDOW``) are read, newest first by the first of ``time_fields``
    the log maps (``unmapped_type``, so a log without one is read in index order); ``field`` may be a dotted
    path. Raises ValueError naming the fields the log has when ``field`` holds no string.
    """
    if limit < 1:
        raise ValueError(f"the number of example queries must be at least 1, got {limit}")
    window = min(MAX_LOG_WINDOW, limit * LOG_WINDOW_FACTOR)
    sort = [{name: {"order": "desc", "unmapped_type": "date"}} for name in time_fields]
    body = {"size": window, "query": {"match_all": {}}, "_source": [field], "sort": [*sort, "_doc"]}
    hits = read_hits(index, body, action="reading the query log")
    queries = rank_logged_queries((_get_path(h.get("_source") or {}, field) for h in hits), limit)
    if not queries:
        sample = read_hits(index, {"size": 5, "query": {"match_all": {}}}, action="reading the query log")
        fields = sorted({key for h in sample for key in (h.get("_source") or {})})
        raise ValueError(
            f"the query log {index!r} has no query string in field {field!r}"
            + (f"; its documents have the fields {fields}: pass one with --example-queries-field" if fields
               else " (the index holds no document)")
        )
    return queries
