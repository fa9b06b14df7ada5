"""Federated trainings: a merged FederatedTraining runs on the SuperLink; its result comes back as a branch.

Who calls it: the controller, every cycle (:meth:`Trainings.call` before the plan is applied, :meth:`Trainings.step`
with the status files), and the device API when a called device joins (:meth:`Trainings.admit`).

One training, one Flower run: submitted when the document is merged and the SuperLink is up, followed while it
runs (the devices that joined, from their reports; the rounds, from the run's folder), and when it ends with every
round aggregated, the new version is written: the base source with the trained head, in the artifact store and
on a branch ``training/NAME`` from the fleet branch's head, with the Model's new version and its lineage (the
training, rounds, participants, rows, metrics). A person opens the pull request; merged, the version is built,
signed, lab-tested and rolled out like any other, and the training's status says Merged. Nothing reaches a device
through the training itself.

A training's progress is kept in the state directory, so a restarted controller neither submits a finished
training again nor pushes its branch twice. The SuperLink keeps its runs in memory: a run lost with a restart is
submitted again from its first round.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import ssl
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from reconciler.api import FleetTree
from reconciler.api.status import StatusPaths, TrainingPhase, TrainingRound, TrainingStatus
from reconciler.api.training import FederatedTraining
from reconciler.artifact.store import ArtifactStore
from reconciler.cluster import AssignmentStatus
from reconciler.durable import write_atomic
from reconciler.federated import runs
from reconciler.federated.superlink import SuperLink
from reconciler.gitops.edit import add_model_version
from reconciler.gitops.source import GitSource, PermanentGitError
from reconciler.gitops.status import Author, StatusWriter
from reconciler.plan import Plan
from reconciler.plan.desired import training_calls

log = logging.getLogger("edge_reconciler.controller")

STATE_FILE = "trainings.json"
FOLDER = "trainings"


class Trainings:
    def __init__(self, source: GitSource, state_dir: Path, superlink: SuperLink | None = None,
                 store: ArtifactStore | None = None, signing_key: Path | None = None) -> None:  # fmt: skip
        """``superlink``: started on the first training, on loopback (None: trainings wait, saying why). Devices
        reach its Fleet API through the device API (:meth:`upstream`), never its Control API."""
        self.source, self.state_dir, self.superlink, self.store = source, Path(state_dir), superlink, store
        self.signing_key = signing_key
        self.path = self.state_dir / STATE_FILE
        self.state: dict[str, dict[str, Any]] = self._load()
        self._tree: FleetTree | None = None
        self._context: ssl.SSLContext | None = None

    # --- the plan: who is called -----------------------------------------------------------------------------

    def call(self, tree: FleetTree, plan: Plan, labels: Mapping[str, Mapping[str, str]]) -> Plan:
        """``plan`` with every running training's call in the assignments of the devices it may use."""
        self._tree = tree
        running = {name: "" for name, state in self.state.items() if state.get("phase") == TrainingPhase.RUNNING}
        if not running:
            return plan
        calls = training_calls(tree, plan.desired, labels, running)
        for key, call in calls.items():
            plan.desired[key] = replace(plan.desired[key], training=call)
        return plan

    def admit(self, assignments: Mapping[str, Any], device: str, name: str, public_key: Any) -> bool | str:
        """The device API's join: True once the device's key is registered; False when none of its assignments
        calls it to ``name``; a reason when the SuperLink cannot take it now."""
        called = any(spec.training is not None and spec.training.name == name and spec.device == device
                     for spec, _ in assignments.values())  # fmt: skip
        if not called:
            return False
        if self.superlink is None or not self.superlink.alive():
            return "the SuperLink is not running"
        try:
            self.superlink.register(device, public_key)
        except Exception as exc:  # the SuperLink's HTTP client raises its own errors: the device tries again
            return f"the SuperLink did not take the key: {type(exc).__name__}: {exc}"
        log.info("device joined training", extra={"training": name, "device": device})
        return True

    def upstream(self) -> tuple[str, ssl.SSLContext] | None:
        """Where the device API passes devices' Fleet calls: the running SuperLink's loopback address."""
        address = self.upstream_address()
        if address is None:
            return None
        if self._context is None:
            self._context = ssl.create_default_context(cafile=address[1])
        return address[0], self._context

    def upstream_address(self) -> tuple[str, str] | None:
        """:meth:`upstream` as the device API's other processes take it: the address and the CA's file."""
        link = self.superlink
        if link is None or not link.alive():
            return None
        return f"https://127.0.0.1:{link.port}", str(link.ca_file)

    # --- each cycle ------------------------------------------------------------------------------------------

    def step(self, tree: FleetTree, head: str, now: datetime, statuses: Mapping[tuple[str, str], AssignmentStatus],
             paths: StatusPaths) -> dict[str, bytes | None]:  # fmt: skip
        """Move every training on; its status file (None for a training whose document is gone)."""
        files: dict[str, bytes | None] = {}
        for name, training in sorted(tree.trainings.items()):
            try:
                self._advance(tree, training, head, now)
            except Exception as exc:  # a training is never worth a cycle: it says what went wrong and waits
                log.warning("training not advanced", extra={"training": name, "error": f"{type(exc).__name__}: "
                                                            f"{exc}"})  # fmt: skip
                self.state.setdefault(name, {})["message"] = f"{type(exc).__name__}: {exc}"
            files[paths.training(name)] = self.status(training, statuses).to_yaml()
        for name in sorted(set(self.state) - set(tree.trainings)):
            self._stop_run(self.state.pop(name))
            files[paths.training(name)] = None
        if self.superlink is not None and self.superlink.alive() and not self._running():
            self.superlink.stop()  # nothing to train: no listening port left open
        self._save()
        return files

    def status(self, training: FederatedTraining, statuses: Mapping[tuple[str, str], AssignmentStatus]
               ) -> TrainingStatus:  # fmt: skip
        state, spec = self.state.get(training.name, {}), training.spec
        joined, declined = dict(state.get("joined") or {}), dict(state.get("declined") or {})
        running = state.get("phase") == TrainingPhase.RUNNING
        for (device, model), status in statuses.items():
            if model != spec.model or status.extra.get("training") != training.name:
                continue
            if running and status.extra.get("trainingState") == "Joined":
                joined.setdefault(device, 0)
            elif status.extra.get("trainingState") == "Declined" and device not in joined:
                declined[device] = str(status.extra.get("trainingMessage") or "declined")
        rounds = state.get("rounds")
        if rounds is None and state.get("folder"):
            rounds = (_read_json(Path(state["folder"]) / runs.ROUNDS) or {}).get("rounds") or []
        return TrainingStatus(
            training.name, TrainingPhase(state.get("phase") or TrainingPhase.PENDING), str(state.get("message") or ""),
            spec.model, spec.base_version, spec.version, spec.secure_aggregation.enabled, state.get("started"),
            state.get("finished"), tuple(sorted(joined)), declined,
            tuple(TrainingRound.from_json(r) for r in rounds or []), state.get("branch"), state.get("artifact"),
        )  # fmt: skip

    def close(self) -> None:
        if self.superlink is not None:
            self.superlink.stop()

    # --- one training ----------------------------------------------------------------------------------------

    def _advance(self, tree: FleetTree, training: FederatedTraining, head: str, now: datetime) -> None:
        name, spec = training.name, training.spec
        state = self.state.setdefault(name, {"phase": TrainingPhase.PENDING})
        model = tree.models.get(spec.model)
        if model is not None and model.version(spec.version) is not None:
            if state.get("phase") != TrainingPhase.MERGED:
                self._stop_run(state)
                state.update(phase=TrainingPhase.MERGED, message=f"model {spec.model} has version {spec.version}")
            return
        phase = state.get("phase")
        if phase in (TrainingPhase.SUCCEEDED, TrainingPhase.FAILED):
            return
        if self.superlink is None:
            state["message"] = "this controller runs no SuperLink (edgectl run --superlink HOST:PORT)"
            return
        if not self.superlink.alive():
            self.superlink.start()
            if phase == TrainingPhase.RUNNING:  # its run went with the old SuperLink: run it again
                phase = state["phase"] = TrainingPhase.PENDING
        if phase == TrainingPhase.PENDING:
            busy = next((n for n, other in sorted(self.state.items()) if n != name
                         and other.get("phase") == TrainingPhase.RUNNING), None)  # fmt: skip
            if busy is not None:  # one SuperLink, one pool of devices: trainings take turns
                state["message"] = f"waiting for training {busy} to finish (one training runs at a time)"
                return
            self._submit(training, head, now, state)
            return
        started = datetime.fromisoformat(state["started"])
        run = self.superlink.state(int(state["run"]))
        if run.status == "unknown":
            state["phase"] = TrainingPhase.PENDING
            return
        if not run.finished:
            if now - started > spec.timeout:
                self._stop_run(state)
                self._finish(state, now, TrainingPhase.FAILED, f"no result after {spec.timeout}: stopped")
            return
        folder = Path(state["folder"])
        result = runs.result(folder)
        saved = folder / "serverapp.log"
        logs = saved.read_text() if saved.exists() else self._logs(int(state["run"]))  # Flower gives it out once
        saved.write_text(logs)
        if result is None:
            self._finish(state, now, TrainingPhase.FAILED, f"the run ended ({run.sub_status}) without a result: "
                         f"{_last_line(logs) or run.details}")  # fmt: skip
            return
        state.update(rounds=result.get("rounds") or [], joined=result.get("joined") or {},
                     declined=result.get("declined") or {}, final=result.get("final") or {})  # fmt: skip
        if result.get("phase") != "Succeeded":
            self._finish(state, now, TrainingPhase.FAILED, str(result.get("message") or "the training failed"))
            return
        try:
            self._propose(tree, training, head, folder, state, now)
        except (ValueError, PermanentGitError) as exc:  # nothing a next cycle would change: said, and given up
            self._finish(state, now, TrainingPhase.FAILED, f"the result cannot be proposed: {exc}")

    def _submit(self, training: FederatedTraining, head: str, now: datetime, state: dict[str, Any]) -> None:
        import onnx

        spec = training.spec
        base = self._base_model(training, head)
        folder = self.state_dir / FOLDER / training.name / now.strftime("%Y%m%dT%H%M%S")
        config = runs.prepare(spec, onnx.load_from_string(base), folder)
        assert self.superlink is not None
        run = self.superlink.submit(config)
        state.update(phase=TrainingPhase.RUNNING, run=run, folder=str(folder), message="",
                     started=state.get("started") or now.isoformat(timespec="seconds"),
                     base_commit=head)  # fmt: skip
        log.info("training started", extra={"training": training.name, "run": run})

    def _base_model(self, training: FederatedTraining, head: str) -> bytes:
        spec = training.spec
        tree = self._tree
        model = tree.models[spec.model] if tree else None
        version = model.version(spec.base_version) if model else None
        if version is None or not version.source.is_repo_path:
            raise ValueError(f"the base version's source must be a file in the fleet repo "
                             f"({version.source.uri if version else 'no such version'})")  # fmt: skip
        data = self.source.read_blob(head, version.source.uri)
        if data is None:
            raise ValueError(f"{version.source.uri} is not in the fleet repo at {head[:12]}")
        digest = hashlib.sha256(data).hexdigest()
        if digest != version.source.sha256:
            raise ValueError(f"{version.source.uri} has sha256 {digest}, the Model pins {version.source.sha256}")
        return data

    def _propose(self, tree: FleetTree, training: FederatedTraining, head: str, folder: Path, state: dict[str, Any],
                 now: datetime) -> None:  # fmt: skip
        import onnx

        spec = training.spec
        model = tree.models[spec.model]
        base = model.version(spec.base_version)
        assert base is not None
        trained = runs.trained_model(onnx.load_from_string(self._base_model(training, head)), folder)
        if not runs.finite(trained):
            raise ValueError("the aggregated head has values that are not finite (a device sent NaN or infinity)")
        data = trained.SerializeToString()
        digest = hashlib.sha256(data).hexdigest()
        if self.store is not None:
            self.store.put_bytes(data)
        path = new_source_path(base.source.uri, spec.base_version, spec.version)
        rounds = state.get("rounds") or []
        last = rounds[-1] if rounds else {}
        entry = {"version": spec.version, "source": {"uri": path, "sha256": digest},
                 "lineage": lineage(training, state, head)}  # fmt: skip
        located = tree.sources[("Model", spec.model)]
        text = self.source.read_blob(head, located.path)
        if text is None:
            raise ValueError(f"{located.path} is not in the fleet repo at {head[:12]}")
        edited = add_model_version(text.decode(), located.path, spec.model, entry)
        author = Author(tree.fleet.spec.commit_author.name, tree.fleet.spec.commit_author.email)
        branch = f"training/{training.name}"
        writer = StatusWriter(self.source, author, signing_key=self.signing_key, branch=branch, start_from=head)
        message = (f"training: {spec.model} {spec.version} from {spec.base_version} ({training.name})\n\n"
                   f"Federated training {training.name}: {len(rounds)} round(s), {len(state.get('joined') or {})} "
                   f"device(s), {sum(int(r.get('samples', 0)) for r in rounds[:1])} labeled rows in the first round; "
                   f"devices' accuracy of the last round's head {last.get('accuracy', 0):.3f}.\n"
                   f"Open a pull request from this branch: merged, {spec.version} is built, signed, lab-tested and "
                   "rolled out like any version.")  # fmt: skip
        writer.commit({path: data, located.path: edited.encode()}, message)
        state.update(branch=branch, artifact=digest)
        self._finish(state, now, TrainingPhase.SUCCEEDED, f"{spec.version} proposed on branch {branch}")
        log.info("training proposed a version", extra={"training": training.name, "branch": branch})

    def _finish(self, state: dict[str, Any], now: datetime, phase: TrainingPhase, message: str) -> None:
        state.update(phase=phase, message=message, finished=now.isoformat(timespec="seconds"))

    def _stop_run(self, state: dict[str, Any]) -> None:
        if state.get("phase") == TrainingPhase.RUNNING and self.superlink is not None and self.superlink.alive():
            try:
                self.superlink.stop_run(int(state["run"]))
            except Exception as exc:  # the run may have ended meanwhile
                log.info("run not stopped", extra={"error": f"{type(exc).__name__}: {exc}"})

    def _logs(self, run: int) -> str:
        try:
            assert self.superlink is not None
            return self.superlink.logs(run)
        except Exception as exc:
            return f"(no log: {type(exc).__name__}: {exc})"

    def _running(self) -> bool:
        return any(s.get("phase") in (TrainingPhase.RUNNING, TrainingPhase.PENDING) for s in self.state.values())

    def _load(self) -> dict[str, dict[str, Any]]:
        found = _read_json(self.path)
        return {str(k): dict(v) for k, v in found.items() if isinstance(v, dict)} if isinstance(found, dict) else {}

    def _save(self) -> None:
        write_atomic(self.path, json.dumps(self.state, indent=1, sort_keys=True, default=str).encode())


def superlink_for(config: Any) -> SuperLink | None:
    """The SuperLink a ControllerConfig asks for (``superlink``: its loopback port), with a certificate from the
    fleet CA; None without one."""
    if not config.superlink:
        return None
    from datetime import UTC, timedelta

    from reconciler.deviceapi.ca import FleetCA

    port = int(str(config.superlink).rpartition(":")[2])
    ca = FleetCA.load_or_create(config.ca_dir or config.state_dir / "ca")
    folder = config.state_dir / "superlink"
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = ca.issue_server(["127.0.0.1", "localhost"], timedelta(days=365), datetime.now(UTC))
    write_atomic(folder / "ca.crt", ca.certificate_pem.encode())
    write_atomic(folder / "tls.crt", cert)
    write_atomic(folder / "tls.key", key, mode=0o600)
    return SuperLink(folder / "process", "127.0.0.1", port, folder / "ca.crt", folder / "tls.crt", folder / "tls.key")


def new_source_path(base: str, base_version: str, version: str) -> str:
    """Where the new version's source goes: beside the base's, in a folder named for the version when the base
    lives in one named for its own (``models/x/1.0.0/model.onnx`` -> ``models/x/1.1.0/model.onnx``)."""
    folder, leaf = posixpath.split(base)
    if posixpath.basename(folder) == base_version:
        return posixpath.join(posixpath.dirname(folder), version, leaf)
    stem, extension = posixpath.splitext(leaf)
    return posixpath.join(folder, f"{stem}-{version}{extension}")


def lineage(training: FederatedTraining, state: Mapping[str, Any], head: str) -> dict[str, Any]:
    """The new version's lineage: the training, where it started, who took part with how many rows, and its
    figures: the proposed head's accuracy as the devices measured it on their own rows (weighted by rows; the last
    round's incoming head when no final measure came back)."""
    rounds = state.get("rounds") or []
    joined = state.get("joined") or {}
    final = state.get("final") or {}
    metrics: dict[str, float] = {}
    if final.get("accuracy") is not None:
        metrics["federatedAccuracy"] = round(float(final["accuracy"]), 5)
    elif rounds and rounds[-1].get("accuracy") is not None:
        metrics["federatedAccuracy"] = round(float(rounds[-1]["accuracy"]), 5)
    if rounds and rounds[-1].get("loss") is not None:
        metrics["federatedLoss"] = round(float(rounds[-1]["loss"]), 5)
    return {
        "gitCommit": head[:12],
        "dataset": f"federated:{training.name}",
        "metrics": metrics,
        "federated": {
            "training": training.name,
            "baseVersion": training.spec.base_version,
            "rounds": len(rounds),
            "participants": len(joined),
            "samples": int(sum(int(v) for v in joined.values())),
            "secureAggregation": training.spec.secure_aggregation.enabled,
        },
    }


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][-300:] if lines else ""
