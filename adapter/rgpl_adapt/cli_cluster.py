"""The cluster side of the ``rgpl-adapt`` command: connection options, ``adapt --index``,
``search --index`` and ``rollback`` (kept apart from :mod:`rgpl_adapt.cli`, which stays the local flow).

Secrets come from the environment or files, never from argv, and are scrubbed from every message.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from rgpl_adapt.config import AdaptConfig

__all__ = ["adapt_index_command", "cluster_options", "cluster_settings", "options_from", "register",
           "search_index_command"]

# -- cluster connection options (shared by adapt --index, rollback, search --index) --------------

_CONN_KEYS = ("urls", "username", "password", "api_key", "ca_certs", "client_cert", "client_key",
              "verify_certs", "aws_region", "aws_service", "timeout")


def cluster_options(fn: Any) -> Any:
    """The connection options. Secrets come from the environment or files, never from argv."""
    options = [
        click.option("--engine", type=click.Choice(["opensearch", "elasticsearch"]), default="opensearch",
                     show_default=True, help="Cluster engine."),
        click.option("--url", "urls", multiple=True,
                     help="Cluster URL (repeatable). Env: OPENSEARCH_URL / ELASTICSEARCH_URL (comma-separated)."),
        click.option("--user", help="Basic-auth user (env OPENSEARCH_USER / ELASTICSEARCH_USER)."),
        click.option("--password-file", type=click.Path(exists=True, dir_okay=False),
                     help="File whose first line is the password (or set OPENSEARCH_PASSWORD / ELASTICSEARCH_PASSWORD)."),
        click.option("--api-key-file", type=click.Path(exists=True, dir_okay=False),
                     help="Elasticsearch: file holding an API key (or set ELASTIC_API_KEY)."),
        click.option("--ca-certs", type=click.Path(exists=True, dir_okay=False), help="CA bundle to verify the cluster's certificate."),
        click.option("--client-cert", type=click.Path(exists=True, dir_okay=False), help="Client certificate (mutual TLS)."),
        click.option("--client-key", type=click.Path(exists=True, dir_okay=False), help="Client certificate key."),
        click.option("--insecure", is_flag=True, help="Do not verify TLS certificates (a warning is printed)."),
        click.option("--aws-region", help="Sign requests with AWS SigV4 for Amazon OpenSearch Service (credentials from boto3)."),
        click.option("--cluster-config", type=click.Path(exists=True, dir_okay=False),
                     help="JSON or YAML file with the connection keys (urls, username, password, api_key, ca_certs, "
                          "client_cert, client_key, verify_certs, aws_region, aws_service, timeout); flags win, then the file, then the environment."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _read_secret(path: str | None) -> str | None:
    if not path:
        return None
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return lines[0].strip() if lines else None


def _config_file(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith((".yaml", ".yml")):
        from rgpl_adapt.devices import require

        data = require("yaml", package="pyyaml").safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise click.UsageError(f"{path} must hold an object of connection keys")
    if "url" in data:
        data["urls"] = data.pop("url")
    if "user" in data:
        data["username"] = data.pop("user")
    unknown = set(data) - set(_CONN_KEYS)
    if unknown:
        raise click.UsageError(f"unknown key(s) in {path}: {', '.join(sorted(unknown))}; allowed: {', '.join(_CONN_KEYS)}")
    if isinstance(data.get("urls"), str):
        data["urls"] = [u.strip() for u in data["urls"].split(",") if u.strip()]
    if "urls" in data:
        data["urls"] = tuple(data["urls"])
    return data


def cluster_settings(opts: dict[str, Any]) -> tuple[Any, tuple[str, ...]]:
    """``ClusterSettings`` from flags > --cluster-config > environment, and the secrets to scrub."""
    from rgpl_plugin.base import BackendError
    from rgpl_plugin.connection import ClusterSettings, redact

    values = _config_file(opts.get("cluster_config"))
    flags = {
        "urls": tuple(opts.get("urls") or ()) or None,
        "username": opts.get("user"),
        "password": _read_secret(opts.get("password_file")),
        "api_key": _read_secret(opts.get("api_key_file")),
        "ca_certs": opts.get("ca_certs"),
        "client_cert": opts.get("client_cert"),
        "client_key": opts.get("client_key"),
        "aws_region": opts.get("aws_region"),
        "verify_certs": False if opts.get("insecure") else None,
    }
    values.update({k: v for k, v in flags.items() if v is not None})
    secrets = tuple(s for s in (values.get("password"), values.get("api_key")) if s)
    try:
        settings = ClusterSettings.from_env(opts.get("engine") or "opensearch", **values)
    except BackendError as exc:
        raise click.UsageError(redact(str(exc), secrets)) from None
    if not settings.verify_certs:
        click.echo("WARNING: TLS certificate verification is OFF (--insecure): anyone on the network path can "
                   "impersonate the cluster and read the credentials. Use --ca-certs instead.", err=True)
    return settings, tuple(set(secrets) | set(settings.secrets))


def options_from(opts: dict[str, Any]) -> Any:
    """``ClusterOptions`` from the adapt command's flags (ValueError on bad combinations)."""
    from rgpl_adapt.cluster import ClusterOptions

    query = None
    if opts.get("query_json"):
        try:
            query = json.loads(opts["query_json"])
        except json.JSONDecodeError as exc:
            raise ValueError(f"--query is not valid JSON ({exc}); example: --query '{{\"term\": {{\"lang\": \"en\"}}}}'") from None
        if not isinstance(query, dict) or len(query) != 1:
            raise ValueError("--query must be one query object, e.g. {\"term\": {\"lang\": \"en\"}}")
    return ClusterOptions(
        index=opts["index_name"],
        engine=opts.get("engine") or "opensearch",
        text_fields=tuple(opts.get("text_field") or ()),
        title_field=opts.get("title_field"),
        query=query,
        sample=opts.get("sample"),
        miner=opts.get("miner") or "cluster",
        alias=opts.get("alias"),
        allow_alias_takeover=bool(opts.get("allow_alias_takeover")),
        publish=not opts.get("no_publish"),
        search_pipeline=not opts.get("no_search_pipeline"),
        register_model=bool(opts.get("register_model")),
        version=opts.get("publish_version"),
    )


def _preflight_alias(settings: Any, options: Any, secrets: tuple[str, ...]) -> None:
    """Refuse, before hours of training, to publish over a concrete index without the explicit flag."""
    from rgpl_plugin.base import BackendError
    from rgpl_plugin.connection import redact
    from rgpl_plugin.opensearch_publish import alias_state

    from rgpl_adapt.cluster import open_backend

    if not options.publish or options.allow_alias_takeover:
        return
    alias = options.alias or options.index
    backend = open_backend(settings, options)
    try:
        state, _ = backend._call("checking the alias", alias_state, backend.client, alias, _index=alias)
    except BackendError as exc:
        raise click.ClickException(redact(str(exc), secrets)) from None
    finally:
        backend.close()
    if state == "index":
        raise click.UsageError(
            f"{alias!r} is a concrete index, not an alias. rgpl-adapt serves a new version with zero downtime by "
            f"writing {alias}-rgpl-<version> and pointing an alias at it, and an alias cannot share a name with an "
            f"index. Choose one:\n"
            f"  --alias NAME            serve behind a new alias NAME (your index {alias!r} stays as it is; point "
            f"your application at NAME), or\n"
            f"  --allow-alias-takeover  DELETE index {alias!r} and create alias {alias!r} -> the new version in one "
            f"atomic call (snapshot the index first; this cannot be rolled back), or\n"
            f"  --no-publish            adapt only.\nNothing was changed."
        )
    # absent with --alias: a new alias, which publish_version adds next to the source index


def adapt_index_command(opts: dict[str, Any]) -> None:
    """``adapt --index``: the cluster flow (see :mod:`rgpl_adapt.cluster`)."""
    from rgpl_adapt.cli import _build_config, _echo_event
    from rgpl_adapt.cluster import adapt_index
    from rgpl_adapt.progress import tqdm_progress

    settings, secrets = cluster_settings(opts)
    try:
        options = options_from(opts)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    _preflight_alias(settings, options, secrets)
    cfg = _build_config(opts)
    out = Path(opts["out"] or Path("runs") / options.index)
    click.echo(
        f"rgpl-adapt: index {options.index!r} on {', '.join(settings.urls)} ({options.engine}, miner {options.miner}), "
        f"{cfg.training.steps} steps, remine every {cfg.remine.every or 'never (GPL)'}, run folder {out}",
        err=True,
    )
    try:
        result = adapt_index(cfg, out, settings, options, progress=tqdm_progress, on_event=_echo_event,
                             resume=opts["resume"], restart=opts["restart"])
    except (RuntimeError, ValueError, OSError, ImportError, KeyError) as exc:
        from rgpl_plugin.connection import redact

        raise click.ClickException(redact(str(exc), secrets)) from None
    info = result.report.get("cluster", {})
    click.echo(f"model: {result.model_dir}")
    if info.get("published"):
        click.echo(f"serving: alias {info['alias']} -> {info['index']} (previous: {info.get('previous') or 'none'})")
        if info.get("search_pipeline"):
            click.echo(f"hybrid:  search pipeline {info['search_pipeline']} (dense weight {info['hybrid_weight']:.2f}), "
                       "the index's default")
        if info.get("model_id"):
            click.echo(f"ml:      model {info['model_id']}, ingest pipeline {info.get('ingest_pipeline')}")
        click.echo(f"next:    rgpl-adapt search --index {info['alias']} \"your query\"   "
                   f"(undo: rgpl-adapt rollback --index {info['alias']})")
    else:
        click.echo("published: nothing (--no-publish)")


def search_index_command(run_dir: str | None, index: str, k: int, mode: str, weight: float | None, as_json: bool,
                  query: str, conn: dict[str, Any]) -> None:
    from rgpl_plugin.connection import redact
    from rgpl_plugin.errors import translate

    from rgpl_adapt.cli import _print_hits
    from rgpl_adapt.cluster_serve import read_cluster_report, search_index
    from rgpl_adapt.pipeline import load_encoder

    run = Path(run_dir or Path("runs") / index)
    settings, secrets = cluster_settings(conn)
    client = None
    try:
        info = read_cluster_report(run)
        if weight is not None:
            info = {**info, "hybrid_weight": weight}
        cfg = AdaptConfig.from_dict(json.loads((run / "config.json").read_text()))
        vec = load_encoder(run / "export", cfg.export.onnx).encode([query])[0] if mode != "bm25" else None
        client = settings.elasticsearch_client() if conn.get("engine") == "elasticsearch" else settings.opensearch_client()
        try:
            rows = search_index(client, conn.get("engine") or "opensearch", index, query, vec, info, k=k, mode=mode)
        except Exception as exc:  # noqa: BLE001 - client errors of every kind are translated/logged
            raise translate(exc, action="searching", index=index, urls=settings.urls, secrets=secrets) from None
    except (RuntimeError, ValueError, OSError, KeyError) as exc:
        raise click.ClickException(redact(str(exc), secrets)) from None
    finally:
        if client is not None:
            client.close()
    _print_hits(rows, as_json)


def register(group: click.Group) -> None:
    """Add the ``rollback`` command to ``group``."""

    @group.command()
    @click.option("--index", "index_name", required=True, help="The alias to move back one version.")
    @cluster_options
    def rollback(index_name: str, **conn: Any) -> None:
        """Point the alias back at the index the current version replaced (the previous version stays).

        \b
        Example:
          OPENSEARCH_URL=https://search.example:9200 rgpl-adapt rollback --index docs
        """
        from rgpl_plugin.connection import redact
        from rgpl_plugin.errors import translate
        from rgpl_plugin.opensearch_publish import alias_state
        from rgpl_plugin.opensearch_publish import rollback as rollback_alias

        settings, secrets = cluster_settings(conn)
        client = None
        try:
            client = settings.elasticsearch_client() if conn.get("engine") == "elasticsearch" else settings.opensearch_client()
            try:
                _, before = alias_state(client, index_name)
                previous = rollback_alias(client, index_name)
            except Exception as exc:  # noqa: BLE001 - client errors of every kind are translated/logged
                raise translate(exc, action=f"rolling back {index_name!r}", index=index_name, urls=settings.urls,
                                secrets=secrets) from None
        except (RuntimeError, ValueError, OSError, KeyError) as exc:
            raise click.ClickException(redact(str(exc), secrets)) from None
        finally:
            if client is not None:
                client.close()
        click.echo(f"{index_name}: {', '.join(before)} -> {previous} ({', '.join(before)} is kept; delete it when you are sure)")
