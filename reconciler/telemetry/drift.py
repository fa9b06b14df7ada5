"""Drift: merged sketches of what devices saw and said, against the reference the build shipped, with a threshold
that knows both sample sizes and the sketches' own error.

Pure (no I/O). Each figure (an input feature, ``score``, ``margin`` or ``output``; :mod:`reconciler.artifact.sketches`)
is compared three ways:

- **KS distance**, the largest gap between the two cumulative distributions, read on both sketches' quantile grids.
  A figure has drifted when the distance exceeds ``c(a) * sqrt((n + m) / (n * m)) + e_ref + e_cur``: the
  two-sample Kolmogorov-Smirnov critical value for a false-alarm rate ``a`` at ``n`` reference and ``m`` current
  values, widened by each sketch's normalized rank error (zero while a sketch still holds every value). Small
  samples therefore need large gaps, a fleet-wide merge of millions of values flags a few percent;
- **PSI** and **Jensen-Shannon distance** (base 2, 0 to 1) on the reference's deciles, for people used to them; they
  are reported, never decided on, since their scale does not know the sample size.

A verdict over several figures (or devices) divides the false-alarm rate among them (Bonferroni), so ``a`` bounds
the chance that a model, or a device, is flagged on reference-like data at all.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import datasketches
import numpy as np

from reconciler.api.status import DRIFTED_DEVICES, DriftScope, FigureDrift, VersionDrift
from reconciler.artifact import sketches

GRID = 256
"""Quantiles read from each sketch: the KS distance is read at most ``1 / GRID`` low (a conservative error)."""
DECILES = 10
EPSILON = 1e-4
"""Floor of a bin's share in PSI, so that a bin seen on one side only does not make the index infinite."""
DEFAULT_FALSE_ALARM_RATE = 0.01
MIN_VALUES = 30
LATENCY_QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}
"""Fewer current values than this: no verdict (the asymptotic KS threshold means little below it)."""

Sketch = datasketches.kll_floats_sketch


def critical_value(false_alarm_rate: float) -> float:
    """``c(a)`` of the two-sample KS test's asymptotic critical value ``c(a) * sqrt((n + m) / (n * m))``."""
    return math.sqrt(-math.log(false_alarm_rate / 2) / 2)


def rank_error(sketch: Sketch) -> float:
    """The sketch's normalized rank error (single-sided, 99 % confidence); zero while it holds every value."""
    return sketch.normalized_rank_error(False) if sketch.is_estimation_mode() else 0.0


def compare(
    reference: Sketch,
    current: Sketch,
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
    reference_values: int | None = None,
) -> FigureDrift | None:
    """``current`` against ``reference``; None when either is empty or ``current`` has under ``MIN_VALUES``.
    ``reference_values``: the reference's sample size when its sketch merges several copies of one sample (the
    references of one evaluation set built for several profiles)."""
    n, m = reference_values or reference.n, current.n
    if reference.is_empty() or m < MIN_VALUES or n <= 0:
        return None
    grid = np.unique(np.concatenate([_quantiles(reference), _quantiles(current)]))
    ks = float(np.max(np.abs(np.asarray(reference.get_cdf(grid)) - np.asarray(current.get_cdf(grid)))))
    threshold = critical_value(false_alarm_rate) * math.sqrt((n + m) / (n * m)) + rank_error(reference)
    threshold += rank_error(current)
    p, q = _decile_shares(reference, current)
    return FigureDrift(ks, threshold, _psi(q, p), _js(q, p), m)


def compare_all(
    reference: Mapping[str, str | Sketch],
    current: Mapping[str, Sketch],
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
    reference_values: Mapping[str, int] | None = None,
    tests: int = 1,
) -> dict[str, FigureDrift]:
    """Every figure both sides have, compared; the false-alarm rate is shared by the figures and by ``tests``
    verdicts of the same kind (the devices of a fleet, say). ``reference``: sketches, or their encoding (a
    manifest's)."""
    names = sorted(set(reference) & set(current))
    share = false_alarm_rate / max(len(names) * tests, 1)
    result: dict[str, FigureDrift] = {}
    for name in names:
        baseline = reference[name] if isinstance(reference[name], Sketch) else _decoded(reference[name])
        if baseline is None:
            continue
        found = compare(baseline, current[name], share, (reference_values or {}).get(name))
        if found is not None:
            result[name] = found
    return result


def _quantiles(sketch: Sketch) -> np.ndarray:
    return np.asarray(sketch.get_quantiles(((np.arange(GRID) + 0.5) / GRID).tolist()), dtype=np.float32)


def _decile_shares(reference: Sketch, current: Sketch) -> tuple[np.ndarray, np.ndarray]:
    """The share of each side in the reference's decile bins (fewer bins where the reference repeats a value)."""
    edges = np.unique(np.asarray(reference.get_quantiles((np.arange(1, DECILES) / DECILES).tolist()), np.float32))
    return _floored(reference.get_pmf(edges)), _floored(current.get_pmf(edges))


def _floored(shares: list[float]) -> np.ndarray:
    floored = np.maximum(np.asarray(shares, dtype=np.float64), EPSILON)
    return floored / floored.sum()


def _psi(current: np.ndarray, reference: np.ndarray) -> float:
    return float(np.sum((current - reference) * np.log(current / reference)))


def _js(current: np.ndarray, reference: np.ndarray) -> float:
    middle = (current + reference) / 2
    divergence = (np.sum(current * np.log2(current / middle)) + np.sum(reference * np.log2(reference / middle))) / 2
    return float(math.sqrt(max(divergence, 0.0)))


def merged_sketches(summaries: Iterable[Mapping[str, Any]]) -> dict[str, Sketch]:
    """name -> one sketch of every summary's sketch of that name (what does not decode is left out)."""
    merged: dict[str, Sketch] = {}
    for summary in summaries:
        for name, text in (summary.get("sketches") or {}).items():
            try:
                sketch = sketches.decode(text)
            except ValueError:
                continue
            if name in merged:
                merged[name].merge(sketch)
            else:
                merged[name] = sketch
    return merged


def reference_for(references: Iterable[Mapping[str, str]]) -> tuple[dict[str, str], dict[str, int]]:
    """One reference of several builds' (one per profile, each from the same evaluation data): their sketches merged
    name by name, and the sample size of one of them, so that the copies do not pass for a larger sample."""
    merged: dict[str, list[str]] = {}
    for reference in references:
        for name, text in reference.items():
            merged.setdefault(name, []).append(text)
    encoded, sizes = {}, {}
    for name, texts in merged.items():
        decoded = [sketch for sketch in map(_decoded, texts) if sketch is not None]
        if decoded:
            encoded[name] = sketches.encode(sketches.merged(texts)) if len(texts) > 1 else texts[0]
            sizes[name] = max(s.n for s in decoded)
    return encoded, sizes


def version_drift(
    summaries: Iterable[Mapping[str, Any]],
    references: Mapping[str, Mapping[str, str]],
    profile_of: Mapping[str, str],
    groups: Mapping[str, Collection[str]],
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
) -> VersionDrift:
    """One version's drift: ``summaries`` (the window's, any number per device), ``references`` (profile -> its
    build's reference sketches), ``profile_of`` (device -> profile), ``groups`` (group -> member devices).

    Fleet-wide, per profile, per group and per device, each slice against the reference of the profiles in it;
    the false-alarm rate is shared among the slices of a kind (profiles, groups, devices)."""
    by_device: dict[str, list[Mapping[str, Any]]] = {}
    for summary in summaries:
        by_device.setdefault(str(summary.get("device", "")), []).append(summary)
    merged = {device: merged_sketches(rows) for device, rows in by_device.items()}
    if not references:
        references = {"": {}}  # nothing to compare with: latency still counts
    known: dict[frozenset[str], tuple[dict[str, str], dict[str, int]]] = {}

    def scope(devices: Collection[str], tests: int, latency_of: bool = True) -> DriftScope:
        present = [d for d in devices if d in merged]
        wanted = frozenset({profile_of.get(d) for d in present} & set(references) or set(references))
        if wanted not in known:
            known[wanted] = reference_for(references[p] for p in sorted(wanted))
        reference, sizes = known[wanted]
        current = merged[present[0]] if len(present) == 1 else _merge_maps(merged[d] for d in present)
        latency = current.get(sketches.LATENCY)
        quantiles = {} if latency is None or latency.is_empty() or not latency_of else {
            name: float(latency.get_quantile(q)) for name, q in LATENCY_QUANTILES.items()}  # fmt: skip
        return DriftScope(len(present), compare_all(reference, current, false_alarm_rate, sizes, tests), quantiles)

    fleet = scope(list(merged), 1)
    by_profile: dict[str, list[str]] = {}
    for device in merged:
        by_profile.setdefault(profile_of.get(device, ""), []).append(device)
    profiles = {p: scope(members, len(by_profile)) for p, members in sorted(by_profile.items()) if p}
    present_groups = {g: [d for d in members if d in merged] for g, members in groups.items()}
    present_groups = {g: members for g, members in present_groups.items() if members}
    in_groups = {g: scope(members, len(present_groups)) for g, members in sorted(present_groups.items())}
    drifted = {}
    for device in sorted(merged):
        found = scope([device], len(merged), latency_of=False)
        if found.drifted:
            drifted[device] = found
    named = dict(sorted(drifted.items(), key=lambda item: -max(
        f.ks - f.threshold for f in item[1].figures.values() if f.drifted))[:DRIFTED_DEVICES])  # fmt: skip
    missing = None if any(references.values()) else "no reference sketches in this version's builds"
    return VersionDrift(fleet, profiles, in_groups, named, len(drifted), reference=missing)


def _merge_maps(maps: Iterable[Mapping[str, Sketch]]) -> dict[str, Sketch]:
    result: dict[str, Sketch] = {}
    for sketch_map in maps:
        for name, sketch in sketch_map.items():
            if name not in result:
                result[name] = sketches.new()
            result[name].merge(sketch)
    return result


def _decoded(text: str) -> Sketch | None:
    try:
        return sketches.decode(text)
    except ValueError:
        return None


OUTPUT_FIGURES = ("score", "margin", "output")
"""What a model says (``reconciler.artifact.sketches.output_figures``): the figures a rollout's drift gate reads."""


def output_drift(
    new: Iterable[Mapping[str, Any]], old: Iterable[Mapping[str, Any]], false_alarm_rate: float
) -> tuple[float, str] | None:
    """The rollout gate's drift: the new version's outputs against the previous version's over the same window.
    The largest KS distance among the output figures past their threshold for these sample sizes (0.0 when
    none is, whatever the distances: a gap the samples cannot tell from noise fails nothing), and what it was
    read from; None when either side has no sketched outputs to compare."""
    current = {k: v for k, v in merged_sketches(new).items() if k in OUTPUT_FIGURES}
    previous = {k: v for k, v in merged_sketches(old).items() if k in OUTPUT_FIGURES}
    found = compare_all(previous, current, false_alarm_rate)
    if not found:
        return None
    drifted = {name: f for name, f in found.items() if f.drifted}
    if not drifted:
        name, figure = max(found.items(), key=lambda item: item[1].ks)
        return 0.0, (f"no output figure past its threshold (largest: {name} KS {figure.ks:.3f} <= "
                     f"{figure.threshold:.3f} at {figure.values} values)")  # fmt: skip
    name, figure = max(drifted.items(), key=lambda item: item[1].ks)
    return figure.ks, f"{name} KS {figure.ks:.3f} > {figure.threshold:.3f} at {figure.values} values"
