"""Named fault points: the agent kills itself (SIGKILL, no cleanup) at exactly one point of its work.

Who sets it: the fault tests and ``bench/agent_faults.py``, through ``EDGE_AGENT_CRASH_AT=POINT`` (and
optionally ``EDGE_AGENT_CRASH_AFTER=N``: the N-th time the point is passed). A kill lands at a step of the
agent's own work, never at a moment of the wall clock, so the same test kills in the same place on any machine.
Unset (the default), a fault point is one dictionary lookup.

Points: ``mid-download`` (after the first chunk of a file), ``after-download``, ``mid-verify``, ``mid-copy``
(one file copied into the slot), ``switch`` (verified, before the state write), ``mid-state-write`` (temporary
file written, not renamed), ``after-switch`` (state written, before the server reloads), ``trial`` (on trial,
before it is judged). ``health`` kills the health check's child process instead, ``serve`` the model server's at
its next inference (a runtime that crashes); ``EDGE_AGENT_SPIN_AT=health`` makes the health check's child spin.
"""

from __future__ import annotations

import os
import signal

POINTS = ("mid-download", "after-download", "mid-verify", "mid-copy", "switch", "mid-state-write", "after-switch",
          "trial")  # fmt: skip
_passed: dict[str, int] = {}


def spin_point(name: str) -> None:
    """``EDGE_AGENT_SPIN_AT=POINT``: loop on the CPU forever there (a runtime that hangs busy)."""
    if os.environ.get("EDGE_AGENT_SPIN_AT") == name:
        while True:
            pass


def crash_point(name: str) -> None:
    target = os.environ.get("EDGE_AGENT_CRASH_AT")
    if target != name:
        return
    _passed[name] = _passed.get(name, 0) + 1
    if _passed[name] >= int(os.environ.get("EDGE_AGENT_CRASH_AFTER", "1")):
        os.kill(os.getpid(), signal.SIGKILL)
