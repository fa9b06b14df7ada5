"""verify_artifact against attacks: each is refused with its own reason, and a good artifact verifies."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from reconciler.signing import (
    Expectation,
    Refusal,
    RefusedError,
    Release,
    TrustPolicy,
    sign_with_key,
    verify_artifact,
    write_release,
)

from .conftest import SignedArtifact, write_artifact

EXPECT = Expectation("vibration-anomaly", "2.0.0", "arm-cortex-a-cpu")


def refused(directory: Path, policy: TrustPolicy, expect: Expectation = EXPECT) -> RefusedError:
    with pytest.raises(RefusedError) as caught:
        verify_artifact(directory, policy, expect)
    return caught.value


def test_a_released_artifact_verifies(signed_artifact: SignedArtifact, policy: TrustPolicy):
    directory = signed_artifact(counter=3, minimum_counter=2)
    verified = verify_artifact(directory, policy, EXPECT)
    assert (verified.model, verified.version, verified.profile, verified.signer) == (
        "vibration-anomaly", "2.0.0", "arm-cortex-a-cpu", "owner",
    )  # fmt: skip
    assert verified.release.counter == 3
    assert set(verified.digests) == {"model.onnx", "manifest.json", "release.json"}
    # The controller asks without a device profile: it serves every profile the release covers.
    assert verify_artifact(directory, policy, Expectation("vibration-anomaly")).signer == "owner"


def test_a_flipped_model_byte_is_tampering(signed_artifact: SignedArtifact, policy: TrustPolicy):
    directory = signed_artifact()
    model = directory / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    error = refused(directory, policy)
    assert error.reason is Refusal.TAMPERED
    assert "model.onnx" in error.message


def test_an_added_file_is_refused(signed_artifact: SignedArtifact, policy: TrustPolicy):
    directory = signed_artifact()
    (directory / "extra.onnx").write_bytes(b"payload")
    error = refused(directory, policy)
    assert error.reason is Refusal.FILES_CHANGED
    assert "added extra.onnx" in error.message


def test_an_added_dotfile_is_refused_too(signed_artifact: SignedArtifact, policy: TrustPolicy):
    """model-signing ignores .git* files by default; an artifact must not."""
    directory = signed_artifact()
    (directory / ".gitignore").write_text("*")
    assert refused(directory, policy).reason in (Refusal.FILES_CHANGED, Refusal.PATH_TRAVERSAL)


def test_a_removed_file_is_refused(signed_artifact: SignedArtifact, policy: TrustPolicy):
    directory = signed_artifact()
    (directory / "model.onnx").unlink()
    error = refused(directory, policy)
    assert error.reason is Refusal.FILES_CHANGED
    assert "removed model.onnx" in error.message


def test_a_symlink_is_refused(signed_artifact: SignedArtifact, policy: TrustPolicy):
    directory = signed_artifact()
    (directory / "model.onnx").rename(directory.parent / "elsewhere.onnx")
    (directory / "model.onnx").symlink_to(directory.parent / "elsewhere.onnx")
    error = refused(directory, policy)
    assert error.reason is Refusal.FILES_CHANGED
    assert "symlink" in error.message


def test_a_manifest_swapped_from_another_signed_artifact_is_refused(
    signed_artifact: SignedArtifact, policy: TrustPolicy
):
    good = signed_artifact()
    other = signed_artifact(profile="jetson-gpu", name="other")
    shutil.copy(other / "manifest.json", good / "manifest.json")
    assert refused(good, policy).reason is Refusal.TAMPERED


def test_a_bundle_swapped_from_another_artifact_is_refused(signed_artifact: SignedArtifact, policy: TrustPolicy):
    good = signed_artifact()
    other = signed_artifact(name="other", seed=7)
    shutil.copy(other / "release.sig", good / "release.sig")
    assert refused(good, policy).reason is Refusal.TAMPERED


def test_a_signature_by_an_untrusted_key_is_refused(signed_artifact: SignedArtifact, policy: TrustPolicy):
    error = refused(signed_artifact(key="stranger"), policy)
    assert error.reason is Refusal.UNTRUSTED_SIGNER
    assert "owner" in error.message


def test_the_controller_key_alone_cannot_release(signed_artifact: SignedArtifact, policy: TrustPolicy):
    """Uptane's split: a compromised controller can sign, but not as a model owner."""
    error = refused(signed_artifact(key="controller"), policy)
    assert error.reason is Refusal.UNTRUSTED_SIGNER


def test_an_artifact_without_a_release_statement_is_not_released(tmp_path: Path, keys, policy: TrustPolicy):
    directory = write_artifact(tmp_path / "a", "vibration-anomaly", "2.0.0", "arm-cortex-a-cpu")
    sign_with_key(directory, keys["owner"].private)
    assert refused(directory, policy).reason is Refusal.NOT_RELEASED


def test_an_unsigned_artifact_is_refused(tmp_path: Path, policy: TrustPolicy):
    directory = write_artifact(tmp_path / "a", "vibration-anomaly", "2.0.0", "arm-cortex-a-cpu")
    write_release(directory, Release("vibration-anomaly", "2.0.0", ("arm-cortex-a-cpu",), 1))
    assert refused(directory, policy).reason is Refusal.UNSIGNED


def test_a_signer_may_release_only_its_models(signed_artifact: SignedArtifact, policy: TrustPolicy):
    """vision-owner may release digits-* only: its key on another model is untrusted."""
    error = refused(signed_artifact(key="vision-owner"), policy)
    assert error.reason is Refusal.UNTRUSTED_SIGNER
    digits = signed_artifact(model="digits-cnn", version="1.1.0", key="vision-owner")
    assert verify_artifact(digits, policy, Expectation("digits-cnn", "1.1.0")).signer == "vision-owner"


def test_an_artifact_for_another_hardware_profile_is_refused(signed_artifact: SignedArtifact, policy: TrustPolicy):
    directory = signed_artifact(profile="coral-npu")
    error = refused(directory, policy)
    assert error.reason is Refusal.WRONG_PROFILE
    assert "coral-npu" in error.message and "arm-cortex-a-cpu" in error.message


def test_a_release_for_other_profiles_does_not_cover_the_artifact(signed_artifact: SignedArtifact, policy: TrustPolicy):
    directory = signed_artifact(released_for=("jetson-gpu",))
    assert refused(directory, policy).reason is Refusal.NOT_RELEASED


def test_another_model_or_version_than_asked_is_refused(signed_artifact: SignedArtifact, policy: TrustPolicy):
    directory = signed_artifact(version="1.0.0")
    error = refused(directory, policy)
    assert error.reason is Refusal.WRONG_MODEL
    assert "vibration-anomaly@1.0.0" in error.message


def test_a_release_below_the_minimum_counter_is_revoked(signed_artifact: SignedArtifact, policy: TrustPolicy):
    directory = signed_artifact(counter=2)
    error = refused(directory, policy, Expectation("vibration-anomaly", "2.0.0", "arm-cortex-a-cpu", minimum_counter=3))
    assert error.reason is Refusal.REVOKED
    assert verify_artifact(directory, policy, Expectation("vibration-anomaly", minimum_counter=2)).release.counter == 2


def test_a_release_statement_that_contradicts_the_manifest_is_refused(tmp_path: Path, keys, policy: TrustPolicy):
    directory = write_artifact(tmp_path / "a", "vibration-anomaly", "2.0.0", "arm-cortex-a-cpu")
    write_release(directory, Release("vibration-anomaly", "3.0.0", ("arm-cortex-a-cpu",), 5))
    sign_with_key(directory, keys["owner"].private)
    error = refused(directory, policy, Expectation("vibration-anomaly"))
    assert error.reason is Refusal.WRONG_MODEL


def test_a_manifest_that_lies_about_its_model_file_is_refused(tmp_path: Path, keys, policy: TrustPolicy):
    directory = write_artifact(tmp_path / "a", "vibration-anomaly", "2.0.0", "arm-cortex-a-cpu")
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"]["model.onnx"]["sha256"] = "0" * 64
    (directory / "manifest.json").write_text(json.dumps(manifest))
    write_release(directory, Release("vibration-anomaly", "2.0.0", ("arm-cortex-a-cpu",), 1))
    sign_with_key(directory, keys["owner"].private)
    assert refused(directory, policy).reason is Refusal.MALFORMED


def test_a_policy_without_signers_for_the_model_refuses(signed_artifact: SignedArtifact):
    error = refused(signed_artifact(), TrustPolicy(()))
    assert error.reason is Refusal.UNTRUSTED_SIGNER
    assert "names no release signer" in error.message
