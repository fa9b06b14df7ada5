"""The documentation's commands work: every `edgectl` command line in a shell block of README.md and docs/ names
a command that exists and only options that command has (checked against the command tree itself, so a renamed
flag fails here before a reader meets it); the chart's values in docs/install-k3s.md pass the chart's schema."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import yaml

from reconciler.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "cli-reference.md")]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def command_lines(page: Path) -> list[tuple[int, str]]:
    """(line number, command) of each `edgectl ...` in the page's shell blocks, continuation lines joined."""
    text = page.read_text()
    found = []
    for block in FENCE.finditer(text):
        if block[1] not in ("", "sh", "bash", "shell", "console"):
            continue
        first = text[: block.start(2)].count("\n") + 1
        joined, start = "", None
        for offset, line in enumerate(block[2].splitlines()):
            line = line.split(" #", 1)[0].rstrip() if not line.lstrip().startswith("#") else ""
            if start is None:
                start = first + offset
            joined += line.rstrip("\\") + " "
            if line.endswith("\\"):
                continue
            for part in re.split(r"[;|&]{1,2}|\$\(|>", joined):
                words = re.sub(r"^(\S*/)?edgectl ", "edgectl ", part.strip().removeprefix("source <("))
                if words.startswith("edgectl "):
                    found.append((start, words))
            joined, start = "", None
    return found


def problem(command: str) -> str | None:
    """What is wrong with ``command`` against the real command tree (None: nothing)."""
    try:
        words = shlex.split(command.replace("$(", "").replace(")", ""))
    except ValueError:
        return None  # quoting the page leaves open across lines: not a command line to check
    context = click.Context(main, info_name="edgectl")
    current: click.Command = main
    words = words[1:]
    while isinstance(current, click.Group) and words and not words[0].startswith("-"):
        sub = current.get_command(context, words[0])
        if sub is None:
            return f"no command {words[0]!r} under {current.name}"
        context = click.Context(sub, info_name=words[0], parent=context)
        current, words = sub, words[1:]
    options = {name: param for param in current.params if isinstance(param, click.Option)
               for name in [*param.opts, *param.secondary_opts]}  # fmt: skip
    options["--help"] = options["-h"] = None
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        if not word.startswith("-") or word == "-":
            continue
        name = word.split("=", 1)[0]
        if name not in options:
            return f"{current.name} has no option {name}"
        param = options[name]
        if param is not None and not param.is_flag and "=" not in word:
            index += 1  # its value
    return None


CASES = [(page, line, command) for page in PAGES for line, command in command_lines(page)]


def test_the_pages_have_commands_to_check():
    assert len(CASES) > 40 and {page.name for page, _, _ in CASES} >= {"README.md", "getting-started.md"}


@pytest.mark.parametrize(("page", "line", "command"), CASES, ids=[f"{p.name}:{n}" for p, n, _ in CASES])
def test_every_documented_command_exists_with_its_options(page: Path, line: int, command: str):
    assert problem(command) is None, f"{page.name}:{line}: {command}: {problem(command)}"


def test_the_documented_chart_values_pass_the_chart_schema():
    from tests.chart.test_chart import CHART, helm

    text = (ROOT / "docs" / "install-k3s.md").read_text()
    [values] = [block[2] for block in FENCE.finditer(text) if block[2].startswith("# values-acme.yaml")]
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(yaml.safe_load(values))


def test_the_check_finds_a_missing_command_and_a_wrong_option():
    assert problem("edgectl nope") == "no command 'nope' under main"
    assert problem("edgectl rollout abort x --bogus 1") == "abort has no option --bogus"
    assert problem("edgectl device token create --expires 1h --label k=v") is None


def test_the_service_names_the_docs_give_are_the_charts():
    """A reader types `NAME.NAMESPACE.svc` from the docs: the chart, installed as the docs install it
    (release edge-reconciler in edge-system), must make a Service of that name."""
    from tests.chart.test_chart import render

    services = {f"{o['metadata']['name']}.edge-system.svc" for o in render({}, "edge-reconciler", "edge-system")
                if o["kind"] == "Service"}  # fmt: skip
    named = {m for page in PAGES for m in re.findall(r"[a-z0-9-]+\.edge-system\.svc", page.read_text())}
    assert named and named <= services, named - services
