"""``edgectl device``: bootstrap tokens, enrolled devices and revocation, in the registry that every replica of the
device API shares: ``STATE_DIR/devices.sqlite`` on the local backend, EdgeDevice and DeviceToken objects in the
controller's namespace on Kubernetes (``--backend kubernetes``, with the operator's own kubeconfig).

Thin: arguments in, :mod:`reconciler.deviceapi.registry` calls, kubectl-style tables out. A token is printed
once, alone on stdout, so that ``TOKEN=$(edgectl device token create)`` works; only its digest is kept.
Listing and revoking never create a registry where there is none.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .common import backend_options, fail, open_registry
from .output import Column, age, emit, now

if TYPE_CHECKING:
    from reconciler.deviceapi.registry import DeviceRegistry

_output = click.option("-o", "--output", type=click.Choice(["json", "yaml"]), help="Print full records instead.")


@click.group()
def device() -> None:
    """Enrolment tokens, enrolled devices and revocation."""


@device.group()
def token() -> None:
    """One-time bootstrap tokens: a new device pays with one for its first certificate."""


@token.command("create")
@click.option("--expires", default="1h", show_default=True, help="How long the token may be used (at most 7d).")
@click.option("--device", "name", metavar="NAME", help="Only this device may enrol with it (also to enrol it again).")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE",
              help="Labels of the device that enrols with it (repeatable); not with --device.")  # fmt: skip
@backend_options
def token_create(expires: str, name: str | None, labels: tuple[str, ...], backend: str, state_dir: Path,
                 kubeconfig: Path | None, context: str | None,
                namespace: str) -> None:  # fmt: skip
    """Print a new one-time token (only the token: the hint goes to stderr). It is shown this once."""
    from reconciler.api.types import label_key_problem, label_value_problem, parse_duration
    from reconciler.deviceapi.registry import MAX_TOKEN_LIFETIME
    from reconciler.errors import EdgeReconcilerError

    try:
        lifetime = parse_duration(expires)
    except ValueError as exc:  # pydantic's PydanticCustomError is one
        fail(f"--expires: {exc}")
    if lifetime.total_seconds() <= 0 or lifetime > MAX_TOKEN_LIFETIME:
        fail(f"--expires {expires}: a token lives more than 0s and at most {MAX_TOKEN_LIFETIME.days}d")
    if name and labels:
        fail("--device and --label do not go together: a named device keeps the labels it has")
    parsed: dict[str, str] = {}
    for item in labels:
        key, sep, value = item.partition("=")
        problem = "expected KEY=VALUE" if not sep else label_key_problem(key) or label_value_problem(value)
        if problem:
            fail(f"--label {item}: {problem}")
        parsed[key] = value
    registry = open_registry(backend, state_dir, kubeconfig, namespace, create=True, context=context)
    assert registry is not None
    at = now()
    try:
        secret = registry.create_token(lifetime, at, device=name, labels=parsed or None)
    except (EdgeReconcilerError, ValueError) as exc:  # IdentityError (a revoked device), or the backend
        fail(str(exc))
    finally:
        registry.close()
    click.echo(secret)
    who = f"device {name}" if name else "one new device"
    click.echo(f"one-time token {secret.partition('.')[0]} for {who}, valid until "
               f"{(at + lifetime).isoformat(timespec='seconds')}; it is not shown again", err=True)  # fmt: skip


@token.command("list")
@_output
@backend_options
def token_list(
    output: str | None, backend: str, state_dir: Path, kubeconfig: Path | None, context: str | None, namespace: str
) -> None:
    """Tokens by ID (never their secrets): whom they are for, when they expire, who used them."""
    records = _read(open_registry(backend, state_dir, kubeconfig, namespace, context=context), "tokens")
    at = now()
    rows = [{"name": t.id, "for": t.device or _labels(t.labels) or "any new device",
             "expires": _until(t.expires_at, at) if not t.used_at else "-",
             "used": f"{t.used_by} ({age(t.used_at, at)} ago)" if t.used_at else "-"} for t in records]  # fmt: skip
    objects = [{"id": t.id, "device": t.device, "labels": dict(t.labels), "createdAt": t.created_at,
                "expiresAt": t.expires_at, "usedAt": t.used_at, "usedBy": t.used_by} for t in records]  # fmt: skip
    columns = [Column("ID", "name"), Column("DEVICE/LABELS", "for"), Column("EXPIRES", "expires"),
               Column("USED", "used")]  # fmt: skip
    emit("token", rows, columns, objects, output)


@device.command("list")
@_output
@backend_options
def device_list(
    output: str | None, backend: str, state_dir: Path, kubeconfig: Path | None, context: str | None, namespace: str
) -> None:
    """Devices the registry knows: enrolled, revoked, expired, or pending (a token names them)."""
    records = _read(open_registry(backend, state_dir, kubeconfig, namespace, context=context), "devices")
    at = now()
    rows = [{"name": d.name, "enrolled": age(d.enrolled_at, at) if d.enrolled_at else "-",
             "expires": _until(d.not_after, at) if d.not_after else "-", "state": d.state(at),
             "labels": _labels(d.labels)} for d in records]  # fmt: skip
    objects = [{"name": d.name, "labels": dict(d.labels), "state": d.state(at), "enrolledAt": d.enrolled_at,
                "serial": f"{d.serial:x}" if d.serial is not None else None, "notAfter": d.not_after,
                "issuedAt": d.issued_at, "revokedAt": d.revoked_at} for d in records]  # fmt: skip
    columns = [Column("NAME", "name"), Column("ENROLLED", "enrolled"), Column("CERT EXPIRES", "expires"),
               Column("STATE", "state"), Column("LABELS", "labels")]  # fmt: skip
    emit("device", rows, columns, objects, output)


@device.command("revoke")
@click.argument("name")
@backend_options
def device_revoke(
    name: str, backend: str, state_dir: Path, kubeconfig: Path | None, context: str | None, namespace: str
) -> None:
    """Refuse NAME's certificates from now on (every replica, next request); it cannot enrol again."""
    from reconciler.errors import EdgeReconcilerError

    registry = open_registry(backend, state_dir, kubeconfig, namespace, context=context)
    if registry is None:
        fail(f"no device {name}: there is no registry in {state_dir}")
    try:
        known = registry.revoke(name, now())
    except EdgeReconcilerError as exc:
        fail(str(exc))
    finally:
        registry.close()
    if not known:
        fail(f"no device {name} in the registry (edgectl device list shows the known ones)")
    click.echo(f"device/{name} revoked")


def _read(registry: DeviceRegistry | None, what: str) -> list:
    """``registry.tokens()`` or ``registry.devices()``; none without a registry; the backend's errors in one line."""
    from reconciler.errors import EdgeReconcilerError

    if registry is None:
        return []
    try:
        return getattr(registry, what)()
    except EdgeReconcilerError as exc:
        fail(str(exc))
    finally:
        registry.close()


def _until(stamp: str, at: datetime) -> str:
    """``in 45m`` for a time to come, ``Expired`` for one gone by."""
    then = _parse(stamp)
    return f"in {age(at.isoformat(), then)}" if then > at else "Expired"


def _labels(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
