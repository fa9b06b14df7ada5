"""Summaries that merge: the sketches of N devices' summaries, folded as the controller folds them, describe the
pooled data within the sketch's rank error (a property over random fleets), and the projection of inputs is the
same fixed one everywhere."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.agent.telemetry import MIN_ROWS, Summary, TelemetryRecorder
from reconciler.artifact import sketches
from reconciler.deviceapi.protocol import TelemetrySummary
from reconciler.telemetry.summaries import merge

RANK_ERROR = sketches.new().normalized_rank_error(False)


def device_summary(device: str, rows: np.ndarray, outputs: np.ndarray) -> dict:
    summary = Summary("m", "1", device, {}, outputs.shape[1])
    for start in range(0, len(rows), 16):  # requests of up to 16 rows, as a server sees them
        summary.add({"input_0": rows[start : start + 16]}, outputs[start : start + 16], 0.002, False)
    return summary.to_json()


@settings(max_examples=25, deadline=None)
@given(
    devices=st.integers(min_value=1, max_value=12),
    rows=st.integers(min_value=MIN_ROWS, max_value=900),
    shift=st.floats(min_value=-3, max_value=3),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_merging_devices_summaries_equals_the_summary_of_their_pooled_data(devices, rows, shift, seed):
    rng = np.random.default_rng(seed)
    data = [rng.normal(shift * i / devices, 1 + i % 3, size=(rows, 3)).astype(np.float32) for i in range(devices)]
    outputs = [rng.normal(size=(rows, 4)).astype(np.float32) for _ in range(devices)]
    folded = None
    for i in range(devices):
        folded = merge(folded, TelemetrySummary.model_validate(device_summary(f"d{i}", data[i], outputs[i])).model_dump(
            by_alias=True, exclude_none=True))  # fmt: skip
    pooled = np.concatenate(data)
    for column in range(3):
        sketch = sketches.decode(folded["sketches"][f"input_0[{column}]"])
        assert sketch.n == devices * rows
        values = np.sort(pooled[:, column])
        for q in (0.05, 0.25, 0.5, 0.75, 0.95):
            x = values[int(q * (len(values) - 1))]
            exact = np.searchsorted(values, x, side="right") / len(values)
            assert abs(sketch.get_rank(float(x), True) - exact) <= 2.5 * RANK_ERROR + 1 / len(values)
    assert sketches.decode(folded["sketches"]["latencyMs"]).n == devices * -(-rows // 16)  # one per request


def test_the_projection_of_images_tables_and_wide_tables_is_fixed():
    rng = np.random.default_rng(0)
    nhwc = rng.normal(size=(5, 8, 8, 3))
    assert sorted(sketches.features({"x": nhwc})) == ["x[c0]", "x[c1]", "x[c2]"]
    np.testing.assert_allclose(sketches.features({"x": nhwc})["x[c1]"], nhwc[..., 1].mean(axis=(1, 2)), rtol=1e-5)
    nchw = np.moveaxis(nhwc, -1, 1)  # the channels second: the last axis (8) is longer than a channel count
    nchw = np.concatenate([nchw] * 5, axis=-1)  # 40 > MAX_FEATURES: the second axis is the channel axis
    assert sorted(sketches.features({"x": nchw})) == ["x[c0]", "x[c1]", "x[c2]"]
    wide = rng.normal(size=(5, 100))
    projected = sketches.features({"t": wide})
    assert len(projected) == sketches.MAX_FEATURES and "t[0:3]" in projected
    np.testing.assert_allclose(projected["t[0:3]"], wide[:, 0:3].mean(axis=1), rtol=1e-5)


def test_outputs_give_score_and_margin_or_the_regression_value():
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    figures = sketches.output_figures(logits)
    assert figures["score"][1] == pytest.approx(1 / 3) and figures["margin"][1] == pytest.approx(0.0)
    assert figures["score"][0] > 0.8 and set(sketches.output_figures(np.array([[0.5], [1.5]]))) == {"output"}


def test_a_summary_with_a_forged_sketch_is_refused():
    good = device_summary("d", np.ones((4, 2), dtype=np.float32), np.ones((4, 2), dtype=np.float32))
    TelemetrySummary.model_validate(good)
    forged = {**good, "sketches": {**good["sketches"], "input_0[0]": "bm90IGEgc2tldGNo"}}
    with pytest.raises(ValueError, match=r"sketches.input_0\[0\]: not an encoded KLL sketch"):
        TelemetrySummary.model_validate(forged)


def test_sketches_travel_less_often_than_counts_and_lose_nothing_between():
    recorder = TelemetryRecorder("d")
    rows = np.arange(120, dtype=np.float32).reshape(40, 3)
    recorder("m", "1", {"input_0": rows[:6]}, np.zeros((6, 2)), 0.001, False)
    [counts] = recorder.flush(with_sketches=False)
    assert counts["requests"] == 1 and counts["sketches"] == {}
    assert recorder.flush(with_sketches=True) == []  # 6 rows: under MIN_ROWS, they go on gathering
    recorder("m", "1", {"input_0": rows[6:]}, np.zeros((34, 2)), 0.001, False)
    recorder.flush(with_sketches=False)
    [carried] = recorder.flush(with_sketches=True)  # nothing served in this interval: a summary of sketches only
    assert carried["requests"] == 0
    assert sketches.decode(carried["sketches"]["input_0[0]"]).n == 40  # every row of every interval
    assert sketches.decode(carried["sketches"][sketches.LATENCY]).n == 2  # one per request
    TelemetrySummary.model_validate({**carried, "apiVersion": "edgereconciler.io/v1alpha1",
                                     "kind": "TelemetrySummary"})  # the device API takes it  # fmt: skip
    assert recorder.flush(with_sketches=True) == []  # handed over once


def test_no_row_can_be_put_back_together_from_a_summary():
    # Rows whose two columns run opposite ways: a sketch that kept rows in their order would pair (i, -i) at
    # position i of both columns' sketches.
    summary = Summary("m", "1", "d", {}, 2)
    order = np.random.default_rng(1).permutation(60)
    for i in order:
        summary.add({"input_0": np.array([[float(i), float(-i)]], dtype=np.float32)}, np.zeros((1, 2)), 0.001, False)
    sent = summary.to_json()["sketches"]
    first = [item for item, _ in sketches.decode(sent["input_0[0]"])]
    second = [item for item, _ in sketches.decode(sent["input_0[1]"])]
    assert sorted(first) == [float(i) for i in range(60)]  # every value is there...
    paired = {(a, -b) for a, b in zip(first, second, strict=True)}
    assert sum(a == b for a, b in paired) <= 1  # ...but position by position, the rows are not
