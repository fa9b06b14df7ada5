"""Start-up time of ``edgectl``: what a person waits for before a command does its work.

Runs the installed ``edgectl`` (beside this interpreter) as a subprocess and prints, for ``--help``,
``validate fleet-example`` and ``get rollouts --repo BARE`` (a bare clone of a throwaway repository holding
fleet-example), the median wall time and its ratio to the baseline ``python -c pass`` measured in the same
run. Every run must exit 0 with the output its command promises, or the script exits 1: a fast failure is
not a fast start.

    .venv/bin/python bench/cli_startup.py           # 7 runs each
    .venv/bin/python bench/cli_startup.py --quick   # 1 run each (CI)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "fleet-example"
EDGECTL = Path(sys.executable).parent / "edgectl"


class MeasureError(Exception):
    """A run did not do what its label says (wrong exit code or output): its time means nothing."""


def timed(command: list[str], check: Callable[[str], bool], label: str) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - start
    if done.returncode != 0 or not check(done.stdout):
        raise MeasureError(f"{label}: exit {done.returncode}, unexpected output:\n{done.stdout[-2000:]}"
                           f"{done.stderr[-2000:]}")  # fmt: skip
    return seconds


def median_of(runs: int, command: list[str], check: Callable[[str], bool], label: str) -> float:
    timed(command, check, label)  # warm the page cache; not counted
    return statistics.median(timed(command, check, label) for _ in range(runs))


def bare_fleet_repo(workdir: Path) -> Path:
    """A bare repository whose HEAD holds fleet-example, as the controller's remote would."""
    checkout, bare = workdir / "fleet", workdir / "fleet.git"
    shutil.copytree(EXAMPLE, checkout, ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.invalid"}  # fmt: skip
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "fleet-example"]):
        subprocess.run(["git", "-C", str(checkout), *args], check=True, capture_output=True, env=env)
    subprocess.run(["git", "clone", "-q", "--bare", str(checkout), str(bare)], check=True, capture_output=True)
    return bare


def rollout_names() -> set[str]:
    names = set()
    for path in (EXAMPLE / "rollouts").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "Rollout":
                names.add(doc["metadata"]["name"])
    return names


def lists_rollouts(names: set[str]) -> Callable[[str], bool]:
    def check(out: str) -> bool:
        lines = out.splitlines()
        return bool(lines) and lines[0].startswith("NAME") and {line.split()[0] for line in lines[1:]} == names

    return check


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 run each instead of 7 (CI)")
    runs = 1 if parser.parse_args().quick else 7
    if not EDGECTL.exists():
        print(f"no edgectl beside {sys.executable}: run this with the project's .venv/bin/python", file=sys.stderr)
        return 1
    names = rollout_names()
    with tempfile.TemporaryDirectory(prefix="edgectl-startup-") as tmp:
        bare = bare_fleet_repo(Path(tmp))
        cases = [
            ("edgectl --help", [str(EDGECTL), "--help"], lambda out: "Usage: edgectl" in out and "validate" in out),
            ("edgectl validate fleet-example", [str(EDGECTL), "validate", "fleet-example"],
             lambda out: out.rstrip().endswith(": valid")),
            ("edgectl get rollouts --repo BARE", [str(EDGECTL), "get", "rollouts", "--repo", str(bare)],
             lists_rollouts(names)),
        ]  # fmt: skip
        try:
            baseline = median_of(runs, [sys.executable, "-c", "pass"], lambda out: out == "", "python -c pass")
            results = [(label, median_of(runs, command, check, label)) for label, command, check in cases]
        except MeasureError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print(f"median of {runs} run(s) each, subprocess wall time")
    print(f"{'baseline python -c pass':<36} {baseline * 1000:7.0f} ms   1.0x")
    for label, seconds in results:
        print(f"{label:<36} {seconds * 1000:7.0f} ms  {seconds / baseline:4.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
