"""The product's images, built by scripts/build-images with Debian's buildah from a Debian root filesystem (no
Docker daemon, no registry pulls; cached under ~/.cache/edge-reconciler/images), and run: the runtime image
(controller and agent) has edgectl and no TensorFlow, the build image has the build toolchain."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMAGES = Path.home() / ".cache" / "edge-reconciler" / "images"
ENV = {**os.environ, "STORAGE_DRIVER": "vfs", "BUILDAH_ISOLATION": "chroot"}


@pytest.fixture(scope="module")
def images() -> Iterator[dict[str, Path]]:
    built = subprocess.run([str(ROOT / "scripts" / "build-images"), str(IMAGES)], capture_output=True, text=True,
                           timeout=1800)  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    version = subprocess.run([str(ROOT / ".venv" / "bin" / "edgectl"), "--version"], capture_output=True,
                             text=True, check=True).stdout.split()[-1]  # fmt: skip
    names = ("edge-reconciler", "edge-reconciler-build")
    yield {name: IMAGES / f"{name}-{version}.tar" for name in names}
    # `buildah from docker-archive:` copies each image into buildah's storage (4 GB for the build image under
    # vfs); left there, every rebuild would leave the last copy behind until the disk is full.
    subprocess.run(["buildah", "rmi", "--force", *(f"docker.io/library/{name}:{version}" for name in names)],
                   capture_output=True, env=ENV)  # fmt: skip


def run_in(image: Path, *command: str) -> subprocess.CompletedProcess[str]:
    container = subprocess.run(["buildah", "from", "--quiet", f"docker-archive:{image}"], capture_output=True,
                               text=True, check=True, env=ENV).stdout.strip()  # fmt: skip
    try:
        return subprocess.run(["buildah", "run", container, "--", *command], capture_output=True, text=True,
                              timeout=300, env=ENV)  # fmt: skip
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True, env=ENV)


def test_the_runtime_image_runs_the_controller_and_agent_without_tensorflow(images):
    image = images["edge-reconciler"]
    version = run_in(image, "edgectl", "--version")
    assert version.returncode == 0 and image.stem.split("-")[-1] in version.stdout, version.stderr
    for command in (["edgectl", "run", "--help"], ["edgectl", "agent", "--help"]):
        assert run_in(image, *command).returncode == 0
    tensorflow = run_in(image, "python3", "-c", "import tensorflow")
    assert tensorflow.returncode != 0 and "No module named 'tensorflow'" in tensorflow.stderr
    user = run_in(image, "id", "-u")
    assert user.stdout.strip() == "65532"  # not root, the chart's runAsUser


def test_the_build_image_runs_builds(images):
    image = images["edge-reconciler-build"]
    assert run_in(image, "edgectl", "--version").returncode == 0
    assert run_in(image, "edgectl", "build", "--help").returncode == 0
    assert run_in(image, "edgectl", "build-job", "--help").returncode == 0
    toolchain = run_in(image, "python3", "-c", "import tensorflow, tf2onnx, onnxruntime, torch; print('ok')")
    assert toolchain.returncode == 0 and "ok" in toolchain.stdout, toolchain.stderr[-2000:]
    # The arm64 target check runs inside the image: QEMU and the environment made at image build time.
    checked = run_in(image, "python3", "-c", TARGET_CHECK)
    assert checked.returncode == 0, checked.stderr[-2000:]
    assert checked.stdout.split() == ["checked", "cortex-a53", "True"], checked.stdout


TARGET_CHECK = """
import tempfile
from pathlib import Path
import numpy as np
import onnx
from onnx import TensorProto, helper
from reconciler.optimize.target import check_on_target
work = Path(tempfile.mkdtemp())
graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
onnx.save(model, str(work / "m.onnx"))
rows = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
check = check_on_target("arm64", None, "onnx", {"m": work / "m.onnx"}, rows, work)
print(check.status, check.cpu, bool(np.array_equal(check.results["m"].outputs, np.maximum(rows, 0))))
"""
