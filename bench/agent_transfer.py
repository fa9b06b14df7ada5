"""What the edge agent costs on the wire, in memory and per request.

Prints, each against a baseline from the same run:
- bytes re-transferred when a download is killed halfway and restarted (vs the file size);
- delta vs full bytes for every version pair of fleet-example's models per profile (vs plain zstd of the new
  file without the old one as reference);
- RSS of a process serving one model over HTTP (vs the same process with just the runtime session);
- request latency of the serving endpoint vs a bare onnxruntime session call on the same input.

    python bench/agent_transfer.py      # uses ~/.cache/edge-reconciler/bench-store (built by sign_verify.py)
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
from pathlib import Path

import zstandard

from reconciler.artifact.delta import make_delta
from reconciler.optimize.pipeline import build_scope
from reconciler.artifact.store import ArtifactStore
from reconciler.controller.server import ControllerServer
from reconciler.gitops.files import read_fleet_dir
from reconciler.api import load_fleet

ROOT = Path(__file__).resolve().parents[1]
STORE = Path.home() / ".cache" / "edge-reconciler" / "bench-store"


def interrupted_download(work: Path) -> None:
    store = ArtifactStore(work / "store")
    payload = os.urandom(64 * 1024 * 1024)
    digest = store.put_bytes(payload)
    server = ControllerServer(("127.0.0.1", 0), blobs=store.root / "blobs" / "sha256").start()
    script = textwrap.dedent(f"""
        from pathlib import Path
        from reconciler.agent.download import Downloader, DownloadConfig
        Downloader(Path({str(work / "partial")!r}), DownloadConfig(reserve_bytes=0)).fetch(
            {server.url + "/artifacts/sha256/" + digest!r}, {len(payload)}, {digest!r}, Path({str(work / "out")!r}))
    """)
    part = work / "partial" / f"{digest}.part"
    process = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    while not (part.exists() and part.stat().st_size >= len(payload) // 2):
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    kept = part.stat().st_size
    subprocess.run([sys.executable, "-c", script], check=True)
    server.close()
    again = server.bytes_served - len(payload)
    print(f"interrupted download of {len(payload)} bytes, killed at {kept} bytes on disk:")
    print(f"  bytes served in total      {server.bytes_served}")
    print(f"  bytes transferred twice    {again} ({again / len(payload):.4%} of the file; chunk size 262144)")


def deltas() -> None:
    store = ArtifactStore(STORE)
    tree = load_fleet(read_fleet_dir(ROOT / "fleet-example"))
    build_scope(tree, ROOT / "fleet-example", store, models=list(tree.models))
    files = {}
    for artifact in store.artifact_ids():
        manifest = store.read_manifest(artifact)
        record = store.get_artifact(artifact)
        name = next(n for n in record.files if n.startswith("model."))
        files[(manifest["model"], manifest["profile"], manifest["version"])] = store.read_blob(record.files[name])
    print("delta vs full, per version pair (bytes)")
    print(f"  {'model / profile':<40} {'full':>8} {'zstd':>8} {'delta':>8} {'delta/full':>10}")
    for (model, profile, version), old in sorted(files.items()):
        for (other_model, other_profile, new_version), new in sorted(files.items()):
            if (other_model, other_profile) == (model, profile) and new_version > version:
                plain = len(zstandard.ZstdCompressor(level=19).compress(new))
                delta = len(make_delta(old, new))
                label = f"{model} {version}->{new_version} {profile}"
                print(f"  {label:<40} {len(new):8d} {plain:8d} {delta:8d} {delta / len(new):10.2f}")
    return files


SERVE = """
import json, sys, time, urllib.request, numpy as np
from pathlib import Path
from reconciler.artifact.runtime import ModelRunner
data = Path(sys.argv[1]); manifest = json.loads((data / "models/m/active/manifest.json").read_text())
row = np.asarray(manifest["golden"]["inputs"][:1], dtype=np.float32)
def rss(): return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) * 1024
runner = ModelRunner(data / "models/m/active" / next(n for n in manifest["files"] if n.startswith("model.")), "onnx")
bare = []
for _ in range(2000):
    t = time.perf_counter(); runner.run(row); bare.append(time.perf_counter() - t)
bare_rss = rss()
from reconciler.agent.serving import ModelServer
server = ModelServer(data, ("127.0.0.1", 0)).start()
body = json.dumps({"instances": row.tolist()}).encode()
http = []
for _ in range(2000):
    t = time.perf_counter()
    urllib.request.urlopen(urllib.request.Request(server.url + "/v1/models/m:predict", body)).read()
    http.append(time.perf_counter() - t)
print(json.dumps({"bare_p50": float(np.median(bare)), "http_p50": float(np.median(http)),
                  "http_p95": float(np.percentile(http, 95)), "bare_rss": bare_rss, "serving_rss": rss()}))
server.close()
"""


def serving(files: dict, work: Path) -> None:
    key = min(k for k in files if k[0] == "digits-cnn" and k[1] == "arm-cortex-a-cpu")
    store = ArtifactStore(STORE)
    artifact = next(a for a in store.artifact_ids()
                    if (m := store.read_manifest(a))["model"] == key[0] and m["profile"] == key[1]
                    and m["version"] == key[2])  # fmt: skip
    slot = work / "device" / "models" / "m" / "slots" / "a"
    slot.parent.mkdir(parents=True)
    store.export(artifact, slot)
    (work / "device" / "models" / "m" / "active").symlink_to("slots/a")
    result = json.loads(subprocess.run([sys.executable, "-c", SERVE, str(work / "device")], check=True,
                                       capture_output=True, text=True).stdout)  # fmt: skip
    print(f"serving {key[0]} {key[2]} ({key[1]}), 1 thread, one sample per request, 2000 requests")
    print(f"  bare session.run p50       {result['bare_p50'] * 1e3:.3f} ms")
    print(f"  HTTP predict p50 / p95     {result['http_p50'] * 1e3:.3f} / {result['http_p95'] * 1e3:.3f} ms")
    print(f"  overhead p50               {(result['http_p50'] - result['bare_p50']) * 1e3:.3f} ms")
    print(f"  RSS runtime only           {result['bare_rss'] / 2**20:.1f} MiB")
    print(f"  RSS serving over HTTP      {result['serving_rss'] / 2**20:.1f} MiB")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        interrupted_download(work)
        files = deltas()
        serving(files, work)


if __name__ == "__main__":
    main()
