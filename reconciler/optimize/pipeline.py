"""Build one model version for one device profile: passes, candidates, measurements, gates, selection, store.

Who calls it: ``edgectl build`` and the controller (through :func:`build_scope`). Order of work:

1. fetch the source and check its sha256; load the evaluation (and calibration/training) data;
2. compute the build key (source, data, recipe, profile, gates, tool versions); a hit in the store's
   build cache ends here;
3. run the training passes (prune, distill) on the Keras model, then build candidates: the recipe as
   written, and fp32 (the same recipe without quantization) as reference and fallback;
4. measure every candidate in a child process with the profile's threads and memory limit, and check
   the model's gates and the profile's limits against the source model's accuracy;
5. select the smallest candidate that passes and runs a precision the profile allows (equal sizes: the better
   task metric); the build host's latency never decides, so a rebuild gives the same artifact;
6. write the manifest and the model to the store (atomically), and record the build key.

Nothing reaches the store unless a candidate was selected.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from reconciler.api import FleetTree
from reconciler.api.device import DeviceProfile
from reconciler.api.model import Model, ModelVersion, Pass, QuantizePass, Recipe
from reconciler.artifact.manifest import (
    GOLDEN_ROWS,
    MANIFEST_NAME,
    artifact_id,
    canonical_json,
    golden_vectors,
    graph_inputs,
    reference_histograms,
    reference_sketches,
    tensor_specs,
    tool_versions,
)
from reconciler.artifact.runtime import Inputs, take
from reconciler.artifact.store import ArtifactRecord, ArtifactStore, sha256_file

from . import convert, optimize, pytorch
from .benchmark import DEFAULT_RUNS, Measured, Measurement, measure
from .datasets import Dataset, check_input_shape, load_dataset
from .errors import BuildContext, BuildError, first_line
from .gates import GateFailure, check_gates
from .metrics import evaluate
from .quantize import CALIBRATION_METHODS, quantizable_nodes, quantize_onnx
from .sources import fetch_source
from .target import TargetCheck, TargetResult, check_on_target, is_arm, unavailable

BUILDER_VERSION = "5"
"""2: golden tolerances measured across thread counts and against fp32. 3: ONNX inputs and outputs named by
position (a pruned model's input name no longer depends on the process's earlier builds); peak memory is the
resident memory of single-sample inference. 4: static INT8 activations chosen by the profile's arch; the
variant chosen by size and metric only; structured pruning measured against the unpruned source. 5: reference
KLL sketches of the evaluation data's features and outputs in the manifest (drift)."""
MAX_GOLDEN_THREADS = 8
LATENCY_TOLERANCE = 1.05
"""A variant more than 5 % slower than fp32 (p50, on the build host) gets a note saying so; it never decides."""
_PRECISION = {"static": "int8", "dynamic": "int8", "int8": "int8", "int8-only": "int8", "float16": "fp16"}

Progress = Callable[[str], None]


@dataclass
class Variant:
    """One candidate: its passes, what it measured, which gates it broke, whether it was chosen."""

    name: str
    precision: str
    eligible: bool
    measurement: Measurement | None = None
    failures: list[GateFailure] = field(default_factory=list)
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    selected: bool = False
    pareto: bool = False
    """No other measured variant is at least as small, as fast and as good on the task's metric."""

    @property
    def passed(self) -> bool:
        return self.measurement is not None and not self.failures and self.error is None


@dataclass
class ProfileBuild:
    """The outcome for one (model, version, profile)."""

    model: str
    version: str
    profile: str
    variants: list[Variant] = field(default_factory=list)
    reference_accuracy: float | None = None
    """The source's accuracy (classification and binary tasks)."""
    reference_metrics: dict[str, float] = field(default_factory=dict)
    """Every metric of the source model for its task: what the gates compare variants with."""
    artifact: ArtifactRecord | None = None
    cached: bool = False
    error: str | None = None
    measured_on: dict[str, dict] = field(default_factory=dict)
    """Where the figures come from: the manifest's ``benchmark.host`` and ``benchmark.target`` (emulated)."""

    @property
    def selected(self) -> Variant | None:
        return next((v for v in self.variants if v.selected), None)


@dataclass(frozen=True)
class BuildInputs:
    """Everything a build reads; its digest is the cache key."""

    repo_root: Path
    model: Model
    version: ModelVersion
    profile: DeviceProfile
    recipe: Recipe
    fleet_commit: str | None = None


def build_scope(
    tree: FleetTree,
    repo_root: Path,
    store: ArtifactStore,
    models: list[str] | None = None,
    versions: list[str] | None = None,
    profiles: list[str] | None = None,
    fleet_commit: str | None = None,
    progress: Progress | None = None,
) -> list[ProfileBuild]:
    """Build what is missing: by default every version an active rollout needs, for every recipe profile."""
    wanted: list[tuple[Model, ModelVersion, Recipe]] = []
    needed = {(r.spec.model, r.spec.version) for r in tree.rollouts.values() if r.active}
    for model in tree.models.values():
        if models and model.name not in models:
            continue
        for version in model.spec.versions:
            if versions and version.version not in versions:
                continue
            if not versions and not models and (model.name, version.version) not in needed:
                continue
            for recipe in model.spec.recipes:
                if not profiles or recipe.profile in profiles:
                    wanted.append((model, version, recipe))
    results = []
    for model, version, recipe in wanted:
        inputs = BuildInputs(repo_root, model, version, tree.profiles[recipe.profile], recipe, fleet_commit)
        results.append(build_profile(inputs, store, progress))
    return results


def build_profile(inputs: BuildInputs, store: ArtifactStore, progress: Progress | None = None) -> ProfileBuild:
    """Build, measure, gate and store one variant; errors end up in the result, not raised."""
    result = ProfileBuild(inputs.model.name, inputs.version.version, inputs.profile.name)
    context = BuildContext(result.model, result.version, result.profile)
    report = progress or (lambda _message: None)
    try:
        with tempfile.TemporaryDirectory(prefix="edge-build-") as tmp:
            _build(inputs, store, Path(tmp), result, context, report)
    except BuildError as exc:
        result.error = str(exc.with_context(context))
    except Exception as exc:  # a library's own failure outside any step: this build is refused, the others go on
        result.error = str(BuildError(f"{type(exc).__name__}: {first_line(exc)}", context))
    return result


def _build(
    inputs: BuildInputs, store: ArtifactStore, workdir: Path, result: ProfileBuild, context: BuildContext, report
) -> None:
    spec, profile = inputs.model.spec, inputs.profile
    fmt = profile.spec.format
    with _step(context, "source"):
        report("checking source")
        source = fetch_source(inputs.version.source, inputs.repo_root, workdir)
        if not spec.data.eval:
            raise BuildError("the model needs data.eval: accuracy gates cannot be checked without it")
        data = {name: _dataset(inputs.repo_root, path, name) for name, path in spec.data if path}
    key = build_key(inputs, data)
    cached = store.lookup_build(key)
    if cached is not None:
        manifest = json.loads(store.read_blob(cached.manifest))
        result.artifact, result.cached = cached, True
        result.reference_accuracy = manifest["benchmark"]["referenceAccuracy"]
        result.reference_metrics = manifest["benchmark"].get("referenceMetrics") or {}
        result.variants = [_variant_from_manifest(v) for v in manifest["benchmark"]["variants"]]
        result.measured_on = {k: manifest["benchmark"][k] for k in ("host", "target") if k in manifest["benchmark"]}
        report("cached")
        return

    source_format = inputs.version.source.resolved_format
    evaluation = data["eval"]
    with _step(context, "source"):
        report("loading source")
        model = _load_source(source, source_format)
    with _step(context, "data"):
        reference = _reference_outputs(model, source, source_format, data)
        data = _named_as_artifact(source, source_format, data)
        evaluation = data["eval"]
        task, threshold = inputs.model.spec.task, inputs.model.spec.threshold
        result.reference_metrics = evaluate(task, reference, evaluation.y, reference, threshold)
    result.reference_accuracy = result.reference_metrics.get("accuracy")

    training = [p for p in inputs.recipe.passes if p.prune or p.distill]
    unpruned = model if any(p.prune and p.prune.method == "structured" for p in training) else None
    quantizers = [p for p in inputs.recipe.passes if p.quantize]
    pass_metrics: list[dict] = []
    for index, step in enumerate(training):
        with _step(context, f"pass {index + 1} ({step.kind})"):
            if source_format != "keras":
                raise BuildError(f"{step.kind} trains the model, which needs a Keras source, not {source_format}")
            report(f"{step.kind}")
            model, metrics = _train_pass(model, step, data)
            pass_metrics.append({"pass": step.kind, "metrics": metrics})

    opset = next((p.convert.opset for p in inputs.recipe.passes if p.convert), 17)
    with _step(context, "convert"):
        report(f"converting to {fmt}")
        fp32_bytes = _convert(model, source, source_format, fmt, opset, None, data, workdir)
    allowed = set(profile.spec.precisions)
    fp32 = Variant("fp32", "fp32", eligible="fp32" in allowed and not profile.spec.integer_only)
    candidates: list[tuple[Variant, bytes]] = [(fp32, fp32_bytes)]
    if unpruned is not None:
        with _step(context, "convert (unpruned)"):
            report("converting the unpruned source (the pruning's baseline)")
            unpruned_bytes = _convert(unpruned, source, source_format, fmt, opset, None, data, workdir)
        baseline = Variant(UNPRUNED, "fp32", eligible=False,
                           notes=["the source without structured pruning: the baseline of its speed-up"])  # fmt: skip
        candidates.append((baseline, unpruned_bytes))
    quantize = quantizers[-1].quantize if quantizers else None
    if quantize is not None and quantize.activation_type is None:
        quantize = quantize.model_copy(update={"activation_type": activation_for(profile.spec.arch)})
    calibrated = "calibration" in data
    for variant, settings in _planned(quantize, fmt, allowed, profile.spec.integer_only, calibrated):
        with _step(context, f"quantize ({variant.name})"):
            report(f"quantizing ({variant.name})")
            if fmt == "onnx":
                quantized, variant.notes = _quantize(fp32_bytes, settings, data.get("calibration"), workdir)
            else:
                quantized = _convert(model, source, source_format, fmt, opset, settings, data, workdir)
        candidates.append((variant, quantized))

    measured: dict[str, Measured] = {}

    def measure_variant(variant: Variant, payload: bytes, runs: int = DEFAULT_RUNS) -> None:
        path = workdir / f"{variant.name}.{fmt}"
        path.write_bytes(payload)
        report(f"measuring {variant.name}")
        try:
            with _step(context, f"benchmark ({variant.name})"):
                measured[variant.name] = measure(path, fmt, profile, evaluation, workdir, reference, runs=runs,
                                                 task=task, threshold=threshold)  # fmt: skip
        except BuildError as exc:
            variant.error = exc.message
            return
        variant.measurement = measured[variant.name].measurement
        variant.failures = check_gates(variant.measurement, result.reference_metrics, inputs.model, profile)

    for variant, payload in candidates:
        measure_variant(variant, payload)
    if fmt == "onnx" and quantize is not None and quantize.mode == "static" and quantize.search:
        with _step(context, "accuracy recovery"):
            recovered = _recover(candidates, fp32_bytes, quantize, data, workdir, measure_variant, report)
        if recovered is not None:
            candidates.append(recovered)
    result.variants = [v for v, _ in candidates]
    target, target_figures = None, {}
    if is_arm(profile.spec.arch):
        with _step(context, "target check"):
            report(f"running the candidates on {profile.spec.arch} (emulated)")
            target, target_figures = _check_target(result.variants, measured, profile, fmt, evaluation, workdir)
    pruning = _pruning_figures(result.variants)
    _mark_pareto(result.variants)

    chosen = _select(result.variants)
    if chosen is None:
        raise BuildError(_refusal(result.variants, allowed))
    chosen.selected = True
    payload = dict((v.name, p) for v, p in candidates)[chosen.name]
    model_path = workdir / f"{chosen.name}.{fmt}"
    outputs = measured[chosen.name].outputs
    reference_outputs = measured["fp32"].outputs if "fp32" in measured else None
    on_target = target.results.get(chosen.name) if target is not None else None
    manifest = _manifest(
        inputs,
        chosen,
        model_path,
        payload,
        evaluation,
        outputs,
        pass_metrics,
        key,
        sha256_file(source),
        reference_outputs,
        on_target.outputs if on_target is not None else None,
    )
    if target is not None:  # its figures (the difference from this host's outputs) stay in the benchmark
        manifest["targetCheck"] = target.to_json()
    manifest["benchmark"] = {
        "host": {"machine": platform.machine(), "cpus": os.cpu_count()},
        **({"target": {**target.to_json(), "variants": target_figures}} if target is not None else {}),
        **({"pruning": pruning} if pruning else {}),
        "referenceAccuracy": result.reference_accuracy,
        "referenceMetrics": result.reference_metrics,
        "variants": [variant_json(v) for v in result.variants],
    }
    result.measured_on = {k: manifest["benchmark"][k] for k in ("host", "target") if k in manifest["benchmark"]}
    with _step(context, "store"):
        identifier = artifact_id(manifest)
        result.artifact = store.add_artifact(
            identifier, {f"model.{fmt}": payload, MANIFEST_NAME: canonical_json(manifest)}, MANIFEST_NAME
        )
        store.record_build(key, identifier)
    report("stored")


def build_key(inputs: BuildInputs, data: dict[str, Dataset]) -> str:
    """Digest of everything that determines the artifact (and its gating)."""
    material = {
        "builder": BUILDER_VERSION,
        "model": inputs.model.name,
        "version": inputs.version.model_dump(mode="json", by_alias=True),
        "gates": inputs.model.spec.gates.model_dump(mode="json", by_alias=True),
        "profile": inputs.profile.spec.model_dump(mode="json", by_alias=True),
        "recipe": inputs.recipe.model_dump(mode="json", by_alias=True, exclude_unset=True),
        "data": {name: hashlib.sha256(d.digest_material()).hexdigest() for name, d in sorted(data.items())},
        "tools": tool_versions(),
        # A build made where the target check could not run is not the one made where it can.
        "targetCheck": (unavailable() or "emulated") if is_arm(inputs.profile.spec.arch) else None,
    }
    return hashlib.sha256(canonical_json(material)).hexdigest()


@contextmanager
def _step(context: BuildContext, step: str) -> Iterator[None]:
    """Locate every error raised inside to (model, version, profile, step). A library's own exception (Keras,
    TensorFlow, a converter) becomes a build error of this step: it refuses this build, never the run."""
    located = BuildContext(context.model, context.version, context.profile, step)
    try:
        yield
    except BuildError as exc:
        raise exc.with_context(located) from None
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        raise BuildError(f"{type(exc).__name__}: {first_line(exc)}", located) from exc


def _dataset(repo_root: Path, path: str, name: str) -> Dataset:
    return load_dataset(repo_root / path, f"data.{name} ({path})")


def _load_source(path: Path, source_format: str | None):
    if source_format == "keras":
        keras = optimize.keras_module()
        try:
            return keras.saving.load_model(path, compile=False)
        except Exception as exc:  # corrupt zips and unknown layers raise many types
            raise BuildError(f"the source is not a loadable Keras model: {first_line(exc)}") from exc
    if source_format == "onnx":
        import onnx

        try:
            onnx.checker.check_model(onnx.load(str(path)))
        except Exception as exc:
            raise BuildError(f"the source is not a valid ONNX model: {first_line(exc)}") from exc
        return None
    if source_format == "pytorch":
        return pytorch.load_program(path)
    raise BuildError(f"unsupported source format {source_format!r}")


def _reference_outputs(model, source: Path, source_format: str | None, data: dict[str, Dataset]) -> np.ndarray:
    """Outputs of the unoptimized source model: the metrics' baseline and the agreement reference.
    Every dataset is checked against the model's input shape first, so a wrong file is named as such."""
    evaluation = data["eval"]
    if source_format == "keras":
        shapes = {"x": tuple(model.input_shape)}
        run = lambda x: model.predict(x, verbose=0, batch_size=256)  # noqa: E731
    elif source_format == "pytorch":
        shapes = {"x": pytorch.input_shape(model)}
        run = lambda x: pytorch.run_program(model, x)  # noqa: E731
    else:
        from reconciler.artifact.runtime import ModelRunner

        runner = ModelRunner(source, "onnx")
        shapes, run = runner.input_shapes, runner.run
    for name, dataset in data.items():
        if dataset.named and source_format != "onnx":
            raise BuildError(f"data.{name}: {source_format} sources take one input, the array 'x'")
        check_input_shape(dataset, shapes, f"data.{name}")
    outputs = run(evaluation.x)
    if not np.isfinite(outputs).all():
        raise BuildError("the source model outputs NaN or infinity on the evaluation data")
    return np.asarray(outputs, dtype=np.float32)


def _named_as_artifact(source: Path, source_format: str | None, data: dict[str, Dataset]) -> dict[str, Dataset]:
    """Data named after the source's inputs, renamed to the artifact's (``input_0``, ...: see
    :func:`convert.canonical_onnx`), which is what the candidates, the probe and the golden vectors feed."""
    if source_format != "onnx" or not any(d.named for d in data.values()):
        return data
    # By position, as the artifact names them (input_N, or the source's own names where canonical_onnx keeps
    # them: graphs with subgraphs).
    import onnx

    from reconciler.artifact.runtime import ModelRunner

    canonical = [v.name for v in graph_inputs(onnx.load_from_string(convert.canonical_onnx(source.read_bytes())).graph)]
    names = dict(zip(ModelRunner(source, "onnx").input_shapes, canonical, strict=True))
    return {key: d.renamed(names) if d.named else d for key, d in data.items()}


def _train_pass(model, step: Pass, data: dict[str, Dataset]):
    if "train" not in data:
        raise BuildError(f"{step.kind} needs data.train")
    if step.prune:
        prune = optimize.magnitude_prune if step.prune.method == "magnitude" else optimize.structured_prune
        outcome = prune(model, step.prune, data["train"])
    else:
        assert step.distill is not None
        outcome = optimize.distill(model, step.distill, data["train"], data["eval"])
    return outcome.model, outcome.metrics


def _convert(model, source: Path, source_format, fmt: str, opset: int, quantize, data, workdir: Path) -> bytes:
    mode = quantize.mode if quantize else None
    if fmt == "onnx":
        if source_format == "onnx":
            return convert.canonical_onnx(source.read_bytes())
        if source_format == "pytorch":
            return convert.canonical_onnx(pytorch.program_to_onnx(model, opset, workdir))
        return convert.keras_to_onnx(model, opset, workdir)
    if source_format != "keras":
        raise BuildError("TFLite artifacts are converted from Keras sources")
    calibration = data.get("calibration")
    samples = quantize.calibration_samples if quantize else 0
    return convert.keras_to_tflite(model, mode, calibration, samples)


QUALITY_GATES = ("accuracy drop", "MAE increase", "AUROC drop")
RECOVERY_NODES = 24
"""Nodes measured one by one for accuracy recovery at most (each is a quantization and a measurement)."""
RECOVERY_RUNS = 20
"""Latency runs per sensitivity measurement: only the quality metric matters there."""


def activation_for(arch: str) -> str:
    """Static INT8 activations for a CPU architecture (``kubernetes.io/arch``): int8 (S8S8) on ARM, whose
    dot-product kernels take signed activations; uint8 (U8S8) elsewhere, onnxruntime's x86 fast path."""
    return "int8" if is_arm(arch) or arch == "arm" else "uint8"


def _planned(quantize: QuantizePass | None, fmt: str, allowed: set[str], integer_only: bool = False,
             calibrated: bool = False) -> list[tuple[Variant, QuantizePass]]:  # fmt: skip
    """The quantized candidates: the recipe's own, and with ``search`` the ones around it: ONNX static with the
    other calibration methods; TFLite dynamic-range and full-integer INT8 for each other (float I/O both; full
    integer needs calibration data; an integer-only profile takes int8-only alone); float16 when the profile
    allows it and the recipe does not ask for it."""
    if quantize is None:
        return []
    planned = [(Variant(quantize.mode, _PRECISION[quantize.mode], eligible=_PRECISION[quantize.mode] in allowed),
                quantize)]  # fmt: skip
    if not quantize.search:
        return planned
    if fmt == "onnx" and quantize.mode == "static":
        for method in CALIBRATION_METHODS:
            if method != quantize.calibration_method:
                settings = quantize.model_copy(update={"calibration_method": method})
                planned.append((Variant(f"static-{method}", "int8", eligible="int8" in allowed), settings))
    if fmt == "tflite" and quantize.mode in ("dynamic", "int8") and "int8" in allowed and not integer_only:
        other = "int8" if quantize.mode == "dynamic" else "dynamic"
        if other == "dynamic" or calibrated:
            planned.append((Variant(other, "int8", eligible=True), quantize.model_copy(update={"mode": other})))
    if "fp16" in allowed and quantize.mode != "float16":
        planned.append((Variant("float16", "fp16", eligible=True), quantize.model_copy(update={"mode": "float16"})))
    return planned


def _quantize(fp32_bytes: bytes, settings: QuantizePass, calibration: Dataset | None, workdir: Path,
              keep_in_float: list[str] | tuple[str, ...] = ()) -> tuple[bytes, list[str]]:  # fmt: skip
    """An ONNX candidate from the recipe's quantize settings, with ``keep_in_float`` nodes left out as well."""
    return quantize_onnx(fp32_bytes, settings.mode, calibration, settings.calibration_samples, settings.per_channel,
                         workdir, settings.activation_type, settings.calibration_method,
                         [*settings.exclude_nodes, *keep_in_float], settings.exclude_op_types)  # fmt: skip


def _recover(candidates, fp32_bytes: bytes, quantize: QuantizePass, data, workdir: Path, measure_variant, report):
    """When no static INT8 candidate passes only because of the quality gate: measure, node by node, how much
    keeping each weighted node in float gives back, then keep the most sensitive ones in float, one more at a
    time, until the gate passes. Returns the mixed candidate, or None (nothing to recover, or nothing helped
    before every node was in float)."""
    static = [(v, p) for v, p in candidates if v.precision == "int8" and v.name.startswith("static")]
    if not static or any(v.passed for v, _ in static):
        return None
    best = min(static, key=lambda c: _quality_loss(c[0]))[0]
    if best.measurement is None or not best.failures or any(f.gate not in QUALITY_GATES for f in best.failures):
        return None
    settings = quantize.model_copy(update={"calibration_method": _method_of(best, quantize)})
    nodes = [n for n in quantizable_nodes(fp32_bytes, workdir) if n not in settings.exclude_nodes][:RECOVERY_NODES]
    if len(nodes) < 2:
        return None
    gains = []
    for index, node in enumerate(nodes):
        probe = Variant(f"sensitivity-{index}", "int8", eligible=False)
        payload, _ = _quantize(fp32_bytes, settings, data.get("calibration"), workdir, [node])
        measure_variant(probe, payload, RECOVERY_RUNS)
        gains.append((_quality_loss(probe), node))
    ranked = [node for _, node in sorted(gains)]
    for count in range(1, len(ranked)):
        kept = ranked[:count]
        report(f"accuracy recovery: {count} node(s) in float")
        variant = Variant("static-mixed", "int8", eligible=best.eligible)
        payload, variant.notes = _quantize(fp32_bytes, settings, data.get("calibration"), workdir, kept)
        measure_variant(variant, payload)
        if variant.measurement is not None and not any(f.gate in QUALITY_GATES for f in variant.failures):
            variant.notes.insert(0, f"kept in float (most sensitive first, measured node by node): {', '.join(kept)}")
            return variant, payload
    return None


def _check_target(variants: list[Variant], measured: dict[str, Measured], profile: DeviceProfile, fmt: str,
                  evaluation: Dataset, workdir: Path) -> tuple[TargetCheck, dict[str, dict]]:  # fmt: skip
    """Run every candidate on the golden rows under emulation of the profile's arch and core; refuse those the
    target runtime cannot load or whose outputs leave the tolerance (the golden vectors' own rule, against the
    build machine's outputs of the same candidate)."""
    spec = profile.spec
    checked = [v for v in variants if v.name in measured and v.name != UNPRUNED]
    paths = {v.name: workdir / f"{v.name}.{fmt}" for v in checked}
    figures: dict[str, dict] = {}
    if not paths:  # nothing was measured: the refusal says why; an emulation would add nothing
        return TargetCheck("arm64", spec.cpu or "", status="not run", reason="no candidate to check"), figures
    check = check_on_target(spec.arch, spec.cpu, fmt, paths, take(evaluation.x, 0, GOLDEN_ROWS), workdir)
    where = f"{check.isa} ({check.runtime} {check.version}, emulated {check.cpu})"
    if check.status != "checked":
        for variant in checked:
            variant.notes.append(f"not checked on {check.isa}: {check.reason}")
        return check, figures
    fp32 = measured.get("fp32")
    for variant in checked:
        on_target = check.results.get(variant.name)
        if on_target is None or on_target.outputs is None:
            variant.error = f"{where} cannot run it: {on_target.error if on_target else 'no result'}"
            figures[variant.name] = {"error": variant.error}
            continue
        host = measured[variant.name].outputs[:GOLDEN_ROWS]
        reference = fp32.outputs[:GOLDEN_ROWS] if fp32 is not None else None
        limit = golden_vectors(take(evaluation.x, 0, GOLDEN_ROWS), host, None, reference)["tolerance"]["atol"]
        difference = _target_difference(on_target, host)
        if difference > limit:
            variant.failures.append(GateFailure(f"output difference on {where}", difference, limit, ""))
        variant.notes.append(f"{where}: outputs within {difference:.3g} of the build machine's; "
                             f"{on_target.latency_ms:.0f} ms emulated (not a device figure)")  # fmt: skip
        figures[variant.name] = {"maxDifference": round(difference, 7), "tolerance": limit, "rows": GOLDEN_ROWS,
                                 "emulatedMs": round(on_target.latency_ms or 0.0, 1)}  # fmt: skip
    return check, figures


def _target_difference(on_target: TargetResult, host: np.ndarray) -> float:
    assert on_target.outputs is not None
    rows = min(len(on_target.outputs), len(host))
    return float(np.max(np.abs(on_target.outputs[:rows] - host[:rows]))) if rows else 0.0


UNPRUNED = "unpruned"
"""The variant that measures the source without its structured pruning: never shipped, only compared."""


def _pruning_figures(variants: list[Variant]) -> dict | None:
    """Structured pruning's measured effect, fp32 against fp32: size, p50 latency and the speed-up (None where
    the build host cannot measure the profile's latency), and the task's metric. The figures also go into the
    fp32 variant's notes, where the build matrix and report show them."""
    before = next((v.measurement for v in variants if v.name == UNPRUNED and v.measurement), None)
    fp32 = next((v for v in variants if v.name == "fp32" and v.measurement), None)
    if before is None or fp32 is None or fp32.measurement is None:
        return None
    after = fp32.measurement
    timed = before.latency_p50_ms is not None and after.latency_p50_ms
    speedup = round(before.latency_p50_ms / after.latency_p50_ms, 3) if timed else None  # type: ignore[operator]
    figures = {"sizeBytesBefore": before.size_bytes, "sizeBytesAfter": after.size_bytes,
               "latencyP50MsBefore": before.latency_p50_ms, "latencyP50MsAfter": after.latency_p50_ms,
               "speedup": speedup, "metricsBefore": before.metrics, "metricsAfter": after.metrics}  # fmt: skip
    timing = (f"p50 {before.latency_p50_ms:.4f} -> {after.latency_p50_ms:.4f} ms ({speedup:.2f}x)" if timed
              else "latency not measurable on this host")  # fmt: skip
    fp32.notes.append(f"structured pruning: {before.size_bytes} -> {after.size_bytes} bytes, {timing}")
    return figures


def _method_of(variant: Variant, quantize: QuantizePass) -> str:
    return variant.name.removeprefix("static-") if variant.name.startswith("static-") else quantize.calibration_method


def _quality_loss(variant: Variant) -> float:
    """How far a variant is from the source on the task's metric (lower is closer); infinite when unmeasured."""
    if variant.measurement is None:
        return float("inf")
    metrics = variant.measurement.metrics or {"accuracy": variant.measurement.accuracy or 0.0}
    if "mae" in metrics:
        return metrics["mae"]
    return -metrics.get("auroc", metrics.get("accuracy", 0.0))


def _mark_pareto(variants: list[Variant]) -> None:
    """Mark the measured variants no other one beats on size, latency and the task's metric at once."""
    measured = [v for v in variants if v.measurement is not None and v.name != UNPRUNED]

    def point(v: Variant) -> tuple[float, float, float]:
        m = v.measurement
        assert m is not None
        latency = m.latency_p50_ms if m.latency_p50_ms is not None else 0.0
        return float(m.size_bytes), latency, _quality_loss(v)

    for variant in measured:
        mine = point(variant)
        variant.pareto = not any(
            all(a <= b for a, b in zip(point(o), mine, strict=True)) and point(o) != mine
            for o in measured if o is not variant
        )  # fmt: skip


def _select(variants: list[Variant]) -> Variant | None:
    """Smallest passing, allowed variant; equal sizes go to the better task metric, then to the recipe's order.

    Only deterministic measurements decide: the build host's latency is not the target's (an x86 builder says
    little about a Cortex-A), and a few microseconds of timing noise would make two builds of one commit ship
    different artifacts. Latency still refuses a variant through the absolute ``maxLatencyP95`` gates, and a
    variant slower than fp32 on this host says so in its notes.
    """
    fp32 = next((v for v in variants if v.name == "fp32" and v.measurement), None)
    reference = fp32.measurement.latency_p50_ms if fp32 and fp32.measurement else None
    options = []
    for order, variant in enumerate(variants):
        mine = variant.measurement.latency_p50_ms if variant.measurement else None
        baseline = variant is fp32 or variant.name == UNPRUNED
        if not baseline and mine is not None and reference is not None and mine > reference * LATENCY_TOLERANCE:
            variant.notes.append(f"p50 {mine:.4f} ms on the build host is slower than fp32's {reference:.4f} ms")
        if not (variant.passed and variant.eligible):
            continue
        assert variant.measurement is not None
        options.append((variant.measurement.size_bytes, _quality_loss(variant), order, variant))
    return min(options, key=lambda option: option[:3])[3] if options else None


def _refusal(variants: list[Variant], allowed: set[str]) -> str:
    reasons = []
    for variant in variants:
        if variant.name == UNPRUNED:
            continue
        if variant.error:
            reasons.append(f"{variant.name}: {variant.error}")
        elif variant.failures:
            reasons.append(f"{variant.name}: " + "; ".join(str(f) for f in variant.failures))
        elif not variant.eligible:
            reasons.append(f"{variant.name}: the profile does not run {variant.precision}")
    return "no variant passes: " + " | ".join(reasons) if reasons else "no variant passes"


def _thread_runs(path: Path, fmt: str, rows: Inputs, threads: int) -> dict[int, np.ndarray]:
    """The artifact's outputs on ``rows`` under every thread count from 1 to the profile's (at most 8)."""
    from reconciler.artifact.runtime import ModelRunner

    return {count: ModelRunner(path, fmt, count).run(rows) for count in range(1, min(threads, MAX_GOLDEN_THREADS) + 1)}


def _manifest(inputs, chosen, path, payload, evaluation, outputs, pass_metrics, key, source_digest,
              reference_outputs=None, target_outputs=None) -> dict:  # fmt: skip
    """``target_outputs``: the artifact's outputs on the golden rows computed on the target ISA; the golden
    vectors ship those, with the build machine's thread runs measuring the tolerance against them."""
    golden_rows = take(evaluation.x, 0, GOLDEN_ROWS)
    profile = inputs.profile.spec
    classes = outputs.shape[1]
    predictions = np.argmax(outputs, axis=1)
    reference = reference_sketches(evaluation.x, outputs)
    return {
        "apiVersion": "edgereconciler.io/v1alpha1",
        "kind": "ArtifactManifest",
        "model": inputs.model.name,
        "version": inputs.version.version,
        "profile": inputs.profile.name,
        "format": profile.format,
        "precision": chosen.precision,
        "variant": chosen.name,
        "runtime": profile.runtime,
        "opset": next((p.convert.opset for p in inputs.recipe.passes if p.convert), 17)
        if profile.format == "onnx"
        else None,
        "files": {f"model.{profile.format}": {"sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload)}},
        "tensors": tensor_specs(path, profile.format),
        "golden": golden_vectors(
            golden_rows,
            target_outputs if target_outputs is not None else outputs,
            _thread_runs(path, profile.format, golden_rows, profile.threads),
            reference_outputs,
        ),
        "histograms": reference_histograms(evaluation.x, predictions, classes),
        "sketches": reference[0],
        "sketchValues": reference[1],
        "passes": pass_metrics,
        "lineage": {
            "source": {"uri": inputs.version.source.uri, "sha256": source_digest},
            "gitCommit": inputs.version.lineage.git_commit,
            "dataset": inputs.version.lineage.dataset,
            "fleetCommit": inputs.fleet_commit,
            "recipe": inputs.recipe.model_dump(mode="json", by_alias=True, exclude_unset=True),
            "tools": tool_versions(),
            "buildKey": key,
        },
    }


def variant_json(variant: Variant) -> dict:
    return {
        "name": variant.name,
        "precision": variant.precision,
        "eligible": variant.eligible,
        "selected": variant.selected,
        "measurement": variant.measurement.to_json() if variant.measurement else None,
        "failures": [asdict(f) for f in variant.failures],
        "error": variant.error,
        "notes": variant.notes,
        "pareto": variant.pareto,
    }


def _variant_from_manifest(data: dict) -> Variant:
    measurement = Measurement(**data["measurement"]) if data["measurement"] else None
    failures = [GateFailure(**f) for f in data["failures"]]
    return Variant(data["name"], data["precision"], data["eligible"], measurement, failures, data["error"],
                   data["notes"], data["selected"], bool(data.get("pareto")))  # fmt: skip
