"""Flower's processes as children: started with the environment they need, stopped with everything they started.

Who calls it: :mod:`.superlink` (the controller's SuperLink) and :mod:`.nodes` (a device's SuperNode). Flower
processes start helpers of their own (``flower-superexec``, then one ``flwr-serverapp`` / ``flwr-clientapp`` per
run or message), some in sessions of their own; stopping one means stopping its whole family, found in /proc.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

QUIET = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}
"""Flower phones home (telemetry, update checks) and installs an app's dependencies with ``uv sync`` unless told
not to: an edge device or a controller never calls out to a third party."""


def flower_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment, Flower kept quiet, and this interpreter's scripts first on PATH (Flower starts
    ``flower-superexec`` and ``flwr-*`` by name)."""
    scripts = str(Path(sys.executable).parent)
    return {**os.environ, **QUIET, "PATH": f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}", **(extra or {})}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class Child:
    """A Flower process and its family."""

    def __init__(self, command: Sequence[str], log: Path, env: Mapping[str, str]) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = log
        with open(log, "ab") as out:
            self.process = subprocess.Popen(list(command), env=dict(env), stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def family(self) -> list[int]:
        """The process and every descendant still running."""
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
        found, waiting = [], [self.pid]
        while waiting:
            pid = waiting.pop()
            found.append(pid)
            waiting.extend(children.get(pid, []))
        return found

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM to the family, SIGKILL to what is left after ``grace`` seconds."""
        family = self.family()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGTERM)  # its session: what it started there, re-parented or not
        for pid in family:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.kill(family)

    def kill(self, family: list[int] | None = None) -> None:
        """SIGKILL to the family at once (no cleanup: a device losing power)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        for pid in family if family is not None else self.family():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
