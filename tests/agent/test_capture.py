"""Sampled input capture: a share of the requests is kept within the device's byte budget however long it stays
offline, a redaction hook on the device sees every batch first (one that fails loses the batch), and batches go
through the device API into the artifact store as a dataset folder a build reads."""

from __future__ import annotations

import io
import random
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from reconciler.agent.capture import CaptureSampler, upload_captures, write_settings
from reconciler.controller.loop import Controller, ControllerConfig
from reconciler.deviceapi.client import DeviceRefusedError
from reconciler.optimize.datasets import load_dataset
from reconciler.plan import Desired
from reconciler.plan.desired import CaptureSettings

from ..device_fleet import MODEL, Fleet
from ..git_server import GitServer, git
from ..rollout.test_end_to_end import LABELS, fleet_repo

REDACT = """#!{python}
import io, sys
import numpy as np
batch = np.load(io.BytesIO(sys.stdin.buffer.read()), allow_pickle=False)
x = batch["x"].copy()
x[:, 0] = 0.0  # the column that must not leave the device
out = io.BytesIO()
np.savez(out, x=x, y=batch["y"])
sys.stdout.buffer.write(out.getvalue())
"""


def assignment(rate: float = 0.05, budget: int = 20_000, redaction: str = "none") -> Desired:
    return Desired("d", MODEL, "1.0.0", "p", "r", None, False, capture=CaptureSettings(rate, budget, redaction))


def serve(sampler: CaptureSampler, requests: int, rng: np.random.Generator) -> int:
    """``requests`` one-row requests, handed over every 500; the rows written."""
    written = 0
    for start in range(0, requests, 500):
        for _ in range(min(500, requests - start)):
            sampler(MODEL, "1.0.0", {"input_0": rng.normal(size=(1, 64))}, rng.normal(size=(1, 3)))
        for path in sampler.hand_over():
            with np.load(path) as batch:
                written += len(batch["y"])
    return written


def pending_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in (folder / "pending").rglob("*.npz"))


def test_a_share_of_requests_is_kept_within_the_budget_while_offline(tmp_path: Path):
    folder = tmp_path / "capture"
    write_settings(folder, [assignment(rate=0.05, budget=20_000)], None)
    sampler = CaptureSampler(folder, random.Random(7))
    rng = np.random.default_rng(7)
    written = 0
    for _ in range(8):  # hours offline: nothing is uploaded, batches keep coming
        written += serve(sampler, 2_500, rng)
        assert 0 < pending_bytes(folder) <= 20_000
    assert 800 <= written <= 1200  # 5 % of 20,000 requests
    newest = max((folder / "pending").rglob("*.npz"), key=lambda p: p.name)
    assert newest.exists()  # the oldest went, never the newest

    write_settings(folder, [assignment(rate=0.05, redaction="required")], None)
    assert serve(sampler, 2_000, rng) == 0  # redaction required and no hook here: nothing is kept
    write_settings(folder, [], None)
    assert serve(sampler, 2_000, rng) == 0  # capture off


def test_a_redaction_hook_sees_every_batch_and_a_failing_one_loses_it(tmp_path: Path):
    hook = tmp_path / "redact"
    hook.write_text(REDACT.format(python=sys.executable))
    hook.chmod(0o755)
    folder = tmp_path / "capture"
    write_settings(folder, [assignment(rate=0.05, budget=1_000_000, redaction="required")], hook)
    sampler = CaptureSampler(folder, random.Random(3))
    assert serve(sampler, 2_000, np.random.default_rng(3)) > 0
    for path in (folder / "pending").rglob("*.npz"):
        with np.load(path) as batch:
            assert np.all(batch["x"][:, 0] == 0.0) and np.any(batch["x"][:, 1] != 0.0)

    broken = tmp_path / "broken"
    broken.write_text("#!/bin/sh\nexit 3\n")
    broken.chmod(0o755)
    before = sorted((folder / "pending").rglob("*.npz"))
    write_settings(folder, [assignment(rate=0.05, budget=1_000_000, redaction="required")], broken)
    assert serve(sampler, 2_000, np.random.default_rng(4)) == 0
    assert sorted((folder / "pending").rglob("*.npz")) == before  # nothing unredacted was kept


def test_batches_go_through_the_device_api_into_a_dataset_folder_builds_read(
    fleet: Fleet, git_server: GitServer, tmp_path: Path, build_store
):
    fleet.publish(fleet.release("1.0.0", 1), fleet.release("2.0.0", 2))
    url = fleet_repo(git_server, tmp_path)
    work = tmp_path / "work"
    git("clone", "-q", url, str(work), cwd=tmp_path)
    model = work / "models" / f"{MODEL}.yaml"
    model.write_text(model.read_text().replace("  monitoring:\n", "  monitoring:\n    capture: {rate: 0.05, "
                                                                  "maxBytes: 1Mi}\n"))  # fmt: skip
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qam", "capture inputs", cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    fleet.backend.register_device("factory-00", LABELS)
    config = ControllerConfig(url, fleet.root / "controller-state", store=build_store.root)
    Controller(config, fleet.backend).cycle()
    assert fleet.backend.assignments()[("factory-00", MODEL)].capture == CaptureSettings(0.05, 1024 * 1024)

    agent = fleet.agent("factory-00")
    agent.cycle()  # writes the capture settings the model server's process reads
    folder = agent.data_dir / "capture"
    sampler = CaptureSampler(folder, random.Random(5))
    kept = serve(sampler, 2_000, np.random.default_rng(5))
    forged = folder / "pending" / MODEL / "1.0.0" / "00000000000000000001.npz"
    forged.write_bytes(b"not an npz")  # refused for what it is: dropped, never retried
    client = fleet.client("factory-00")
    sent = upload_captures(folder, client)
    assert sent >= 1 and not list((folder / "pending").rglob("*.npz"))

    dataset = load_dataset(build_store.captures(MODEL, "1.0.0"), "captures")
    assert len(dataset) == kept and dataset.x.shape == (kept, 64) and set(np.unique(dataset.y)) <= {0, 1, 2}

    # Capture turned off for the device: its batches are refused, and stay on it (within its budget) no more.
    current = fleet.backend.assignments()[("factory-00", MODEL)]
    fleet.backend.apply([replace(current, capture=None)])
    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((2, 64)), y=np.zeros(2))
    with pytest.raises(DeviceRefusedError) as refused:
        client.upload_capture(MODEL, "1.0.0", buffer.getvalue())
    assert refused.value.status == 403 and refused.value.reason == "not-capturing"
