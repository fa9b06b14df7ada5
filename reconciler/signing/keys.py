"""Key files: generate them, load them, and refuse private keys that other accounts can read.

Who calls it: ``edgectl keys generate``, the artifact signer (release keys) and the TUF repository (role
keys). One format serves both halves of the trust model: ECDSA P-256 in PEM (PKCS#8 private key, SPKI
public key) is what OpenSSF model-signing accepts for release signatures and what securesystemslib signs
TUF metadata with. Ed25519 is offered for TUF roles only: model-signing's key mode is ECDSA-only.

A private key file readable by group or others is refused, as ssh does: a key another local account could
read is no longer a secret. Errors name the path, never the key.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from securesystemslib.signer import CryptoSigner, SSlibKey

from .errors import KeyFileError

KeyType = Literal["ecdsa-p256", "ed25519"]
KEY_TYPES: tuple[KeyType, ...] = ("ecdsa-p256", "ed25519")
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
MAX_KEY_FILE = 64 * 1024


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path
    key_id: str


def key_id(public_key: PublicKey) -> str:
    """sha256 of the PEM public key: the hint model-signing puts in its bundles, so ids match across tools."""
    return hashlib.sha256(_public_pem(public_key)).hexdigest()


def generate_key(prefix: Path, key_type: KeyType = "ecdsa-p256", password: bytes | None = None) -> KeyPair:
    """Write ``PREFIX.key`` (mode 0600, never overwritten) and ``PREFIX.pub``."""
    if key_type == "ecdsa-p256":
        private: PrivateKey = ec.generate_private_key(ec.SECP256R1())
    elif key_type == "ed25519":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        raise KeyFileError(f"unknown key type {key_type!r} (known: {', '.join(KEY_TYPES)})")
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    private_path, public_path = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    private_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise KeyFileError(f"{private_path} exists; refusing to overwrite a key") from exc
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    public_path.write_bytes(_public_pem(private.public_key()))
    return KeyPair(private_path, public_path, key_id(private.public_key()))


def load_private_key(path: Path, password: bytes | None = None) -> PrivateKey:
    """A private key from PEM, after checking that only its owner can read the file."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise KeyFileError(f"cannot read private key {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"private key {path} is accessible by group or others (mode {stat.S_IMODE(mode):04o}); "
            f"run: chmod 600 {path}"
        )
    data = _read_small(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password)
    except TypeError:
        raise KeyFileError(f"private key {path} is encrypted; a password is needed") from None
    except ValueError:
        raise KeyFileError(f"{path} is not a PEM private key (or the password is wrong)") from None
    if not isinstance(key, PrivateKey):
        raise KeyFileError(f"{path}: unsupported key type {type(key).__name__}; use ECDSA P-256 or Ed25519")
    return key


def load_public_key(path: Path) -> PublicKey:
    path = Path(path)
    data = _read_small(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise KeyFileError(f"{path} is not a PEM public key") from None
    if not isinstance(key, PublicKey):
        raise KeyFileError(f"{path}: unsupported key type {type(key).__name__}; use ECDSA P-256 or Ed25519")
    return key


def tuf_signer(path: Path, password: bytes | None = None) -> CryptoSigner:
    """A securesystemslib signer for TUF metadata, from a private key file (permissions checked)."""
    private = load_private_key(path, password)
    return CryptoSigner(private, SSlibKey.from_crypto(private.public_key(), key_id(private.public_key())))


def tuf_key(public_key: PublicKey) -> SSlibKey:
    """The TUF form of a public key; its keyid is :func:`key_id`, the same everywhere."""
    return SSlibKey.from_crypto(public_key, key_id(public_key))


def _public_pem(public_key: PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _read_small(path: Path, what: str) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(data) > MAX_KEY_FILE:
        raise KeyFileError(f"{path} is larger than {MAX_KEY_FILE} bytes; not a {what}")
    return data
