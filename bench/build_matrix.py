"""Build benchmarks: INT8 vs fp32 on the example digits CNN and on ResNet-50, the quantization search, and fleet
build wall times.

    python bench/build_matrix.py [--skip-fleet] [--quick]

--quick: 50 latency runs on the digits CNN, 2 calibration images and 3 runs on ResNet-50, and one fleet build
(vibration-anomaly 1.0.0 for arm-cortex-a-cpu) instead of every version x recipe profile.

Prints, with fp32 as the baseline measured in the same run:
- size ratio INT8/fp32 (goal <= 0.30) and latency ratio fp32/INT8 at 1 thread (goal >= 1.5 on ResNet-50);
- accuracy delta INT8 - fp32 on the digits CNN (goal: within 1 point);
- the search: every calibration method of static INT8 against fp32 (size ratio, latency ratio at 1 thread,
  accuracy delta, output error, quantization time) on the digits CNN, MobileNetV2 alpha 0.35 and 1.0 at 96x96
  (trained here for a few epochs on a learnable synthetic task, logits out) and ResNet-50 (--quick: the digits CNN
  and MobileNetV2 0.35 only), and how often a searched method beat plain MinMax (accuracy first, then output
  error; ResNet-50's weights are placeholders, so output error alone);
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
               trained: bool) -> list[dict]:  # fmt: skip
    """fp32 and static INT8 with each calibration method. Every row has the accuracy delta against fp32 (points)
    and the output error (mean |int8 - fp32| over the outputs, logits where the model gives them). ``trained``:
    the model's labels mean something, so methods are ranked by accuracy first, then by output error; otherwise
    (placeholder weights) by output error alone."""
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
        int8, _ = quantize_onnx(fp32, "static", calibration, len(calibration), True, workdir, method=method)
        took = time.perf_counter() - start
        (workdir / f"{method}.onnx").write_bytes(int8)
        q = measure(workdir / f"{method}.onnx", "onnx", profile, evaluation, workdir, base.outputs, runs=runs)
        m = q.measurement
        error = float(np.mean(np.abs(q.outputs - base.outputs)))
        points = (m.accuracy - b.accuracy) * 100
        rows.append({"method": method, "size": ratio(m.size_bytes, b.size_bytes, f"{name} {method} size"),
                     "latency": ratio(b.latency_p50_ms, m.latency_p50_ms, f"{name} {method} latency"),
                     "points": points, "error": error, "seconds": took,
                     "score": (points if trained else 0.0, -error)})  # fmt: skip
    ranking = "accuracy, then output error" if trained else "output error (placeholder weights: accuracy says nothing)"
    print(f"\nsearch: {name} (1 thread, {runs} runs; fp32 accuracy {b.accuracy:.4f}; ranked by {ranking})")
    print(f"  {'method':<12} {'int8/fp32 size':>15} {'fp32/int8 latency':>18} {'acc pts':>8} {'out error':>10} "
          f"{'quantize s':>11}")  # fmt: skip
    for row in rows:
        print(f"  {row['method']:<12} {row['size']:>15.3f} {row['latency']:>18.2f} {row['points']:>+8.2f} "
              f"{row['error']:>10.4g} {row['seconds']:>11.1f}")  # fmt: skip
    plain = next(r for r in rows if r["method"] == "minmax")
    best = max(rows, key=lambda r: r["score"])
    if best["score"] > plain["score"]:
        less = 1 - best["error"] / max(plain["error"], 1e-12)
        print(f"  search: {best['method']} beat minmax by {best['points'] - plain['points']:+.2f} points, "
              f"{less:.0%} less output error")  # fmt: skip
    else:
        print("  search: minmax was best (no gain)")
    return rows


def mobilenet(alpha: float, size: int, workdir: Path, rows: int, epochs: int) -> tuple[bytes, Dataset, Dataset]:
    """MobileNetV2 trained for a few epochs on a task it can learn (the class brightens one of ten patches), with
    logits as its output: calibration methods differ by fractions of a logit, which a softmax output at uint8
    resolution hides."""
    keras = keras_module()
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=alpha, weights=None, classes=10,
                                           classifier_activation=None)  # fmt: skip
    for layer in model.layers:  # a few hundred steps: the moving statistics must follow them to be usable
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.8
    rng = np.random.default_rng(2)
    patch = size // 4

    def images(count: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 10, count)
        x = rng.normal(0, 0.3, (count, size, size, 3)).astype(np.float32)
        for label in range(10):
            top, left = (label // 4) * patch, (label % 4) * patch
            x[y == label, top : top + patch, left : left + patch, :] += 1.0
        return x, y

    model.compile(optimizer=keras.optimizers.Adam(0.003),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))  # fmt: skip
    model.fit(*images(rows * 8), epochs=epochs, batch_size=32, verbose=0)
    calibration, evaluation = images(rows), images(rows * 2)
    return keras_to_onnx(model, 17, workdir), Dataset(*calibration), Dataset(*evaluation)


def search(workdir: Path, quick: bool) -> None:
    runs = 20 if quick else 200
    keras = keras_module()
    digits_model = keras.saving.load_model(EXAMPLE / "models/digits-cnn/1.0.0/model.keras", compile=False)
    data = EXAMPLE / "models/digits-cnn/data"
    evaluation, calibration = load_dataset(data / "eval.npz", "eval"), load_dataset(data / "calibration.npz", "cal")
    digits_fp32 = keras_to_onnx(digits_model, 17, workdir)
    results = {"digits-cnn 1.0.0": search_row("digits-cnn 1.0.0", digits_fp32, calibration.head(200), evaluation,
                                              workdir, runs, trained=True)}  # fmt: skip
    models = [(0.35, 96)] if quick else [(0.35, 96), (1.0, 96)]
    for alpha, size in models:
        start = time.perf_counter()
        fp32, cal, evals = mobilenet(alpha, size, workdir, 8 if quick else 64, 1 if quick else 4)
        name = f"mobilenetv2 alpha {alpha} {size}x{size} (trained {time.perf_counter() - start:.0f} s, logits)"
        results[name] = search_row(name, fp32, cal, evals, workdir, runs, trained=True)
    if not quick:
        images = np.random.default_rng(1).normal(0, 1, (40, 3, 224, 224)).astype(np.float32)
        results["resnet50-light"] = search_row("resnet50-light (folded, placeholder weights)", folded_resnet50(),
                                               Dataset(images[:32], np.zeros(32)), Dataset(images[32:], np.zeros(8)),
                                               workdir, 30, trained=False)  # fmt: skip
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
