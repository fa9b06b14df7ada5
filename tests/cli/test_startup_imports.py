"""``edgectl --help`` and ``edgectl validate`` import only what they use: the signing, Kubernetes, Git and
inference libraries cost about a second, paid on every CI run and every shell completion. Checked through
``sys.modules`` in a fresh interpreter, never by timing. The static command table that keeps ``--help``
lazy is checked against the commands themselves, so it cannot drop or misdescribe one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

from reconciler.cli.main import COMMANDS, main

ROOT = Path(__file__).resolve().parents[2]
HEAVY = (
    "model_signing", "sigstore", "kubernetes", "onnxruntime", "tensorflow", "pygit2", "ai_edge_litert", "onnx",
    "tuf", "securesystemslib", "cryptography", "OpenSSL", "prometheus_client", "zstandard", "numpy", "jsonschema",
    "rich", "reconciler.signing", "reconciler.cluster", "reconciler.optimize", "reconciler.gitops.source",
)  # fmt: skip

# Runs the real click entry point, then records what the interpreter imported on the way.
PROBE = """
import json, sys
from reconciler.cli.main import main
code = main(sys.argv[2:], prog_name="edgectl", standalone_mode=False)
with open(sys.argv[1], "w") as out:
    json.dump({"code": code, "modules": sorted(sys.modules)}, out)
"""


def imported_by(tmp_path: Path, *args: str) -> tuple[str, set[str]]:
    record = tmp_path / "modules.json"
    done = subprocess.run([sys.executable, "-c", PROBE, str(record), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(record.read_text())
    assert result["code"] in (0, None), result["code"]
    return done.stdout, set(result["modules"])


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def listed_commands(help_text: str) -> list[str]:
    section = help_text.partition("\nCommands:\n")[2]
    return [line.split()[0] for line in section.splitlines() if line.startswith("  ") and line[2] != " "]


def test_help_imports_click_and_the_command_table_only(tmp_path: Path):
    out, modules = imported_by(tmp_path, "--help")
    assert out.startswith("Usage: edgectl")
    assert "click" in modules
    assert heavy(modules) == []
    assert sorted(m for m in modules if m.startswith("reconciler")) == ["reconciler", "reconciler.cli",
                                                                        "reconciler.cli.main"]  # fmt: skip
    assert "pydantic" not in modules


def test_help_lists_every_command_of_the_table(tmp_path: Path):
    out, _ = imported_by(tmp_path, "--help")
    assert listed_commands(out) == sorted(name for name, entry in COMMANDS.items() if not entry.hidden)


def test_validate_imports_the_spec_loader_only(tmp_path: Path, fleet_example: Path):
    out, modules = imported_by(tmp_path, "validate", str(fleet_example))
    assert out.rstrip().endswith(": valid")
    assert {"reconciler.api", "reconciler.gitops.files", "pydantic"} <= modules  # the probe saw the real work
    assert heavy(modules) == []


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_table_says_what_the_command_says(name: str):
    entry = COMMANDS[name]
    command = main.get_command(click.Context(main), name)
    assert command is not None and command.name == name
    assert command.hidden == entry.hidden
    assert entry.summary == " ".join((command.help or "").partition("\n\n")[0].split())


@pytest.mark.parametrize("width", [40, 80, 120])
def test_the_lazy_command_list_is_clicks_own(width: int):
    context = click.Context(main, terminal_width=width, max_content_width=width)
    lazy, eager = click.HelpFormatter(width=width), click.HelpFormatter(width=width)
    main.format_commands(context, lazy)
    click.Group.format_commands(main, context, eager)  # imports every command and asks it
    assert lazy.getvalue() == eager.getvalue()


def test_the_key_types_offered_are_the_ones_signing_knows():
    from reconciler.cli.trust import KEY_TYPES
    from reconciler.signing.keys import KEY_TYPES as SIGNING_KEY_TYPES

    assert KEY_TYPES == SIGNING_KEY_TYPES
