"""``edgectl build``: build what is missing for a scope, then print the profile x variant matrix.

Thin: it loads the fleet, calls ``reconciler.optimize.pipeline.build_scope`` (the same entry point the
controller uses) and renders the results. Exit code 1 when any requested build was refused.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import click

from .common import DEFAULT_STORE, STORE_SHOWN, load_or_exit
from .output import human_size


@click.command()
@click.option("--repo", default=".", show_default=True, help="Fleet repo (a checkout).")
@click.option("--model", "models", multiple=True, help="Only this model (repeatable).")
@click.option("--version", "versions", multiple=True, help="Only this version (repeatable).")
@click.option("--profile", "profiles", multiple=True, help="Only this device profile (repeatable).")
@click.option("--store", type=click.Path(path_type=Path), default=DEFAULT_STORE, show_default=STORE_SHOWN,
              help="Content-addressed artifact store (also the build cache).")  # fmt: skip
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also write DIR/index.html: every candidate with the Pareto front, as a table and a plot.",
)
def build(repo: str, models, versions, profiles, store: Path, output: str, report_dir: Path | None) -> None:
    """Build, benchmark and gate artifacts per device profile; print the variant matrix.

    Without filters it builds every version an active rollout needs; --model alone builds all its versions.
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from reconciler.artifact.store import ArtifactStore
    from reconciler.optimize.pipeline import build_scope

    tree = load_or_exit(repo)
    for name, known, values in (("model", tree.models, models), ("profile", tree.profiles, profiles)):
        unknown = [v for v in values if v not in known]
        if unknown:
            raise click.BadParameter(f"unknown {name} {', '.join(unknown)} (known: {', '.join(known)})")
    artifact_store = ArtifactStore(store)
    err = Console(stderr=True)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=err, transient=True, disable=not err.is_terminal) as progress:  # fmt: skip
        task = progress.add_task("building", total=None)

        def report(message: str) -> None:
            progress.update(task, description=message)

        with contextlib.redirect_stdout(sys.stderr):  # stdout is for the matrix (or JSON) only
            results = build_scope(
                tree, Path(repo), artifact_store, list(models) or None, list(versions) or None,
                list(profiles) or None, progress=report,
            )  # fmt: skip
    if report_dir is not None:
        from reconciler.optimize.report import render_report

        try:
            report_dir.mkdir(parents=True, exist_ok=True)
            (report_dir / "index.html").write_text(render_report(results))
        except OSError as exc:
            click.echo(f"error: --report {report_dir}: {exc.strerror or exc}", err=True)
            sys.exit(1)
        click.echo(f"report: {report_dir / 'index.html'}", err=True)
    if output == "json":
        click.echo(json.dumps([_result_json(r) for r in results], indent=2))
    else:
        _print_matrix(results)
    if not results:
        click.echo("nothing to build for this scope", err=True)
    sys.exit(1 if any(r.error for r in results) else 0)


def _result_json(result) -> dict:
    from reconciler.optimize.pipeline import variant_json

    return {
        "model": result.model,
        "version": result.version,
        "profile": result.profile,
        "artifact": result.artifact.id if result.artifact else None,
        "cached": result.cached,
        "referenceAccuracy": result.reference_accuracy,
        "referenceMetrics": result.reference_metrics,
        "error": result.error,
        "variants": [variant_json(v) for v in result.variants],
    }


def _ms(value: float | None) -> str:
    return "n/m" if value is None else f"{value:.3f}"


def _metrics_of(measurement) -> dict:
    """A measurement's metrics (measurements cached before metrics per task have only accuracy)."""
    return measurement.metrics or {"accuracy": measurement.accuracy, "agreement": measurement.agreement}


def _reference_of(result) -> dict:
    return result.reference_metrics or {"accuracy": result.reference_accuracy or 0.0}


def _print_matrix(results) -> None:
    from rich.console import Console
    from rich.table import Table

    from reconciler.optimize.metrics import headline
    from reconciler.optimize.pipeline import UNPRUNED

    console = Console(width=None if sys.stdout.isatty() else 160)
    table = Table("MODEL", "VERSION", "PROFILE", "VARIANT", "SIZE", "xFP32", "P50 ms", "P95 ms", "MEMORY",
                  "METRIC", "DELTA", "RESULT", title="Build matrix")  # fmt: skip
    for result in results:
        fp32 = next((v.measurement for v in result.variants if v.name == "fp32" and v.measurement), None)
        for variant in result.variants:
            m = variant.measurement
            if m is None:
                table.add_row(result.model, result.version, result.profile, variant.name, *["-"] * 7,
                              f"[red]error[/]: {variant.error}")  # fmt: skip
                continue
            ratio = f"{m.size_bytes / fp32.size_bytes:.2f}" if fp32 else "-"
            figure, delta = headline(_metrics_of(m), _reference_of(result))
            if variant.selected:
                verdict = "[green]selected[/]" + (" (cached)" if result.cached else "")
            elif variant.name == UNPRUNED:
                verdict = "baseline: the source without structured pruning (never shipped)"
            elif variant.failures:
                verdict = "[red]fail[/]: " + "; ".join(str(f) for f in variant.failures)
            elif not variant.eligible:
                verdict = f"reference ({variant.precision} not in profile)"
            else:
                verdict = "pass" + (f": {variant.notes[-1]}" if variant.notes else "")
            table.add_row(result.model, result.version, result.profile, variant.name, human_size(m.size_bytes), ratio,
                          _ms(m.latency_p50_ms), _ms(m.latency_p95_ms), human_size(m.peak_memory_bytes),
                          figure, delta, verdict)  # fmt: skip
        if result.error:
            table.add_row(
                result.model, result.version, result.profile, "", *[""] * 7, f"[red]refused[/]: {result.error}"
            )
    console.print(table)
    notes = {
        v.measurement.latency_note for r in results for v in r.variants if v.measurement and v.measurement.latency_note
    }
    for note in sorted(notes):
        console.print(f"n/m: latency {note}")


@click.command("build-job", hidden=True)
@click.option("--job", "job", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The job's directory (BUILDS/KEY, with its job.json).")  # fmt: skip
@click.option("--git-dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The controller's clone of the fleet repo (the job's commit is read from it).")  # fmt: skip
@click.option("--store", required=True, type=click.Path(path_type=Path), help="The artifact store.")
@click.option("--builder-key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              envvar="EDGE_RECONCILER_BUILDER_KEY",
              help="With the builder trust mode: the key that signs what this job builds.")  # fmt: skip
@click.option("--releases", type=click.Path(file_okay=False, path_type=Path),
              help="Where a signed release goes (the controller's --releases); only with --builder-key.")  # fmt: skip
@click.option("--lock-fd", type=int, hidden=True, help="The job's lock, taken by the controller that started this.")
def build_job(job: Path, git_dir: Path, store: Path, builder_key: Path | None, releases: Path | None,
              lock_fd: int | None) -> None:  # fmt: skip
    """Run one build job of the controller (a local worker's and a Kubernetes build Job's command line)."""
    from datetime import UTC, datetime

    from reconciler.artifact.jobs import JobState
    from reconciler.artifact.store import ArtifactStore
    from reconciler.optimize.job import run_job

    if builder_key is not None and releases is None:
        raise click.UsageError("--builder-key needs --releases (where the signed release goes)")

    def say(message: str) -> None:
        click.echo(f"{datetime.now(UTC).isoformat(timespec='seconds')} {message}", err=True)

    try:
        result = run_job(job, git_dir, ArtifactStore(store), builder_key, releases, say=say, lock_fd=lock_fd)
    except FileNotFoundError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    # A refused build is a result, not a failure of the job: the controller reads the report.
    sys.exit(0 if result is None or result.state in (JobState.SUCCEEDED, JobState.REFUSED) else 1)
