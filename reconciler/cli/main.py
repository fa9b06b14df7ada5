"""``edgectl``: the command line. Thin by design: it parses arguments, calls library entry points,
and turns their results and errors into text and exit codes (0 ok, 1 invalid input, 2 usage).

Each command's module is imported only when that command runs: the libraries behind them (signing,
Kubernetes, Git, inference runtimes, TensorFlow) take about a second to import, which ``--help``,
``validate`` in CI and a device's ``agent --once`` should not pay for the others. ``--help`` lists the
commands from :data:`COMMANDS` without importing them, so that table carries each command's short help;
a test checks it against the commands' docstrings.
"""

from __future__ import annotations

import importlib
from typing import NamedTuple

import click


class LazyCommand(NamedTuple):
    module: str
    attribute: str
    summary: str
    """The first paragraph of the command's docstring, which ``--help`` shortens."""
    hidden: bool = False


COMMANDS: dict[str, LazyCommand] = {
    "agent": LazyCommand("reconciler.cli.agent", "agent",
                         "Download, verify, install (A/B), health-check and report this device's models."),
    "build": LazyCommand("reconciler.cli.build", "build",
                         "Build, benchmark and gate artifacts per device profile; print the variant matrix."),
    "build-job": LazyCommand("reconciler.cli.build", "build_job", "Run one build job of the controller (a local "
                             "worker's and a Kubernetes build Job's command line).", hidden=True),
    "completion": LazyCommand("reconciler.cli.version", "completion",
                              "Print the shell completion script for SHELL (bash: source <(edgectl completion bash))."),
    "debug": LazyCommand("reconciler.cli.debug", "debug", "Raise some devices' agents to LEVEL for a while, with "
                         "their log lines uploaded (a commit)."),
    "demo": LazyCommand("reconciler.cli.demo", "demo", "Run the product end to end on this machine: repo, builds, "
                        "controller, 12 agents, a rollout, a rollback."),
    "describe": LazyCommand("reconciler.cli.get", "describe", "Everything about one rollout (steps, gates against "
                            "thresholds, devices by version, failing devices, decisions, events), one device "
                            "(labels, enrolment, assignments with their last reasons, events) or one federated "
                            "training (rounds, participants, who declined and why)."),
    "device": LazyCommand("reconciler.cli.device", "device", "Enrolment tokens, enrolled devices and revocation."),
    "docs": LazyCommand("reconciler.cli.reference", "docs", "Generated reference pages.", hidden=True),
    "export": LazyCommand("reconciler.cli.trust", "export",
                          "Copy a built artifact out of the store into DIRECTORY (to sign it, or to inspect it)."),
    "get": LazyCommand("reconciler.cli.get", "get",
                       "Show devices, groups, models, rollouts, artifacts, benchmarks, drift, trainings, events or "
                       "builds (kubectl-style tables)."),
    "keys": LazyCommand("reconciler.cli.trust", "keys", "Key files for release signatures and TUF roles."),
    "logs": LazyCommand("reconciler.cli.debug", "logs", "Log lines DEVICE's agent uploaded during ``edgectl debug`` "
                        "sessions."),
    "plan": LazyCommand("reconciler.cli.plan", "plan_command", "Show what merging HEAD into BASE would do: devices "
                        "per version at every rollout step, artifacts to build, risky settings."),
    "reconcile": LazyCommand("reconciler.cli.rollout", "reconcile",
                             "Make the controller fetch and reconcile now (as a Git webhook does)."),
    "report": LazyCommand("reconciler.cli.report", "report", "Write an HTML report: rollout progress, latency per "
                          "version and profile, drift per figure."),
    "resume": LazyCommand("reconciler.cli.rollout", "resume_controller", "Let a suspended controller reconcile again."),
    "rollout": LazyCommand("reconciler.cli.rollout", "rollout",
                           "Act on a rollout through the controller (now), or as a commit (--via-git)."),
    "run": LazyCommand("reconciler.cli.run", "run",
                       "Reconcile devices toward the fleet repo, and write status back to it."),
    "schema": LazyCommand("reconciler.cli.spec", "schema", "JSON Schemas of the fleet documents (for editors and CI)."),
    "sign": LazyCommand("reconciler.cli.trust", "sign",
                        "Release ARTIFACT_DIR: write its release statement, then sign every file as one bundle."),
    "simulate": LazyCommand("reconciler.cli.simulate", "simulate", "Roll out to N simulated devices over the real "
                            "device API; print the figures as JSON."),
    "suspend": LazyCommand("reconciler.cli.rollout", "suspend",
                           "Stop the controller reconciling (devices keep what they run) until edgectl resume."),
    "tuf": LazyCommand("reconciler.cli.trust", "tuf",
                       "The controller's TUF repository (what agents may fetch, signed and fresh)."),
    "validate": LazyCommand("reconciler.cli.spec", "validate", "Check every fleet document under PATH; print each "
                            "error as file:line: Kind/name: field: message."),
    "version": LazyCommand("reconciler.cli.version", "version",
                           "Print the client's version, and the controller's from the fleet repo's status."),
    "verify": LazyCommand("reconciler.cli.trust", "verify",
                          "Verify ARTIFACT_DIR as a device would: exit 0 verified, 1 refused (with the reason)."),
}  # fmt: skip


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use (click's documented lazy-loading pattern)."""

    def __init__(self, *args, lazy: dict[str, LazyCommand], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            entry = self.lazy[cmd_name]
            command = getattr(importlib.import_module(entry.module), entry.attribute)
            if not isinstance(command, click.Command) or command.name != cmd_name:
                raise TypeError(f"{entry.module}.{entry.attribute} is not the command {cmd_name!r}")
            self.add_command(command)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click's command list, with each short help made from the table instead of the imported command."""
        rows = []
        for name in self.list_commands(ctx):
            entry = self.lazy.get(name)
            command = click.Command(name, help=entry.summary, hidden=entry.hidden) if entry else self.commands[name]
            if not command.hidden:
                rows.append((name, command))
        if rows:
            limit = formatter.width - 6 - max(len(name) for name, _ in rows)
            with formatter.section("Commands"):
                formatter.write_dl([(name, command.get_short_help_str(limit)) for name, command in rows])


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edge-reconciler", prog_name="edgectl")
def main() -> None:
    """Deliver machine-learning models to fleets of edge devices, declaratively, from Git."""


if __name__ == "__main__":
    main()
