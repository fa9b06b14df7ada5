"""PyTorch sources: a ``torch.export`` program (``.pt2``) in, an ONNX graph out.

Who calls it: the pipeline, when a version's source format is ``pytorch``. The source is what
``torch.export.save(torch.export.export(model, (example,), dynamic_shapes=...), "model.pt2")`` writes: a
traced graph and its weights, loadable without the training code's classes (no pickle of arbitrary objects).
The program's own outputs are the reference every variant is measured against, so the ONNX export is checked
like any other candidate. From there the build is the ONNX path (quantization, search, gates).

Torch is imported only inside these functions: it is large and only builds need it.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import numpy as np

from .errors import BuildError, first_line

BATCH = 256


def load_program(path: Path):
    """The ``ExportedProgram`` in ``path``; a clear refusal for anything else (a ``torch.save`` pickle, a
    TorchScript archive, a truncated file)."""
    import torch

    try:
        return torch.export.load(str(path))
    except Exception as exc:  # torch raises many types for files it does not understand
        raise BuildError(
            "the source is not a torch.export program (.pt2 from torch.export.save): " + first_line(exc)
        ) from exc


def run_program(program, x: np.ndarray) -> np.ndarray:
    """The program's first output on ``x``, in batches (float32) the program accepts: at most its batch's upper
    bound, and a last batch under the lower bound (or a fixed batch) padded with zeros, the padding dropped."""
    import torch

    lowest, highest = batch_range(program)
    size = min(BATCH, highest)
    module = program.module()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(x), size):
            rows = np.ascontiguousarray(x[start : start + size], dtype=np.float32)
            count = len(rows)
            if count < lowest:
                rows = np.concatenate([rows, np.zeros((lowest - count, *rows.shape[1:]), np.float32)])
            result = module(torch.from_numpy(rows))
            first = result[0] if isinstance(result, (tuple, list)) else result
            outputs.append(first.detach().numpy().astype(np.float32)[:count])
    return np.concatenate(outputs)


def program_to_onnx(program, opset: int, workdir: Path) -> bytes:
    """The program as an ONNX graph of ``opset``, through the torch.export-based exporter (``dynamo=True``),
    which keeps the program's dynamic dimensions (a batch exported as dynamic stays dynamic)."""
    import torch

    target = workdir / "pytorch.onnx"
    quiet = io.StringIO()
    previous = logging.getLogger("torch.onnx").level
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            onnx_program = torch.onnx.export(program, (), dynamo=True, opset_version=opset, external_data=False,
                                             verbose=False)  # fmt: skip
            onnx_program.save(str(target), external_data=False)
    except Exception as exc:
        raise BuildError(f"torch.onnx could not export the program to ONNX opset {opset}: {first_line(exc)}") from exc
    finally:
        logging.getLogger("torch.onnx").setLevel(previous)
    return target.read_bytes()


def batch_range(program) -> tuple[int, int]:
    """The batch sizes the program was exported for: (n, n) for a fixed batch, the dynamic dimension's bounds
    otherwise (an unbounded upper end counts as :data:`BATCH`)."""
    dim = _first_input(program).meta["val"].shape[0]
    if isinstance(dim, int):
        return dim, dim
    bounds = program.range_constraints.get(dim.node.expr)
    if bounds is None:
        return 1, BATCH
    return max(1, _bound(bounds.lower, 1)), max(1, _bound(bounds.upper, BATCH))


def _bound(value, default: int) -> int:
    """A range end as an int; torch's own infinity (``int_oo``) says it is finite and cannot be converted."""
    try:
        return int(value)
    except (TypeError, ValueError, AttributeError, OverflowError):
        return default


def _first_input(program):
    names = set(program.graph_signature.user_inputs)
    node = next((n for n in program.graph.nodes if n.op == "placeholder" and n.name in names), None)
    if node is None or "val" not in node.meta or not hasattr(node.meta["val"], "shape"):
        raise BuildError("the torch.export program has no tensor input")
    if len(names) > 1:
        raise BuildError(f"the torch.export program takes {len(names)} inputs; PyTorch sources take one tensor")
    return node


def input_shape(program) -> tuple[int | None, ...]:
    """The first user input's shape, ``None`` where the program was exported with a dynamic dimension."""
    return tuple(d if isinstance(d, int) else None for d in _first_input(program).meta["val"].shape)
