"""The artifact manifest: everything a device and a reviewer need to know about one built variant.

Who calls it: the pipeline (writes), signing and the agent (read). Contents: identity (model, version,
profile, format, precision, runtime, opset), file digests, tensor specs, golden vectors for the
on-device health check, reference histograms on fixed quantile bins (mergeable across devices for
drift), lineage (source digest, fleet commit, recipe, tool versions), and the benchmark report.

The artifact id is the sha256 of the canonical JSON of the manifest *without* its ``benchmark``
section: measured latencies differ from run to run, the artifact does not. Same inputs therefore give
the same id on any machine, and a rebuild is a cache hit.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

import numpy as np

from . import sketches
from .runtime import Inputs, as_lists, flat_rows, row_count, take

GOLDEN_ROWS = 8
HISTOGRAM_BINS = 10
TOOLS = ("tensorflow-cpu", "keras", "tf2onnx", "onnx", "onnxruntime", "onnxconverter-common", "ai-edge-litert")
MANIFEST_NAME = "manifest.json"


def canonical_json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def artifact_id(manifest: dict) -> str:
    identity = {key: value for key, value in manifest.items() if key != "benchmark"}
    return hashlib.sha256(canonical_json(identity)).hexdigest()


def tool_versions() -> dict[str, str]:
    versions = {}
    for tool in TOOLS:
        try:
            versions[tool] = metadata.version(tool)
        except metadata.PackageNotFoundError:
            continue
    return versions


def graph_inputs(graph) -> list:
    """The ONNX graph inputs a caller feeds: those no initializer backs (IR < 4 graphs and some exporters list
    every weight as an input too)."""
    initialized = {tensor.name for tensor in graph.initializer}
    return [value for value in graph.input if value.name not in initialized]


def tensor_specs(path: Path, fmt: str) -> dict[str, list[dict]]:
    """Input and output tensors: name, shape (None for dynamic), dtype, and int8 quantization parameters."""
    if fmt == "onnx":
        import onnx
        from onnx import helper

        graph = onnx.load(str(path), load_external_data=False).graph

        def describe(value) -> dict:
            tensor = value.type.tensor_type
            shape = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
            return {"name": value.name, "shape": shape, "dtype": helper.tensor_dtype_to_np_dtype(tensor.elem_type).name}

        return {"inputs": [describe(v) for v in graph_inputs(graph)], "outputs": [describe(v) for v in graph.output]}
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))

    def describe_lite(detail: dict) -> dict:
        spec = {"name": detail["name"], "shape": [None, *(int(d) for d in detail["shape"][1:])],
                "dtype": np.dtype(detail["dtype"]).name}  # fmt: skip
        scale, zero_point = detail["quantization"]
        if scale:
            spec["quantization"] = {"scale": float(scale), "zeroPoint": int(zero_point)}
        return spec

    return {
        "inputs": [describe_lite(d) for d in interpreter.get_input_details()],
        "outputs": [describe_lite(d) for d in interpreter.get_output_details()],
    }


SPREAD_MARGIN = 4.0
"""The tolerance is at least this many times the spread measured across thread counts on the build machine."""
QUANTIZATION_SHARE = 0.5
"""...and at least this share of the artifact's own distance from the fp32 reference: integer kernels of another
CPU (AVX2 without VNNI saturates where AVX-512 VNNI does not; ARM dot-product instructions round differently) move
outputs by part of the quantization error, never by more than all of it. For an fp32 artifact the distance is
rounding noise, so this term costs nothing there."""
SCALE_SHARE = 0.02
"""...and at least 2 % of the outputs' magnitude: the floor that held before any of this was measured."""


def golden_vectors(
    inputs: Inputs,
    outputs: np.ndarray,
    runs: dict[int, np.ndarray] | None = None,
    reference: np.ndarray | None = None,
) -> dict:
    """A few evaluation rows with this very artifact's outputs: the device must reproduce them, within a
    tolerance taken from measurement. ``runs``: the artifact's outputs on the same rows under each thread count
    the profile allows; ``reference``: the fp32 model's outputs on them. Top-1 agreement is checked apart."""
    rows = min(GOLDEN_ROWS, row_count(inputs))
    scale = float(np.max(np.abs(outputs[:rows]))) if rows else 1.0
    spread = max((float(np.max(np.abs(run[:rows] - outputs[:rows]))) for run in (runs or {}).values() if rows),
                 default=0.0)  # fmt: skip
    distance = float(np.max(np.abs(reference[:rows] - outputs[:rows]))) if reference is not None and rows else 0.0
    atol = max(1e-4, SPREAD_MARGIN * spread, QUANTIZATION_SHARE * distance, SCALE_SHARE * scale)
    return {
        "inputs": as_lists(take(inputs, 0, rows), 6),
        "outputs": np.round(outputs[:rows], 5).tolist(),
        "tolerance": {
            "atol": round(atol, 6),
            "top1": True,
            "measured": {
                "threads": sorted(runs or {}),
                "threadSpread": round(spread, 7),
                "fp32Distance": round(distance, 7),
                "scale": round(scale, 6),
            },
        },
    }


def reference_histograms(inputs: Inputs, predictions: np.ndarray, classes: int) -> dict:
    """Counts on fixed quantile bins of per-row input statistics, and the prediction distribution.

    Devices count their own traffic into the same bins, so summaries add up across devices and PSI/KL
    can be computed fleet-wide without raw data leaving a device.
    """
    flat = flat_rows(inputs)
    features = {"inputMean": flat.mean(axis=1), "inputStd": flat.std(axis=1)}
    histograms: dict[str, dict] = {}
    quantiles = np.linspace(0, 1, HISTOGRAM_BINS + 1)[1:-1]
    for name, values in features.items():
        edges = np.unique(np.round(np.quantile(values, quantiles), 6))
        counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
        histograms[name] = {"edges": edges.tolist(), "counts": counts.tolist()}
    histograms["prediction"] = {"classes": classes, "counts": np.bincount(predictions, minlength=classes).tolist()}
    return histograms


def reference_sketches(inputs: Inputs, outputs: np.ndarray) -> tuple[dict[str, str], dict[str, int]]:
    """name -> encoded KLL sketch of the evaluation data's features and the artifact's outputs on it: the
    reference the controller compares the fleet's merged sketches with (:mod:`.sketches`); and name -> the values
    behind it (a sketch keeps at most ``REFERENCE_POINTS`` quantiles of them)."""
    found = sketches.reference_rows(inputs, outputs)
    counts = {name: int(np.isfinite(column).sum()) for name, column in sketches.figures(inputs, outputs).items()}
    return ({name: sketches.encode(sketch) for name, sketch in sorted(found.items())},
            {name: counts[name] for name in sorted(found)})  # fmt: skip


def build_figures(manifest: dict) -> dict:
    """The selected variant's figures from a manifest: sizeBytes, latencyP95Ms (None when not measurable on
    the build machine), accuracy."""
    variants = (manifest.get("benchmark") or {}).get("variants") or []
    chosen = next((v for v in variants if v.get("selected")), None)
    measured = (chosen or {}).get("measurement") or {}
    size = sum(int(f.get("size", 0)) for f in (manifest.get("files") or {}).values() if isinstance(f, dict))
    return {"sizeBytes": measured.get("size_bytes", size or None), "latencyP95Ms": measured.get("latency_p95_ms"),
            "accuracy": measured.get("accuracy")}  # fmt: skip
