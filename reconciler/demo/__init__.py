"""The end-to-end demo: a fleet repo, real builds, a controller and twelve agent processes on this machine.

Above the controller and the agent, below the CLI: ``edgectl demo`` only parses its options and calls
:func:`run_demo`.
"""

from .scenario import DemoError, example_fleet, run_demo

__all__ = ["DemoError", "example_fleet", "run_demo"]
