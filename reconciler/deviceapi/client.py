"""The device's side of the device API: its identity on disk, enrolment and rotation, and the calls an agent makes.

Who calls it: ``edgectl agent`` (through :class:`DeviceAPIBackend`, the shape the agent already speaks) and the
fleet simulator. It must not import the controller's side (``server``, ``registry``): a device holds no more than
its own key, its certificate and the fleet CA's certificate.

Identity files, in ``DATA_DIR/identity/``:

    device.pem   the client certificate followed by the private key, mode 0600. One file, so that a rotation
                 replaces key and certificate together (``write_atomic``): a power cut leaves the old pair or the
                 new one, never a certificate without its key. The key is made here and never leaves the device.
    ca.crt       the fleet CA's certificate. The first contact (enrolment) is checked against the CA file the
                 device was installed with; afterwards against this copy.

A device proves itself once, at enrolment: with a one-time bootstrap token, or, an agent pod on Kubernetes, with
its projected ServiceAccount token (the controller asks the cluster which Node the pod runs on). Afterwards the
certificate is the proof.

Errors follow :mod:`reconciler.errors`: no answer, 5xx and 429 are temporary (the agent keeps serving and tries
again); 401 and 403 are permanent (revoked, a used token: a person must act).
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import urllib3
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from urllib3.util.ssl_ import create_urllib3_context

from reconciler.cluster import AssignmentStatus
from reconciler.cluster.backend import spec_from_json
from reconciler.durable import write_atomic
from reconciler.errors import PermanentError, TemporaryError
from reconciler.plan import Desired

from . import protocol

log = logging.getLogger("edge_reconciler.deviceapi.client")

RENEW_AT = 2 / 3
"""Fraction of a certificate's lifetime after which the device asks for a new one (kubelet's rotation point)."""


class DeviceAPIError(TemporaryError):
    """The device API did not answer, or answered that it cannot serve now (5xx, 429)."""


class DeviceRefusedError(PermanentError):
    """The device API refused this device (401, 403, 4xx): revoked, unknown, a used token, a bad request."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"device API refused ({status} {reason}): {message}")
        self.status, self.reason = status, reason


@dataclass(frozen=True)
class IdentityFiles:
    directory: Path

    @property
    def pem(self) -> Path:
        return self.directory / "device.pem"

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"

    def certificate(self) -> x509.Certificate | None:
        try:
            return x509.load_pem_x509_certificate(self.pem.read_bytes())
        except (OSError, ValueError):
            return None


class DeviceClient:
    def __init__(
        self,
        url: str,
        device: str,
        identity_dir: Path,
        ca_file: Path | None = None,
        token: str | None = None,
        timeout: float = 30.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        service_account_token_file: Path | None = None,
    ) -> None:
        """``url``: the device API (``https://host:port``). ``ca_file``: the fleet CA the device was installed with
        (needed until enrolment). ``token``: a one-time bootstrap token, needed only when the device has no
        certificate yet. ``service_account_token_file``: an agent pod's projected ServiceAccount token (audience
        ``edge-reconciler``); it replaces the bootstrap token, and, being renewable proof, also enrols the device
        again when its certificate has expired (a pod that was down for longer than a certificate lives)."""
        self.url = url.rstrip("/")
        self.device = device
        self.files = IdentityFiles(Path(identity_dir))
        self.files.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.ca_file = Path(ca_file) if ca_file else None
        self.token = token
        self.service_account_token_file = Path(service_account_token_file) if service_account_token_file else None
        self.timeout = timeout
        self.clock = clock
        self._pool: urllib3.PoolManager | None = None
        self._etag: str | None = None
        self._assignments: dict[str, tuple[Desired, int]] = {}

    # --- identity ----------------------------------------------------------------------------------

    @property
    def repository_url(self) -> str:
        return f"{self.url}/tuf"

    @property
    def telemetry_url(self) -> str:
        return f"{self.url}{protocol.TELEMETRY}"

    def ensure_identity(self) -> None:
        """Enrol when the device has no certificate; ask for a new one past two thirds of its lifetime."""
        certificate = self.files.certificate()
        expired = certificate is not None and self.clock() >= certificate.not_valid_after_utc
        if certificate is None or (expired and self.service_account_token_file is not None):
            self._obtain(protocol.ENROL, self._proof(), client_certificate=False)
            log.info("enrolled", extra={"device": self.device, "url": self.url})
            return
        lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
        if self.clock() >= certificate.not_valid_before_utc + lifetime * RENEW_AT:
            self._obtain(protocol.RENEW, {}, client_certificate=True)
            log.info("certificate renewed", extra={"device": self.device})

    def _proof(self) -> dict[str, str]:
        """What the device shows to enrol. The ServiceAccount token is read at each enrolment: the kubelet
        rotates the file, and a copy kept in memory would expire."""
        if self.service_account_token_file is not None:
            try:
                token = self.service_account_token_file.read_text().strip()
            except OSError as exc:
                raise PermanentError(f"cannot read the ServiceAccount token {self.service_account_token_file}: "
                                     f"{exc} (is the projected volume mounted?)") from exc  # fmt: skip
            if not token:
                raise PermanentError(f"the ServiceAccount token file {self.service_account_token_file} is empty")
            return {"serviceAccountToken": token}
        if self.token:
            return {"token": self.token}
        raise PermanentError(
            f"{self.device} is not enrolled: give the agent a bootstrap token (edgectl device token create)"
        )

    def _obtain(self, path: str, body: dict[str, Any], client_certificate: bool) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.device)]))
            .sign(key, hashes.SHA256())
        )
        body = {**body, "csr": csr.public_bytes(serialization.Encoding.PEM).decode()}
        pool = self.pool if client_certificate else self._new_pool(with_certificate=False)
        answer = protocol.Certificate.model_validate(self._call(pool, "POST", path, body))
        issued = x509.load_pem_x509_certificate(answer.certificate.encode())
        if issued.public_key().public_numbers() != key.public_key().public_numbers():
            raise DeviceAPIError("the device API answered with a certificate for another key")
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())  # fmt: skip
        write_atomic(self.files.ca, answer.ca.encode())
        write_atomic(self.files.pem, answer.certificate.encode() + private, mode=0o600)
        self._pool = None  # the next call opens connections with the new certificate

    # --- calls ---------------------------------------------------------------------------------------

    @property
    def pool(self) -> urllib3.PoolManager:
        """Connections with this device's client certificate (also for TUF metadata and artifact downloads)."""
        if self._pool is None:
            self._pool = self._new_pool(with_certificate=True)
        return self._pool

    def _new_pool(self, with_certificate: bool) -> urllib3.PoolManager:
        ca = self.files.ca if self.files.ca.exists() else self.ca_file
        if ca is None:
            raise PermanentError("no fleet CA to check the device API against: give the agent --ca")
        # The fleet CA alone is the trust anchor, even when it is an intermediate (a cert-manager CA issued by a
        # company root): the device trusts that key, not whoever signed it (as the server does, ``FleetCA``).
        context = create_urllib3_context()
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        options: dict[str, Any] = {"cert_reqs": "CERT_REQUIRED", "ca_certs": str(ca), "retries": False,
                                   "ssl_context": context}  # fmt: skip
        if with_certificate:
            options["cert_file"] = str(self.files.pem)
        return urllib3.PoolManager(maxsize=4, **options)

    def assignments(self, wait: float = 0.0) -> dict[str, tuple[Desired, int]]:
        """model -> (spec, generation) for this device; an unchanged list costs a 304 (If-None-Match)."""
        headers = {"If-None-Match": self._etag} if self._etag else {}
        query = f"?wait={wait:g}" if wait else ""
        response = self._request("GET", f"{protocol.ASSIGNMENTS}{query}", None, headers, self.timeout + wait)
        if response.status == 304:
            return dict(self._assignments)
        body = protocol.Assignments.model_validate(_json(response))
        self._assignments = {a.model: (spec_from_json(a.spec), a.generation) for a in body.assignments}
        self._etag = response.headers.get("ETag")
        return dict(self._assignments)

    def report(self, model: str, status: AssignmentStatus) -> None:
        self._call(self.pool, "PUT", protocol.STATUS.format(model=model), status.to_json())

    def upload_capture(self, model: str, version: str, data: bytes) -> None:
        """A batch of sampled inputs (an ``.npz``), while the model's assignment asks for capture."""
        path = protocol.CAPTURES.format(model=model, version=version)
        self._request("POST", path, None, {"Content-Type": "application/octet-stream"}, self.timeout, raw=data)

    def upload_logs(self, lines: list[dict]) -> None:
        """Recent log lines, while a debug session names this device (refused otherwise: they stay here)."""
        self._call(self.pool, "POST", protocol.LOGS, {"lines": lines})

    def join_training(self, name: str) -> None:
        """Let this device's identity key (its current certificate's) into training ``name``'s SuperLink."""
        self._request("POST", protocol.TRAINING_JOIN.format(name=name), {}, {}, self.timeout)

    def _call(self, pool: urllib3.PoolManager, method: str, path: str, body: dict[str, Any] | None) -> Any:
        return _json(self._request(method, path, body, {}, self.timeout, pool))

    def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        headers: dict[str, str],
        timeout: float,
        pool: urllib3.PoolManager | None = None,
        raw: bytes | None = None,
    ) -> urllib3.BaseHTTPResponse:
        data = json.dumps(body).encode() if body is not None else raw
        if body is not None:
            headers = {**headers, "Content-Type": "application/json"}
        try:
            response = (pool or self.pool).request(method, f"{self.url}{path}", body=data, headers=headers,
                                                   timeout=urllib3.Timeout(timeout))  # fmt: skip
        except urllib3.exceptions.HTTPError as exc:
            raise DeviceAPIError(f"{method} {self.url}{path}: {exc}") from exc
        if response.status < 400 or response.status == 304:
            return response
        refusal = _refusal(response)
        if response.status == 429 or response.status >= 500:
            retry = response.headers.get("Retry-After", "")
            delay = float(retry) if retry.isdigit() else 30.0
            raise DeviceAPIError(f"{method} {path}: {response.status} {refusal.message}", retry_after=delay)
        raise DeviceRefusedError(response.status, refusal.reason, refusal.message)


class DeviceAPIBackend:
    """The backend an agent acts on, over the device API: its assignments in, its reports out. Nothing else of
    the fleet is visible to a device."""

    def __init__(self, client: DeviceClient, wait: float = 0.0) -> None:
        self.client = client
        self.wait = wait

    def sync(self, inventory: bool = True) -> None:
        self.client.ensure_identity()

    def assignments_for(self, device: str) -> dict[str, tuple[Desired, int]]:
        return self.client.assignments(self.wait)

    def report_status(self, device: str, model: str, status: AssignmentStatus) -> None:
        self.client.report(model, status)


def _json(response: urllib3.BaseHTTPResponse) -> Any:
    try:
        return json.loads(response.data or b"null")
    except ValueError as exc:
        raise DeviceAPIError(f"the device API answered {response.status} with a body that is not JSON") from exc


def _refusal(response: urllib3.BaseHTTPResponse) -> protocol.Refusal:
    try:
        return protocol.Refusal.model_validate_json(response.data)
    except ValueError:
        return protocol.Refusal(
            reason=f"http-{response.status}", message=(response.data or b"")[:200].decode("replace")
        )
