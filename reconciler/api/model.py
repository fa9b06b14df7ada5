"""``Model``: versions with their sources and lineage, per-profile optimization recipes, quality gates.

Pure (no I/O). A recipe is declarative and ordered, like an Olive workflow: each pass is a one-key
mapping (``- prune: {...}``) so a recipe reads top to bottom as what happens to the model.
Which quantization modes fit which artifact format is checked against the profile by ``crosscheck``.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from .document import Document, Problem
from .types import Duration, Fraction, Name, Quantity, QuotedStr, RepoPath, Sha256, SpecModel

SourceFormat = Literal["keras", "onnx", "pytorch"]
_SOURCE_EXTENSIONS = {".keras": "keras", ".onnx": "onnx", ".pt2": "pytorch"}
_URI_SCHEME_RE = re.compile(r"^[a-z][a-z0-9+.-]*://")


class ModelSource(SpecModel):
    """Where a version's trained model comes from, pinned by digest."""

    uri: QuotedStr
    """A path inside the fleet repo, or a URL (https://, s3://, oci://)."""
    sha256: Sha256
    """Digest of the source file; a build refuses a source that does not match."""
    format: SourceFormat | None = None
    """keras, onnx, or pytorch (a ``torch.export.save`` program); inferred from the extension (.keras, .onnx,
    .pt2) when omitted."""

    @property
    def is_repo_path(self) -> bool:
        return not _URI_SCHEME_RE.match(self.uri)

    @property
    def resolved_format(self) -> str | None:
        if self.format:
            return self.format
        return next((f for ext, f in _SOURCE_EXTENSIONS.items() if self.uri.endswith(ext)), None)


class FederatedLineage(SpecModel):
    """A version made by a FederatedTraining: which one, from what, with how many devices and rows."""

    training: Name
    base_version: QuotedStr
    rounds: int = Field(ge=0)
    participants: int = Field(ge=0)
    """Devices that joined and trained."""
    samples: int = Field(ge=0)
    """Labeled rows the participants held (they never left the devices)."""
    secure_aggregation: bool


class Lineage(SpecModel):
    """Where a version came from: enough to reproduce it and to compare versions."""

    git_commit: QuotedStr | None = None
    """Commit of the training code."""
    dataset: QuotedStr | None = None
    """Dataset name and version used for training."""
    metrics: dict[QuotedStr, float] = Field(default_factory=dict)
    """Metrics measured at training time (e.g. accuracy: 0.97)."""
    federated: FederatedLineage | None = None
    """Set by the controller on a version a federated training proposed."""


class ModelVersion(SpecModel):
    """One released version of the model."""

    version: QuotedStr = Field(min_length=1, max_length=63)
    """Version string, quoted in YAML (1.10 is not 1.1)."""
    source: ModelSource
    lineage: Lineage = Field(default_factory=Lineage)


class ModelData(SpecModel):
    """Data files in the fleet repo that builds use: ``.npz`` with labels ``y`` and the inputs, ``x`` for a model
    with one input, or one array per input named as the ONNX model names it."""

    train: RepoPath | None = None
    """Training data for fine-tuning after pruning and for distillation."""
    eval: RepoPath | None = None
    """Evaluation data for the accuracy gate."""
    calibration: RepoPath | None = None
    """Representative inputs for static quantization."""


class PrunePass(SpecModel):
    """Remove weights, then fine-tune briefly to recover accuracy."""

    method: Literal["magnitude", "structured"]
    """magnitude: zero the smallest weights; structured: remove whole channels/units."""
    sparsity: float = Field(gt=0.0, lt=1.0)
    """Share of weights (magnitude) or channels (structured) to remove."""
    fine_tune_epochs: int = Field(default=2, ge=0, le=1000)


class DistillPass(SpecModel):
    """Train a smaller student on the teacher's soft labels."""

    width_multiplier: float = Field(default=0.5, gt=0.0, lt=1.0)
    """Student width relative to the teacher (channels and units)."""
    temperature: float = Field(default=4.0, gt=0.0)
    alpha: Fraction = 0.7
    """Weight of the soft-label loss against the hard-label loss."""
    epochs: int = Field(default=10, ge=1, le=1000)


QuantizeMode = Literal["static", "dynamic", "float16", "int8", "int8-only"]
ONNX_QUANTIZE_MODES = ("static", "dynamic", "float16")
TFLITE_QUANTIZE_MODES = ("dynamic", "float16", "int8", "int8-only")


class QuantizePass(SpecModel):
    """Lower precision. ONNX: static (QDQ int8), dynamic (int8), float16.
    TFLite: dynamic (dynamic range), float16, int8 (full int8, float I/O), int8-only (int8 I/O)."""

    mode: QuantizeMode
    per_channel: bool = True
    """Per-channel weight scales where the operator supports them."""
    activation_type: Literal["uint8", "int8"] | None = None
    """ONNX static: activation type with int8 weights; unset, chosen for the profile's ``arch``: uint8 (U8S8) on
    amd64, onnxruntime's fast path there (measured 2x faster than int8 on ResNet-50), int8 (S8S8) on arm64,
    where its dot-product kernels take signed activations and S8S8 QDQ is the recommended format."""
    calibration_samples: int = Field(default=200, ge=1, le=100_000)
    """How many calibration inputs static and int8 modes use."""
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    """ONNX static: how activation ranges are taken from the calibration data."""
    search: bool = True
    """Also build the candidates around this one and keep the best that passes: ONNX static with the other
    calibration methods; TFLite dynamic-range and full-integer INT8 for each other (not on integer-only
    profiles); the profile's other precisions (float16); and, when ONNX INT8 misses the quality gate, a mixed
    variant that keeps the most sensitive nodes in float (measured node by node)."""
    exclude_nodes: list[QuotedStr] = Field(default_factory=list)
    """ONNX static: nodes left in float (names as in the converted graph, e.g. ``Conv_3``)."""
    exclude_op_types: list[QuotedStr] = Field(default_factory=list)
    """ONNX static: operator types left in float (e.g. ``Softmax``)."""


class ConvertPass(SpecModel):
    """Convert to the profile's artifact format."""

    to: Literal["onnx", "tflite"]
    opset: int = Field(default=17, ge=7, le=23)
    """ONNX opset (ignored for TFLite)."""


class Pass(SpecModel):
    """One step of a recipe: exactly one of prune, distill, quantize, convert."""

    model_config = SpecModel.model_config | {"json_schema_extra": {"minProperties": 1, "maxProperties": 1}}

    prune: PrunePass | None = None
    distill: DistillPass | None = None
    quantize: QuantizePass | None = None
    convert: ConvertPass | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Pass:
        if len(self.model_fields_set) != 1:
            raise ValueError("a pass has exactly one of: prune, distill, quantize, convert")
        return self

    @property
    def kind(self) -> str:
        return next(iter(self.model_fields_set))


class Recipe(SpecModel):
    """How to turn the source into the artifact for one device profile."""

    profile: Name
    """The DeviceProfile this recipe builds for."""
    passes: list[Pass] = Field(default_factory=list)
    """Applied in order; conversion to the profile's format is added when no pass converts."""


class ModelGates(SpecModel):
    """Quality bars every variant must meet, on top of the profile's own limits."""

    max_accuracy_drop: Fraction = 0.01
    """Largest loss of the task's score against the fp32 source, as a fraction (0.01 = 1 point): accuracy for
    classification and binary tasks, AUROC for anomaly scores."""
    max_mae_increase: Fraction = Field(0.05, alias="maxMAEIncrease")
    """Regression: largest rise of the mean absolute error against the source's, relative to it (0.05 = 5 %)."""
    max_size: Quantity | None = None
    max_latency_p95: Duration | None = None


class DriftPolicy(SpecModel):
    """How the controller watches a model's traffic against the reference its build shipped (docs/monitoring.md)."""

    window: Duration = timedelta(hours=6)
    """Telemetry compared each time: the last ``window`` of every device's summaries, merged."""
    false_alarm_rate: float = Field(0.01, gt=0.0, le=0.2)
    """Chance that traffic like the reference is flagged at all; shared among the figures and devices compared."""
    retrain_after: Duration | None = None
    """Drift held this long becomes a retraining request: a branch with a RetrainingRequest document that a person
    turns into a pull request (the controller never retrains on its own). Unset: never."""


class Capture(SpecModel):
    """Sampled input capture: a share of the requests a device serves is kept, with the model's predictions as
    labels, within a byte budget on the device, and uploaded into the artifact store as a dataset folder
    (``captures/MODEL/VERSION/``) that builds read. Off unless set; docs/security.md says what leaves a device."""

    rate: float = Field(gt=0.0, le=0.05)
    """Share of requests whose rows are kept (at most 5 %)."""
    max_bytes: Quantity = 1024 * 1024
    """Disk a device gives samples waiting for upload; past it the oldest go."""
    redaction: Literal["none", "required"] = "none"
    """required: a device keeps samples only through its own redaction hook (``edgectl agent --redact-hook``);
    one without keeps nothing."""


class Monitoring(SpecModel):
    """What the controller watches once a model serves."""

    drift: DriftPolicy = Field(default_factory=DriftPolicy)
    capture: Capture | None = None
    """Sampled input capture; unset: no input row leaves a device."""


class ModelSpec(SpecModel):
    """A model: its released versions and how to build them for each hardware class."""

    description: str = ""
    task: Literal["classification", "binary", "regression", "anomaly-detection"] = "classification"
    """What the outputs mean, and so how variants are scored (docs/building.md: metrics per task)."""
    threshold: float = 0.5
    """binary: the score at and above which a row is positive."""
    data: ModelData = Field(default_factory=ModelData)
    versions: list[ModelVersion] = Field(min_length=1)
    recipes: list[Recipe] = Field(default_factory=list)
    gates: ModelGates = Field(default_factory=ModelGates)
    monitoring: Monitoring = Field(default_factory=Monitoring)


class Model(Document):
    """A model with versions, per-profile optimization recipes and quality gates."""

    KIND: ClassVar[str] = "Model"
    kind: Literal["Model"]
    spec: ModelSpec

    def version(self, version: str) -> ModelVersion | None:
        return next((v for v in self.spec.versions if v.version == version), None)

    def recipe_for(self, profile: str) -> Recipe | None:
        return next((r for r in self.spec.recipes if r.profile == profile), None)

    def problems(self) -> list[Problem]:
        found: list[Problem] = []
        seen: dict[str, int] = {}
        for i, v in enumerate(self.spec.versions):
            loc = ("spec", "versions", i)
            if v.version in seen:
                found.append(((*loc, "version"), f"duplicate version {v.version!r} (also versions[{seen[v.version]}])"))
            seen.setdefault(v.version, i)
            if v.source.resolved_format is None:
                problem = "cannot infer format from the file name: set keras, onnx or pytorch"
                found.append(((*loc, "source", "format"), problem))
            if v.source.is_repo_path and (problem := _repo_path_problem(v.source.uri)):
                found.append(((*loc, "source", "uri"), problem))
        profiles: dict[str, int] = {}
        for i, recipe in enumerate(self.spec.recipes):
            if recipe.profile in profiles:
                found.append(
                    (
                        ("spec", "recipes", i, "profile"),
                        f"duplicate recipe for profile {recipe.profile} (also recipes[{profiles[recipe.profile]}])",
                    )
                )
            profiles.setdefault(recipe.profile, i)
            kinds = [p.kind for p in recipe.passes]
            for j, kind in enumerate(kinds):
                if kind in ("prune", "distill") and "convert" in kinds[:j]:
                    found.append(
                        (
                            ("spec", "recipes", i, "passes", j, kind),
                            f"{kind} trains the Keras model, so it must come before convert",
                        )
                    )
        needs_train = any(p.kind in ("prune", "distill") for r in self.spec.recipes for p in r.passes)
        if needs_train and not self.spec.data.train:
            found.append((("spec", "data", "train"), "prune and distill passes need training data"))
        needs_calibration = any(
            p.quantize and p.quantize.mode in ("static", "int8", "int8-only")
            for r in self.spec.recipes
            for p in r.passes
        )
        if needs_calibration and not self.spec.data.calibration:
            found.append((("spec", "data", "calibration"), "static and int8 quantization need calibration data"))
        return found


def _repo_path_problem(path: str) -> str | None:
    parts = path.split("/")
    if path.startswith("/") or ".." in parts or "\\" in path:
        return f"invalid path {path!r}: must be relative to the fleet repo, without '..' or backslashes"
    return None
