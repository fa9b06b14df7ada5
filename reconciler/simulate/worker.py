"""One worker process of the simulator: a slice of the fleet's devices on one asyncio loop.

Who runs it: :mod:`.scenario`, as ``python -m reconciler.simulate.worker CONFIG.json``, a few at once (each loop
holds thousands of devices; one process per core keeps TLS and JSON work in parallel). It runs until the stop
file named in its configuration appears, then writes what it recorded (``Recorder``) as JSON and exits.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import json
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp

from reconciler.deviceapi.limits import Limits

from .device import Catalog, Recorder, Settings, SimDevice
from .faults import Defect, Faults, draw


@dataclass(frozen=True)
class WorkerConfig:
    url: str
    ca_file: str
    identities: str
    trusted_root: str
    fleet: str
    devices: list[tuple[str, str, str]]
    """(name, one-time token, profile) of each device this worker runs."""
    stop_file: str
    anchor_file: str
    """Appears when the rollout is committed: devices that leave during the run leave counting from then."""
    result_file: str
    faults: dict
    defects: list[tuple[str, float]]
    seed: int = 0
    poll_seconds: float = 30.0
    heartbeat_seconds: float = 60.0
    telemetry_seconds: float = 120.0
    verify_share: float = 0.01
    horizon_seconds: float = 3600.0
    downloads: bool = True
    preinstalled: list[tuple[str, str]] = field(default_factory=list)
    enrolments: int = 8
    """Enrolments in flight at once (key generation and the CA's signature are CPU work on both sides)."""

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps(asdict(self)))
        return path

    @classmethod
    def read(cls, path: Path) -> WorkerConfig:
        return cls(**json.loads(path.read_text()))


def settings_of(config: WorkerConfig) -> Settings:
    from reconciler.api import load_fleet
    from reconciler.gitops.files import read_fleet_dir
    from reconciler.signing import policy_from_fleet

    fleet = load_fleet(read_fleet_dir(config.fleet)).fleet
    return Settings(
        url=config.url, ca_file=Path(config.ca_file), identities=Path(config.identities),
        trusted_root=Path(config.trusted_root).read_bytes(), policy=policy_from_fleet(fleet, Path(config.fleet)),
        faults=Faults(**config.faults), defects=tuple(Defect(v, r) for v, r in config.defects), seed=config.seed,
        poll_seconds=config.poll_seconds, heartbeat_seconds=config.heartbeat_seconds,
        telemetry_seconds=config.telemetry_seconds, verify_share=config.verify_share,
        horizon_seconds=config.horizon_seconds, downloads=config.downloads,
        preinstalled=tuple((model, version) for model, version in config.preinstalled),
    )  # fmt: skip


async def run(config: WorkerConfig) -> Recorder:
    settings = settings_of(config)
    recorder = Recorder()
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max(4, config.enrolments), thread_name_prefix="simulate"))
    stop = asyncio.Event()
    # As an agent's connection pool: a connection is kept until the server closes it (its idle limit, 45 s, is
    # longer than a poll), and asyncio's 256 KiB TLS read buffer per connection is cut as the server cuts it.
    asyncio.sslproto.SSLProtocol.max_size = Limits().tls_read_buffer
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=3600)
    timeout = aiohttp.ClientTimeout(total=120, sock_connect=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        catalog = Catalog(settings, recorder)
        enrolment = asyncio.Semaphore(config.enrolments)
        devices = [SimDevice(name, token, profile, draw(name, settings.faults, config.seed), settings, session,
                             catalog, recorder) for name, token, profile in config.devices]  # fmt: skip
        recorder.counters["devices"] = len(devices)
        tasks = [asyncio.create_task(device.live(stop, enrolment)) for device in devices]
        stop_file, anchor_file, parent = Path(config.stop_file), Path(config.anchor_file), os.getppid()
        while not stop_file.exists() and os.getppid() == parent:  # a scenario that died takes its workers along
            tick = loop.time()
            await asyncio.sleep(0.5)
            recorder.time("loopLag", (loop.time() - tick - 0.5) * 1000)
            if recorder.anchor is None and anchor_file.exists():
                recorder.anchor = loop.time()
        stop.set()
        await asyncio.wait(tasks, timeout=30)
        for task in tasks:
            task.cancel()
        recorder.counters["faults"] = 0
        for device in devices:
            for name in device.traits.names():
                recorder.counters[f"fault:{name}"] += 1
    return recorder


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    config = WorkerConfig.read(Path(argv[0]))
    recorder = asyncio.run(run(config))
    result = {"events": recorder.events, "latencyMs": recorder.latency_ms, "counters": dict(recorder.counters),
              "errors": recorder.errors, "left": recorder.left, "acknowledged": recorder.acknowledged}  # fmt: skip
    partial = Path(config.result_file + ".part")
    partial.write_text(json.dumps(result))
    partial.rename(config.result_file)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
