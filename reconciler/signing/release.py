"""Release statements: the model owner's half of the two-key rule (Uptane's image repository).

Who calls it: ``edgectl sign`` (writes and signs), ``reconciler.signing.verify`` (reads after the bundle
verified). ``release.json`` sits in the artifact directory and is covered by the same signature bundle as
the model and its manifest, so it cannot be moved to another artifact. It says:

- ``model``, ``version``: what the owner released (must match the artifact's manifest);
- ``profiles``: the hardware profiles it may run on (the manifest's own profile must be one of them);
- ``counter``: a number the owner raises with every release of the model;
- ``minimumCounter``: releases of this model below it are withdrawn. Devices remember the highest minimum
  they have seen, so a controller can still roll a device back to the previous release, but never to one
  the owner revoked.

Parsing is pure: bytes in, a :class:`Release` or :class:`RefusedError` out.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from reconciler.durable import write_atomic

from .errors import Refusal, RefusedError

RELEASE_NAME = "release.json"
KIND = "Release"
API_VERSION = "edgereconciler.io/v1alpha1"
MAX_RELEASE_BYTES = 64 * 1024
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class Release:
    model: str
    version: str
    profiles: tuple[str, ...]
    counter: int
    minimum_counter: int = 0

    def __post_init__(self) -> None:
        if not self.profiles:
            raise ValueError("a release names at least one profile")
        if self.counter < 1 or not 0 <= self.minimum_counter <= self.counter:
            raise ValueError(
                f"release counter must be >= 1 and minimumCounter between 0 and the counter "
                f"(got counter {self.counter}, minimumCounter {self.minimum_counter})"
            )

    def to_json(self) -> bytes:
        body = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "model": self.model,
            "version": self.version,
            "profiles": sorted(self.profiles),
            "counter": self.counter,
            "minimumCounter": self.minimum_counter,
        }
        return json.dumps(body, indent=2, sort_keys=True).encode() + b"\n"


def parse_release(data: bytes) -> Release:
    """A release statement from its (already signature-checked) bytes."""
    if len(data) > MAX_RELEASE_BYTES:
        raise RefusedError(Refusal.OVERSIZED, f"{RELEASE_NAME} is {len(data)} bytes, more than {MAX_RELEASE_BYTES}")
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RefusedError(Refusal.MALFORMED, f"{RELEASE_NAME} is not JSON: {exc}") from None
    if not isinstance(body, dict) or body.get("kind") != KIND or body.get("apiVersion") != API_VERSION:
        raise RefusedError(Refusal.MALFORMED, f"{RELEASE_NAME} is not a {API_VERSION} {KIND}")
    model, version, profiles = body.get("model"), body.get("version"), body.get("profiles")
    counter, minimum = body.get("counter"), body.get("minimumCounter", 0)
    problems = []
    if not isinstance(model, str) or not _NAME.match(model):
        problems.append("model must be a name")
    if not isinstance(version, str) or not version:
        problems.append("version must be a string")
    if not isinstance(profiles, list) or not all(isinstance(p, str) and _NAME.match(p) for p in profiles):
        problems.append("profiles must be a list of names")
    if type(counter) is not int or type(minimum) is not int:
        problems.append("counter and minimumCounter must be integers")
    if problems:
        raise RefusedError(Refusal.MALFORMED, f"{RELEASE_NAME}: {'; '.join(problems)}")
    try:
        return Release(model, version, tuple(profiles), counter, minimum)
    except ValueError as exc:
        raise RefusedError(Refusal.MALFORMED, f"{RELEASE_NAME}: {exc}") from None


def write_release(directory: Path, release: Release) -> Path:
    """Put the statement into the artifact directory; sign the directory afterwards so it is covered."""
    path = Path(directory) / RELEASE_NAME
    write_atomic(path, release.to_json())
    return path
