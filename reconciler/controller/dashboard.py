"""The controller's read-only web page (``GET /`` on the operator port): what an operator looks at first.

Who calls it: ``controller.server`` renders :func:`render` from the snapshot the controller keeps after each
cycle (:class:`Snapshot`). Server-rendered HTML with its styles inline and no script: it loads from a
controller that cannot reach the internet, refreshes itself every few seconds, and shows the fleet (the commit
applied, Ready or Stalled and why), every rollout with its step, gates against thresholds, devices per version
and phase and the devices that failed with their agents' reasons, and links to the commits when the fleet
repository has a web address.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from html import escape
from typing import Any

from reconciler.api.status import RolloutStatus

REFRESH_SECONDS = 5
STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#1f2328;background:#fff}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse;margin:.3em 0 1em}th,td{padding:.25em .8em .25em 0;text-align:left;vertical-align:top}
th{color:#59636e;font-weight:600;border-bottom:1px solid #d1d9e0}
.Healthy,.Succeeded,.Pass,.Ready{color:#1a7f37}.Failed,.RolledBack,.Aborted,.Fail,.Stalled{color:#cf222e}
.Progressing,.Paused,.Pending,.Inconclusive,.Downloading,.Installing,.Testing,.Staged{color:#9a6700}
.bar{display:inline-block;width:10em;height:.7em;background:#eef1f4;vertical-align:middle}
.bar span{display:block;height:100%;background:#2da44e}.muted{color:#59636e}code{font-size:.95em}
"""


@dataclass(frozen=True)
class RolloutRow:
    name: str
    status: RolloutStatus
    steps: list[int]
    """The spec's step percentages."""


@dataclass(frozen=True)
class Snapshot:
    """What the page shows, as the last cycle left it."""

    fleet: str = ""
    commit: str | None = None
    stalled: str | None = None
    cycles: int = 0
    at: str | None = None
    rollouts: list[RolloutRow] = field(default_factory=list)
    devices: dict[str, Counter] = field(default_factory=dict)
    """model@version -> phase -> devices."""
    failing: list[dict[str, Any]] = field(default_factory=list)
    """device, model, version, phase, reason, message of every device that reports a failure (newest first)."""
    commit_url: str | None = None
    """``https://host/owner/repo/commit/`` when the fleet repository has a web address."""


def commit_base(repo_url: str) -> str | None:
    """The web page of a commit for https remotes of the usual forges (GitHub, GitLab, Gitea); None otherwise."""
    if not repo_url.startswith("https://"):
        return None
    base = repo_url.removesuffix("/").removesuffix(".git")
    if "@" in base.split("/")[2]:  # credentials in the URL: never on a page
        return None
    return f"{base}/commit/"


def render(snapshot: Snapshot) -> bytes:
    title = escape(snapshot.fleet or "fleet")
    parts = [f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
             f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
             f"<title>edge-reconciler: {title}</title><style>{STYLE}</style></head><body>"]  # fmt: skip
    state = "Stalled" if snapshot.stalled else "Ready" if snapshot.cycles else "Starting"
    parts.append(f'<h1>Fleet {escape(snapshot.fleet or "-")} <span class="{state}">{state}</span></h1>')
    parts.append(f'<p class="muted">commit {_commit(snapshot, snapshot.commit)} · {snapshot.cycles} cycle(s) · '
                 f"last {escape(snapshot.at or '-')}</p>")  # fmt: skip
    if snapshot.stalled:
        parts.append(f'<p class="Stalled" id="stalled">{escape(snapshot.stalled)}</p>')
    parts.append("<h2>Rollouts</h2>")
    if not snapshot.rollouts:
        parts.append('<p class="muted">No rollouts.</p>')
    for row in snapshot.rollouts:
        parts.append(_rollout(snapshot, row))
    parts.append("<h2>Devices by version and phase</h2><table><tr><th>Model@version</th><th>Phases</th></tr>")
    for key, phases in sorted(snapshot.devices.items()):
        cells = ", ".join(f'<span class="{escape(p)}">{escape(p)}: {n}</span>' for p, n in sorted(phases.items()))
        parts.append(f"<tr><td><code>{escape(key)}</code></td><td>{cells}</td></tr>")
    parts.append("</table><h2>Failing devices</h2>")
    if not snapshot.failing:
        parts.append('<p class="muted">None.</p>')
    else:
        parts.append("<table id=\"failing\"><tr><th>Device</th><th>Model</th><th>Version</th><th>Phase</th>"
                     "<th>Reason</th><th>Message</th></tr>")  # fmt: skip
        for item in snapshot.failing:
            cells = [escape(str(item.get(key) or "-")) for key in ("device", "model", "version")]
            phase, reason = escape(item["phase"]), escape(item.get("reason") or "-")
            parts.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + f'<td class="{phase}">{phase}</td>'
                         f"<td>{reason}</td><td>{escape(item.get('message') or '')}</td></tr>")  # fmt: skip
        parts.append("</table>")
    parts.append("</body></html>")
    return "".join(parts).encode()


def _rollout(snapshot: Snapshot, row: RolloutRow) -> str:
    status, state = row.status, row.status.state
    healthy, targeted = status.ready
    step = min(state.step, len(row.steps) - 1) if row.steps else 0
    percent = row.steps[step] if row.steps else 0
    done = 100 * healthy // targeted if targeted else 0
    out = [f'<section class="rollout" id="rollout-{escape(row.name)}"><h3>{escape(row.name)} '
           f"<small class=\"muted\">{escape(status.model)} {escape(status.version or '-')}</small> "
           f'<span class="{escape(str(state.phase))}">{escape(str(state.phase))}</span></h3>',
           f"<p>step {step + 1} of {len(row.steps)} ({percent}%) · {healthy}/{targeted} Healthy on "
           f"{escape(status.version or '-')} <span class=\"bar\"><span style=\"width:{done}%\"></span></span>"
           f" · stable {escape(state.stable_version or '-')}</p>"]  # fmt: skip
    if state.message:
        out.append(f"<p>{escape(str(state.reason))}: {escape(state.message)}</p>")
    if status.gates:
        out.append("<table><tr><th>Gate</th><th>Value</th><th>Threshold</th><th>Verdict</th><th></th></tr>")
        for gate in status.gates:
            value = "n/a" if gate.value is None else f"{gate.value:.4g}"
            out.append(f"<tr><td>{escape(gate.name)}</td><td>{value}</td><td>{gate.threshold:g}</td>"
                       f"<td class=\"{escape(str(gate.verdict))}\">{escape(str(gate.verdict))}</td>"
                       f"<td class=\"muted\">{escape(gate.message)}</td></tr>")  # fmt: skip
        out.append("</table>")
    if status.failing:
        names = ", ".join(f"{escape(f.device)} ({escape(f.reason or f.phase)})" for f in status.failing)
        out.append(f"<p>Failing: {names}</p>")
    if status.last_decision is not None:
        decision = status.last_decision
        spec = _commit(snapshot, status.observed_commit)
        out.append(f'<p class="muted">last decision {escape(decision.decision)} at {escape(decision.time)}: '
                   f"{escape(decision.message)} · spec commit {spec}</p>")  # fmt: skip
    out.append("</section>")
    return "".join(out)


def _commit(snapshot: Snapshot, commit: str | None) -> str:
    if not commit:
        return "-"
    short = escape(commit[:12])
    if snapshot.commit_url:
        return f'<a href="{escape(snapshot.commit_url + commit)}"><code>{short}</code></a>'
    return f"<code>{short}</code>"
