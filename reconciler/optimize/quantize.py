"""Quantize ONNX models with onnxruntime: static INT8 (QDQ), dynamic INT8, and float16.

Who calls it: the pipeline's quantize step for ONNX profiles (TFLite quantizes in ``convert``).
Static quantization tries per-channel scales first and falls back to per-tensor when onnxruntime
refuses (it does on Gemm nodes with 2-D biases); the fallback is reported, not hidden.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from reconciler.artifact.manifest import graph_inputs
from reconciler.artifact.runtime import Inputs, row_count, take

from .convert import canonical_onnx
from .datasets import Dataset
from .errors import BuildError, first_line

ONNX_MODES = ("static", "dynamic", "float16")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
"""Operators whose weights static quantization turns to INT8: the candidates for keeping a node in float."""


def quantize_onnx(
    model: bytes,
    mode: str,
    calibration: Dataset | None,
    samples: int,
    per_channel: bool,
    workdir: Path,
    activation_type: str | None = "uint8",
    method: str = "minmax",
    exclude_nodes: tuple[str, ...] | list[str] = (),
    exclude_op_types: tuple[str, ...] | list[str] = (),
) -> tuple[bytes, list[str]]:
    """The quantized model and notes about what was done differently from the recipe. ``method``: the
    calibration method (static); ``exclude_nodes`` / ``exclude_op_types``: left in float (static)."""
    if mode not in ONNX_MODES:
        raise BuildError(f"ONNX has no quantization mode {mode!r} (use {', '.join(ONNX_MODES)})")
    source = workdir / "to_quantize.onnx"
    target = workdir / "quantized.onnx"
    source.write_bytes(model)
    notes: list[str] = []
    if mode == "float16":
        return _float16(model), notes
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime advises pre-processing through the root logger on every call
    try:
        if mode == "dynamic":
            quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
        else:
            if calibration is None:
                raise BuildError("static quantization needs calibration data")
            rows = calibration.head(samples).x
            prepared = _pre_process(source, workdir, notes)
            activations = QuantType.QInt8 if activation_type == "int8" else QuantType.QUInt8
            calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                         "percentile": CalibrationMethod.Percentile}[method]  # fmt: skip
            excluded = sorted(set(exclude_nodes) | set(_nodes_of(prepared, exclude_op_types)))

            cache = (
                _entropy_ranges(prepared, _reader(_input_names(model), rows), workdir) if method == "entropy" else None
            )

            def run(per_channel_scales: bool) -> None:
                reader = None if cache else _reader(_input_names(model), rows)
                quantize_static(
                    str(prepared), str(target), reader, quant_format=QuantFormat.QDQ,
                    per_channel=per_channel_scales, activation_type=activations, weight_type=QuantType.QInt8,
                    calibrate_method=calibrate, nodes_to_exclude=excluded, calibration_cache_path=cache,
                )  # fmt: skip

            try:
                run(per_channel)
            except Exception as exc:  # onnxruntime refuses per-channel on some nodes
                if not per_channel:
                    raise
                notes.append(f"per-channel quantization failed ({first_line(exc)}); used per-tensor scales")
                run(False)
    except BuildError:
        raise
    except Exception as exc:
        raise BuildError(f"onnxruntime {mode} quantization failed: {first_line(exc)}") from exc
    finally:
        root.setLevel(level)
    return canonical_onnx(target.read_bytes()), notes


ENTROPY_BINS = 512
"""Histogram bins of entropy calibration, for 128 quantized bins (TensorRT's KL method, which onnxruntime's
implements). ``quantize_static`` alone calibrates entropy with 128 bins for 128 quantized bins, which leaves the
KL search one candidate, the full range: MinMax under another name (measured: byte-identical models). TensorRT's
2048 bins took 5.3 s on the digits CNN's 12 tensors (onnxruntime's search is Python loops); 512 take 0.8 s and
still try 192 thresholds per tensor."""


def _entropy_ranges(prepared: Path, reader, workdir: Path) -> Path:
    """Entropy (KL) activation ranges with :data:`ENTROPY_BINS`, saved as the calibration cache
    ``quantize_static`` reads instead of calibrating again."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    calibrator = create_calibrator(
        prepared, sorted(set(QLinearOpsRegistry) | set(QDQRegistry)),
        augmented_model_path=str(workdir / "entropy-augmented.onnx"), calibrate_method=CalibrationMethod.Entropy,
        extra_options={"num_bins": ENTROPY_BINS, "num_quantized_bins": 128},
    )  # fmt: skip
    calibrator.collect_data(reader)
    cache = workdir / "entropy-ranges.json"
    cache.unlink(missing_ok=True)
    save_tensors_data(calibrator.compute_data(), cache)
    return cache


def quantizable_nodes(model: bytes, workdir: Path) -> list[str]:
    """Names of the nodes static quantization would turn to INT8 (after onnxruntime's preparation, whose names
    ``exclude_nodes`` refers to), in graph order."""
    source = workdir / "to_inspect.onnx"
    source.write_bytes(model)
    return _nodes_of(_pre_process(source, workdir, []), WEIGHTED)


def _nodes_of(path: Path, op_types) -> list[str]:
    import onnx

    if not op_types:
        return []
    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type in set(op_types) and n.name]


def _pre_process(source: Path, workdir: Path, notes: list[str]) -> Path:
    """onnxruntime's recommended preparation (shape inference, BatchNorm folded into Conv, ...) so more of
    the graph runs in INT8; the model is quantized as it is when preparation fails."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = source.with_name(f"prepared-{source.stem}.onnx")
    try:
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    except Exception as exc:  # preparation is an optimization, never a reason to fail the build
        notes.append(f"pre-processing skipped ({first_line(exc)})")
        return source
    return prepared


def _float16(model: bytes) -> bytes:
    import onnx
    from onnxconverter_common import float16

    try:
        converted = float16.convert_float_to_float16(onnx.load_from_string(model), keep_io_types=True)
    except Exception as exc:
        raise BuildError(f"float16 conversion failed: {first_line(exc)}") from exc
    return canonical_onnx(converted.SerializeToString())


def _input_names(model: bytes) -> list[str]:
    import onnx

    return [value.name for value in graph_inputs(onnx.load_from_string(model).graph)]


def _reader(names: list[str], rows: Inputs):
    """Calibration rows, one at a time, as onnxruntime's CalibrationDataReader: the one array fed to the model's
    one input, or the named arrays to the inputs of the same names."""
    from onnxruntime.quantization import CalibrationDataReader

    def feed(index: int) -> dict[str, np.ndarray]:
        row = take(rows, index, index + 1)
        arrays = row if isinstance(row, Mapping) else {names[0]: row}
        return {name: np.asarray(value, dtype=np.float32) for name, value in arrays.items()}

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = iter([feed(index) for index in range(row_count(rows))])

        def get_next(self):
            return next(self._items, None)

    return Reader()
