"""The device registry on Kubernetes: an ``EdgeDevice`` per device and a ``DeviceToken`` per bootstrap token, in
the controller's namespace, so that every replica of the device API shares it through the API server.

Reads come from watched caches (authenticating a request costs no API call); a certificate the cache does not
know yet (another replica has just issued it) is looked up once more, fresh. Every write is a compare-and-swap on
the object's resourceVersion: of two replicas spending one token, one wins and the other reads it as used. A
token and the device it enrols are two objects, so spending is two writes: the token first (the race is decided
there), then the certificate; when the second fails the token is given back, so a failed enrolment never burns it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from reconciler.cluster import ClusterError, ConflictError, TemporaryClusterError, custom_objects
from reconciler.cluster.crd import DEVICE_KIND, DEVICE_PLURAL, TOKEN_KIND, TOKEN_PLURAL

from .identity import IdentityError, Reason, as_utc, rfc3339
from .registry import (
    DeviceRecord,
    TokenRecord,
    check_spend,
    check_token_request,
    issued_stamp,
    new_secret,
    new_token_id,
    token_parts,
)

__all__ = ["KubernetesRegistry"]

ATTEMPTS = 5
"""Compare-and-swap rounds before a write gives up as temporary (the caller answers 503 and the device retries)."""


class KubernetesRegistry:
    def __init__(self, api: Any, namespace: str, watch: bool = True) -> None:
        """``api``: a Kubernetes API client (``KubernetesBackend.api``). ``watch``: keep caches (a server);
        without, every read asks the API server (``edgectl device``)."""
        self.namespace = namespace
        self._devices = custom_objects(api, namespace, DEVICE_PLURAL, DEVICE_KIND)
        self._tokens = custom_objects(api, namespace, TOKEN_PLURAL, TOKEN_KIND)
        if watch:
            self._devices.start()
            self._tokens.start()

    def close(self) -> None:
        self._devices.stop()
        self._tokens.stop()

    # --- tokens ------------------------------------------------------------------------------------

    def create_token(
        self, lifetime: timedelta, now: datetime, device: str | None = None, labels: Mapping[str, str] | None = None
    ) -> str:
        check_token_request(lifetime, device, labels)
        now = as_utc(now)
        if device is not None:  # reserve the name: a token that names no device cannot take it
            existing = self._devices.get(device, fresh=True)
            if existing is not None and _status(existing).get("revokedAt"):
                raise IdentityError(Reason.DEVICE_REVOKED, f"device {device} was revoked at "
                                    f"{_status(existing)['revokedAt']}")  # fmt: skip
            if existing is None:
                with contextlib.suppress(ConflictError):
                    self._devices.create(device, {"spec": {"labels": {}}})
        secret, digest = new_secret()
        spec = {"secretSha256": digest, "labels": dict(labels or {}), "createdAt": rfc3339(now),
                "expiresAt": rfc3339(now + lifetime), **({"device": device} if device else {})}  # fmt: skip
        while True:
            token_id = new_token_id()
            try:
                self._tokens.create(token_id, {"spec": spec})
            except ConflictError:
                continue  # that ID is taken: draw another
            return f"{token_id}.{secret}"

    def redeem_and_record(
        self, token: str, device: str, serial: int, not_after: datetime, now: datetime
    ) -> TokenRecord:
        token_id, digest = token_parts(token)
        now = as_utc(now)
        for _ in range(ATTEMPTS):
            obj = self._tokens.get(token_id, fresh=True)
            record = _token(obj) if obj is not None else None
            existing = self._devices.get(device, fresh=True)
            stored_digest = obj["spec"].get("secretSha256") if obj is not None else None
            check_spend(token_id, record, stored_digest, digest, device, _device(existing) if existing else None, now)
            assert obj is not None and record is not None
            stamp = rfc3339(now)
            try:
                spent = self._tokens.replace({**obj, "status": {"usedAt": stamp, "usedBy": device}})
            except ConflictError:
                continue  # another replica touched it first: read again (it is used now, most likely)
            labels = dict(record.labels) if record.device is None else None
            try:
                self._write_certificate(device, serial, not_after, labels, now, new_only=record.device is None)
            except BaseException:
                with contextlib.suppress(ClusterError):  # give the token back: it bought nothing
                    self._tokens.replace({**spent, "status": {}})
                raise
            return TokenRecord(token_id, record.device, record.labels, record.expires_at, stamp, device,
                               record.created_at)  # fmt: skip
        raise TemporaryClusterError(f"token {token_id}: {ATTEMPTS} attempts lost to other writers", retry_after=1.0)

    def tokens(self) -> list[TokenRecord]:
        return sorted((_token(obj) for obj in self._tokens.list()), key=lambda t: (t.created_at, t.id))

    # --- devices -----------------------------------------------------------------------------------

    def record_certificate(
        self, device: str, serial: int, not_after: datetime, labels: Mapping[str, str] | None, now: datetime
    ) -> None:
        self._write_certificate(device, serial, not_after, labels, as_utc(now), new_only=False)

    def revoke(self, device: str, now: datetime) -> bool:
        for _ in range(ATTEMPTS):
            obj = self._devices.get(device, fresh=True)
            if obj is None:
                return False
            status = _status(obj)
            if status.get("revokedAt"):
                return True
            try:
                self._devices.replace({**obj, "status": {**status, "revokedAt": rfc3339(as_utc(now))}})
            except ConflictError:
                continue
            return True
        raise TemporaryClusterError(f"device {device}: {ATTEMPTS} attempts lost to other writers", retry_after=1.0)

    def device(self, name: str, fresh: bool = False) -> DeviceRecord | None:
        obj = self._devices.get(name, fresh=fresh)
        return _device(obj) if obj is not None else None

    def devices(self) -> list[DeviceRecord]:
        return [_device(obj) for obj in self._devices.list()]

    def _write_certificate(
        self, device: str, serial: int, not_after: datetime, labels: Mapping[str, str] | None, now: datetime,
        new_only: bool,
    ) -> None:  # fmt: skip
        """``new_only``: the name must be free (a token that names no device), else DEVICE_EXISTS."""
        issued = issued_stamp(now)
        certificate = {"serial": f"{serial:x}", "notAfter": rfc3339(not_after), "issuedAt": issued}
        for _ in range(ATTEMPTS):
            obj = self._devices.get(device, fresh=True)
            if obj is None:
                body = {"spec": {"labels": dict(labels or {})}, "status": {"enrolledAt": rfc3339(now), **certificate}}
                try:
                    self._devices.create(device, body)
                except ConflictError:
                    if new_only:
                        raise _exists(device) from None
                    continue
                return
            if new_only:
                raise _exists(device)
            status = _status(obj)
            if status.get("issuedAt", "") > issued:
                return  # a later certificate (another replica's rotation) stays current
            previous = {"previousSerial": status["serial"]} if status.get("serial") else {}
            spec = {**(obj.get("spec") or {}), **({"labels": dict(labels)} if labels is not None else {})}
            updated = {**status, **certificate, **previous, "enrolledAt": status.get("enrolledAt") or rfc3339(now)}
            try:
                self._devices.replace({**obj, "spec": spec, "status": updated})
            except ConflictError:
                continue
            return
        raise TemporaryClusterError(f"device {device}: {ATTEMPTS} attempts lost to other writers", retry_after=1.0)


def _exists(device: str) -> IdentityError:
    return IdentityError(Reason.DEVICE_EXISTS, f"device {device} exists; enrolling it again needs a token made for "
                         f"it (edgectl device token create --device {device})")  # fmt: skip


def _status(obj: Mapping[str, Any]) -> dict[str, Any]:
    return dict(obj.get("status") or {})


def _device(obj: Mapping[str, Any]) -> DeviceRecord:
    status = _status(obj)
    serial, previous = status.get("serial"), status.get("previousSerial")
    return DeviceRecord(
        obj["metadata"]["name"], dict((obj.get("spec") or {}).get("labels") or {}), status.get("enrolledAt"),
        int(serial, 16) if serial else None, status.get("notAfter"), status.get("revokedAt"), status.get("issuedAt"),
        int(previous, 16) if previous else None,
    )  # fmt: skip


def _token(obj: Mapping[str, Any]) -> TokenRecord:
    spec, status = obj.get("spec") or {}, _status(obj)
    return TokenRecord(obj["metadata"]["name"], spec.get("device"), dict(spec.get("labels") or {}),
                       spec.get("expiresAt", ""), status.get("usedAt"), status.get("usedBy"),
                       spec.get("createdAt", ""))  # fmt: skip
