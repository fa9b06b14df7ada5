"""Waiting in tests for something another process does."""

from __future__ import annotations

import time


def eventually(check, what: str, timeout: float = 120.0):
    """Until ``check()`` returns something true, which is returned: the deadline only stops a hung test, it times
    nothing."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)
    return result
