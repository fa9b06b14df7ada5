"""``edgectl keys generate``, ``edgectl sign``, ``edgectl verify``, ``edgectl export``.

Thin: arguments in, ``reconciler.signing`` calls, one line out. ``verify`` exits 0 when the artifact is
verified and 1 with the refusal reason otherwise, so CI jobs and scripts can gate on it. Passwords and
identity tokens are read from files (never from the command line, where ``ps`` shows them).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from reconciler.durable import write_atomic

from .common import DEFAULT_STORE, STORE_SHOWN, load_or_exit

if TYPE_CHECKING:
    from reconciler.signing import TrustPolicy

KEY_TYPES = ("ecdsa-p256", "ed25519")
"""``reconciler.signing.keys.KEY_TYPES``, repeated so that ``--help`` does not import the signing libraries
(a test keeps the two equal)."""

_secret_file = click.Path(exists=True, dir_okay=False, path_type=Path)


def _read_secret(path: Path | None) -> bytes | None:
    return path.read_bytes().strip() if path else None


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


@click.group()
def keys() -> None:
    """Key files for release signatures and TUF roles."""


@keys.command("generate")
@click.argument("prefix", type=click.Path(path_type=Path))
@click.option("--type", "key_type", type=click.Choice(KEY_TYPES), default="ecdsa-p256", show_default=True,
              help="ecdsa-p256 signs releases and TUF roles; ed25519 signs TUF roles only.")  # fmt: skip
@click.option("--password-file", type=_secret_file, help="Encrypt the private key with this file's content.")
def keys_generate(prefix: Path, key_type: str, password_file: Path | None) -> None:
    """Write PREFIX.key (mode 0600) and PREFIX.pub."""
    from reconciler.signing import KeyFileError, generate_key

    try:
        pair = generate_key(prefix, key_type, _read_secret(password_file))  # type: ignore[arg-type]
    except KeyFileError as exc:
        _fail(str(exc))
    click.echo(f"private key {pair.private}\npublic key  {pair.public}\nkey id      {pair.key_id}")


@click.group()
def tuf() -> None:
    """The controller's TUF repository (what agents may fetch, signed and fresh)."""


@tuf.command("init")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".edge-reconciler"),
              show_default=True, help="Controller state directory; the repository goes to STATE_DIR/tuf.")  # fmt: skip
@click.option("--keys", "keys_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Role keys root/targets/snapshot/timestamp.{key,pub}; missing ones are generated.")  # fmt: skip
def tuf_init(state_dir: Path, keys_dir: Path) -> None:
    """Create the repository. Pin the printed root.json on agents (or commit it as spec.trust.trustRoot),
    and keep root.key offline: only a root rotation needs it."""
    from reconciler.signing import KeyFileError
    from reconciler.signing.tuf_repo import create_repository, utcnow

    try:
        repo = create_repository(state_dir / "tuf", keys_dir, utcnow())
    except (FileExistsError, KeyFileError) as exc:
        _fail(str(exc))
    click.echo(f"created {repo.directory}\npin on agents: {repo.metadata_dir / '1.root.json'}")


@click.command()
@click.argument("artifact_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--key", type=click.Path(path_type=Path), help="Release key (offline-key mode).")
@click.option("--password-file", type=_secret_file, help="File holding the key's password.")
@click.option("--identity-token-file", type=_secret_file, help="OIDC token for sigstore keyless signing.")
@click.option("--trust-config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="sigstore client trust config (default: the public instance).")  # fmt: skip
@click.option("--counter", type=click.IntRange(min=1), required=True, help="Release counter; raise it every release.")
@click.option("--minimum-counter", type=click.IntRange(min=0), default=0, show_default=True,
              help="Revoke this model's releases below this counter.")  # fmt: skip
@click.option("--profile", "profiles", multiple=True,
              help="Profiles the release covers (default: the one the artifact was built for).")  # fmt: skip
def sign(
    artifact_dir: Path,
    key: Path | None,
    password_file: Path | None,
    identity_token_file: Path | None,
    trust_config: Path | None,
    counter: int,
    minimum_counter: int,
    profiles: tuple[str, ...],
) -> None:
    """Release ARTIFACT_DIR: write its release statement, then sign every file as one bundle."""
    from reconciler.signing import (
        KeyFileError,
        Release,
        SigningUnavailableError,
        load_private_key,
        sign_keyless,
        sign_with_key,
        write_release,
    )

    if (key is None) == (identity_token_file is None):
        raise click.UsageError("give exactly one of --key (offline) or --identity-token-file (keyless)")
    try:
        manifest = json.loads((artifact_dir / "manifest.json").read_text())
        model, version, built_for = manifest["model"], manifest["version"], manifest["profile"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        _fail(f"{artifact_dir} has no readable manifest.json with model, version and profile ({exc})")
    try:
        release = Release(model, version, profiles or (built_for,), counter, minimum_counter)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    statement = artifact_dir / "release.json"
    previous = statement.read_bytes() if statement.exists() else None
    try:
        if key is not None:
            load_private_key(key, _read_secret(password_file))  # fail before anything is written
        write_release(artifact_dir, release)
        if key is not None:
            bundle = sign_with_key(artifact_dir, key, _read_secret(password_file))
        else:
            token = _read_secret(identity_token_file)
            assert token is not None
            bundle = sign_keyless(artifact_dir, token.decode(), trust_config)
    except (KeyFileError, SigningUnavailableError) as exc:
        if previous is None:  # leave the folder as it was: signed as before, or not at all
            statement.unlink(missing_ok=True)
        else:
            write_atomic(statement, previous)
        _fail(str(exc))
    click.echo(f"signed {model}@{version} for {', '.join(release.profiles)} (counter {counter}): {bundle}")


@click.command()
@click.argument("artifact_dir", type=click.Path(path_type=Path))
@click.option("--repo", type=click.Path(exists=True, file_okay=False), help="Fleet repo whose trust policy applies.")
@click.option("--public-key", "public_keys", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Trust this release key (repeatable) instead of a fleet repo's policy.")  # fmt: skip
@click.option("--identity", help="Trust this keyless signer subject (with --issuer).")
@click.option("--issuer", help="OIDC issuer of --identity.")
@click.option("--trusted-root", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Pinned sigstore trusted root for keyless bundles.")  # fmt: skip
@click.option("--model", help="Require this model (default: the manifest's).")
@click.option("--version", "version", help="Require this version.")
@click.option("--profile", help="Require this hardware profile (a device's).")
@click.option("--minimum-counter", type=click.IntRange(min=0), default=0, help="Refuse releases below this counter.")
def verify(
    artifact_dir: Path,
    repo: str | None,
    public_keys: tuple[Path, ...],
    identity: str | None,
    issuer: str | None,
    trusted_root: Path | None,
    model: str | None,
    version: str | None,
    profile: str | None,
    minimum_counter: int,
) -> None:
    """Verify ARTIFACT_DIR as a device would: exit 0 verified, 1 refused (with the reason)."""
    from reconciler.signing import Expectation, KeyFileError, RefusedError, verify_artifact

    policy = _policy(repo, public_keys, identity, issuer, trusted_root)
    if model is None:
        try:
            model = json.loads((artifact_dir / "manifest.json").read_bytes())["model"]
        except (OSError, ValueError, KeyError, TypeError):
            _fail(f"refused (Malformed): {artifact_dir} has no readable manifest.json; pass --model")
    try:
        verified = verify_artifact(artifact_dir, policy, Expectation(str(model), version, profile, minimum_counter))
    except RefusedError as exc:
        click.echo(f"refused ({exc.reason}): {exc.message}", err=True)
        sys.exit(1)
    except KeyFileError as exc:
        _fail(str(exc))
    click.echo(
        f"verified {verified.model}@{verified.version} for {verified.profile}: released by {verified.signer} "
        f"(counter {verified.release.counter}), {len(verified.digests)} files"
    )


def _policy(
    repo: str | None, public_keys: tuple[Path, ...], identity: str | None, issuer: str | None, root: Path | None
) -> TrustPolicy:
    from reconciler.signing import KeylessIdentity, ReleaseSigner, TrustPolicy, policy_from_fleet

    if (identity is None) != (issuer is None):
        raise click.UsageError("--identity and --issuer go together")
    signers = [ReleaseSigner(p.stem, public_key=p) for p in public_keys]
    if identity and issuer:
        signers.append(ReleaseSigner(identity, identity=KeylessIdentity(issuer, identity)))
    if repo is not None:
        if signers:
            raise click.UsageError("use either --repo or explicit --public-key / --identity")
        return policy_from_fleet(load_or_exit(repo).fleet, Path(repo))
    if not signers:
        raise click.UsageError("say whom to trust: --repo, --public-key or --identity/--issuer")
    return TrustPolicy(tuple(signers), root)


@click.command()
@click.argument("artifact_id")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--store", type=click.Path(path_type=Path), default=DEFAULT_STORE, show_default=STORE_SHOWN)
def export(artifact_id: str, directory: Path, store: Path) -> None:
    """Copy a built artifact out of the store into DIRECTORY (to sign it, or to inspect it)."""
    from reconciler.artifact.store import ArtifactStore, StoreError

    try:
        found = ArtifactStore(store)
        artifact_id = found.resolve(artifact_id)
        found.export(artifact_id, directory)
    except (StoreError, FileExistsError) as exc:
        _fail(str(exc))
    click.echo(f"exported {artifact_id} to {directory}")
