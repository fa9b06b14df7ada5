"""Desired state per device from specs + inventory, and diffs for pull requests. Pure: no I/O."""
