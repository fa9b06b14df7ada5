"""Key files: generated with safe permissions, refused when others can read them, never echoed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler.signing import KeyFileError, generate_key, load_private_key, load_public_key, sign_with_key, tuf_signer
from reconciler.signing.keys import key_id

from .conftest import write_artifact


def test_generated_private_keys_are_owner_only_and_never_overwritten(tmp_path: Path):
    pair = generate_key(tmp_path / "release")
    assert os.stat(pair.private).st_mode & 0o777 == 0o600
    assert key_id(load_public_key(pair.public)) == pair.key_id
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        generate_key(tmp_path / "release")


def test_a_private_key_readable_by_others_is_refused_without_showing_it(tmp_path: Path):
    pair = generate_key(tmp_path / "release")
    pem = pair.private.read_text()
    os.chmod(pair.private, 0o644)
    with pytest.raises(KeyFileError) as caught:
        load_private_key(pair.private)
    assert "chmod 600" in str(caught.value)
    body = pem.splitlines()[1]
    assert body not in str(caught.value)
    with pytest.raises(KeyFileError):
        sign_with_key(write_artifact(tmp_path / "a", "m", "1", "p"), pair.private)
    with pytest.raises(KeyFileError):
        tuf_signer(pair.private)


def test_garbage_and_missing_keys_are_clear_errors(tmp_path: Path):
    bad = tmp_path / "bad.key"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    os.chmod(bad, 0o600)
    with pytest.raises(KeyFileError, match="not a PEM private key"):
        load_private_key(bad)
    with pytest.raises(KeyFileError, match="cannot read private key"):
        load_private_key(tmp_path / "missing.key")
    with pytest.raises(KeyFileError, match="not a PEM public key"):
        load_public_key(bad)


def test_encrypted_keys_need_their_password(tmp_path: Path):
    pair = generate_key(tmp_path / "locked", password=b"correct horse")
    with pytest.raises(KeyFileError, match="password"):
        load_private_key(pair.private)
    assert load_private_key(pair.private, b"correct horse") is not None


def test_ed25519_signs_tuf_roles_but_not_releases(tmp_path: Path):
    pair = generate_key(tmp_path / "timestamp", key_type="ed25519")
    assert tuf_signer(pair.private).public_key.keytype == "ed25519"
    with pytest.raises(KeyFileError, match="ECDSA"):
        sign_with_key(write_artifact(tmp_path / "a", "m", "1", "p"), pair.private)
