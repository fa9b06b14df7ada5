"""``edgectl get devices|groups|models|rollouts|artifacts|benchmarks|drift [NAME]`` and ``edgectl describe
rollout NAME``.

Where each comes from: devices from a backend (the local database or the Kubernetes API: the inventory and
the agents' reports); groups, models and rollouts from the fleet repo, specs and the status files the
controller committed (``--repo``: checkout, bare repository or URL), and rollouts also from the FleetRollout
objects the controller mirrors them to (``--backend kubernetes`` without ``--repo``); artifacts from the build
store; drift from the status files the controller writes per model (``status/drift/MODEL.yaml``). On
Kubernetes the same data is one ``kubectl get edge`` away: the CRDs carry printer columns and that category.
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from reconciler.api.status import DeviceCounts, GroupStatus, RolloutStatus
from reconciler.api.types import format_duration

from .common import DEFAULT_STORE, STORE_SHOWN, backend_options, open_registry
from .output import Column, age, emit, human_size, now, output_option, select, summarize
from .view import FleetView, load_view

RESOURCES = {
    "devices": "device", "device": "device", "dev": "device",
    "groups": "group", "group": "group", "dg": "group",
    "models": "model", "model": "model",
    "rollouts": "rollout", "rollout": "rollout", "ro": "rollout",
    "artifacts": "artifact", "artifact": "artifact", "art": "artifact",
    "events": "event", "event": "event", "ev": "event",
    "builds": "build", "build": "build",
    "benchmarks": "benchmark", "benchmark": "benchmark", "bench": "benchmark",
    "drift": "drift",
    "trainings": "training", "training": "training", "fl": "training",
}  # fmt: skip


def _repo_option(function: Callable) -> Callable:
    return click.option("--repo", default=".", show_default=True,
                        help="Fleet repo: a checkout, a bare repository (HEAD) or a URL.")(function)  # fmt: skip


@click.command()
@click.argument("resource")
@click.argument("name", required=False)
@output_option
@click.option("-l", "--selector", help="Label selector (k=v, k!=v, k in (a,b), !k).")
@click.option("--field-selector", help="Rows whose columns match: phase=Failed,model!=x (the table's columns).")
@click.option("--sort-by", help="Sort by a column (lastSeen, phase, ...).")
@click.option("--group", help="Only devices of this DeviceGroup.")
@click.option("-A", "--all-groups", is_flag=True, help="All devices (the default; kubectl's -A habit).")
@click.option("--no-headers", is_flag=True)
@click.option("-w", "--watch", is_flag=True, help="Print again whenever the output changes (Ctrl-C stops).")
@click.option("--store", type=click.Path(path_type=Path), default=DEFAULT_STORE, show_default=STORE_SHOWN,
              help="Build store (artifacts).")  # fmt: skip
@click.option("--for", "involved", metavar="KIND/NAME", help="Events: only those of rollout/NAME or device/NAME.")
@_repo_option
@backend_options
def get(resource: str, name: str | None, output: str | None, selector: str | None, field_selector: str | None,
        sort_by: str | None, group: str | None,
        all_groups: bool, no_headers: bool, watch: bool, store: Path, involved: str | None, repo: str, backend: str,
        state_dir: Path, kubeconfig: Path | None, context: str | None, namespace: str) -> None:  # fmt: skip
    """Show devices, groups, models, rollouts, artifacts, benchmarks, drift, trainings, events or builds
    (kubectl-style tables)."""
    kind = RESOURCES.get(resource.lower())
    if kind is None:
        raise click.UsageError(f"unknown resource {resource!r}; one of devices, groups, models, rollouts, artifacts, "
                               "benchmarks, drift, trainings, events, builds")  # fmt: skip
    if involved is not None and kind != "event":
        raise click.UsageError("--for goes with events only")
    about = _involved(involved) if involved else None
    if group and all_groups:
        raise click.UsageError("--group and -A exclude each other")
    from reconciler.api.types import LabelSelector

    try:
        labels = LabelSelector.parse(selector) if selector else None
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None

    opened = []  # the backend, opened once; a watch re-reads it every round

    def target():
        if not opened:
            opened.append(_open_backend(backend, state_dir, kubeconfig, namespace, context))
        return _synced(opened[0])

    def collect() -> tuple[list[dict], list[Column], list[dict]]:
        if kind == "artifact":
            return _artifacts(store, name)
        if kind == "benchmark":
            return _benchmarks(store, name)
        if kind == "build":
            return _builds(state_dir, name)
        if kind == "event":
            return _events(target(), about)
        if kind == "device":
            view = load_view(repo) if group or Path(repo, "fleet.yaml").exists() or repo != "." else None
            enrolment = _enrolment(backend, state_dir, kubeconfig, namespace, context)
            return _devices(target(), view, name, labels, group, enrolment)
        if kind == "rollout" and backend == "kubernetes" and repo == ".":  # the mirrors the controller keeps
            return _mirrored_rollouts(target(), name)
        view = load_view(repo)
        return {"group": _groups, "model": _models, "rollout": _rollouts, "drift": _drift,
                "training": _trainings}[kind](view, name, labels)  # fmt: skip

    last = None
    while True:
        rows, columns, objects = collect()
        rows, objects = select(list(rows), list(objects), columns, field_selector, sort_by)
        if name and not rows:
            where = {"artifact": f"the store {store}", "benchmark": f"the store {store}",
                     "device": f"the {backend} backend", "event": "the backend",
                     "build": f"{state_dir / 'builds'}"}  # fmt: skip
            click.echo(f'Error (NotFound): {kind} "{name}" not found in {where.get(kind, repo)}', err=True)
            sys.exit(1)
        rendered = (rows, objects)
        if rendered != last:
            # A benchmark id names one artifact, whose figures come from several places: print them all.
            single = bool(name) and kind != "benchmark"
            emit(kind, rows, columns, objects, output, no_headers or (watch and last is not None), single=single)
            last = rendered
        if not watch:
            return
        time.sleep(2.0)


def _involved(value: str) -> tuple[str, str]:
    """``rollout/NAME`` or ``device/NAME`` (kubectl's ``--for`` form) as the events' (kind, name)."""
    kind, _, name = value.partition("/")
    kinds = {"rollout": "Rollout", "rollouts": "Rollout", "ro": "Rollout", "device": "Device", "devices": "Device"}
    if kind.lower() not in kinds or not name:
        raise click.UsageError(f"--for {value!r}: give rollout/NAME or device/NAME")
    return kinds[kind.lower()], name


def _events(target, about: tuple[str, str] | None) -> tuple[list[dict], list[Column], list[dict]]:
    """Events the controller recorded, oldest first (as ``kubectl get events`` lists them)."""
    from reconciler.cluster import ClusterError

    try:
        events = target.events(*about) if about else target.events()
    except ClusterError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    rows, objects = [], []
    for event in events:
        rows.append({"lastSeen": age(event.last_seen), "type": event.type, "reason": event.reason,
                     "object": event.involved + (f" ({event.model})" if event.model else ""),
                     "message": event.message, "count": event.count, "firstSeen": age(event.first_seen)})  # fmt: skip
        objects.append({"type": event.type, "reason": event.reason, "message": event.message, "count": event.count,
                        "firstTimestamp": event.first_seen, "lastTimestamp": event.last_seen,
                        "involvedObject": {"kind": event.kind, "name": event.name, "model": event.model}})  # fmt: skip
    columns = [Column("LAST SEEN", "lastSeen"), Column("TYPE", "type"), Column("REASON", "reason"),
               Column("OBJECT", "object"), Column("MESSAGE", "message"), Column("COUNT", "count", wide=True),
               Column("FIRST SEEN", "firstSeen", wide=True)]  # fmt: skip
    return rows, columns, objects


def _selected(documents: dict, name: str | None, labels) -> list[tuple[str, Any]]:
    """The documents asked for: all, or the one named, and only those whose labels match ``-l``."""
    return [(key, document) for key, document in sorted(documents.items())
            if (not name or key == name) and (labels is None or labels.matches(document.metadata.labels))]  # fmt: skip


def _open_backend(backend: str, state_dir: Path, kubeconfig: Path | None, namespace: str, context: str | None):
    from reconciler.cluster import ClusterError, LocalBackend, kubernetes_backend

    try:
        if backend == "kubernetes":
            target = kubernetes_backend(kubeconfig, namespace, None, context=context)
        else:
            if not (state_dir / "fleet.sqlite").exists():
                click.echo(f"error: no local backend in {state_dir} (pass --state-dir)", err=True)
                sys.exit(1)
            return LocalBackend(state_dir)
    except ClusterError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    return target


def _synced(target):
    """Read the backend again (a LIST on Kubernetes; the local database is always current)."""
    from reconciler.cluster import ClusterError

    try:
        target.sync()
    except ClusterError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    return target


def _enrolment(
    backend: str, state_dir: Path, kubeconfig: Path | None, namespace: str, context: str | None
) -> dict | None:
    """Enrolled devices by name, from the device registry the controller's device API keeps (None: there is
    none, or it cannot be read: the table then goes without enrolment columns)."""
    from reconciler.errors import EdgeReconcilerError

    registry = open_registry(backend, state_dir, kubeconfig, namespace, context=context)
    if registry is None:
        return None
    try:
        return {record.name: record for record in registry.devices()}
    except EdgeReconcilerError:  # no EdgeDevice CRD (an older install), no RBAC on it
        return None
    finally:
        registry.close()


def _devices(
    target, view: FleetView | None, name, labels, group, enrolment: dict | None = None
) -> tuple[list[dict], list[Column], list[dict]]:
    """``enrolment``: the device registry's records; with it, ``-o wide`` shows enrolment and certificate expiry."""
    from reconciler.plan import plan

    devices = sorted(target.devices(), key=lambda d: d.name)
    if group:
        if view is None or group not in view.tree.groups:
            click.echo(f'Error: group "{group}" is not defined in the fleet repo', err=True)
            sys.exit(1)
        devices = [d for d in devices if view.tree.groups[group].spec.selector.matches(d.labels)]
    if labels is not None:
        devices = [d for d in devices if labels.matches(d.labels)]
    if name:
        devices = [d for d in devices if d.name == name]
    profiles = plan(view.tree, devices, {}, {}).profiles if view is not None else {}
    assignments, statuses = target.assignments(), target.statuses()
    rows, objects = [], []
    for device in devices:
        mine = sorted((m, d) for (dev, m), d in assignments.items() if dev == device.name)
        for model, desired in mine or [(None, None)]:
            status = statuses.get((device.name, model)) if model else None
            row = {
                "name": device.name,
                "profile": profiles.get(device.name),
                "model": model,
                "version": desired.version if desired else None,
                "installed": status.installed_version if status else None,
                "phase": status.phase if status else ("Pending" if desired else None),
                "lastSeen": age(status.last_seen) if status and status.last_seen else "<never>",
                "rollout": desired.rollout if desired else None,
                "message": (status.message if status else "")[:80],
            }
            if enrolment is not None:
                record = enrolment.get(device.name)
                row["enrolment"] = record.state(now()) if record else "NotEnrolled"
                row["certExpires"] = record.not_after if record and record.not_after else None
            rows.append(row)
            objects.append({"name": device.name, "labels": dict(device.labels), "profile": row["profile"],
                            "model": model, "desiredVersion": row["version"],
                            "status": status.to_json() if status else None})  # fmt: skip
            if enrolment is not None:
                objects[-1]["enrolment"] = {"state": row["enrolment"], "certificateNotAfter": row["certExpires"]}
    columns = [Column("NAME", "name"), Column("MODEL", "model"), Column("VERSION", "version"),
               Column("INSTALLED", "installed"), Column("PHASE", "phase"), Column("LAST SEEN", "lastSeen"),
               Column("PROFILE", "profile", wide=True), Column("ROLLOUT", "rollout", wide=True),
               Column("MESSAGE", "message", wide=True)]  # fmt: skip
    if enrolment is not None:
        columns += [Column("ENROLMENT", "enrolment", wide=True), Column("CERT EXPIRES", "certExpires", wide=True)]
    return rows, columns, objects


def _rollouts(view: FleetView, name, labels) -> tuple[list[dict], list[Column], list[dict]]:
    rows, objects = [], []
    for rollout_name, rollout in _selected(view.tree.rollouts, name, labels):
        spec, status = rollout.spec, view.rollout_status(rollout_name)
        step = status.state.step
        steps = spec.steps
        healthy, targeted = status.ready
        failing = [g.name for g in status.gates if g.verdict == "Fail"]
        current = status.version == spec.version
        rows.append({
            "name": rollout_name,
            "model": spec.model,
            "version": spec.version,
            "phase": str(status.phase) if current else ("Suspended" if spec.suspend else "Pending"),
            "step": f"{min(step, len(steps) - 1) + 1}/{len(steps)} ({steps[min(step, len(steps) - 1)].percent}%)",
            "ready": f"{healthy}/{targeted}" if current else "0/0",
            "stable": status.state.stable_version,
            "age": age(status.state.step_started),
            "status": summarize(Counter(status.devices.by_phase())) if current else "-",
            "gates": ",".join(f"{g.name}={g.verdict}" for g in status.gates) or None,
            "message": status.state.message[:80] or (f"failing: {', '.join(failing)}" if failing else ""),
        })  # fmt: skip
        objects.append({"name": rollout_name, "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True),
                        "status": _written(view.status.rollouts.get(rollout_name))})  # fmt: skip
    columns = [Column("NAME", "name"), Column("MODEL", "model"), Column("VERSION", "version"),
               Column("PHASE", "phase"), Column("STEP", "step"), Column("READY", "ready"), Column("AGE", "age"),
               Column("STABLE", "stable", wide=True), Column("STATUS", "status", wide=True),
               Column("GATES", "gates", wide=True), Column("MESSAGE", "message", wide=True)]  # fmt: skip
    return rows, columns, objects


def _mirrored_rollouts(target, name: str | None) -> tuple[list[dict], list[Column], list[dict]]:
    """Rollouts from the FleetRollout objects (Kubernetes): the same status as Git, without the specs."""
    rows, objects = [], []
    for rollout_name, status in sorted(target.mirrored_rollouts().items()):
        if name and rollout_name != name:
            continue
        healthy, targeted = status.ready
        decided = status.last_decision.time if status.last_decision else None
        rows.append({"name": rollout_name, "model": status.model, "version": status.version,
                     "phase": str(status.phase), "step": status.state.step + 1,
                     "ready": f"{healthy}/{targeted}", "stable": status.state.stable_version,
                     "age": age(decided), "message": status.state.message[:80],
                     "commit": (status.observed_commit or "")[:12]})  # fmt: skip
        objects.append({"name": rollout_name, "status": status.to_json()})
    columns = [Column("NAME", "name"), Column("MODEL", "model"), Column("VERSION", "version"),
               Column("PHASE", "phase"), Column("STEP", "step"), Column("READY", "ready"), Column("AGE", "age"),
               Column("STABLE", "stable", wide=True), Column("COMMIT", "commit", wide=True),
               Column("MESSAGE", "message", wide=True)]  # fmt: skip
    return rows, columns, objects


def _groups(view: FleetView, name, labels) -> tuple[list[dict], list[Column], list[dict]]:
    rows, objects = [], []
    for group_name, group in _selected(view.tree.groups, name, labels):
        status = view.group_status(group_name)
        phases = Counter(status.by_phase())
        total = sum(phases.values())
        rollouts = sorted(n for n, r in view.tree.rollouts.items() if group_name in r.spec.groups)
        rows.append({"name": group_name, "devices": status.devices, "ready": f"{phases['Healthy']}/{total}",
                     "status": summarize(phases), "rollouts": ",".join(rollouts) or None,
                     "description": group.spec.description})  # fmt: skip
        objects.append({"name": group_name, "spec": group.spec.model_dump(mode="json", by_alias=True,
                        exclude_none=True), "status": _written(view.status.groups.get(group_name))})  # fmt: skip
    columns = [Column("NAME", "name"), Column("DEVICES", "devices"), Column("READY", "ready"),
               Column("STATUS", "status"), Column("ROLLOUTS", "rollouts", wide=True),
               Column("DESCRIPTION", "description", wide=True)]  # fmt: skip
    return rows, columns, objects


def _drift(view: FleetView, name, labels) -> tuple[list[dict], list[Column], list[dict]]:
    """One row per slice of each version's traffic the controller compared (the fleet, each profile and group, each
    drifted device), with the figures that drifted, the worst first; ``-o yaml`` gives every figure's figures."""
    rows, objects = [], []
    for model_name, _ in _selected(view.tree.models, name, labels):
        status = view.status.drift.get(model_name)
        if status is None:
            continue
        for version, drift in sorted(status.versions.items()):
            scopes = [("fleet", drift.fleet), *((f"profile/{p}", s) for p, s in sorted(drift.profiles.items())),
                      *((f"group/{g}", s) for g, s in sorted(drift.groups.items())),
                      *((f"device/{d}", s) for d, s in sorted(drift.devices.items()))]  # fmt: skip
            for scope, found in scopes:
                figures = found.figures
                worst = found.drifted[0] if found.drifted else max(figures, key=lambda f: figures[f].ks, default=None)
                figure = figures.get(worst) if worst else None
                rows.append({"model": model_name, "version": version, "scope": scope, "devices": found.devices,
                             "drifted": ",".join(found.drifted[:3]) + (" ..." if len(found.drifted) > 3 else "")
                             or ("-" if figures else drift.reference or "-"),
                             "ks": f"{figure.ks:.3f}" if figure else None,
                             "threshold": f"{figure.threshold:.3f}" if figure else None,
                             "psi": f"{figure.psi:.3f}" if figure else None,
                             "js": f"{figure.js:.3f}" if figure else None,
                             "since": drift.since if scope == "fleet" else None,
                             "window": status.window})  # fmt: skip
                objects.append({"model": model_name, "version": version, "scope": scope, "window": status.window,
                                "falseAlarmRate": status.false_alarm_rate, "since": drift.since,
                                **found.to_json()})  # fmt: skip
    columns = [Column("MODEL", "model"), Column("VERSION", "version"), Column("SCOPE", "scope"),
               Column("DEVICES", "devices"), Column("DRIFTED", "drifted"), Column("KS", "ks"),
               Column("THRESHOLD", "threshold"), Column("PSI", "psi", wide=True), Column("JS", "js", wide=True),
               Column("WINDOW", "window", wide=True), Column("SINCE", "since", wide=True)]  # fmt: skip
    return rows, columns, objects


def _trainings(view: FleetView, name, labels) -> tuple[list[dict], list[Column], list[dict]]:
    """One row per FederatedTraining, as its status file says it stands (``status/trainings/NAME.yaml``)."""
    from reconciler.api.status import TrainingStatus

    rows, objects = [], []
    for training_name, training in _selected(view.tree.trainings, name, labels):
        spec = training.spec
        status = view.status.trainings.get(training_name) or TrainingStatus(training_name)
        last = status.rounds[-1] if status.rounds else None
        rows.append({"name": training_name, "model": spec.model, "base": spec.base_version, "version": spec.version,
                     "phase": str(status.phase), "rounds": f"{len(status.rounds)}/{spec.rounds}",
                     "joined": len(status.joined), "declined": len(status.declined),
                     "accuracy": f"{last.accuracy:.3f}" if last and last.accuracy is not None else None,
                     "secure": "SecAgg+" if spec.secure_aggregation.enabled else "off",
                     "branch": status.branch, "message": status.message or None})  # fmt: skip
        objects.append({**status.to_json(), "spec": training.model_dump(mode="json", by_alias=True)["spec"]})
    columns = [Column("NAME", "name"), Column("MODEL", "model"), Column("BASE", "base"), Column("VERSION", "version"),
               Column("PHASE", "phase"), Column("ROUNDS", "rounds"), Column("JOINED", "joined"),
               Column("DECLINED", "declined"), Column("ACCURACY", "accuracy"),
               Column("AGGREGATION", "secure", wide=True), Column("BRANCH", "branch", wide=True),
               Column("MESSAGE", "message", wide=True)]  # fmt: skip
    return rows, columns, objects


def describe_training(view: FleetView, name: str) -> str:
    """A training's spec, where it stands, who took part and declined, and every round's figures."""
    from reconciler.api.status import TrainingStatus

    spec = view.tree.trainings[name].spec
    status = view.status.trainings.get(name) or TrainingStatus(name)
    secure = spec.secure_aggregation
    lines = [f"Name:         {name}", f"Model:        {spec.model} {spec.base_version} -> {spec.version}",
             f"Groups:       {', '.join(spec.groups)}", f"Trainer:      {spec.trainer} ({spec.data.source} data, "
             f"at least {spec.data.min_samples} rows)",
             f"Rounds:       {len(status.rounds)} of {spec.rounds}, {spec.clients_per_round} devices a round, at least "
             f"{spec.min_clients}, {spec.local_epochs} local epoch(s)",
             "Aggregation:  " + (f"SecAgg+ (shares {secure.shares or 'all'}, threshold "
                                  f"{secure.reconstruction_threshold or 'half'}, clipping +-{secure.clipping_range:g})"
                                  if secure.enabled else "FedAvg in the clear"),
             f"Phase:        {status.phase}" + (f": {status.message}" if status.message else "")]  # fmt: skip
    if status.started:
        lines.append(f"Started:      {status.started}" + (f", finished {status.finished}" if status.finished else ""))
    if status.branch:
        lines.append(f"Branch:       {status.branch} (open a pull request from it)")
    lines.append(f"Joined:       {', '.join(status.joined) or '-'}")
    if status.declined:
        lines.append("Declined:")
        lines += [f"  {device:<24} {why}" for device, why in sorted(status.declined.items())]
    if status.rounds:
        lines += ["Rounds:", "  ROUND  DEVICES  DROPPED  ROWS     ACCURACY  LOSS     SECONDS"]
        for r in status.rounds:
            accuracy = f"{r.accuracy:.3f}" if r.accuracy is not None else "-"
            loss = f"{r.loss:.4f}" if r.loss is not None else "-"
            lines.append(f"  {r.round:<6} {r.participants:<8} {r.dropped:<8} {r.samples:<8} {accuracy:<9} {loss:<8} "
                         f"{r.seconds:.1f}")  # fmt: skip
    return "\n".join(lines)


def _models(view: FleetView, name, labels) -> tuple[list[dict], list[Column], list[dict]]:
    rows, objects = [], []
    for model_name, model in _selected(view.tree.models, name, labels):
        running: Counter[str] = Counter()
        active = []
        for rollout_name, rollout in sorted(view.tree.rollouts.items()):
            if rollout.spec.model != model_name:
                continue
            status = view.rollout_status(rollout_name)
            active.append(f"{rollout_name}@{rollout.spec.version}")
            for version, counts in status.devices.by_version.items():
                running[version] += counts.get("Healthy", 0)
        rows.append({
            "name": model_name,
            "versions": ",".join(v.version for v in model.spec.versions),
            "profiles": ",".join(r.profile for r in model.spec.recipes),
            "running": " ".join(f"{v}({n})" for v, n in sorted(running.items()) if n) or None,
            "rollouts": " ".join(active) or None,
            "task": model.spec.task,
        })  # fmt: skip
        objects.append({"name": model_name, "spec": model.spec.model_dump(mode="json", by_alias=True,
                        exclude_none=True), "running": dict(running)})  # fmt: skip
    columns = [Column("NAME", "name"), Column("VERSIONS", "versions"), Column("PROFILES", "profiles"),
               Column("RUNNING", "running"), Column("ROLLOUTS", "rollouts", wide=True),
               Column("TASK", "task", wide=True)]  # fmt: skip
    return rows, columns, objects


def _stored_manifests(store: Path, name: str | None) -> Iterator[tuple[str, dict]]:
    """(id, manifest) of every artifact in the store whose id starts with ``name`` (all without one)."""
    from reconciler.artifact.store import ArtifactStore

    found = ArtifactStore(store) if Path(store).exists() else None
    for artifact_id in found.artifact_ids() if found else []:
        if not name or artifact_id.startswith(name):
            yield artifact_id, found.read_manifest(artifact_id)


def _by_model(rows: list[dict], objects: list[dict]) -> tuple[list[dict], list[dict]]:
    """Rows (and their objects) in model, version, profile order."""
    pairs = sorted(zip(rows, objects, strict=True), key=lambda p: (p[0]["model"] or "", p[0]["version"] or "",
                                                                    p[0]["profile"] or ""))  # fmt: skip
    return [r for r, _ in pairs], [o for _, o in pairs]


def _artifacts(store: Path, name: str | None) -> tuple[list[dict], list[Column], list[dict]]:
    from reconciler.artifact.manifest import build_figures

    rows, objects = [], []
    for artifact_id, manifest in _stored_manifests(store, name):
        figures = build_figures(manifest)
        rows.append({
            "name": artifact_id[:12], "id": artifact_id, "model": manifest.get("model"),
            "version": manifest.get("version"), "profile": manifest.get("profile"),
            "format": manifest.get("format"), "precision": manifest.get("precision"),
            "size": human_size(figures["sizeBytes"], separator="") if figures["sizeBytes"] else None,
            "latency": f"{figures['latencyP95Ms']:.2f}ms" if figures["latencyP95Ms"] is not None else None,
            "accuracy": f"{figures['accuracy']:.3f}" if figures["accuracy"] is not None else None,
        })  # fmt: skip
        objects.append({"id": artifact_id, "manifest": manifest})
    rows, objects = _by_model(rows, objects)
    columns = [Column("ID", "name"), Column("MODEL", "model"), Column("VERSION", "version"),
               Column("PROFILE", "profile"), Column("FORMAT", "format"), Column("PRECISION", "precision"),
               Column("SIZE", "size"), Column("P95", "latency", wide=True),
               Column("ACCURACY", "accuracy", wide=True)]  # fmt: skip
    return rows, columns, objects


def _lab_row(artifact_id: str, device: str, result: dict) -> tuple[dict, dict]:
    """A lab device's figures for one artifact, as the controller kept them: measured on the device, never
    emulated. Figures are shown only when they are numbers (a report is a device's word, not the store's)."""
    figures = result.get("figures") if isinstance(result.get("figures"), dict) else {}
    number = {k: v for k, v in figures.items() if isinstance(v, int | float) and not isinstance(v, bool)
              and math.isfinite(v)}  # fmt: skip
    if result.get("phase") == "Benchmarked":
        sensors = [f"{number['labPowerW']:.2f} W" if "labPowerW" in number else None,
                   f"{number['labTemperatureC']:.1f} °C" if "labTemperatureC" in number else None]  # fmt: skip
        shown = ", ".join(s for s in sensors if s) or "no power or temperature sensor"
        outcome = f"golden outputs reproduced; {shown}"
    else:
        outcome = f"{result.get('phase')}: {result.get('message') or result.get('reason')}"
    memory = number.get("labMemoryBytes")
    row = {"source": "lab", "where": device, "p50": _ms_cell(number.get("labP50Ms")),
           "p95": _ms_cell(number.get("labP95Ms")), "memory": human_size(int(memory), separator="") if memory else None,
           "result": outcome}  # fmt: skip
    return row, {"name": f"{artifact_id[:12]}.lab.{device}", "artifact": artifact_id, "source": "lab", "device": device,
                 **result}  # fmt: skip


def _benchmarks(store: Path, name: str | None) -> tuple[list[dict], list[Column], list[dict]]:
    """Per artifact, every place its figures come from, side by side: the build machine (latency, memory, the
    task's metric), the target ISA under emulation (outputs against the build machine's; time is emulated, never a
    device figure), and each lab device that benchmarked it (kept in the store by the controller)."""
    from reconciler.artifact.store import ArtifactStore

    rows, objects = [], []
    for artifact_id, manifest in _stored_manifests(store, name):
        benchmark = manifest.get("benchmark") or {}
        chosen = next((v for v in benchmark.get("variants") or [] if v.get("selected")), {})
        measured = chosen.get("measurement") or {}
        host = benchmark.get("host") or {}
        base = {"artifact": artifact_id[:12], "model": manifest.get("model"), "version": manifest.get("version"),
                "profile": manifest.get("profile"), "variant": chosen.get("name")}  # fmt: skip
        metrics = measured.get("metrics") or {}
        metric = next(iter(metrics.items()), None)
        rows.append({**base, "source": "build machine",
                     "where": f"{host.get('machine', '?')}, {host.get('cpus', '?')} cpus" if host else "build machine",
                     "p50": _ms_cell(measured.get("latency_p50_ms")), "p95": _ms_cell(measured.get("latency_p95_ms")),
                     "memory": human_size(measured["peak_memory_bytes"], separator="")
                     if measured.get("peak_memory_bytes") else None,
                     "result": f"{metric[0]} {metric[1]:.4g}" if metric else measured.get("latency_note")})  # fmt: skip
        objects.append({"name": f"{artifact_id[:12]}.build", "artifact": artifact_id, "source": "build machine",
                        "host": host, "measurement": measured})  # fmt: skip
        target = benchmark.get("target")
        if target:
            figures = (target.get("variants") or {}).get(chosen.get("name"), {})
            where = f"{target.get('isa')} {target.get('cpu')} ({target.get('runtime')} {target.get('version')})"
            if target.get("status") != "checked":
                result = f"not run: {target.get('reason')}"
            else:
                difference, took = figures.get("maxDifference", 0), figures.get("emulatedMs", 0)
                result = (f"outputs within {difference:.3g} of the build machine's; "
                          f"{figures.get('rows', '?')} rows in {took:.0f} ms emulated")  # fmt: skip
            rows.append({**base, "source": "emulated", "where": where, "p50": None, "p95": None, "memory": None,
                         "result": result})  # fmt: skip
            objects.append({"name": f"{artifact_id[:12]}.emulated", "artifact": artifact_id, "source": "emulated",
                            "target": target})  # fmt: skip
        for device, result in sorted(ArtifactStore(store).lab_results(artifact_id).items()):
            row, body = _lab_row(artifact_id, device, result)
            rows.append({**base, **row})
            objects.append(body)
    rows, objects = _by_model(rows, objects)
    columns = [Column("ARTIFACT", "artifact"), Column("MODEL", "model"), Column("VERSION", "version"),
               Column("PROFILE", "profile"), Column("SOURCE", "source"), Column("WHERE", "where"),
               Column("P50", "p50"), Column("P95", "p95"), Column("MEMORY", "memory"), Column("RESULT", "result"),
               Column("VARIANT", "variant", wide=True)]  # fmt: skip
    return rows, columns, objects


def _ms_cell(value: float | None) -> str | None:
    return f"{value:.3f}ms" if value is not None else None


def _build_jobs(state_dir: Path) -> list:
    from reconciler.artifact.jobs import JobDirectory

    root = state_dir / "builds"
    jobs = JobDirectory(root).all() if root.is_dir() else []
    return sorted(jobs, key=lambda j: (j.request.model, j.request.version, j.request.profile, j.created))


def _builds(state_dir: Path, name: str | None) -> tuple[list[dict], list[Column], list[dict]]:
    """The controller's build jobs (``STATE_DIR/builds``): queued, running, done, refused, with durations."""
    rows, objects = [], []
    for job in _build_jobs(state_dir):
        if name and not job.key.startswith(name):
            continue
        result, request = job.result, job.request
        rows.append({"name": job.key[:12], "model": request.model, "version": request.version,
                     "profile": request.profile, "state": str(job.state),
                     "artifact": result.artifact[:12] if result and result.artifact else None,
                     "duration": f"{result.seconds:.1f}s" if result else None, "age": age(job.created),
                     "attempts": job.attempts, "commit": request.commit[:12],
                     "report": (result.report if result else "")[:100]})  # fmt: skip
        objects.append({"key": job.key, "request": request.to_json(), "state": str(job.state),
                        "attempts": job.attempts, "created": job.created,
                        "result": result.to_json() if result else None, "log": str(job.directory / "log")})  # fmt: skip
    columns = [Column("NAME", "name"), Column("MODEL", "model"), Column("VERSION", "version"),
               Column("PROFILE", "profile"), Column("STATE", "state"), Column("DURATION", "duration"),
               Column("AGE", "age"), Column("ARTIFACT", "artifact", wide=True),
               Column("ATTEMPTS", "attempts", wide=True), Column("COMMIT", "commit", wide=True),
               Column("REPORT", "report", wide=True)]  # fmt: skip
    return rows, columns, objects


@click.command()
@click.argument(
    "resource", type=click.Choice(["rollout", "rollouts", "ro", "device", "devices", "dev", "training", "trainings"])
)
@click.argument("name")
@_repo_option
@backend_options
def describe(resource: str, name: str, repo: str, backend: str, state_dir: Path, kubeconfig: Path | None,
             context: str | None, namespace: str) -> None:  # fmt: skip
    """Everything about one rollout (steps, gates against thresholds, devices by version, failing devices,
    decisions, events), one device (labels, enrolment, assignments with their last reasons, events) or one
    federated training (rounds, participants, who declined and why)."""
    has_backend = backend == "kubernetes" or (state_dir / "fleet.sqlite").exists()
    if resource.startswith("dev"):
        if not has_backend:
            click.echo(f"error: no local backend in {state_dir} (pass --state-dir, or --backend kubernetes)", err=True)
            sys.exit(1)
        target = _synced(_open_backend(backend, state_dir, kubeconfig, namespace, context))
        view = load_view(repo) if repo != "." or Path(repo, "fleet.yaml").exists() else None
        enrolment = _enrolment(backend, state_dir, kubeconfig, namespace, context) or {}
        text = describe_device(target, view, name, enrolment.get(name))
        if text is None:
            click.echo(f'Error: device "{name}" not found in the {backend} backend', err=True)
            sys.exit(1)
        click.echo(text)
        return
    view = load_view(repo)
    if resource.startswith("training"):
        if name not in view.tree.trainings:
            click.echo(f'Error: training "{name}" not found in {repo}', err=True)
            sys.exit(1)
        click.echo(describe_training(view, name))
        return
    if name not in view.tree.rollouts:
        click.echo(f'Error: rollout "{name}" not found in {repo}', err=True)
        sys.exit(1)
    text = describe_rollout(view, name)
    spec = view.tree.rollouts[name].spec
    jobs = [j for j in _build_jobs(state_dir) if (j.request.model, j.request.version) == (spec.model, spec.version)]
    if jobs:
        text += "\nBuilds:"
        for job in jobs:
            took = f" in {job.result.seconds:.1f}s" if job.result else ""
            report = f": {job.result.report}" if job.result and job.result.report else ""
            text += f"\n  {job.request.profile:<20} {job.state}{took}{report}"
    if has_backend:
        target = _open_backend(backend, state_dir, kubeconfig, namespace, context)
        text += "\n" + _event_lines(_events_or_none(target, ("Rollout", name)))
    click.echo(text)


def describe_device(target, view: FleetView | None, name: str, record) -> str | None:
    """``record``: the device registry's (enrolment, certificate), when there is one. None: no such device."""
    from reconciler.plan import plan

    device = next((d for d in target.devices() if d.name == name), None)
    if device is None:
        return None
    profile = plan(view.tree, [device], {}, {}).profiles.get(name) if view is not None else None
    mine = sorted((model, desired) for (owner, model), desired in target.assignments().items() if owner == name)
    statuses = target.statuses()
    labels = ", ".join(f"{k}={v}" for k, v in sorted(device.labels.items()))
    lines = [
        f"Name:          {name}",
        f"Labels:        {labels or '<none>'}",
        f"Profile:       {profile or ('<unknown: pass --repo>' if view is None else '<none matches>')}",
    ]
    if record is not None:
        lines.append(f"Enrolment:     {record.state(now())}, certificate until {record.not_after or '<none>'}"
                     + (f", revoked at {record.revoked_at}" if record.revoked_at else ""))  # fmt: skip
    else:
        lines.append("Enrolment:     <not in the device registry>")
    lines.append("Assignments:")
    if not mine:
        lines.append("  <none>")
    for model, desired in mine:
        status = statuses.get((name, model))
        seen = age(status.last_seen) if status and status.last_seen else "<never>"
        artifact = desired.artifact[:12] if desired.artifact else "<waiting for its build>"
        lines.append(f"  {model}: {desired.version} (rollout {desired.rollout or '-'}; artifact {artifact})")
        if status is None:
            lines.append("    Phase:     Pending (no report yet)")
            continue
        lines.append(f"    Phase:     {status.phase}" + (f" ({status.reason})" if status.reason else ""))
        lines.append(f"    Installed: {status.installed_version or '<none>'}"
                     + (f", previous {status.previous_version}" if status.previous_version else ""))  # fmt: skip
        if status.message:
            lines.append(f"    Message:   {status.message}")
        lines.append(f"    Last seen: {seen}")
    return "\n".join([*lines, _event_lines(_events_or_none(target, ("Device", name)))])


def _events_or_none(target, about: tuple[str, str]) -> list | None:
    """The events of one object; None when the backend cannot list them (an older install, no RBAC)."""
    from reconciler.cluster import ClusterError

    try:
        return target.events(*about)
    except ClusterError:
        return None


def _event_lines(events: list | None) -> str:
    """kubectl describe's Events section: newest last."""
    if events is None:
        return "Events:        <cannot be read>"
    if not events:
        return "Events:        <none>"
    lines = ["Events:", f"  {'TYPE':<8} {'REASON':<20} {'AGE':<8} {'COUNT':<6} MESSAGE"]
    for event in events[-20:]:
        about = f"[{event.model}] " if event.model else ""
        lines.append(f"  {event.type:<8} {event.reason:<20} {age(event.last_seen):<8} {event.count:<6} "
                     f"{about}{event.message}")  # fmt: skip
    return "\n".join(lines)


def describe_rollout(view: FleetView, name: str) -> str:
    spec, status = view.tree.rollouts[name].spec, view.rollout_status(name)
    current = status.version == spec.version
    state = status.state
    step = state.step if current else 0
    lines = [f"Name:            {name}", f"Model:           {spec.model}", f"Version:         {spec.version}",
             f"Stable version:  {state.stable_version or '<none>'}",
             f"Groups:          {', '.join(spec.groups)}",
             f"Phase:           {status.phase if current else 'Pending'}"
             + (f" ({state.reason})" if current and state.reason else ""),
             f"Message:         {state.message or '<none>'}" if current else "Message:         <none>",
             f"Observed commit: {status.observed_commit or '<none>'}", "Steps:"]  # fmt: skip
    for index, s in enumerate(spec.steps):
        marker = "->" if index == step and current else "  "
        done = index < step if current else False
        pause = ""
        if s.pause is not None:
            pause = f", pause {format_duration(s.pause.duration)}" if s.pause.duration else ", pause until promoted"
        lines.append(f"  {marker} {index + 1}. {s.percent}%{pause}{'  (done)' if done else ''}")
    lines.append("Gates:")
    gates = status.gates if current else ()
    if not gates:
        lines.append("  <none evaluated yet>")
    for gate in gates:
        shown = "n/a" if gate.value is None else f"{gate.value:.4g}"
        lines.append(f"  {gate.name:<26} {shown:>10} / {gate.threshold!s:<8} {gate.verdict}"
                     + (f"  ({gate.message})" if gate.message else ""))  # fmt: skip
    devices = status.devices if current else DeviceCounts()
    lines.append(f"Devices:         {devices.targeted} targeted, {devices.on_new_version} on {spec.version}")
    for version, counts in devices.by_version.items():
        lines.append(f"  {version:<12} " + ", ".join(f"{p}: {n}" for p, n in counts.items()))
    failing = status.failing if current else ()
    if failing:
        failed = sum(n for counts in devices.by_version.values() for p, n in counts.items()
                     if p.split("(")[0] in ("Failed", "RolledBack"))  # fmt: skip
        lines.append("Failing devices:")
        for entry in failing:
            lines.append(f"  {entry.device:<20} {entry.phase:<10} {entry.reason or '-':<22} {entry.message}")
        if failed > len(failing):
            lines.append(f"  ... and {failed - len(failing)} more (edgectl get devices -o wide)")
    lines.append("Decisions:")
    history = status.history if current else ()
    commits = _decision_commits(view, name)
    if not history:
        lines.append("  <none>")
    for entry in history[-10:]:
        lines.append(f"  {entry.time}  step {entry.step + 1}  {entry.decision:<9} {entry.message}")
    if commits:
        lines.append("Commits:")
        lines.extend(f"  {commit}" for commit in commits)
    if status.problems:
        lines.append("Problems:")
        lines.extend(f"  {p}" for p in status.problems[:10])
    return "\n".join(lines)


def _written(status: RolloutStatus | GroupStatus | None) -> dict[str, Any]:
    """A status as its file says, for ``-o json|yaml``; ``{}`` when the controller has not written one."""
    return status.to_json() if status is not None else {}


def _decision_commits(view: FleetView, name: str, limit: int = 5) -> list[str]:
    """Rollback and decision commits that touched this rollout's status file (newest first)."""
    from reconciler.gitops.source import decision_commits

    if view.git_dir is None:
        return []
    starts = [view.commit or "HEAD", *([view.status_commit] if view.status_commit else [])]
    return decision_commits(view.git_dir, starts, name, limit)
