"""``edgectl plan``: what merging a pull request to the fleet repo would do, for the review.

Thin: it reads the base and head (refs of a local repository, or the working directory for the head),
validates the head, takes the device inventory from a file or a backend and the cached builds from the
store, and renders :func:`reconciler.plan.review.review` as text, Markdown (a ready PR comment) or JSON.

Exit codes: 0, or with ``--exit-code`` 0 no changes / 1 changes (like ``argocd app diff``); an invalid head
exits 1 without ``--exit-code`` and 2 with it, so a CI step can tell "changes" from "broken".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import yaml

from .common import DEFAULT_STORE, STORE_SHOWN

FORMATS = ("text", "markdown", "json")
PROBLEMS_SHOWN = 20
"""Problem lines in the text output; the rest are counted (JSON lists every one)."""
PROBLEMS_LISTED = 50
"""Problem lines in a pull request comment."""


@click.command("plan")
@click.option("--repo", default=".", show_default=True, help="Local fleet repo (a checkout or bare repository).")
@click.option("--base", required=True, help="The branch or commit the pull request merges into.")
@click.option("--head", help="The pull request's commit (default: the working directory as it is).")
@click.option("-o", "--output", type=click.Choice(FORMATS), default="text", show_default=True)
@click.option("--inventory", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Devices and labels: YAML/JSON list of {name, labels}, `kubectl get nodes -o json`, or "
                   "`edgectl get devices -o json`.")  # fmt: skip
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Take the inventory from a local backend instead.")  # fmt: skip
@click.option("--kubeconfig", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Take the inventory from the cluster's Nodes instead.")  # fmt: skip
@click.option("--store", type=click.Path(path_type=Path), default=DEFAULT_STORE, show_default=STORE_SHOWN,
              help="Build store: cached builds judge the profile limits.")  # fmt: skip
@click.option("--exit-code", is_flag=True, help="Exit 1 when merging changes anything.")
def plan_command(repo: str, base: str, head: str | None, output: str, inventory: Path | None, state_dir: Path | None,
                 kubeconfig: Path | None, store: Path, exit_code: bool) -> None:  # fmt: skip
    """Show what merging HEAD into BASE would do: devices per version at every rollout step, artifacts to
    build, risky settings."""
    from reconciler.api import SpecErrors
    from reconciler.api.status import FleetStatus, StatusPaths, load_with_status
    from reconciler.controller.rollouts import initial_state, position
    from reconciler.gitops.source import GitError, read_repo
    from reconciler.plan.review import review

    from .view import status_on_branch

    try:
        base_files = read_repo(repo, base)
        head_files = read_repo(repo, head)
    except GitError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2 if exit_code else 1)

    try:
        head_tree = load_with_status(head_files.files).tree
    except SpecErrors as exc:
        _invalid(output, exc.errors, base, head)
        sys.exit(2 if exit_code else 1)
    try:
        loaded = load_with_status(base_files.files)  # rollouts continue from the base's status
        base_tree, status = loaded.tree, loaded.status
        status = status_on_branch(base_tree, status, base_files.git_dir)[0]
    except SpecErrors:
        base_tree = None  # a broken base: everything at the head is new
        status = FleetStatus.from_files(base_files.files, StatusPaths(head_tree.fleet.spec.status_path))
    devices = _inventory(inventory, state_dir, kubeconfig)
    base_positions, head_positions, head_steps, base_versions = {}, {}, {}, {}
    for name in base_tree.rollouts if base_tree else ():
        previous = status.rollout(name)
        base_positions[name] = position(base_tree, name, initial_state(base_tree, name, previous, {}))
        if previous.version:
            base_versions[name] = previous.version
    for name in head_tree.rollouts:
        state = initial_state(head_tree, name, status.rollout(name), {})
        head_positions[name], head_steps[name] = position(head_tree, name, state), state.step
    result = review(base_tree, head_tree, devices, base_positions, head_positions, head_steps, base_versions,
                    _builds(store))  # fmt: skip
    labels = (base, head or "working tree")
    click.echo({"text": render_text, "markdown": render_markdown, "json": render_json}[output](result, *labels))
    if exit_code and result.changes:
        sys.exit(1)


def _invalid(output: str, errors: list, base: str, head: str | None) -> None:
    if output == "markdown":
        lines = [f"### edge-reconciler plan: `{base}` ← `{head or 'working tree'}`", "",
                 f"**The head does not validate: {len(errors)} error(s).** Nothing would be applied.",
                 "", "```"]  # fmt: skip
        lines += [str(e) for e in errors] + ["```"]
        click.echo("\n".join(lines))
    elif output == "json":
        click.echo(json.dumps({"valid": False, "errors": [str(e) for e in errors]}, indent=2))
    for error in errors:
        click.echo(str(error), err=True)


def _inventory(path: Path | None, state_dir: Path | None, kubeconfig: Path | None) -> list:
    from reconciler.plan import Device

    if sum(x is not None for x in (path, state_dir, kubeconfig)) > 1:
        raise click.UsageError("take the inventory from one place: --inventory, --state-dir or --kubeconfig")
    if state_dir is not None or kubeconfig is not None:
        from reconciler.cluster import ClusterError, LocalBackend, kubernetes_backend

        try:
            backend = LocalBackend(state_dir) if state_dir is not None else kubernetes_backend(kubeconfig)
            backend.sync()
            return backend.devices()
        except ClusterError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
    if path is None:
        click.echo("warning: no inventory (--inventory, --state-dir or --kubeconfig): device counts are 0", err=True)
        return []
    try:
        body = read_inventory(path.read_bytes())
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise click.UsageError(f"--inventory {path}: {exc}") from None
    items = body.get("items", body.get("devices")) if isinstance(body, dict) else body
    devices = {}
    for index, item in enumerate(items or []):
        meta = item.get("metadata", item) if isinstance(item, dict) else {}
        name, labels = meta.get("name"), meta.get("labels") or {}
        if not isinstance(name, str) or not isinstance(labels, dict):
            raise click.UsageError(f"--inventory {path}: item {index} needs a name and a labels mapping")
        devices[name] = Device(name, {str(k): str(v) for k, v in labels.items()})
    return list(devices.values())


def read_inventory(data: bytes) -> Any:
    """JSON (``kubectl get nodes -o json``: megabytes at fleet scale) with the C JSON parser; YAML otherwise,
    with libyaml's loader where PyYAML has it. A pure-Python YAML parse of 5,000 Nodes takes most of a minute."""
    if data.lstrip()[:1] in (b"{", b"["):
        return json.loads(data)
    return yaml.load(data, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _builds(store: Path) -> dict:
    from reconciler.artifact.manifest import build_figures
    from reconciler.artifact.store import ArtifactStore, StoreError

    if not Path(store).exists():
        return {}
    found = ArtifactStore(store)
    builds = {}
    for artifact_id in found.artifact_ids():
        try:
            manifest = found.read_manifest(artifact_id)
        except StoreError:
            continue
        builds[(manifest["model"], manifest["version"], manifest["profile"])] = build_figures(manifest)
    return builds


def _transition(model: str, old: str | None, new: str | None) -> str:
    if old is None:
        return f"{model}: (none) → {new}"
    if new is None:
        return f"{model}: {old} → (removed)"
    return f"{model}: {old} → {new}"


def render_text(result, base: str, head: str) -> str:
    lines = [f"Plan: {base} ← {head} ({result.devices} devices in the inventory)", ""]
    lines.append("Changed documents:" if result.documents else "No spec changes.")
    lines += [f"  {what:<9} {key}" for key, what in result.documents]
    if result.versions:
        lines += ["", "New model versions:"]
        lines += [f"  {v.model} {v.version}: {v.origin}" + ("" if v.delivered else " (no rollout delivers it yet)")
                  for v in result.versions]  # fmt: skip
    moved = sum(result.transitions.values())
    lines += ["", f"On merge: {moved} device assignment(s) change."]
    lines += [f"  {_transition(*key)}: {n} device(s)" for key, n in sorted(result.transitions.items(), key=str)]
    for item in result.rollouts:
        lines += ["", f"Rollout {item.name} ({item.change}): {item.model} {item.base_version or '-'} → {item.version}"]
        if item.change == "removed":
            continue
        lines.append(f"  groups: {', '.join(f'{g} ({n})' for g, n in item.groups.items())}; {item.targeted} targeted;"
                     f" stable {item.stable or '-'}; continues at step {item.starts_at + 1}")  # fmt: skip
        if item.pacing:
            lines.append(f"  pacing: {item.pacing}")
        if item.lab:
            lines.append(f"  lab: {item.lab} lab device(s) benchmark {item.version} before step 1; no fleet device "
                         "gets it until they report")  # fmt: skip
        for step in item.steps:
            lines.append(f"  step {step.step + 1}: {step.percent:>3}%  {step.on_new:>5} on {item.version}, "
                         f"{step.on_stable:>5} on {item.stable or '(none)'}"
                         + (f", {step.without} without {item.model} yet" if step.without else "")
                         + (f", pause {step.pause}" if step.pause else "")
                         + (f", done at {step.done_at} Healthy" if step.done_at else ""))  # fmt: skip
        lines += [f"  warning: {w}" for w in item.warnings]
    if result.artifacts:
        lines += ["", "Artifacts:"]
        for need in result.artifacts:
            state = "built" if need.built else "to build"
            lines.append(f"  {need.model} {need.version} {need.profile}: {state}, {need.devices} device(s); "
                         f"{need.estimate}")  # fmt: skip
    lines += [f"warning: {w}" for w in result.warnings]
    lines += [f"problem: {p}" for p in result.problems[:PROBLEMS_SHOWN]]
    if len(result.problems) > PROBLEMS_SHOWN:
        lines.append(f"... and {len(result.problems) - PROBLEMS_SHOWN} more problem(s) (-o json lists every one)")
    return "\n".join(lines)


def render_markdown(result, base: str, head: str) -> str:
    moved = sum(result.transitions.values())
    lines = [f"### edge-reconciler plan: `{base}` ← `{head}`", "",
             f"**Merging changes {moved} device assignment(s)** across {result.devices} devices in the inventory.",
             ""]  # fmt: skip
    if result.transitions:
        lines += ["| Model | From | To | Devices |", "|---|---|---|---:|"]
        for (model, old, new), n in sorted(result.transitions.items(), key=str):
            lines.append(f"| {model} | {old or '—'} | {new or '—'} | {n} |")
        lines.append("")
    for item in result.rollouts:
        if item.change == "removed":
            lines += [f"#### Rollout `{item.name}`: removed ({item.model} {item.version})", ""]
            continue
        lines += [f"#### Rollout `{item.name}`: {item.model} {item.base_version or '—'} → **{item.version}** "
                  f"({item.change})", "",
                  f"Groups: {', '.join(f'`{g}` ({n})' for g, n in item.groups.items())} · {item.targeted} devices "
                  f"targeted · stable version {item.stable or '—'} · continues at step {item.starts_at + 1}"
                  + (f" · {item.pacing}" if item.pacing else "")
                  + (f" · {item.lab} lab device(s) benchmark it first" if item.lab else ""),
                  ""]  # fmt: skip
        if item.steps:
            lines += [f"| Step | Percent | On {item.version} | On {item.stable or 'stable'} | Without | Pause |",
                      "|---:|---:|---:|---:|---:|---|"]  # fmt: skip
            for step in item.steps:
                marker = " ←" if step.step == item.starts_at else ""
                done = f"; done at {step.done_at} Healthy" if step.done_at else ""
                lines.append(f"| {step.step + 1}{marker} | {step.percent}% | {step.on_new} | {step.on_stable} | "
                             f"{step.without} | {step.pause or '—'}{done} |")  # fmt: skip
            lines.append("")
        lines += [f"> ⚠️ {w}" for w in item.warnings]
        if item.warnings:
            lines.append("")
    if result.artifacts:
        lines += ["#### Artifacts", "", "| Model | Version | Profile | Devices | State | Limits |",
                  "|---|---|---|---:|---|---|"]  # fmt: skip
        for need in result.artifacts:
            verdict = {True: "likely met", False: "**likely exceeded**", None: "unknown"}[need.within_limits]
            lines.append(f"| {need.model} | {need.version} | {need.profile} | {need.devices} | "
                         f"{'built' if need.built else 'to build'} | {verdict}: {need.estimate} |")  # fmt: skip
        lines.append("")
    if result.warnings:
        lines += [f"> ⚠️ {w}" for w in result.warnings] + [""]
    if result.problems:
        lines += [f"<details><summary>Devices the plan cannot serve: {len(result.problems)}</summary>", ""]
        lines += [f"- {p}" for p in result.problems[:PROBLEMS_LISTED]]
        if len(result.problems) > PROBLEMS_LISTED:
            lines.append(f"- … and {len(result.problems) - PROBLEMS_LISTED} more (`edgectl plan -o json` lists every "
                         "one)")  # fmt: skip
        lines += ["", "</details>", ""]
    if result.versions:
        lines += ["**New model versions**", ""]
        lines += [f"- `{v.model}` {v.version}: {v.origin}" + ("" if v.delivered else " (no rollout delivers it yet)")
                  for v in result.versions] + [""]  # fmt: skip
    if result.documents:
        lines += ["<details><summary>Changed documents</summary>", ""]
        lines += [f"- `{key}` {what}" for key, what in result.documents] + ["", "</details>"]
    return "\n".join(lines).rstrip()


def render_json(result, base: str, head: str) -> str:
    from dataclasses import asdict

    body = {
        "base": base,
        "head": head,
        "valid": True,
        "changes": result.changes,
        "devices": result.devices,
        "documents": [{"document": key, "change": what} for key, what in result.documents],
        "versions": [asdict(v) for v in result.versions],
        "transitions": [
            {"model": m, "from": old, "to": new, "devices": n}
            for (m, old, new), n in sorted(result.transitions.items(), key=str)
        ],
        "rollouts": [asdict(item) for item in result.rollouts],
        "artifacts": [asdict(need) for need in result.artifacts],
        "warnings": result.warnings,
        "problems": result.problems,
    }
    return json.dumps(body, indent=2)
