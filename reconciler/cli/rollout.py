"""``edgectl rollout pause|resume|promote|abort|retry NAME`` and ``edgectl reconcile``: a person's actions.

By default an action goes to the controller's operator API (``--controller URL`` or ``$EDGECTL_CONTROLLER``, a
bearer token from ``--token-file`` or ``$EDGECTL_TOKEN_FILE``, else the kubeconfig's): it takes effect in the
cycle it wakes, and the controller's status commit records who did what. ``--via-git`` keeps the commit-only
path: the action is an annotation on the Rollout, committed in a working checkout (``--repo``) of the fleet's
branch, which reaches the controller once pushed. Either way an action that makes no sense in the rollout's
phase is refused with the phase.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

ANNOTATION = "edgereconciler.io"
ATTEMPTS = 5
"""Tries of an action that a standby answered 503 (the Service sends the next one elsewhere)."""


def _act(options: dict, name: str, action: str, key: str, value: str | None, message: str) -> None:
    if options["via_git"]:
        _via_git(options["repo"], name, action, key, value, message)
    else:
        _via_api(options, name, action, options.get("reason") or "")


def _via_api(options: dict, name: str, action: str, reason: str) -> None:
    controller, token_file, context = options["controller"], options["token_file"], options["context"]
    if not controller:
        raise click.UsageError("say where the controller is: --controller URL (or $EDGECTL_CONTROLLER), or "
                               "commit the action instead with --via-git")  # fmt: skip
    status, message = call_controller(controller, token_file, f"/v1/rollouts/{name}/{action}", {"reason": reason},
                                      context)  # fmt: skip
    if status in (200, 202):
        click.echo(message)
        return
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _bearer(token_file: Path | None, context: str | None) -> str:
    """The operator token of ``--token-file``; without one, the bearer token of the kubeconfig's user (a
    controller run with --operator-kubernetes-auth checks it with the API server and RBAC)."""
    if token_file is not None:
        try:
            return Path(token_file).read_text().strip()
        except OSError as exc:
            raise click.UsageError(f"--token-file {token_file}: {exc.strerror or exc}") from None
    from reconciler.cluster.access import kubeconfig_bearer_token
    from reconciler.errors import EdgeReconcilerError

    try:
        return kubeconfig_bearer_token(context)
    except EdgeReconcilerError as exc:
        raise click.UsageError(f"the operator API needs a token: --token-file (or $EDGECTL_TOKEN_FILE), or a "
                               f"kubeconfig user with a bearer token ({exc})") from None  # fmt: skip


def call_controller(controller: str, token_file: Path | None, path: str, body: dict,
                    context: str | None = None) -> tuple[int, str]:  # fmt: skip
    """POST ``body`` to the controller's operator API; (status, message). A standby's 503 is tried again."""
    import urllib3

    token = _bearer(token_file, context)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    url, data, timeout = controller.rstrip("/") + path, json.dumps(body).encode(), urllib3.Timeout(connect=10, read=90)
    for attempt in range(ATTEMPTS):
        try:
            answer = urllib3.request("POST", url, body=data, headers=headers, timeout=timeout, retries=False)
        except urllib3.exceptions.HTTPError as exc:
            click.echo(f"error: cannot reach the controller at {controller}: {exc}", err=True)
            sys.exit(1)
        try:
            message = str(json.loads(answer.data).get("message", ""))
        except (ValueError, AttributeError):
            message = answer.data.decode(errors="replace").strip()[:300]
        if answer.status != 503 or attempt == ATTEMPTS - 1:
            return answer.status, message or f"HTTP {answer.status}"
        time.sleep(1.0)
    raise AssertionError("unreachable")


def _via_git(repo: Path, name: str, action: str, key: str, value: str | None, message: str) -> None:
    from reconciler.gitops.edit import commit_annotation
    from reconciler.gitops.source import GitError

    _check_checkout(repo, name, action)
    try:
        edited = commit_annotation(repo, name, f"{ANNOTATION}/{key}", value, f"rollout {name}: {message}")
    except GitError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"{action}: committed {edited.commit[:12]} ({edited.path}); push it to reach the controller")


def _check_checkout(repo: Path, name: str, action: str) -> None:
    """Refuse a commit onto another branch than the fleet's, and an action its rollout's phase (as the
    checkout's status files say) makes no sense for."""
    import pygit2

    from reconciler.controller.actions import ActionKind, OperatorActions, refusal
    from reconciler.controller.rollouts import manual_actions

    from .view import load_view

    view = load_view(str(repo))
    if name not in view.tree.rollouts:
        click.echo(f'error: rollout "{name}" not found in {repo}', err=True)
        sys.exit(1)
    try:
        checkout = pygit2.Repository(str(repo))
        branch = None if checkout.head_is_detached or checkout.head_is_unborn else checkout.head.shorthand
    except pygit2.GitError:
        branch = None  # commit_annotation says what is wrong with the folder
    wanted = view.tree.fleet.spec.branch
    if branch is not None and branch != wanted:
        click.echo(f"error: the checkout is on branch {branch}, not on the fleet's branch {wanted}: the controller "
                   f"would never see this commit (git switch {wanted})", err=True)  # fmt: skip
        sys.exit(1)
    rollout, status = view.tree.rollouts[name], view.rollout_status(name)
    started = status.describes(rollout.spec.model, rollout.spec.version)
    why = refusal(ActionKind(action), status.phase, started, OperatorActions(), manual_actions(rollout), via_git=True)
    if why is not None:
        click.echo(f"error: cannot {action} {name}: {why}", err=True)
        sys.exit(1)


def _count(repo: Path, name: str, key: str) -> int:
    from reconciler.gitops.edit import current_annotation

    try:
        return int(current_annotation(repo, name, f"{ANNOTATION}/{key}") or 0)
    except ValueError:
        return 0


def _action_options(function):
    """Where an action goes: the controller (default) or a commit (``--via-git``)."""
    options = [
        click.option("--controller", envvar="EDGECTL_CONTROLLER",
                     help="The controller's operator URL (edgectl run --listen); default $EDGECTL_CONTROLLER."),
        click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), envvar="EDGECTL_TOKEN_FILE",
                     help="A file holding your operator token (edgectl run --operator-tokens); without it, your "
                          "kubeconfig's token ($KUBECONFIG)."),
        click.option("--context", help="Without --token-file: the kubeconfig context whose token is sent."),
        click.option("--via-git", is_flag=True, help="Commit the action in --repo instead (a pull request's path)."),
        click.option("--repo", type=click.Path(exists=True, file_okay=False, path_type=Path), default=Path("."),
                     show_default=True, help="With --via-git: a working checkout of the fleet repo."),
    ]  # fmt: skip
    for option in reversed(options):
        function = option(function)
    return function


@click.group()
def rollout() -> None:
    """Act on a rollout through the controller (now), or as a commit (--via-git)."""


@rollout.command()
@click.argument("name")
@click.option("--reason", default="", help="Recorded with the action.")
@_action_options
def pause(name: str, **options) -> None:
    """Hold NAME where it is (devices keep what they run)."""
    _act(options, name, "pause", "paused", "true", "pause")


@rollout.command()
@click.argument("name")
@click.option("--reason", default="", help="Recorded with the action.")
@_action_options
def resume(name: str, **options) -> None:
    """Let a paused NAME continue."""
    _act(options, name, "resume", "paused", None, "resume")


@rollout.command()
@click.argument("name")
@click.option("--reason", default="", help="Recorded with the action.")
@_action_options
def promote(name: str, **options) -> None:
    """Continue past the current pause of NAME."""
    count = _count(options["repo"], name, "promotions") + 1 if options["via_git"] else 0
    _act(options, name, "promote", "promotions", str(count), f"promote (promotion {count})")


@rollout.command()
@click.argument("name")
@click.option("--reason", default="aborted by a person", show_default=True)
@_action_options
def abort(name: str, **options) -> None:
    """Abort NAME and return its devices to the previous version."""
    reason = options["reason"]
    _act(options, name, "abort", "abort", reason, f"abort ({reason})")


@rollout.command()
@click.argument("name")
@click.option("--reason", default="", help="Recorded with the action.")
@_action_options
def retry(name: str, **options) -> None:
    """Start an aborted NAME again from its first step."""
    if not options["via_git"]:
        _via_api(options, name, "retry", options["reason"])
        return
    from reconciler.gitops.edit import commit_annotation, find_rollout, set_annotation

    repo = options["repo"]
    _check_checkout(repo, name, "retry")
    count = _count(repo, name, "retries") + 1
    path, index = find_rollout(Path(repo).resolve(), name)
    path.write_text(set_annotation(path.read_text(), index, f"{ANNOTATION}/abort", None))
    edited = commit_annotation(repo, name, f"{ANNOTATION}/retries", str(count), f"rollout {name}: retry ({count})")
    click.echo(f"retry: committed {edited.commit[:12]} ({edited.path}); push it to reach the controller")


def _controller_options(function):
    token = click.Path(dir_okay=False, path_type=Path)
    function = click.option("--context", help="Without --token-file: the kubeconfig context whose token is sent.")(
        function
    )
    function = click.option("--token-file", type=token, envvar="EDGECTL_TOKEN_FILE",
                            help="A file holding your operator token; without it, your kubeconfig's token.")(
        function
    )  # fmt: skip
    return click.option("--controller", envvar="EDGECTL_CONTROLLER", required=True,
                        help="The controller's operator URL; default $EDGECTL_CONTROLLER.")(function)  # fmt: skip


def _controller_call(controller: str, token_file: Path | None, context: str | None, path: str, body: dict,
                     ok: int) -> None:  # fmt: skip
    status, message = call_controller(controller, token_file, path, body, context)
    if status != ok:
        click.echo(f"error: {message}", err=True)
        sys.exit(1)
    click.echo(message)


@click.command()
@_controller_options
def reconcile(controller: str, token_file: Path | None, context: str | None) -> None:
    """Make the controller fetch and reconcile now (as a Git webhook does)."""
    _controller_call(controller, token_file, context, "/v1/reconcile", {}, 202)


@click.command()
@click.option("--reason", default="", help="Recorded, and shown while suspended.")
@_controller_options
def suspend(reason: str, controller: str, token_file: Path | None, context: str | None) -> None:
    """Stop the controller reconciling (devices keep what they run) until edgectl resume."""
    _controller_call(controller, token_file, context, "/v1/suspend", {"reason": reason}, 200)


@click.command("resume")
@_controller_options
def resume_controller(controller: str, token_file: Path | None, context: str | None) -> None:
    """Let a suspended controller reconcile again."""
    _controller_call(controller, token_file, context, "/v1/resume", {}, 200)


@rollout.command("status")
@click.argument("name")
@click.option("--repo", default=".", show_default=True,
              help="Fleet repo the controller commits to (a URL or bare repository follows new commits).")  # fmt: skip
@click.option("--timeout", default="10m", show_default=True, help="Give up after this long (30s, 10m, 1h).")
@click.option("--interval", type=float, default=2.0, show_default=True, help="Seconds between reads.")
@click.option("-w/--no-watch", "--watch", default=True, help="Wait for the end (default) or print once.")
def rollout_status(name: str, repo: str, timeout: str, interval: float, watch: bool) -> None:
    """Wait for NAME to finish: exit 0 Succeeded, 1 Aborted, 3 timed out (for CI pipelines)."""
    import time

    from reconciler.api.types import parse_duration

    from .view import load_view

    try:
        limit = parse_duration(timeout).total_seconds()
    except ValueError as exc:
        raise click.UsageError(f"--timeout: {exc}") from None
    deadline = time.monotonic() + limit
    said = None
    while True:
        view = load_view(repo)
        if name not in view.tree.rollouts:
            click.echo(f'Error: rollout "{name}" not found in {repo}', err=True)
            sys.exit(1)
        line, phase = _status_line(view, name)
        if line != said:
            click.echo(line)
            said = line
        if phase == "Succeeded":
            sys.exit(0)
        if phase == "Aborted":
            sys.exit(1)
        if not watch:
            sys.exit(0 if phase == "Succeeded" else 1 if phase == "Aborted" else 3)
        if time.monotonic() >= deadline:
            click.echo(f"error: rollout {name} did not finish within {timeout}", err=True)
            sys.exit(3)
        time.sleep(interval)


def _status_line(view, name: str) -> tuple[str, str]:
    spec, status = view.tree.rollouts[name].spec, view.rollout_status(name)
    if not status.describes(spec.model, spec.version):
        return f"Waiting for the controller to pick up {spec.model} {spec.version}...", "Pending"
    step = min(status.state.step, len(spec.steps) - 1)
    healthy, targeted = status.ready
    why = f": {status.state.message}" if status.state.message else ""
    return (f"{name} {status.phase} at step {step + 1}/{len(spec.steps)} ({spec.steps[step].percent}%), "
            f"{healthy}/{targeted} devices healthy on {spec.version}{why}"), str(status.phase)  # fmt: skip
