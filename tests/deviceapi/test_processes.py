"""The device API in several processes on one port (`edgectl run --device-api-processes`): every process listens,
a device enrolled through one is served by all, what helpers count reaches the controller's /metrics, a helper
that dies is replaced, helpers end with the controller however it ends (SIGTERM, SIGKILL), and the link through
which helpers ask the controller (joins, the SuperLink's address, counters) passes answers and failures back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client
from pathlib import Path

import pytest
import urllib3
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from reconciler.deviceapi.client import DeviceClient
from reconciler.deviceapi.processes import DeviceAPIHelpers, helper_pids

from ..device_fleet import Fleet, free_port
from ..waiting import eventually

EDGECTL = Path(sys.executable).parent / "edgectl"


def listeners(port: int) -> int:
    """Sockets listening on loopback ``port`` (each process's own, with SO_REUSEPORT)."""
    text = Path("/proc/net/tcp").read_text()
    return sum(1 for line in text.splitlines()[1:] if line.split()[1].endswith(f":{port:04X}") and
               line.split()[3] == "0A")  # fmt: skip


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


class Controller:
    def __init__(self, repo: Path, root: Path, processes: int) -> None:
        self.root, self.operator, self.port = root, free_port(), free_port()
        self.log = root / "controller.log"
        self.process = subprocess.Popen(
            [str(EDGECTL), "run", "--repo", str(repo), "--state-dir", str(root / "state"), "--interval", "3600",
             "--listen", f"127.0.0.1:{self.operator}", "--device-api", f"127.0.0.1:{self.port}",
             "--device-api-processes", str(processes)],
            stdout=subprocess.DEVNULL, stderr=self.log.open("wb"),
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def refusals(self, reason: str) -> float:
        text = urllib3.request("GET", f"http://127.0.0.1:{self.operator}/metrics", timeout=10).data.decode()
        line = f'edge_reconciler_device_api_refusals_total{{reason="{reason}"}} '
        return next((float(row[len(line) :]) for row in text.splitlines() if row.startswith(line)), 0.0)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


def test_three_processes_serve_one_device_api(fleet_bare_repo: Path, tmp_path: Path):
    controller = Controller(fleet_bare_repo, tmp_path, processes=3)
    try:
        eventually(lambda: listeners(controller.port) == 3, "three processes listen")
        first = set(helper_pids(controller.process.pid))
        assert len(first) == 2

        # Requests without a certificate, each on its own connection: the kernel spreads them over the processes,
        # and the controller's /metrics counts every refusal, whichever process made it.
        for _ in range(30):
            pool = urllib3.PoolManager(ca_certs=str(tmp_path / "state" / "ca" / "ca.crt"))
            assert pool.request("GET", f"{controller.url}/v1/assignments", retries=False).status == 401
            pool.clear()
        eventually(lambda: controller.refusals("no-certificate") == 30, "all 30 refusals counted")

        # Enrolled at whichever process took the connection, then served by every one.
        token = subprocess.run([str(EDGECTL), "device", "token", "create", "--label", "site=factory",
                                "--state-dir", str(tmp_path / "state")],
                               capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
        device = DeviceClient(controller.url, "edge-1", tmp_path / "identity", tmp_path / "state" / "ca" / "ca.crt",
                              token=token)  # fmt: skip
        device.ensure_identity()
        for _ in range(20):
            assert device.assignments() == {}
            device.pool.clear()

        # A helper killed is replaced; its port is served by three again.
        victim = sorted(first)[0]
        os.kill(victim, signal.SIGKILL)
        eventually(lambda: len(set(helper_pids(controller.process.pid)) - {victim}) == 2, "a new helper")
        eventually(lambda: listeners(controller.port) == 3, "three processes listen again")
        for _ in range(20):
            assert device.assignments() == {}
            device.pool.clear()

        # SIGTERM: the controller stops its helpers and exits cleanly.
        helpers = set(helper_pids(controller.process.pid))
        controller.process.send_signal(signal.SIGTERM)
        assert controller.process.wait(120) == 0, controller.log.read_text()[-3000:]
        assert all(gone(pid) for pid in helpers)
        assert listeners(controller.port) == 0
        assert "Traceback" not in controller.log.read_text()
    finally:
        controller.stop()


def test_helpers_end_with_a_killed_controller(fleet_bare_repo: Path, tmp_path: Path):
    controller = Controller(fleet_bare_repo, tmp_path, processes=2)
    try:
        eventually(lambda: listeners(controller.port) == 2, "two processes listen")
        helpers = set(helper_pids(controller.process.pid))
        controller.process.kill()  # no handler runs: only the kernel closing the lifeline tells the helper
        controller.process.wait(30)
        eventually(lambda: all(gone(pid) for pid in helpers), "the helper exits")
        eventually(lambda: listeners(controller.port) == 0, "nothing listens on the port")
    finally:
        controller.stop()


def test_processes_are_refused_beside_the_kubernetes_backend(tmp_path: Path):
    refused = subprocess.run([str(EDGECTL), "run", "--repo", str(tmp_path), "--backend", "kubernetes",
                              "--device-api-processes", "2"], capture_output=True, text=True)  # fmt: skip
    assert refused.returncode == 2 and "--device-api-processes needs --backend local" in refused.stderr


@pytest.fixture
def helpers(fleet: Fleet):
    joins: list[tuple] = []

    def on_join(backend, device, name, key):
        joins.append((backend, device, name, key))
        if name == "broken":
            raise RuntimeError("the SuperLink's control API is down")
        return "not now" if name == "busy" else name == "called"

    superlink = ("https://127.0.0.1:9092", str(fleet.root / "ca" / "ca.crt"))
    running = DeviceAPIHelpers(0, fleet.server, build=None, backend_factory=lambda: "the helper's backend",
                               on_join=on_join, upstream=lambda: superlink).start()  # fmt: skip
    running.joins = joins
    try:
        yield running
    finally:
        running.close()


def test_the_link_passes_joins_the_superlink_and_counters_to_the_controller(helpers, fleet: Fleet):
    link = helpers.link()
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    assert link.join(None, "factory-1", "called", key) is True
    assert link.join(None, "factory-1", "other", key) is False
    assert link.join(None, "factory-1", "busy", key) == "not now"
    answer = link.join(None, "factory-1", "broken", key)
    assert isinstance(answer, str) and "the SuperLink's control API is down" in answer  # the device gets a 503
    backend, device, name, passed = helpers.joins[0]
    assert (backend, device, name) == ("the helper's backend", "factory-1", "called")
    der = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert passed.public_bytes(*der) == key.public_bytes(*der)

    url, context = link.upstream()
    assert url == "https://127.0.0.1:9092" and context.verify_mode.name == "CERT_REQUIRED"

    sent, served = fleet.server.bytes_sent("artifact"), fleet.server.bytes_served
    link.count({"no-certificate": 2}, {"artifact": 1234}, 1234)
    assert fleet.server.bytes_sent("artifact") == sent + 1234 and fleet.server.bytes_served == served + 1234
    refused = fleet.server.refusals.labels("no-certificate")._value.get()
    link.count({"no-certificate": 3}, {}, 0)
    assert fleet.server.refusals.labels("no-certificate")._value.get() == refused + 3
    link.close()


def test_the_link_takes_only_the_controllers_key(helpers):
    with pytest.raises(AuthenticationError):
        Client(helpers.address, family="AF_UNIX", authkey=b"not the key")
    link = helpers.link()  # still answering
    assert link.join(None, "factory-1", "called", ec.generate_private_key(ec.SECP256R1()).public_key()) is True
    link.close()
