"""``edgectl demo``: the README's first command. Thin: options in, :func:`reconciler.demo.run_demo` does the rest."""

from __future__ import annotations

from pathlib import Path

import click

from .output import phase_style


@click.command()
@click.option("--fleet-example", "example", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The example fleet to start from (default: ./fleet-example).")  # fmt: skip
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              help="Where to leave the repo, state and logs (default: a new temporary directory).")  # fmt: skip
@click.option("--timeout", type=float, default=300.0, show_default=True, help="Seconds each rollout may take.")
def demo(example: Path | None, workdir: Path | None, timeout: float) -> None:
    """Run the product end to end on this machine: repo, builds, controller, 12 agents, a rollout, a rollback."""
    from reconciler.demo import DemoError, example_fleet, run_demo

    try:
        example = example or example_fleet()
    except DemoError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        run_demo(example, workdir, timeout, phase_style)
    except DemoError as exc:
        raise click.ClickException(str(exc)) from None
