"""Drift that held becomes a retraining request: a branch a person turns into a pull request.

Who calls it: the controller, after each drift evaluation. A model version drifted for the model's
``monitoring.drift.retrainAfter`` (``since`` in its drift status, carried while the drift holds) gets one branch,
``retrain/MODEL-VERSION-SINCE``, on top of the fleet branch's head, adding ``retraining/NAME.yaml``: a
:class:`reconciler.api.retraining.RetrainingRequest` with what drifted, where and since when. Nothing is trained
and nothing in the fleet changes.

Once per drift episode (model, version, ``since``): what was pushed is remembered in the state directory, so a
branch a person merged and deleted is not pushed again while the same drift holds; a drift that clears and comes
back is a new episode. A push that fails is tried again next cycle.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

import yaml

from reconciler.api import FleetTree
from reconciler.api.document import API_VERSION
from reconciler.api.status import DriftStatus, VersionDrift
from reconciler.api.types import parse_moment
from reconciler.durable import write_atomic
from reconciler.gitops.source import GitSource
from reconciler.gitops.status import Author, StatusWriter

log = logging.getLogger("edge_reconciler.controller")

STATE_FILE = "retraining.json"
HEADER = "# Written by edge-reconciler: drift that held. Open a pull request, train the next version, add it.\n"


class RetrainingRequests:
    def __init__(self, source: GitSource, state_dir: Path, signing_key: Path | None = None) -> None:
        self.source = source
        self.path = Path(state_dir) / STATE_FILE
        self.signing_key = signing_key

    def pushed(self) -> dict[str, str]:
        """Drift episode (``model@version@since``) -> the branch pushed for it."""
        try:
            found = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}

    def push_due(self, tree: FleetTree, drift: Mapping[str, DriftStatus], head: str, now: datetime) -> list[str]:
        """Push a branch for every drift held past its model's ``retrainAfter`` and not pushed before; the
        branches pushed."""
        done = self.pushed()
        branches = []
        for model_name, status in sorted(drift.items()):
            model = tree.models.get(model_name)
            after = model.spec.monitoring.drift.retrain_after if model else None
            if after is None:
                continue
            for version, found in sorted(status.versions.items()):
                since = parse_moment(found.since)
                episode = f"{model_name}@{version}@{found.since}"
                if since is None or now - since < after or episode in done:
                    continue
                name = request_name(model_name, version, since)
                author = Author(tree.fleet.spec.commit_author.name, tree.fleet.spec.commit_author.email)
                writer = StatusWriter(self.source, author, signing_key=self.signing_key, branch=f"retrain/{name}",
                                      start_from=head)  # fmt: skip
                samples = [f"captures/{model_name}/{version}/"] if model.spec.monitoring.capture else []
                document = request_document(name, model_name, version, status, found, samples)
                path = f"retraining/{name}.yaml"
                message = (
                    f"retrain: {model_name} {version} drifted since {found.since}\n\n"
                    f"{_summary(found)}\nOpen a pull request from this branch to train the next version."
                )
                writer.commit({path: document}, message)
                done[episode] = writer.branch
                write_atomic(self.path, json.dumps(done, indent=2, sort_keys=True).encode())
                branches.append(writer.branch)
                log.info("retraining requested", extra={"model": model_name, "version": version,
                                                        "branch": writer.branch})  # fmt: skip
        return branches


def request_name(model: str, version: str, since: datetime) -> str:
    """A document name (an RFC 1123 label) for one drift episode."""
    slug = re.sub(r"[^a-z0-9]+", "-", f"{model}-{version}".lower()).strip("-")
    stamp = since.strftime("%Y%m%d-%H%M")
    return f"{slug[: 63 - len(stamp) - 1].rstrip('-')}-{stamp}"


def request_document(name: str, model: str, version: str, status: DriftStatus, found: VersionDrift,
                     samples: list[str] | None = None) -> bytes:  # fmt: skip
    """``samples``: the artifact store's folders of inputs captured from the version's traffic."""
    figures = [{"name": figure_name, **{k: v for k, v in found.fleet.figures[figure_name].to_json().items()
                                        if k in ("ks", "threshold", "psi", "js", "values")}}
               for figure_name in found.fleet.drifted]  # fmt: skip
    body = {
        "apiVersion": API_VERSION,
        "kind": "RetrainingRequest",
        "metadata": {"name": name},
        "spec": {
            "model": model,
            "version": version,
            "since": found.since,
            "window": status.window,
            "falseAlarmRate": status.false_alarm_rate,
            "figures": figures,
            "devices": sorted(found.devices),
            "driftedDevices": found.drifted_devices,
            "samples": samples or [],
        },
    }
    return (HEADER + yaml.safe_dump(body, sort_keys=False)).encode()


def _summary(found: VersionDrift) -> str:
    fleet = ", ".join(found.fleet.drifted) or "no figure fleet-wide"
    devices = f"{found.drifted_devices} device(s) drifted on their own" if found.drifted_devices else ""
    return f"Drifted: {fleet}" + (f"; {devices}" if devices else "") + "."
