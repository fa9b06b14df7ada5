"""The device registry: bootstrap tokens, enrolled devices, their current certificates and revocations.

Who calls it: :mod:`.identity` (every replica of the device API, on every request) and ``edgectl device``
(tokens, revocation, listing). It holds the only state device identity has, so every replica must see the same;
it lives in the backend: one SQLite file on the local backend (:mod:`.sqlite_registry`), EdgeDevice and
DeviceToken objects on Kubernetes (:mod:`.kube_registry`). This module holds what both share: the records, the
protocol, and the rules of a token (:func:`check_spend`).

Tokens are stored as SHA-256 digests of their secret part only: the file is no bearer credential, and a token
is shown once, when it is created. Timestamps are RFC 3339 in UTC; a certificate's issue time keeps
microseconds because it orders rotations.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from .identity import IdentityError, Reason, as_utc
from .protocol import NAME_PATTERN

__all__ = ["MAX_TOKEN_LIFETIME", "REGISTRY_FILE", "DeviceRecord", "DeviceRegistry", "TokenRecord", "check_spend"]

REGISTRY_FILE = "devices.sqlite"
"""The registry's file name in the state directory (``--state-dir``)."""

MAX_TOKEN_LIFETIME = timedelta(days=7)
"""A bootstrap token is a password that travels (an image, a provisioning script): it must not live long."""

_ALPHABET = string.ascii_lowercase + string.digits
_TOKEN = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{32})$")
_NAME = re.compile(NAME_PATTERN)


@dataclass(frozen=True)
class DeviceRecord:
    """A device the registry knows: enrolled, or reserved by a token that names it (``serial`` None)."""

    name: str
    labels: Mapping[str, str]
    enrolled_at: str | None
    serial: int | None
    """The serial of the device's current certificate; any other one is superseded."""
    not_after: str | None
    revoked_at: str | None
    issued_at: str | None = None
    """When the current certificate was issued (microseconds: it decides which of two rotations is newer)."""
    previous_serial: int | None = None
    """The certificate the current one replaced (the only other one accepted, for a short grace)."""

    def state(self, at: datetime) -> str:
        """Revoked, Pending (reserved by a token, no certificate yet), Expired or Enrolled."""
        if self.revoked_at:
            return "Revoked"
        if self.serial is None or not self.not_after:
            return "Pending"
        return "Expired" if datetime.fromisoformat(self.not_after.replace("Z", "+00:00")) <= at else "Enrolled"


@dataclass(frozen=True)
class TokenRecord:
    id: str
    device: str | None
    """The only device this token may enrol; None: any new device, which gets ``labels``."""
    labels: Mapping[str, str]
    expires_at: str
    used_at: str | None
    used_by: str | None
    created_at: str = field(default="")


class DeviceRegistry(Protocol):
    """Bootstrap tokens, enrolled devices, their current certificates and revocations: what every replica of the
    device API must see alike. :class:`.sqlite_registry.SQLiteRegistry` keeps it in a file (local backend),
    :class:`.kube_registry.KubernetesRegistry` in EdgeDevice and DeviceToken objects (Kubernetes)."""

    def create_token(self, lifetime: timedelta, now: datetime, device: str | None = None,
                     labels: Mapping[str, str] | None = None) -> str:  # fmt: skip
        """A new one-time token ``ID.SECRET``, shown only here. A token naming ``device`` reserves the name (a
        token that names no device cannot take it) and is the only way to enrol an existing device again."""
        ...

    def redeem_and_record(self, token: str, device: str, serial: int, not_after: datetime, now: datetime
                          ) -> TokenRecord:  # fmt: skip
        """Spend ``token`` for ``device`` (once, whichever replica asks) and make the certificate it bought the
        device's current one; a failure leaves the token unspent. A token naming no device gives the device the
        token's labels and cannot take a name that exists."""
        ...

    def record_certificate(self, device: str, serial: int, not_after: datetime, labels: Mapping[str, str] | None,
                           now: datetime) -> None:  # fmt: skip
        """Make a newly issued certificate the device's current one (the one it replaces stays known as the
        previous). ``labels`` None keeps the device's labels. Of two issued at once, the later stays current."""
        ...

    def revoke(self, device: str, now: datetime) -> bool:
        """Refuse every certificate of ``device`` from now on; False when unknown. The first time is kept."""
        ...

    def device(self, name: str, fresh: bool = False) -> DeviceRecord | None:
        """``fresh``: not from a cache (another replica may have just issued the certificate being checked)."""
        ...

    def devices(self) -> list[DeviceRecord]: ...

    def tokens(self) -> list[TokenRecord]: ...

    def close(self) -> None: ...


def check_token_request(lifetime: timedelta, device: str | None, labels: Mapping[str, str] | None) -> None:
    """What ``create_token`` refuses (ValueError), whatever keeps the tokens."""
    if not timedelta(0) < lifetime <= MAX_TOKEN_LIFETIME:
        raise ValueError(f"a token must expire within {MAX_TOKEN_LIFETIME.days} days")
    if device is not None and labels:
        raise ValueError("a token for a named device carries no labels (the device keeps its own)")
    if device is not None and not _NAME.fullmatch(device):
        raise ValueError(f"{device!r} is not a device name (a DNS subdomain name)")


def new_token_id() -> str:
    return _random(6)


def new_secret() -> tuple[str, str]:
    """A token's secret part and the SHA-256 digest that is all a registry keeps of it."""
    secret = _random(32)
    return secret, hashlib.sha256(secret.encode()).hexdigest()


def token_parts(token: str) -> tuple[str, str]:
    """A presented token's ID and the digest of its secret; anything not shaped like a token is unknown."""
    match = _TOKEN.fullmatch(token)
    if match is None:
        raise IdentityError(Reason.TOKEN_UNKNOWN, "unknown bootstrap token")
    token_id, secret = match.groups()
    return token_id, hashlib.sha256(secret.encode()).hexdigest()


def check_spend(token_id: str, token: TokenRecord | None, stored_digest: str | None, digest: str, device: str,
                existing: DeviceRecord | None, now: datetime) -> None:  # fmt: skip
    """Whether ``token`` (as stored, None when unknown) may enrol ``device`` now (``existing``: its record);
    raises :class:`IdentityError` with the reason. The rules every registry applies alike."""
    # The same answer for an unknown id and a wrong secret: the id alone must not be worth probing.
    if token is None or stored_digest is None or not hmac.compare_digest(stored_digest, digest):
        raise IdentityError(Reason.TOKEN_UNKNOWN, "unknown bootstrap token")
    if token.used_at is not None:
        raise IdentityError(Reason.TOKEN_USED, f"token {token_id} was used at {token.used_at} (by {token.used_by})")
    if datetime.fromisoformat(token.expires_at.replace("Z", "+00:00")) <= as_utc(now):
        raise IdentityError(Reason.TOKEN_EXPIRED, f"token {token_id} expired at {token.expires_at}")
    if token.device is not None and token.device != device:
        raise IdentityError(Reason.TOKEN_DEVICE_MISMATCH, f"token {token_id} is for device {token.device}, "
                            f"not {device}")  # fmt: skip
    if existing is not None and existing.revoked_at is not None:
        raise IdentityError(Reason.DEVICE_REVOKED, f"device {device} was revoked at {existing.revoked_at}")
    if existing is not None and token.device is None:
        raise IdentityError(Reason.DEVICE_EXISTS, f"device {device} exists; enrolling it again needs a "
                            f"token made for it (edgectl device token create --device {device})")  # fmt: skip


def issued_stamp(now: datetime) -> str:
    """A certificate's issue time with microseconds: it orders two rotations of one device."""
    return as_utc(now).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _random(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))
