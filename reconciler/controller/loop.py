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

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from reconciler import release
from reconciler.api import FleetTree, SpecErrors
from reconciler.api.fleet import Intervals
from reconciler.api.status import (
    ControllerStatus,
    DecisionKind,
    FleetAtCommit,
    FleetStatus,
    Reason,
    RolloutPhase,
    RolloutStatus,
    StatusPaths,
    TamperRecord,
    load_with_status,
)
from reconciler.artifact.jobs import JobState
from reconciler.artifact.store import ArtifactStore
from reconciler.cluster import Backend, Event, StoredRollout
from reconciler.durable import write_atomic
from reconciler.errors import PermanentError, TemporaryError
from reconciler.faults import FaultPoints
from reconciler.gitops.source import GitSource
from reconciler.gitops.status import Author, StatusWriter
from reconciler.plan import Desired, Plan, targeting
from reconciler.rollout.admission import admit, in_flight, rate_allowance
from reconciler.rollout.engine import Decision, max_concurrent
from reconciler.signing import TrustPolicy, policy_from_fleet
from reconciler.signing.tuf_repo import TufRepository, online_signers
from reconciler.telemetry.store import TELEMETRY_FILE, TelemetryStore

from .actions import ActionKind, OperatorActions, refusal
from .builds import Builds, BuildsView, LocalRunner, Runner
from .dashboard import RolloutRow, Snapshot, commit_base
from .drift import DriftWatch
from .metrics import ControllerMetrics
from .notify import Notice, Notifier
from .publish import Publisher
from .reconcile import ReconcileResult, apply_plan
from .retraining import RetrainingRequests
from .rollouts import (
    RolloutCycle,
    initial_state,
    is_abort,
    manual_actions,
    past_waiting,
    position,
    rollback_message,
    run_rollouts,
)
from .status import group_status, rollout_status, specs_by_device
from .training import Trainings, superlink_for

log = logging.getLogger("edge_reconciler.controller")
ACCEPT_REWRITE = "edgereconciler.io/accept-rewrite"
"""Fleet annotation: the last applied commit (12 hex digits or more) whose loss from the branch a person accepts."""
FAULTS = FaultPoints("EDGE_CONTROLLER", ("after-save", "after-apply", "after-rollback-push", "after-status-push"))
"""Where a fault test may kill a cycle (``EDGE_CONTROLLER_CRASH_AT``): between each of its writes."""
SUSPENDED = "suspended"
"""In the state directory while reconciling is suspended (who, when, why)."""
PAGE_FAILING = 100
"""Failing devices listed on the page (the metrics count them all)."""
_HELD = (Reason.GATE_FAILED, Reason.HELD_AFTER_GATE_FAILED)
"""Reasons of a decision that deserves a Warning although it is no abort."""


@dataclass
class _Request:
    """An operator API action waiting for the cycle that takes it."""

    rollout: str
    kind: ActionKind
    by: str
    reason: str
    done: threading.Event = field(default_factory=threading.Event)
    outcome: str = ""


@dataclass(frozen=True)
class ActionResult:
    """The operator API's answer: an HTTP status and a sentence."""

    status: int
    message: str


class UntrustedStatusError(Exception):
    """A status file a fresh controller would take its state from was not written by the controller."""


@dataclass(frozen=True)
class ControllerConfig:
    repo_url: str
    state_dir: Path
    branch: str = "main"
    interval: float | None = None
    """Seconds between cycles and between fetches; None: the Fleet's ``intervals.reconcile`` and ``gitPoll``."""
    allowed_signers: Path | None = None
    store: Path | None = None
    releases: Path | None = None
    """Owner-signed release folders to verify and publish (needs ``tuf_keys``)."""
    tuf_keys: Path | None = None
    """The online TUF keys (targets, snapshot, timestamp); the repository is ``state_dir/tuf``."""
    signing_key: Path | None = None
    """The controller's SSH key: it signs every status commit, and with ``allowed_signers`` a status commit must
    then be signed like any other (else status-only commits pass unsigned: they cannot move a device)."""
    accept_rewrite: bool = False
    """Go on after the branch was rewritten past the last applied commit (once; verified as on a first run)."""
    telemetry_retention: timedelta = timedelta(days=30)
    """How long device telemetry is kept (hourly for two days, then daily)."""
    telemetry_store: Path | None = None
    """The telemetry store's file, shared with the device API replicas; None: ``state_dir/telemetry.sqlite``."""
    build_workers: int = 1
    """Builds run at once when the Fleet's trust says ``release: builder`` (local workers or Kubernetes Jobs)."""
    builder_key: Path | None = None
    """The builder's signing key as the workers find it; the controller passes the path on and never reads it."""
    gc_interval: timedelta = timedelta(hours=1)
    """Between garbage collections of the store (the first one an interval after start); zero: never."""
    gc_keep_versions: int = 3
    """Versions of each model kept in the store beyond what devices run or are assigned (the newest in its spec):
    what a person may roll back to without a rebuild."""
    superlink: str | None = None
    """The loopback port ([127.0.0.1:]PORT) of the SuperLink of federated trainings (None: trainings wait, saying
    why). Devices reach its Fleet API through the device API."""
    ca_dir: Path | None = None
    """The fleet CA (the device API's): the SuperLink's certificate comes from it, devices already trust it."""

    @property
    def builds_dir(self) -> Path:
        """Build jobs, in the state directory: on the volume a Kubernetes build Job mounts too."""
        return self.state_dir / "builds"

    @property
    def telemetry_path(self) -> Path:
        return self.telemetry_store or self.state_dir / TELEMETRY_FILE


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
    retry_after: float | None = None
    """Set when a temporary error ended the cycle: try again this soon rather than after the interval."""
    status_deferred: bool = False
    """Only device counts changed in a woken cycle: their status commit waits for the next due cycle."""
    builds: BuildsView | None = None
    """The build jobs of this cycle's rollouts, when the controller builds."""


class Controller:
    def __init__(
        self,
        config: ControllerConfig,
        backend: Backend,
        source: GitSource | None = None,
        metrics: ControllerMetrics | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        telemetry: TelemetryStore | None = None,
        build_runner: Runner | None = None,
    ) -> None:
        """``telemetry``: where the device API files summaries (default: the state directory's store).
        ``build_runner``: who runs build workers (default: child processes of this controller)."""
        self.config = config
        self.clock = clock
        self.backend = backend
        self.source = source or GitSource(config.repo_url, config.state_dir / "git", config.branch)
        self.metrics = metrics or ControllerMetrics()
        self.store = ArtifactStore(config.store) if config.store else None
        self.telemetry = telemetry or TelemetryStore(config.telemetry_path, config.telemetry_retention)
        self.drift = DriftWatch(self.store.read_manifest if self.store else None)
        self.retraining = RetrainingRequests(self.source, config.state_dir, config.signing_key)
        self.trainings = Trainings(self.source, config.state_dir, superlink_for(config), self.store,
                                   config.signing_key)  # fmt: skip
        self._artifact_keys: dict[str, tuple[str, str, str]] = {}
        self._artifact_facts: dict[str, tuple[str, float]] = {}
        """Artifact id -> (its recipe as built, when it was stored): what chooses among builds of one key."""
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
        self._accept_rewrite = config.accept_rewrite
        self._author = Author()
        """Who status commits are by (the Fleet's ``commitAuthor``, as last loaded): stall reports too."""
        self._paths = StatusPaths()
        """Where the Fleet keeps status (``spec.statusPath``), as last loaded."""
        self._status_branch = config.branch
        """Where status commits go (``spec.statusBranch``), as last loaded."""
        self._status_head: str | None = None
        self._compacted: float | None = None
        self._compact_more = False
        self.snapshot = Snapshot()
        """What the operator port's page shows: the fleet as the last cycle left it."""
        self._page: tuple = ("", [], {}, [])
        self.notifier: Notifier | None = None
        """Made when the Fleet first names a notification webhook."""
        self._last_tree: FleetTree | None = None
        """The fleet as the last cycle loaded it: what operator requests are checked against."""
        self._requests: list[_Request] = []
        self._requests_lock = threading.Lock()
        self._taken: list[_Request] = []
        self._build_runner = build_runner
        self._said_no_store = False
        self._collected: datetime | None = None
        """When the store was last collected (the first cycle counts as one: nothing goes at start)."""
        self.builds: Builds | None = None
        """Made when the Fleet first says ``trust.release: builder`` (and the controller has a store)."""
        self._failures_seen: dict[tuple[str, str], tuple] | None = None
        """Each failing device's report as last seen (None before the first cycle): a change is an event."""

    def run(self, is_leader: Callable[[], bool] = lambda: True, standby_wait: float = 1.0) -> None:
        """Reconcile until ``stop`` is set: a cycle every ``intervals.reconcile`` of the Fleet, fetching Git every
        ``intervals.gitPoll`` (``edgectl run --interval`` sets both), and at once on a webhook or an operator's
        call; with leader election, only while ``is_leader()`` (a standby checks every ``standby_wait`` s)."""
        standing_by, fetched, fetch_now, committed = False, None, True, None
        while not self.stop.is_set():
            if not is_leader():
                if not standing_by:
                    log.info("standing by: another replica is the leader")
                    standing_by = True
                self.stop.wait(standby_wait)
                continue
            standing_by = False
            poll, every = self._intervals()
            fetch = fetch_now or fetched is None or time.monotonic() - fetched >= poll
            # A woken cycle (webhook, operator) within the interval commits status only for a decision.
            due = committed is None or time.monotonic() - committed >= every
            outcome = self.cycle(fetch=fetch, status_due=due)
            if fetch:
                fetched = time.monotonic()
            if outcome.status_commit is not None:
                committed = time.monotonic()
            self.cycles_done += 1
            fetch_now = self.wake.wait(min(every, outcome.retry_after or every))
            self.wake.clear()

    def _intervals(self) -> tuple[float, float]:
        """(seconds between fetches, seconds between cycles): ``--interval`` for both when given, else the
        Fleet's ``intervals.gitPoll`` and ``intervals.reconcile`` as last loaded."""
        if self.config.interval is not None:
            return self.config.interval, self.config.interval
        intervals = self._last_tree.fleet.spec.intervals if self._last_tree is not None else Intervals()
        return intervals.git_poll.total_seconds(), intervals.reconcile.total_seconds()

    def cycle(self, fetch: bool = True, status_due: bool = True) -> CycleOutcome:
        """One reconcile; ``fetch`` False works from the commit fetched last (the Fleet's gitPoll not due);
        ``status_due`` False: a status commit of device counts alone waits for the next due cycle (decisions,
        rollbacks, assignment changes and restored files are committed at once)."""
        start = time.perf_counter()
        outcome = CycleOutcome()
        self._cycles_of_last: dict = {}
        self._actions_saved = False
        try:
            held = self.suspended()
            if held is not None:  # a person stopped reconciling: nothing fetched, applied or committed
                outcome.stalled = (
                    f"Suspended by {held.get('by', '?')} at {held.get('at', '?')}: {held.get('reason', '')}"
                )
            else:
                self._cycle(outcome, fetch, status_due)
        except TemporaryError as exc:  # Git or the cluster is unreachable: the next cycle tries again
            outcome.stalled = str(exc)
            outcome.retry_after = exc.retry_after
            self.metrics.git_errors.inc()
        except PermanentError as exc:  # needs a person (credentials, a refused push): say so, keep running
            outcome.stalled = str(exc)
            self.metrics.git_errors.inc()
        except Exception as exc:  # a defect, or a library's surprise: logged with its trace, and the loop goes on
            log.exception("cycle failed unexpectedly")
            outcome.stalled = f"unexpected {type(exc).__name__}: {exc}"
        finally:
            self._answer_requests(self._cycles_of_last, outcome)
            self._compact_telemetry()
            fleet, rows, phases, failing = self._page
            self.snapshot = Snapshot(fleet, outcome.commit, outcome.stalled, self.cycles_done + 1,
                                     self.clock().isoformat(timespec="seconds"), rows, phases, failing,
                                     commit_base(self.config.repo_url))  # fmt: skip
            self.metrics.observe(outcome, time.perf_counter() - start)
            log.info(
                "reconciled",
                extra={"commit": outcome.commit, "applied": outcome.applied, "deleted": outcome.deleted,
                       "statusCommit": outcome.status_commit, "stalled": outcome.stalled,
                       "seconds": round(time.perf_counter() - start, 3)},
            )  # fmt: skip
        return outcome

    def _cycle(self, outcome: CycleOutcome, fetch: bool = True, status_due: bool = True) -> None:
        head = outcome.commit = self.source.fetch() if fetch else self.source.head()
        # Status commits are the controller's own: the commit that matters is the last change by people. The
        # status path is the Fleet's, known after loading: start from the last one seen and check again below.
        spec_commit = self.source.last_change_outside(head, self._paths.root)
        fleet = self._load(head, spec_commit, outcome)
        if fleet is not None:
            author = fleet.tree.fleet.spec.commit_author
            self._author = Author(author.name, author.email)
            if fleet.status.paths != self._paths:  # the Fleet moved its status path: look again with the new one
                self._paths = fleet.status.paths
                self._cycle(outcome, fetch=False, status_due=status_due)
                return
        if fleet is not None:
            fleet = self._with_status_branch(fleet, head, fetch)
        applied = self.source.applied()
        if applied is not None and not self.source.contains(head, applied):
            if not self._rewrite_accepted(fleet, applied):
                outcome.stalled = (
                    f"HistoryRewritten: the branch no longer contains {applied[:12]}, the last commit applied; the "
                    f"devices stay where they are until a person accepts it (edgectl run --accept-rewrite, or the "
                    f"Fleet annotation {ACCEPT_REWRITE}: {applied[:12]})"
                )  # fmt: skip
                self._report(spec_commit, outcome.stalled, outcome)
                return
            log.warning("history rewrite accepted", extra={"lastApplied": applied, "head": head})
            applied = None  # verified from here as on a first run
        if self.config.allowed_signers is not None:
            refusal = self._verify(head, spec_commit, applied, fleet)
            if refusal:
                outcome.stalled = refusal
                self._report(spec_commit, refusal, outcome)
                return
        if fleet is None:
            self._report(spec_commit, outcome.stalled or "", outcome)
            return
        tree, paths = fleet.tree, fleet.status.paths
        self._last_tree = tree
        now = self.clock()
        stored = self.backend.rollouts()
        try:
            previous, tampered = self._standing(tree, fleet, stored, self._status_head)
        except UntrustedStatusError as exc:
            outcome.stalled = str(exc)
            self._report(spec_commit, outcome.stalled, outcome)
            return
        artifacts = self._artifacts(tree)
        owner_released: set[tuple[str, str, str]] = set()  # published as the owner signed it, never built over
        if self.publisher is not None:
            unpinned = self.pinned_root_refusal(tree, head)
            if unpinned is not None:  # agents pinned to the Fleet's root would refuse all of it: publish nothing
                outcome.refused_releases = {"trustRoot": unpinned}
            else:
                published = self.publisher.sync(self._trust_policy(tree, head), now)
                artifacts.update(published.artifacts)
                outcome.refused_releases = published.refused
                builder = tree.fleet.spec.trust.builder
                owner_released = {k for k, s in published.signers.items() if builder is None or s != builder.name}
        # One targeting per cycle: the plan before the step machine's decisions (what it observes) and the plan
        # after them (what is applied) differ only in where rollouts stand.
        self.backend.sync()
        statuses, devices = self.backend.statuses(), self.backend.devices()
        targets = targeting(tree, devices)
        standing = {n: initial_state(tree, n, previous[n], statuses) for n in tree.rollouts if tree.rollouts[n].active}
        builds = self._sync_builds(tree, head, now, outcome, {n: s.stable_version for n, s in standing.items()},
                                   owner_released)  # fmt: skip
        for key in builds.wanted if builds is not None else ():
            # Handed out once built from the current recipe (and, with a publisher, published), never an older one.
            built = builds.artifacts.get(key)
            if self.publisher is None and built is not None:
                artifacts[key] = built
            elif artifacts.get(key) != built:
                artifacts.pop(key, None)
        before_positions = {n: position(tree, n, s) for n, s in standing.items()}
        before = targets.at(before_positions, artifacts)
        tracks = self.store is not None or self.publisher is not None  # it knows which builds exist
        current = self.backend.assignments()
        operator = self._take_requests(tree, stored)
        cycles = run_rollouts(tree, previous, before, statuses, self.telemetry.window, now, tracks, current, operator,
                              builds.progress if builds is not None else None)  # fmt: skip
        self._cycles_of_last = cycles
        revision = fleet.revision
        positions = {name: position(tree, name, cycle.outcome.state) for name, cycle in cycles.items()}
        after = before if positions == before_positions else targets.at(positions, artifacts)
        after = self._admit(tree, cycles, after, current, statuses, now)
        after = self.trainings.call(tree, after, {device.name: device.labels for device in devices})
        rollouts: dict[str, RolloutStatus] = {}
        for name in tree.rollouts:
            cycle = cycles.get(name)
            rollouts[name] = rollout_status(tree, name, after, statuses, previous[name], revision, spec_commit,
                                            cycle.outcome if cycle else None, now)  # fmt: skip
        # The backend's record is the authority: saved (not yet in Git) before anything moves, so a crash after
        # the devices moved never leaves a record that says otherwise; marked as in Git once the push landed.
        records = self._records(tree, cycles, rollouts, stored, paths.root, operator)
        self.backend.save_rollouts(records)
        self._actions_saved = True
        FAULTS.crash("after-save")
        # Devices first: an abort's return to the stable version is applied before anything is pushed, so a Git
        # outage never holds a rollback.
        result = outcome.result = apply_plan(self.backend, after, len(devices))
        outcome.applied, outcome.deleted = result.applied, result.deleted
        outcome.problems = [f"{p.device}: {p.message}" for p in result.plan.problems]
        outcome.decisions = {n: str(c.outcome.decision.kind) for n, c in cycles.items() if c.outcome.decision}
        FAULTS.crash("after-apply")
        self._collect_garbage(tree, result.plan.desired, builds)
        self._record_events(cycles, statuses, now)
        self._record_lab(current, statuses)
        self._notify(tree, self._decision_notices(cycles, outcome, now))

        statuses = self.backend.statuses()  # the reports that came in meanwhile; the inventory is the plan's
        self.metrics.observe_phases(Counter(status.phase for status in statuses.values()))
        self.metrics.observe_versions(statuses)
        self.metrics.observe_rollouts(rollouts)
        self._page = _page_parts(tree, rollouts, result.plan.desired, statuses)
        author = Author(tree.fleet.spec.commit_author.name, tree.fleet.spec.commit_author.email)
        writer = StatusWriter(self.source, author, signing_key=self.config.signing_key, branch=self._status_branch)
        # A rollback is a decision people must see where they work: on the fleet's branch, whatever the status
        # branch.
        decisions = StatusWriter(self.source, author, signing_key=self.config.signing_key)
        for name, record in sorted(records.items()):
            if record.pending:  # a rollback commit (the devices returned already); retried until it lands
                pushed = decisions.commit({paths.rollout(name): rollouts[name].to_yaml()}, record.pending)
                if pushed is not None:
                    outcome.rollbacks.append(pushed.commit)
                    stamp = now.isoformat(timespec="seconds")
                    self._notify(tree, [Notice("Rollback", name, record.pending.splitlines()[0], stamp, pushed.commit,
                                               str(record.status.phase), warning=True)])  # fmt: skip
                records[name] = replace(record, pending=None)
                self.backend.save_rollouts({name: records[name]})  # landed: never pushed twice
                FAULTS.crash("after-rollback-push")
        rendered: dict[str, bytes | None] = {paths.rollout(n): s.to_yaml() for n, s in rollouts.items()}
        wanted = specs_by_device(result.plan)
        for name in tree.groups:
            rendered[paths.group(name)] = group_status(tree, name, devices, result.plan, statuses, wanted).to_yaml()
        rendered.update(self._drift_files(tree, fleet.status, artifacts, devices, result.plan, now, head))
        rendered.update(self.trainings.step(tree, head, now, statuses, paths))
        last_tamper = fleet.status.controller.last_tamper if fleet.status.controller else None
        if tampered:
            last_tamper = TamperRecord(now.isoformat(timespec="seconds"), head, tuple(tampered))
            self.metrics.status_tampered.inc(len(tampered))
            log.warning("status changed outside the controller; restoring it",
                        extra={"commit": head, "paths": tampered})  # fmt: skip
        rendered[paths.controller] = ControllerStatus(spec_commit, last_tamper=last_tamper, version=release()).to_yaml()
        changed = len(result.changes.apply) + len(result.changes.delete)
        decided = "\n".join(
            f"{n}: {str(c.outcome.decision.kind).lower()} ({c.outcome.decision.message})"
            for n, c in cycles.items()
            if c.outcome.decision and not is_abort(c)
        )
        counted = (f"{changed} assignment(s) changed at {spec_commit[:12]}" if changed
                   else f"device reports at {spec_commit[:12]}")  # fmt: skip
        if tampered:
            counted = f"restored {', '.join(tampered)} (changed outside the controller); {counted}"
        # A decision is what a reader of the log looks for: it leads the subject; the count follows.
        message = f"status: {decided.splitlines()[0]}\n\n{counted}\n{decided}" if decided else f"status: {counted}"
        if not (status_due or decided or tampered or changed or outcome.rollbacks):
            # Only device counts moved, in a cycle a webhook or a person woke within the interval of the last
            # status commit: the next due cycle carries them (the records stay unsynced until it lands).
            self.source.mark_applied(head)
            self._accept_rewrite = False
            outcome.status_deferred = True
            return
        pushed = writer.commit(rendered, message)
        FAULTS.crash("after-status-push")
        self.backend.save_rollouts({n: replace(r, synced=True, pending=None) for n, r in records.items()})
        # What was verified and applied is ``head``; a commit pushed by someone while this cycle ran lies between it
        # and the status commit, and is checked in the next cycle.
        self.source.mark_applied(head)
        self._accept_rewrite = False
        if pushed is not None:
            outcome.status_commit = pushed.commit
            self.metrics.status_commits.inc()

    def suspended(self) -> dict | None:
        """Who suspended reconciling, when and why (``STATE_DIR/suspended``: kept across restarts); None."""
        try:
            return json.loads((self.config.state_dir / SUSPENDED).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"by": "?", "at": "?", "reason": f"unreadable {SUSPENDED} file: remove it to resume"}

    def suspend(self, by: str, reason: str) -> ActionResult:
        """Stop reconciling (as ``flux suspend``): devices keep their assignments, the device API keeps serving."""
        if self.suspended() is not None:
            return ActionResult(409, "reconciling is suspended already")
        body = {"by": by, "at": self.clock().isoformat(timespec="seconds"), "reason": reason or "suspended"}
        write_atomic(self.config.state_dir / SUSPENDED, json.dumps(body).encode())
        log.warning("reconciling suspended", extra=body)
        return ActionResult(200, f"reconciling suspended by {by}: devices keep what they run")

    def resume(self, by: str) -> ActionResult:
        if self.suspended() is None:
            return ActionResult(409, "reconciling is not suspended")
        (self.config.state_dir / SUSPENDED).unlink()
        log.warning("reconciling resumed", extra={"by": by})
        self.wake.set()
        return ActionResult(200, f"reconciling resumed by {by}")

    def request(self, rollout: str, kind: ActionKind, by: str, reason: str = "", wait: float = 30.0) -> ActionResult:
        """A person's action through the operator API: refused with the reason when it makes no sense now, else
        taken by the next cycle, which this call wakes and waits for (up to ``wait`` seconds)."""
        tree = self._last_tree
        if tree is None:
            return ActionResult(503, "the controller has not loaded the fleet yet")
        if rollout not in tree.rollouts:
            return ActionResult(404, f"no Rollout {rollout} in the fleet repo at the last commit applied")
        spec = tree.rollouts[rollout].spec
        record = self.backend.rollouts().get(rollout)
        status = record.status if record is not None else RolloutStatus(rollout)
        operator = OperatorActions.from_json(record.actions if record else None).of(spec.version)
        started = status.describes(spec.model, spec.version)
        why = refusal(kind, status.phase, started, operator, manual_actions(tree.rollouts[rollout]))
        if why is not None:
            return ActionResult(409, f"cannot {kind} {rollout}: {why}")
        pending = _Request(rollout, kind, by, reason or f"{kind} by {by}")
        with self._requests_lock:
            self._requests.append(pending)
        self.wake.set()
        if not pending.done.wait(wait):
            return ActionResult(202, f"{kind} {rollout}: accepted; the controller takes it in its next cycle")
        return ActionResult(200, pending.outcome)

    def _take_requests(self, tree: FleetTree, stored: dict[str, StoredRollout]) -> dict[str, OperatorActions]:
        """The operator API's requests waiting for this cycle, folded into each rollout's recorded actions (the
        requests are answered when the cycle ends)."""
        with self._requests_lock:
            taken, self._requests = self._requests, []
        operator = {}
        for name, rollout in tree.rollouts.items():
            record = stored.get(name)
            actions = OperatorActions.from_json(record.actions if record else None).of(rollout.spec.version)
            for request in taken:
                if request.rollout == name:
                    reason = f"{request.reason} ({request.by}, operator API)"
                    actions = actions.after(request.kind, reason)
            if actions != OperatorActions(rollout.spec.version):
                operator[name] = actions
        for request in taken:
            log.info("operator action", extra={"rollout": request.rollout, "action": str(request.kind),
                                               "by": request.by, "reason": request.reason})  # fmt: skip
        self._taken = taken
        return operator

    def _answer_requests(self, cycles: dict, outcome: CycleOutcome) -> None:
        """Tell each waiting request what its cycle did; requests of a cycle that failed before it saved its
        records go back to the queue for the next one."""
        taken, self._taken = self._taken, []
        if taken and not self._actions_saved:
            with self._requests_lock:
                self._requests[:0] = taken
            return
        for request in taken:
            cycle = cycles.get(request.rollout)
            if cycle is not None:
                decision = cycle.outcome.decision
                said = f" ({decision.kind}: {decision.message})" if decision else ""
                request.outcome = f"{request.kind} {request.rollout}: now {cycle.outcome.state.phase}{said}"
            else:
                request.outcome = f"{request.kind} {request.rollout}: recorded"
            if outcome.stalled:
                request.outcome += f"; not in Git yet (the controller retries): {outcome.stalled}"
            request.done.set()

    def _record_lab(self, current: Mapping[tuple[str, str], Desired], statuses: Mapping) -> None:
        """Keep each lab device's report of the artifact it benchmarked in the store, next to the artifact, where
        ``edgectl get benchmarks`` reads it after the assignment moved on. Best effort, like events."""
        if self.store is None:
            return
        for key, desired in current.items():
            status = statuses.get(key)
            if not desired.benchmark or desired.artifact is None or status is None:
                continue
            if status.phase not in ("Benchmarked", "Failed") or status.extra.get("labArtifact") != desired.artifact:
                continue
            figures = {k: v for k, v in status.extra.items() if k.startswith("lab") and k != "labArtifact"}
            result = {"phase": status.phase, "reason": status.reason, "message": status.message,
                      "rollout": desired.rollout, "profile": desired.profile, "figures": figures}  # fmt: skip
            try:
                self.store.record_lab(desired.artifact, desired.device, result)
            except OSError as exc:
                log.warning("lab result not kept", extra={"device": desired.device, "error": str(exc)})

    def _record_events(self, cycles: dict, statuses: dict, now: datetime) -> None:
        """Decisions as events on their rollouts, and each device's new failure (a report turning Failed or
        RolledBack, or failing otherwise than before) on its assignment, with the agent's reason: what ``edgectl
        get events`` and ``kubectl get events`` show. Best effort: an event that cannot be kept is logged, never
        a reason to stall the cycle."""
        events = [Event("Rollout", name, str(decision.kind), decision.message, "Warning" if warn else "Normal")
                  for name, decision, _, warn in _decisions(cycles)]  # fmt: skip
        events += [Event("Rollout", name, Reason.BUILD_REFUSED, why, "Warning") for name, why in _refusals(cycles)]
        failing = {
            key: (status.phase, status.target_version, status.reason, status.message)
            for key, status in statuses.items()
            if status.phase in ("Failed", "RolledBack")
        }
        again = self._failures_seen is not None  # a restarted controller may have recorded these already
        for (device, model), seen in sorted(failing.items()):
            if (self._failures_seen or {}).get((device, model)) != seen:
                phase, version, reason, message = seen
                text = message or phase
                if version and not text.startswith(version):
                    text = f"{version}: {text}"
                events.append(Event("Device", device, reason or phase, text, "Warning", model))
        self._failures_seen = failing
        for event in events:
            try:
                self.backend.record_event(event, now, again=again or event.kind == "Rollout")
            except (TemporaryError, PermanentError) as exc:
                log.warning("event not recorded", extra={"event": event.reason, "object": event.involved,
                                                         "error": str(exc)})  # fmt: skip

    @staticmethod
    def _decision_notices(cycles: dict, outcome: CycleOutcome, now: datetime) -> list[Notice]:
        stamp = now.isoformat(timespec="seconds")
        notices = [Notice(str(decision.kind), name, decision.message, stamp, outcome.commit, str(phase), warn)
                   for name, decision, phase, warn in _decisions(cycles)]  # fmt: skip
        for folder, why in sorted(outcome.refused_releases.items()):
            notices.append(Notice("ReleaseRefused", None, f"{folder}: {why}", stamp, outcome.commit, warning=True))
        for name, why in _refusals(cycles):
            notices.append(Notice(Reason.BUILD_REFUSED, name, why, stamp, outcome.commit, warning=True))
        return notices

    def _notify(self, tree: FleetTree, notices: list[Notice]) -> None:
        """Queue the notices for the Fleet's webhooks (sent on the notifier's thread, never holding the cycle)."""
        targets = tree.fleet.spec.notifications
        if not targets or not notices:
            return
        if self.notifier is None:
            self.notifier = Notifier(lambda target, result: self.metrics.notifications.labels(target, result).inc())
        self.notifier.send(targets, notices, tree.fleet.metadata.name)

    def _collect_garbage(self, tree: FleetTree, desired: Mapping, builds: BuildsView | None) -> None:
        """Remove from the store what no device runs, is assigned or may roll back to (the newest
        ``gc_keep_versions`` versions of each model in its spec), every ``gc_interval``; never while a build runs
        (its blobs are in the store before its record is)."""
        now = self.clock()
        if self._collected is None:
            self._collected = now
        interval = self.config.gc_interval
        if self.store is None or interval <= timedelta(0) or now - self._collected < interval:
            return
        if builds is not None and any(j.state is JobState.RUNNING for j in builds.jobs):
            return
        self._collected = now
        versions: set[tuple[str, str]] = set()
        for model in tree.models.values():
            versions |= {(model.name, v.version) for v in model.spec.versions[-self.config.gc_keep_versions :]}
        for (_, model_name), status in self.backend.statuses().items():
            versions |= {(model_name, v) for v in (status.installed_version, status.previous_version) if v}
        keep = {d.artifact for d in desired.values() if d.artifact}
        keep |= {a for a, (model, version, _) in self._artifact_keys.items() if (model, version) in versions}
        try:
            report = self.store.gc(keep)
        except (OSError, ValueError) as exc:
            log.warning("store not collected", extra={"error": str(exc)})
            return
        for removed in set(self._artifact_keys) - set(self.store.artifact_ids()):
            del self._artifact_keys[removed]
            self._artifact_facts.pop(removed, None)
        if report.artifacts_removed:
            log.info("store collected", extra={"artifacts": report.artifacts_removed, "blobs": report.blobs_removed,
                                               "bytes": report.bytes_freed})  # fmt: skip

    def _drift_files(self, tree: FleetTree, status: FleetStatus, artifacts: Mapping[tuple[str, str, str], str],
                     devices: list, target: Plan, now: datetime, head: str) -> dict[str, bytes | None]:  # fmt: skip
        """Each model's drift status file; a model that no longer has telemetry in its window loses its file. Drift
        held past a model's ``retrainAfter`` is pushed as a retraining request branched from ``head``. A failure
        keeps the files as they are: drift is watched, never worth a cycle."""
        every = tree.fleet.spec.intervals.drift
        try:
            received = self.telemetry.last_received()
            if received is not None:
                self.metrics.telemetry_received.set(received)
            found = self.drift.evaluate(tree, self.telemetry.window, artifacts, devices, target, status.drift, now,
                                        every)  # fmt: skip
        except Exception as exc:
            log.warning("drift not evaluated", extra={"error": f"{type(exc).__name__}: {exc}"})
            return {}
        self.metrics.observe_drift(found)
        try:
            self.retraining.push_due(tree, found, head, now)
        except Exception as exc:  # tried again next cycle
            log.warning("retraining request not pushed", extra={"error": f"{type(exc).__name__}: {exc}"})
        files: dict[str, bytes | None] = {status.paths.drift(m): d.to_yaml() for m, d in found.items()}
        files.update({status.paths.drift(m): None for m in set(status.drift) - set(found)})
        return files

    def _compact_telemetry(self) -> None:
        """Hours into days, and the expired out, every ``intervals.telemetry`` of the Fleet (sooner while a
        store catches up), whatever became of the cycle: a store that cannot be compacted (a full disk) is logged
        and tried again; it never stalls a cycle."""
        every = (self._last_tree.fleet.spec.intervals if self._last_tree else Intervals()).telemetry.total_seconds()
        if not self._compact_more and self._compacted is not None and time.monotonic() - self._compacted < every:
            return
        self._compacted = time.monotonic()
        try:
            done = self.telemetry.compact(self.clock())
            self._compact_more = done.more
        except Exception as exc:  # a full disk, a row nobody can fold: logged, tried again, never a stopped controller
            log.warning("telemetry store not compacted", extra={"error": f"{type(exc).__name__}: {exc}"})
            return
        if done.folded or done.expired:
            log.info("telemetry compacted", extra={"folded": done.folded, "expired": done.expired})

    def _verify(self, head: str, spec_commit: str, applied: str | None, fleet: FleetAtCommit | None) -> str | None:
        """Why the commits since the last applied one may not be applied (None: they may). Every one must carry
        an allowed signature; status-only commits too when the controller signs its own; a commit in the
        controller's name must change nothing but status. On a first run (nothing applied yet) the last change
        by people is checked."""
        assert self.config.allowed_signers is not None
        commits = [spec_commit] if applied is None else self.source.commits_between(applied, head)
        status_root = (fleet.status.paths if fleet is not None else self._paths).root
        controller_email = fleet.tree.fleet.spec.commit_author.email if fleet is not None else None
        for commit in commits:
            status_only = self.source.only_under(commit, status_root)
            if status_only and self.config.signing_key is None:
                continue  # the controller's unsigned status commits: status files cannot move a device
            refusal = self.source.verify_commit_signature(commit, self.config.allowed_signers)
            if refusal:
                return refusal
            if not status_only and self.source.committer_email(commit) == controller_email:
                return f"commit {commit[:12]} is committed as the controller but changes files outside {status_root}/"
        return None

    def _rewrite_accepted(self, fleet: FleetAtCommit | None, applied: str) -> bool:
        """``--accept-rewrite`` (once: for the rewrite this process met first), or the Fleet annotation naming
        the lost commit."""
        if self._accept_rewrite:
            return True  # cleared once a cycle applied past the rewrite
        return fleet is not None and _accepts(fleet, applied)

    @staticmethod
    def _admit(tree: FleetTree, cycles: dict, target, current, statuses, now: datetime):
        """``maxConcurrent`` and ``rate``: the plan with only as many of each rollout's devices taking its new
        version as may start now; a rollout that let devices start records when (deadlines and the rate run from
        then)."""
        for name, cycle in list(cycles.items()):
            spec = tree.rollouts[name].spec
            limit = max_concurrent(spec, len(target.for_rollout(name)))
            if limit is None and spec.rate is None:
                continue
            state = cycle.outcome.state
            if state.phase is RolloutPhase.SUCCEEDED:
                continue  # done: whoever has not got it yet gets it now
            gone = past_waiting(spec, state, now)
            group = state.group if spec.group_strategy == "Sequential" else None
            allowance = None
            if state.phase is RolloutPhase.PAUSED:
                allowance = 0  # held or paused: nobody new starts
            elif spec.rate is not None:
                healthy = failed = 0
                for d in target.for_rollout(name):
                    status = statuses.get((d.device, d.model))
                    mine = group is None or target.groups.get((d.device, name)) == group
                    if not (d.in_rollout and mine and status is not None and not in_flight(d, status)):
                        continue
                    if status.phase == "Healthy" and status.installed_version == d.version:
                        healthy += 1
                    elif status.phase != "Staged":
                        failed += 1
                allowance = rate_allowance(spec.rate, state.last_admitted, now, healthy, failed)
            admission = admit(target, name, limit, current, statuses, allowance, gone, group)
            target = admission.plan
            if admission.admitted:
                state = replace(cycle.outcome.state, last_admitted=now.isoformat(timespec="seconds"))
                cycles[name] = replace(cycle, outcome=replace(cycle.outcome, state=state))
        return target

    def _with_status_branch(self, fleet: FleetAtCommit, head: str, fetch: bool = True) -> FleetAtCommit:
        """The fleet with its status as the status branch holds it (``Fleet.spec.statusBranch``); the fleet's
        own status files when status lives on the fleet's branch."""
        self._status_branch = fleet.tree.fleet.spec.status_branch or self.config.branch
        if self._status_branch == self.config.branch:
            self._status_head = head
            return fleet
        if fetch:
            self._status_head = self.source.fetch_branch(self._status_branch)
        else:  # as fetched last, or as the controller's own last push left it
            self._status_head = self.source.tracking_head(self._status_branch)
        files = self.source.files_at(self._status_head) if self._status_head else []
        return replace(fleet, status=FleetStatus.from_files(files, fleet.status.paths))

    def _standing(
        self, tree: FleetTree, fleet: FleetAtCommit, stored: dict[str, StoredRollout], head: str | None
    ) -> tuple[dict[str, RolloutStatus], list[str]]:
        """Where each rollout stands (the backend's record; a rollout it has no record of starts from its status
        file, as on a fresh backend) and the status files someone else changed since the controller's last
        status commit landed."""
        previous, tampered = {}, []
        for name in tree.rollouts:
            record = stored.get(name)
            if record is None and stored:  # a rollout new to this backend: it starts, whatever a file says
                previous[name] = RolloutStatus(name)
                continue
            if record is None:  # a fresh backend: the status files are where the fleet stands
                self._check_adopted(tree, fleet, name, head)
                previous[name] = fleet.status.rollout(name)
                continue
            previous[name] = record.status
            path = fleet.status.paths.rollout(name)
            moved = record.status_root != fleet.status.paths.root  # the Fleet moved its statusPath: rendered anew
            written = self.source.read_blob(head, path) if head is not None else None
            if record.synced and not moved and written != record.status.to_yaml():
                tampered.append(path)
        return previous, tampered

    def _check_adopted(self, tree: FleetTree, fleet: FleetAtCommit, name: str, head: str | None) -> None:
        """A controller that signs its status commits takes a rollout's state from Git (a fresh backend) only
        from a file its own signed commit wrote; anything else stalls the cycle, the devices where they are."""
        if self.config.signing_key is None or self.config.allowed_signers is None or head is None:
            return
        path = fleet.status.paths.rollout(name)
        if self.source.read_blob(head, path) is None:
            return  # a rollout that never ran: it starts at its first step
        writer = self.source.last_change_of(head, path)
        refusal = self.source.verify_commit_signature(writer, self.config.allowed_signers)
        if refusal is None and self.source.committer_email(writer) != tree.fleet.spec.commit_author.email:
            refusal = f"commit {writer[:12]} is not the controller's"
        if refusal is not None:
            raise UntrustedStatusError(
                f"UntrustedStatus: {path} was last written by commit {writer[:12]}, not a status commit signed by "
                f"the controller ({refusal}); a controller without a record of the rollout does not take its state "
                "from it: restore the file from a signed status commit, or delete it to start the rollout over"
            )

    @staticmethod
    def _records(
        tree: FleetTree,
        cycles: dict,
        rollouts: dict[str, RolloutStatus],
        stored: dict[str, StoredRollout],
        status_root: str,
        operator: Mapping[str, OperatorActions],
    ) -> dict[str, StoredRollout]:
        """The records to save before pushing: those that changed, or still wait for a commit to land."""
        records = {}
        for name, status in rollouts.items():
            old = stored.get(name)
            cycle = cycles.get(name)
            pending = rollback_message(tree, cycle) if cycle is not None and is_abort(cycle) else None
            if pending is None and old is not None and not old.synced:
                pending = old.pending
            actions = operator[name].to_json() if name in operator else {}
            if (old is None or not old.synced or pending or old.status_root != status_root
                    or old.status.to_json() != status.to_json() or dict(old.actions) != actions):  # fmt: skip
                records[name] = StoredRollout(status, synced=False, pending=pending, status_root=status_root,
                                              actions=actions)  # fmt: skip
        return records

    def _report(self, spec_commit: str, reason: str, outcome: CycleOutcome) -> None:
        """Say why nothing was applied, in the controller's status file (once: the same reason commits nothing)."""
        files = {self._paths.controller: ControllerStatus(spec_commit, reason, version=release()).to_yaml()}
        writer = StatusWriter(
            self.source, self._author, signing_key=self.config.signing_key, branch=self._status_branch
        )
        pushed = writer.commit(files, f"status: stalled at {spec_commit[:12]}")
        if pushed is not None:
            outcome.status_commit = pushed.commit

    def _load(self, head: str, spec_commit: str, outcome: CycleOutcome) -> FleetAtCommit | None:
        try:
            return load_with_status(self.source.files_at(head))
        except SpecErrors as exc:
            outcome.stalled = f"{len(exc.errors)} spec error(s) at {spec_commit[:12]}; first: {exc.errors[0]}"
            return None

    def pinned_root_refusal(self, tree: FleetTree, head: str) -> str | None:
        """Why the TUF repository may not publish for this fleet: its first root is not the one the Fleet pins
        (``spec.trust.trustRoot``, what agents start from). None when it is, or when the Fleet pins none."""
        pinned = tree.fleet.spec.trust.trust_root
        if pinned is None:
            return None
        wanted = self.source.read_blob(head, pinned)
        if wanted is None:
            return f"spec.trust.trustRoot names {pinned}, which is not in the fleet repo"
        ours = self.config.state_dir / "tuf" / "metadata" / "1.root.json"
        try:
            same = json.loads(ours.read_bytes()) == json.loads(wanted)
        except (OSError, ValueError):
            same = False
        if same:
            return None
        return (f"the TUF repository's root ({ours}) is not the root the Fleet pins in spec.trust.trustRoot "
                f"({pinned}): agents that start from it would refuse what is published, so nothing is")  # fmt: skip

    def _trust_policy(self, tree: FleetTree, head: str) -> TrustPolicy:
        """The Fleet's trust policy, with the key files it names read from the same commit as the specs."""
        trust = tree.fleet.spec.trust
        root = self.config.state_dir / "trust"
        named = [s.public_key for s in trust.release_signers if s.public_key] + [trust.sigstore_trusted_root]
        if trust.builder is not None:
            named.append(trust.builder.public_key)
        for path in filter(None, named):
            data = self.source.read_blob(head, path)
            if data is None:
                continue  # the policy then names a missing file: verification refuses and says which
            local = root / path
            if not local.exists() or local.read_bytes() != data:
                local.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(local, data)
        return policy_from_fleet(tree.fleet, root)

    def _sync_builds(self, tree: FleetTree, head: str, now: datetime, outcome: CycleOutcome,
                     stable: Mapping[str, str | None], released: set[tuple[str, str, str]],
                     ) -> BuildsView | None:  # fmt: skip
        """Builds of what active rollouts need, when the Fleet says ``release: builder``."""
        if tree.fleet.spec.trust.release != "builder":
            return None
        if self.config.store is None:
            if not self._said_no_store:
                log.warning("the Fleet says trust.release: builder, but this controller has no store to build into "
                            "(edgectl run --store): rollouts wait for artifacts that nobody builds")  # fmt: skip
                self._said_no_store = True
            return None
        if self.builds is None:
            runner = self._build_runner or LocalRunner(self.source.workdir, Path(self.config.store),
                                                       self.config.build_workers, self.config.builder_key,
                                                       self.config.releases, on_done=self.wake.set)  # fmt: skip
            self.builds = Builds(self.config.builds_dir, runner)
        view = self.builds.sync(tree, head, now, stable, released)
        outcome.builds = view
        return view

    def _artifacts(self, tree: FleetTree) -> dict[tuple[str, str, str], str]:
        """(model, version, profile) -> the store's artifact: the one built from the recipe the spec has now,
        else the newest one stored; never whichever id sorts first."""
        if self.store is None:
            return {}
        candidates: dict[tuple[str, str, str], list[tuple[bool, float, str]]] = {}
        recipes: dict[tuple[str, str], str | None] = {}
        for artifact_id in self.store.artifact_ids():
            known = self._artifact_keys.get(artifact_id)
            if known is None:  # an artifact never changes: read its manifest once, not every cycle
                manifest = self.store.read_manifest(artifact_id)
                recipe = json.dumps((manifest.get("lineage") or {}).get("recipe"), sort_keys=True)
                stored = self.store.stored_at(artifact_id)
                known = self._artifact_keys[artifact_id] = (manifest["model"], manifest["version"],
                                                            manifest["profile"])  # fmt: skip
                self._artifact_facts[artifact_id] = (recipe, stored)
            recipe, stored = self._artifact_facts[artifact_id]
            if (known[0], known[2]) not in recipes:
                recipes[(known[0], known[2])] = _recipe_json(tree, known[0], known[2])
            current = recipe == recipes[(known[0], known[2])]
            candidates.setdefault(known, []).append((current, stored, artifact_id))
        return {key: max(found)[2] for key, found in candidates.items()}


def _recipe_json(tree: FleetTree, model: str, profile: str) -> str | None:
    """The spec's recipe for (model, profile), as a build records it in ``lineage.recipe``."""
    spec = tree.models.get(model)
    recipe = next((r for r in spec.spec.recipes if r.profile == profile), None) if spec else None
    if recipe is None:
        return None
    return json.dumps(recipe.model_dump(mode="json", by_alias=True, exclude_unset=True), sort_keys=True)


def _refusals(cycles: Mapping[str, RolloutCycle]) -> list[tuple[str, str]]:
    """(rollout, the build report) of each rollout that a refused build stopped in this cycle."""
    stopped = Reason.BUILD_REFUSED
    return [(name, cycle.outcome.state.message) for name, cycle in sorted(cycles.items())
            if cycle.outcome.state.reason == stopped and cycle.before.reason != stopped]  # fmt: skip


def _decisions(cycles: Mapping[str, RolloutCycle]) -> list[tuple[str, Decision, RolloutPhase, bool]]:
    """(rollout, decision, phase after it, whether it warns: an abort, or a gate that held the rollout) of each
    rollout that decided something this cycle: what events and notifications are made from."""
    found = []
    for name, cycle in sorted(cycles.items()):
        decision = cycle.outcome.decision
        if decision is not None:
            warn = decision.kind == DecisionKind.ABORT or cycle.outcome.state.reason in _HELD
            found.append((name, decision, cycle.outcome.state.phase, warn))
    return found


def _page_parts(tree: FleetTree, rollouts: Mapping[str, RolloutStatus], assigned: Mapping, statuses: Mapping) -> tuple:
    """The page's rows from one cycle: rollouts with their steps, devices per assigned version and reported phase
    (Pending before a first report), and the devices that report a failure."""
    rows = [RolloutRow(name, status, [step.percent for step in tree.rollouts[name].spec.steps])
            for name, status in sorted(rollouts.items()) if name in tree.rollouts]  # fmt: skip
    phases: dict[str, Counter] = {}
    failing = []
    for (device, model), desired in sorted(assigned.items()):
        status = statuses.get((device, model))
        key = f"{model}@{desired.version}"
        counts = phases.get(key)
        if counts is None:
            counts = phases[key] = Counter()
        counts[status.phase if status else "Pending"] += 1
        if status is not None and status.phase in ("Failed", "RolledBack"):
            failing.append({"device": device, "model": model, "version": status.target_version, "phase": status.phase,
                            "reason": status.reason, "message": status.message[:300]})  # fmt: skip
    return tree.fleet.metadata.name, rows, phases, failing[:PAGE_FAILING]


def _accepts(fleet: FleetAtCommit, applied: str) -> bool:
    noted = fleet.tree.fleet.metadata.annotations.get(ACCEPT_REWRITE, "").strip().lower()
    return len(noted) >= 12 and applied.startswith(noted)
