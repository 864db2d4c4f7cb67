"""CLI commands for scheduled re-adaptation: ``readapt``, ``schedule``, ``status``, ``versions``.

:func:`register` adds them to a click group (``rgpl_adapt.cli`` calls ``register(cli)``).
``readapt`` and ``schedule`` accept every model/training/cluster option of ``adapt`` (borrowed
from that command, so they never drift apart) plus the drift, promotion and retention options.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import click

# adapt's options that make no sense for a recurring run (versions name and resume themselves)
_NOT_BORROWED = {"resume", "restart", "verbose", "publish_version", "out", "scale"}


def _fmt_time(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(t)) if t else "-"


def _echo_event(event: str, info: dict[str, Any]) -> None:
    """The same stage messages as ``rgpl-adapt adapt`` (skips, rebuilds, progress)."""
    from rgpl_adapt.cli import _echo_event as echo

    echo(event, info)


def readapt_options(fn: Any) -> Any:
    """Drift, promotion, retention and lock options (shared by readapt and schedule)."""
    options = [
        click.option("--out", type=click.Path(file_okay=False),
                     help="Run root holding versions/ and current (default: runs/<corpus or index name>)."),
        click.option("--threshold", type=float, default=0.05, show_default=True, envvar="RGPL_DRIFT_THRESHOLD",
                     help="Adapt again when at least this share of documents is new, changed or deleted."),
        click.option("--drift-mode", type=click.Choice(["fingerprint", "count", "timestamp", "seqno"]),
                     default="fingerprint", show_default=True, envvar="RGPL_DRIFT_MODE",
                     help="fingerprint: per-document content hashes (exact); count: document count only; "
                          "timestamp: --timestamp-field later than the last run (cluster); seqno: _seq_no (cluster)."),
        click.option("--timestamp-field", help="Cluster: the date field updated on every write (drift mode timestamp)."),
        click.option("--keep", type=int, default=2, show_default=True, help="Versions kept (serving + rollback targets)."),
        click.option("--tolerance", type=float, default=0.01, show_default=True,
                     help="Promote when MRR@10(new) >= MRR@10(serving) - tolerance on held-out pseudo queries."),
        click.option("--warm-steps", type=int, help="Training steps of a warm-started version (default: a fifth of --steps)."),
        click.option("--cold", is_flag=True, help="Do not warm-start from the serving model; train from --student."),
        click.option("--no-reuse-queries", is_flag=True, help="Generate queries for every document again."),
        click.option("--lock-ttl", default="6h", show_default=True,
                     help="Lease of the lock (renewed at every stage); a crashed holder's lock expires after it."),
        click.option("--state-index", default=".rgpl-state", show_default=True, help="Cluster: index holding the state."),
        click.option("--scale", type=click.Choice(["auto", "cpu", "paper"]), default="auto", show_default=True,
                     help="As for adapt."),
        click.option("-v", "--verbose", count=True),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _borrow_adapt_options(fn: Any) -> Any:
    """Copy ``adapt``'s options (corpus, index, models, steps, cluster connection) onto ``fn``."""
    from rgpl_adapt.cli import adapt

    params = getattr(fn, "__click_params__", [])
    for param in reversed(adapt.params):
        if param.name not in _NOT_BORROWED:
            params.append(copy.copy(param))
    fn.__click_params__ = params
    return fn


def build_readapter(opts: dict[str, Any], *, progress: Any = None, on_event: Any = None) -> Any:
    """A :class:`~rgpl_adapt.readapt.Readapter` from the command's options (UsageError on conflicts)."""
    from rgpl_adapt.cli import _build_config, _setup_logging
    from rgpl_adapt.cli_cluster import cluster_settings, options_from
    from rgpl_adapt.readapt import ClusterTarget, Readapter, ReadaptSettings
    from rgpl_adapt.scheduler import parse_interval

    _setup_logging(opts.get("verbose") or 0)
    if bool(opts.get("corpus")) == bool(opts.get("index_name")):
        raise click.UsageError("pass exactly one of --corpus PATH or --index NAME")
    try:
        settings = ReadaptSettings(
            threshold=opts["threshold"], drift_mode=opts["drift_mode"], timestamp_field=opts.get("timestamp_field"),
            keep=opts["keep"], tolerance=opts["tolerance"], warm_start=not opts.get("cold"),
            warm_steps=opts.get("warm_steps"), reuse_queries=not opts.get("no_reuse_queries"),
            lock_ttl_s=parse_interval(opts.get("lock_ttl") or "6h"),
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    cfg = _build_config(opts)
    kwargs: dict[str, Any] = {}
    if progress is not None:
        kwargs["progress"] = progress
    if on_event is not None:
        kwargs["on_event"] = on_event
    if opts.get("index_name"):
        from rgpl_adapt.state import IndexStateStore

        conn, _ = cluster_settings(opts)
        try:
            options = options_from(opts)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        client = conn.elasticsearch_client() if options.engine == "elasticsearch" else conn.opensearch_client()
        root = Path(opts.get("out") or Path("runs") / options.index)
        target = ClusterTarget(conn, options, client)
        store = IndexStateStore(client, opts.get("state_index") or ".rgpl-state")
        try:
            return Readapter(cfg, root, settings=settings, cluster=target, store=store, **kwargs)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    root = Path(opts.get("out") or Path("runs") / Path(opts["corpus"]).stem)
    try:
        return Readapter(cfg, root, settings=settings, **kwargs)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _report(outcome: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({
            "target": outcome.target, "action": outcome.action, "version": outcome.version,
            "reason": outcome.reason, "run_dir": outcome.run_dir, "pruned": list(outcome.pruned),
            "drift": outcome.drift.to_dict() if outcome.drift else None, "promotion": outcome.promotion,
        }, default=str))
        return
    drift = outcome.drift.summary() if outcome.drift else "unknown"
    click.echo(f"{outcome.target}: {outcome.action}" + (f" v{outcome.version}" if outcome.version else "")
               + f" - {outcome.reason}")
    click.echo(f"  drift: {drift}")
    if outcome.pruned:
        click.echo(f"  pruned: {', '.join(outcome.pruned)}")


def _readapt_command(**opts: Any) -> None:
    """Adapt again if the documents drifted past the threshold (for cron, Kubernetes, systemd).

    \b
    Runs a new version only when the share of new/changed/deleted documents since the last
    adaptation reaches --threshold (or with --force): warm-started from the serving model,
    reusing the queries of unchanged documents, promoted only if not worse than the serving
    version on held-out pseudo queries. Exit status: 0 adapted, skipped or locked; 1 failed.

    \b
    Examples:
      rgpl-adapt readapt --corpus docs.jsonl --out runs/docs --threshold 0.05
      OPENSEARCH_URL=https://search:9200 rgpl-adapt readapt --index docs --drift-mode seqno
    """
    from rgpl_adapt.progress import tqdm_progress

    force = opts.pop("force")
    as_json = opts.pop("as_json")
    readapter = build_readapter(opts, progress=tqdm_progress, on_event=_echo_event)
    outcome = readapter.run_once(force=force)
    _report(outcome, as_json)
    if outcome.action == "failed":
        raise click.ClickException(f"re-adaptation failed: {outcome.reason}")


def _schedule_command(**opts: Any) -> None:
    """Run forever: check drift on a schedule and re-adapt when due (SIGTERM stops between runs).

    \b
    Examples:
      rgpl-adapt schedule --every 6h --corpus docs.jsonl --out runs/docs
      rgpl-adapt schedule --cron "0 3 * * *" --index docs --drift-mode timestamp --timestamp-field updated_at
    """
    from rgpl_adapt.scheduler import Schedule, Scheduler

    try:
        schedule = Schedule.parse(opts.pop("every"), opts.pop("cron"))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    max_ticks = opts.pop("max_ticks")
    run_now = not opts.pop("no_run_now")
    readapter = build_readapter(opts, on_event=_echo_event)

    def on_result(outcome: Any) -> None:
        _report(outcome, False)

    def on_error(exc: BaseException) -> None:
        click.echo(f"{readapter.target}: tick failed: {type(exc).__name__}: {exc} (the schedule goes on)", err=True)

    scheduler = Scheduler(lambda: readapter.run_once(), schedule, run_now=run_now, on_result=on_result,
                          on_error=on_error)
    try:
        scheduler.install_signal_handlers()
    except ValueError:  # not the main thread (e.g. under a test runner thread)
        pass
    click.echo(f"{readapter.target}: scheduled {schedule.describe()}, threshold {readapter.settings.threshold:.1%}",
               err=True)
    done = scheduler.run(max_ticks=max_ticks)
    click.echo(f"{readapter.target}: scheduler stopped after {len(done.started)} run(s)", err=True)


def _status_target(out: str | None, index_name: str | None, conn: dict[str, Any], state_index: str) -> Any:
    from rgpl_adapt.readapt import Readapter, ReadaptSettings

    if index_name:
        from rgpl_adapt.cli_cluster import cluster_settings
        from rgpl_adapt.cluster import ClusterOptions
        from rgpl_adapt.config import AdaptConfig
        from rgpl_adapt.readapt import ClusterTarget
        from rgpl_adapt.state import IndexStateStore

        settings, _ = cluster_settings(conn)
        engine = conn.get("engine") or "opensearch"
        client = settings.elasticsearch_client() if engine == "elasticsearch" else settings.opensearch_client()
        target = ClusterTarget(settings, ClusterOptions(index=index_name, engine=engine), client)
        return Readapter(AdaptConfig(), Path(out or Path("runs") / index_name), cluster=target,
                         store=IndexStateStore(client, state_index), settings=ReadaptSettings(drift_mode="count"))
    if not out:
        raise click.UsageError("pass --out RUN_ROOT (embedded) or --index NAME (cluster)")
    root = Path(out)
    config = next(iter(sorted(root.glob("versions/v*/config.json"), reverse=True)), None)
    if config is None:
        raise click.UsageError(f"{out} has no adapted version yet: run `rgpl-adapt readapt --corpus ... --out {out}`")
    from rgpl_adapt.config import AdaptConfig

    cfg = AdaptConfig.from_dict(json.loads(config.read_text()))
    return Readapter(cfg, root)


def _status_command(out: str | None, index_name: str | None, as_json: bool, no_drift: bool, state_index: str,
                    **conn: Any) -> None:
    """Show the last runs, the serving version, the lock and the drift now.

    \b
    Examples:
      rgpl-adapt status --out runs/docs
      OPENSEARCH_URL=https://search:9200 rgpl-adapt status --index docs --json
    """
    readapter = _status_target(out, index_name, conn, state_index)
    try:
        info = readapter.status(with_drift=not no_drift)
    except (RuntimeError, ValueError, OSError, KeyError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    serving = info["serving"]
    click.echo(f"target:  {info['target']}")
    click.echo("serving: " + (f"v{serving['version']} since {_fmt_time(serving['since'])} ({serving['run_dir']}"
                               + (f", index {serving['index_version']}" if serving.get("index_version") else "") + ")"
                               if serving else "nothing yet"))
    if "alias" in info:
        click.echo(f"alias:   {info['alias']['state']} -> {', '.join(info['alias']['indices']) or '-'}")
    lock = info.get("lock")
    click.echo("lock:    " + (f"held by {lock['holder']} until {_fmt_time(lock['expires_at'])}" if lock else "free"))
    if "drift" in info:
        click.echo(f"drift:   {info['drift'].get('summary') or info['drift'].get('error')}")
    click.echo("runs:")
    for row in info["runs"] or []:
        mark = "*" if row["serving"] else " "
        mrr = "" if row["new_mrr"] is None else f" mrr {row['new_mrr']:.4f} vs {row['serving_mrr'] if row['serving_mrr'] is not None else '-'}"
        click.echo(f" {mark} v{row['version']:<4} {row['status']:<9} {_fmt_time(row['started_at'])}{mrr}  {row['reason']}")
    if not info["runs"]:
        click.echo("   none")


def _versions_command(out: str, rollback: bool) -> None:
    """List the kept versions of an embedded target; --rollback serves the previous one again.

    \b
    Examples:
      rgpl-adapt versions --out runs/docs
      rgpl-adapt versions --out runs/docs --rollback
    (For a cluster index use `rgpl-adapt rollback --index NAME`.)
    """
    from rgpl_adapt.state import FileStateStore
    from rgpl_adapt.versions import rollback_embedded, version_dir

    root = Path(out)
    store = FileStateStore(root / "state")
    target = root.resolve().name
    if rollback:
        try:
            record = rollback_embedded(store, target, root)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"{target}: serving v{record.version} again (was v{record.previous}); "
                   f"search it with: rgpl-adapt search --run {root / 'current'} \"query\"")
        return
    serving = store.serving(target)
    for run in store.runs(target):
        kept = version_dir(root, run.version).is_dir()
        mark = "*" if serving and serving.version == run.version else " "
        click.echo(f" {mark} v{run.version:<4} {run.status:<9} {'kept' if kept else 'pruned'}  {run.reason}")


def _fresh(fn: Any) -> Any:
    """A new function object calling ``fn``, to decorate with click options.

    click's option decorators collect on the function object itself. Decorating the module's
    functions directly broke when one registration started another (importing ``rgpl_adapt.cli``
    from :func:`_borrow_adapt_options` registers these commands on the main group while this call
    is half-way through decorating them): the inner one consumed the outer one's options.
    """

    def command(**opts: Any) -> Any:
        return fn(**opts)

    command.__name__, command.__doc__ = fn.__name__, fn.__doc__
    return command


def register(group: click.Group) -> None:
    """Add ``readapt``, ``schedule``, ``status`` and ``versions`` to ``group``."""
    from rgpl_adapt.cli_cluster import cluster_options

    readapt = _borrow_adapt_options(readapt_options(
        click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")(
            click.option("--force", is_flag=True, help="Adapt even when the drift is below the threshold.")(
                _fresh(_readapt_command)))))
    group.command("readapt")(readapt)

    schedule = _borrow_adapt_options(readapt_options(
        click.option("--every", help="Interval between drift checks: 90s, 30m, 6h, 1d.")(
            click.option("--cron", help="5-field cron expression in UTC, e.g. '0 3 * * *'.")(
                click.option("--no-run-now", is_flag=True, help="Wait for the first scheduled time.")(
                    click.option("--max-ticks", type=int, hidden=True)(_fresh(_schedule_command)))))))
    group.command("schedule")(schedule)

    status = cluster_options(
        click.option("--out", type=click.Path(file_okay=False), help="Run root of an embedded target.")(
            click.option("--index", "index_name", help="A cluster index or alias (state in --state-index).")(
                click.option("--json", "as_json", is_flag=True)(
                    click.option("--no-drift", is_flag=True, help="Do not measure the drift now (no document read).")(
                        click.option("--state-index", default=".rgpl-state", show_default=True)(_fresh(_status_command)))))))
    group.command("status")(status)

    versions = click.option("--out", type=click.Path(exists=True, file_okay=False), required=True)(
        click.option("--rollback", is_flag=True, help="Serve the previous kept version again.")(_fresh(_versions_command)))
    group.command("versions")(versions)
