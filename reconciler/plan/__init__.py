"""Planning: pure functions from specs and inventory to desired state (no I/O)."""

from .desired import BUCKETS, Desired, Device, Plan, PlanProblem, RolloutPosition, bucket, plan
from .diff import Changes, diff

__all__ = [
    "BUCKETS",
    "Changes",
    "Desired",
    "Device",
    "Plan",
    "PlanProblem",
    "RolloutPosition",
    "bucket",
    "diff",
    "plan",
]
