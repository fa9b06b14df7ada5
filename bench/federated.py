"""Federated training on loopback: round time and bytes per device per round, with and without SecAgg+, at 6 and
30 devices; and the accuracy of the federated head beside the same head trained centrally and the base version.

Real processes: a SuperLink with TLS and SuperNode authentication, one SuperNode per device (identity keys from a
fleet CA), the numpy head trainer on each device's own rows of the digits scenario (tests/federated/digits.py).
Bytes are the serialized messages the server sends and receives in a round, divided by the devices sampled
(HTTP and TLS framing come on top). Every SuperNode and every per-message training process shares this
machine's cores, so round times here are an upper bound for a fleet of real devices.

    .venv/bin/python bench/federated.py [--devices 6 30] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reconciler.api.training import FederatedTrainingSpec
from reconciler.federated import runs
from reconciler.federated.head import Features, accuracy, read_head, train_head
from tests.federated.digits import Scenario
from tests.federated.flower_lab import open_lab, wait_for


def one_run(lab, scenario: Scenario, folder: Path, devices: int, secagg: bool, rounds: int) -> dict:
    model = folder / "model.onnx"
    scenario.write_base(model)
    started = time.monotonic()
    for i in range(devices):
        lab.join(f"d{devices}-{int(secagg)}-{i}", model, scenario.write_device_data(folder / f"data-{i}", i))
    spec = FederatedTrainingSpec.model_validate({
        "model": "digits-mlp", "baseVersion": "1.0.0", "version": "1.1.0", "groups": ["cameras"], "rounds": rounds,
        "clientsPerRound": devices, "minClients": devices, "localEpochs": 2, "learningRate": 0.1, "batchSize": 32,
        "roundTimeout": "600s",
        "secureAggregation": {"enabled": secagg, **({"shares": 5, "reconstructionThreshold": 3} if secagg else {})},
    })  # fmt: skip
    config = runs.prepare(spec, scenario.base, folder / "run", wait_seconds=600)
    submitted = time.monotonic()
    run_id = lab.superlink.submit(config)
    wait_for(lambda: lab.superlink.state(run_id).finished, 3600, "the run")
    finished = time.monotonic()
    lab.leave_all()
    result = runs.result(folder / "run") or {}
    if result.get("phase") != "Succeeded":
        raise SystemExit(f"run failed: {json.dumps(result)[:500]}")
    per_round = result["rounds"]
    weight, bias = read_head(scenario.base)
    features = Features(model, "hidden", weight.shape[0])
    held_out = features(scenario.eval_x)
    trained_weight, trained_bias = read_head(runs.trained_model(scenario.base, folder / "run"))
    central_weight, central_bias, _ = train_head(weight, bias, features(scenario.pooled[0]), scenario.pooled[1],
                                                 epochs=rounds * 2, learning_rate=0.1, batch_size=32)  # fmt: skip
    return {
        "devices": devices, "secagg": secagg, "rounds": rounds,
        "join_and_wait_s": round(submitted - started, 1), "run_s": round(finished - submitted, 1),
        "round_s": [round(r["seconds"], 1) for r in per_round],
        "bytes_per_device_per_round": round(sum(_per_device(r) for r in per_round) / len(per_round)),
        "accuracy": {"base": round(accuracy(weight, bias, held_out, scenario.eval_y), 4),
                     "federated": round(accuracy(trained_weight, trained_bias, held_out, scenario.eval_y), 4),
                     "central": round(accuracy(central_weight, central_bias, held_out, scenario.eval_y), 4)},
    }  # fmt: skip


def _per_device(figures: dict) -> float:
    return (figures["bytesSent"] + figures["bytesReceived"]) / max(figures["participants"], 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[6, 30])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(f"federated training on loopback, {os.cpu_count()} CPU(s), {args.rounds} round(s) a run")
    with tempfile.TemporaryDirectory() as scratch:
        lab = open_lab(Path(scratch) / "lab")
        try:
            results = []
            for devices in args.devices:
                scenario = Scenario(devices=devices)
                for secagg in (False, True):
                    folder = Path(scratch) / f"{devices}-{int(secagg)}"
                    found = one_run(lab, scenario, folder, devices, secagg, args.rounds)
                    results.append(found)
                    print(json.dumps(found), flush=True)
        finally:
            lab.leave_all()
            lab.superlink.stop()
    print("\ndevices  aggregation  round s (mean)  bytes/device/round  accuracy base/federated/central")
    for r in results:
        mean = sum(r["round_s"]) / len(r["round_s"])
        a = r["accuracy"]
        print(
            f"{r['devices']:>7}  {'SecAgg+' if r['secagg'] else 'FedAvg':<11}  {mean:>14.1f}  "
            f"{r['bytes_per_device_per_round']:>18}  {a['base']:.3f}/{a['federated']:.3f}/{a['central']:.3f}"
        )
    for devices in args.devices:
        plain, secure = (
            next(r for r in results if r["devices"] == devices and r["secagg"] is s) for s in (False, True)
        )
        ratio_time = (sum(secure["round_s"]) / len(secure["round_s"])) / (sum(plain["round_s"]) / len(plain["round_s"]))
        ratio_bytes = secure["bytes_per_device_per_round"] / plain["bytes_per_device_per_round"]
        print(f"{devices} devices: SecAgg+ costs x{ratio_time:.2f} round time and x{ratio_bytes:.2f} bytes of FedAvg")


if __name__ == "__main__":
    main()
