"""The controller: from a commit in the fleet repo to desired state on every device, and back to Git.

Who calls it: ``edgectl run``. Every cycle opens the same way (fetch, check, load) and ends the same way
(status written back, metrics recorded), as Flux's reconcilers do:

1. fetch the branch head; with ``allowed_signers`` set, an unsigned or foreign-signed head is not applied
   and the reason goes to the log and metrics (the previous state stays);
2. load the specs at exactly that commit (``status/`` excluded); spec errors stall the cycle, nothing
   is applied;
3. read where each rollout stands from its status file at the head, plan, diff and write only the changes
   to the backend;
4. render status files and commit them in one commit, none when nothing changed.

Restart-safe by construction: every input is re-read from Git and the backend, every output is written
only when it differs, so a controller killed at any point converges to the same state with no duplicate
status commits. Time is read once per cycle and passed down.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from reconciler.artifact.store import ArtifactStore
from reconciler.cluster import Backend
from reconciler.gitops.source import GitError, GitSource
from reconciler.gitops.status import Author, StatusWriter
from reconciler.plan import plan
from reconciler.signing import TrustPolicy, policy_from_fleet
from reconciler.signing.tuf_repo import TufRepository, online_signers
from reconciler.api import FleetTree, SpecErrors, load_fleet

from .metrics import ControllerMetrics
from .publish import Publisher
from .reconcile import ReconcileResult, reconcile
from .rollouts import initial_state, position, rollback_message, run_rollouts, status_fields
from .status import (
    parse_status,
    ready_counts,
    render_controller,
    render_group,
    render_rollout,
    spec_revision,
)

log = logging.getLogger("edge_reconciler.controller")


@dataclass(frozen=True)
class ControllerConfig:
    repo_url: str
    state_dir: Path
    branch: str = "main"
    interval: float = 60.0
    allowed_signers: Path | None = None
    store: Path | None = None
    releases: Path | None = None
    """Owner-signed release folders to verify and publish (needs ``tuf_keys``)."""
    tuf_keys: Path | None = None
    """The online TUF keys (targets, snapshot, timestamp); the repository is ``state_dir/tuf``."""


@dataclass
class CycleOutcome:
    commit: str | None = None
    applied: int = 0
    deleted: int = 0
    status_commit: str | None = None
    stalled: str | None = None
    """Why nothing was applied (unsigned head, spec errors, Git unreachable)."""
    result: ReconcileResult | None = None
    problems: list[str] = field(default_factory=list)
    refused_releases: dict[str, str] = field(default_factory=dict)
    rollbacks: list[str] = field(default_factory=list)
    """Rollback commits pushed in this cycle (one per aborted rollout)."""
    decisions: dict[str, str] = field(default_factory=dict)


class Controller:
    def __init__(
        self,
        config: ControllerConfig,
        backend: Backend,
        source: GitSource | None = None,
        metrics: ControllerMetrics | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self.clock = clock
        self.backend = backend
        self.source = source or GitSource(config.repo_url, config.state_dir / "git", config.branch)
        self.metrics = metrics or ControllerMetrics()
        self.store = ArtifactStore(config.store) if config.store else None
        self._artifact_keys: dict[str, tuple[str, str, str]] = {}
        self.publisher = None
        if config.releases is not None:
            if config.tuf_keys is None:
                raise ValueError("publishing releases needs the online TUF keys (tuf_keys)")
            repository = TufRepository(config.state_dir / "tuf")
            self.publisher = Publisher(config.releases, repository, online_signers(config.tuf_keys))
        self.wake = threading.Event()
        """Set by the webhook: reconcile now instead of at the end of the interval."""
        self.stop = threading.Event()
        self.cycles_done = 0

    def run(self, is_leader: Callable[[], bool] = lambda: True, standby_wait: float = 1.0) -> None:
        """Reconcile every ``interval`` seconds (or on a webhook) until ``stop`` is set; with leader election,
        only while ``is_leader()`` (a standby checks again every ``standby_wait`` seconds)."""
        standing_by = False
        while not self.stop.is_set():
            if not is_leader():
                if not standing_by:
                    log.info("standing by: another replica is the leader")
                    standing_by = True
                self.stop.wait(standby_wait)
                continue
            standing_by = False
            self.cycle()
            self.cycles_done += 1
            self.wake.wait(self.config.interval)
            self.wake.clear()

    def cycle(self) -> CycleOutcome:
        start = time.perf_counter()
        outcome = CycleOutcome()
        try:
            self._cycle(outcome)
        except GitError as exc:
            outcome.stalled = f"git: {exc}"
            self.metrics.git_errors.inc()
        finally:
            self.metrics.observe(outcome, time.perf_counter() - start)
            log.info(
                "reconciled",
                extra={"commit": outcome.commit, "applied": outcome.applied, "deleted": outcome.deleted,
                       "statusCommit": outcome.status_commit, "stalled": outcome.stalled,
                       "seconds": round(time.perf_counter() - start, 3)},
            )  # fmt: skip
        return outcome

    def _cycle(self, outcome: CycleOutcome) -> None:
        head = outcome.commit = self.source.fetch()
        # Status commits are the controller's own: the commit that matters is the last change by people.
        spec_commit = self.source.last_change_outside(head, "status")
        if self.config.allowed_signers is not None:
            refusal = self.source.verify_commit_signature(spec_commit, self.config.allowed_signers)
            if refusal:
                outcome.stalled = refusal
                self._report(spec_commit, refusal, outcome)
                return
        tree, files = self._load(head, spec_commit, outcome)
        if tree is None:
            self._report(spec_commit, outcome.stalled or "", outcome)
            return
        status_path = tree.fleet.spec.status_path
        now = self.clock()
        revision = spec_revision(files)
        previous = {
            name: parse_status(self.source.read_blob(head, f"{status_path}/rollouts/{name}.yaml"))
            for name in tree.rollouts
        }
        artifacts = self._artifacts()
        if self.publisher is not None:
            published = self.publisher.sync(self._trust_policy(tree, head), now)
            artifacts.update(published.artifacts)
            outcome.refused_releases = published.refused
        # The step machine looks at the plan as it stands, decides, and the decisions shape this cycle's writes.
        self.backend.sync()
        statuses, devices = self.backend.statuses(), self.backend.devices()
        standing = {n: initial_state(tree, n, previous[n], statuses) for n in tree.rollouts if tree.rollouts[n].active}
        before = plan(tree, devices, {n: position(tree, n, s) for n, s in standing.items()}, artifacts)
        cycles = run_rollouts(tree, previous, before, statuses, self._telemetry(), now)
        engine = {name: status_fields(cycle, previous[name], now) for name, cycle in cycles.items()}
        author = Author(tree.fleet.spec.commit_author.name, tree.fleet.spec.commit_author.email)
        writer = StatusWriter(self.source, author)
        for name, cycle in cycles.items():
            if cycle.outcome.decision is not None and cycle.outcome.decision.kind == "Abort":
                path = f"{status_path}/rollouts/{name}.yaml"
                content = render_rollout(
                    tree, name, before, statuses, previous[name], revision, spec_commit, engine[name]
                )
                pushed = writer.commit({path: content}, rollback_message(tree, cycle))
                if pushed is not None:
                    outcome.rollbacks.append(pushed.commit)
        positions = {name: position(tree, name, cycle.outcome.state) for name, cycle in cycles.items()}
        result = outcome.result = reconcile(tree, self.backend, positions, artifacts, sync=False)
        outcome.applied, outcome.deleted = result.applied, result.deleted
        outcome.problems = [f"{p.device}: {p.message}" for p in result.plan.problems]
        outcome.decisions = {n: c.outcome.decision.kind for n, c in cycles.items() if c.outcome.decision}

        statuses = self.backend.statuses()
        devices = self.backend.devices()
        self.metrics.observe_phases(Counter(status.phase for status in statuses.values()))
        rendered: dict[str, bytes | None] = {}
        for name in tree.rollouts:
            rendered[f"{status_path}/rollouts/{name}.yaml"] = render_rollout(
                tree, name, result.plan, statuses, previous[name], revision, spec_commit, engine.get(name)
            )
        for name in tree.groups:
            rendered[f"{status_path}/groups/{name}.yaml"] = render_group(tree, name, devices, result.plan, statuses)
        rendered[f"{status_path}/controller.yaml"] = render_controller(None, spec_commit)
        changed = len(result.changes.apply) + len(result.changes.delete)
        decided = "\n".join(
            f"{n}: {c.outcome.decision.kind.lower()} ({c.outcome.decision.message})"
            for n, c in cycles.items()
            if c.outcome.decision and c.outcome.decision.kind != "Abort"
        )
        counted = (f"{changed} assignment(s) changed at {spec_commit[:12]}" if changed
                   else f"device reports at {spec_commit[:12]}")  # fmt: skip
        # A decision is what a reader of the log looks for: it leads the subject; the count follows.
        message = f"status: {decided.splitlines()[0]}\n\n{counted}\n{decided}" if decided else f"status: {counted}"
        pushed = writer.commit(rendered, message)
        mirror = {name: _mirror(parse_status(rendered[f"{status_path}/rollouts/{name}.yaml"])) for name in cycles}
        self.backend.mirror_rollouts(mirror)
        if pushed is not None:
            outcome.status_commit = pushed.commit
            self.metrics.status_commits.inc()

    def _report(self, spec_commit: str, reason: str, outcome: CycleOutcome) -> None:
        """Say why nothing was applied, in ``status/controller.yaml`` (once: the same reason commits nothing)."""
        files = {"status/controller.yaml": render_controller(reason, spec_commit)}
        pushed = StatusWriter(self.source).commit(files, f"status: stalled at {spec_commit[:12]}")
        if pushed is not None:
            outcome.status_commit = pushed.commit

    def _load(self, head: str, spec_commit: str, outcome: CycleOutcome) -> tuple[FleetTree | None, list]:
        # The status path comes from the Fleet document, which may itself be in error: read without status/
        # first using the default, then honour the configured one.
        files = self.source.files_at(head, ignore=["status"])
        try:
            tree = load_fleet(files)
        except SpecErrors as exc:
            outcome.stalled = f"{len(exc.errors)} spec error(s) at {spec_commit[:12]}; first: {exc.errors[0]}"
            return None, files
        if tree.fleet.spec.status_path != "status":
            files = self.source.files_at(head, ignore=[tree.fleet.spec.status_path])
            tree = load_fleet(files)
        return tree, files

    def _trust_policy(self, tree: FleetTree, head: str) -> TrustPolicy:
        """The Fleet's trust policy, with the key files it names read from the same commit as the specs."""
        trust = tree.fleet.spec.trust
        root = self.config.state_dir / "trust"
        named = [s.public_key for s in trust.release_signers if s.public_key] + [trust.sigstore_trusted_root]
        for path in filter(None, named):
            data = self.source.read_blob(head, path)
            if data is None:
                continue  # the policy then names a missing file: verification refuses and says which
            local = root / path
            if not local.exists() or local.read_bytes() != data:
                local.parent.mkdir(parents=True, exist_ok=True)
                tmp = local.with_name(f".{local.name}.tmp")
                tmp.write_bytes(data)
                tmp.replace(local)
        return policy_from_fleet(tree.fleet, root)

    def _telemetry(self, limit: int = 200_000) -> list[dict]:
        """Summaries devices uploaded (the newest ``limit``), for the rollout gates."""
        path = self.config.state_dir / "telemetry" / "received.jsonl"
        try:
            lines = path.read_text().splitlines()[-limit:]
        except OSError:
            return []
        found = []
        for line in lines:
            with contextlib.suppress(ValueError):
                found.append(json.loads(line))
        return found

    def _artifacts(self) -> dict[tuple[str, str, str], str]:
        if self.store is None:
            return {}
        found = {}
        for artifact_id in self.store.artifact_ids():
            key = self._artifact_keys.get(artifact_id)
            if key is None:  # an artifact never changes: read its manifest once, not every cycle
                manifest = self.store.read_manifest(artifact_id)
                key = self._artifact_keys[artifact_id] = (manifest["model"], manifest["version"], manifest["profile"])
            found[key] = artifact_id
        return found


def _mirror(status: dict) -> dict:
    """The part of a rollout's status worth showing in kubectl (counts, phase, gates, last decision)."""
    healthy, targeted = ready_counts(status)
    body = {key: status.get(key) for key in ("model", "version", "phase", "currentStep", "stableVersion", "reason",
                                             "message", "observedCommit")}  # fmt: skip
    body["ready"] = f"{healthy}/{targeted}"
    body["gates"] = status.get("gates", [])
    body["lastDecision"] = status.get("lastDecision")
    return body
