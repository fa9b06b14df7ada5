"""What the runtime image holds is enough: the controller and the agent run without TensorFlow and the other
build-only packages (the Dockerfile's `runtime` target installs the package without the build extra)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD_ONLY = ("tensorflow", "tf2onnx", "onnxconverter_common", "sklearn", "keras")
PROBE = f"""
import sys
for name in {BUILD_ONLY!r}:
    sys.modules[name] = None  # any import of it now raises ImportError
from click.testing import CliRunner
from reconciler.cli.main import main
import reconciler.agent.agent, reconciler.agent.serving, reconciler.controller.loop, reconciler.cluster.lease
for command in (["run", "--help"], ["agent", "--help"], ["get", "--help"], ["verify", "--help"]):
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 0, (command, result.output, result.exception)
print("ok")
"""


def test_controller_and_agent_import_without_build_packages():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_the_dockerfile_runtime_has_no_build_extra_and_runs_as_non_root():
    text = (ROOT / "Dockerfile").read_text()
    stages = dict(re.findall(r"(?m)^FROM \S+ AS (\w+)\n(.*?)(?=^FROM |\Z)", text, re.S))
    assert set(stages) == {"wheels", "runtime", "build"}
    assert "[build]" not in stages["runtime"] and "[build]" in stages["build"]
    assert re.search(r"(?m)^USER 65532:65532$", stages["runtime"])
    assert stages["build"].rstrip().endswith("USER 65532:65532")
