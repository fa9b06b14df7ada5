"""The fleet CA: the key that says which client certificate belongs to which device, and the TLS settings that
make the device API use it.

Who calls it: :mod:`.identity` (issue and check device certificates), the device API server (its TLS context
and, when nobody provides one, its own server certificate), agents and tests (a client context). No network
I/O; files only in :meth:`FleetCA.load_or_create`.

Where the CA comes from, first match wins:

- ``tls.crt`` + ``tls.key``: a Kubernetes Secret as cert-manager writes it, mounted read-only;
- ``ca.crt`` + ``ca.key``: files a person made (or an earlier start of this process);
- nothing: a new CA (EC P-256, ten years) is created, the key first (mode 0600) and the certificate last, each
  written atomically, under a lock so that replicas starting together agree on one CA.

A folder with a CA in it is never written, and half a CA (one file of a pair) is refused rather than
replaced: overwriting a key that devices already trust would cut the whole fleet off.
"""

from __future__ import annotations

import fcntl
import ipaddress
import ssl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from reconciler.durable import write_atomic

from .identity import IdentityError, Reason, as_utc

__all__ = ["CA_LIFETIME", "DEVICE_URI_PREFIX", "FleetCA", "device_of", "peer_certificate"]

CA_LIFETIME = timedelta(days=3650)
"""Ten years: replacing the CA means enrolling every device again."""

CLOCK_SKEW = timedelta(minutes=5)
"""Certificates start this much before they are issued: a device whose clock is a little behind still accepts
its new certificate."""

DEVICE_ORGANIZATION = "edge-reconciler device"
DEVICE_URI_PREFIX = "urn:edge-reconciler:device:"
CA_NAME = "edge-reconciler fleet CA"
VERIFIED_KEPT = 200_000
"""Most verified device certificates remembered (about 200 bytes each); past it the set starts over."""

_PAIRS = (("tls.crt", "tls.key"), ("ca.crt", "ca.key"))
_LOCK = ".ca.lock"

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


class FleetCA:
    """A CA certificate and its key, and what can be done with them. Build one with :meth:`load_or_create`."""

    def __init__(self, certificate: x509.Certificate, key: PrivateKey, source: str = "memory") -> None:
        _check_ca(certificate, key, source)
        self.certificate = certificate
        self.key = key
        self.source = source
        """Where the CA was read from, for messages."""
        self.certificate_pem: str = certificate.public_bytes(serialization.Encoding.PEM).decode()
        self._devices: dict[bytes, str] = {}
        """The SHA-256 fingerprints of device certificates whose signature and form were checked, and the device
        each names: a device sends the same certificate with every poll, and the signature check was a fifth of
        the device API's CPU per request. Fingerprints, not the certificates: a checked certificate object keeps
        what it parsed (4 KiB; 400 MiB for 100,000 devices). Only certificates that passed are kept (no one can
        add entries without the CA's key); validity is checked every time, the registry's verdict by the caller
        every time."""

    @classmethod
    def load_or_create(cls, directory: Path) -> FleetCA:
        directory = Path(directory)
        found = _find_pair(directory)
        if found is not None:
            return cls._load(*found)
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            with _locked(directory / _LOCK):
                found = _find_pair(directory)  # another replica may have created it while we waited
                if found is not None:
                    return cls._load(*found)
                ca = cls._generate(datetime.now(UTC), directory)
                pem = ca.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption())  # fmt: skip
                write_atomic(directory / "ca.key", pem, mode=0o600)
                write_atomic(directory / "ca.crt", ca.certificate_pem.encode(), mode=0o644)
                return ca
        except OSError as exc:
            raise IdentityError(Reason.CA_UNUSABLE, f"cannot create a fleet CA in {directory}: {exc}") from exc

    @classmethod
    def _load(cls, cert_file: Path, key_file: Path) -> FleetCA:
        try:
            certificate = x509.load_pem_x509_certificates(cert_file.read_bytes())[0]
            key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise IdentityError(Reason.CA_UNUSABLE, f"cannot read the fleet CA {cert_file}, {key_file}: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
            raise IdentityError(Reason.CA_UNUSABLE, f"{key_file}: a CA key must be EC, RSA or Ed25519")
        return cls(certificate, key, str(cert_file))

    @classmethod
    def _generate(cls, now: datetime, directory: Path | None = None) -> FleetCA:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edge-reconciler"),
                          x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])  # fmt: skip
        usage = x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                              data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                              encipher_only=False, decipher_only=False)  # fmt: skip
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(certificate, key, str(directory / "ca.crt") if directory else "memory")

    # --- device certificates -----------------------------------------------------------------------

    def requested_name(self, csr_pem: str | bytes) -> str:
        """The device name a CSR asks for, once the CSR has passed every check :meth:`issue_device` makes."""
        return _common_name(_read_csr(csr_pem).subject, "the CSR")

    def issue_device(self, csr_pem: str | bytes, device: str, lifetime: timedelta, now: datetime) -> x509.Certificate:
        """A client certificate for ``device`` over the CSR's key. It ends at ``now + lifetime``, or with the CA
        if that comes first (a certificate cannot outlive its issuer)."""
        csr = _read_csr(csr_pem)
        asked = _common_name(csr.subject, "the CSR")
        if asked != device:
            raise IdentityError(Reason.BAD_CSR, f"the CSR asks for {asked!r}, not for device {device!r}")
        if lifetime <= timedelta(0):
            raise ValueError("a certificate lifetime must be positive")
        now = as_utc(now)
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, DEVICE_ORGANIZATION),
                             x509.NameAttribute(NameOID.COMMON_NAME, device)])  # fmt: skip
        uri = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(DEVICE_URI_PREFIX + device)])
        return self._sign(
            self._leaf(subject, csr.public_key(), now, lifetime)
            .add_extension(uri, critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        )

    def verify_device(self, certificate: x509.Certificate, now: datetime) -> str:
        """The device a certificate names, once it is shown to be one of this CA's device certificates and valid
        at ``now``. The registry's verdict (known, revoked, current) is :class:`.identity.Identity`'s part."""
        fingerprint = certificate.fingerprint(hashes.SHA256())
        device = self._devices.get(fingerprint)
        if device is None:
            device = self._checked_device(certificate)
            if len(self._devices) >= VERIFIED_KEPT:
                self._devices.clear()
            self._devices[fingerprint] = device
        now = as_utc(now)
        if now < certificate.not_valid_before_utc:
            raise IdentityError(Reason.NOT_YET_VALID, f"the certificate of {device} is valid only from "
                                f"{certificate.not_valid_before_utc.isoformat()} (is this clock right?)")  # fmt: skip
        if now > certificate.not_valid_after_utc:
            raise IdentityError(Reason.EXPIRED, f"the certificate of {device} expired at "
                                f"{certificate.not_valid_after_utc.isoformat()}; enrol again")  # fmt: skip
        return device

    def _checked_device(self, certificate: x509.Certificate) -> str:
        try:
            certificate.verify_directly_issued_by(self.certificate)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as exc:
            raise IdentityError(Reason.FOREIGN_CA, f"certificate {certificate.serial_number:x} was not issued by "
                                f"the fleet CA ({certificate.issuer.rfc4514_string()})") from exc  # fmt: skip
        device = device_of(certificate)
        if _device_uris(certificate) != [DEVICE_URI_PREFIX + device] or not _has_client_auth(certificate):
            raise IdentityError(Reason.NOT_A_DEVICE, f"certificate {certificate.serial_number:x} ({device}) is "
                                "not a device certificate")  # fmt: skip
        return device

    # --- the device API's own TLS ------------------------------------------------------------------

    def issue_server(self, hosts: Sequence[str], lifetime: timedelta, now: datetime) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM) for the device API when no one provides its certificate: agents already
        trust the fleet CA, so a certificate from it needs no other trust anchor on the devices."""
        if not hosts:
            raise ValueError("a server certificate needs at least one host name or address")
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0][:64])])
        certificate = self._sign(
            self._leaf(subject, key.public_key(), as_utc(now), lifetime)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        )
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())  # fmt: skip
        return certificate.public_bytes(serialization.Encoding.PEM), key_pem

    def server_context(self, cert_file: Path, key_file: Path) -> ssl.SSLContext:
        """TLS for the device API. A client certificate is optional at this layer because enrolment comes without
        one; every other endpoint refuses a request without one (:meth:`.identity.Identity.authenticate`)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert_file, key_file)
        context.verify_mode = ssl.CERT_OPTIONAL
        self._trust(context)
        return context

    def client_context(self, cert_file: Path | None = None, key_file: Path | None = None) -> ssl.SSLContext:
        """TLS for agents and tests: the device API is trusted only with a certificate from this CA."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._trust(context)
        if cert_file is not None:
            context.load_cert_chain(cert_file, key_file)
        return context

    # --- internals ---------------------------------------------------------------------------------

    def _trust(self, context: ssl.SSLContext) -> None:
        # Only this CA, and it suffices even when it is an intermediate (a cert-manager CA issued by a company
        # root): the fleet trusts this key, not whoever signed it.
        context.load_verify_locations(cadata=self.certificate_pem)
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN

    def _leaf(self, subject: x509.Name, public_key, now: datetime, lifetime: timedelta) -> x509.CertificateBuilder:
        ends = min(now + lifetime, self.certificate.not_valid_after_utc)
        starts = max(now - CLOCK_SKEW, self.certificate.not_valid_before_utc)
        usage = x509.KeyUsage(digital_signature=True, content_commitment=False,
                              key_encipherment=isinstance(public_key, rsa.RSAPublicKey), data_encipherment=False,
                              key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False,
                              decipher_only=False)  # fmt: skip
        authority = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())  # type: ignore[arg-type]
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(starts)
            .not_valid_after(ends)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(authority, critical=False)
        )

    def _sign(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        if isinstance(self.key, ed25519.Ed25519PrivateKey):
            return builder.sign(self.key, None)
        if isinstance(self.key, ec.EllipticCurvePrivateKey) and self.key.curve.key_size > 256:
            return builder.sign(self.key, hashes.SHA384())
        return builder.sign(self.key, hashes.SHA256())


def device_of(certificate: x509.Certificate) -> str:
    """The device a certificate names: its subject's common name (the name the CSR asked for)."""
    return _common_name(certificate.subject, "the certificate")


def peer_certificate(der: bytes | None) -> x509.Certificate | None:
    """The TLS peer's certificate (``SSLObject.getpeercert(binary_form=True)``); None when there is none. The
    TLS layer has parsed it already, so bytes that do not parse are treated as no certificate at all."""
    if not der:
        return None
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError:
        return None


def _read_csr(csr_pem: str | bytes) -> x509.CertificateSigningRequest:
    data = csr_pem.encode() if isinstance(csr_pem, str) else bytes(csr_pem)
    try:
        csr = x509.load_pem_x509_csr(data)
        signed = csr.is_signature_valid
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise IdentityError(Reason.BAD_CSR, f"the CSR does not parse: {exc}") from exc
    if not signed:
        raise IdentityError(Reason.BAD_CSR, "the CSR's signature does not verify (not signed by its own key)")
    key = csr.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1 | ec.SECP384R1):
            raise IdentityError(Reason.BAD_CSR, f"EC keys must be on P-256 or P-384, not {key.curve.name}")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise IdentityError(Reason.BAD_CSR, f"RSA keys must have at least 2048 bits, not {key.key_size}")
    else:
        raise IdentityError(Reason.BAD_CSR, "the CSR's key must be EC (P-256, P-384) or RSA (2048 bits or more)")
    return csr


def _common_name(name: x509.Name, what: str) -> str:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(values) != 1 or not isinstance(values[0].value, str):
        raise IdentityError(Reason.BAD_CSR if what == "the CSR" else Reason.NOT_A_DEVICE,
                            f"{what} must have exactly one common name (the device's name)")  # fmt: skip
    return values[0].value


def _device_uris(certificate: x509.Certificate) -> list[str]:
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [uri for uri in names.get_values_for_type(x509.UniformResourceIdentifier)
            if uri.startswith(DEVICE_URI_PREFIX)]  # fmt: skip


def _has_client_auth(certificate: x509.Certificate) -> bool:
    try:
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return ExtendedKeyUsageOID.CLIENT_AUTH in usages


def _check_ca(certificate: x509.Certificate, key: PrivateKey, source: str) -> None:
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise IdentityError(Reason.CA_UNUSABLE, f"{source} is not a CA certificate (BasicConstraints ca=False)")
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if certificate.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise IdentityError(Reason.CA_UNUSABLE, f"{source}: the CA key does not belong to the CA certificate")


def _find_pair(directory: Path) -> tuple[Path, Path] | None:
    for cert_name, key_name in _PAIRS:
        cert_file, key_file = directory / cert_name, directory / key_name
        if cert_file.is_file() and key_file.is_file():
            return cert_file, key_file
        if cert_file.is_file() or key_file.is_file():
            present, missing = (cert_file, key_file) if cert_file.is_file() else (key_file, cert_file)
            raise IdentityError(Reason.CA_UNUSABLE, f"{directory} has {present.name} without {missing.name} "
                                "(restore it: a CA is never replaced on its own)")  # fmt: skip
    return None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
