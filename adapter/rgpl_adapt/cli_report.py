"""CLI command ``report``: one self-contained HTML file with the plots of a run.

:func:`register` adds it to a click group (``rgpl_adapt.cli`` calls ``register(cli)``).
"""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    """Add the ``report`` command to ``group``."""

    @group.command("report")
    @click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False),
                  help="The run folder (the --out of `rgpl-adapt adapt`).")
    @click.option("--out", type=click.Path(dir_okay=False), default=None,
                  help="HTML file to write (default: <run>/report.html).")
    def report(run_dir: str, out: str | None) -> None:
        """Write an HTML report of a run: training loss, remining churn and margins per round,
        nDCG before/after (when `rgpl-adapt eval` was run), the hybrid weight sweep, stage timings.

        \b
        Examples:
          rgpl-adapt report --run runs/scifact
          rgpl-adapt report --run runs/scifact --out scifact-report.html
        """
        from rgpl_adapt.report_html import write_report

        try:
            path = write_report(run_dir, out)
        except (OSError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(str(path))
