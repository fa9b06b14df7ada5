"""Planning: pure functions from specs and inventory to desired state (no I/O)."""

from .desired import BUCKETS, Desired, Device, Plan, PlanProblem, RolloutPosition, bucket, plan

__all__ = ["BUCKETS", "Desired", "Device", "Plan", "PlanProblem", "RolloutPosition", "bucket", "plan"]
