"""Build benchmarks: INT8 vs fp32 on the example digits CNN and on ResNet-50, the quantization search, and fleet
build wall times.

    python bench/build_matrix.py [--skip-fleet] [--quick]

--quick: 50 latency runs on the digits CNN, 2 calibration images and 3 runs on ResNet-50, and one fleet build
(vibration-anomaly 1.0.0 for arm-cortex-a-cpu) instead of every version x recipe profile.

Prints, with fp32 as the baseline measured in the same run:
- size ratio INT8/fp32 (goal <= 0.30) and latency ratio fp32/INT8 at 1 thread (goal >= 1.5 on ResNet-50);
- accuracy delta INT8 - fp32 on the digits CNN (goal: within 1 point);
- the search: every calibration method of static INT8 against fp32 (size ratio, latency ratio at 1 thread, the
  metric's delta, quantization time) on the digits CNN, MobileNetV2 alpha 0.35 and 1.0 at 96x96 and ResNet-50
  (--quick: the digits CNN and MobileNetV2 0.35 only), and how often a searched method beat plain MinMax
  (accuracy on the digits CNN; elsewhere the mean absolute difference from fp32's outputs: their weights are
  not trained, so accuracy and agreement would say nothing);
- wall time of a cold build of fleet-example (empty store) and of a warm one (every build a cache hit).

ResNet-50 comes from the onnx wheel's light test models, whose weights are ConstantOfShape placeholders;
they are folded into seeded He-normal initializers here (about 100 MB), good for size and latency only.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _check import parser, ratio, require

from reconciler.api import DeviceProfile, load_fleet
from reconciler.artifact.store import ArtifactStore
from reconciler.gitops.files import read_fleet_dir
from reconciler.optimize.benchmark import measure
from reconciler.optimize.convert import canonical_onnx, keras_to_onnx
from reconciler.optimize.datasets import Dataset, load_dataset
from reconciler.optimize.optimize import keras_module
from reconciler.optimize.pipeline import build_scope
from reconciler.optimize.quantize import quantize_onnx

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "fleet-example"


def one_thread_cpu() -> DeviceProfile:
    return DeviceProfile.model_validate(
        {"apiVersion": "edgereconciler.io/v1alpha1", "kind": "DeviceProfile", "metadata": {"name": "bench-cpu"},
         "spec": {"selector": {}, "runtime": "onnxruntime", "format": "onnx", "precisions": ["int8", "fp32"],
                  "threads": 1}}
    )  # fmt: skip


def folded_resnet50() -> bytes:
    """ResNet-50 with its placeholder ConstantOfShape weights folded into real initializers."""
    import onnx
    from onnx import numpy_helper

    path = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / "light_resnet50.onnx"
    model = onnx.load(str(path))
    graph = model.graph
    shapes = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    rng = np.random.default_rng(0)
    kept, folded = [], []
    for node in graph.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in shapes:
            kept.append(node)
            continue
        shape = tuple(int(d) for d in shapes[node.input[0]])
        name = node.output[0]
        if len(shape) >= 2:  # conv / gemm weights
            fan_in = int(np.prod(shape[1:]))
            value = rng.normal(0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)
        elif name.endswith(("_s_0", "_riv_0", "_rv_0")):  # batch-norm scale and variance
            value = np.ones(shape, np.float32)
        else:
            value = np.zeros(shape, np.float32)
        folded.append(numpy_helper.from_array(value, name))
    del graph.node[:]
    graph.node.extend(kept)
    used = {i for n in kept for i in n.input}
    initializers = [t for t in graph.initializer if t.name in used] + folded
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    data_input = graph.input[0]  # old IR versions list initializers as inputs too: keep only the image
    del graph.input[:]
    graph.input.append(data_input)
    model.opset_import[0].version = 13
    model.ir_version = 7
    return canonical_onnx(model.SerializeToString())


def compare(name: str, fp32: bytes, int8: bytes, evaluation: Dataset, workdir: Path, runs: int) -> dict:
    require(int8 != fp32, f"{name}: quantization returned the fp32 model unchanged")
    profile = one_thread_cpu()
    (workdir / "fp32.onnx").write_bytes(fp32)
    (workdir / "int8.onnx").write_bytes(int8)
    base = measure(workdir / "fp32.onnx", "onnx", profile, evaluation, workdir, runs=runs)
    quant = measure(workdir / "int8.onnx", "onnx", profile, evaluation, workdir, base.outputs, runs=runs)
    b, q = base.measurement, quant.measurement
    require(b.latency_p50_ms and q.latency_p50_ms, f"{name}: no latency measured ({b.latency_note or q.latency_note})")
    row = {
        "model": name,
        "fp32 size": b.size_bytes,
        "int8 size": q.size_bytes,
        "size int8/fp32": ratio(q.size_bytes, b.size_bytes, f"{name} size int8/fp32"),
        "fp32 p50 ms": b.latency_p50_ms,
        "int8 p50 ms": q.latency_p50_ms,
        "latency fp32/int8": ratio(b.latency_p50_ms, q.latency_p50_ms, f"{name} latency fp32/int8"),
        "accuracy delta (points)": (q.accuracy - b.accuracy) * 100,
        "agreement": q.agreement,
    }
    print(f"\n{name} (1 thread, {runs} runs, static INT8 QDQ per-channel vs fp32)")
    for key, value in row.items():
        if key != "model":
            print(f"  {key:26s} {value:.4f}" if isinstance(value, float) else f"  {key:26s} {value}")
    return row


def digits(workdir: Path, quick: bool) -> None:
    keras = keras_module()
    model = keras.saving.load_model(EXAMPLE / "models/digits-cnn/1.0.0/model.keras", compile=False)
    data = EXAMPLE / "models/digits-cnn/data"
    evaluation, calibration = load_dataset(data / "eval.npz", "eval"), load_dataset(data / "calibration.npz", "cal")
    fp32 = keras_to_onnx(model, 17, workdir)
    int8, notes = quantize_onnx(fp32, "static", calibration, 200, True, workdir)
    row = compare("digits-cnn 1.0.0", fp32, int8, evaluation, workdir, runs=50 if quick else 2000)
    require(np.isfinite(row["accuracy delta (points)"]), "digits-cnn: the accuracy delta is not a number")
    for note in notes:
        print("  note:", note)


def resnet50(workdir: Path, quick: bool) -> None:
    cal, evals, runs = (2, 2, 3) if quick else (32, 8, 30)
    rng = np.random.default_rng(1)
    images = rng.normal(0, 1, (cal + evals, 3, 224, 224)).astype(np.float32)
    calibration, evaluation = Dataset(images[:cal], np.zeros(cal)), Dataset(images[cal:], np.zeros(evals))
    fp32 = folded_resnet50()
    start = time.perf_counter()
    int8, notes = quantize_onnx(fp32, "static", calibration, cal, True, workdir)
    print(f"\nresnet50: static quantization with {cal} calibration images took {time.perf_counter() - start:.1f} s")
    compare("resnet50-light (folded, placeholder weights)", fp32, int8, evaluation, workdir, runs=runs)
    for note in notes:
        print("  note:", note)


def search_row(name: str, fp32: bytes, calibration: Dataset, evaluation: Dataset, workdir: Path, runs: int,
               metric: str) -> list[dict]:  # fmt: skip
    """fp32 and static INT8 with each calibration method; ``metric``: ``accuracy`` (points against fp32, higher is
    better), or ``output error`` (mean absolute difference from fp32's outputs, lower is better: for models whose
    weights are not trained, where accuracy and agreement say nothing)."""
    from reconciler.optimize.quantize import CALIBRATION_METHODS

    workdir = workdir / "".join(c if c.isalnum() else "-" for c in name)  # measure() keeps its folder's rows
    workdir.mkdir()
    profile = one_thread_cpu()
    (workdir / "fp32.onnx").write_bytes(fp32)
    base = measure(workdir / "fp32.onnx", "onnx", profile, evaluation, workdir, runs=runs)
    b = base.measurement
    require(b.latency_p50_ms, f"{name}: fp32 latency not measured")
    rows = []
    for method in CALIBRATION_METHODS:
        start = time.perf_counter()
        int8, _ = quantize_onnx(fp32, "static", calibration, len(calibration.x), True, workdir, method=method)
        took = time.perf_counter() - start
        (workdir / f"{method}.onnx").write_bytes(int8)
        q = measure(workdir / f"{method}.onnx", "onnx", profile, evaluation, workdir, base.outputs, runs=runs)
        m = q.measurement
        if metric == "accuracy":
            score, delta = m.accuracy, (m.accuracy - b.accuracy) * 100
        else:
            error = float(np.mean(np.abs(q.outputs - base.outputs)))
            score, delta = -error, error
        rows.append({"method": method, "size": ratio(m.size_bytes, b.size_bytes, f"{name} {method} size"),
                     "latency": ratio(b.latency_p50_ms, m.latency_p50_ms, f"{name} {method} latency"),
                     "delta": delta, "seconds": took, "score": score})  # fmt: skip
    unit = "accuracy vs fp32 in points" if metric == "accuracy" else "output error: mean |int8 - fp32|"
    print(f"\nsearch: {name} (1 thread, {runs} runs; {unit})")
    print(f"  {'method':<12} {'int8/fp32 size':>15} {'fp32/int8 latency':>18} {'delta':>8} {'quantize s':>11}")
    for row in rows:
        print(f"  {row['method']:<12} {row['size']:>15.3f} {row['latency']:>18.2f} {row['delta']:>+8.4g} "
              f"{row['seconds']:>11.1f}")  # fmt: skip
    plain = next(r for r in rows if r["method"] == "minmax")
    best = max(rows, key=lambda r: r["score"])
    gain = best["score"] - plain["score"]
    if metric == "accuracy":
        shown = f"{gain * 100:+.2f} points"
    else:
        shown = f"{gain / max(-plain['score'], 1e-12):.0%} less output error"
    verdict = f"{best['method']} beat minmax by {shown}" if gain > 0 else "minmax was best (no gain)"
    print(f"  search: {verdict}")
    return rows


def mobilenet(alpha: float, size: int, workdir: Path, rows: int) -> tuple[bytes, Dataset, Dataset]:
    keras = keras_module()
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=alpha, weights=None, classes=10)
    images = np.random.default_rng(2).uniform(-1, 1, (2 * rows, size, size, 3)).astype(np.float32)
    return (keras_to_onnx(model, 17, workdir), Dataset(images[:rows], np.zeros(rows)),
            Dataset(images[rows:], np.zeros(rows)))  # fmt: skip


def search(workdir: Path, quick: bool) -> None:
    runs = 20 if quick else 200
    keras = keras_module()
    digits_model = keras.saving.load_model(EXAMPLE / "models/digits-cnn/1.0.0/model.keras", compile=False)
    data = EXAMPLE / "models/digits-cnn/data"
    evaluation, calibration = load_dataset(data / "eval.npz", "eval"), load_dataset(data / "calibration.npz", "cal")
    digits_fp32 = keras_to_onnx(digits_model, 17, workdir)
    results = {"digits-cnn 1.0.0": search_row("digits-cnn 1.0.0", digits_fp32, calibration.head(200), evaluation,
                                              workdir, runs, "accuracy")}  # fmt: skip
    models = [(0.35, 96)] if quick else [(0.35, 96), (1.0, 96)]
    for alpha, size in models:
        fp32, cal, evals = mobilenet(alpha, size, workdir, 8 if quick else 64)
        name = f"mobilenetv2 alpha {alpha} {size}x{size} (untrained)"
        results[name] = search_row(name, fp32, cal, evals, workdir, runs, "output error")
    if not quick:
        images = np.random.default_rng(1).normal(0, 1, (40, 3, 224, 224)).astype(np.float32)
        results["resnet50-light"] = search_row("resnet50-light (folded, placeholder weights)", folded_resnet50(),
                                               Dataset(images[:32], np.zeros(32)), Dataset(images[32:], np.zeros(8)),
                                               workdir, 30, "output error")  # fmt: skip
    wins = [name for name, rows in results.items()
            if max(r["score"] for r in rows) > next(r["score"] for r in rows if r["method"] == "minmax")]  # fmt: skip
    print(f"\nsearch beat plain static INT8 (minmax) on {len(wins)} of {len(results)} models: {', '.join(wins) or '-'}")


def fleet(workdir: Path, quick: bool) -> None:
    tree = load_fleet(read_fleet_dir(EXAMPLE))
    store = ArtifactStore(workdir / "store")
    quick_scope = (["vibration-anomaly"], ["1.0.0"], ["arm-cortex-a-cpu"])
    models, versions, profiles = quick_scope if quick else (list(tree.models), None, None)
    start = time.perf_counter()
    cold = build_scope(tree, EXAMPLE, store, models=models, versions=versions, profiles=profiles)
    cold_s = time.perf_counter() - start
    start = time.perf_counter()
    warm = build_scope(tree, EXAMPLE, store, models=models, versions=versions, profiles=profiles)
    warm_s = time.perf_counter() - start
    refused = [r.error for r in cold if r.error]
    require(len(refused) < len(cold), f"no build of {len(cold)} finished: {refused[:1]}")
    require(not any(r.cached for r in cold), "the cold build found cache hits in an empty store")
    hits = sum(r.cached for r in warm)
    require(hits == len(cold) - len(refused), f"the warm build hit the cache {hits} times for {len(cold)} builds")
    what = "one version x one recipe profile" if quick else "every version x recipe profile"
    print(f"\nfleet-example: {len(cold)} builds ({what}), {len(refused)} refused")
    print(f"  cold build (empty store)   {cold_s:.1f} s")
    print(f"  warm build (cache hits)    {warm_s:.2f} s   ({hits}/{len(warm)} cached)")
    print(f"  ratio cold/warm            {ratio(cold_s, warm_s, 'cold/warm'):.0f}x")
    for error in refused:
        print("  refused:", error)


def main() -> None:
    arguments = parser(__doc__)
    arguments.add_argument("--skip-fleet", action="store_true")
    args = arguments.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, bench in (("digits", digits), ("resnet", resnet50), ("search", search)):
            (work / name).mkdir()
            bench(work / name, args.quick)
        if not args.skip_fleet:
            (work / "fleet").mkdir()
            fleet(work / "fleet", args.quick)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
