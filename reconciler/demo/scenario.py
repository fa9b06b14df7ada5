"""The whole product on one machine, in a few minutes, with nothing faked but the hardware (``edgectl demo``).

What it runs (every part is the real one; the devices are processes on this machine):

1. a fleet repo made from ``fleet-example/`` (a bare repository as the remote, a checkout a person edits),
   whose Fleet trusts the model owner's release key and, in the ``builder`` trust mode, the builder's;
2. the merge of the rollout is all it takes: the controller (``edgectl run``, local backend, its TUF repository
   and its device API over mutual TLS) builds vibration-anomaly 1.0.0 and 2.0.0 for the Cortex-A and Coral
   profiles in build workers (optimize, convert, benchmark, gate; cached under
   ``~/.cache/edge-reconciler/demo-store``), which sign them with the builder's key, and publishes them;
3. the time from the merge to the first canary Healthy is printed (builds included);
4. twelve agents (``edgectl agent``), eight Cortex-A and four Coral devices in US factories, each enrolled with a
   one-time bootstrap token of its own;
5. the rollout of 2.0.0 step by step (25 %, 50 %, 100 %), then 2.1.0, a defective release the owner signed out of
   band (an owner's release is published as it is, never built over), whose outputs on the devices do not match
   the golden outputs its build recorded (what a broken export does): the canary
   devices' health checks fail, they roll back on their own, the failure-rate gate aborts the rollout, the
   controller commits the rollback and the canaries return to 2.0.0.

Everything is left in the work directory for inspection (its path is printed first and last). The
controller and agents run as ``edgectl`` processes, and the closing ``describe rollout`` is the command a
person would type next: this package sits below the CLI and never imports it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from reconciler.api.status import RolloutPhase, RolloutStatus

MODEL = "vibration-anomaly"
ROLLOUT = "vibration-anomaly-2"
STATUS_BRANCH = "edgereconciler/status"
"""Where fleet-example's controller commits status (its Fleet's ``spec.statusBranch``)."""
PROFILES = {"arm-cortex-a-cpu": {"edgereconciler.io/hardware": "cortex-a", "kubernetes.io/arch": "arm64"},
            "coral-npu": {"edgereconciler.io/hardware": "coral-edgetpu", "kubernetes.io/arch": "arm64"}}  # fmt: skip
DEVICES = [(f"factory-{i:02d}", "arm-cortex-a-cpu" if i <= 8 else "coral-npu") for i in range(1, 13)]
DEMO_STORE = Path.home() / ".cache" / "edge-reconciler" / "demo-store"
BUILDER = "acme-builder"
"""The build workers' release signer (``trust.builder``): its key stays with the workers."""
DEMO_ROLLOUT = """\
# The demo's rollout: short pauses so that it finishes in minutes, a zero-tolerance failure gate.
apiVersion: edgereconciler.io/v1alpha1
kind: Rollout
metadata:
  name: vibration-anomaly-2
spec:
  model: vibration-anomaly
  version: "{version}"
  groups: [us-factories]
  steps:
    - percent: 25
      pause: {{duration: 8s}}
    - percent: 50
      pause: {{duration: 8s}}
    - percent: 100
  maxUnavailable: 1
  progressDeadline: 2m
  offlineAfter: 1m
  conditions:
    matchExpressions:
      - key: acme.example/network
        operator: In
        values: [ethernet, wifi]
  analysis:
    maxFailureRate: 0
    minDevicesReporting: 1
"""


class DemoError(Exception):
    """The demo cannot go on; the message says what happened and where to look."""


def example_fleet() -> Path:
    """``fleet-example`` of the current directory, else the one beside the package (a source checkout)."""
    for candidate in (Path("fleet-example"), Path(__file__).resolve().parents[2] / "fleet-example"):
        if (candidate / "fleet.yaml").exists():
            return candidate
    raise DemoError("no fleet-example/ here; pass --fleet-example PATH")


@dataclass
class Demo:
    workdir: Path
    example: Path
    say: Callable[[str], None]
    processes: list[subprocess.Popen] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def checkout(self) -> Path:
        return self.workdir / "fleet"

    @property
    def remote(self) -> Path:
        return self.workdir / "fleet.git"

    @property
    def state(self) -> Path:
        return self.workdir / "controller"

    # --- the fleet repo, as a person sets it up ------------------------------------------------------

    def create_repo(self, rollout: str | None = DEMO_ROLLOUT.format(version="2.0.0")) -> None:
        """The fleet repo with ``rollout`` (the text of ``rollouts/vibration-anomaly-2.yaml``) merged; None: no
        rollout yet (:meth:`merge_rollout` adds it)."""
        from reconciler.signing import generate_key

        shutil.copytree(self.example, self.checkout, ignore=shutil.ignore_patterns("status", "__pycache__"))
        (self.checkout / "status").mkdir()
        (self.checkout / "status" / "README.md").write_text("Written by the controller; do not edit.\n")
        for example in (self.checkout / "rollouts").glob("*.yaml"):
            example.unlink()
        if rollout is not None:
            (self.checkout / "rollouts" / f"{ROLLOUT}.yaml").write_text(rollout)
        owner = generate_key(self.workdir / "keys" / "acme-ml")
        builder = generate_key(self.workdir / "keys" / BUILDER)
        (self.checkout / "keys").mkdir()
        shutil.copy(owner.public, self.checkout / "keys" / "acme-ml.pub")
        shutil.copy(builder.public, self.checkout / "keys" / f"{BUILDER}.pub")
        fleet = yaml.safe_load((self.checkout / "fleet.yaml").read_text())
        fleet["spec"]["trust"]["releaseSigners"] = [{"name": "acme-ml", "publicKey": "keys/acme-ml.pub",
                                                     "models": ["vibration-anomaly", "digits-cnn"]}]  # fmt: skip
        fleet["spec"]["trust"]["release"] = "builder"
        fleet["spec"]["trust"]["builder"] = {"name": BUILDER, "publicKey": f"keys/{BUILDER}.pub",
                                             "models": ["vibration-anomaly"], "maxCounter": 10}  # fmt: skip
        (self.checkout / "fleet.yaml").write_text(yaml.safe_dump(fleet, sort_keys=False))
        self.git("init", "-q", "-b", "main")
        self.git("add", "-A")
        self.git("commit", "-q", "-m", "fleet: vibration-anomaly 2.0.0 to the US factories")
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(self.remote)], check=True)
        self.git("remote", "add", "origin", str(self.remote))
        self.git("push", "-q", "origin", "main")

    def git(self, *args: str) -> str:
        env = {**os.environ, "GIT_AUTHOR_NAME": "Dana (fleet owner)", "GIT_AUTHOR_EMAIL": "dana@acme.example",
               "GIT_COMMITTER_NAME": "Dana (fleet owner)", "GIT_COMMITTER_EMAIL": "dana@acme.example"}  # fmt: skip
        done = subprocess.run(["git", "-C", str(self.checkout), *args], check=True, capture_output=True, text=True,
                              env=env)  # fmt: skip
        return done.stdout

    # --- the model owner's out-of-band release ------------------------------------------------------

    @property
    def releases(self) -> Path:
        return self.workdir / "releases"

    def release(self, folder: Path, version: str, counter: int, edit: Callable[[dict], None] | None = None) -> None:
        from reconciler.signing import Release, sign_with_key, write_release

        manifest = json.loads((folder / "manifest.json").read_text())
        if edit is not None:
            edit(manifest)
            (folder / "manifest.json").write_text(json.dumps(manifest, sort_keys=True))
        write_release(folder, Release(MODEL, version, (manifest["profile"],), counter))
        sign_with_key(folder, self.workdir / "keys" / "acme-ml.key")

    def release_defective(self, version: str) -> None:
        """2.1.0: the 2.0.0 weights, re-exported by a broken toolchain: its recorded golden outputs are not what
        the model computes. Signed by the owner like any release: only the devices' health check can tell."""

        def defect(manifest: dict) -> None:
            manifest["version"] = version
            shift = 2 * float(manifest["golden"].get("tolerance", {}).get("atol", 0.25)) + 1.0  # beyond tolerance
            manifest["golden"]["outputs"] = [[v + shift for v in row] for row in manifest["golden"]["outputs"]]

        for profile in PROFILES:
            source = self.releases / "built" / f"{MODEL}-2.0.0-{profile}"  # what the controller's builder signed
            folder = self.releases / f"{MODEL}-{version}-{profile}"
            shutil.copytree(source, folder, ignore=shutil.ignore_patterns("release.*"))
            self.release(folder, version, counter=3, edit=defect)

    def add_version(self, version: str, based_on: str, rollout: str | None = None) -> None:
        """The person's pull request: a new Model version (same source as ``based_on``) and the rollout to it
        (``rollout``: its text, else the demo's)."""
        path = self.checkout / "models" / f"{MODEL}.yaml"
        text = path.read_text()
        spec = yaml.safe_load(text)
        source = next(v for v in spec["spec"]["versions"] if v["version"] == based_on)["source"]
        entry = (f'    - version: "{version}"\n      source:\n        uri: {source["uri"]}\n'
                 f'        sha256: {source["sha256"]}\n')  # fmt: skip
        text = text.replace("  recipes:\n", entry + "  recipes:\n", 1)
        path.write_text(text)
        self.merge_rollout(rollout or DEMO_ROLLOUT.format(version=version), f"fleet: {MODEL} {version} to the US "
                           "factories")  # fmt: skip

    def merge_rollout(self, rollout: str, message: str) -> None:
        """Write ``rollouts/vibration-anomaly-2.yaml`` and push the commit to main (with what else changed)."""
        (self.checkout / "rollouts" / f"{ROLLOUT}.yaml").write_text(rollout)
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        self.git("pull", "-q", "--rebase", "origin", "main")  # the controller committed status meanwhile
        self.git("push", "-q", "origin", "main")

    # --- processes -------------------------------------------------------------------------------------

    def start_controller(self, devices: list[tuple[str, str]] = DEVICES, interval: float = 2.0,
                         backend_options: tuple[str, ...] = ()) -> None:  # fmt: skip
        """``devices``: (name, profile) put in the local backend's inventory first (devices enrolled with a labels
        token are added when they enrol). ``backend_options``: ``edgectl run`` options naming another backend (whose
        inventory is the caller's to fill)."""
        from reconciler.cluster import LocalBackend
        from reconciler.deviceapi.ca import FleetCA
        from reconciler.signing.tuf_repo import create_repository, utcnow

        self.state.mkdir(parents=True, exist_ok=True)
        create_repository(self.state / "tuf", self.workdir / "keys" / "tuf", utcnow())
        FleetCA.load_or_create(self.state / "ca")  # the fleet CA, made once; the controller loads it
        backend = LocalBackend(self.state)
        for name, profile in devices:
            network = "ethernet" if int(name[-2:]) % 3 else "wifi"
            labels = {"acme.example/site-type": "factory", "topology.kubernetes.io/region": "us-east",
                      "acme.example/network": network, **PROFILES[profile]}  # fmt: skip
            backend.register_device(name, labels)
        backend.close()
        self.ports["controller"] = _free_port()
        self.ports["device-api"] = _free_port()
        self.spawn("controller", ["run", "--repo", str(self.remote), "--state-dir", str(self.state),
                                  "--releases", str(self.releases), "--tuf-keys", str(self.workdir / "keys" / "tuf"),
                                  "--store", str(DEMO_STORE), "--build-workers", "2",
                                  "--builder-key", str(self.workdir / "keys" / f"{BUILDER}.key"),
                                  "--interval", f"{interval:g}", "--listen", f"127.0.0.1:{self.ports['controller']}",
                                  "--device-api", f"127.0.0.1:{self.ports['device-api']}",
                                  *backend_options])  # fmt: skip

    def start_agents(self) -> None:
        """Each device enrols with a one-time token of its own, then talks to the device API over mutual TLS."""
        from datetime import UTC, datetime, timedelta

        from reconciler.deviceapi.sqlite_registry import SQLiteRegistry

        registry = SQLiteRegistry(self.state / "devices.sqlite")
        try:
            tokens = {name: registry.create_token(timedelta(hours=1), datetime.now(UTC), device=name)
                      for name, _ in DEVICES}  # fmt: skip
        finally:
            registry.close()
        url = f"https://127.0.0.1:{self.ports['device-api']}"
        for name, profile in DEVICES:
            self.ports[name] = _free_port()
            self.spawn(name, ["agent", "--device", name, "--profile", profile, "--device-api", url,
                              "--ca", str(self.state / "ca" / "ca.crt"), "--token", tokens[name],
                              "--data-dir", str(self.workdir / "devices" / name),
                              "--trusted-root", str(self.state / "tuf" / "metadata" / "1.root.json"),
                              "--fleet", str(self.checkout), "--interval", "2", "--trial-period", "3s",
                              "--serve", f"127.0.0.1:{self.ports[name]}"])  # fmt: skip

    def spawn(self, name: str, args: list[str]) -> None:
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        with (logs / f"{name}.log").open("ab") as log:
            command = [sys.executable, "-m", "reconciler.cli.main", *args]
            self.processes.append(
                subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            )

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()

    # --- watching ------------------------------------------------------------------------------------

    def snapshot(self) -> tuple[RolloutStatus, list[dict]]:
        """The rollout's status from Git (what the controller committed) and each device's report."""
        from reconciler.api.status import StatusPaths
        from reconciler.cluster import LocalBackend
        from reconciler.gitops.source import branch_head, files_at_commit, read_repo

        path = StatusPaths().rollout(ROLLOUT)  # fleet-example keeps the default statusPath and statusBranch
        head = branch_head(str(self.remote), STATUS_BRANCH)
        files = files_at_commit(str(self.remote), head) if head else read_repo(self.remote).files
        status = RolloutStatus.from_yaml(next((f.content for f in files if f.path == path), None), ROLLOUT)
        backend = LocalBackend(self.state)
        try:
            statuses = backend.statuses()
        finally:
            backend.close()
        devices = []
        for name, profile in DEVICES:
            report = statuses.get((name, MODEL))
            devices.append({"name": name, "profile": profile, "phase": report.phase if report else "-",
                            "version": (report.installed_version if report else None) or "-",
                            "message": (report.message if report else "")[:70]})  # fmt: skip
        return status, devices

    def wait_for(self, version: str, phase: str, live: Callable, timeout: float = 300.0) -> RolloutStatus:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.poll() is not None:
                    raise DemoError(f"a process exited early ({process.args[3]}); see {self.workdir}/logs")
            status, devices = self.snapshot()
            live(status, devices)
            if status.version == version and status.phase == phase:
                return status
            if status.version == version and status.phase in (RolloutPhase.ABORTED, RolloutPhase.SUCCEEDED):
                raise DemoError(f"{ROLLOUT} ended {status.phase}, expected {phase}: {status.state.message}")
            time.sleep(1.0)
        raise DemoError(f"{ROLLOUT} {version} did not reach {phase} in {timeout:.0f} s; "
                        f"see {self.workdir}/logs")  # fmt: skip

    def predict(self, device: str) -> str:
        import numpy as np

        data = np.load(self.checkout / "models" / MODEL / "data" / "eval.npz")
        window = data[data.files[0]][:1].tolist()
        body = json.dumps({"instances": window}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.ports[device]}/v1/models/{MODEL}:predict", body,
                                         {"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read())
        scores = answer["predictions"][0]
        return (
            f"{device} answers with {MODEL} {answer['modelVersion']}: class {int(np.argmax(scores))} "
            f"(scores {', '.join(f'{s:.2f}' for s in scores)})"
        )

    def describe(self) -> str:
        """``edgectl describe rollout``, run as the person watching would run it next."""
        command = ["describe", "rollout", ROLLOUT, "--repo", str(self.remote)]
        done = subprocess.run([sys.executable, "-m", "reconciler.cli.main", *command], capture_output=True, text=True)
        if done.returncode != 0:
            raise DemoError(f"edgectl describe rollout {ROLLOUT} failed: {done.stderr.strip()}")
        return done.stdout.rstrip("\n")


@contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """Send file descriptor 2 (C++ libraries write there directly) to ``path`` for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with path.open("ab") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def status_line(status: RolloutStatus) -> str:
    healthy, targeted = status.ready
    version = status.version or "-"
    return (f"{ROLLOUT}: {version} {status.phase} step {status.state.step + 1}/3, "
            f"{healthy}/{targeted} healthy on {version}"
            + (f" ({status.state.message})" if status.state.message else ""))  # fmt: skip


def device_table(status: RolloutStatus, devices: list[dict], phase_style: Callable[[str], str]):
    from rich.table import Table
    from rich.text import Text

    table = Table(title=status_line(status), title_justify="left", box=None, padding=(0, 2, 0, 0))
    for header in ("DEVICE", "PROFILE", "VERSION", "PHASE", "MESSAGE"):
        table.add_column(header)
    for device in devices:
        table.add_row(device["name"], device["profile"], device["version"],
                      Text(device["phase"], style=phase_style(device["phase"])), device["message"])  # fmt: skip
    return table


def plain_table(devices: list[dict]) -> str:
    lines = [f"{'DEVICE':<12} {'PROFILE':<18} {'VERSION':<8} PHASE"]
    lines += [f"{d['name']:<12} {d['profile']:<18} {d['version']:<8} {d['phase']}" for d in devices]
    return "\n".join(lines)


def run_demo(example: Path, workdir: Path | None, timeout: float, phase_style: Callable[[str], str]) -> None:
    """Run every step, printing as it goes; raises :class:`DemoError` when one fails (processes are stopped).

    ``phase_style`` colours a phase in the live table, as ``edgectl get`` does.
    """
    from rich.console import Console

    console = Console()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="edge-reconciler-demo-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    run = Demo(workdir, example, lambda text: console.print(text, highlight=False, soft_wrap=True))
    say = run.say
    say(f"[bold]edge-reconciler demo[/bold] in {workdir}")
    live_view = _live(console, phase_style)
    try:
        say(
            "1. fleet repo from fleet-example (remote fleet.git, checkout fleet/), trusting acme-ml's release key "
            f"and, in the builder trust mode, {BUILDER}'s"
        )
        run.create_repo()
        say("2. Dana merged the rollout of 2.0.0; nothing is built yet")
        say(
            "3. controller (local backend, TUF repository, device API over mutual TLS, build workers) and 12 agents, "
            "each enrolled with a one-time token"
        )
        merged = time.monotonic()
        run.start_controller()
        run.start_agents()
        say("4. the controller builds 1.0.0 and 2.0.0, signs them as the builder, publishes them, and rolls out 2.0.0 "
            "(25% -> 50% -> 100%, devices outside the step get 1.0.0)")  # fmt: skip
        first_canary: list[float] = []

        def watching(live):
            def show(status: RolloutStatus, devices: list[dict]) -> None:
                if not first_canary and status.version == "2.0.0" and status.ready[0] > 0:
                    first_canary.append(time.monotonic() - merged)
                live(status, devices)

            return show

        with live_view() as live:
            run.wait_for("2.0.0", "Succeeded", watching(live), timeout)
        if first_canary:
            say(f"   first canary Healthy on 2.0.0 {first_canary[0]:.0f} s after the merge (builds included)")
        say(f"   [green]{ROLLOUT} 2.0.0 Succeeded[/green]")
        say("5. acme-ml releases 2.1.0 with a defect; Dana merges its rollout")
        run.release_defective("2.1.0")
        run.add_version("2.1.0", "2.0.0")
        with live_view() as live:
            final = run.wait_for("2.1.0", "Aborted", live, timeout)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # the canaries return to 2.0.0
                status, devices = run.snapshot()
                live(status, devices)
                settled = status.devices.by_version == {"2.0.0": {"Healthy": len(DEVICES)}}
                if settled and all(d["version"] == "2.0.0" and d["phase"] == "Healthy" for d in devices):
                    break
                time.sleep(1.0)
        say(f"   [red]{ROLLOUT} 2.1.0 Aborted[/red]: {final.state.message}")
        status, devices = run.snapshot()
        say(plain_table(devices))
        say(run.predict(DEVICES[0][0]))
        say("")
        say(run.describe())
        say("\nGit log of the fleet repo's main (people's changes, and the controller's rollback decision):")
        log = subprocess.run(["git", "--git-dir", str(run.remote), "log", "--format=%h %an: %s", "main"], check=True,
                             capture_output=True, text=True).stdout  # fmt: skip
        say(log.rstrip())
        status = subprocess.run(["git", "--git-dir", str(run.remote), "rev-list", "--count", STATUS_BRANCH],
                                capture_output=True, text=True).stdout.strip()  # fmt: skip
        say(f"(and {status or 0} status commits on {STATUS_BRANCH}: git log {STATUS_BRANCH})")
    finally:
        run.stop()
    say(f"\nLeft for inspection: {workdir}  (fleet/ checkout, fleet.git remote, controller/ state, devices/, logs/)")
    say(
        f"Try: edgectl get rollouts --repo {run.remote} -o wide;  edgectl describe rollout {ROLLOUT} "
        f"--repo {run.remote};  edgectl get devices --state-dir {run.state} --repo {run.checkout}"
    )


def _live(console, phase_style: Callable[[str], str]):
    """A live-updating table on a terminal; in a pipe, one line whenever the rollout's state changes."""

    @contextmanager
    def live_view():
        if console.is_terminal:
            from rich.live import Live

            with Live(console=console, refresh_per_second=4) as live:
                yield lambda status, devices: live.update(device_table(status, devices, phase_style))
        else:
            said: list[str] = []

            def show(status: RolloutStatus, devices: list[dict]) -> None:
                line = status_line(status)
                if not said or said[-1] != line:
                    console.print("   " + line, highlight=False, soft_wrap=True)
                    said.append(line)

            yield show

    return live_view
