"""The user's query style: real example queries as the generator's few-shot examples.

Generated queries are questions; real ones often are not (claims, keywords, titles). Following
Promptagator, a handful of real queries (no judgements needed) replaces the generic examples of
the causal-LM prompt. The prompt keeps the ``Question:`` line format so that
:func:`rgpl_adapt.generation.prompt_example_keys` still recognises (and drops) verbatim copies.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["load_example_queries", "example_queries_prompt", "MAX_PROMPT_EXAMPLES"]

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
