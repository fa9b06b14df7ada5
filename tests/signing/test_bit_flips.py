"""Property: no single flipped byte anywhere in a signed artifact (model, manifest, release statement or the
signature bundle itself) yields a verified artifact."""

from __future__ import annotations

import shutil
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.signing import Expectation, RefusedError, TrustPolicy, verify_artifact

from .conftest import SignedArtifact

FILES = ["model.onnx", "manifest.json", "release.json", "release.sig"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(FILES), position=st.floats(0, 1, exclude_max=True), mask=st.integers(1, 255))
def test_a_flipped_byte_is_never_verified(
    signed_artifact: SignedArtifact, policy: TrustPolicy, tmp_path: Path, name: str, position: float, mask: int
):
    pristine = _pristine(signed_artifact)
    work = tmp_path / "flipped"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(pristine, work)
    target = work / name
    data = bytearray(target.read_bytes())
    data[int(position * len(data))] ^= mask
    target.write_bytes(bytes(data))
    try:
        verify_artifact(work, policy, Expectation("vibration-anomaly", "2.0.0", "arm-cortex-a-cpu"))
    except RefusedError:
        return
    raise AssertionError(f"flipping byte {int(position * len(data))} of {name} with {mask:#04x} still verified")


_cache: dict[str, Path] = {}


def _pristine(signed_artifact: SignedArtifact) -> Path:
    # One signed artifact per test run (signing per example would dominate the run time).
    if "dir" not in _cache or not _cache["dir"].exists():
        _cache["dir"] = signed_artifact(name="pristine")
    return _cache["dir"]
