"""What one device API process costs a polling fleet, and how fast it hands out artifacts.

The server (``reconciler.deviceapi.server``) runs in a child process, so that the CPU time and memory read from
``/proc/PID`` are its own and not the simulated devices'. It opens state this script prepares first, as ``edgectl``
and the controller would: a fleet CA, a registry in which every device's certificate is recorded (the CA issues
them directly: enrolment is a one-off per device and not what is measured here), a local backend with one
assignment per device, and one blob in the store. Then:

- polling: N devices (default 1,000), each with its own client certificate and its own keep-alive connection pool,
  ask for their assignments every 30 s at a random phase with If-None-Match, for a 90 s window. Prints requests/s
  (against the rate the fleet offers), latency p50/p99/max, 200s and 304s, TLS connections opened (the server's
  default limits decide how long it keeps an idle connection), and the server's CPU per 1,000 requests, CPU % and
  RSS (against its RSS before the window);
- downloads: 100 devices fetch a 20 MB blob at once over mutual TLS, each stream hashed; the baseline is the same
  file served by ``python -m http.server`` (plain HTTP, listen backlog raised) to as many concurrent ``curl``
  processes, in the same run.
  Server and client CPU are printed for both, since on a small machine either side can be what limits MB/s.

- busy (``--busy``, instead of the two above): polling while a thread in the server's process runs pure Python
  3 s of every 5 s, as the controller's cycle does at 10,000 devices in ``edgectl run``; the baseline is the same
  with Python's default GIL switch interval (5 ms) instead of the device API's (``Limits.switch_seconds``).

    python bench/device_api.py [DEVICES] [--window S] [--interval S] [--downloads N] [--megabytes MB] [--quick]
                               [--busy]
    # --quick: 50 devices, 2 s polls for 10 s, 10 downloads of 2 MB
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import random
import re
import resource
import select
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
from _check import fail, parser, ratio, require
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from reconciler.cluster import LocalBackend
from reconciler.deviceapi import protocol
from reconciler.deviceapi.ca import FleetCA
from reconciler.deviceapi.sqlite_registry import SQLiteRegistry
from reconciler.plan import Desired

ROOT = Path(__file__).resolve().parents[1]
MODEL = "vibration-anomaly"
MB = 1_000_000
CLOCK_TICK = os.sysconf("SC_CLK_TCK")

SERVE = """
import sys
from pathlib import Path
from reconciler.cluster import LocalBackend
from reconciler.deviceapi.ca import FleetCA
from reconciler.deviceapi.identity import Identity
from reconciler.deviceapi.sqlite_registry import SQLiteRegistry
from reconciler.deviceapi.server import DeviceAPIServer
root = Path(sys.argv[1])
ca = FleetCA.load_or_create(root / "ca")
registry = SQLiteRegistry(root / "registry.sqlite")
backend = LocalBackend(root / "state")
context = ca.server_context(root / "server.crt", root / "server.key")
server = DeviceAPIServer(("127.0.0.1", 0), Identity(ca, registry), lambda: backend, context,
                         blobs=root / "blobs" / "sha256").start()
if "--default-switch" in sys.argv:
    sys.setswitchinterval(0.005)
if "--busy" in sys.argv:
    import threading, time

    def cycles():  # the controller's cycle: pure Python, 3 s of every 5 s
        while True:
            end = time.perf_counter() + 3.0
            while time.perf_counter() < end:
                sum(range(1000))
            time.sleep(2.0)

    threading.Thread(target=cycles, daemon=True).start()
print(server.url, flush=True)
sys.stdin.read()  # until the benchmark closes the pipe, or dies
server.close()
backend.close()
registry.close()
"""

PLAIN = """
import runpy, socketserver
socketserver.TCPServer.request_queue_size = 1024
runpy.run_module("http.server", run_name="__main__", alter_sys=True)
"""
"""``python -m http.server`` with a listen backlog of 1,024 instead of 5: with 5, concurrent connects overflow it and
the dropped ones retry a second later, which the baseline would time as slow serving."""


# --- setup -----------------------------------------------------------------------------------------


def prepare(root: Path, count: int, size: int) -> tuple[FleetCA, dict[str, Path], str]:
    """The state the server opens (the CA, each device's PEM with certificate and key, the blob's digest), made
    in this process so that the server's CPU and memory figures hold serving alone."""
    now = datetime.now(UTC)
    ca = FleetCA.load_or_create(root / "ca")
    certificate, key = ca.issue_server(["127.0.0.1"], timedelta(days=1), now)
    (root / "server.crt").write_bytes(certificate)
    (root / "server.key").write_bytes(key)
    payload = os.urandom(size)
    digest = hashlib.sha256(payload).hexdigest()
    (root / "blobs" / "sha256").mkdir(parents=True)
    (root / "blobs" / "sha256" / digest).write_bytes(payload)
    (root / "devices").mkdir()
    registry = SQLiteRegistry(root / "registry.sqlite")
    backend = LocalBackend(root / "state")
    pems: dict[str, Path] = {}
    try:
        for i in range(count):
            name = f"edge-{i:05d}"
            private = ec.generate_private_key(ec.SECP256R1())
            subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
            csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(private, hashes.SHA256())
            issued = ca.issue_device(csr.public_bytes(serialization.Encoding.PEM), name, timedelta(days=1), now)
            registry.record_certificate(name, issued.serial_number, issued.not_valid_after_utc, {}, now)
            backend.register_device(name, {"bench": "device-api"})
            key_pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption())  # fmt: skip
            pems[name] = root / "devices" / f"{name}.pem"
            pems[name].write_bytes(issued.public_bytes(serialization.Encoding.PEM) + key_pem)
        written = backend.apply(Desired(name, MODEL, "1.0.0", "cpu-fp32", "bench", digest, True) for name in pems)
        require(written == count, f"the backend holds {written} assignments for {count} devices")
    finally:
        backend.close()
        registry.close()
    return ca, pems, digest


def start(children: list[subprocess.Popen], argv: list[str], pattern: str, log: Path, **options) -> re.Match:
    """Start a child and wait (60 s at most) for the line of its stdout that says where it listens."""
    with log.open("wb") as errors:
        process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=errors, bufsize=0, **options)
    children.append(process)
    deadline = time.monotonic() + 60
    assert process.stdout is not None
    while (left := deadline - time.monotonic()) > 0 and select.select([process.stdout], [], [], left)[0]:
        line = process.stdout.readline()
        if not line:
            break
        if match := re.search(pattern, line.decode(errors="replace")):
            return match
    fail(f"{log.stem} did not say where it listens within 60 s; its stderr ends: {log.read_text()[-2000:]}")


def stop(children: list[subprocess.Popen]) -> None:
    """The device API shuts down cleanly when its stdin closes; the others are terminated; what lingers is killed."""
    for process in children:
        if process.stdin is not None:
            process.stdin.close()
        elif process.poll() is None:
            process.terminate()
    for process in children:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def cpu_seconds(pid: int) -> float:
    """User + system time of every thread of ``pid`` (fields 14 and 15 of /proc/PID/stat, after the name)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (the peak) of ``pid``, MiB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) / 1024
    return found


def percentile(values: list[float], q: float) -> float:
    """Nearest rank: a value that was measured, not an interpolation between two."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] if ordered else math.nan


# --- polling ---------------------------------------------------------------------------------------


@dataclass
class Polled:
    seconds: float = 0.0
    server_cpu: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: dict[str, list[int]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    opened: int = 0
    """TLS connections the devices opened (the rest of the requests went over a kept-alive one)."""


async def poll(url: str, contexts: dict[str, ssl.SSLContext], interval: float, window: float, pid: int) -> Polled:
    polled = Polled()
    trace = aiohttp.TraceConfig()

    async def opened(*_: object) -> None:
        polled.opened += 1

    trace.on_connection_create_end.append(opened)
    # A device keeps its connection as long as the server lets it: the client's own idle limit is not the one
    # being measured.
    sessions = {
        name: aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context, limit=1, keepalive_timeout=3 * interval),
            trace_configs=[trace], timeout=aiohttp.ClientTimeout(total=60),
        )
        for name, context in contexts.items()
    }  # fmt: skip
    phases = random.Random(1)
    try:
        loop = asyncio.get_running_loop()
        began, cpu = loop.time(), cpu_seconds(pid)
        end = began + window
        await asyncio.gather(*(
            device(name, session, url, began + phases.uniform(0, interval), interval, end, polled)
            for name, session in sessions.items()
        ))  # fmt: skip
        polled.seconds, polled.server_cpu = loop.time() - began, cpu_seconds(pid) - cpu
    finally:
        await asyncio.gather(*(session.close() for session in sessions.values()))
    return polled


async def device(
    name: str, session: aiohttp.ClientSession, url: str, at: float, interval: float, end: float, polled: Polled
) -> None:
    """One device's polls, as the agent makes them: the ETag of the last 200 goes back in If-None-Match."""
    loop = asyncio.get_running_loop()
    statuses = polled.statuses[name] = []
    etag: str | None = None
    while at < end:
        await asyncio.sleep(at - loop.time())
        at += interval
        began = time.perf_counter()
        try:
            async with session.get(url, headers={"If-None-Match": etag} if etag else None) as response:
                body = await response.read()
                statuses.append(response.status)
                if response.status == 200:
                    etag = response.headers.get("ETag")
                    listing = protocol.Assignments.model_validate_json(body)
                    if listing.device != name or [a.model for a in listing.assignments] != [MODEL]:
                        polled.errors.append(f"{name} was answered the assignments {listing}")
                elif response.status != 304:
                    polled.errors.append(f"{name}: {response.status} {body[:300]!r}")
                    continue
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            polled.errors.append(f"{name}: {exc!r}")
            continue
        polled.latencies.append(time.perf_counter() - began)


def report_polling(polled: Polled, count: int, interval: float, window: float, pid: int, idle: dict) -> None:
    requests = len(polled.latencies)
    ok = sum(s.count(200) for s in polled.statuses.values())
    unchanged = sum(s.count(304) for s in polled.statuses.values())
    require(not polled.errors, f"{len(polled.errors)} polls failed, first: {polled.errors[:3]}")
    odd = [n for n, s in polled.statuses.items() if len(s) < 2 or s[0] != 200 or set(s[1:]) != {304}]
    require(len(polled.statuses) == count and not odd, f"{len(odd)} of {count} devices did not get one 200 and "
            f"then only 304s (window {window:g} s, interval {interval:g} s): {odd[:3]}")  # fmt: skip
    p50, p99 = percentile(polled.latencies, 0.5) * 1e3, percentile(polled.latencies, 0.99) * 1e3
    require(math.isfinite(p99) and p99 > 0, f"p99 latency is {p99!r} ms over {requests} requests")
    require(polled.server_cpu > 0, f"the server used {polled.server_cpu} s of CPU for {requests} requests")
    now = memory(pid)
    print(f"polling: every {interval:g} s at a random phase with If-None-Match, {window:g} s window")
    print(f"  requests                  {requests}  ({ok} x 200, {unchanged} x 304, 0 errors)")
    print(f"  requests/s                {requests / polled.seconds:.1f}  (offered: {count / interval:.1f})")
    print(f"  latency p50 / p99 / max   {p50:.2f} / {p99:.2f} / {max(polled.latencies) * 1e3:.2f} ms")
    print(f"  TLS connections opened    {polled.opened} for {requests} requests")
    print(f"  server CPU                {polled.server_cpu:.2f} s  ({polled.server_cpu / requests * 1000:.2f} s "
          f"per 1,000 requests, {polled.server_cpu / polled.seconds:.1%} of one core)")  # fmt: skip
    print(f"  server RSS                {now['VmRSS']:.1f} MiB  (before the window: {idle['VmRSS']:.1f} MiB)")


# --- downloads -------------------------------------------------------------------------------------


@dataclass
class Downloaded:
    seconds: float
    each: list[float]
    server_cpu: float
    client_cpu: float
    bytes: int


async def download(url: str, contexts: list[ssl.SSLContext], size: int, digest: str, pid: int) -> Downloaded:
    timeout = aiohttp.ClientTimeout(total=600, sock_read=60)
    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=c, limit=1), timeout=timeout)
                for c in contexts]  # fmt: skip

    async def one(session: aiohttp.ClientSession) -> tuple[float, int, str]:
        began, hashed, got = time.perf_counter(), hashlib.sha256(), 0
        async with session.get(url) as response:
            if response.status != 200:
                raise RuntimeError(f"answered {response.status}: {(await response.read())[:300]!r}")
            async for chunk in response.content.iter_chunked(1 << 20):
                hashed.update(chunk)
                got += len(chunk)
        return time.perf_counter() - began, got, hashed.hexdigest()

    try:
        cpu, client, began = cpu_seconds(pid), time.process_time(), time.perf_counter()
        results = await asyncio.gather(*(one(session) for session in sessions), return_exceptions=True)
        seconds = time.perf_counter() - began
        server_cpu, client_cpu = cpu_seconds(pid) - cpu, time.process_time() - client
    finally:
        await asyncio.gather(*(session.close() for session in sessions))
    failed = [r for r in results if isinstance(r, BaseException)]
    require(not failed, f"{len(failed)} of {len(contexts)} downloads failed, first: {failed[:1]!r}")
    wrong = [r for r in results if not isinstance(r, BaseException) and (r[1], r[2]) != (size, digest)]
    require(not wrong, f"{len(wrong)} downloads did not get the blob's {size} bytes (sha256 {digest[:12]}...)")
    each = [r[0] for r in results if not isinstance(r, BaseException)]
    return Downloaded(seconds, each, server_cpu, client_cpu, size * len(each))


def curl_baseline(url: str, count: int, size: int, pid: int) -> Downloaded:
    require(shutil.which("curl"), "curl is not installed: the baseline downloads use it (apt-get install curl)")
    written = "%{http_code} %{size_download} %{time_total} %{time_connect}"
    command = ["curl", "-s", "-o", "/dev/null", "-w", written, url]
    cpu, children, began = cpu_seconds(pid), resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    processes: list[subprocess.Popen] = []
    try:
        for _ in range(count):
            processes.append(subprocess.Popen(command, stdout=subprocess.PIPE, text=True))
        outputs = [process.communicate(timeout=600)[0].split() for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    seconds = time.perf_counter() - began
    server_cpu = cpu_seconds(pid) - cpu
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    wrong = [o for o in outputs if len(o) != 4 or o[0] != "200" or int(o[1]) != size]
    require(not wrong, f"{len(wrong)} of {count} curl downloads did not get {size} bytes with 200: {wrong[:3]}")
    connect = max(float(o[3]) for o in outputs)
    require(connect < 0.9, f"a baseline connect took {connect:.2f} s: a dropped SYN retried, not serving, was timed")
    return Downloaded(seconds, [float(o[2]) for o in outputs], server_cpu, client_cpu, size * count)


def report_downloads(api: Downloaded, baseline: Downloaded, count: int, size: int) -> None:
    require(api.each and baseline.each, "one of the two download runs measured nothing")
    print(f"downloads: {count} at once of a {size / MB:g} MB blob (every one {size} bytes; the device API's sha256-"
          "checked)")  # fmt: skip
    for label, run in (("device API (mTLS, aiohttp)", api), ("http.server (HTTP, curl)", baseline)):
        print(f"  {label:<27} {run.bytes / MB / run.seconds:8.1f} MB/s  p50 {percentile(run.each, 0.5):.2f} s "
              f"per download  server CPU {run.server_cpu:.2f} s  client CPU {run.client_cpu:.2f} s")  # fmt: skip
    speed = ratio(api.bytes / api.seconds, baseline.bytes / baseline.seconds, "device API / http.server MB/s")
    print(f"  ratio device API / baseline {speed:.2f}x")
    if min(api.server_cpu, baseline.server_cpu) >= 10 / CLOCK_TICK:  # /proc counts CPU in ticks: 10 or more
        cost = ratio(api.server_cpu / api.bytes, baseline.server_cpu / baseline.bytes, "server CPU per byte")
        print(f"  server CPU per byte, device API / baseline {cost:.2f}x")


# --- the run ---------------------------------------------------------------------------------------


def busy(
    children: list[subprocess.Popen], work: Path, contexts: dict[str, ssl.SSLContext], interval: float, window: float
) -> None:
    """Polling beside a busy thread: Python's default switch interval (the baseline), then the device API's."""
    p50s, p99s = [], []
    for label, flags in (("Python's default switch interval (5 ms)", ["--default-switch"]),
                         ("the device API's switch interval", [])):  # fmt: skip
        print(f"busy server, {label}:")
        url = start(children, [sys.executable, "-c", SERVE, str(work), "--busy", *flags], r"^(https://\S+)",
                    work / "device-api.log", stdin=subprocess.PIPE)[1]  # fmt: skip
        pid = children[-1].pid
        idle = memory(pid)
        polled = asyncio.run(poll(url + protocol.ASSIGNMENTS, contexts, interval, window, pid))
        report_polling(polled, len(contexts), interval, window, pid, idle)
        p50s.append(percentile(polled.latencies, 0.5))
        p99s.append(percentile(polled.latencies, 0.99))
        stop(children)
        children.clear()
    print(
        f"  ratio device API / default: p50 {ratio(p50s[1], p50s[0], 'p50 ratio'):.3f}x, "
        f"p99 {ratio(p99s[1], p99s[0], 'p99 ratio'):.3f}x"
    )


def main() -> None:
    arguments = parser(__doc__)
    arguments.add_argument("devices", type=int, nargs="?", help="devices polling (default 1,000; 50 with --quick)")
    arguments.add_argument("--window", type=float, help="seconds of polling measured (default 90; 10 with --quick)")
    arguments.add_argument("--interval", type=float, help="seconds between a device's polls (default 30; 2 quick)")
    arguments.add_argument("--downloads", type=int, help="concurrent downloads (default 100; 10 with --quick)")
    arguments.add_argument("--megabytes", type=float, help="blob size in MB (default 20; 2 with --quick)")
    arguments.add_argument("--busy", action="store_true", help="poll beside a busy thread, against Python's default "
                           "switch interval (no downloads)")  # fmt: skip
    args = arguments.parse_args()
    count = args.devices if args.devices is not None else 50 if args.quick else 1000
    window = args.window or (10.0 if args.quick else 90.0)
    interval = args.interval or (2.0 if args.quick else 30.0)
    downloads = args.downloads if args.downloads is not None else 10 if args.quick else 100
    size = int((args.megabytes or (2 if args.quick else 20)) * MB)
    require(count > 0 and downloads > 0 and size > 0, "no devices, downloads or bytes: there would be nothing to time")
    require(window >= 2 * interval, f"a {window:g} s window with {interval:g} s polls at a random phase gives some "
            "devices no second poll (no 304 to measure)")  # fmt: skip
    children: list[subprocess.Popen] = []
    with ExitStack() as cleanup:
        work = Path(cleanup.enter_context(tempfile.TemporaryDirectory()))
        cleanup.callback(stop, children)
        began = time.perf_counter()
        ca, pems, digest = prepare(work, count, size)
        print(f"{count} devices with one assignment each, certificates issued by the fleet CA directly "
              f"({time.perf_counter() - began:.1f} s to prepare)")  # fmt: skip
        contexts = {name: ca.client_context(pem) for name, pem in pems.items()}
        if args.busy:
            busy(children, work, contexts, interval, window)
            return
        url = start(children, [sys.executable, "-c", SERVE, str(work)], r"^(https://\S+)", work / "device-api.log",
                    stdin=subprocess.PIPE)[1]  # fmt: skip
        pid = children[0].pid
        idle = memory(pid)
        polled = asyncio.run(poll(url + protocol.ASSIGNMENTS, contexts, interval, window, pid))
        report_polling(polled, count, interval, window, pid, idle)

        blob = f"/artifacts/sha256/{digest}"
        names = list(contexts)
        picked = [contexts[names[i % count]] for i in range(downloads)]  # more downloads than devices: some twice
        api = asyncio.run(download(url + blob, picked, size, digest, pid))
        plain = [sys.executable, "-u", "-c", PLAIN, "0", "--bind", "127.0.0.1", "--directory", str(work / "blobs")]
        port = start(children, plain, r"port (\d+)", work / "http.server.log", stdin=subprocess.DEVNULL)[1]
        baseline = curl_baseline(f"http://127.0.0.1:{port}/sha256/{digest}", downloads, size, children[1].pid)
        report_downloads(api, baseline, downloads, size)
        print(f"  device API server peak RSS {memory(pid)['VmHWM']:.1f} MiB")


if __name__ == "__main__":
    main()
