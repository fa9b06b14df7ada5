"""One simulated device: the agent's side of the device API conversation, with the model's work replaced.

What is real: the device's key and certificate (enrolled with a one-time token through :class:`DeviceClient`), mutual
TLS on every call, the assignments (If-None-Match), the phase reports the agent would send (its phase machine's
``after_fetch`` and retry backoff), the artifact bytes (Range, If-Range, resumed after a cut, each file's signed
sha256 checked), the telemetry summaries. The signed metadata behind those sha256s comes from a real TUF refresh and
a real ``verify_artifact`` of the release (:class:`Catalog`): every worker process does that once per artifact,
and a sampled share of the devices does it for itself. What is modelled (:mod:`.faults`): install and health-check
time, inference latency, the health check's verdict, and the faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import ssl
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import urllib3

from reconciler.agent.agent import TRIAL_END_MARGIN_SECONDS
from reconciler.agent.download import DownloadConfig
from reconciler.agent.phases import DEFAULT_TRIAL, Outcome, Phase, after_fetch, retry_delay
from reconciler.agent.telemetry import LATENCY_BUCKETS_MS, Summary
from reconciler.cluster import AssignmentStatus
from reconciler.cluster.backend import spec_from_json
from reconciler.deviceapi import protocol
from reconciler.deviceapi.client import DeviceClient
from reconciler.errors import TemporaryError
from reconciler.plan import Desired
from reconciler.signing import Expectation, RefusedError, TrustPolicy, verify_artifact
from reconciler.signing.tuf_client import ArtifactUpdater, PoolFetcher, TargetDownload

from .faults import HARDWARE, Defect, Faults, Hardware, Traits, offline_periods

TRANSIENT_REFUSALS = frozenset({"Frozen", "Expired", "Rollback", "MixAndMatch", "UnknownTarget"})
"""TUF refusals an agent retries (``reconciler.agent.agent``): the same here."""
CHUNK = 64 * 1024


class Unreachable(Exception):
    """No answer, a cut, a 5xx or 429: the device tries again later, as an agent does."""


class Refused(Exception):
    """A 4xx: counted (a simulated device is never meant to be refused) and tried again later."""


class Crashed(Exception):
    """The device lost power mid-install."""


@dataclass
class Recorder:
    """What one worker process saw: phase events, request latencies, counters, unexpected errors."""

    events: list[tuple[float, str, str, str, str]] = field(default_factory=list)
    """(time, device, model, version, phase) for every phase a device reported (and acknowledged)."""
    latency_ms: dict[str, list[float]] = field(default_factory=dict)
    counters: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    """Devices that left for good (not counted in the converged population)."""
    acknowledged: dict[str, tuple[str, str, str | None]] = field(default_factory=dict)
    """"device/model" -> (phase, target version, installed version) of the last report the device API accepted:
    what the controller's record must say at the end (a lost report would show as a difference)."""
    anchor: float | None = None
    """Loop time when the rollout was committed (churn is timed from it); None before."""

    def time(self, kind: str, milliseconds: float) -> None:
        self.latency_ms.setdefault(kind, []).append(round(milliseconds, 3))

    def error(self, text: str) -> None:
        self.counters["errors"] += 1
        if len(self.errors) < 50:
            self.errors.append(text[:400])


@dataclass(frozen=True)
class Settings:
    """What every device of a scenario shares."""

    url: str
    ca_file: Path
    identities: Path
    trusted_root: bytes
    policy: TrustPolicy
    faults: Faults = field(default_factory=Faults)
    defects: tuple[Defect, ...] = ()
    seed: int = 0
    poll_seconds: float = 30.0
    heartbeat_seconds: float = 60.0
    telemetry_seconds: float = 120.0
    requests_per_second: float = 2.0
    """Inference requests a device serves (what its telemetry counts)."""
    verify_share: float = 0.01
    """Devices that do the whole TUF refresh and release verification themselves (at least one per artifact
    and worker process does)."""
    horizon_seconds: float = 3600.0
    downloads: bool = True
    """False: devices report every phase but fetch no bytes and check nothing (the controller and the device
    API's polling are what is measured)."""
    preinstalled: tuple[tuple[str, str], ...] = ()
    """(model, version) each device runs from the start (its factory image): assigned that version, it reports
    Healthy without a download, as a fleet that ran the stable version before the rollout does."""

    def hardware(self, profile: str) -> Hardware:
        return HARDWARE.get(profile, HARDWARE["arm-cortex-a-cpu"])


@dataclass
class ModelState:
    """A model on one device: what it serves, what it tried, what it told the controller last."""

    active: str | None = None
    previous: str | None = None
    trial_until: float | None = None
    """Loop time the version on trial passes it (the agent wakes then: ``Agent.trial_ends_in``)."""
    failed: dict[tuple[str, int], AssignmentStatus] = field(default_factory=dict)
    retry: tuple[tuple[str, int], int, float] | None = None
    """((version, generation), attempts, when the next attempt is due, loop time)."""
    reported: tuple[AssignmentStatus, float] | None = None


class Catalog:
    """An artifact's files as TUF vouches for them, per (model, version, profile), found once per worker by a
    device doing the real checks; devices in the verified share do them again for themselves."""

    def __init__(self, settings: Settings, recorder: Recorder) -> None:
        self.settings, self.recorder = settings, recorder
        self._known: dict[tuple[str, str, str], asyncio.Future[list[TargetDownload]]] = {}

    async def targets(self, device: SimDevice, spec: Desired, own: bool) -> tuple[list[TargetDownload], bool]:
        """(the files, whether this device fetched them already in its own check)."""
        key = (spec.model, spec.version, spec.profile)
        known = self._known.get(key)
        if known is not None and known.done() and known.exception() is not None:
            del self._known[key]  # a failed refresh is not remembered: the next device tries again
            known = None
        if not own and known is not None:
            return await asyncio.shield(known), False
        check = asyncio.ensure_future(asyncio.to_thread(self._verify, device.client, spec, device.profile,
                                                        device.scratch))  # fmt: skip
        if known is None:
            self._known[key] = check
        targets = await check
        self.recorder.counters["fullChecks"] += 1
        return targets, True

    def _verify(self, client: DeviceClient, spec: Desired, profile: str, scratch: Path) -> list[TargetDownload]:
        """The agent's checks: a TUF refresh from the device's own trusted metadata, the artifact's files through
        ngclient (length and sha256), then the release's signature, profile and counter (``verify_artifact``)."""
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)
        updater = ArtifactUpdater(scratch / "tuf", client.repository_url, self.settings.trusted_root,
                                  fetcher=PoolFetcher(client.pool))  # fmt: skip
        folder = updater.fetch_artifact(spec.model, spec.version, spec.profile, scratch / "artifact")
        verify_artifact(folder, self.settings.policy, Expectation(spec.model, spec.version, profile))
        targets = updater.artifact_targets(spec.model, spec.version, spec.profile, scratch / "manifest")
        shutil.rmtree(scratch, ignore_errors=True)
        return targets


class SimDevice:
    def __init__(self, name: str, token: str, profile: str, traits: Traits, settings: Settings,
                 session: aiohttp.ClientSession, catalog: Catalog, recorder: Recorder) -> None:  # fmt: skip
        self.name, self.profile, self.traits, self.settings = name, profile, traits, settings
        self.session, self.catalog, self.recorder = session, catalog, recorder
        self.client = DeviceClient(settings.url, name, settings.identities / name / "identity", settings.ca_file,
                                   token=token)  # fmt: skip
        self.scratch = settings.identities / name / "scratch"
        self.rng = random.Random(f"{settings.seed}:{name}:run")
        self.models: dict[str, ModelState] = {}
        self.partial: dict[str, tuple[int, Any]] = {}
        """sha256 -> (bytes received, running hash) of a cut download (lost in a crash)."""
        self.context: ssl.SSLContext | None = None
        self.etag: str | None = None
        self.assignments: dict[str, tuple[Desired, int]] = {}
        self.crashed = False
        self.started = 0.0
        self.offline: list[tuple[float, float]] = []
        self.next_telemetry = 0.0
        self.own_checks = self.rng.random() < settings.verify_share

    @property
    def hardware(self) -> Hardware:
        return self.settings.hardware(self.profile)

    # --- the loop ------------------------------------------------------------------------------------

    async def live(self, stop: asyncio.Event, enrolment: asyncio.Semaphore) -> None:
        """Join (maybe late), enrol, then poll and converge until ``stop`` (or the device leaves)."""
        loop = asyncio.get_running_loop()
        if await _sleep_or_stop(stop, self.traits.joins_after + self.rng.uniform(0, 2.0)):
            return
        attempts = 0
        while True:  # as the agent: an unreachable device API is tried again with backoff, a refusal is final
            async with enrolment:
                try:
                    await asyncio.to_thread(self.enrol)
                    break
                except TemporaryError:
                    attempts += 1
                    self.recorder.counters["enrolRetries"] += 1
                except Exception as exc:  # counted and reported; the device never joins
                    self.recorder.error(f"{self.name}: enrolment refused: {type(exc).__name__}: {exc}")
                    return
            if await _sleep_or_stop(stop, self.settings.poll_seconds * self.rng.uniform(0.5, 1.5)):
                return  # the agent tries again at its next cycle
        self.recorder.counters["enrolled"] += 1
        self.started = loop.time()
        if self.traits.offline:
            self.offline = offline_periods(self.name, self.settings.seed, self.settings.faults.offline_seconds,
                                           self.settings.horizon_seconds)  # fmt: skip
        self.next_telemetry = self.started + self.rng.uniform(0, self.settings.telemetry_seconds)
        if await _sleep_or_stop(stop, self.rng.uniform(0, self.settings.poll_seconds)):
            return
        while not stop.is_set():
            anchor = self.recorder.anchor
            if self.traits.leaves_after is not None and anchor is not None and \
                    loop.time() - anchor >= self.traits.leaves_after:  # fmt: skip
                self.recorder.counters["left"] += 1
                self.recorder.left.append(self.name)
                return
            try:
                await self.cycle()
            except Crashed:  # what a restarted agent has: its slots on disk, nothing it held in memory
                self.recorder.counters["crashes"] += 1
                self.crashed = True
                self.partial.clear()
                self.etag, self.assignments = None, {}
                for state in self.models.values():
                    state.reported, state.retry = None, None
                if await _sleep_or_stop(stop, self.settings.faults.restart_seconds):
                    return
                continue
            except (Unreachable, Refused):
                pass
            except Exception as exc:  # a defect of the simulator: counted, the device goes on
                self.recorder.error(f"{self.name}: {type(exc).__name__}: {exc}")
            wait = self.settings.poll_seconds * self.rng.uniform(0.8, 1.2)
            trials = [s.trial_until for s in self.models.values() if s.trial_until is not None]
            if trials:  # as the agent: awake when a trial ends, not at the next poll
                wait = min(wait, max(0.0, min(trials) - loop.time()) + TRIAL_END_MARGIN_SECONDS)
            if await _sleep_or_stop(stop, wait):
                return

    def enrol(self) -> None:
        """A key and a CSR, the one-time token spent (the agent's own code path), and the TLS context after it."""
        self.client.ensure_identity()
        context = ssl.create_default_context(cafile=str(self.client.files.ca))
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        context.load_cert_chain(str(self.client.files.pem))
        self.context = context

    async def cycle(self) -> None:
        await self.poll()
        for _, (spec, generation) in sorted(self.assignments.items()):
            if spec.device == self.name and not spec.benchmark:
                await self.converge(spec, generation)
        if asyncio.get_running_loop().time() >= self.next_telemetry:
            self.next_telemetry += self.settings.telemetry_seconds
            await self.send_telemetry()

    async def poll(self) -> None:
        headers = {"If-None-Match": self.etag} if self.etag else {}
        status, answer_headers, body = await self.call("assignments", "GET", protocol.ASSIGNMENTS, headers=headers)
        if status == 304:
            return
        listing = protocol.Assignments.model_validate_json(body)
        self.assignments = {a.model: (spec_from_json(a.spec), a.generation) for a in listing.assignments}
        self.etag = answer_headers.get("ETag")

    # --- one model -----------------------------------------------------------------------------------

    async def converge(self, spec: Desired, generation: int) -> None:
        state = self.models.get(spec.model)
        if state is None:
            state = self.models[spec.model] = ModelState(active=dict(self.settings.preinstalled).get(spec.model))
        now = asyncio.get_running_loop().time()
        if spec.version == state.active:
            phase = Phase.HEALTHY
            if state.trial_until is not None:
                if now >= state.trial_until:
                    state.trial_until = None
                else:
                    phase = Phase.TRIAL
            await self.report(spec, state, AssignmentStatus(str(phase), **self._base(state, spec, generation)))
            return
        key = (spec.version, generation)
        if key in state.failed:
            await self.report(spec, state, state.failed[key])
            return
        if state.retry is not None and state.retry[0] == key and now < state.retry[2]:
            if state.reported is not None:  # still Retrying: the heartbeat keeps the device from looking offline
                await self.report(spec, state, state.reported[0])
            return
        await self.fetch(spec, generation, state)

    async def fetch(self, spec: Desired, generation: int, state: ModelState) -> None:
        """Downloading -> Verifying -> Installing -> Testing -> Trial (or Failed, or Retrying), each reported."""
        base = self._base(state, spec, generation)
        hardware = self.hardware
        slow = self.settings.faults.slow_factor if self.traits.slow else 1.0
        try:
            await self.report(spec, state, AssignmentStatus("Downloading", **base))
            targets, fetched = (
                await self.catalog.targets(self, spec, self.own_checks) if self.settings.downloads else ([], True)
            )
            for target in targets:
                if fetched:
                    self.recorder.counters["bytesDownloaded"] += target.length
                else:
                    await self.download(target)
            await self.report(spec, state, AssignmentStatus("Verifying", **base))
            await self.report(spec, state, AssignmentStatus("Installing", **base))
            if self.traits.crash and not self.crashed:
                await asyncio.sleep(self.rng.uniform(0, hardware.install_seconds * slow))
                raise Crashed()
            await asyncio.sleep(hardware.install_seconds * slow)
            await self.report(spec, state, AssignmentStatus("Testing", **base))
            await asyncio.sleep(hardware.test_seconds * slow)
        except RefusedError as refused:
            if str(refused.reason) in TRANSIENT_REFUSALS:
                return await self.retry(spec, generation, state, str(refused.reason), refused.message)
            step = after_fetch(Outcome.REFUSED, str(refused.reason), refused.message, True)
            return await self.fail(spec, generation, state, step.reason, step.message)
        except (Unreachable, TemporaryError, OSError, urllib3.exceptions.HTTPError) as exc:  # as the agent retries
            return await self.retry(spec, generation, state, "DownloadFailed", str(exc) or type(exc).__name__)
        state.retry = None
        defect = next((d for d in self.settings.defects if d.version == spec.version), None)
        if defect is not None and self.traits.draw < defect.rate:
            message = (f"{spec.version} failed its health check: golden outputs differ (simulated defect); "
                       f"still serving {state.active or 'nothing'}")  # fmt: skip
            step = after_fetch(Outcome.UNHEALTHY, "", message, True)
            return await self.fail(spec, generation, state, step.reason, step.message)
        state.previous, state.active = state.active, spec.version
        trial = spec.trial.seconds if spec.trial and spec.trial.seconds is not None else None
        state.trial_until = asyncio.get_running_loop().time() + (trial if trial is not None else
                                                                  DEFAULT_TRIAL.total_seconds())  # fmt: skip
        step = after_fetch(Outcome.PASSED, "", "health check: golden outputs match (simulated)", True)
        await self.report(spec, state, AssignmentStatus(str(step.phase), message=step.message,
                                                        **self._base(state, spec, generation)))  # fmt: skip

    async def retry(self, spec: Desired, generation: int, state: ModelState, reason: str, message: str) -> None:
        key = (spec.version, generation)
        attempts = state.retry[1] + 1 if state.retry is not None and state.retry[0] == key else 1
        delay = retry_delay(attempts, self.rng.random()).total_seconds()
        state.retry = (key, attempts, asyncio.get_running_loop().time() + delay)
        self.recorder.counters["retries"] += 1
        status = AssignmentStatus("Retrying", reason=reason, message=f"{message[:300]}; attempt {attempts}",
                                  extra={"attempts": attempts}, **self._base(state, spec, generation))  # fmt: skip
        with contextlib.suppress(Unreachable, Refused):  # reported at the next cycle
            await self.report(spec, state, status)

    async def fail(self, spec: Desired, generation: int, state: ModelState, reason: str, message: str) -> None:
        state.retry = None
        status = AssignmentStatus("Failed", reason=reason, message=message, **self._base(state, spec, generation))
        state.failed[(spec.version, generation)] = status
        await self.report(spec, state, status)

    def _base(self, state: ModelState, spec: Desired, generation: int) -> dict:
        return {"installed_version": state.active, "previous_version": state.previous,
                "observed_generation": generation, "target_version": spec.version}  # fmt: skip

    # --- the wire ------------------------------------------------------------------------------------

    async def report(self, spec: Desired, state: ModelState, status: AssignmentStatus) -> None:
        """As the agent reports: on every change, and unchanged once per heartbeat."""
        now = asyncio.get_running_loop().time()
        last = state.reported
        if last is not None and last[0] == status and now - last[1] < self.settings.heartbeat_seconds:
            return
        await self.call("status", "PUT", protocol.STATUS.format(model=spec.model), body=status.to_json())
        state.reported = (status, now)
        self.recorder.acknowledged[f"{self.name}/{spec.model}"] = (status.phase, status.target_version or "",
                                                                   status.installed_version)  # fmt: skip
        if last is None or last[0].phase != status.phase or last[0].target_version != status.target_version:
            self.recorder.events.append((time.time(), self.name, spec.model, spec.version, status.phase))

    async def send_telemetry(self) -> None:
        """One summary per served model: the interval's requests, their latency on the agent's buckets."""
        interval = self.settings.telemetry_seconds
        for model, state in sorted(self.models.items()):
            if state.active is None:
                continue
            slow = self.settings.faults.slow_factor if self.traits.slow else 1.0
            requests = max(1, int(self.rng.gauss(interval * self.settings.requests_per_second, 3)))
            samples = np.random.default_rng(self.rng.getrandbits(32)).lognormal(
                np.log(self.hardware.latency_ms * slow), self.hardware.latency_sigma, min(requests, 256)
            )
            counts = np.bincount(np.searchsorted(LATENCY_BUCKETS_MS, samples, side="left"),
                                 minlength=len(LATENCY_BUCKETS_MS)) * (requests / len(samples))  # fmt: skip
            summary = Summary(model, state.active, self.name, {}, 0, requests=requests,
                              latency=[int(c) for c in counts])  # fmt: skip
            summary.requests = sum(summary.latency)
            body = summary.to_json(with_sketches=False)
            ended = datetime.now(UTC) + timedelta(seconds=self.traits.skew_seconds)
            body["ended"] = ended.isoformat(timespec="seconds")
            try:
                _, _, answer = await self.call("telemetry", "POST", protocol.TELEMETRY, body=body)
            except (Refused, Unreachable):  # an agent keeps it queued; here it is counted as not delivered
                self.recorder.counters["summariesUndelivered"] += 1
                continue
            accepted = json.loads(answer or b"{}")
            if accepted.get("accepted") == 1:
                self.recorder.counters["summaries"] += 1
            else:
                self.recorder.counters[f"summariesNotStored:{accepted.get('reason', '?')}"] += 1

    async def call(self, kind: str, method: str, path: str, body: dict | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:  # fmt: skip
        """One request over the device's own mutual-TLS connection, timed; 5xx, 429 and no answer are Unreachable,
        other 4xx Refused (counted with the reason)."""
        await self.online()
        started = time.perf_counter()
        try:
            async with self.session.request(method, self.settings.url + path, json=body, headers=headers,
                                            ssl=self.context) as answer:  # fmt: skip
                data = await answer.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.recorder.counters["unanswered"] += 1
            raise Unreachable(f"{method} {path}: {type(exc).__name__}") from None
        self.recorder.time(kind, (time.perf_counter() - started) * 1000)
        if answer.status == 429 or answer.status >= 500:
            self.recorder.counters[f"http{answer.status}"] += 1
            raise Unreachable(f"{method} {path}: {answer.status}")
        if answer.status >= 400:
            self.recorder.counters[f"refused:{kind}:{answer.status}"] += 1
            self.recorder.error(f"{self.name}: {method} {path}: {answer.status} {data[:200].decode('replace')}")
            raise Refused(f"{method} {path}: {answer.status}")
        return answer.status, answer.headers, data

    async def download(self, target: TargetDownload) -> None:
        """A file of the artifact, as the agent's downloader fetches it: attempts resume where the last one was cut
        (Range with If-Range on the signed sha256), with its backoff between them; the bytes must hash to the
        signed sha256."""
        config = DownloadConfig()
        for attempt in range(config.attempts):
            try:
                return await self._download_once(target)
            except Unreachable as exc:
                failure = str(exc)
                delay = min(config.max_backoff_seconds, config.backoff_seconds * 2**attempt)
                await asyncio.sleep(self.rng.uniform(0, delay))
        raise Unreachable(f"{target.url}: gave up after {config.attempts} attempts: {failure}")

    async def _download_once(self, target: TargetDownload) -> None:
        """One attempt: a flaky link cuts it part-way (what was received is kept), a capped one paces it."""
        await self.online()
        offset, digest = self.partial.pop(target.sha256, (0, hashlib.sha256()))
        headers = {"Range": f"bytes={offset}-", "If-Range": f'"{target.sha256}"'} if offset else {}
        cut_at = None
        if self.traits.flaky and target.length - offset > 2 and self.rng.random() < self.settings.faults.cut_chance:
            cut_at = offset + self.rng.randint(1, target.length - offset - 1)
        started = time.perf_counter()
        try:
            async with self.session.get(target.url, headers=headers, ssl=self.context) as answer:
                if answer.status == 200:
                    offset, digest = 0, hashlib.sha256()
                elif answer.status != 206:
                    raise Unreachable(f"GET {target.url}: {answer.status}")
                else:
                    self.recorder.counters["resumed"] += 1
                async for chunk in answer.content.iter_chunked(CHUNK):
                    if cut_at is not None and offset + len(chunk) >= cut_at:
                        kept = chunk[: cut_at - offset]
                        digest.update(kept)
                        self.partial[target.sha256] = (cut_at, digest)
                        self.recorder.counters["bytesDownloaded"] += len(kept)
                        self.recorder.counters["cuts"] += 1
                        answer.close()
                        raise Unreachable(f"the link dropped after {cut_at} of {target.length} bytes")
                    digest.update(chunk)
                    offset += len(chunk)
                    self.recorder.counters["bytesDownloaded"] += len(chunk)
                    if self.traits.bandwidth:
                        await asyncio.sleep(len(chunk) / self.traits.bandwidth)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.recorder.counters["unanswered"] += 1
            raise Unreachable(f"GET {target.url}: {type(exc).__name__}") from None
        self.recorder.time("download", (time.perf_counter() - started) * 1000)
        if offset != target.length or digest.hexdigest() != target.sha256:
            self.recorder.counters["badDownloads"] += 1
            raise Unreachable(f"{target.name}: {offset} bytes that do not hash to the signed sha256")

    async def online(self) -> None:
        """Wait out the offline period the device is in, if any."""
        if not self.offline:
            return
        elapsed = asyncio.get_running_loop().time() - self.started
        for start, end in self.offline:
            if start <= elapsed < end:
                self.recorder.counters["offlinePeriods"] += 1
                await asyncio.sleep(end - elapsed)
                return
            if start > elapsed:
                return


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` unless ``stop`` comes first; True when it did."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))
        return True
    except TimeoutError:
        return False
