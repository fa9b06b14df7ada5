"""Drift from sketches: reference-like data is rarely flagged (the false-alarm rate holds, whatever the sample
sizes and the shape of the data), a half-sigma shift on one feature is flagged on that feature only, and the
threshold follows the sample sizes."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

from reconciler.artifact import sketches
from reconciler.telemetry.drift import DEFAULT_FALSE_ALARM_RATE, compare, compare_all, output_drift


def sketched(rows: np.ndarray) -> dict[str, object]:
    return sketches.sketch_rows({"input_0": rows.astype(np.float32)}, None)


def encoded(rows: np.ndarray) -> dict[str, str]:
    return {name: sketches.encode(sketch) for name, sketch in sketched(rows).items()}


def draw(rng: np.random.Generator, size: int, shift: float = 0.0) -> np.ndarray:
    """Four features of different shapes: normal, skewed, discrete (many ties) and bounded."""
    return np.stack([
        rng.normal(shift, 1.0, size),
        rng.lognormal(0.0, 0.8, size),
        rng.poisson(3.0, size).astype(float),
        rng.uniform(-1.0, 1.0, size),
    ], axis=1)  # fmt: skip


def test_reference_against_reference_false_alarms_stay_under_the_rate():
    rng = np.random.default_rng(2026)
    trials, alarms, figures = 300, 0, 0
    for _ in range(trials):
        reference_size = int(rng.choice([500, 5_000, 50_000]))
        current_size = int(rng.choice([40, 300, 3_000, 30_000]))
        found = compare_all(encoded(draw(rng, reference_size)), sketched(draw(rng, current_size)))
        figures += len(found)
        alarms += any(f.drifted for f in found.values())
    assert figures == 4 * trials  # every figure compared: none left out for its size
    assert alarms / trials < DEFAULT_FALSE_ALARM_RATE, f"{alarms} of {trials} reference-like samples flagged"


def test_a_half_sigma_shift_on_one_feature_is_flagged_there_only():
    rng = np.random.default_rng(7)
    reference = encoded(draw(rng, 5_000))
    found = compare_all(reference, sketched(draw(rng, 2_000, shift=0.5)))
    assert [name for name, f in found.items() if f.drifted] == ["input_0[0]"]
    shifted = found["input_0[0]"]
    assert 0.12 < shifted.ks < 0.3 and shifted.psi > 0.1 and shifted.js > 0.1
    assert all(f.psi < 0.05 and f.js < 0.1 for name, f in found.items() if name != "input_0[0]")


def quantile_spaced(size: int, shift: float) -> np.ndarray:
    """``size`` values of N(shift, 1) without sampling noise: the normal's quantiles at (i + 0.5) / size."""
    normal = NormalDist(shift, 1.0)
    return np.array([[normal.inv_cdf((i + 0.5) / size)] for i in range(size)], dtype=np.float32)


def test_the_threshold_follows_both_sample_sizes():
    reference = sketches.sketch_rows({"input_0": quantile_spaced(20_000, 0.0)}, None)["input_0[0]"]
    few = compare(reference, sketches.sketch_rows({"input_0": quantile_spaced(60, 0.25)}, None)["input_0[0]"])
    many = compare(reference, sketches.sketch_rows({"input_0": quantile_spaced(20_000, 0.25)}, None)["input_0[0]"])
    assert few is not None and many is not None
    assert abs(few.ks - many.ks) < 0.03  # the same gap, about 0.1
    assert few.threshold > 3 * many.threshold  # sixty values need a far larger gap than twenty thousand
    assert many.drifted and not few.drifted  # a quarter sigma: visible in a fleet, noise on one quiet device
    five = sketches.sketch_rows({"input_0": np.zeros((5, 1))}, None)["input_0[0]"]
    assert compare(reference, five) is None  # five values: no verdict


def summaries(rng: np.random.Generator, devices: int, rows: int, sharper: float = 1.0) -> list[dict]:
    """Device summaries of a ten-class model's outputs: ``sharper`` scales the logits (a more confident model)."""
    found = []
    for device in range(devices):
        logits = rng.normal(0, 1, (rows, 10)) * sharper
        sketched = sketches.sketch_rows(None, logits)
        found.append({"device": f"d{device}", "sketches": {k: sketches.encode(v) for k, v in sketched.items()}})
    return found


def test_the_rollout_gate_reads_outputs_past_their_threshold_only():
    rng = np.random.default_rng(5)
    old = summaries(rng, 20, 500)
    same = output_drift(summaries(rng, 3, 500), old, DEFAULT_FALSE_ALARM_RATE)
    assert same is not None and same[0] == 0.0 and "no output figure past its threshold" in same[1]
    sharper = output_drift(summaries(rng, 3, 500, sharper=1.6), old, DEFAULT_FALSE_ALARM_RATE)
    assert sharper is not None and sharper[0] > 0.2 and sharper[1].startswith(("score", "margin"))
    few = output_drift(summaries(rng, 1, 35, sharper=1.3), old, DEFAULT_FALSE_ALARM_RATE)
    assert few is not None and few[0] == 0.0  # a gap that thirty-five values cannot tell from noise fails nothing
    assert output_drift([], old, DEFAULT_FALSE_ALARM_RATE) is None  # nothing sketched yet: the gate waits
