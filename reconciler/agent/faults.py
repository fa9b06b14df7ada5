"""The agent's named fault points (:mod:`reconciler.faults`): ``EDGE_AGENT_CRASH_AT=POINT``, set by the fault
tests and ``bench/agent_faults.py``.

Points: ``mid-download`` (after the first chunk of a file), ``after-download``, ``mid-verify``, ``mid-copy``
(one file copied into the slot), ``switch`` (verified, before the state write), ``mid-state-write`` (temporary
file written, not renamed), ``after-switch`` (state written, before the server reloads), ``trial`` (on trial,
before it is judged). ``health`` kills the health check's child process instead, ``serve`` the model server's at
its next inference (a runtime that crashes); ``EDGE_AGENT_SPIN_AT=health`` makes the health check's child spin.
"""

from __future__ import annotations

from reconciler.faults import FaultPoints

POINTS = ("mid-download", "after-download", "mid-verify", "mid-copy", "switch", "mid-state-write", "after-switch",
          "trial")  # fmt: skip
AGENT = FaultPoints("EDGE_AGENT", POINTS)
crash_point = AGENT.crash
spin_point = AGENT.spin
