"""sigstore keyless bundles verify offline against a pinned trusted root and an identity policy; keyless
signing without the network fails with a message that says what to do instead."""

from __future__ import annotations

import base64
import json
import socket
import time
from pathlib import Path

import pytest

from reconciler.signing import KeylessIdentity, Refusal, RefusedError, SigningUnavailableError, sign_keyless
from reconciler.signing.bundle import verify_keyless

from .conftest import DATA

ROOT = DATA / "keyless" / "trusted_root.json"
SIGNER = KeylessIdentity(issuer="https://sigstore.verify.ibm.com/oauth2", subject="stefanb@us.ibm.com")
SIGNED = {
    "signme-1": "f6310066c7320497ea554260c32c43660bff648cb2a61194832cc086077085e1",
    "signme-2": "32dcb1f8e1ae52d5963e56a6ba06ab58b424c15ed2a6b70d2feca1d089370028",
}


def test_a_keyless_bundle_verifies_offline_against_the_pinned_root(keyless_model: Path):
    assert verify_keyless(keyless_model, SIGNER, ROOT) == SIGNED


def test_another_subject_is_refused(keyless_model: Path):
    with pytest.raises(RefusedError) as caught:
        verify_keyless(keyless_model, KeylessIdentity(SIGNER.issuer, "mallory@example.com"), ROOT)
    assert caught.value.reason is Refusal.WRONG_IDENTITY
    assert "mallory@example.com" in caught.value.message


def test_another_issuer_is_refused(keyless_model: Path):
    with pytest.raises(RefusedError) as caught:
        verify_keyless(keyless_model, KeylessIdentity("https://accounts.google.com", SIGNER.subject), ROOT)
    assert caught.value.reason is Refusal.WRONG_IDENTITY


def test_a_root_that_did_not_certify_the_signature_is_refused(keyless_model: Path):
    with pytest.raises(RefusedError) as caught:
        verify_keyless(keyless_model, SIGNER, DATA / "keyless" / "staging_trusted_root.json")
    assert caught.value.reason is Refusal.UNTRUSTED_SIGNER


def test_a_tampered_file_under_a_valid_keyless_signature_is_refused(keyless_model: Path):
    (keyless_model / "signme-2").write_bytes(b"signme-3")
    with pytest.raises(RefusedError) as caught:
        verify_keyless(keyless_model, SIGNER, ROOT)
    assert caught.value.reason is Refusal.TAMPERED
    assert "signme-2" in caught.value.message


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unsigned_jwt(claims: dict) -> str:
    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.{part({'sig': 'x'})}"


def test_keyless_signing_offline_fails_clearly(tmp_path: Path, keyless_model: Path):
    """Fulcio and Rekor unreachable (closed loopback ports stand in for an air gap): a clear error, no bundle."""
    port = _closed_port()
    url = f"http://127.0.0.1:{port}"
    config = {
        "mediaType": "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json",
        "trustedRoot": json.loads(ROOT.read_text()),
        "signingConfig": {
            "mediaType": "application/vnd.dev.sigstore.signingconfig.v0.2+json",
            "caUrls": [{"url": url, "majorApiVersion": 1, "validFor": {"start": "2020-01-01T00:00:00Z"},
                        "operator": "test"}],
            "oidcUrls": [{"url": url, "majorApiVersion": 1, "validFor": {"start": "2020-01-01T00:00:00Z"},
                          "operator": "test"}],
            "rekorTlogUrls": [{"url": url, "majorApiVersion": 1, "validFor": {"start": "2020-01-01T00:00:00Z"},
                               "operator": "test"}],
            "tsaUrls": [],
            "rekorTlogConfig": {"selector": "ANY"},
            "tsaConfig": {"selector": "ANY"},
        },
    }  # fmt: skip
    trust_config = tmp_path / "trust_config.json"
    trust_config.write_text(json.dumps(config))
    now = int(time.time())
    claims = {"iss": "https://token.actions.githubusercontent.com", "aud": "sigstore", "sub": "repo:acme/fleet"}
    token = _unsigned_jwt({**claims, "iat": now, "nbf": now, "exp": now + 600, "email": "ci@acme.example"})
    (keyless_model / "release.sig").unlink()
    with pytest.raises(SigningUnavailableError) as caught:
        sign_keyless(keyless_model, token, trust_config)
    assert "sign with a key file" in str(caught.value)
    assert "could not reach" in str(caught.value)
    assert not (keyless_model / "release.sig").exists()
