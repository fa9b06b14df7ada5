"""The controller's SuperLink: a Flower server process beside the controller, and the calls made to it.

Who calls it: :mod:`reconciler.controller.training`. One SuperLink serves every training: it listens with a
certificate from the fleet CA (agents already trust it), with SuperNode authentication on, so only a key the
controller registered may connect, and a device registers only the key of the certificate it shows the device API
(:meth:`SuperLink.register`). Runs are submitted as a Flower App Bundle that names this package's
``flower_app`` (nothing is installed at run time: ``uv sync`` is off); the ServerApp writes its result into the
folder the run config names.
"""

from __future__ import annotations

import hashlib
import ssl
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from .processes import Child, flower_environment

APP = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "edge-reconciler-training"
version = "1.0.0"
description = "Federated training of an edge-reconciler FederatedTraining (the code is the installed package)"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "edge-reconciler"

[tool.flwr.app.components]
serverapp = "reconciler.federated.flower_app:server_app"
clientapp = "reconciler.federated.flower_app:client_app"

"""
"""The app bundle: only its manifest; the server and client apps are this package's, as installed. Flower takes
only run config keys the manifest declares: each run's bundle declares its own config as the defaults."""


class SuperLinkError(Exception):
    pass


@dataclass(frozen=True)
class RunState:
    status: str
    """pending, starting, running, finished."""
    sub_status: str = ""
    """completed, failed or stopped, once finished."""
    details: str = ""

    @property
    def finished(self) -> bool:
        return self.status == "finished"


class SuperLink:
    def __init__(self, folder: Path, host: str, port: int, ca_file: Path, cert_file: Path, key_file: Path) -> None:
        self.folder, self.host, self.port, self.ca_file = folder, host, port, ca_file
        self.cert_file, self.key_file = cert_file, key_file
        self.child: Child | None = None
        self._control: Any = None
        self._lock = threading.Lock()
        """The control client is shared by the controller's cycle and the device API's threads (joins)."""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 120.0) -> SuperLink:
        """Start the process (after stopping what is left of an earlier one) and return once it answers its health
        check."""
        self.stop()
        command = [str(Path(sys.executable).parent / "flower-superlink"), "--ssl-ca-certfile", str(self.ca_file),
                   "--ssl-certfile", str(self.cert_file), "--ssl-keyfile", str(self.key_file),
                   "--enable-supernode-auth", "--disable-runtime-dependency-installation",
                   "--host", self.host, "--port", str(self.port)]  # fmt: skip
        self.folder.mkdir(parents=True, exist_ok=True)
        self.child = Child(command, self.folder / "superlink.log", flower_environment(
            {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1"}))  # fmt: skip
        deadline = time.monotonic() + timeout
        context = ssl.create_default_context(cafile=str(self.ca_file))
        while True:
            if not self.child.alive():
                raise SuperLinkError(f"the SuperLink exited: {self.child.tail()}")
            try:
                with urllib.request.urlopen(f"https://{self._local}/health", context=context, timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SuperLinkError(f"the SuperLink did not answer in {timeout:.0f} s: {self.child.tail()}")
            time.sleep(0.2)

    @property
    def _local(self) -> str:
        return f"127.0.0.1:{self.port}" if self.host in ("0.0.0.0", "::", "") else self.address

    def alive(self) -> bool:
        return self.child is not None and self.child.alive()

    def stop(self) -> None:
        with self._lock:
            if self._control is not None:
                self._control.close()
                self._control = None
        if self.child is not None:
            self.child.stop()
            self.child = None

    @property
    def control(self) -> Any:
        with self._lock:
            return self._client()

    def _client(self) -> Any:
        if self._control is None:
            from flwr.supercore.control import ControlHttpClient
            from flwr.supercore.interceptors.http.runtime_version import RuntimeVersionHttpInterceptor

            self._control = ControlHttpClient.from_server_address(
                self._local, insecure=False, root_certificates=self.ca_file.read_bytes(),
                interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr CLI")])  # fmt: skip
        return self._control

    def register(self, name: str, public_key: ec.EllipticCurvePublicKey) -> int:
        """Allow a SuperNode holding this key (a device's identity key, NIST P-256 or P-384) to connect."""
        from flwr.proto.control_pb2 import ListNodesRequest, RegisterNodeRequest
        from flwr.supercore.primitives.asymmetric import public_key_to_bytes

        raw = public_key_to_bytes(public_key)
        for node in self.control.ListNodes(ListNodesRequest()).nodes_info:
            if bytes(node.public_key) == raw:
                return int(node.node_id)
        return int(self.control.RegisterNode(RegisterNodeRequest(public_key=raw, name=name[:63])).node_id)

    def online(self) -> int:
        from flwr.proto.control_pb2 import ListNodesRequest

        return sum(1 for n in self.control.ListNodes(ListNodesRequest()).nodes_info if n.status == "online")

    def submit(self, config: dict[str, Any]) -> int:
        """Start a run of the training app with ``config``; its run id."""
        from flwr.cli.build import build_fab_from_disk
        from flwr.common.serde import fab_to_proto, user_config_to_proto
        from flwr.proto.control_pb2 import StartRunRequest
        from flwr.supercore.fab import Fab

        app = self.folder / "app"
        app.mkdir(parents=True, exist_ok=True)
        import tomli_w

        (app / "pyproject.toml").write_text(APP + "\n" + tomli_w.dumps({"tool": {"flwr": {"app": {"config": config}}}}))
        bundle = build_fab_from_disk(app)
        fab = Fab(hashlib.sha256(bundle).hexdigest(), bundle, {})
        request = StartRunRequest(fab=fab_to_proto(fab), override_config=user_config_to_proto(config))
        return int(self.control.StartRun(request).run_id)

    def state(self, run_id: int) -> RunState:
        from flwr.proto.control_pb2 import ListRunsRequest

        runs = self.control.ListRuns(ListRunsRequest(run_id=run_id)).run_dict
        if run_id not in runs:
            return RunState("unknown", "", f"the SuperLink has no run {run_id}")
        status = runs[run_id].status
        return RunState(str(status.status), str(status.sub_status), str(status.details))

    def logs(self, run_id: int) -> str:
        """The ServerApp's log of a run (Flower hands a finished run's log out once, then drops it)."""
        from flwr.proto.control_pb2 import StreamLogsRequest

        request = StreamLogsRequest(run_id=run_id, after_timestamp=0.0)
        return "".join(r.log_output for r in self.control.StreamLogs(request))

    def stop_run(self, run_id: int) -> None:
        from flwr.proto.control_pb2 import StopRunRequest

        self.control.StopRun(StopRunRequest(run_id=run_id))
