"""Helpers of bench/gpu_check.sh: the tiny models and corpus, the run-folder checks, the summary.

``python bench/gpu_check.py fixtures DIR --docs 300``: a synthetic corpus (``DIR/corpus.jsonl``, the test
suite's topic documents) and the test suite's tiny random-weight models built from it (``DIR/student``,
``DIR/t5``, ``DIR/cross-encoder``: :mod:`tests.conftest`'s builders), nothing downloaded.

``python bench/gpu_check.py verify RUN --device cuda [--ranks 2 --rank-logs DIR]``: what a finished
``rgpl-adapt adapt`` run folder says: every stage's manifest, the report's device, the precision that
training and the corpus encodes ran at (bf16 on a GPU that supports it), the ONNX export's parity check,
the serving vectors; with ``--ranks``, that each rank encoded its own chunks of the mining, remining and
serving encodes (the ``encoded chunk C of N into DIR`` records in each rank's log). Prints the checks as
JSON; exit 1 when one failed.

``python bench/gpu_check.py env OUT.json``: versions of python, torch (CUDA, GPUs, bf16), transformers,
sentence-transformers, onnx, onnxruntime (providers) and the packages the script brings as wheels.

``python bench/gpu_check.py summary STEPS.jsonl OUT.json``: the step records the shell script wrote
(name, exit code, seconds) with each step's result JSON (when it wrote one) into one summary.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("index", "queries", "negatives", "train", "export", "serve")


def build_fixtures(out: Path, docs: int) -> dict:
    sys.path.insert(0, str(REPO))
    from tests.conftest import build_tiny_cross_encoder, build_tiny_student, build_tiny_t5, make_documents

    out.mkdir(parents=True, exist_ok=True)
    documents = make_documents(docs)
    with open(out / "corpus.jsonl", "w", encoding="utf-8") as fh:
        for d in documents:
            fh.write(json.dumps({"_id": d.id, "title": d.title, "text": d.text}) + "\n")
    paths = {"corpus": out / "corpus.jsonl", "student": build_tiny_student(out / "student", documents),
             "t5": build_tiny_t5(out / "t5", documents),
             "cross_encoder": build_tiny_cross_encoder(out / "cross-encoder", documents)}
    return {k: str(v) for k, v in paths.items()}


def rank_chunks(log: Path, run: Path) -> dict[str, list[int]]:
    """``{vectors folder relative to the run: chunks this rank encoded}`` from a rank's log."""
    found: dict[str, list[int]] = {}
    pattern = re.compile(r"encoded chunk (\d+) of \d+ into (\S+)")
    for line in log.read_text(errors="replace").splitlines():
        m = pattern.search(line)
        if m:
            folder = Path(m[2]).resolve()
            try:
                key = folder.relative_to(run.resolve()).as_posix()
            except ValueError:
                continue
            found.setdefault(key, []).append(int(m[1]))
    return found


def verify_run(run: Path, device: str, ranks: int = 1, rank_logs: Path | None = None) -> dict:
    checks: dict[str, dict] = {}

    def check(name: str, ok: bool, **seen) -> None:
        checks[name] = {"ok": bool(ok), **seen}

    report = json.loads((run / "report.json").read_text()) if (run / "report.json").exists() else {}
    check("report", bool(report), path=str(run / "report.json"))
    missing = [s for s in STAGES if not (run / s / "manifest.json").exists()]
    check("manifests", not missing, missing=missing)
    stages = report.get("stages", {})
    check("device", str(report.get("device", "")).startswith(device), report_device=report.get("device"))
    train = stages.get("train", {})
    rounds = train.get("rounds", [])
    check("trained", train.get("steps", 0) > 0 and train.get("final_loss") == train.get("final_loss"),
          steps=train.get("steps"), final_loss=train.get("final_loss"), rounds=len(rounds))
    check("remined", len(rounds) >= 2, rounds=[r.get("round") for r in rounds])
    export = stages.get("export", {})
    diff, tol = export.get("max_abs_diff"), export.get("tolerance")
    check("onnx_export_parity", diff is not None and tol is not None and diff <= tol, max_abs_diff=diff,
          tolerance=tol, exporter=export.get("exporter"))
    serve = stages.get("serve", {})
    docs = stages.get("index", {}).get("documents") or stages.get("index", {}).get("docs")
    check("served", serve.get("vectors", 0) > 0 and (docs is None or serve.get("vectors") == docs),
          vectors=serve.get("vectors"), documents=docs, corpus_encoder=serve.get("corpus_encoder"))
    if device.startswith("cuda"):
        import torch

        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        want = "bf16" if bf16 else "fp32"
        mining = stages.get("negatives", {}).get("encode", {})
        check("train_on_gpu_at_bf16", str(train.get("device", "")).startswith("cuda") and train.get("precision") == want,
              device=train.get("device"), precision=train.get("precision"), expected=want)
        check("mining_encode_on_gpu_at_bf16",
              str(mining.get("device", "")).startswith("cuda") and mining.get("precision") == want, **mining)
        check("corpus_encoder_bf16", serve.get("corpus_encoder") == ("torch bf16 autocast" if bf16 else
                                                                      serve.get("corpus_encoder")),
              corpus_encoder=serve.get("corpus_encoder"), gpu_bf16=bf16)
    if ranks > 1:
        logs = sorted(rank_logs.rglob("*.log")) if rank_logs else []
        per_rank: dict[str, dict] = {}
        for log in logs:
            m = re.search(r"(?:^|/)(\d+)/stderr\.log$", log.as_posix()) or re.search(r"rank(\d+)", log.name)
            if m:
                for folder, chunks in rank_chunks(log, run).items():
                    per_rank.setdefault(m[1], {}).setdefault(folder, []).extend(chunks)
        encodes = sorted({f for r in per_rank.values() for f in r})
        split = bool(encodes) and all(
            len({r for r in per_rank if f in per_rank[r]}) == ranks
            and sorted(c for r in per_rank.values() for c in r.get(f, [])) == sorted(
                set(c for r in per_rank.values() for c in r.get(f, [])))
            for f in encodes
        )
        check("encodes_split_across_ranks", split and len(per_rank) == ranks, ranks_seen=sorted(per_rank),
              chunks=per_rank, logs=[str(p) for p in logs])
        if device.startswith("cuda"):
            import torch

            gpus = torch.cuda.device_count()
            warned = any("share its" in p.read_text(errors="replace") for p in logs)
            check("ranks_share_gpus_warning", warned or ranks <= gpus, gpus=gpus, ranks=ranks, warned=warned)
    return {"run": str(run), "ok": all(c["ok"] for c in checks.values()), "checks": checks}


def environment() -> dict:
    import onnx
    import onnxruntime
    import sentence_transformers
    import torch
    import transformers

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(),
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "bf16": torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
            "transformers": transformers.__version__, "sentence_transformers": sentence_transformers.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "onnxruntime_providers": onnxruntime.get_available_providers()}
    for name in ("tantivy", "usearch", "click_default_group", "onnxscript", "onnx_ir"):
        try:
            module = __import__(name)
            info[name] = getattr(module, "__version__", "imported")
        except ImportError as exc:
            info[name] = f"MISSING: {exc}"
    return info


def summary(steps_file: Path, out: Path) -> dict:
    steps = [json.loads(line) for line in steps_file.read_text().splitlines() if line.strip()]
    for step in steps:
        log = step.get("log")
        if log and Path(log).is_file():
            lines = [line for line in Path(log).read_text(errors="replace").splitlines() if line.strip()]
            step["log_tail"] = [line[:400] for line in lines[-40:]]  # splitlines also cuts tqdm's \r updates
        result = step.get("result")
        if result and Path(result).is_file():
            try:
                step["result_json"] = json.loads(Path(result).read_text())
            except ValueError as exc:
                step["result_json"] = {"error": f"unreadable: {exc}"}
    doc = {"ok": all(s.get("rc") == 0 for s in steps), "failed": [s["step"] for s in steps if s.get("rc") != 0],
           "seconds": round(sum(float(s.get("seconds", 0)) for s in steps), 1), "steps": steps}
    out.write_text(json.dumps(doc, indent=2))
    return doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fixtures")
    f.add_argument("out")
    f.add_argument("--docs", type=int, default=300)
    v = sub.add_parser("verify")
    v.add_argument("run")
    v.add_argument("--device", default="cuda")
    v.add_argument("--ranks", type=int, default=1)
    v.add_argument("--rank-logs")
    v.add_argument("--json", help="also write the checks here")
    e = sub.add_parser("env")
    e.add_argument("out")
    s = sub.add_parser("summary")
    s.add_argument("steps")
    s.add_argument("out")
    args = ap.parse_args()
    if args.cmd == "env":
        info = environment()
        Path(args.out).write_text(json.dumps(info, indent=1))
        print(json.dumps(info, indent=1))
    elif args.cmd == "fixtures":
        print(json.dumps(build_fixtures(Path(args.out), args.docs)))
    elif args.cmd == "verify":
        res = verify_run(Path(args.run), args.device, args.ranks, Path(args.rank_logs) if args.rank_logs else None)
        text = json.dumps(res, indent=2)
        print(text)
        if args.json:
            Path(args.json).write_text(text)
        sys.exit(0 if res["ok"] else 1)
    else:
        doc = summary(Path(args.steps), Path(args.out))
        print(json.dumps({k: doc[k] for k in ("ok", "failed", "seconds")}))


if __name__ == "__main__":
    main()
