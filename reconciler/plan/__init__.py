"""Planning: pure functions from specs and inventory to desired state (no I/O)."""

from .desired import BUCKETS, Desired, Device, Plan, PlanProblem, RolloutPosition, Targeting, bucket, plan, targeting
from .diff import Changes, diff

__all__ = [
    "BUCKETS",
    "Changes",
    "Desired",
    "Device",
    "Plan",
    "PlanProblem",
    "RolloutPosition",
    "Targeting",
    "bucket",
    "diff",
    "plan",
    "targeting",
]
