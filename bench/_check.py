"""Self-checks shared by the benchmarks, so that a run which timed nothing cannot print a plausible figure.

A benchmark that times empty work (a fleet no selector matches, a store with nothing in it, a baseline that
never ran) still prints numbers, and ratios of such numbers look like results. Every script states what its
figures depend on with :func:`require` and divides through :func:`ratio`; a failed check prints why on stderr
and ends the run with exit status 1 (``finally`` blocks still run: servers stop, temporary files go).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import NoReturn

EXIT_NOT_MEASURED = 1


def require(condition: object, message: str) -> None:
    """End the run, saying ``message``, unless ``condition`` holds."""
    if not condition:
        fail(message)


def fail(message: str) -> NoReturn:
    print(f"{Path(sys.argv[0]).name}: not measured: {message}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_NOT_MEASURED)


def ratio(numerator: float, denominator: float, what: str) -> float:
    """``numerator / denominator``, or the end of the run when either side is empty or the result not finite."""
    require(denominator > 0, f"{what}: the denominator is {denominator!r} (nothing was timed)")
    value = numerator / denominator
    require(math.isfinite(value) and value > 0, f"{what} is {value!r}, not a finite positive ratio")
    return value


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with ``--quick``: the same code path at a size that runs in seconds (for tests)."""
    result = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    result.add_argument("--quick", action="store_true", help="a tiny workload through the same code path")
    return result
