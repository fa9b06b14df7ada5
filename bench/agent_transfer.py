"""What the edge agent costs on the wire, in memory and per request.

Prints, each against a baseline from the same run:
- bytes re-transferred when a download is killed halfway and restarted (vs the file size);
- delta vs full bytes for every version pair of fleet-example's models per profile (vs plain zstd of the new
  file without the old one as reference);
- RSS of a process serving one model over HTTP (vs the same process with just the runtime session);
- request latency of the serving endpoint vs a bare onnxruntime session call on the same input.

    python bench/agent_transfer.py      # uses ~/.cache/edge-reconciler/bench-store (built by sign_verify.py)
    python bench/agent_transfer.py --quick   # vibration-anomaly for arm-cortex-a-cpu only, 100 requests

The download stays 64 MiB with --quick: killing it halfway needs a window the polling loop cannot miss.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import zstandard
from _check import parser, ratio, require

from reconciler.api import load_fleet
from reconciler.artifact.delta import apply_delta, make_delta
from reconciler.artifact.store import ArtifactRecord, ArtifactStore
from reconciler.gitops.files import read_fleet_dir
from reconciler.optimize.pipeline import build_scope

ROOT = Path(__file__).resolve().parents[1]
STORE = Path.home() / ".cache" / "edge-reconciler" / "bench-store"
QUICK_MODEL, QUICK_PROFILE = "vibration-anomaly", "arm-cortex-a-cpu"


def device_api(work: Path, blobs: Path):
    """The device API over ``blobs`` and one enrolled device (its key and certificate in ``work/device.pem``), as
    an agent meets it: mutual TLS."""
    from reconciler.cluster import LocalBackend
    from reconciler.deviceapi.ca import FleetCA
    from reconciler.deviceapi.client import DeviceClient
    from reconciler.deviceapi.identity import Identity
    from reconciler.deviceapi.server import DeviceAPIServer
    from reconciler.deviceapi.sqlite_registry import SQLiteRegistry

    ca = FleetCA.load_or_create(work / "ca")
    registry = SQLiteRegistry(work / "devices.sqlite")
    backend = LocalBackend(work / "state")
    now = datetime.now(UTC)
    cert, key = ca.issue_server(["127.0.0.1"], timedelta(days=1), now)
    (work / "tls.crt").write_bytes(cert)
    (work / "tls.key").write_bytes(key)
    server = DeviceAPIServer(("127.0.0.1", 0), Identity(ca, registry), lambda: backend,
                             ca.server_context(work / "tls.crt", work / "tls.key"), blobs=blobs).start()  # fmt: skip
    token = registry.create_token(timedelta(hours=1), now, device="bench-device")
    client = DeviceClient(server.url, "bench-device", work / "identity", work / "ca" / "ca.crt", token)
    client.ensure_identity()
    return server, client


def interrupted_download(work: Path) -> None:
    store = ArtifactStore(work / "store")
    payload = os.urandom(64 * 1024 * 1024)
    digest = store.put_bytes(payload)
    server, client = device_api(work, store.root / "blobs" / "sha256")
    script = textwrap.dedent(f"""
        from pathlib import Path
        import urllib3
        from reconciler.agent.download import Downloader, DownloadConfig
        pool = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs={str(client.files.ca)!r},
                                   cert_file={str(client.files.pem)!r}, retries=False)
        Downloader(Path({str(work / "partial")!r}), DownloadConfig(reserve_bytes=0), http=pool).fetch(
            {server.url + "/artifacts/sha256/" + digest!r}, {len(payload)}, {digest!r}, Path({str(work / "out")!r}))
    """)
    part = work / "partial" / f"{digest}.part"
    process = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    deadline = time.monotonic() + 120
    while process.poll() is None and size_of(part) < len(payload) // 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    ended = process.returncode
    require(ended == -signal.SIGKILL, f"the first download ended on its own (status {ended}) before the kill")
    kept = size_of(part)
    require(0 < kept < len(payload), f"killed with {kept} of {len(payload)} bytes on disk: nothing to resume")
    subprocess.run([sys.executable, "-c", script], check=True)
    server.close()
    require(size_of(work / "out") == len(payload), "the resumed download did not write the whole file")
    again = server.bytes_served - len(payload)
    require(again >= 0, f"the server sent {server.bytes_served} bytes in all, less than the file: it was not served")
    print(f"interrupted download of {len(payload)} bytes, killed at {kept} bytes on disk:")
    print(f"  bytes served in total      {server.bytes_served}")
    print(f"  bytes transferred twice    {again} ({again / len(payload):.4%} of the file; chunk size 262144)")


def size_of(path: Path) -> int:
    """0 for a file that is not there (yet, or any more: the downloader renames it when done)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def deltas(quick: bool) -> dict[tuple[str, str, str], ArtifactRecord]:
    store = ArtifactStore(STORE)
    tree = load_fleet(read_fleet_dir(ROOT / "fleet-example"))
    models, profiles = ([QUICK_MODEL], [QUICK_PROFILE]) if quick else (list(tree.models), None)
    builds = build_scope(tree, ROOT / "fleet-example", store, models=models, profiles=profiles)
    built = {(b.model, b.profile, b.version): b.artifact for b in builds if b.artifact}
    files = {}
    for key, record in built.items():
        name = next(n for n in record.files if n.startswith("model."))
        files[key] = store.read_blob(record.files[name])
    print("delta vs full, per version pair (bytes)")
    print(f"  {'model / profile':<40} {'full':>8} {'zstd':>8} {'delta':>8} {'delta/full':>10}")
    pairs = 0
    for (model, profile, version), old in sorted(files.items()):
        for (other_model, other_profile, new_version), new in sorted(files.items()):
            if (other_model, other_profile) == (model, profile) and new_version > version:
                plain = len(zstandard.ZstdCompressor(level=19).compress(new))
                patch = make_delta(old, new)
                label = f"{model} {version}->{new_version} {profile}"
                require(plain > 0 and apply_delta(old, patch, len(new)) == new, f"{label}: the delta does not "
                        "rebuild the new file")  # fmt: skip
                print(f"  {label:<40} {len(new):8d} {plain:8d} {len(patch):8d} "
                      f"{ratio(len(patch), len(new), f'{label} delta/full'):10.2f}")  # fmt: skip
                pairs += 1
    require(pairs, f"no model has two versions built for one profile ({len(files)} builds): no delta measured")
    return built


SERVE = """
import json, sys, time, urllib.request, numpy as np
from pathlib import Path
from reconciler.artifact.runtime import ModelRunner
data = Path(sys.argv[1]); manifest = json.loads((data / "models/m/active/manifest.json").read_text())
row = np.asarray(manifest["golden"]["inputs"][:1], dtype=np.float32)
def rss(): return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) * 1024
runner = ModelRunner(data / "models/m/active" / next(n for n in manifest["files"] if n.startswith("model.")), "onnx")
requests = int(sys.argv[2])
bare = []
for _ in range(requests):
    t = time.perf_counter(); runner.run(row); bare.append(time.perf_counter() - t)
bare_rss = rss()
from reconciler.agent.serving import ModelServer
server = ModelServer(data, ("127.0.0.1", 0)).start()
body = json.dumps({"instances": row.tolist()}).encode()
http = []
for _ in range(requests):
    t = time.perf_counter()
    answer = urllib.request.urlopen(urllib.request.Request(server.url + "/v1/models/m:predict", body)).read()
    http.append(time.perf_counter() - t)
print(json.dumps({"bare_p50": float(np.median(bare)), "http_p50": float(np.median(http)),
                  "http_p95": float(np.percentile(http, 95)), "bare_rss": bare_rss, "serving_rss": rss(),
                  "predictions": len(json.loads(answer)["predictions"]), "requests": len(http)}))
server.close()
"""


def serving(built: dict[tuple[str, str, str], ArtifactRecord], work: Path, model: str, requests: int) -> None:
    candidates = [k for k in built if k[0] == model and k[1] == "arm-cortex-a-cpu"]
    require(candidates, f"no {model} build for arm-cortex-a-cpu to serve")
    key = min(candidates)
    store = ArtifactStore(STORE)
    artifact = built[key].id
    slot = work / "device" / "models" / "m" / "slots" / "a"
    slot.parent.mkdir(parents=True)
    store.export(artifact, slot)
    (work / "device" / "models" / "m" / "active").symlink_to("slots/a")
    result = json.loads(subprocess.run([sys.executable, "-c", SERVE, str(work / "device"), str(requests)],
                                       check=True, capture_output=True, text=True).stdout)  # fmt: skip
    require(result["requests"] == requests and result["predictions"] == 1, f"the server answered "
            f"{result['predictions']} predictions for one sample")  # fmt: skip
    require(result["bare_p50"] > 0 and result["bare_rss"] > 0, "the bare session baseline measured nothing")
    print(f"serving {key[0]} {key[2]} ({key[1]}), 1 thread, one sample per request, {requests} requests")
    print(f"  bare session.run p50       {result['bare_p50'] * 1e3:.3f} ms")
    print(f"  HTTP predict p50 / p95     {result['http_p50'] * 1e3:.3f} / {result['http_p95'] * 1e3:.3f} ms")
    print(f"  overhead p50               {(result['http_p50'] - result['bare_p50']) * 1e3:.3f} ms")
    print(f"  RSS runtime only           {result['bare_rss'] / 2**20:.1f} MiB")
    print(f"  RSS serving over HTTP      {result['serving_rss'] / 2**20:.1f} MiB")


def main() -> None:
    args = parser(__doc__).parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        interrupted_download(work)
        built = deltas(args.quick)
        serving(built, work, QUICK_MODEL if args.quick else "digits-cnn", 100 if args.quick else 2000)


if __name__ == "__main__":
    main()
