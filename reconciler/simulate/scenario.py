"""A scenario: a fleet repo, a real controller, N simulated devices, a rollout from its commit to its end.

What runs (only the devices are simulated):

1. the demo's fleet repo (``reconciler.demo``) with a rollout of vibration-anomaly 2.0.0 in three steps, merged;
   every simulated device is a US factory device of one of the two example profiles (two Cortex-A for one Coral)
   with a one-time token carrying its labels;
2. ``edgectl run`` (local backend, TUF repository, device API over mutual TLS, build workers with the demo's
   build cache), then the worker processes (:mod:`.worker`), whose devices enrol and converge;
3. the rollout to Succeeded: the time from its commit until 50/90/99 % of the devices are Healthy on 2.0.0;
4. unless ``defect`` is off, the owner's defective 2.1.0 (signed, released out of band, its health check failing
   on the devices) merged as the next rollout: it must abort, and the share of the fleet that was given it is
   measured.

The result is one JSON object (:meth:`Scenario.run`); everything stays in the work directory.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from reconciler.api.status import RolloutPhase, RolloutStatus
from reconciler.demo.scenario import MODEL, PROFILES, ROLLOUT, STATUS_BRANCH, Demo

from . import results
from .faults import Faults, draw
from .worker import WorkerConfig

ROLLOUT_TEXT = """\
# The simulator's rollout: three steps with pauses, a failure gate that a defect must trip at the first step.
apiVersion: edgereconciler.io/v1alpha1
kind: Rollout
metadata:
  name: vibration-anomaly-2
spec:
  model: vibration-anomaly
  version: "{version}"
  groups: [us-factories]
  steps:
    - percent: {first}
      pause: {{duration: {pause}s}}
      successThreshold: "{threshold}%"
    - percent: {second}
      pause: {{duration: {pause}s}}
      successThreshold: "{threshold}%"
    - percent: 100
      successThreshold: "{threshold}%"
  maxUnavailable: 10%
  progressDeadline: {progress_deadline}s
  offlineAfter: {offline_after}s
  trial: {{duration: {trial}s}}
  analysis:
    maxFailureRate: 0.05
    minDevicesReporting: 1
"""
STABLE, GOOD, DEFECTIVE = "1.0.0", "2.0.0", "2.1.0"
"""What the fleet runs before the rollout (each device's factory image), the rollout's version, the defect."""
CONVERGED_SHARES = (50, 90, 99)
CLUSTER_WRITERS = 8
"""Requests at once while the scenario makes Nodes and tokens on the API server."""


NODE_LABEL = "simulate.edgereconciler.io/fleet"
"""On the Kubernetes backend, every simulated device's Node carries this label with the namespace as its value:
the controller's node selector, and what the scenario deletes at the end."""


@dataclass(frozen=True)
class Cluster:
    """A Kubernetes API server for the fleet (the controller's ``--backend kubernetes``): each simulated device is
    a Node object there with its labels, as a K3s device that joined would be (kwok's way of simulating nodes);
    assignments, statuses, device identities and tokens are the controller's custom objects in ``namespace``."""

    kubeconfig: Path
    namespace: str = "edge-simulate"

    @property
    def node_selector(self) -> str:
        return f"{NODE_LABEL}={self.namespace}"


class ScenarioError(Exception):
    """The scenario cannot go on (a process died, a deadline passed); the message says where to look."""


class RolloutNotReached(ScenarioError):
    """A rollout did not reach the phase waited for in time, or ended in another phase."""


@dataclass(frozen=True)
class ScenarioConfig:
    devices: int = 1000
    processes: int = 2
    device_api_processes: int = 2
    """The controller's device API processes (``edgectl run --device-api-processes``); the Kubernetes backend has
    one."""
    faults: Faults = field(default_factory=Faults)
    seed: int = 0
    steps: tuple[int, int] = (2, 25)
    """The first two steps' percents (the third is 100 %)."""
    pause_seconds: int = 60
    trial_seconds: int = 30
    success_threshold: int = 95
    """Share of a step's devices that must be Healthy for the step to complete (the rest may be offline)."""
    poll_seconds: float = 30.0
    telemetry_seconds: float = 120.0
    controller_interval: float = 5.0
    defect: bool = True
    downloads: bool = True
    """False: devices fetch and check no bytes (the largest fleets: the controller and the polling are measured)."""
    unfinished_ok: bool = False
    """True: a rollout still running after ``timeout_seconds``, or ended otherwise than waited for (an abort the
    fleet's own saturation caused), is reported as it stands (the figures of a window) instead of failing the run;
    the defect is then skipped. For fleets whose rollout outlasts a benchmark."""
    enrol: str = "token"
    """"token": each device enrols through the device API with a one-time token; "issued": its certificate is
    issued before it starts (:meth:`Scenario.issue`), for fleets too large to enrol in the time of a run."""
    defect_rate: float = 1.0
    verify_share: float = 0.01
    timeout_seconds: float = 1800.0
    """Longest wait for each rollout's end."""
    settle_seconds: float = 120.0
    """After Succeeded, how long to wait for 99 % of the devices to converge (offline ones come back later)."""
    cluster: Cluster | None = None
    """None: the local backend (SQLite in the controller's state directory)."""

    def rollout(self, version: str) -> str:
        return ROLLOUT_TEXT.format(version=version, first=self.steps[0], second=self.steps[1],
                                   pause=self.pause_seconds, trial=self.trial_seconds,
                                   threshold=self.success_threshold,
                                   offline_after=int(self.offline_after),
                                   progress_deadline=int(self.progress_deadline))  # fmt: skip

    @property
    def progress_deadline(self) -> float:
        """The rollout's progressDeadline: past it a device still in progress counts as failed, so it must cover two
        polls (the one that brings the assignment, the one after the trial) and the trial, with room to spare."""
        return max(600.0, 2.4 * self.poll_seconds + self.trial_seconds + 120)

    @property
    def offline_after(self) -> float:
        """The rollout's offlineAfter: four heartbeats, and a heartbeat is sent at the first poll after it is due."""
        return max(120.0, 4 * self.poll_seconds)

    @property
    def heartbeat_seconds(self) -> float:
        return min(60.0, self.offline_after / 4)


def device_names(count: int) -> list[tuple[str, str]]:
    """(name, profile): two Cortex-A devices for every Coral one."""
    profiles = list(PROFILES)
    return [(f"sim-{i:06d}", profiles[0] if i % 3 else profiles[1]) for i in range(count)]


def labels_of(name: str, profile: str) -> dict[str, str]:
    index = int(name.rsplit("-", 1)[1])
    return {"acme.example/site-type": "factory", "topology.kubernetes.io/region": "us-east",
            "acme.example/network": "wifi" if index % 4 == 0 else "ethernet", **PROFILES[profile]}  # fmt: skip


@dataclass
class Watch:
    """What the scenario sampled while it waited: controller memory, the rollout's last status."""

    rss_bytes: list[int] = field(default_factory=list)
    helpers_rss_bytes: list[int] = field(default_factory=list)
    """The controller's device API helper processes, together."""
    status: RolloutStatus | None = None


class Scenario:
    def __init__(self, config: ScenarioConfig, workdir: Path | None, example: Path,
                 say: Callable[[str], None] = lambda _: None) -> None:  # fmt: skip
        self.config = config
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="edge-reconciler-simulate-")).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.say = say
        self.demo = Demo(self.workdir, example, say)
        self.workers: list[subprocess.Popen] = []
        self.watch = Watch()

    @property
    def stop_file(self) -> Path:
        return self.workdir / "simulate" / "stop"

    # --- running -------------------------------------------------------------------------------------

    def run(self) -> dict:
        """The whole scenario; returns the result (also written to ``simulate/result.json``). On a cluster, what it
        made there is removed at the end, whatever happened."""
        cluster = self.config.cluster
        if cluster is None:
            return self.run_fleet()
        self.prepare_cluster(cluster)  # refuses a namespace in use before anything is made
        try:
            self.make_nodes(cluster)
            return self.run_fleet()
        finally:
            self.remove_from_cluster(cluster)

    def run_fleet(self) -> dict:
        config = self.config
        (self.workdir / "simulate").mkdir(exist_ok=True)
        self.stop_file.unlink(missing_ok=True)
        started = committed = time.time()
        try:
            self.demo.create_repo(rollout=None)
            self.say(f"fleet repo without a rollout; controller and {config.devices} simulated devices in "
                     f"{config.processes} processes starting")  # fmt: skip
            self.demo.start_controller(devices=[], interval=config.controller_interval,
                                       backend_options=self.backend_options())  # fmt: skip
            self.start_workers(self.tokens())
            enrolled = self.wait_enrolled()
            self.say(f"{enrolled} devices enrolled and polling after {time.time() - started:.0f} s")
            self.demo.merge_rollout(config.rollout(GOOD), f"fleet: {MODEL} {GOOD} to the US factories")
            committed = time.time()
            (self.workdir / "simulate" / "committed").touch()
            self.say(f"the rollout of {MODEL} {GOOD} merged")
            try:
                good = self.wait_for(GOOD, RolloutPhase.SUCCEEDED, config.timeout_seconds)
            except RolloutNotReached:
                if not config.unfinished_ok or self.watch.status is None:
                    raise
                good = self.watch.status
            succeeded = time.time()
            self.say(f"{ROLLOUT} {GOOD} {good.phase} after {succeeded - committed:.0f} s")
            if good.phase == RolloutPhase.SUCCEEDED:
                self.settle()
            defect = None
            if config.defect and good.phase == RolloutPhase.SUCCEEDED:
                self.demo.release_defective(DEFECTIVE)
                self.demo.add_version(DEFECTIVE, GOOD, rollout=config.rollout(DEFECTIVE))
                defect_committed = time.time()
                self.say(f"the defective {DEFECTIVE} merged")
                defect = (defect_committed, self.wait_for(DEFECTIVE, RolloutPhase.ABORTED, config.timeout_seconds),
                          time.time())  # fmt: skip
                self.say(f"{ROLLOUT} {DEFECTIVE} Aborted after {defect[2] - defect_committed:.0f} s")
        finally:
            recorded = self.stop_workers()
            controller_metrics = self.controller_metrics()
            self.demo.stop()
        result = self.result(recorded, committed, good, succeeded, defect, controller_metrics)
        result["reportsLost"] = self.lost_reports(recorded)
        result["enrolSeconds"] = round(committed - started, 1)
        result["backend"] = "local" if config.cluster is None else "kubernetes"
        (self.workdir / "simulate" / "result.json").write_text(json.dumps(result, indent=2))
        return result

    def tokens(self) -> list[tuple[str, str, str]]:
        """A one-time token per device, carrying its labels: enrolment puts it in the inventory. With ``enrol``
        "issued", each device's certificate instead (and no token): see :meth:`issue`."""
        now = datetime.now(UTC)
        with self.registry() as registry:
            if self.config.enrol == "issued":
                return self.issue(registry, now)
            if self.config.cluster is not None:  # the Node carries the labels: the token names the device

                def token(name: str, profile: str) -> tuple[str, str, str]:
                    return name, registry.create_token(timedelta(hours=12), now, device=name), profile

                with ThreadPoolExecutor(CLUSTER_WRITERS) as pool:
                    return list(pool.map(lambda device: token(*device), device_names(self.config.devices)))
            return [(name, registry.create_token(timedelta(hours=12), now, labels=labels_of(name, profile)), profile)
                    for name, profile in device_names(self.config.devices)]  # fmt: skip

    def issue(self, registry, now: datetime) -> list[tuple[str, str, str]]:
        """What enrolment leaves behind, made here for a fleet too large to enrol one by one in the time of a
        benchmark: each device's key and fleet-CA certificate in its identity folder (the files the agent's
        client keeps), the certificate in the registry, the device in the inventory with its labels."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        from reconciler.cluster import LocalBackend
        from reconciler.deviceapi.ca import FleetCA
        from reconciler.deviceapi.client import IdentityFiles

        ca = FleetCA.load_or_create(self.demo.state / "ca")
        ca_pem = (self.demo.state / "ca" / "ca.crt").read_bytes()
        backend = LocalBackend(self.demo.state) if self.config.cluster is None else None  # else the Nodes have them
        try:
            for name, profile in device_names(self.config.devices):
                key = ec.generate_private_key(ec.SECP256R1())
                subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
                csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
                issued = ca.issue_device(csr.public_bytes(serialization.Encoding.PEM), name, timedelta(days=2), now)
                labels = labels_of(name, profile)
                registry.record_certificate(name, issued.serial_number, issued.not_valid_after_utc, labels, now)
                if backend is not None:
                    backend.register_device(name, labels)
                files = IdentityFiles(self.workdir / "devices" / name / "identity")
                files.directory.mkdir(parents=True, exist_ok=True)
                files.ca.write_bytes(ca_pem)
                private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption())  # fmt: skip
                files.pem.write_bytes(issued.public_bytes(serialization.Encoding.PEM) + private)
        finally:
            if backend is not None:
                backend.close()
        return [(name, "", profile) for name, profile in device_names(self.config.devices)]

    def start_workers(self, tokens: list[tuple[str, str, str]]) -> None:
        config = self.config
        folder = self.workdir / "simulate"
        identities = self.workdir / "devices"
        identities.mkdir(exist_ok=True)
        processes = max(1, min(config.processes, len(tokens)))
        for index in range(processes):
            worker = WorkerConfig(
                url=f"https://127.0.0.1:{self.demo.ports['device-api']}",
                ca_file=str(self.demo.state / "ca" / "ca.crt"), identities=str(identities),
                trusted_root=str(self.demo.state / "tuf" / "metadata" / "1.root.json"),
                fleet=str(self.demo.checkout), devices=tokens[index::processes], stop_file=str(self.stop_file),
                anchor_file=str(folder / "committed"), heartbeat_seconds=config.heartbeat_seconds,
                result_file=str(folder / f"worker-{index}.json"), faults=config.faults.to_json(),
                defects=[(DEFECTIVE, config.defect_rate)] if config.defect else [], seed=config.seed,
                poll_seconds=config.poll_seconds, telemetry_seconds=config.telemetry_seconds,
                verify_share=config.verify_share, downloads=config.downloads, preinstalled=[(MODEL, STABLE)],
                horizon_seconds=2 * config.timeout_seconds + 600,
            )  # fmt: skip
            path = worker.write(folder / f"worker-{index}.config.json")
            with (self.workdir / "logs" / f"simulate-{index}.log").open("ab") as log:
                command = [sys.executable, "-m", "reconciler.simulate.worker", str(path)]
                self.workers.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                                     start_new_session=True))  # fmt: skip

    def stop_workers(self) -> list[dict]:
        self.stop_file.parent.mkdir(parents=True, exist_ok=True)
        self.stop_file.touch()
        recorded = []
        for index, worker in enumerate(self.workers):
            try:
                worker.wait(timeout=120)
            except subprocess.TimeoutExpired:
                worker.kill()
            path = self.workdir / "simulate" / f"worker-{index}.json"
            if path.exists():
                recorded.append(json.loads(path.read_text()))
            else:  # its devices' figures are missing from the result: say so
                recorded.append({"events": [], "latencyMs": {}, "counters": {"workersLost": 1}, "left": [],
                                 "acknowledged": {}, "errors": [f"worker {index} left no recording; see "
                                                                f"logs/simulate-{index}.log"]})  # fmt: skip
        return recorded

    def lost_reports(self, recorded: list[dict]) -> int:
        """Devices whose last report the device API accepted is not what the controller's record says now."""
        with self.backend() as backend:
            stored = backend.statuses()
        lost = 0
        for worker in recorded:
            for key, (phase, target, installed) in worker["acknowledged"].items():
                device, model = key.split("/", 1)
                status = stored.get((device, model))
                if status is None or (status.phase, status.target_version or "", status.installed_version) != (
                        phase, target, installed):  # fmt: skip
                    lost += 1
        return lost

    def wait_for(self, version: str, phase: RolloutPhase, timeout: float) -> RolloutStatus:
        deadline = time.monotonic() + timeout
        said = ""
        while time.monotonic() < deadline:
            self.check_processes()
            status = self.sample()
            if status is not None and status.version == version:
                line = f"{status.phase} step {status.state.step + 1}/3, {status.ready[0]}/{status.ready[1]} healthy"
                if line != said:
                    self.say(f"  {ROLLOUT} {version}: {line}")
                    said = line
                if status.phase == phase:
                    return status
                if status.phase in (RolloutPhase.ABORTED, RolloutPhase.SUCCEEDED):
                    raise RolloutNotReached(f"{ROLLOUT} {version} ended {status.phase}, not {phase}: "
                                        f"{status.state.message}; see {self.workdir}/logs")  # fmt: skip
            time.sleep(2.0)
        raise RolloutNotReached(f"{ROLLOUT} {version} did not reach {phase} in {timeout:.0f} s; see "
                                f"{self.workdir}/logs")  # fmt: skip

    def wait_enrolled(self) -> int:
        """Until every device that joins at the start is in the inventory (enrolled), or the timeout: the rollout is
        measured on an enrolled fleet, as a real one is."""
        config = self.config
        deadline = time.monotonic() + config.timeout_seconds
        late = sum(1 for name, _ in device_names(config.devices) if draw(name, config.faults, config.seed).joins_after)
        expected = config.devices - late
        seen, since = -1, time.monotonic()
        while True:
            self.check_processes()
            with self.registry() as registry:
                enrolled = sum(1 for record in registry.devices() if record.serial is not None)
            if enrolled != seen:
                seen, since = enrolled, time.monotonic()
            # The last few may be waiting to try again (a timeout under the enrolment burst): 99 % and no news for
            # two polls is an enrolled fleet; they join as they come.
            stalled = enrolled >= 0.99 * expected and time.monotonic() - since > 2 * config.poll_seconds
            if enrolled >= expected or stalled or time.monotonic() > deadline:
                return enrolled
            time.sleep(2.0)

    def settle(self) -> None:
        """Wait (up to ``settle_seconds``) until 99 % of the devices reported Healthy on the good version: the last
        step completes at its success threshold, the stragglers come back from offline periods after it."""
        deadline = time.monotonic() + self.config.settle_seconds
        while time.monotonic() < deadline:
            with self.backend() as backend:
                healthy = sum(1 for status in backend.statuses().values()
                              if status.phase == "Healthy" and status.installed_version == GOOD)  # fmt: skip
            if healthy >= math.ceil(0.99 * self.config.devices):
                return
            self.check_processes()
            self.sample()
            time.sleep(2.0)

    # --- the backend -----------------------------------------------------------------------------------

    def backend_options(self) -> tuple[str, ...]:
        cluster = self.config.cluster
        if cluster is None:
            count = self.config.device_api_processes
            return ("--device-api-processes", str(count)) if count > 1 else ()
        return ("--backend", "kubernetes", "--kubeconfig", str(cluster.kubeconfig), "--namespace", cluster.namespace,
                "--node-selector", cluster.node_selector)  # fmt: skip

    @contextmanager
    def backend(self) -> Iterator:
        """The controller's backend as it stands now (the local one's file; the API server, read once)."""
        from reconciler.cluster import LocalBackend

        if self.config.cluster is None:
            with closing(LocalBackend(self.demo.state)) as local:
                yield local
            return
        with self.cluster() as remote:
            remote.sync()
            yield remote

    @contextmanager
    def registry(self) -> Iterator:
        """The device registry the controller's device API keeps (read fresh)."""
        cluster = self.config.cluster
        if cluster is None:
            from reconciler.deviceapi.registry import REGISTRY_FILE
            from reconciler.deviceapi.sqlite_registry import SQLiteRegistry

            with closing(SQLiteRegistry(self.demo.state / REGISTRY_FILE)) as local:
                yield local
            return
        from reconciler.deviceapi.kube_registry import KubernetesRegistry

        with self.cluster() as remote:
            yield KubernetesRegistry(remote.api, cluster.namespace, watch=False)

    @contextmanager
    def cluster(self) -> Iterator:
        """A backend on the scenario's cluster (no watches), its failures as :class:`ScenarioError`."""
        from reconciler.cluster import ClusterError, kubernetes_backend

        cluster = self.config.cluster
        assert cluster is not None
        try:
            backend = kubernetes_backend(cluster.kubeconfig, cluster.namespace, cluster.node_selector)
            try:
                yield backend
            finally:
                backend.api.close()
        except ClusterError as exc:
            raise ScenarioError(f"the cluster ({cluster.kubeconfig}): {exc}") from exc

    def prepare_cluster(self, cluster: Cluster) -> None:
        """The CRDs and the namespace. It must hold none of the controller's objects yet, and no Node may carry
        its label: an earlier run's rollout record or assignments would be taken as this one's."""
        with self.cluster() as backend:
            backend.install()
            found = [f"{count} {plural}" for plural, count in backend.namespace_objects().items() if count]
            backend.sync()
            nodes = len(backend.devices())
        if nodes:
            found.append(f"{nodes} nodes labelled {cluster.node_selector}")
        if found:
            raise ScenarioError(f"namespace {cluster.namespace} is in use ({', '.join(found)}): name another one")

    def make_nodes(self, cluster: Cluster) -> None:
        """A Node per device with its labels."""
        with self.cluster() as backend:
            backend.create_nodes({name: {**labels_of(name, profile), NODE_LABEL: cluster.namespace}
                                  for name, profile in device_names(self.config.devices)})  # fmt: skip
        self.say(f"{self.config.devices} Nodes labelled {cluster.node_selector} made")

    def remove_from_cluster(self, cluster: Cluster) -> None:
        """The Nodes and every object of the controller's kinds in the namespace (the namespace stays)."""
        with self.cluster() as backend:
            backend.delete_nodes(cluster.node_selector)
            backend.delete_namespace_objects()

    def check_processes(self) -> None:
        for process in [*self.demo.processes, *self.workers]:
            if process.poll() is not None:
                raise ScenarioError(f"a process exited early ({' '.join(map(str, process.args[2:5]))}); "
                                    f"see {self.workdir}/logs")  # fmt: skip

    def sample(self) -> RolloutStatus | None:
        """The rollout's status as committed to Git; the controller's resident memory."""
        from reconciler.api.status import StatusPaths
        from reconciler.deviceapi.processes import helper_pids
        from reconciler.gitops.source import branch_head, files_at_commit

        controller = self.demo.processes[0].pid
        rss = _rss_bytes(controller)
        if rss is not None:
            self.watch.rss_bytes.append(rss)
        helpers = [_rss_bytes(pid) or 0 for pid in helper_pids(controller)]
        if helpers:
            self.watch.helpers_rss_bytes.append(sum(helpers))
        head = branch_head(str(self.demo.remote), STATUS_BRANCH)
        if head is None:
            return None
        path = StatusPaths().rollout(ROLLOUT)
        content = next((f.content for f in files_at_commit(str(self.demo.remote), head) if f.path == path), None)
        if content is None:
            return None
        self.watch.status = RolloutStatus.from_yaml(content, ROLLOUT)
        return self.watch.status

    def controller_metrics(self) -> dict[str, float]:
        """Bytes the device API sent, by kind, from the controller's /metrics (before it stops)."""
        sent: dict[str, float] = {}
        try:
            url = f"http://127.0.0.1:{self.demo.ports['controller']}/metrics"
            with urllib.request.urlopen(url, timeout=10) as answer:
                text = answer.read().decode()
        except (OSError, KeyError):
            return sent
        for match in re.finditer(r'^edge_reconciler_device_api_sent_bytes_total\{kind="(\w+)"\} (\S+)$', text, re.M):
            sent[match[1]] = float(match[2])
        return sent

    # --- the result ----------------------------------------------------------------------------------

    def result(self, recorded: list[dict], committed: float, good: RolloutStatus, succeeded: float,
               defect: tuple[float, RolloutStatus, float] | None, sent: dict[str, float]) -> dict:  # fmt: skip
        config = self.config
        events = [tuple(e) for worker in recorded for e in worker["events"]]
        counters: Counter = Counter()
        latency: dict[str, list[float]] = {}
        errors: list[str] = []
        for worker in recorded:
            counters.update(worker["counters"])
            errors += worker["errors"]
            for kind, values in worker["latencyMs"].items():
                latency.setdefault(kind, []).extend(values)
        left = {name for worker in recorded for name in worker["left"]}
        population = counters["enrolled"] - len(left)
        converged = {device: seconds for device, seconds in results.converged_at(events, GOOD, committed).items()
                     if device not in left}  # type: ignore[arg-type]  # fmt: skip
        api = [v for kind in ("assignments", "status", "telemetry") for v in latency.get(kind, [])]
        cycles, controller_errors = self.controller_log(since=committed)
        log_errors = self.worker_log_errors()
        errors += log_errors
        lag = latency.pop("loopLag", [])
        result: dict = {
            "devices": config.devices,
            "enrolled": counters["enrolled"],
            "left": counters["left"],
            "processes": config.processes,
            "deviceApiProcesses": config.device_api_processes if config.cluster is None else 1,
            "enrolment": config.enrol,
            "seed": config.seed,
            "faults": config.faults.to_json(),
            "devicesWithFault": {k.split(":", 1)[1]: v for k, v in sorted(counters.items()) if k.startswith("fault:")},
            "verification": {
                "fullChecks": counters["fullChecks"],
                "share": config.verify_share,
                "downloads": config.downloads,
                "note": "full: TUF refresh, files through ngclient, release signature, profile and counter "
                "(verify_artifact), done once per artifact and worker and by the verified share of devices; "
                "every other device checks each downloaded file against the signed length and sha256",
            },
            "rollout": {
                "version": GOOD,
                "phase": str(good.phase),
                "seconds": round(succeeded - committed, 1),
                "converged": results.time_to_share(converged, population, CONVERGED_SHARES),
                "convergedDevices": len(converged),
                "population": population,
                "decisions": decisions(good, committed),
                "gates": [g.to_json() for g in good.gates],
            },
            "controller": {
                "cycles": len(cycles),
                "cycleSeconds": {
                    "p50": results.percentile(cycles, 50),
                    "p99": results.percentile(cycles, 99),
                    "max": max(cycles, default=None),
                },
                "rssBytes": max(self.watch.rss_bytes, default=None),
                "deviceApiHelpersRssBytes": max(self.watch.helpers_rss_bytes, default=None),
                "errors": controller_errors[:20],
                "errorCount": len(controller_errors),
            },
            "deviceApi": {
                "requests": len(api),
                "p50Ms": results.percentile(api, 50),
                "p99Ms": results.percentile(api, 99),
                "byKind": {kind: {"count": len(v), "p99Ms": results.percentile(v, 99)} for kind, v in latency.items()},
                "unanswered": counters["unanswered"],
                "http5xx": sum(v for k, v in counters.items() if k[:5] == "http5"),
                "rateLimited": counters["http429"],
                "workerLoopLagP99Ms": results.percentile(lag, 99),
                "refused": {k: v for k, v in counters.items() if k.startswith("refused:")},
            },
            "bytesServed": {
                "byKind": sent,
                "total": sum(sent.values()),
                "downloadedByDevices": counters["bytesDownloaded"],
            },
            "transfers": {k: counters[k] for k in ("cuts", "resumed", "retries", "crashes", "badDownloads")},
            "statusCommits": self.status_commits(),
            "deviceErrors": errors[:20],
            "deviceErrorCount": counters["errors"] + len(log_errors),
            "workersLost": counters["workersLost"],
            "telemetry": {
                "stored": counters["summaries"],
                "undelivered": counters["summariesUndelivered"],
                "notStored": {
                    k.split(":", 1)[1]: v for k, v in counters.items() if k.startswith("summariesNotStored:")
                },
            },
            "workdir": str(self.workdir),
        }
        if defect is not None:
            since, status, ended = defect
            given = results.exposed(events, DEFECTIVE, since)  # type: ignore[arg-type]
            failed = {e[1] for e in events if e[3] == DEFECTIVE and e[4] == "Failed"}
            result["defect"] = {
                "version": DEFECTIVE, "rate": config.defect_rate, "phase": str(status.phase),
                "seconds": round(ended - since, 1), "exposed": len(given),
                "exposedShare": round(len(given) / max(1, population), 4), "failed": len(failed),
                "decisions": decisions(status, since), "gates": [g.to_json() for g in status.gates],
            }  # fmt: skip
        result["timeline"] = self.timeline(events, committed)
        return result

    def timeline(self, events: list, committed: float) -> dict:
        end = max((e[0] for e in events), default=committed)
        step = max(2.0, (end - committed) / 300)
        return {"start": committed, "stepSeconds": step,
                "states": results.timeline(events, committed, end, step, GOOD)}  # fmt: skip

    def worker_log_errors(self) -> list[str]:
        """Anything the worker processes wrote (they log warnings and errors only): a traceback is a defect."""
        found = []
        for path in sorted((self.workdir / "logs").glob("simulate-*.log")):
            found += [f"{path.name}: {line[:300]}" for line in path.read_text(errors="replace").splitlines()
                      if line.startswith(("Traceback", "ERROR", "CRITICAL"))]  # fmt: skip
        return found

    def controller_log(self, since: float) -> tuple[list[float], list[str]]:
        """Cycle times ("reconciled" records) from ``since`` on, and every error, critical or traceback the controller
        logged in the whole run."""
        start = datetime.fromtimestamp(since).strftime("%Y-%m-%dT%H:%M:%S")  # the log's local time
        cycles, errors = [], []
        path = self.workdir / "logs" / "controller.log"
        for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
            try:
                record = json.loads(line)
            except ValueError:
                if line.startswith("Traceback"):
                    errors.append(line[:300])
                continue
            if not isinstance(record, dict):
                continue
            if record.get("msg") == "reconciled" and isinstance(record.get("seconds"), int | float) and \
                    str(record.get("time", "")) >= start:  # fmt: skip
                cycles.append(float(record["seconds"]))
            if record.get("level") in ("error", "critical"):
                errors.append(f"{record.get('msg')}: {str(record.get('error', ''))[:200]}")
        return cycles, errors

    def status_commits(self) -> int:
        done = subprocess.run(["git", "--git-dir", str(self.demo.remote), "rev-list", "--count", STATUS_BRANCH],
                              capture_output=True, text=True)  # fmt: skip
        return int(done.stdout.strip() or 0) if done.returncode == 0 else 0


def decisions(status: RolloutStatus, since: float) -> list[dict]:
    """The rollout's decisions from ``since`` on (its history also holds the previous version's)."""
    start = datetime.fromtimestamp(since - 1, UTC)
    return [d.to_json() for d in status.history if datetime.fromisoformat(d.time) >= start]


def cleanup(workdir: Path) -> None:
    """Remove what a scenario left (device identities are many small files)."""
    shutil.rmtree(workdir, ignore_errors=True)


__all__ = ["Cluster", "Scenario", "ScenarioConfig", "ScenarioError", "cleanup"]


def _rss_bytes(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", text)[1]) * 1024  # type: ignore[index]
    except (OSError, TypeError):
        return None
