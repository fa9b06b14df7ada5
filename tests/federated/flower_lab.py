"""A SuperLink and devices' SuperNodes on loopback, with identities from a real fleet CA: what the federated tests
and the training bench stand on."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from reconciler.deviceapi.ca import FleetCA
from reconciler.durable import write_atomic
from reconciler.federated.nodes import NodeSettings, SuperNode
from reconciler.federated.processes import free_port
from reconciler.federated.superlink import SuperLink


def identity(ca: FleetCA, device: str, folder: Path) -> tuple[Path, ec.EllipticCurvePublicKey]:
    """A device's identity file (certificate and key, PEM) as the device API client keeps it."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device)]))
        .sign(key, hashes.SHA256())
    )
    issued = ca.issue_device(csr.public_bytes(serialization.Encoding.PEM), device, timedelta(days=1), datetime.now(UTC))
    pem = folder / device / "device.pem"
    pem.parent.mkdir(parents=True, exist_ok=True)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())  # fmt: skip
    write_atomic(pem, issued.public_bytes(serialization.Encoding.PEM) + private, mode=0o600)
    return pem, key.public_key()


@dataclass
class Lab:
    folder: Path
    ca: FleetCA
    superlink: SuperLink
    nodes: dict[str, SuperNode] = field(default_factory=dict)

    def join(self, device: str, model: Path, data: Path, env: dict[str, str] | None = None,
             min_samples: int = 1, register: bool = True) -> SuperNode:  # fmt: skip
        pem, public = identity(self.ca, device, self.folder / "devices")
        if register:
            self.superlink.register(device, public)
        settings = NodeSettings(device, self.superlink.address, self.folder / "ca.crt", pem, model, data, min_samples,
                                self.folder / "devices" / device / "work")  # fmt: skip
        node = self.nodes[device] = SuperNode(settings, env).start()
        return node

    def leave_all(self) -> None:
        for node in self.nodes.values():
            node.stop()
        self.nodes.clear()


def open_lab(folder: Path) -> Lab:
    ca = FleetCA.load_or_create(folder / "ca")
    (folder / "ca.crt").write_text(ca.certificate_pem)
    cert, key = ca.issue_server(["127.0.0.1", "localhost"], timedelta(days=1), datetime.now(UTC))
    (folder / "superlink.crt").write_bytes(cert)
    (folder / "superlink.key").write_bytes(key)
    superlink = SuperLink(folder / "superlink", "127.0.0.1", free_port(), folder / "ca.crt", folder / "superlink.crt",
                          folder / "superlink.key").start()  # fmt: skip
    return Lab(folder, ca, superlink)


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> object:
    """Poll ``condition`` until it is truthy; the timeout is a bound for a hang, not a measure of speed."""
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
