"""Golden tolerances come from measurement: the spread across thread counts (with a margin), a share of the
artifact's distance from fp32 (what integer kernels of another CPU may move), and a floor of the outputs' scale."""

from __future__ import annotations

import numpy as np

from reconciler.artifact.manifest import GOLDEN_ROWS, golden_vectors

INPUTS = np.linspace(0, 1, 40, dtype=np.float32).reshape(20, 2)
OUTPUTS = np.tile(np.array([[0.9, 0.1]], dtype=np.float32), (20, 1))


def tolerance(**kwargs) -> dict:
    return golden_vectors(INPUTS, OUTPUTS, **kwargs)["tolerance"]


def test_the_floor_holds_without_measurements():
    measured = {"threads": [], "threadSpread": 0.0, "fp32Distance": 0.0, "scale": 0.9}
    assert tolerance() == {"atol": 0.018, "top1": True, "measured": measured}


def test_a_thread_spread_widens_the_tolerance_with_a_margin():
    runs = {1: OUTPUTS, 2: OUTPUTS + 0.01, 4: OUTPUTS - 0.02}
    measured = tolerance(runs=runs)
    assert measured["atol"] == 0.08 and measured["measured"]["threads"] == [1, 2, 4]  # 4 x 0.02


def test_an_int8_artifact_far_from_fp32_gets_room_for_other_integer_kernels():
    measured = tolerance(reference=OUTPUTS + 0.1)
    assert measured["atol"] == 0.05 and measured["measured"]["fp32Distance"] == 0.1


def test_only_the_golden_rows_count():
    far = OUTPUTS.copy()
    far[GOLDEN_ROWS:] += 5.0  # rows the device never runs
    assert tolerance(reference=far)["atol"] == 0.018
