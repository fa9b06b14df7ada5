"""A person's rollout actions through the controller's operator API: in effect in the cycle they wake.

Who calls it: the operator endpoint (``controller.server``) hands a request to ``Controller.request``; the cycle
folds it into the rollout's record and the step machine reads it with the Rollout's annotations (the Git path,
``edgectl rollout ... --via-git``). An abort must not wait for a pull request and a poll: here it returns the
devices in the cycle it wakes, and that cycle's status commit records who did what. The actions are kept in the
controller's record (``StoredRollout.actions``), so a restarted controller keeps an abort or a pause, and they
belong to one version of the rollout: a new version starts without them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from reconciler.api.status import RolloutPhase
from reconciler.rollout.engine import Manual


class ActionKind(StrEnum):
    PAUSE = "pause"
    RESUME = "resume"
    PROMOTE = "promote"
    ABORT = "abort"
    RETRY = "retry"


@dataclass(frozen=True)
class OperatorActions:
    """What people asked of one version of a rollout through the operator API, as counts and flags the step
    machine reads like the annotations (promotions and retries only grow)."""

    version: str = ""
    paused: bool = False
    promotions: int = 0
    retries: int = 0
    abort: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "paused": self.paused, "promotions": self.promotions,
                "retries": self.retries, "abort": self.abort}  # fmt: skip

    @classmethod
    def from_json(cls, body: Mapping[str, Any] | None) -> OperatorActions:
        body = body or {}
        abort = body.get("abort")
        return cls(str(body.get("version") or ""), body.get("paused") is True, _count(body.get("promotions")),
                   _count(body.get("retries")), abort if isinstance(abort, str) else None)  # fmt: skip

    def of(self, version: str) -> OperatorActions:
        """These actions if they were asked of ``version``; none otherwise (a new version starts afresh)."""
        return self if self.version == version else OperatorActions(version)

    def after(self, kind: ActionKind, reason: str) -> OperatorActions:
        if kind is ActionKind.PAUSE:
            return replace(self, paused=True)
        if kind is ActionKind.RESUME:
            return replace(self, paused=False)
        if kind is ActionKind.PROMOTE:
            return replace(self, promotions=self.promotions + 1, paused=False)
        if kind is ActionKind.ABORT:
            return replace(self, abort=reason)
        return replace(self, retries=self.retries + 1, abort=None)


def with_operator(annotations: Manual, operator: OperatorActions) -> Manual:
    """The actions the step machine reads: those committed as annotations and those asked of the controller."""
    return Manual(
        paused=annotations.paused or operator.paused,
        promotions=annotations.promotions + operator.promotions,
        retries=annotations.retries + operator.retries,
        abort=annotations.abort or operator.abort,
    )


def refusal(kind: ActionKind, phase: RolloutPhase | str, started: bool, operator: OperatorActions,
            annotations: Manual, via_git: bool = False) -> str | None:  # fmt: skip
    """Why ``kind`` makes no sense for a rollout in ``phase`` (``started``: the controller runs its current
    version; else it is Pending), or None when it does. ``via_git``: the action is an annotation commit (it can
    resume what an annotation paused, not what the operator API did)."""
    phase = str(phase) if started else "Pending"
    finished = phase in (RolloutPhase.SUCCEEDED, RolloutPhase.ABORTED)
    if kind is ActionKind.RETRY:
        return None if phase == RolloutPhase.ABORTED else f"only an Aborted rollout is retried; it is {phase}"
    if kind is ActionKind.RESUME:
        mine, theirs = (annotations.paused, operator.paused) if via_git else (operator.paused, annotations.paused)
        if mine:
            return None
        if theirs:
            other = (
                "through the controller (edgectl rollout resume)"
                if via_git
                else "by an annotation in Git (edgectl rollout resume --via-git)"
            )
            return f"it was paused {other}: resume it the same way"
        return f"it is not paused; it is {phase}"
    if finished:
        return f"the rollout is {phase}"
    if kind is ActionKind.PROMOTE and not started:
        return "the controller has not started this version yet (Pending): there is no step to promote past"
    if kind is ActionKind.PAUSE and (operator.paused or annotations.paused):
        return "it is paused already"
    return None


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0
