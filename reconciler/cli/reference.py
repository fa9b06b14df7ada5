"""Reference pages generated from the code, so they cannot drift: the fleet spec from the JSON Schemas (which
come from ``reconciler.api``) and the CLI from the commands' own help. ``edgectl docs generate docs/``
writes both; a test fails when the committed pages differ from what the code says.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
from pydantic import TypeAdapter

from reconciler.api.schema import export_schemas
from reconciler.api.types import format_duration

SPEC_PAGE = "spec-reference.md"
CLI_PAGE = "cli-reference.md"
_ORDER = ("fleet.json", "deviceprofile.json", "devicegroup.json", "model.json", "rollout.json")


def spec_reference() -> str:
    schemas = export_schemas()
    lines = ["# Fleet spec reference", "",
             "Generated from `schemas/` by `edgectl docs generate docs/`; do not edit. Every document has",
             "`apiVersion: edgereconciler.io/v1alpha1`, `kind`, `metadata` (name, labels, annotations) and `spec`.",
             "The guide with examples is [fleet-spec.md](fleet-spec.md).", ""]  # fmt: skip
    for name in sorted(schemas, key=lambda n: _ORDER.index(n) if n in _ORDER else len(_ORDER)):
        schema = json.loads(schemas[name])
        kind = schema["properties"]["kind"].get("const", schema.get("title", name))
        lines += [f"## {kind}", "", _text(schema.get("description", "")), ""]
        spec_ref = schema["properties"]["spec"].get("$ref", "")
        seen: set[str] = set()
        queue = [spec_ref.rsplit("/", 1)[-1]] if spec_ref else []
        while queue:
            definition = queue.pop(0)
            if definition in seen or definition == "ObjectMeta":
                continue
            seen.add(definition)
            body = schema["$defs"][definition]
            title = "spec" if definition == spec_ref.rsplit("/", 1)[-1] else definition
            lines += [f"### {kind} `{title}`", ""]
            if body.get("description"):
                lines += [_text(body["description"]), ""]
            lines += ["| Field | Type | Default | Description |", "|---|---|---|---|"]
            required = set(body.get("required", []))
            for field, prop in body.get("properties", {}).items():
                kind_text, refs = _type(prop)
                queue += [r for r in refs if r not in seen]
                default = "required" if field in required else _default(prop)
                lines.append(f"| `{field}` | {kind_text} | {default} | {_text(prop.get('description', ''))} |")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _type(prop: dict[str, Any]) -> tuple[str, list[str]]:
    """A readable type and the definitions it refers to."""
    if "$ref" in prop:
        name = prop["$ref"].rsplit("/", 1)[-1]
        return name, [name]
    if "anyOf" in prop:
        parts = [_type(p) for p in prop["anyOf"] if p.get("type") != "null"]
        return " or ".join(p[0] for p in parts), [r for p in parts for r in p[1]]
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"]), []
    if "const" in prop:
        return f"`{prop['const']}`", []
    kind = prop.get("type", "any")
    if kind == "array":
        inner, refs = _type(prop.get("items", {}))
        return f"list of {inner}", refs
    if kind == "object" and "additionalProperties" in prop and isinstance(prop["additionalProperties"], dict):
        inner, refs = _type(prop["additionalProperties"])
        return f"map of {inner}", refs
    if prop.get("format") == "duration" or prop.get("pattern", "").startswith("^([0-9]"):
        return "duration", []
    return str(kind), []


def _default(prop: dict[str, Any]) -> str:
    if "default" not in prop or prop["default"] is None:
        return ""
    value = prop["default"]
    if isinstance(value, str) and value.startswith("P") and "duration" in prop.get("description", ""):
        value = format_duration(TypeAdapter(timedelta).validate_python(value))  # ISO 8601 back to 30s, 1h
    return f"`{json.dumps(value)}`"


def _text(value: str) -> str:
    return " ".join(value.replace("``", "`").split()).replace("|", "\\|")


def cli_reference(root: click.Group) -> str:
    lines = ["# edgectl reference", "",
             "Generated from the commands' help by `edgectl docs generate docs/`; do not edit.", ""]  # fmt: skip

    def walk(command: click.Command, path: list[str], parent: click.Context | None) -> None:
        # The root's settings (``-h``) as a real invocation has them: children inherit them from the parent.
        settings = dict(command.context_settings) if parent is None else {}
        settings.update(terminal_width=100, max_content_width=100)
        context = click.Context(command, info_name=path[-1], parent=parent, **settings)
        if len(path) > 1:
            lines.extend([f"{'#' * min(len(path), 4)} `{' '.join(path)}`", "", "```", command.get_help(context), "```",
                          ""])  # fmt: skip
        if isinstance(command, click.Group):
            for name in sorted(command.list_commands(context)):
                sub = command.get_command(context, name)
                if sub is not None and not sub.hidden:
                    walk(sub, [*path, name], context)

    walk(root, ["edgectl"], None)
    return "\n".join(lines).rstrip() + "\n"


@click.group(hidden=True)
def docs() -> None:
    """Generated reference pages."""


@docs.command("generate")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def docs_generate(directory: Path) -> None:
    """Write the spec and CLI reference pages into DIRECTORY."""
    root = click.get_current_context().find_root().command
    assert isinstance(root, click.Group)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / SPEC_PAGE).write_text(spec_reference())
    (directory / CLI_PAGE).write_text(cli_reference(root))
    click.echo(f"wrote {directory / SPEC_PAGE} and {directory / CLI_PAGE}")
