"""``edgectl version``: this client's release and, given the fleet repo, the controller's (from the status it
commits), as ``kubectl version`` shows client and server."""

from __future__ import annotations

import json

import click


@click.command()
@click.option("--repo", help="Fleet repo (checkout, bare repository or URL): also show the controller's version.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
def version(repo: str | None, output: str) -> None:
    """Print the client's version, and the controller's from the fleet repo's status."""
    from reconciler import release

    body = {"client": release()}
    if repo is not None:
        from .view import load_view

        controller = load_view(repo).status.controller
        body["controller"] = (controller.version if controller else None) or "unknown (no status from a controller)"
    if output == "json":
        click.echo(json.dumps(body, indent=2))
        return
    click.echo(f"Client Version: {body['client']}")
    if "controller" in body:
        click.echo(f"Controller Version: {body['controller']}")


@click.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL (bash: source <(edgectl completion bash))."""
    from click.shell_completion import get_completion_class

    script = get_completion_class(shell)
    assert script is not None  # click ships all three
    root = click.get_current_context().find_root().command
    click.echo(script(root, {}, "edgectl", "_EDGECTL_COMPLETE").source())
