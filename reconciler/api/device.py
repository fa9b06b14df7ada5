"""``DeviceProfile`` (a hardware class) and ``DeviceGroup`` (a label selector over devices).

Pure (no I/O). A profile says what an artifact must be for a class of hardware (runtime, format,
precisions, limits); a group says which devices a rollout targets. Both select nodes by their labels,
which are the fleet's inventory.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from .document import Document, Problem
from .types import Duration, LabelSelector, Quantity, QuotedStr, SpecModel

Runtime = Literal["onnxruntime", "tflite"]
ArtifactFormat = Literal["onnx", "tflite"]
Precision = Literal["fp32", "fp16", "int8"]
Accelerator = Literal["none", "gpu", "npu", "tpu"]

RUNTIME_FORMAT: dict[str, str] = {"onnxruntime": "onnx", "tflite": "tflite"}
"""The artifact format each runtime loads."""


class ProfileLimits(SpecModel):
    """Hard limits of the hardware class; a variant that breaks one is never shipped to it."""

    max_model_size: Quantity | None = None
    """Largest artifact the device can hold (e.g. 16Mi)."""
    max_memory: Quantity | None = None
    """Peak memory the inference process may use (e.g. 256Mi)."""
    max_latency_p95: Duration | None = None
    """95th percentile latency of one inference at the profile's thread count (e.g. 20ms)."""


ArmCore = Literal["cortex-a35", "cortex-a53", "cortex-a57", "cortex-a72", "cortex-a76", "neoverse-n1", "a64fx"]
"""arm64 cores that QEMU 7.2 emulates."""


class DeviceProfileSpec(SpecModel):
    """What an artifact for this hardware class must be, and which nodes belong to the class."""

    selector: LabelSelector
    """Nodes of this hardware class, by their labels."""
    runtime: Runtime
    """Inference runtime on the device."""
    format: ArtifactFormat
    """Artifact format the runtime loads: onnx for onnxruntime, tflite for tflite."""
    precisions: list[Precision] = Field(min_length=1)
    """Precisions the hardware runs; the builder ships the smallest variant that passes the gates."""
    integer_only: bool = False
    """The accelerator runs integer ops only: int8 weights, activations and int8 inputs/outputs."""
    accelerator: Accelerator = "none"
    arch: QuotedStr = "arm64"
    """CPU architecture, as in the kubernetes.io/arch label."""
    cpu: ArmCore | None = None
    """arm64: the CPU core, as QEMU names it; builds run every candidate on it (emulated) before one ships. Unset:
    cortex-a53, the oldest arm64 core (no SDOT, no FP16), so nothing passes that a newer core's features hide."""
    execution_providers: list[QuotedStr] = Field(default_factory=lambda: ["CPUExecutionProvider"])
    """onnxruntime execution providers, in order of preference."""
    threads: int = Field(default=1, ge=1, le=256)
    """Inference threads on the device; benchmarks use the same count."""
    limits: ProfileLimits = Field(default_factory=ProfileLimits)


class DeviceProfile(Document):
    """A hardware class: its nodes, runtime, format, precisions and limits."""

    KIND: ClassVar[str] = "DeviceProfile"
    kind: Literal["DeviceProfile"]
    spec: DeviceProfileSpec

    def problems(self) -> list[Problem]:
        spec = self.spec
        found: list[Problem] = [(("spec", "selector", *loc), msg) for loc, msg in spec.selector.problems()]
        expected = RUNTIME_FORMAT[spec.runtime]
        if spec.format != expected:
            found.append((("spec", "format"), f"runtime {spec.runtime} loads {expected}, not {spec.format}"))
        seen: set[str] = set()
        for i, precision in enumerate(spec.precisions):
            if precision in seen:
                found.append((("spec", "precisions", i), f"duplicate precision {precision}"))
            seen.add(precision)
        if spec.integer_only and spec.precisions != ["int8"]:
            found.append((("spec", "precisions"), "integerOnly profiles run int8 only: set precisions: [int8]"))
        return found


class DeviceGroupSpec(SpecModel):
    """Which devices belong to the group."""

    selector: LabelSelector
    """Devices of the group, by their node labels. An empty selector selects the whole fleet."""
    description: str = ""
    role: Literal["fleet", "lab"] = "fleet"
    """lab: representative hardware that benchmarks every new artifact of its profile before a rollout's first
    step (downloaded and verified as usual, never served); rollouts never deliver to a lab device."""


class DeviceGroup(Document):
    """A set of devices chosen by a label selector; rollouts target groups."""

    KIND: ClassVar[str] = "DeviceGroup"
    kind: Literal["DeviceGroup"]
    spec: DeviceGroupSpec

    def problems(self) -> list[Problem]:
        return [(("spec", "selector", *loc), msg) for loc, msg in self.spec.selector.problems()]
