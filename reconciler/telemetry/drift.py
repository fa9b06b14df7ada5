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
from dataclasses import dataclass, field
from typing import Any

import datasketches
import numpy as np

from reconciler.api.status import DRIFTED_DEVICES, DriftScope, FigureDrift, VersionDrift
from reconciler.artifact import sketches

GRID = 256
"""Quantiles read from each sketch: the KS distance is read at most ``1 / GRID`` low (a conservative error)."""
COARSE = 4
"""Per-device checks read the distance on every fourth point of the reference's grid (64 points)."""
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


class Baseline:
    """One reference figure, prepared once for any number of comparisons: its quantile grid and distribution on
    it, its decile bins and its share in each."""

    def __init__(self, sketch: Sketch, values: int | None = None) -> None:
        """``values``: the sample size behind the sketch when it holds another count: a build's reference kept as
        quantiles of a larger sample (each quantile stands within ``1 / n`` of it: added to the threshold), or
        several profiles' copies of one evaluation set merged."""
        self.sketch = sketch
        self.n = values or sketch.n
        self.grid = _quantiles(sketch)
        self.cdf = np.asarray(sketch.get_cdf(self.grid))[:-1]
        self.coarse_grid, self.coarse_cdf = self.grid[::COARSE], self.cdf[::COARSE]
        self.error = rank_error(sketch) + (1 / sketch.n if self.n > sketch.n else 0.0)
        self.edges = np.unique(np.asarray(sketch.get_quantiles((np.arange(1, DECILES) / DECILES).tolist()),
                                          dtype=np.float32))  # fmt: skip
        self.shares = _floored(sketch.get_pmf(self.edges))

    def compare(self, current: Sketch, false_alarm_rate: float, exact: bool = True) -> FigureDrift | None:
        """None when ``current`` has under ``MIN_VALUES``. ``exact``: read the distance on both sketches' quantile
        grids; without, on every ``COARSE``-th of the reference's alone, which reads it at most ``COARSE / GRID``
        low (never a false alarm; what a check of every device of a large fleet can afford). PSI and JS are
        worked out when exact or drifted."""
        m = current.n
        if m < MIN_VALUES or self.sketch.is_empty():
            return None
        grid, cdf = (self.grid, self.cdf) if exact else (self.coarse_grid, self.coarse_cdf)
        try:
            ks = float(np.max(np.abs(cdf - np.asarray(current.get_cdf(grid))[:-1])))
            if exact:
                grid = _quantiles(current)
                gaps = np.asarray(self.sketch.get_cdf(grid))[:-1] - np.asarray(current.get_cdf(grid))[:-1]
                ks = max(ks, float(np.max(np.abs(gaps))))
        except (ValueError, RuntimeError):  # a sketch nothing can be read from (values that are not finite)
            return None
        threshold = critical_value(false_alarm_rate) * math.sqrt((self.n + m) / (self.n * m))
        threshold += self.error + rank_error(current)
        if not exact and ks <= threshold:
            return FigureDrift(ks, threshold, 0.0, 0.0, m)
        shares = _floored(current.get_pmf(self.edges))
        return FigureDrift(ks, threshold, _psi(shares, self.shares), _js(shares, self.shares), m)


def compare(
    reference: Sketch,
    current: Sketch,
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
    reference_values: int | None = None,
) -> FigureDrift | None:
    """``current`` against ``reference``; None when either is empty or ``current`` has under ``MIN_VALUES``
    (``reference_values``: see :class:`Baseline`)."""
    if reference.is_empty():
        return None
    return Baseline(reference, reference_values).compare(current, false_alarm_rate)


def baselines(reference: Mapping[str, str | Sketch], values: Mapping[str, int] | None = None) -> dict[str, Baseline]:
    """Every figure of a reference (sketches, or their encoding: a manifest's) prepared; what does not decode or
    is empty is left out."""
    prepared = {}
    for name, sketch in reference.items():
        decoded = sketch if isinstance(sketch, Sketch) else _decoded(sketch)
        if decoded is not None and not decoded.is_empty():
            prepared[name] = Baseline(decoded, (values or {}).get(name))
    return prepared


def compare_all(
    reference: Mapping[str, str | Sketch | Baseline],
    current: Mapping[str, Sketch],
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
    reference_values: Mapping[str, int] | None = None,
    tests: int = 1,
    exact: bool = True,
) -> dict[str, FigureDrift]:
    """Every figure both sides have, compared; the false-alarm rate is shared by the figures and by ``tests``
    verdicts of the same kind (the devices of a fleet, say). ``reference``: prepared baselines, sketches, or their
    encoding (a manifest's)."""
    names = sorted(set(reference) & set(current))
    share = false_alarm_rate / max(len(names) * tests, 1)
    raw = {n: reference[n] for n in names if not isinstance(reference[n], Baseline)}
    prepared = {**{n: b for n in names if isinstance(b := reference[n], Baseline)},
                **baselines(raw, reference_values)}  # fmt: skip
    result: dict[str, FigureDrift] = {}
    for name in names:
        if name in prepared:
            found = prepared[name].compare(current[name], share, exact)
            if found is not None:
                result[name] = found
    return result


def _quantiles(sketch: Sketch) -> np.ndarray:
    """The sketch's quantiles at (i + 0.5) / GRID, each once (what ``get_cdf`` takes: rising, no repeats)."""
    return np.unique(np.asarray(sketch.get_quantiles(((np.arange(GRID) + 0.5) / GRID).tolist()), dtype=np.float32))


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


def reference_for(references: Iterable[Reference]) -> tuple[dict[str, str], dict[str, int]]:
    """One reference of several builds' (one per profile, each from the same evaluation data): their sketches merged
    name by name, and the sample size of one of them (as its build counted it), so that the copies do not pass
    for a larger sample."""
    merged: dict[str, list[str]] = {}
    counted: dict[str, int] = {}
    for reference in references:
        for name, text in reference.sketches.items():
            merged.setdefault(name, []).append(text)
            counted[name] = max(counted.get(name, 0), int(reference.values.get(name, 0)))
    encoded, sizes = {}, {}
    for name, texts in merged.items():
        decoded = [sketch for sketch in map(_decoded, texts) if sketch is not None]
        if decoded:
            encoded[name] = sketches.encode(sketches.merged(texts)) if len(texts) > 1 else texts[0]
            sizes[name] = counted.get(name) or max(s.n for s in decoded)
    return encoded, sizes


@dataclass(frozen=True)
class Reference:
    """A build's reference (its manifest's ``sketches``) and the sample size behind each (``sketchValues``)."""

    sketches: Mapping[str, str]
    values: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, manifest: Mapping[str, Any]) -> Reference:
        values = manifest.get("sketchValues") or {}
        return cls(dict(manifest.get("sketches") or {}),
                   {str(k): int(v) for k, v in values.items() if isinstance(v, int) and v > 0})  # fmt: skip


def version_drift(
    summaries: Iterable[Mapping[str, Any]],
    references: Mapping[str, Reference],
    profile_of: Mapping[str, str],
    groups: Mapping[str, Collection[str]],
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
) -> VersionDrift:
    """One version's drift: ``summaries`` (the window's, any number per device), ``references`` (profile -> its
    build's reference), ``profile_of`` (device -> profile), ``groups`` (group -> member devices).

    Fleet-wide, per profile, per group and per device, each slice against the reference of the profiles in it;
    the false-alarm rate is shared among the slices of a kind (profiles, groups, devices)."""
    by_device: dict[str, list[Mapping[str, Any]]] = {}
    for summary in summaries:
        by_device.setdefault(str(summary.get("device", "")), []).append(summary)
    merged = {device: merged_sketches(rows) for device, rows in by_device.items()}
    if not references:
        references = {"": Reference({})}  # nothing to compare with: latency still counts
    known: dict[frozenset[str], dict[str, Baseline]] = {}

    def scope(devices: Collection[str], tests: int, detailed: bool = True) -> DriftScope:
        present = [d for d in devices if d in merged]
        wanted = frozenset({profile_of.get(d) for d in present} & set(references) or set(references))
        if wanted not in known:
            known[wanted] = baselines(*reference_for(references[p] for p in sorted(wanted)))
        prepared = known[wanted]
        current = merged[present[0]] if len(present) == 1 else merge_sketch_maps(merged[d] for d in present)
        latency = current.get(sketches.LATENCY)
        quantiles = {} if latency is None or latency.is_empty() or not detailed else {
            name: float(latency.get_quantile(q)) for name, q in LATENCY_QUANTILES.items()}  # fmt: skip
        found = compare_all(prepared, current, false_alarm_rate, tests=tests, exact=detailed)
        return DriftScope(len(present), found, quantiles)

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
        found = scope([device], len(merged), detailed=False)  # every device: the affordable distance, no latency
        if found.drifted:
            drifted[device] = found
    named = dict(sorted(drifted.items(), key=lambda item: -max(
        f.ks - f.threshold for f in item[1].figures.values() if f.drifted))[:DRIFTED_DEVICES])  # fmt: skip
    missing = None if any(r.sketches for r in references.values()) else "no reference sketches in this version's builds"
    return VersionDrift(fleet, profiles, in_groups, named, len(drifted), reference=missing)


def merge_sketch_maps(maps: Iterable[Mapping[str, Sketch]]) -> dict[str, Sketch]:
    """Several ``{name: sketch}`` maps merged name by name into fresh sketches (the inputs stay as they are)."""
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
