"""The build pipeline end to end on the example fleet: real TensorFlow, tf2onnx, onnxruntime and LiteRT."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from reconciler.api import load_fleet
from reconciler.artifact import sketches
from reconciler.artifact.runtime import ModelRunner
from reconciler.artifact.store import ArtifactStore
from reconciler.gitops.files import read_fleet_dir
from reconciler.optimize.pipeline import BuildInputs, build_profile, build_scope

EXAMPLE = Path(__file__).resolve().parents[2] / "fleet-example"


@pytest.fixture(scope="module")
def tree():
    return load_fleet(read_fleet_dir(EXAMPLE))


@pytest.fixture(scope="module")
def built(tree, tmp_path_factory):
    """digits-cnn 1.0.0 for every profile, built once for the module."""
    store = ArtifactStore(tmp_path_factory.mktemp("store"))
    results = build_scope(tree, EXAMPLE, store, models=["digits-cnn"], versions=["1.0.0"])
    return store, {r.profile: r for r in results}


def inputs_for(tree, model="digits-cnn", version="1.0.0", profile="coral-npu", repo=EXAMPLE) -> BuildInputs:
    m = tree.models[model]
    return BuildInputs(repo, m, m.version(version), tree.profiles[profile], m.recipe_for(profile))


def test_every_profile_gets_a_gated_artifact(built):
    store, results = built
    assert sorted(results) == ["arm-cortex-a-cpu", "coral-npu", "jetson-gpu"]
    for result in results.values():
        assert result.error is None, result.error
        assert result.artifact is not None and result.selected is not None
        assert store.get_artifact(result.artifact.id) == result.artifact
        selected = result.selected.measurement
        assert result.reference_accuracy - selected.accuracy <= 0.02  # the model's maxAccuracyDrop


def test_integer_only_profile_gets_int8_tflite_with_int8_io(built):
    store, results = built
    result = results["coral-npu"]
    assert result.selected.name == "int8-only"
    manifest = store.read_manifest(result.artifact.id)
    assert (manifest["format"], manifest["precision"], manifest["runtime"]) == ("tflite", "int8", "tflite")
    assert manifest["tensors"]["inputs"][0]["dtype"] == "int8"
    assert "quantization" in manifest["tensors"]["inputs"][0]
    fp32 = next(v for v in result.variants if v.name == "fp32")
    assert not fp32.eligible  # measured as the reference only
    assert result.selected.measurement.size_bytes / fp32.measurement.size_bytes < 0.35


def test_accelerator_latency_is_recorded_as_not_measured(built):
    _, results = built
    for profile in ("jetson-gpu", "coral-npu"):
        for variant in results[profile].variants:
            assert variant.measurement.latency_p95_ms is None
            assert variant.measurement.latency_note.startswith("not measured")
    cpu = results["arm-cortex-a-cpu"].selected.measurement
    assert cpu.latency_p95_ms is not None and cpu.latency_note is None


def test_cpu_selection_is_by_size_and_quality_never_by_the_hosts_timing(built):
    """The smallest passing variant wins, equal sizes going to the better metric: the build host's latency is not
    the target's and its noise would make rebuilds differ, so it only leaves a note."""
    _, results = built
    result = results["arm-cortex-a-cpu"]
    fp32 = next(v for v in result.variants if v.name == "fp32")
    passing = [v for v in result.variants if v.passed and v.eligible]
    smallest = min(v.measurement.size_bytes for v in passing)
    assert smallest < fp32.measurement.size_bytes
    tied = [v for v in passing if v.measurement.size_bytes == smallest]
    best = max(v.measurement.accuracy for v in tied)
    assert result.selected in tied and result.selected.measurement.accuracy == best
    for variant in result.variants:  # fp32 and the unpruned source are what the others are measured against
        measured = variant.name not in ("fp32", "unpruned")
        slower = measured and variant.measurement.latency_p50_ms > fp32.measurement.latency_p50_ms * 1.05
        assert any("slower than fp32" in note for note in variant.notes) == slower


def test_structured_pruning_shows_its_measured_speed_up(built):
    """The unpruned source is converted and measured next to the candidates (never shipped): its size and
    latency against the pruned fp32 variant are the pass's effect, in the fp32 notes and the benchmark."""
    store, results = built
    result = results["arm-cortex-a-cpu"]
    unpruned = next(v for v in result.variants if v.name == "unpruned")
    fp32 = next(v for v in result.variants if v.name == "fp32")
    assert not unpruned.eligible and not unpruned.selected and unpruned.measurement is not None
    pruning = store.read_manifest(result.artifact.id)["benchmark"]["pruning"]
    assert pruning["sizeBytesBefore"] == unpruned.measurement.size_bytes > pruning["sizeBytesAfter"]
    assert pruning["speedup"] == round(unpruned.measurement.latency_p50_ms / fp32.measurement.latency_p50_ms, 3)
    assert any(note.startswith("structured pruning: ") and "x)" in note for note in fp32.notes)
    for other in ("coral-npu", "jetson-gpu"):  # no structured pruning in their recipes: nothing to compare
        assert all(v.name != "unpruned" for v in results[other].variants)


def test_static_int8_activations_follow_the_profiles_arch(built, tmp_path):
    """arm64 (the Cortex-A profile) gets S8S8: every QuantizeLinear of the artifact quantizes to int8."""
    import onnx

    store, results = built
    result = results["arm-cortex-a-cpu"]
    assert result.selected.precision == "int8"
    record = store.get_artifact(result.artifact.id)
    graph = onnx.load_from_string(store.read_blob(record.files["model.onnx"])).graph
    zero_points = {t.name: t.data_type for t in graph.initializer}
    quantizers = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    assert quantizers and {zero_points[n.input[2]] for n in quantizers} == {onnx.TensorProto.INT8}


def test_manifest_golden_vectors_reproduce_on_the_artifact(built, tmp_path):
    store, results = built
    for result in results.values():
        manifest = store.read_manifest(result.artifact.id)
        name = f"model.{manifest['format']}"
        model_file = tmp_path / f"{result.profile}-{name}"
        model_file.write_bytes(store.read_blob(result.artifact.files[name]))
        assert hashlib.sha256(model_file.read_bytes()).hexdigest() == manifest["files"][name]["sha256"]
        golden = manifest["golden"]
        outputs = ModelRunner(model_file, manifest["format"]).run(np.array(golden["inputs"], dtype=np.float32))
        np.testing.assert_allclose(outputs, golden["outputs"], atol=golden["tolerance"]["atol"])
        assert manifest["lineage"]["source"]["sha256"] == tree_digest("digits-cnn", "1.0.0")
        histogram = manifest["histograms"]["prediction"]
        assert sum(histogram["counts"]) == 497 and histogram["classes"] == 10
        # The drift reference: the evaluation rows' features and the artifact's scores on them, as KLL sketches.
        reference = {name: sketches.decode(text) for name, text in manifest["sketches"].items()}
        assert {"score", "margin"} <= set(reference) and any(name.startswith("input_0[") for name in reference)
        # 497 rows, kept as 256 quantiles: an exact sketch (no compaction), so a rebuild gives the same bytes.
        assert all(sketch.n == 256 and not sketch.is_estimation_mode() for sketch in reference.values())
        assert 0.1 <= reference["score"].get_quantile(0.5) <= 1.0


def tree_digest(model: str, version: str) -> str:
    return hashlib.sha256((EXAMPLE / "models" / model / version / "model.keras").read_bytes()).hexdigest()


def test_a_rebuild_is_a_cache_hit_and_a_cold_rebuild_gives_the_same_artifact(tree, built, tmp_path):
    store, results = built
    again = build_profile(inputs_for(tree), store)
    assert again.cached and again.artifact == results["coral-npu"].artifact
    fresh = build_profile(inputs_for(tree), ArtifactStore(tmp_path / "cold"))
    assert not fresh.cached
    assert fresh.artifact.id == results["coral-npu"].artifact.id
    assert fresh.artifact.files["model.tflite"] == results["coral-npu"].artifact.files["model.tflite"]


def test_onnx_conversion_is_deterministic(tree, built, tmp_path):
    """A second build in the same process must not differ (Keras numbers layers process-wide)."""
    _, results = built
    fresh = build_profile(inputs_for(tree, profile="jetson-gpu"), ArtifactStore(tmp_path / "cold"))
    assert fresh.artifact.files["model.onnx"] == results["jetson-gpu"].artifact.files["model.onnx"]


def test_a_rebuild_after_structured_pruning_gives_the_same_artifact(tree, built, tmp_path):
    """Pruning makes a new Keras model, whose input layer Keras names by a process-wide counter: the artifact
    must not depend on how many models this process built before."""
    _, results = built
    fresh = build_profile(inputs_for(tree, profile="arm-cortex-a-cpu"), ArtifactStore(tmp_path / "cold"))
    assert fresh.artifact is not None, fresh.error
    assert fresh.artifact.id == results["arm-cortex-a-cpu"].artifact.id


def test_a_library_failure_refuses_its_build_only_and_names_the_pass(tree, built, monkeypatch):
    """Keras or a converter raising its own exception type refuses that (model, version, profile), named with its
    pass; the rest of the run goes on (here: a cache hit for another profile)."""
    import reconciler.optimize.pipeline as pipeline

    store, results = built

    def broken(model, step, data):
        raise RuntimeError("Layer 'conv2d' has no attribute 'kernel'\n  (a long traceback follows)")

    monkeypatch.setattr(pipeline, "_train_pass", broken)
    store_ids = set(store.artifact_ids())
    cold = ArtifactStore(store.root.parent / "cold-for-failure")
    failed = build_profile(inputs_for(tree, profile="arm-cortex-a-cpu"), cold)
    assert failed.artifact is None and failed.error == (
        "digits-cnn@1.0.0 for arm-cortex-a-cpu, pass 1 (prune): RuntimeError: Layer 'conv2d' has no attribute "
        "'kernel'")  # fmt: skip
    others = build_scope(tree, EXAMPLE, store, models=["digits-cnn"], versions=["1.0.0"], profiles=["jetson-gpu"])
    assert [r.artifact for r in others] == [results["jetson-gpu"].artifact] and set(store.artifact_ids()) == store_ids


def copy_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLE, repo)
    return repo


def test_a_source_that_does_not_match_its_digest_is_refused(tree, tmp_path):
    repo = copy_repo(tmp_path)
    source = repo / "models" / "digits-cnn" / "1.0.0" / "model.keras"
    source.write_bytes(source.read_bytes() + b"tampered")
    store = ArtifactStore(tmp_path / "store")
    result = build_profile(inputs_for(tree, repo=repo), store)
    assert result.error.startswith("digits-cnn@1.0.0 for coral-npu, source: source models/digits-cnn/1.0.0/model.keras")
    assert "but the spec pins" in result.error
    assert store.artifact_ids() == []


def test_a_truncated_model_is_a_clear_error_and_nothing_is_stored(tree, tmp_path):
    repo = copy_repo(tmp_path)
    source = repo / "models" / "digits-cnn" / "1.0.0" / "model.keras"
    source.write_bytes(source.read_bytes()[:5000])
    m = tree.models["digits-cnn"]
    version = m.version("1.0.0").model_copy(
        update={
            "source": m.version("1.0.0").source.model_copy(
                update={"sha256": hashlib.sha256(source.read_bytes()).hexdigest()}
            )
        }
    )
    store = ArtifactStore(tmp_path / "store")
    result = build_profile(BuildInputs(repo, m, version, tree.profiles["coral-npu"], m.recipe_for("coral-npu")), store)
    assert result.error.startswith("digits-cnn@1.0.0 for coral-npu, source: the source is not a loadable Keras model")
    assert store.artifact_ids() == []


def test_calibration_data_of_the_wrong_shape_names_the_pass(tree, tmp_path):
    repo = copy_repo(tmp_path)
    np.savez(
        repo / "models" / "digits-cnn" / "data" / "calibration.npz", x=np.zeros((20, 5), "float32"), y=np.zeros(20)
    )
    result = build_profile(inputs_for(tree, repo=repo), ArtifactStore(tmp_path / "store"))
    assert result.error == (
        "digits-cnn@1.0.0 for coral-npu, data: data.calibration: samples have shape (5,), the model expects (8, 8, 1)"
    )


def test_training_that_diverges_is_refused(tree, tmp_path):
    repo = copy_repo(tmp_path)
    data = repo / "models" / "digits-cnn" / "data" / "train.npz"
    with np.load(data) as arrays:
        np.savez(data, x=arrays["x"] * 1e30, y=arrays["y"])
    result = build_profile(inputs_for(tree, profile="arm-cortex-a-cpu", repo=repo), ArtifactStore(tmp_path / "s"))
    assert (
        result.error
        == "digits-cnn@1.0.0 for arm-cortex-a-cpu, pass 1 (prune): training diverged: the weights hold NaN or infinity"
    )


def test_gates_refuse_with_the_number_and_the_distance(tree, tmp_path):
    model = tree.models["digits-cnn"]
    strict = model.model_copy(
        update={"spec": model.spec.model_copy(update={"gates": model.spec.gates.model_copy(update={"max_size": 1024})})}
    )
    store = ArtifactStore(tmp_path / "store")
    inputs = BuildInputs(
        EXAMPLE, strict, strict.version("1.0.0"), tree.profiles["coral-npu"], strict.recipe_for("coral-npu")
    )
    result = build_profile(inputs, store)
    assert result.error.startswith("digits-cnn@1.0.0 for coral-npu: no variant passes:")
    int8 = next(v for v in result.variants if v.name == "int8-only")
    size = int8.measurement.size_bytes
    assert str(int8.failures[0]) == f"model size (model gate): {size} bytes exceeds 1024 bytes by {size - 1024} bytes"
    assert store.artifact_ids() == []


def test_structured_pruning_really_shrinks_the_model(built):
    store, results = built
    manifest = store.read_manifest(results["arm-cortex-a-cpu"].artifact.id)
    metrics = manifest["passes"][0]["metrics"]
    assert manifest["passes"][0]["pass"] == "prune"
    assert metrics["parameters_after"] < 0.65 * metrics["parameters_before"]


def test_manifest_identity_excludes_measurements(built):
    store, results = built
    record = results["jetson-gpu"].artifact
    manifest = json.loads(store.read_blob(record.manifest))
    from reconciler.artifact.manifest import artifact_id

    assert artifact_id(manifest) == record.id
    manifest["benchmark"]["variants"][0]["measurement"]["latency_p50_ms"] = 123.0
    assert artifact_id(manifest) == record.id
    manifest["precision"] = "fp32"
    assert artifact_id(manifest) != record.id


@pytest.fixture(scope="module")
def onnx_repo(tmp_path_factory):
    """A copy of the example fleet whose digits-cnn 1.0.0 source is an ONNX file."""
    from reconciler.optimize.convert import keras_to_onnx
    from reconciler.optimize.optimize import keras_module

    repo = tmp_path_factory.mktemp("onnx") / "repo"
    shutil.copytree(EXAMPLE, repo)
    keras = keras_module()
    model = keras.saving.load_model(repo / "models/digits-cnn/1.0.0/model.keras", compile=False)
    (repo / "models/digits-cnn/1.0.0/model.onnx").write_bytes(keras_to_onnx(model, 17, tmp_path_factory.mktemp("w")))
    return repo


def onnx_inputs(tree, repo: Path, profile: str, passes: list[dict]) -> BuildInputs:
    from reconciler.api.model import Recipe

    model = tree.models["digits-cnn"]
    onnx_file = repo / "models/digits-cnn/1.0.0/model.onnx"
    source = model.version("1.0.0").source.model_copy(
        update={
            "uri": "models/digits-cnn/1.0.0/model.onnx",
            "sha256": hashlib.sha256(onnx_file.read_bytes()).hexdigest(),
        }
    )
    version = model.version("1.0.0").model_copy(update={"source": source})
    recipe = Recipe.model_validate({"profile": profile, "passes": passes})
    return BuildInputs(repo, model, version, tree.profiles[profile], recipe)


def test_an_onnx_source_is_quantized_and_gated(tree, onnx_repo, tmp_path):
    inputs = onnx_inputs(tree, onnx_repo, "arm-cortex-a-cpu", [{"quantize": {"mode": "static"}}])
    result = build_profile(inputs, ArtifactStore(tmp_path / "store"))
    assert result.error is None, result.error
    assert result.reference_accuracy == pytest.approx(0.9859, abs=1e-4)
    # The recipe's static INT8 and, searched around it, the other calibration methods.
    assert {v.name for v in result.variants} == {"fp32", "static", "static-entropy", "static-percentile"}
    assert all(v.measurement.agreement > 0.98 for v in result.variants)
    assert any(v.pareto for v in result.variants)


@pytest.mark.parametrize(
    ("profile", "passes", "expected"),
    [
        ("arm-cortex-a-cpu", [{"prune": {"method": "magnitude", "sparsity": 0.5}}],
         "digits-cnn@1.0.0 for arm-cortex-a-cpu, pass 1 (prune): "
         "prune trains the model, which needs a Keras source, not onnx"),
        ("coral-npu", [{"quantize": {"mode": "int8-only"}}],
         "digits-cnn@1.0.0 for coral-npu, convert: TFLite artifacts are converted from Keras sources"),
    ],
)  # fmt: skip
def test_what_an_onnx_source_cannot_become_is_refused_clearly(tree, onnx_repo, tmp_path, profile, passes, expected):
    result = build_profile(onnx_inputs(tree, onnx_repo, profile, passes), ArtifactStore(tmp_path / "store"))
    assert result.error == expected
