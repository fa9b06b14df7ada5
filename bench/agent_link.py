"""A large model over a slow link that breaks: time from assignment to Healthy, and bytes fetched twice per cut.

The agent installs a 100 MB model (vibration-anomaly 1.0.0 padded with an initializer no node reads, signed and
published like any release) over the real device API (mutual TLS, TUF), through a TCP proxy that lets 1 MB/s
through towards the device and cuts every connection three times, at a quarter, half and three quarters of the
file. Prints the time to Healthy against the time the bytes alone need at that rate, the bytes the device
fetched beyond the file (in all and per cut, against the 256 KiB download chunk: what a resume may repeat),
and the bytes on the wire (TLS, HTTP and metadata included) against the file.

    python bench/agent_link.py            # 100 MB at 1 MB/s, 3 cuts (about two minutes)
    python bench/agent_link.py --quick    # 4 MB at 1 MB/s, 3 cuts
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from _check import parser, ratio, require

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reconciler.agent.agent import Agent, AgentConfig  # noqa: E402
from reconciler.artifact.store import ArtifactStore  # noqa: E402
from reconciler.deviceapi.client import DeviceAPIBackend, DeviceClient  # noqa: E402
from reconciler.signing.tuf_repo import utcnow  # noqa: E402
from tests.device_fleet import MODEL, PROFILE, build_artifacts, close_fleet, open_fleet  # noqa: E402

STORE = Path.home() / ".cache" / "edge-reconciler" / "bench-store"
RATE = 1_000_000
"""Bytes per second towards the device."""
CUTS = (0.25, 0.5, 0.75)
LIMIT_SECONDS = 900


class ThrottledLink:
    """A TCP proxy on loopback: ``rate`` bytes/s towards the client, all connections cut when the bytes sent
    towards it cross each of ``cut_at`` (absolute byte counts)."""

    def __init__(self, upstream: tuple[str, int], rate: int | None, cut_at: list[int]) -> None:
        self.upstream, self.rate, self.cut_at = upstream, rate, sorted(cut_at)
        self.down = 0
        """Bytes forwarded towards the device."""
        self.cuts: list[float] = []
        self._next_free = 0.0
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        self.port = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result()

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[1]

    async def _connection(self, device_reader: asyncio.StreamReader, device_writer: asyncio.StreamWriter) -> None:
        try:
            api_reader, api_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            device_writer.close()
            return
        self._writers |= {device_writer, api_writer}
        up = asyncio.ensure_future(self._pipe(device_reader, api_writer, throttle=False))
        down = asyncio.ensure_future(self._pipe(api_reader, device_writer, throttle=True))
        with contextlib.suppress(asyncio.CancelledError):  # the proxy closes
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        for task in (up, down):
            task.cancel()
        for writer in (device_writer, api_writer):
            self._writers.discard(writer)
            writer.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, throttle: bool) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            await self._forward(reader, writer, throttle)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, throttle: bool) -> None:
        loop = asyncio.get_running_loop()
        while chunk := await reader.read(16 * 1024):
            if throttle and self.rate:
                start = max(loop.time(), self._next_free)
                self._next_free = start + len(chunk) / self.rate
                await asyncio.sleep(self._next_free - loop.time())
            writer.write(chunk)
            await writer.drain()
            if throttle:
                self.down += len(chunk)
                if self.cut_at and self.down >= self.cut_at[0]:
                    self.cut_at.pop(0)
                    self.cuts.append(time.monotonic())
                    for other in list(self._writers):  # the link drops: every connection at once
                        other.transport.abort()
                    return

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)

    async def _close(self) -> None:
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def install(fleet, work: Path, device: str, link: ThrottledLink) -> tuple[float, Agent]:
    """Assign the big version to a fresh ``device`` behind ``link``; its agent cycles until Healthy."""
    api = urlsplit(fleet.server.url)
    data_dir = work / device
    token = fleet.identity.registry.create_token(timedelta(hours=1), utcnow(), device=device)
    client = DeviceClient(f"https://{api.hostname}:{link.port}", device, data_dir / "identity",
                          fleet.root / "ca" / "ca.crt", token)  # fmt: skip
    config = AgentConfig(device, PROFILE, data_dir, client.repository_url, fleet.agent("nobody").config.policy,
                         fleet.pinned_root, heartbeat_seconds=1.0, trial_period=timedelta(0))  # fmt: skip
    agent = Agent(config, DeviceAPIBackend(client), http=lambda: client.pool)
    fleet.backend.register_device(device, {"edgereconciler.io/hardware": "cortex-a"})
    fleet.assign(device, "9.0.0")
    start, status = time.monotonic(), None
    while time.monotonic() - start < LIMIT_SECONDS:
        status = agent.cycle()[MODEL]
        if status.phase == "Healthy":
            break
        time.sleep(0.2)
    require(status is not None and status.phase == "Healthy", f"{device} never Healthy: {status}")
    return time.monotonic() - start, agent


def main() -> None:
    args = parser(__doc__).parse_args()
    size = 4_000_000 if args.quick else 100_000_000
    with tempfile.TemporaryDirectory(prefix="agent-link-") as tmp:
        work = Path(tmp)
        built = build_artifacts(ArtifactStore(STORE), work / "artifacts")
        fleet = open_fleet(work / "fleet", built, ArtifactStore(STORE))
        links = []
        try:
            fleet.variant("9.0.0", padding=size)
            fleet.publish(fleet.release("9.0.0", 1))
            length = (fleet.artifacts["9.0.0"] / "model.onnx").stat().st_size
            api = urlsplit(fleet.server.url)
            upstream = (str(api.hostname), int(api.port or 443))
            # The baseline: the same install through the proxy, neither throttled nor cut.
            links.append(clear := ThrottledLink(upstream, None, []))
            clear_took, _ = install(fleet, work, "factory-1", clear)
            links.append(link := ThrottledLink(upstream, RATE, [int(length * share) for share in CUTS]))
            took, agent = install(fleet, work, "factory-2", link)
        finally:
            for opened in links:
                opened.close()
            close_fleet(fleet)
    require(len(link.cuts) == len(CUTS), f"the link was cut {len(link.cuts)} times, not {len(CUTS)}")
    again = agent.bytes_transferred - length
    wasted = link.down - clear.down
    ideal = length / RATE
    print(f"{length:,} bytes over {RATE:,} B/s with {len(CUTS)} cuts (agent -> TCP proxy -> device API, mutual TLS)")
    slowdown = ratio(took, ideal, "time vs the bytes alone")
    print(f"  time to Healthy                 {took:10.1f} s  (the bytes alone at that rate: {ideal:.1f} s; "
          f"{slowdown:.2f}x; unthrottled and uncut: {clear_took:.1f} s)")  # fmt: skip
    print(f"  bytes the agent fetched twice   {again:10d}    ({again / len(CUTS):.0f} per cut, "
          f"{again / len(CUTS) / (256 * 1024):.2f} of a 256 KiB chunk)")  # fmt: skip
    wire = ratio(link.down, clear.down, "wire cut vs uncut")
    print(f"  bytes on the wire               {link.down:10d}    ({wire:.4f}x the uncut install's {clear.down}; "
          f"{wasted / len(CUTS):.0f} more per cut: what was in flight)")  # fmt: skip


if __name__ == "__main__":
    main()
