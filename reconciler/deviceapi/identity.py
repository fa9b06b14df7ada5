"""Who a device is: enrolment with a one-time bootstrap token (or, for an agent pod, the Node Kubernetes vouches
for), renewal, and the check made on every request.

Who calls it: the device API server (:mod:`.server`), once per enrolment or renewal and once per request to
name the device behind a client certificate. Pure logic over the fleet CA (:mod:`.ca`, the cryptography) and
the registry (:mod:`.registry`, the state every replica shares); ``now`` is passed in, so tests control time.
It does no network I/O and never trusts a name from a body or a path.

Enrolment, in this order (nothing is spent on a request that will fail):

1. the CSR parses, its signature verifies and its key is strong enough (``bad-csr``);
2. the name it asks for, its subject's common name, is a valid device name (``bad-name``);
3. the token is redeemed, atomically and once (``token-*``, ``device-revoked``, ``device-exists``);
4. the certificate is issued and recorded as the device's current one.

An agent pod on Kubernetes has no token: the server first asks the cluster which Node the pod's projected
ServiceAccount token proves (``KubernetesBackend.node_of_token``), then :meth:`Identity.enrol_node` makes checks 1
and 2, requires the CSR to ask for exactly that Node (``node-mismatch``) and refuses a revoked device; nothing is
redeemed. The same Node may enrol again (a reinstalled pod has a new key): the cluster, which proved the Node,
is the authority on its name, and the certificate it replaces stops working after :data:`SUPERSEDED_GRACE`.

A request is accepted when its certificate, in this order: is present; was issued by this CA (the TLS layer
checked the chain already; checked again so that a misconfigured listener cannot let a foreign certificate
in); is a device certificate; is within its validity; names a device the registry knows and has not revoked;
and is the device's current certificate, or was replaced less than :data:`SUPERSEDED_GRACE` ago (a device that
has just rotated may still have requests in flight with the old one).

    PermanentError
    └── IdentityError        reason: a Reason (str); the server answers it as a refusal, never retries it
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.serialization import Encoding

from reconciler.errors import PermanentError

from .protocol import NAME_PATTERN, Certificate

if TYPE_CHECKING:
    from cryptography import x509

    from .ca import FleetCA
    from .registry import DeviceRecord, DeviceRegistry

__all__ = [
    "DEFAULT_LIFETIME",
    "SERVICE_ACCOUNT_AUDIENCE",
    "SUPERSEDED_GRACE",
    "Identity",
    "IdentityError",
    "Reason",
    "as_utc",
    "rfc3339",
]

DEFAULT_LIFETIME = timedelta(days=30)
"""Device certificates are short-lived: rotation is routine (at two thirds of the lifetime), so a stolen key
is good for weeks, not years, even if nobody revokes it."""

SUPERSEDED_GRACE = timedelta(hours=1)
"""How long a rotated-out certificate keeps working: requests already in flight finish, a stolen copy does not."""

SERVICE_ACCOUNT_AUDIENCE = "edge-reconciler"
"""The audience of the ServiceAccount tokens agent pods enrol with (their projected volume asks for it): a
token for the device API is useless against the Kubernetes API, and the agent's ordinary token is refused here."""

_NAME = re.compile(NAME_PATTERN)


class Reason(StrEnum):
    BAD_CSR = "bad-csr"
    BAD_NAME = "bad-name"
    TOKEN_UNKNOWN = "token-unknown"
    TOKEN_EXPIRED = "token-expired"
    TOKEN_USED = "token-used"
    TOKEN_DEVICE_MISMATCH = "token-device-mismatch"
    DEVICE_REVOKED = "device-revoked"
    DEVICE_EXISTS = "device-exists"
    """A token that names no device may not take the name of one that exists (that would be impersonation)."""
    NODE_MISMATCH = "node-mismatch"
    """An agent pod asked for a certificate under another name than the Node it runs on."""
    SERVICE_ACCOUNT_REFUSED = "service-account-token-refused"
    """The cluster does not vouch for the ServiceAccount token: invalid, another audience or ServiceAccount, a
    pod that is gone or not scheduled."""
    SERVICE_ACCOUNT_DISABLED = "service-account-enrolment-disabled"
    """This device API takes no ServiceAccount tokens (not on Kubernetes, or no agent ServiceAccount set)."""
    NO_CERTIFICATE = "no-certificate"
    EXPIRED = "expired"
    NOT_YET_VALID = "not-yet-valid"
    UNKNOWN_DEVICE = "unknown-device"
    REVOKED = "revoked"
    FOREIGN_CA = "foreign-ca"
    NOT_A_DEVICE = "not-a-device-certificate"
    """Issued by this CA, but not to a device (the device API's own server certificate, say)."""
    SUPERSEDED = "superseded"
    CA_UNUSABLE = "ca-unusable"
    """The CA's files are missing, do not match, or are not a CA: a person has to fix the folder."""


class IdentityError(PermanentError):
    """A request for an identity, or a certificate presented as one, is refused. ``reason`` is for programs
    (the refusal's reason, a metric label), the message for a person."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Identity:
    """Enrol, renew and authenticate devices; every replica of the device API holds one over shared state."""

    def __init__(self, ca: FleetCA, registry: DeviceRegistry, lifetime: timedelta = DEFAULT_LIFETIME) -> None:
        if lifetime <= timedelta(0):
            raise ValueError("a certificate lifetime must be positive")
        self.ca = ca
        self.registry = registry
        self.lifetime = lifetime

    def enrol(self, token: str, csr_pem: str, now: datetime) -> Certificate:
        """A first certificate for the device named by the CSR, paid for with a bootstrap token. The device's
        labels (the token's) are in the registry afterwards: ``registry.device(result.device).labels``."""
        now = as_utc(now)
        device = self.ca.requested_name(csr_pem)
        if not _NAME.fullmatch(device):
            raise IdentityError(Reason.BAD_NAME, f"{device!r} is not a device name (a DNS subdomain name)")
        # Sign first (it needs no state), then spend the token and record the certificate in one transaction:
        # a failure in between must not burn the token.
        issued = self.ca.issue_device(csr_pem, device, self.lifetime, now)
        self.registry.redeem_and_record(token, device, issued.serial_number, issued.not_valid_after_utc, now)
        return self._answer(device, issued)

    def enrol_node(self, node: str, csr_pem: str, now: datetime) -> Certificate:
        """A certificate for the Node ``node``, for a caller who has proved that it runs there (the server checked
        its pod's ServiceAccount token with the cluster). No token is spent, so the same Node may enrol again;
        a revoked device stays out. New devices get no labels here: on Kubernetes the Node's labels are the
        inventory."""
        now = as_utc(now)
        device = self.ca.requested_name(csr_pem)
        if not _NAME.fullmatch(device):
            raise IdentityError(Reason.BAD_NAME, f"{device!r} is not a device name (a DNS subdomain name)")
        if device != node:
            raise IdentityError(Reason.NODE_MISMATCH, f"the CSR asks for {device!r}, but the caller runs on Node "
                                f"{node!r}")  # fmt: skip
        record = self.registry.device(device)
        if record is not None and record.revoked_at is not None:
            raise IdentityError(Reason.DEVICE_REVOKED, f"device {device} was revoked at {record.revoked_at}")
        return self._issue(device, csr_pem, None, now)

    def renew(self, device: str, csr_pem: str, now: datetime) -> Certificate:
        """A fresh certificate for a device that has already authenticated (``device`` comes from
        :meth:`authenticate`, never from the request); it becomes the device's current one."""
        now = as_utc(now)
        record = self.registry.device(device)
        if record is None or record.serial is None:
            raise IdentityError(Reason.UNKNOWN_DEVICE, f"device {device} is not enrolled")
        if record.revoked_at is not None:
            raise IdentityError(Reason.REVOKED, f"device {device} was revoked at {record.revoked_at}")
        return self._issue(device, csr_pem, None, now)

    def authenticate(self, certificate: x509.Certificate | None, now: datetime, current_only: bool = False) -> str:
        """The name of the device behind ``certificate`` (the TLS peer's), or :class:`IdentityError`. Besides the
        device's current certificate, only the one it replaced is accepted, for ``SUPERSEDED_GRACE`` after the
        rotation (requests in flight); ``current_only`` (a renewal) accepts the current one alone, so an old
        certificate can never make itself current again."""
        now = as_utc(now)
        if certificate is None:
            raise IdentityError(Reason.NO_CERTIFICATE, "this request needs a device certificate (enrol first)")
        device = self.ca.verify_device(certificate, now)
        record = self.registry.device(device)
        if record is None or (record.serial != certificate.serial_number and _issued_after(certificate, record)):
            # Issued after what this replica knows: another replica may have just enrolled or renewed it.
            record = self.registry.device(device, fresh=True)
        if record is None or record.serial is None:
            raise IdentityError(Reason.UNKNOWN_DEVICE, f"device {device} is not enrolled")
        if record.revoked_at is not None:
            raise IdentityError(Reason.REVOKED, f"device {device} was revoked at {record.revoked_at}")
        if certificate.serial_number != record.serial:
            replaced = datetime.fromisoformat(record.issued_at) if record.issued_at else None
            previous = certificate.serial_number == record.previous_serial
            if current_only or not previous or replaced is None or now - replaced > SUPERSEDED_GRACE:
                raise IdentityError(
                    Reason.SUPERSEDED,
                    f"certificate {certificate.serial_number:x} of device {device} was replaced by "
                    f"{record.serial:x}; use the current one (or enrol again)",
                )
        return device

    def _issue(self, device: str, csr_pem: str, labels: dict[str, str] | None, now: datetime) -> Certificate:
        issued = self.ca.issue_device(csr_pem, device, self.lifetime, now)
        self.registry.record_certificate(device, issued.serial_number, issued.not_valid_after_utc, labels, now)
        return self._answer(device, issued)

    def _answer(self, device: str, issued: x509.Certificate) -> Certificate:
        return Certificate(
            device=device,
            certificate=issued.public_bytes(Encoding.PEM).decode(),
            ca=self.ca.certificate_pem,
            not_after=rfc3339(issued.not_valid_after_utc),
        )


def _issued_after(certificate: x509.Certificate, record: DeviceRecord) -> bool:
    """Whether ``certificate`` was issued after ``record``'s current one (the CA backdates by ``CLOCK_SKEW``)."""
    from .ca import CLOCK_SKEW  # the CA module depends on this one

    if not record.issued_at:
        return True
    # Certificates carry whole seconds: one issued in the same second as the cached one counts as after it.
    cached = datetime.fromisoformat(record.issued_at).replace(microsecond=0)
    return certificate.not_valid_before_utc + CLOCK_SKEW >= cached


def rfc3339(moment: datetime) -> str:
    """UTC, whole seconds, ``Z``: what the protocol's timestamps look like."""
    return as_utc(moment).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def as_utc(moment: datetime) -> datetime:
    """Times without a zone are taken as UTC (SQLite and some callers drop it), so comparisons never raise."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
