"""The edge agent: converge one device to its assignments, safely.

Who calls it: ``edgectl agent`` (a DaemonSet pod on K3s, or a plain process with the local backend). The agent
is the executor of :mod:`.phases`, the pure machine whose table says what a device does with a model at each
moment; the agent observes the disk and the assignment, asks the machine for the next step, performs it (each
step ends in one atomic state write, :mod:`.slots`) and reports the phase it enters:

    Downloading  TUF refresh (fresh, consistent, signed metadata), then every file resumably, each checked
                 against the signed length and sha256
    Verifying    verify_artifact: the owner's release signature, the files, this device's profile, the
                 release counter not below the highest minimum this device has marked good
    Installing   copy into the inactive slot, fsynced
    Testing      golden vectors in the real runtime, in a child process with a time and a memory limit
    Staged       waiting for the maintenance window
    Trial        switched; serving within the trial's limits for its period, else rolled back by itself
    Healthy      the version passed its trial and is marked good (the revocation floor rises only now)
    Retrying     a transient failure (network, server, TUF freshness): tried again with a capped, jittered
                 backoff, the active model untouched
    Failed       a permanent refusal or a failed health check, kept for that spec (no download loop)
    RolledBack   the trial failed: back on the previous slot

A lab device's assignment in benchmark mode (``spec.benchmark``) takes another path (:meth:`Agent.benchmark`):
Benchmarking (download and verify into a folder of its own, then the profile's benchmark in a child process while
the hwmon sensors are sampled), then Benchmarked with the figures, or Failed. The slots are never touched: what the
device serves does not change. The result is kept per version, generation and artifact, so it is measured once.

:meth:`Agent.run` is the loop: a device far from anyone must keep serving and keep trying, so a failure to reach
the cluster or the controller (either kind of :mod:`reconciler.errors`) never ends it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import urllib3

from reconciler.artifact.delta import apply_delta
from reconciler.cluster import AssignmentStatus
from reconciler.errors import PermanentError, TemporaryError
from reconciler.plan import Desired
from reconciler.signing import Expectation, RefusedError, TrustPolicy, verify_artifact
from reconciler.signing.tuf_client import ArtifactUpdater, PoolFetcher

from .capture import write_settings
from .download import DownloadConfig, Downloader, DownloadError
from .faults import crash_point
from .health import HealthReport, health_check_isolated
from .phases import (
    DEFAULT_TRIAL,
    Action,
    Observation,
    Outcome,
    Phase,
    Recorded,
    Step,
    Trial,
    TrialLimits,
    TrialStats,
    after_fetch,
    next_step,
    retry_delay,
)
from .sensors import HWMON, Reading, Sampler
from .slots import KeepPolicy, ModelSlots, SlotState, UnsafeNameError, check_name
from .verbosity import Verbosity

if TYPE_CHECKING:
    from .training import Participation

log = logging.getLogger("edge_reconciler.agent")

TRANSIENT_REFUSALS = frozenset({"Frozen", "Expired", "Rollback", "MixAndMatch", "UnknownTarget"})
"""TUF refusals that say "not now" rather than "never": a repository that stopped vouching for freshness (an
outage, a skewed clock), metadata caught mid-publish, a target not published yet. Retried like a network error."""
TRIAL_END_MARGIN_SECONDS = 0.5
"""The agent wakes this long after a trial's end, so that the cycle then finds the period over."""


def _shorten(message: str, limit: int = 600) -> str:
    """Long messages keep their head (what) and tail (why: "connection ended at ..."), not one of them."""
    return message if len(message) <= limit else f"{message[: limit // 3]} ... {message[-(2 * limit) // 3 :]}"


def _benchmarked(health: HealthReport, reading: Reading, spec: Desired, runs: int, base: dict) -> AssignmentStatus:
    """A lab benchmark's report: its figures (what the controller's lab gates read), or why it failed."""
    if not health.passed:
        return AssignmentStatus("Failed", reason="BenchmarkFailed", message=_shorten(health.reason), **base,
                                extra={"labArtifact": spec.artifact or ""})  # fmt: skip
    figures: dict[str, object] = {
        "labP50Ms": round(health.latency_p50_ms, 4), "labP95Ms": round(health.latency_p95_ms, 4),
        "labMemoryBytes": health.peak_memory_bytes, "labRuns": runs,
        "labGoldenMaxError": round(health.max_abs_error, 6), "labArtifact": spec.artifact or "",
    }  # fmt: skip
    if reading.power_w is not None:
        figures["labPowerW"] = round(reading.power_w, 3)
    if reading.temperature_c is not None:
        figures["labTemperatureC"] = round(reading.temperature_c, 1)
    message = f"p50 {health.latency_p50_ms:.3f} ms, p95 {health.latency_p95_ms:.3f} ms on {runs} runs; not served"
    return AssignmentStatus("Benchmarked", message=message, extra=figures, **base)


def _read_json(path: Path) -> dict:
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def _write_json(path: Path, body: dict) -> None:
    """Whole or not at all: a crash mid-write leaves the old record (or none), and the benchmark runs again."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(body))
    os.replace(partial, path)


def _reportable(model: str) -> bool:
    try:
        check_name("model", model)
    except UnsafeNameError:
        return False
    return True


@dataclass(frozen=True)
class AgentConfig:
    device: str
    profile: str
    """This device's hardware profile: the agent's own knowledge, never taken from an assignment."""
    data_dir: Path
    repository_url: str
    """Base URL of the controller's TUF repository (``.../tuf``)."""
    policy: TrustPolicy
    trusted_root: bytes | None = None
    threads: int = 1
    max_latency_ms: float | None = None
    max_memory_bytes: int | None = None
    """The profile's limits, checked by the health check (the DaemonSet passes them from the profile)."""
    download: DownloadConfig = field(default_factory=DownloadConfig)
    deltas: bool = True
    """Fetch a delta against the installed model file when the controller offers one."""
    full_fallback: bool = True
    """When a delta fails, download the whole file (False: report the failure and wait)."""
    heartbeat_seconds: float = 60.0
    """Report an unchanged status again after this long: the controller counts silent devices as offline."""
    trial_period: timedelta = DEFAULT_TRIAL
    """A new version's trial when its assignment names none."""
    health_timeout_seconds: float = 120.0
    """CPU seconds a health check may use (a spinning hang); the wall clock allows five times that."""
    keep: KeepPolicy = field(default_factory=KeepPolicy)
    """Good versions kept on the device for a rollback without a download."""
    benchmark_runs: int = 200
    """Single-sample inferences a lab benchmark times (p50 and p95 come from them)."""
    hwmon: Path = HWMON
    """Where the power and temperature sensors are read during a lab benchmark."""
    redact_hook: Path | None = None
    """An executable that redacts sampled inputs before they are kept (``reconciler.agent.capture``)."""


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        backend,
        on_switch: Callable[[str], object] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        http: Callable[[], urllib3.PoolManager] | None = None,
        trial_stats: Callable[[str, str], TrialStats] | None = None,
        training: Participation | None = None,
    ) -> None:
        """``on_switch(model)`` runs right after a new slot became active (the model server reloads there);
        ``clock`` is read once per model and cycle (maintenance windows), so tests control time; ``http`` gives
        the connections for TUF metadata and artifacts (the device API's, with this device's certificate; asked
        again for every download, since a certificate rotation replaces them). ``trial_stats(model, version)``: what
        the model server saw of a version on trial (None: no server here, a trial is judged by its period)."""
        self.config = config
        self.clock = clock
        self.backend = backend
        self.on_switch = on_switch
        self.http = http
        self.data_dir = Path(config.data_dir)
        self.downloader = Downloader(self.data_dir / "partial", config.download)
        self.bytes_transferred = 0
        self.transfer = "none"
        """How the last artifact came: full, delta, delta failed then full, or local (every file was already on
        the device: a kept version or the other slot). Reported in status."""
        self.trial_stats = trial_stats
        self.verbosity = Verbosity(clock=clock)
        """A log level the fleet repo asks for (``edgectl debug``), dropped at its ``until`` by this clock."""
        self._reported: dict[str, tuple[AssignmentStatus, float]] = {}
        self._retries: dict[str, tuple[tuple[str, int], int, datetime]] = {}
        """model -> ((version, generation), attempts, next attempt): transient failures, kept in memory only."""
        self._figures: dict[str, object] = {}
        self.training = training
        """Federated trainings this device takes part in (None: it never does)."""
        self._training_figures: dict[str, dict] = {}
        self._trial_ends: dict[str, datetime] = {}
        """model -> when its version's trial period ends: the agent wakes then to mark it good and report Healthy,
        instead of at its next poll (up to an interval later, which every rollout step waited for)."""

    def run(self, stop: threading.Event, interval: float, after_cycle: Callable[[], object] | None = None) -> None:
        """Cycle every ``interval`` seconds until ``stop`` is set; ``after_cycle`` (telemetry upload) runs after
        each, also after a failed one. A temporary failure waits its ``retry_after`` when that is longer; a
        permanent one is logged for a person and tried again at the interval: its fix (credentials, RBAC, a
        CRD) is made elsewhere, and nobody comes to restart the agent afterwards."""
        while not stop.is_set():
            wait = interval
            for step in (self.cycle, after_cycle):
                if step is None:
                    continue
                try:
                    step()
                except TemporaryError as exc:
                    wait = max(wait, exc.retry_after)
                    log.warning("will retry", extra={"error": str(exc), "retryAfter": exc.retry_after})
                except PermanentError as exc:
                    log.error("needs a person", extra={"error": str(exc)})
            trial_ends = self.trial_ends_in()
            if trial_ends is not None:
                wait = min(wait, trial_ends + TRIAL_END_MARGIN_SECONDS)
            stop.wait(wait)

    def trial_ends_in(self) -> float | None:
        """Seconds until the first trial on this device ends (None: none is running)."""
        now = self.clock()
        left = [(end - now).total_seconds() for end in self._trial_ends.values() if end > now]
        return min(left, default=None)

    def cycle(self) -> dict[str, AssignmentStatus]:
        """Converge every assignment of this device once; returns the status reported per model."""
        self.backend.sync(inventory=False)
        assignments = self.backend.assignments_for(self.config.device)
        self.verbosity.apply(next((spec.debug for spec, _ in assignments.values() if spec.debug), None))
        write_settings(self.data_dir / "capture", [spec for spec, _ in assignments.values()], self.config.redact_hook)
        if self.training is not None:
            self._training_figures = self.training.converge(assignments)
        reports = {}
        for model, (spec, generation) in sorted(assignments.items()):
            reports[model] = self.converge(spec, generation)
        return reports

    def converge(self, spec: Desired, generation: int) -> AssignmentStatus:
        """Walk ``spec``'s model through :mod:`.phases` until a step needs time (a download waits for the next
        cycle only when it failed), reporting each phase as it is entered."""
        try:
            for kind, value in (("model", spec.model), ("version", spec.version), ("profile", spec.profile)):
                check_name(kind, value)
        except UnsafeNameError as exc:  # never a path; reported when the model name itself is reportable
            log.error("assignment refused", extra={"error": str(exc)})
            status = AssignmentStatus("Failed", reason="InvalidAssignment", message=str(exc),
                                      observed_generation=generation)  # fmt: skip
            return self._report(spec, status) if _reportable(spec.model) else status
        if spec.benchmark:
            return self.benchmark(spec, generation)
        slots = ModelSlots(self.data_dir, spec.model, self.config.keep)
        limits = self._limits(spec)
        self._trial_ends.pop(spec.model, None)
        for _ in range(5):  # END_TRIAL -> FETCH -> SWITCH -> a trial that may end at once: never more in one cycle
            state = slots.state()
            step = next_step(self._observe(slots, state, spec, generation), limits)
            if step.action is Action.END_TRIAL:
                log.info("trial superseded", extra={"model": spec.model, "message": step.message})
                if slots.end_trial().active_version != state.active_version and self.on_switch is not None:
                    self.on_switch(spec.model)
                continue
            if step.action is Action.FETCH:
                step = self._fetch(slots, state, spec, generation)
                if step.action is Action.NONE:
                    return self._report(spec, self._status(slots.state(), spec, generation, step))
            if step.action is Action.SWITCH:
                self._switch(slots, spec)
                continue
            if step.action is Action.ROLL_BACK:
                failure = {"version": spec.version, "generation": generation, "phase": str(step.phase),
                           "reason": step.reason, "message": step.message}  # fmt: skip
                slots.roll_back(failure)
                if self.on_switch is not None:
                    self.on_switch(spec.model)
                return self._report(spec, self._status(slots.state(), spec, generation, step))
            if step.phase is Phase.TRIAL:
                crash_point("trial")
                trial = slots.state().trial
                if trial is not None:
                    self._trial_ends[spec.model] = trial.started + limits.duration
            if step.action is Action.MARK_GOOD:
                trial = slots.state().trial
                slots.mark_good(trial.minimum_counter if trial else 0)
            return self._report(spec, self._status(slots.state(), spec, generation, step))
        return self._report(spec, self._status(slots.state(), spec, generation, step))

    def benchmark(self, spec: Desired, generation: int) -> AssignmentStatus:
        """A lab device's benchmark of ``spec``'s version: downloaded and verified as for an install, measured in
        a child process (latency p50/p95 on single samples, peak memory, the golden outputs) while power and
        temperature are sampled, reported; never installed, never served."""
        slots = ModelSlots(self.data_dir, spec.model, self.config.keep)
        state = slots.state()
        record = self.data_dir / "benchmarks" / f"{spec.model}.json"
        key = {"version": spec.version, "generation": generation, "artifact": spec.artifact}
        saved = _read_json(record)
        if saved.get("key") == key:  # measured already: the same answer (a heartbeat keeps it fresh)
            return self._report(spec, AssignmentStatus.from_json(saved.get("status")))
        base = {"installed_version": state.active_version, "previous_version": state.previous_version,
                "observed_generation": generation, "target_version": spec.version}  # fmt: skip
        retry = self._retries.get(spec.model)
        if retry is not None and retry[0] == (spec.version, generation) and self.clock() < retry[2]:
            return self._report(spec, self._reported[spec.model][0])
        staging = self.data_dir / "benchmark" / spec.model
        try:
            self._report(spec, AssignmentStatus("Benchmarking", message="downloading", **base))
            self._download(slots, spec, staging)
            expect = Expectation(spec.model, spec.version, self.config.profile, state.minimum_counter)
            verified = verify_artifact(staging, self.config.policy, expect)
            self._report(spec, AssignmentStatus("Benchmarking", message="measuring", **base))
            with Sampler(self.config.hwmon) as sensors:
                # The health check's CPU allowance covers its 20 timed runs; a benchmark times more.
                cpu = self.config.health_timeout_seconds * max(1.0, self.config.benchmark_runs / 20)
                runs = self.config.benchmark_runs
                health = health_check_isolated(staging, verified.manifest, self.config.threads, None,
                                               self.config.max_memory_bytes, cpu, runs=runs)  # fmt: skip
        except RefusedError as refused:
            if str(refused.reason) in TRANSIENT_REFUSALS:
                return self._retrying(spec, generation, base, str(refused.reason), refused.message)
            status = AssignmentStatus("Failed", reason=str(refused.reason), message=refused.message, **base,
                                      extra={"labArtifact": spec.artifact or ""})  # fmt: skip
        except (TemporaryError, OSError, urllib3.exceptions.HTTPError) as exc:
            return self._retrying(spec, generation, base, "DownloadFailed", str(exc))
        else:
            status = _benchmarked(health, sensors.summary(), spec, self.config.benchmark_runs, base)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._retries.pop(spec.model, None)
        _write_json(record, {"key": key, "status": status.to_json()})
        return self._report(spec, status)

    def _retrying(self, spec: Desired, generation: int, base: dict, reason: str, message: str) -> AssignmentStatus:
        step = self._retry(spec, generation, reason, message)
        _, attempts, at = self._retries[spec.model]
        return self._report(
            spec,
            AssignmentStatus(
                "Retrying",
                reason=reason,
                message=step.message,
                **base,
                extra={"attempts": attempts, "nextAttempt": at.isoformat(timespec="seconds")},
            ),
        )

    # --- the phase machine's inputs and outputs ---------------------------------------------------------

    def _observe(self, slots: ModelSlots, state: SlotState, spec: Desired, generation: int) -> Observation:
        now = self.clock()
        failed = state.failed
        failure = None
        if failed and failed.get("version") == spec.version and failed.get("generation") == generation:
            failure = Recorded(Phase(failed.get("phase", "Failed")), str(failed.get("reason", "")),
                               str(failed.get("message", "")))  # fmt: skip
        retry = self._retries.get(spec.model)
        retry_at = retry[2] if retry is not None and retry[0] == (spec.version, generation) else None
        staged = (state.staged is not None and state.staged.get("version") == spec.version
                  and state.versions.get(state.inactive) == spec.version)  # fmt: skip
        stats = None
        if state.trial is not None and self.trial_stats is not None:
            stats = self.trial_stats(spec.model, state.trial.version)
        return Observation(
            version=spec.version, generation=generation, now=now, active_version=state.active_version,
            good=state.good == state.active_version, trial=state.trial, stats=stats,
            profile_matches=spec.profile == self.config.profile, failure=failure, retry_at=retry_at, staged=staged,
            window_open=spec.window is None or spec.window.is_open(now),
        )  # fmt: skip

    def _limits(self, spec: Desired) -> TrialLimits:
        trial = spec.trial
        if trial is None:
            return TrialLimits(self.config.trial_period, max_latency_ms=self.config.max_latency_ms)
        period = timedelta(seconds=trial.seconds) if trial.seconds is not None else self.config.trial_period
        return TrialLimits(period, trial.requests, trial.max_error_rate, self.config.max_latency_ms)

    def _status(self, state: SlotState, spec: Desired, generation: int, step: Step) -> AssignmentStatus:
        extra = dict(self._figures) if step.phase in (Phase.TRIAL, Phase.HEALTHY, Phase.STAGED) else {}
        if step.phase is Phase.RETRYING and spec.model in self._retries:
            _, attempts, at = self._retries[spec.model]
            extra = {"attempts": attempts, "nextAttempt": at.isoformat(timespec="seconds")}
        if step.phase is Phase.STAGED and spec.window is not None:
            w = spec.window
            step = replace(step, message=f"{spec.version} downloaded, verified and tested; switching in the "
                           f"maintenance window {','.join(w.days)} {w.start}-{w.end} {w.timezone}")  # fmt: skip
        return AssignmentStatus(
            str(step.phase), installed_version=state.active_version, previous_version=state.previous_version,
            observed_generation=generation, target_version=spec.version, reason=step.reason, message=step.message,
            extra=extra,
        )  # fmt: skip

    # --- actions -------------------------------------------------------------------------------------

    def _fetch(self, slots: ModelSlots, state: SlotState, spec: Desired, generation: int) -> Step:
        """Downloading -> Verifying -> Installing -> Testing, each reported as entered; ends in the Step that
        :func:`after_fetch` gives for how it went. Failures that will not change are recorded (no loop)."""
        staging = self.data_dir / "staging" / spec.model
        base = {"installed_version": state.active_version, "previous_version": state.previous_version,
                "observed_generation": generation, "target_version": spec.version}  # fmt: skip
        window_open = spec.window is None or spec.window.is_open(self.clock())
        try:
            self._report(spec, AssignmentStatus("Downloading", **base))
            self._download(slots, spec, staging)
            crash_point("after-download")
            self._report(spec, AssignmentStatus("Verifying", **base))
            crash_point("mid-verify")
            expect = Expectation(spec.model, spec.version, self.config.profile, state.minimum_counter)
            verified = verify_artifact(staging, self.config.policy, expect)
            self._report(spec, AssignmentStatus("Installing", **base))
            slot = slots.stage(staging)
            self._report(spec, AssignmentStatus("Testing", **base))
            health = health_check_isolated(
                slot, verified.manifest, self.config.threads, self.config.max_latency_ms,
                self.config.max_memory_bytes, self.config.health_timeout_seconds,
            )  # fmt: skip
        except RefusedError as refused:
            if str(refused.reason) in TRANSIENT_REFUSALS:
                return self._retry(spec, generation, str(refused.reason), refused.message)
            return self._fail(slots, spec, generation, after_fetch(Outcome.REFUSED, str(refused.reason),
                                                                   refused.message, window_open))  # fmt: skip
        except (TemporaryError, OSError, urllib3.exceptions.HTTPError) as exc:
            return self._retry(spec, generation, "DownloadFailed", str(exc))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._retries.pop(spec.model, None)
        if not health.passed:
            message = (f"{spec.version} failed its health check: {health.reason}; "
                       f"still serving {state.active_version or 'nothing'}")  # fmt: skip
            return self._fail(slots, spec, generation, after_fetch(Outcome.UNHEALTHY, "", message, window_open))
        self._figures = {"latencyP95Ms": round(health.latency_p95_ms, 3), "memoryBytes": health.memory_bytes,
                         "bytesTransferred": self.bytes_transferred, "transfer": self.transfer}  # fmt: skip
        step = after_fetch(Outcome.PASSED, "", f"health check: {health.reason}", window_open)
        slots.record_staged(spec.version, verified.release.minimum_counter)
        return step

    def _switch(self, slots: ModelSlots, spec: Desired) -> None:
        """The staged slot becomes active, on trial; re-verified first (the disk may have changed meanwhile)."""
        state = slots.state()
        marker = state.staged or {}
        slot = slots.slot(state.inactive)
        verify_artifact(slot, self.config.policy, Expectation(spec.model, spec.version, self.config.profile,
                                                              state.minimum_counter))  # fmt: skip
        crash_point("switch")
        slots.switch(slot, Trial(spec.version, self.clock(), int(marker.get("minimumCounter", 0))))
        crash_point("after-switch")
        if self.on_switch is not None:
            self.on_switch(spec.model)

    def _fail(self, slots: ModelSlots, spec: Desired, generation: int, step: Step) -> Step:
        self._retries.pop(spec.model, None)
        slots.record_failure({"version": spec.version, "generation": generation, "phase": str(step.phase),
                              "reason": step.reason, "message": step.message})  # fmt: skip
        return step

    def _retry(self, spec: Desired, generation: int, reason: str, message: str) -> Step:
        key = (spec.version, generation)
        previous = self._retries.get(spec.model)
        attempts = previous[1] + 1 if previous is not None and previous[0] == key else 1
        at = self.clock() + retry_delay(attempts, random.random())
        self._retries[spec.model] = (key, attempts, at)
        return after_fetch(Outcome.TRANSIENT, reason, f"{_shorten(message)}; attempt {attempts}, next at "
                           f"{at.isoformat(timespec='seconds')}", True)  # fmt: skip

    def _download(self, slots: ModelSlots, spec: Desired, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        fetcher = None
        if self.http is not None:
            self.downloader.http = self.http()
            fetcher = PoolFetcher(self.downloader.http)
        updater = ArtifactUpdater(self.data_dir / "tuf", self.config.repository_url, self.config.trusted_root,
                                  fetcher=fetcher)  # fmt: skip
        scratch = self.data_dir / "scratch"
        shutil.rmtree(scratch, ignore_errors=True)
        targets = updater.artifact_targets(spec.model, spec.version, self.config.profile, scratch, slots.copy_local)
        self.transfer = "full"
        local = 0
        for target in targets:
            # A file already on the device (a kept version, the other slot) with the signed length and sha256.
            if slots.copy_local(target.name, target.length, target.sha256, staging / target.name) is not None:
                local += 1
                continue
            if self.config.deltas and target.name.startswith("model.") and self._try_delta(spec, target, staging):
                continue
            done = self.downloader.fetch(target.url, target.length, target.sha256, staging / target.name)
            self.bytes_transferred += done.transferred
        if local == len(targets):
            self.transfer = "local"

    def _try_delta(self, spec: Desired, target, staging: Path) -> bool:
        """Rebuild ``target`` from the installed file of the same name and a delta; True when it worked.
        The result must have the signed sha256 like any download; a failure falls back to the full file."""
        active = ModelSlots(self.data_dir, spec.model).active_dir()
        base = active / target.name if active is not None else None
        if base is None or not base.is_file():
            return False
        base_bytes = base.read_bytes()
        base_digest = hashlib.sha256(base_bytes).hexdigest()
        controller = self.config.repository_url.rstrip("/").removesuffix("/tuf")
        url = f"{controller}/artifacts/delta/{base_digest}/{target.sha256}"
        try:
            response = self.downloader.http.request("GET", url, timeout=self.config.download.timeout_seconds,
                                                    preload_content=False)  # fmt: skip
            try:
                if response.status != 200:
                    raise DownloadError(f"no delta offered (HTTP {response.status})")
                delta = response.read(target.length + 1)
            finally:
                response.release_conn()
            self.bytes_transferred += len(delta)
            if len(delta) > target.length:
                raise DownloadError("the delta is larger than the file")
            rebuilt = apply_delta(base_bytes, delta, target.length)
            if hashlib.sha256(rebuilt).hexdigest() != target.sha256:
                raise DownloadError("the rebuilt file does not match the signed sha256")
        except Exception as exc:  # any failure of the delta path: the full file is the answer
            self.transfer = f"delta failed ({str(exc)[:120]}), full download"
            if not self.config.full_fallback:
                raise DownloadError(f"delta failed and full downloads are disabled: {exc}") from exc
            return False
        (staging / target.name).write_bytes(rebuilt)
        self.transfer = f"delta ({len(delta)} of {target.length} bytes)"
        return True

    def _report(self, spec: Desired, status: AssignmentStatus) -> AssignmentStatus:
        if figures := self._training_figures.get(spec.model):
            status = replace(status, extra={**status.extra, **figures})
        last = self._reported.get(spec.model)
        now = time.monotonic()
        if last is None or last[0] != status or now - last[1] >= self.config.heartbeat_seconds:
            self.backend.report_status(self.config.device, spec.model, status)
            self._reported[spec.model] = (status, now)
            if last is None or last[0] != status:
                log.info("status", extra={"model": spec.model, "phase": status.phase, "reason": status.reason})
        return status
