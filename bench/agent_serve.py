"""Memory of the real ``edgectl agent --serve`` on a device, against a process holding only the runtime session.

Starts the controller side of a fleet (device API over mutual TLS, TUF, a signed release of vibration-anomaly
1.0.0 for arm-cortex-a-cpu), runs ``edgectl agent --serve`` as a device would, waits until it reports Healthy,
sends requests to its inference endpoint, and prints the resident memory of the agent process and of its model
server process (a child it supervises), against a bare ``onnxruntime`` session on the same model file.

    python bench/agent_serve.py            # 2,000 requests
    python bench/agent_serve.py --quick    # 100 requests
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

import urllib3
from _check import parser, ratio, require

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reconciler.artifact.store import ArtifactStore  # noqa: E402
from tests.device_fleet import MODEL, PROFILE, build_artifacts, close_fleet, free_port, open_fleet  # noqa: E402

STORE = Path.home() / ".cache" / "edge-reconciler" / "bench-store"
EDGECTL = Path(sys.executable).parent / "edgectl"


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS")).split()[1]) * 1024


def until(check, what: str, timeout: float = 300.0):
    deadline = time.monotonic() + timeout
    while not (result := check()):
        require(time.monotonic() < deadline, f"{what} did not happen within {timeout:g} s")
        time.sleep(0.1)
    return result


def bare_session_rss(model_file: Path, row: list) -> int:
    """RSS of a process that loaded the same model into onnxruntime and ran it once (the floor)."""
    code = textwrap.dedent(f"""
        import numpy as np, onnxruntime as ort
        options = ort.SessionOptions(); options.intra_op_num_threads = 1; options.inter_op_num_threads = 1
        session = ort.InferenceSession({str(model_file)!r}, options, providers=["CPUExecutionProvider"])
        session.run(None, {{session.get_inputs()[0].name: np.asarray([{row!r}], dtype=np.float32)}})
        print(int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) * 1024)
    """)
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def main() -> None:
    args = parser(__doc__).parse_args()
    requests = 100 if args.quick else 2000
    with tempfile.TemporaryDirectory(prefix="agent-serve-") as tmp:
        work = Path(tmp)
        built = build_artifacts(ArtifactStore(STORE), work / "artifacts")
        fleet = open_fleet(work / "fleet", built, ArtifactStore(STORE))
        agent = None
        try:
            fleet.publish(fleet.release("1.0.0", 1))
            fleet.assign("factory-1", "1.0.0")
            (work / "root.json").write_bytes(fleet.pinned_root)
            token = fleet.identity.registry.create_token(timedelta(hours=1), datetime.now(UTC), device="factory-1")
            port = free_port()
            data_dir = work / "device"
            agent = subprocess.Popen(
                [str(EDGECTL), "agent", "--device", "factory-1", "--profile", PROFILE, "--device-api",
                 fleet.server.url, "--ca", str(fleet.root / "ca" / "ca.crt"), "--token", token, "--data-dir",
                 str(data_dir), "--trusted-root", str(work / "root.json"), "--release-key", str(fleet.owner.public),
                 "--trial-period", "0s", "--interval", "1", "--serve", f"127.0.0.1:{port}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            until(lambda: (s := fleet.backend.statuses().get(("factory-1", MODEL))) and s.phase == "Healthy",
                  "Healthy")  # fmt: skip
            active = data_dir / "models" / MODEL / "active"
            manifest = json.loads((active / "manifest.json").read_text())
            rows = manifest["golden"]["inputs"]
            url = f"http://127.0.0.1:{port}/v1/models/{MODEL}:predict"

            def answers() -> bool:
                try:
                    return urllib3.request("POST", url, json={"instances": rows[:1]}, timeout=5).status == 200
                except urllib3.exceptions.HTTPError:
                    return False

            until(answers, "the model server answering")
            started = time.perf_counter()
            for index in range(requests):
                response = urllib3.request("POST", url, json={"instances": [rows[index % len(rows)]]}, timeout=30)
                require(response.status == 200, f"request {index} answered {response.status}")
            elapsed = time.perf_counter() - started
            server_pid = int((data_dir / "serving" / "pid").read_text())
            agent_rss, server_rss = rss(agent.pid), rss(server_pid)
            model_file = active / next(name for name in manifest["files"] if name.startswith("model."))
            bare = bare_session_rss(model_file, rows[0])
        finally:
            if agent is not None and agent.poll() is None:
                agent.send_signal(signal.SIGTERM)
                agent.wait(60)
            close_fleet(fleet)
    print(f"edgectl agent --serve, {MODEL} {manifest['version']} ({PROFILE}), {requests} requests "
          f"({requests / elapsed:.0f}/s, one client)")  # fmt: skip
    print(f"  RSS agent process          {agent_rss / 2**20:.1f} MiB")
    print(f"  RSS model server process   {server_rss / 2**20:.1f} MiB")
    print(f"  RSS both                   {(agent_rss + server_rss) / 2**20:.1f} MiB")
    print(f"  RSS bare onnxruntime       {bare / 2**20:.1f} MiB  (baseline: the model in a session, nothing else)")
    print(f"  ratio both / baseline      {ratio(agent_rss + server_rss, bare, 'RSS both / bare session'):.2f}x")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
