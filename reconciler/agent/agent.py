"""The edge agent: converge one device to its assignments, safely.

Who calls it: ``edgectl agent`` (a DaemonSet pod on K3s, or a plain process with the local backend). For
each model assigned to the device, one cycle goes:

    Downloading  TUF refresh (fresh, consistent, signed metadata), then every file resumably, each checked
                 against the signed length and sha256
    Verifying    verify_artifact: the owner's release signature, the files, this device's profile, the
                 release counter not below the highest minimum this device has seen
    Installing   copy into the inactive slot, fsynced
    Testing      golden vectors in the real runtime, latency against the limit
    Healthy      the ``active`` link switched atomically; the previous slot kept for rollback

A refusal or a failed health check leaves the active slot as it was (the device keeps serving the model it
had) and is reported with its reason (Failed, or RolledBack when a new version failed its health check);
the same spec is not retried until the controller changes it, so a bad artifact cannot loop a device.
Transport failures are retried on the next cycle, resuming partial files. :meth:`Agent.run` is the loop: a
device far from anyone must keep serving and keep trying, so a failure to reach the cluster or the
controller (either kind of :mod:`reconciler.errors`) never ends it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import urllib3

from reconciler.artifact.delta import apply_delta
from reconciler.cluster import AssignmentStatus
from reconciler.durable import write_atomic
from reconciler.errors import PermanentError, TemporaryError
from reconciler.plan import Desired
from reconciler.signing import Expectation, FetchError, RefusedError, TrustPolicy, verify_artifact
from reconciler.signing.tuf_client import ArtifactUpdater, PoolFetcher

from .download import DownloadConfig, Downloader, DownloadError
from .health import health_check
from .slots import ModelSlots

log = logging.getLogger("edge_reconciler.agent")


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


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        backend,
        on_switch: Callable[[str], object] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        http: Callable[[], urllib3.PoolManager] | None = None,
    ) -> None:
        """``on_switch(model)`` runs right after a new slot became active (the model server reloads there);
        ``clock`` is read once per model and cycle (maintenance windows), so tests control time; ``http`` gives
        the connections for TUF metadata and artifacts (the device API's, with this device's certificate; asked
        again for every download, since a certificate rotation replaces them)."""
        self.config = config
        self.clock = clock
        self.backend = backend
        self.on_switch = on_switch
        self.http = http
        self.data_dir = Path(config.data_dir)
        self.downloader = Downloader(self.data_dir / "partial", config.download)
        self.bytes_transferred = 0
        self.transfer = "none"
        """How the last artifact came: full, delta, or delta failed then full (reported in status)."""
        self._reported: dict[str, tuple[AssignmentStatus, float]] = {}

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
            stop.wait(wait)

    def cycle(self) -> dict[str, AssignmentStatus]:
        """Converge every assignment of this device once; returns the status reported per model."""
        self.backend.sync(inventory=False)
        reports = {}
        for model, (spec, generation) in sorted(self.backend.assignments_for(self.config.device).items()):
            reports[model] = self.converge(spec, generation)
        return reports

    def converge(self, spec: Desired, generation: int) -> AssignmentStatus:
        slots = ModelSlots(self.data_dir, spec.model)
        state = slots.state()
        base = {"installed_version": state.active_version, "previous_version": state.previous_version,
                "observed_generation": generation, "target_version": spec.version}  # fmt: skip
        if state.active_version == spec.version:
            return self._report(spec, AssignmentStatus("Healthy", **base))
        if spec.profile != self.config.profile:
            message = f"assigned the {spec.profile} build; this device is {self.config.profile}"
            return self._report(spec, AssignmentStatus("Failed", **base, reason="WrongProfile", message=message))
        failed = self._failed(slots, spec, generation)
        if failed is not None:
            return self._report(spec, failed)
        staged = self._staged(slots, spec)
        if staged is not None:
            return self._activate_staged(slots, spec, generation, staged, base)
        staging = self.data_dir / "staging" / spec.model
        try:
            self._report(spec, AssignmentStatus("Downloading", **base))
            self._download(spec, staging)
            self._report(spec, AssignmentStatus("Verifying", **base))
            expect = Expectation(spec.model, spec.version, self.config.profile, state.minimum_counter)
            verified = verify_artifact(staging, self.config.policy, expect)
            self._report(spec, AssignmentStatus("Installing", **base))
            slot = slots.stage(staging)
            self._report(spec, AssignmentStatus("Testing", **base))
            health = health_check(slot, verified.manifest, self.config.threads, self.config.max_latency_ms,
                                  max_memory_bytes=self.config.max_memory_bytes)  # fmt: skip
            if not health.passed:
                status = AssignmentStatus("RolledBack", **base, reason="HealthCheckFailed",
                                          message=f"{spec.version} failed its health check: {health.reason}; "
                                                  f"still serving {state.active_version or 'nothing'}")  # fmt: skip
                self._remember_failure(slots, spec, generation, status)
                return self._report(spec, status)
            if spec.window is not None and not spec.window.is_open(self.clock()):
                write_atomic(slots.root / "staged.json", json.dumps(
                    {"version": spec.version, "minimumCounter": verified.release.minimum_counter}
                ).encode())  # fmt: skip
                return self._report(
                    spec,
                    AssignmentStatus(
                        "Staged",
                        **base,
                        message=(
                            f"{spec.version} downloaded, verified and tested; switching in the maintenance window "
                            f"{','.join(spec.window.days)} {spec.window.start}-{spec.window.end} {spec.window.timezone}"
                        ),
                    ),
                )
            new = slots.activate(slot, verified.release.minimum_counter)
            (slots.root / "staged.json").unlink(missing_ok=True)
            if self.on_switch is not None:
                self.on_switch(spec.model)
            return self._report(spec, AssignmentStatus(
                "Healthy", installed_version=new.active_version, previous_version=new.previous_version,
                observed_generation=generation, target_version=spec.version, message=f"health check: {health.reason}",
                extra={"latencyP95Ms": round(health.latency_p95_ms, 3), "memoryBytes": health.memory_bytes,
                       "bytesTransferred": self.bytes_transferred,
                       "transfer": self.transfer},
            ))  # fmt: skip
        except RefusedError as refused:
            status = AssignmentStatus("Failed", **base, reason=str(refused.reason), message=refused.message)
            self._remember_failure(slots, spec, generation, status)
            return self._report(spec, status)
        except (FetchError, DownloadError, OSError) as exc:
            return self._report(spec, AssignmentStatus("Failed", **base, reason="DownloadFailed", message=str(exc)))
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _staged(self, slots: ModelSlots, spec: Desired) -> dict | None:
        """The marker of a version already staged in the inactive slot, when it is the one assigned now."""
        try:
            marker = json.loads((slots.root / "staged.json").read_text())
        except (OSError, ValueError):
            return None
        state = slots.state()
        if marker.get("version") == spec.version and state.versions.get(state.inactive) == spec.version:
            return marker
        return None

    def _activate_staged(self, slots: ModelSlots, spec: Desired, generation: int, marker: dict, base: dict):
        """Switch to the staged slot once the window opens; re-verified first (the disk may have changed)."""
        if spec.window is not None and not spec.window.is_open(self.clock()):
            return self._report(spec, AssignmentStatus("Staged", **base, message=f"{spec.version} staged; waiting "
                                                       "for the maintenance window"))  # fmt: skip
        slot = slots.slot(slots.state().inactive)
        try:
            verify_artifact(slot, self.config.policy, Expectation(spec.model, spec.version, self.config.profile,
                                                                  slots.state().minimum_counter))  # fmt: skip
        except RefusedError as refused:
            (slots.root / "staged.json").unlink(missing_ok=True)
            return self._report(spec, AssignmentStatus("Failed", **base, reason=str(refused.reason),
                                                       message=f"staged slot: {refused.message}"))  # fmt: skip
        new = slots.activate(slot, int(marker.get("minimumCounter", 0)))
        (slots.root / "staged.json").unlink(missing_ok=True)
        if self.on_switch is not None:
            self.on_switch(spec.model)
        return self._report(spec, AssignmentStatus(
            "Healthy", installed_version=new.active_version, previous_version=new.previous_version,
            observed_generation=generation, target_version=spec.version, message="switched in the maintenance window",
        ))  # fmt: skip

    def _download(self, spec: Desired, staging: Path) -> None:
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
        targets = updater.artifact_targets(spec.model, spec.version, self.config.profile, scratch)
        self.transfer = "full"
        for target in targets:
            if self.config.deltas and target.name.startswith("model.") and self._try_delta(spec, target, staging):
                continue
            done = self.downloader.fetch(target.url, target.length, target.sha256, staging / target.name)
            self.bytes_transferred += done.transferred

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

    def _failed(self, slots: ModelSlots, spec: Desired, generation: int) -> AssignmentStatus | None:
        try:
            record = json.loads((slots.root / "failed.json").read_text())
        except (OSError, ValueError):
            return None
        if record.get("version") == spec.version and record.get("generation") == generation:
            return AssignmentStatus.from_json(record["status"])
        return None

    def _remember_failure(self, slots: ModelSlots, spec: Desired, generation: int, status: AssignmentStatus) -> None:
        slots.root.mkdir(parents=True, exist_ok=True)
        record = {"version": spec.version, "generation": generation, "status": status.to_json()}
        write_atomic(slots.root / "failed.json", json.dumps(record).encode())

    def _report(self, spec: Desired, status: AssignmentStatus) -> AssignmentStatus:
        last = self._reported.get(spec.model)
        now = time.monotonic()
        if last is None or last[0] != status or now - last[1] >= self.config.heartbeat_seconds:
            self.backend.report_status(self.config.device, spec.model, status)
            self._reported[spec.model] = (status, now)
            if last is None or last[0] != status:
                log.info("status", extra={"model": spec.model, "phase": status.phase, "reason": status.reason})
        return status
