"""Named fault points: a process kills itself (SIGKILL, no cleanup) at exactly one point of its own work.

Who sets them: fault tests and benches, through ``PREFIX_CRASH_AT=POINT`` (and optionally ``PREFIX_CRASH_AFTER=N``:
the N-th time the point is passed). A kill lands at a step of the work, never at a moment of the wall clock, so
the same test kills in the same place on any machine. Unset (the default), a fault point is one lookup.
Each process kind names its points: :mod:`reconciler.agent.faults` (``EDGE_AGENT``), the controller
(``EDGE_CONTROLLER``).
"""

from __future__ import annotations

import os
import signal
import time


class FaultPoints:
    def __init__(self, prefix: str, points: tuple[str, ...]) -> None:
        self.prefix, self.points = prefix, points
        self._passed: dict[str, int] = {}

    def crash(self, name: str) -> None:
        """``PREFIX_CRASH_AT=name``: SIGKILL here (the ``PREFIX_CRASH_AFTER``-th time)."""
        if os.environ.get(f"{self.prefix}_CRASH_AT") != name:
            return
        self._passed[name] = self._passed.get(name, 0) + 1
        if self._passed[name] >= int(os.environ.get(f"{self.prefix}_CRASH_AFTER", "1")):
            os.kill(os.getpid(), signal.SIGKILL)

    def spin(self, name: str) -> None:
        """``PREFIX_SPIN_AT=name``: loop on the CPU forever here (a runtime that hangs busy)."""
        if os.environ.get(f"{self.prefix}_SPIN_AT") == name:
            while True:
                pass

    def hang(self, name: str) -> None:
        """``PREFIX_HANG_AT=name``: sleep forever here (a device that stops answering mid-task, until killed)."""
        if os.environ.get(f"{self.prefix}_HANG_AT") == name:
            while True:
                time.sleep(3600)
