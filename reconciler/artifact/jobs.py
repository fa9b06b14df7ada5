"""Build jobs on disk: what the controller asked to be built, and what the build said.

The controller and the build worker (a child process on the local backend, a Kubernetes Job's pod on a cluster)
share a directory, ``BUILDS/<key>/``, on the volume that holds the artifact store::

    job.json      what to build: model, version, profile, the fleet commit of the recipe (written once)
    lock          held (flock) by the worker while it builds: a lock nobody holds means nobody builds
    attempts      one line per start, so a worker that dies is started again a bounded number of times
    result.json   the outcome: Succeeded with the artifact id, or Refused with the build report (written once)
    log           what the worker printed

The key is a digest of what the specs say about the build (model, version, data paths, gates, profile, recipe)
and of the installed release, never of the commit: an unrelated merge does not start the same build again, a
changed recipe does. A directory made with ``O_EXCL`` and a worker that builds only under the lock mean that a
build runs once, across restarts of the controller and across replicas sharing the volume.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from reconciler import release
from reconciler.api import FleetTree
from reconciler.durable import write_atomic

from .manifest import canonical_json

MAX_ATTEMPTS = 3
"""Starts of a worker that ended without a result before the job counts as Failed."""


class JobState(StrEnum):
    QUEUED = "Queued"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    REFUSED = "Refused"
    """The build ran and its gates (or its inputs) refused: the report says which, by how much."""
    FAILED = "Failed"
    """The worker ended without a result ``MAX_ATTEMPTS`` times (killed, out of memory, a missing image)."""


@dataclass(frozen=True)
class BuildRequest:
    model: str
    version: str
    profile: str
    commit: str
    """The fleet commit whose recipe the build reads."""
    key: str

    @property
    def name(self) -> str:
        return f"{self.model} {self.version} for {self.profile}"

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "profile": self.profile, "commit": self.commit,
                "key": self.key}  # fmt: skip


@dataclass(frozen=True)
class BuildResult:
    state: JobState
    artifact: str | None = None
    report: str = ""
    """Why a build was refused (the gate and by how much), or a summary of what was selected."""
    started: str = ""
    finished: str = ""
    seconds: float = 0.0
    released: str | None = None
    """The release folder the builder signed, when it signs."""

    def to_json(self) -> dict[str, Any]:
        body = {"state": str(self.state), "artifact": self.artifact, "report": self.report, "started": self.started,
                "finished": self.finished, "seconds": round(self.seconds, 3), "released": self.released}  # fmt: skip
        return {k: v for k, v in body.items() if v not in (None, "")}


@dataclass(frozen=True)
class BuildJob:
    """One job's directory, as read now."""

    directory: Path
    request: BuildRequest
    state: JobState
    result: BuildResult | None = None
    attempts: int = 0
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.request.key


def recipe_key(tree: FleetTree, model: str, version: str, profile: str) -> str:
    """The digest a build job is named by (see the module's docstring)."""
    spec = tree.models[model].spec
    recipe = next(r for r in spec.recipes if r.profile == profile)
    entry = next(v for v in spec.versions if v.version == version)
    material = {
        "release": release(),
        "model": model,
        "version": entry.model_dump(mode="json", by_alias=True),
        "data": spec.data.model_dump(mode="json", by_alias=True),
        "gates": spec.gates.model_dump(mode="json", by_alias=True),
        "profile": tree.profiles[profile].spec.model_dump(mode="json", by_alias=True),
        "recipe": recipe.model_dump(mode="json", by_alias=True, exclude_unset=True),
    }
    return hashlib.sha256(canonical_json(material)).hexdigest()


def wanted_builds(tree: FleetTree, commit: str, stable: Mapping[str, str | None] | None = None) -> list[BuildRequest]:
    """Every (model, version, profile) an active rollout needs: its model's recipes for its version, and for the
    version the devices outside its steps keep (``stable``: rollout -> version)."""
    found = {}
    for name, rollout in tree.rollouts.items():
        spec = rollout.spec
        model = tree.models.get(spec.model)
        if not rollout.active or model is None:
            continue
        known = {v.version for v in model.spec.versions}
        for version in {spec.version, (stable or {}).get(name)} & known:
            for recipe in model.spec.recipes:
                if recipe.profile in tree.profiles:
                    key = recipe_key(tree, spec.model, version, recipe.profile)
                    found[key] = BuildRequest(spec.model, version, recipe.profile, commit, key)
    return sorted(found.values(), key=lambda r: (r.model, r.version, r.profile))


class JobDirectory:
    """``BUILDS/``: every job, by key."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"not a build key: {key!r}")
        return self.root / key

    def create(self, request: BuildRequest, now: datetime) -> bool:
        """Make the job's directory; False when it exists (another cycle or replica made it first)."""
        directory = self.path(request.key)
        try:
            directory.mkdir()
        except FileExistsError:
            return False
        body = {**request.to_json(), "created": now.astimezone(UTC).isoformat(timespec="seconds")}
        write_atomic(directory / "job.json", canonical_json(body))
        return True

    def read(self, key: str) -> BuildJob | None:
        directory = self.path(key)
        try:
            body = json.loads((directory / "job.json").read_bytes())
        except (FileNotFoundError, ValueError):
            return None  # a directory whose job.json is not written yet: the cycle that made it writes it
        request = BuildRequest(body["model"], body["version"], body["profile"], body["commit"], body["key"])
        result = read_result(directory)
        attempts = _attempts(directory)
        if result is not None:
            state = result.state
        elif is_running(directory):
            state = JobState.RUNNING
        elif attempts >= MAX_ATTEMPTS:
            state = JobState.FAILED
        else:
            state = JobState.QUEUED
        return BuildJob(directory, request, state, result, attempts, str(body.get("created", "")))

    def all(self) -> list[BuildJob]:
        jobs = []
        for entry in sorted(self.root.iterdir()):
            if entry.is_dir() and len(entry.name) == 64:
                job = self.read(entry.name)
                if job is not None:
                    jobs.append(job)
        return jobs

    def count_start(self, key: str) -> None:
        with (self.path(key) / "attempts").open("a") as handle:
            handle.write(datetime.now(UTC).isoformat(timespec="seconds") + "\n")


def read_result(directory: Path) -> BuildResult | None:
    try:
        body = json.loads((directory / "result.json").read_bytes())
        return BuildResult(JobState(body["state"]), body.get("artifact"), str(body.get("report", "")),
                           str(body.get("started", "")), str(body.get("finished", "")), float(body.get("seconds", 0)),
                           body.get("released"))  # fmt: skip
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        return BuildResult(JobState.FAILED, report=f"unreadable result.json: {exc}")


def write_result(directory: Path, result: BuildResult) -> None:
    write_atomic(directory / "result.json", canonical_json(result.to_json()))


def _attempts(directory: Path) -> int:
    try:
        return len((directory / "attempts").read_text().splitlines())
    except FileNotFoundError:
        return 0


def is_running(directory: Path) -> bool:
    """Whether a worker holds the job's lock now (a dead worker's lock is released by the kernel)."""
    try:
        fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return True
        raise
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


@contextmanager
def holding(directory: Path, fd: int | None = None) -> Iterator[bool]:
    """Take the job's lock for a build: yields False (and builds nothing) when another worker holds it. ``fd``:
    the lock as the worker's parent took it before starting it (:func:`take_lock`), so that no moment passes
    between the start and the lock in which a job looks like nobody builds it."""
    fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o644) if fd is None else fd
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # on an inherited lock: already ours, a no-op
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                yield False
                return
            raise
        yield True
    finally:
        os.close(fd)


def take_lock(directory: Path) -> int | None:
    """The job's lock, taken and held on the returned descriptor (for a child to inherit); None when a worker
    holds it already."""
    fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd
