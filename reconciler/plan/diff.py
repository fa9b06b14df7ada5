"""What to write: the difference between the assignments a backend holds and the plan.

Pure (no I/O). Writes are proportional to what changed, never to fleet size: an unchanged assignment is
not sent again. An assignment that no plan entry wants any more is deleted, except on devices the plan
had a problem with (a missing profile label is a reason to stop changing a device, not to strip it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .desired import Desired, Plan


@dataclass(frozen=True)
class Changes:
    apply: list[Desired] = field(default_factory=list)
    delete: list[tuple[str, str]] = field(default_factory=list)
    """(device, model) pairs to remove."""

    def __bool__(self) -> bool:
        return bool(self.apply or self.delete)


def diff(current: Mapping[tuple[str, str], Desired], target: Plan) -> Changes:
    held_back = {problem.device for problem in target.problems}
    apply = [wanted for key, wanted in sorted(target.desired.items()) if current.get(key) != wanted]
    delete = sorted(key for key in current if key not in target.desired and key[0] not in held_back)
    return Changes(apply, delete)
