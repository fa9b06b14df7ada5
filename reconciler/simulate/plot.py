"""``edgectl simulate --plot out.png``: devices per phase over time, with the rollout's decisions marked.

matplotlib (the ``simulate`` extra) is imported here only, so a scenario without a plot never needs it.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

COLORS = {"healthy-new": "#2ca02c", "healthy-old": "#9ecae1", "in-progress": "#ff7f0e", "trial": "#ffd92f",
          "retrying": "#9467bd", "failed": "#d62728"}  # fmt: skip
LABELS = {"healthy-new": "Healthy on {new}", "healthy-old": "Healthy on an older version",
          "in-progress": "Downloading to Testing", "trial": "Trial", "retrying": "Retrying",
          "failed": "Failed"}  # fmt: skip


class PlotError(Exception):
    """No plot can be drawn (matplotlib missing)."""


def draw(result: dict, path: Path) -> Path:
    """A PNG of ``result["timeline"]`` (devices per state every few seconds from the first rollout's commit)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotError("--plot needs matplotlib: pip install 'edge-reconciler[simulate]'") from None
    timeline = result["timeline"]
    states = timeline["states"]
    length = len(next(iter(states.values()), []))
    minutes = [i * timeline["stepSeconds"] / 60 for i in range(length)]
    figure, axes = plt.subplots(figsize=(10, 5), dpi=110)
    new = result["rollout"]["version"]
    axes.stackplot(minutes, *[states[s] for s in COLORS], colors=list(COLORS.values()),
                   labels=[LABELS[s].format(new=new) for s in COLORS])  # fmt: skip
    for part in ("rollout", "defect"):
        for decision in result.get(part, {}).get("decisions", []):
            at = (datetime.fromisoformat(decision["time"]).timestamp() - timeline["start"]) / 60
            if 0 <= at <= (minutes[-1] if minutes else 0):
                axes.axvline(at, color="#333333", linewidth=0.8, linestyle="--")
                version = result["defect"]["version"] if part == "defect" else new
                axes.text(at, axes.get_ylim()[1] * 0.98, f" {version} {decision['decision']}", rotation=90, va="top",
                          fontsize=7)  # fmt: skip
    converged = result["rollout"]["converged"]
    axes.set_title(f"{result['devices']:,} simulated devices: {new} to 99 % in "
                   f"{converged.get('99') if converged.get('99') is not None else '-'} s", fontsize=10)  # fmt: skip
    axes.set_xlabel("minutes after the rollout's commit")
    axes.set_ylabel("devices")
    axes.legend(loc="center right", fontsize=8)
    axes.margins(x=0)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    plt.close(figure)
    return path
