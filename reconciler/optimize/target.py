"""Run candidates on the target ISA before they ship: arm64 profiles are checked under QEMU user-mode emulation.

Who calls it: the pipeline, after measuring the candidates on the build machine. Every candidate of an arm64
profile is loaded and run by the aarch64 build of the profile's runtime (the same onnxruntime / ai-edge-litert
and numpy versions as here) in an arm64 Debian root filesystem; one emulated Python process checks them all.
A candidate the target runtime cannot load, or whose outputs leave the tolerance, is refused; the selected one
ships the outputs computed on the target as its golden vectors, so devices compare like with like.

The environment is built once per (runtime versions, Debian suite) and cached under
``~/.cache/edge-reconciler/targets/`` (``EDGE_RECONCILER_TARGETS`` to move it): ``mmdebstrap --variant=extract``
(Debian's python3.11, no maintainer scripts, ~4 s, 75 MB) and ``pip --target --platform manylinux..._aarch64``
(~6 s). Traps handled here: QEMU 7.2 shows the guest the host's x86 ``/proc/cpuinfo``, on which onnxruntime's
cpuinfo can crash and LiteRT silently drops XNNPACK, so the root filesystem carries an ARM ``/proc/cpuinfo``
(QEMU resolves guest paths inside ``QEMU_LD_PREFIX`` first) and "Error in cpuinfo" fails the check.
``QEMU_CPU`` is the profile's ``cpu`` (a Cortex-A53 has no SDOT or FP16, like the real one). Latency under
emulation says nothing about a device: it is never reported as one.

Without ``qemu-aarch64`` or ``mmdebstrap`` the check is recorded as not run, with the reason; never faked.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from reconciler.artifact.runtime import Inputs, as_arrays

from .errors import BuildError

SUITE = "bookworm"
MIRROR = os.environ.get("EDGE_RECONCILER_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PACKAGES = ("python3.11-minimal", "libpython3.11-stdlib", "libstdc++6", "libgcc-s1", "zlib1g", "libexpat1", "libffi8")
PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")
RUNTIMES = ("onnxruntime", "ai-edge-litert", "numpy")
ARM_ARCHES = ("arm64", "aarch64")
DEFAULT_CPU = "cortex-a53"
"""The oldest core of the arch (no SDOT, no FP16): what a profile that names no ``cpu`` is checked on."""
CHECK_TIMEOUT = 900
FAULT = "EDGE_BUILD_TARGET_FAULT"
"""Tests: ``outputs`` makes the guest add 1 to every output (a forced mismatch between host and target);
``crash:NAME`` kills the guest when it starts candidate NAME (a runtime that dies on one model)."""
_CPUINFO = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd03
CPU revision\t: 4

"""


@dataclass
class TargetResult:
    """What the target said of one candidate: its outputs on the checked rows, or why it could not run."""

    outputs: np.ndarray | None = None
    error: str | None = None
    latency_ms: float | None = None
    """Emulated: how long the guest took, never a device figure."""


@dataclass
class TargetCheck:
    """The record a manifest carries (``targetCheck``): where the candidates were run besides the build machine."""

    isa: str
    cpu: str
    emulated: bool = True
    runtime: str = ""
    version: str = ""
    status: str = "checked"
    reason: str | None = None
    results: dict[str, TargetResult] = field(default_factory=dict)

    def to_json(self, max_difference: float | None = None) -> dict:
        record = {"isa": self.isa, "machine": "aarch64", "cpu": self.cpu, "emulated": self.emulated,
                  "runtime": self.runtime, "version": self.version, "status": self.status}  # fmt: skip
        if self.reason:
            record["reason"] = self.reason
        if max_difference is not None:
            record["maxDifference"] = round(max_difference, 7)
        return record


def is_arm(arch: str) -> bool:
    return arch in ARM_ARCHES


def check_on_target(arch: str, cpu: str | None, fmt: str, models: dict[str, Path], rows: Inputs, workdir: Path,
                    threads: int = 1) -> TargetCheck:  # fmt: skip
    """Run each of ``models`` (name to file) on ``rows`` under emulation of ``arch`` (arm64); the outputs by name.

    One guest runs them in turn and records each as it finishes; a candidate that takes the emulated runtime down
    (SIGILL on a core without the instruction, a crash) or runs past the time limit is that candidate's error,
    and a new guest goes on with the rest."""
    if not is_arm(arch):
        raise BuildError(f"no target check for arch {arch!r} (arm64 only)")
    runtime = "onnxruntime" if fmt == "onnx" else "ai-edge-litert"
    check = TargetCheck("arm64", cpu or DEFAULT_CPU, runtime=runtime)
    reason = unavailable()
    if reason:
        check.status, check.reason = "not run", reason
        return check
    check.version = _version(runtime)
    environment = _environment()
    request = workdir / "target-request.npz"
    np.savez(request, **as_arrays(rows))  # type: ignore[arg-type]
    guest = _guest_code(workdir / "target-guest")
    qemu = shutil.which("qemu-aarch64")
    assert qemu is not None  # unavailable() said so
    env = {"QEMU_LD_PREFIX": str(environment / "rootfs"), "QEMU_CPU": check.cpu, "PYTHONNOUSERSITE": "1",
           "PYTHONPATH": f"{environment / 'site'}:{guest}", "HOME": str(workdir), "LANG": "C.UTF-8"}  # fmt: skip
    if os.environ.get(FAULT):
        env[FAULT] = os.environ[FAULT]
    remaining = dict(models)
    for attempt in range(len(models)):
        out = workdir / f"target-out-{attempt}"
        out.mkdir(exist_ok=True)
        python = environment / "rootfs" / "usr" / "bin" / "python3.11"
        command = [qemu, str(python), "-S", "-c", _PROBE, fmt, str(request), str(out), str(threads),
                   *[f"{name}={path}" for name, path in remaining.items()]]  # fmt: skip
        failure = _run_guest(command, env, check.cpu)
        for name, entry in _summary(out).items():
            result = TargetResult(error=entry.get("error"), latency_ms=entry.get("ms"))
            if result.error is None and "ms" in entry:
                result.outputs = np.load(out / f"{name}.npy")
            elif result.error is None:  # started, never finished: this candidate took the guest down
                result.error = failure or "the emulated runtime stopped on it"
            check.results[name] = result
            remaining.pop(name, None)
        if not remaining:
            break
        if failure is None or not _summary(out):  # nothing started: the guest itself cannot run
            raise BuildError(f"the {check.cpu} emulation failed: {failure or 'no result'}")
    return check


def _run_guest(command: list[str], env: dict[str, str], cpu: str) -> str | None:
    """Run one guest; None when it finished, else what went wrong (its exit, or the time limit)."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=CHECK_TIMEOUT)
    except subprocess.TimeoutExpired:
        return f"the {cpu} emulation did not finish within {CHECK_TIMEOUT} s"
    if "Error in cpuinfo" in done.stderr:
        raise BuildError("the emulated runtime could not read the CPU's features (Error in cpuinfo): its fast "
                         "kernels would be off, so its outputs say nothing of a device")  # fmt: skip
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1][:300]
        return f"the emulated runtime exited with {done.returncode}: {last}"
    return None


def _summary(out: Path) -> dict[str, dict]:
    """The guest's record: an entry per candidate it started, with ``ms`` once finished or ``error``."""
    path = out / "summary.json"
    return json.loads(path.read_text()) if path.exists() else {}


def unavailable() -> str | None:
    """Why the check cannot run here, or None: QEMU is needed, and mmdebstrap until the environment is cached.
    Never raises: a build key asks it, and a missing runtime or home folder is a reason, not a crash."""
    try:
        needed = ["qemu-aarch64"] if _ready(_environment_path()) else ["qemu-aarch64", "mmdebstrap"]
    except (BuildError, RuntimeError, OSError) as exc:
        return f"no target environment here: {exc}"
    missing = [tool for tool in needed if shutil.which(tool) is None]
    return f"{' and '.join(missing)} not installed" if missing else None


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError as exc:
        raise BuildError(f"{distribution} is not installed here, so its aarch64 build cannot be matched") from exc


def environment_root() -> Path:
    default = Path.home() / ".cache" / "edge-reconciler" / "targets"
    return Path(os.environ.get("EDGE_RECONCILER_TARGETS", default))


def _environment_path() -> Path:
    """Where the environment for this installation's runtime versions lives (made or not)."""
    versions = {name: _version(name) for name in RUNTIMES}
    key = hashlib.sha256(json.dumps([SUITE, PACKAGES, versions], sort_keys=True).encode()).hexdigest()[:16]
    return environment_root() / f"arm64-{key}"


def _ready(environment: Path) -> bool:
    return (environment / "ready").exists()


def ensure_environment() -> Path:
    """The cached arm64 root filesystem and aarch64 wheels for this installation's runtime versions, made when
    missing (image builds call it to ship the environment inside the build image)."""
    return _environment()


def _environment() -> Path:
    """The cached arm64 root filesystem and aarch64 wheels for this installation's runtime versions."""
    target = _environment_path()
    if _ready(target):
        return target
    root = target.parent
    root.mkdir(parents=True, exist_ok=True)
    versions = {name: _version(name) for name in RUNTIMES}
    with (root / f"{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another build may be making the same environment
        if _ready(target):
            return target
        staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.", dir=root))
        try:
            _make_rootfs(staging / "rootfs")
            _install_wheels(staging / "site", versions)
            (staging / "ready").write_text(json.dumps(versions))
            staging.chmod(0o755)  # mkdtemp's 0700 would hide it from builds that run as another user (images)
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _make_rootfs(rootfs: Path) -> None:
    command = ["mmdebstrap", "--variant=extract", "--architectures=arm64", f"--include={','.join(PACKAGES)}",
               SUITE, str(rootfs), MIRROR]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise BuildError(f"mmdebstrap could not make the arm64 root filesystem: {done.stderr.strip()[-300:]}")
    (rootfs / "proc").mkdir(exist_ok=True)
    (rootfs / "proc" / "cpuinfo").write_text(_CPUINFO)


def _install_wheels(site: Path, versions: dict[str, str]) -> None:
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
               "--target", str(site), "--python-version", "3.11", "--only-binary=:all:",
               *[f"--platform={p}" for p in PLATFORMS], *[f"{name}=={v}" for name, v in versions.items()]]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise BuildError(f"pip could not fetch the aarch64 wheels of {', '.join(versions)}: "
                         f"{done.stderr.strip()[-300:]}")  # fmt: skip


def _guest_code(folder: Path) -> Path:
    """The runner module (pure Python over numpy and the runtimes) where the guest imports it, alone: the host's
    site-packages hold x86 builds that must never reach the emulated interpreter."""
    from reconciler.artifact import runtime

    package = folder / "reconciler" / "artifact"
    package.mkdir(parents=True, exist_ok=True)
    (folder / "reconciler" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    shutil.copy(runtime.__file__, package / "runtime.py")
    return folder


_PROBE = """
import json, os, sys, time
from pathlib import Path
import numpy as np
from reconciler.artifact.runtime import ModelRunner, inputs_from_arrays
fmt, request, out, threads = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
with np.load(request) as data:
    rows = inputs_from_arrays({k: data[k] for k in data.files}, labels="")
summary = {}

def record():
    (out / "summary.part").write_text(json.dumps(summary))
    os.replace(out / "summary.part", out / "summary.json")

for item in sys.argv[5:]:
    name, path = item.split("=", 1)
    summary[name] = {}
    record()
    if os.environ.get("EDGE_BUILD_TARGET_FAULT") == f"crash:{name}":
        os.kill(os.getpid(), 9)
    try:
        start = time.perf_counter()
        outputs = ModelRunner(Path(path), fmt, threads).run(rows)
        took = (time.perf_counter() - start) * 1000
        if os.environ.get("EDGE_BUILD_TARGET_FAULT") == "outputs":
            outputs = outputs + 1.0
        np.save(out / f"{name}.npy", outputs)
        summary[name] = {"ms": took}
    except Exception as exc:
        summary[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
    record()
"""
