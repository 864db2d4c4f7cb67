"""Before/after table of two ``bench/quality.py`` results (JSON), on the queries both evaluated.

Each system's nDCG@10 is recomputed from the stored per-query scores over the queries that both
files evaluated (e.g. the "after" run leaves its example queries out), then each system of the
"after" run is compared with the same system of the "before" run by a paired bootstrap, and the
p-values of each file against its own zero-shot row are shown on the shared queries too.

    python bench/quality_diff.py before.json after.json [--resamples 10000]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from significance import paired_bootstrap  # noqa: E402


def shared_queries(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Query ids that every system of both files scored."""
    sets = [set(pq) for res in (before, after) for pq in res["per_query_ndcg@10"].values()]
    if not sets:
        raise ValueError("no per-query nDCG@10 in the inputs: rerun bench/quality.py (it stores them)")
    return sorted(set.intersection(*sets))


def diff(before: dict[str, Any], after: dict[str, Any], *, resamples: int = 10_000, seed: int = 42) -> dict[str, Any]:
    qids = shared_queries(before, after)
    keep = set(qids)

    def on_shared(res: dict[str, Any]) -> dict[str, dict[str, float]]:
        return {s: {q: v for q, v in pq.items() if q in keep} for s, pq in res["per_query_ndcg@10"].items()}

    b, a = on_shared(before), on_shared(after)
    rows: dict[str, dict[str, Any]] = {}
    for system in [*b, *(s for s in a if s not in b)]:
        row: dict[str, Any] = {}
        for side, res in (("before", b), ("after", a)):
            if system in res:
                row[side] = sum(res[system].values()) / len(qids)
                if system not in ("zero-shot", "BM25") and "zero-shot" in res:
                    row[f"p_{side}_vs_zero_shot"] = paired_bootstrap(
                        res["zero-shot"], res[system], resamples=resamples, seed=seed)["p"]
        if system in b and system in a:
            row["p_after_vs_before"] = paired_bootstrap(b[system], a[system], resamples=resamples, seed=seed)["p"]
        rows[system] = row
    return {"queries": len(qids), "resamples": resamples, "systems": rows}


def format_diff(result: dict[str, Any]) -> str:
    def cell(v: Any, fmt: str) -> str:
        return format(v, fmt) if isinstance(v, float) else "-"

    lines = [
        f"nDCG@10 on the {result['queries']} queries both runs evaluated; paired bootstrap p "
        f"({result['resamples']} resamples)",
        "| system | before | after | after - before | p (after vs before) | p before vs zero-shot | p after vs zero-shot |",
        "|---|---|---|---|---|---|---|",
    ]
    for system, r in result["systems"].items():
        delta = r["after"] - r["before"] if "after" in r and "before" in r else None
        lines.append(
            f"| {system} | {cell(r.get('before'), '.4f')} | {cell(r.get('after'), '.4f')} | "
            f"{cell(delta, '+.4f')} | {cell(r.get('p_after_vs_before'), '.4f')} | "
            f"{cell(r.get('p_before_vs_zero_shot'), '.4f')} | {cell(r.get('p_after_vs_zero_shot'), '.4f')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("before", type=Path)
    p.add_argument("after", type=Path)
    p.add_argument("--resamples", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON too")
    args = p.parse_args(argv)
    result = diff(json.loads(args.before.read_text()), json.loads(args.after.read_text()),
                  resamples=args.resamples, seed=args.seed)
    print(format_diff(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
