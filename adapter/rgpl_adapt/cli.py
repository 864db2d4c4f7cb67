"""The ``rgpl-adapt`` command: a thin click layer over the library.

``adapt`` is the default command, so ``rgpl-adapt --corpus DIR`` and ``rgpl-adapt adapt --corpus DIR``
are the same. Library errors become ``ClickException`` here and nowhere else.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
from click_default_group import DefaultGroup

from rgpl_adapt import __version__
from rgpl_adapt.config import AdaptConfig

log = logging.getLogger("rgpl_adapt")


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _echo_event(event: str, info: dict[str, Any]) -> None:
    stage = info.get("stage", "")
    if event == "stage_skipped":
        click.echo(f"[{stage}] skipped: {info.get('reason')} (rerun only when its settings or inputs change)", err=True)
    elif event == "stage_stale":
        click.echo(f"[{stage}] rebuilding: {info.get('reason')}", err=True)
    elif event == "stage_started":
        click.echo(f"[{stage}] running", err=True)
    elif event == "stage_done":
        shown = {k: v for k, v in info.items() if k not in ("stage", "rounds", "hybrid_sweep_mrr") and not isinstance(v, dict)}
        click.echo(f"[{stage}] done: " + ", ".join(f"{k}={v}" for k, v in shown.items()), err=True)
    elif event == "corpus_read":
        click.echo(f"[corpus] {info['summary']}", err=True)


@click.group(cls=DefaultGroup, default="adapt", default_if_no_args=False)
@click.version_option(__version__, prog_name="rgpl-adapt")
def cli() -> None:
    """Adapt a dense retriever to your documents without labels (R-GPL), then search with it.

    \b
    Examples:
      rgpl-adapt --corpus ../shared/data/scifact --out runs/scifact
      rgpl-adapt eval --run runs/scifact --qrels ../shared/data/scifact/qrels/test.tsv
      rgpl-adapt search --run runs/scifact "does vitamin D prevent fractures"

    ``adapt`` is the default command: ``rgpl-adapt --corpus DIR`` runs it.
    """


def _build_config(opts: dict[str, Any]) -> AdaptConfig:
    cfg = AdaptConfig()
    if opts.get("config"):
        cfg = AdaptConfig.from_dict(json.loads(Path(opts["config"]).read_text()))
    scale = opts.get("scale") or "auto"
    if scale == "auto":
        from rgpl_adapt.devices import resolve_device

        scale = "paper" if resolve_device(opts.get("device") or cfg.device).startswith("cuda") else "cpu"
    if scale == "cpu" and not opts.get("config"):
        cfg = cfg.cpu_sized()

    def set_(section: str, **values: Any) -> None:
        nonlocal cfg
        values = {k: v for k, v in values.items() if v is not None}
        if values:
            cfg = replace(cfg, **{section: replace(getattr(cfg, section), **values)})

    set_(
        "corpus",
        path=opts.get("corpus"),
        text_field=opts.get("text_field"),
        title_field=opts.get("title_field"),
        id_field=opts.get("id_field"),
        limit=opts.get("limit"),
    )
    set_(
        "generation",
        model=opts.get("generator"),
        kind=opts.get("generator_kind"),
        queries_per_passage=opts.get("queries_per_passage"),
        max_queries=opts.get("max_queries"),
        batch_size=opts.get("gen_batch_size"),
    )
    retrievers = tuple(opts.get("retriever") or ())
    set_("mining", retrievers=retrievers or None, bm25=False if opts.get("no_bm25") else None)
    set_("labels", teacher=opts.get("teacher"), kind=opts.get("teacher_kind"))
    set_(
        "training",
        student=opts.get("student"),
        steps=opts.get("steps"),
        batch_size=opts.get("batch_size"),
        max_seq_len=opts.get("max_seq_len"),
        lr=opts.get("lr"),
        warmup_steps=opts.get("warmup_steps"),
        similarity=opts.get("similarity"),
        precision=opts.get("precision"),
        checkpoint_every=opts.get("checkpoint_every"),
    )
    set_("remine", every=opts.get("remine_every"), k=opts.get("remine_k"))
    set_("export", int8=True if opts.get("int8") else None, onnx=False if opts.get("no_onnx") else None)
    if opts.get("device"):
        cfg = replace(cfg, device=opts["device"])
    return cfg


@cli.command()
@click.option("--corpus", type=click.Path(exists=True), help="A BEIR folder (corpus.jsonl) or a JSONL file.")
@click.option("--index", "index_name", help="Adapt to an OpenSearch/Elasticsearch index instead (see --help of the cluster options).")
@click.option("--out", "out", type=click.Path(), default=None, help="Run folder (default: runs/<corpus or index name>).")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="A JSON file of AdaptConfig sections; flags override it.")
@click.option("--scale", type=click.Choice(["auto", "cpu", "paper"]), default="auto", show_default=True,
              help="paper: 140k steps, batch 32 (GPU). cpu: a minutes-long run (300 steps, batch 16). auto: paper on GPU, cpu otherwise.")
@click.option("--text-field", help="JSONL field with the passage text (default: text).")
@click.option("--title-field", help="JSONL field with the title (default: title).")
@click.option("--id-field", help="JSONL field with the document id (default: _id).")
@click.option("--limit", type=int, help="Use only the first N valid documents.")
@click.option("--generator", help="Query generator: a doc2query T5 or a causal LM (hub name or local path).")
@click.option("--generator-kind", type=click.Choice(["auto", "seq2seq", "causal"]))
@click.option("--queries-per-passage", type=int, help="Default: GPL's rule max(3, ceil(250k/|C|)).")
@click.option("--max-queries", type=int, help="Sample passages so that at most this many queries are generated.")
@click.option("--gen-batch-size", type=int)
@click.option("--retriever", multiple=True, help="Dense retriever for initial negatives (repeatable).")
@click.option("--no-bm25", is_flag=True, help="No BM25 negatives.")
@click.option("--teacher", help="Cross-encoder (or bi-encoder) that labels margins.")
@click.option("--teacher-kind", type=click.Choice(["auto", "cross-encoder", "bi-encoder"]))
@click.option("--student", help="The bi-encoder to adapt (sentence-transformers).")
@click.option("--steps", type=int)
@click.option("--batch-size", type=int)
@click.option("--max-seq-len", type=int)
@click.option("--lr", type=float)
@click.option("--warmup-steps", type=int)
@click.option("--similarity", type=click.Choice(["dot", "cosine"]))
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]))
@click.option("--checkpoint-every", type=int)
@click.option("--remine-every", type=int, help="Remine every N steps; 0 = plain GPL.")
@click.option("--remine-k", type=int, help="Negatives kept per query when remining.")
@click.option("--int8", is_flag=True, help="Also export an int8 ONNX model.")
@click.option("--no-onnx", is_flag=True, help="Skip the ONNX export (search then uses torch).")
@click.option("--device", help="auto, cpu, cuda, cuda:1 ...")
@click.option("--resume", is_flag=True, help="Continue an interrupted training from its last checkpoint.")
@click.option("--restart", is_flag=True, help="Discard an interrupted training and start it over.")
@click.option("-v", "--verbose", count=True)
def adapt(**opts: Any) -> None:
    """Adapt a model to a corpus: generate queries, mine, label, train with remining, export.

    \b
    Examples:
      # local corpus on the embedded index, sized for a CPU (minutes):
      rgpl-adapt --corpus ../shared/data/scifact --out runs/scifact
      # offline, with local models:
      rgpl-adapt --corpus docs.jsonl --text-field body --generator ./gemma-270m \\
          --teacher ./mpnet --retriever ./minilm --student ./minilm --steps 500
      # plain GPL for comparison:
      rgpl-adapt --corpus ../shared/data/scifact --out runs/gpl --remine-every 0
    """
    _setup_logging(opts.pop("verbose"))
    if opts.get("resume") and opts.get("restart"):
        raise click.UsageError("--resume and --restart exclude each other")
    if bool(opts.get("corpus")) == bool(opts.get("index_name")):
        raise click.UsageError("pass exactly one of --corpus PATH or --index NAME")
    if opts.get("index_name"):
        raise click.UsageError(
            "--index (adapting an OpenSearch/Elasticsearch index) needs the cluster backend, which this "
            "version does not ship yet; export the documents to JSONL and use --corpus"
        )
    cfg = _build_config(opts)
    out = Path(opts["out"] or Path("runs") / Path(opts["corpus"]).stem)
    from rgpl_adapt.pipeline import Pipeline
    from rgpl_adapt.progress import tqdm_progress

    click.echo(
        f"rgpl-adapt: {cfg.training.steps} steps, batch {cfg.training.batch_size}, remine every "
        f"{cfg.remine.every or 'never (GPL)'}, run folder {out}",
        err=True,
    )
    try:
        result = Pipeline(cfg, out, progress=tqdm_progress, on_event=_echo_event).run(
            resume=opts["resume"], restart=opts["restart"]
        )
    except (RuntimeError, ValueError, OSError, ImportError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"model: {result.model_dir}")
    if result.onnx_dir:
        click.echo(f"onnx:  {result.onnx_dir}")
    click.echo(f"next:  rgpl-adapt search --run {out} \"your query\"")


@cli.command("eval")
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False), required=True)
@click.option("--qrels", type=click.Path(exists=True, dir_okay=False), required=True, help="BEIR qrels TSV.")
@click.option("--queries", type=click.Path(exists=True, dir_okay=False), help="queries.jsonl (default: next to the qrels folder).")
@click.option("--system", "systems", multiple=True, type=click.Choice(["bm25", "zero-shot", "adapted", "hybrid"]),
              help="Systems to compare (default: all).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def eval_(run_dir: str, qrels: str, queries: str | None, systems: tuple[str, ...], as_json: bool) -> None:
    """Compare BM25, the zero-shot model, the adapted model and hybrid search on qrels.

    \b
    Example:
      rgpl-adapt eval --run runs/scifact --qrels ../shared/data/scifact/qrels/test.tsv
    """
    from rgpl_adapt.compare import SYSTEMS, evaluate_run
    from rgpl_adapt.evaluation import format_table, load_qrels, load_queries
    from rgpl_adapt.progress import tqdm_progress

    qpath = Path(queries) if queries else Path(qrels).resolve().parent.parent / "queries.jsonl"
    if not qpath.exists():
        raise click.UsageError(f"no queries file at {qpath}: pass --queries")
    try:
        table = evaluate_run(
            run_dir, load_qrels(qrels), load_queries(qpath), systems=systems or SYSTEMS, progress=tqdm_progress
        )
    except (RuntimeError, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    (Path(run_dir) / "eval.json").write_text(json.dumps(table, indent=2))
    click.echo(json.dumps(table, indent=2) if as_json else format_table(table))


@cli.command()
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False), required=True)
@click.option("-k", "k", type=int, default=10, show_default=True)
@click.option("--mode", type=click.Choice(["hybrid", "dense", "bm25"]), default="hybrid", show_default=True)
@click.option("--weight", type=float, help="Dense weight for hybrid (default: the one chosen during adaptation).")
@click.option("--json", "as_json", is_flag=True)
@click.argument("query")
def search(run_dir: str, k: int, mode: str, weight: float | None, as_json: bool, query: str) -> None:
    """Search the run's index with the adapted model.

    \b
    Example:
      rgpl-adapt search --run runs/scifact "does vitamin D prevent fractures"
    """
    from rgpl_adapt.pipeline import DENSE_SPACE, PipelineError, hybrid_weight_of, load_encoder, open_embedded

    try:
        backend = open_embedded(run_dir)
        if mode == "bm25":
            hits = backend.bm25_search([query], k)[0]
        else:
            cfg = AdaptConfig.from_dict(json.loads((Path(run_dir) / "config.json").read_text()))
            if not backend.has_vectors(DENSE_SPACE):
                raise PipelineError(f"{run_dir} has no dense vectors yet: let `rgpl-adapt adapt` finish")
            vec = load_encoder(Path(run_dir) / "export", cfg.export.onnx).encode([query])
            if mode == "dense":
                hits = backend.knn_search(DENSE_SPACE, vec, k)[0]
            else:
                w = hybrid_weight_of(run_dir) if weight is None else weight
                hits = backend.hybrid_search(DENSE_SPACE, [query], vec, k, weight=w)[0]
        docs = backend.get_documents([h.doc_id for h in hits])
    except (RuntimeError, ValueError, OSError, KeyError) as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps([{"id": h.doc_id, "score": h.score, "title": d.title, "text": d.text} for h, d in zip(hits, docs)]))
        return
    for rank, (h, d) in enumerate(zip(hits, docs), 1):
        snippet = (d.title + ": " if d.title else "") + d.text
        click.echo(f"{rank:>2}. {h.score:8.4f}  {d.id}  {snippet[:100]}")


@cli.command()
@click.option("--model", "model_path", type=click.Path(exists=True), required=True, help="A sentence-transformers folder.")
@click.option("--out", type=click.Path(), required=True)
@click.option("--int8", is_flag=True)
@click.option("--tolerance", type=float, default=1e-4, show_default=True)
def export(model_path: str, out: str, int8: bool, tolerance: float) -> None:
    """Export a sentence-transformers model to ONNX, checked against torch.

    \b
    Example:
      rgpl-adapt export --model runs/scifact/train/final --out exported/ --int8
    """
    from rgpl_adapt.config import ExportConfig
    from rgpl_adapt.export import export_model

    samples = ["what is the effect of vitamin d on bone density", "a short query", "x " * 400]
    try:
        res = export_model(model_path, Path(out), ExportConfig(int8=int8, tolerance=tolerance), sample_texts=samples)
    except (RuntimeError, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"exported to {out}: max abs diff vs torch {res.max_abs_diff:.2e} (tolerance {tolerance:.0e})")


def main() -> None:
    cli()
