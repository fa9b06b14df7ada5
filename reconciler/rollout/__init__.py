"""Rollout step machine, health gates and rollback decisions."""
