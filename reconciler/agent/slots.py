"""A/B slots per model on the device: the active model is never touched while a new one is installed.

Who calls it: the agent (the executor of :mod:`.phases`) and the model server (which slot to load). Layout under
the data directory::

    models/<model>/slots/a/         one complete, verified artifact (files + manifest + release + bundle)
    models/<model>/slots/b/         the other one (the previous version, or the one being installed)
    models/<model>/state.json       which slot is active; the trial, the good version, the revocation floor,
                                    a failure kept for a version, a version staged for the maintenance window
    models/<model>/active -> slots/a   kept in step with state.json, for people and tools
    models/<model>/kept/<version>/  earlier versions that passed their trial here (a rollback without a download)

The rules that make a crash at any moment harmless:

- a new artifact is written only into the *inactive* slot: files written, fsynced, folder fsynced;
- ``state.json`` is the truth, and every step of the device's life is one atomic write of it (temporary file,
  fsync, rename, folder fsync): the switch and the trial it starts are one write; marking the version good and
  raising the revocation floor are one write; a rollback and the failure it records are one write. A kill
  before the rename leaves the step undone, after it done, never half;
- the ``active`` link follows the state; after a crash between the two it is set again on the next read.

Kept versions: when a slot that holds a version which passed its trial on this device is about to be overwritten,
its folder is moved (one rename) into ``kept/`` instead of deleted, and :class:`KeepPolicy` prunes the oldest ones
beyond a count and a disk budget. ``kept/`` is a cache, never trusted: the agent takes a file from it (or from a
slot) only when it has the length and sha256 that the signed metadata names for the file it needs
(:meth:`ModelSlots.copy_local`), and verifies the result like any download.

Model names come from the fleet: they are pattern-checked (:func:`check_name`) before any path is made of
them, and slot folders are never followed through a symlink.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from reconciler.durable import fsync_dir, move_into_place, sync_file, write_atomic

from .faults import crash_point
from .phases import Trial

SLOTS = ("a", "b")
KEEP_RESERVE = 64 * 1024 * 1024
"""Free disk a kept version must leave besides the version being installed."""
HISTORY = 16
"""Versions that passed their trial, remembered per model (newest last): which slots are worth keeping."""
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}")


class UnsafeNameError(ValueError):
    """A model, version or profile name from an assignment that must not become part of a path."""


def check_name(kind: str, value: str) -> str:
    """``value`` when it is a plain DNS-style name (or, for a version, a plain version string); else refuse it
    before it touches the file system (``../../x``, absolute paths, NUL, over-long names)."""
    pattern = _VERSION if kind == "version" else _NAME
    if not isinstance(value, str) or len(value) > 253 or not pattern.fullmatch(value):
        raise UnsafeNameError(f"{kind} {value!r} is not a valid name")
    return value


@dataclass(frozen=True)
class KeepPolicy:
    """How many good versions stay on the device, and how much disk the ones outside the two slots may use."""

    versions: int = 3
    """Versions that passed their trial, the active one included (2: only the two slots, nothing kept)."""
    budget_bytes: int = 1 << 30
    """Disk for ``kept/`` (the oldest go first when it is over)."""


@dataclass(frozen=True)
class SlotState:
    active: str | None
    versions: dict[str, str]
    minimum_counter: int = 0
    good: str | None = None
    """The version that passed its trial last (the one a rollback returns to)."""
    trial: Trial | None = None
    failed: dict[str, Any] | None = None
    """``{version, generation, phase, reason, message}``: not tried again for that generation."""
    staged: dict[str, Any] | None = None
    """``{version, minimumCounter}``: verified and tested in the inactive slot, waiting for its window."""
    history: tuple[str, ...] = ()
    """Versions that passed their trial here, newest last."""

    @property
    def inactive(self) -> str:
        return "b" if self.active == "a" else "a"

    @property
    def active_version(self) -> str | None:
        return self.versions.get(self.active) if self.active else None

    @property
    def previous_version(self) -> str | None:
        return self.versions.get(self.inactive)


class ModelSlots:
    def __init__(self, data_dir: Path, model: str, keep: KeepPolicy | None = None) -> None:
        self.model = check_name("model", model)
        self.root = Path(data_dir) / "models" / model
        self.keep = keep or KeepPolicy()

    def slot(self, name: str) -> Path:
        return self.root / "slots" / name

    @property
    def active_link(self) -> Path:
        return self.root / "active"

    # --- reads -------------------------------------------------------------------------------------

    def state(self) -> SlotState:
        raw = self._raw()
        versions = {name: version for name in SLOTS if (version := self._slot_version(name))}
        active = raw.get("active") if "active" in raw else self._active_from_link()
        if active not in SLOTS or active not in versions:
            active = None
        trial = None
        with contextlib.suppress(KeyError, TypeError, ValueError):
            record = raw["trial"]
            trial = Trial(str(record["version"]), datetime.fromisoformat(record["started"]),
                          int(record.get("minimumCounter", 0)))  # fmt: skip
        minimum = 0
        with contextlib.suppress(TypeError, ValueError):
            minimum = int(raw.get("minimumCounter", 0))
        failed = raw.get("failed") if isinstance(raw.get("failed"), dict) else None
        staged = raw.get("staged") if isinstance(raw.get("staged"), dict) else None
        good = raw.get("good") if "good" in raw else (versions.get(active) if active else None)  # older layouts
        history = raw.get("history") if isinstance(raw.get("history"), list) else ([good] if good else [])
        return SlotState(active, versions, minimum, good, trial, failed, staged, tuple(map(str, history)))

    def active_dir(self) -> Path | None:
        active = self.state().active
        return self.slot(active) if active else None

    # --- steps: each one atomic state write ---------------------------------------------------------

    def kept_versions(self) -> dict[str, Path]:
        """Version -> folder of each kept version, newest first."""
        folders = []
        with contextlib.suppress(OSError):
            for folder in (self.root / "kept").iterdir():
                if not folder.is_symlink() and folder.is_dir() and _VERSION.fullmatch(folder.name):
                    folders.append((folder.stat().st_mtime_ns, folder.name, folder))
        return {name: folder for _, name, folder in sorted(folders, reverse=True)}

    def copy_local(self, name: str, length: int, sha256: str, destination: Path) -> Path | None:
        """Copy a file already on the device that has exactly ``length`` bytes and ``sha256`` (a slot's or a kept
        version's file called ``name``) to ``destination``; returns where it came from, or None (download it)."""
        state = self.state()
        folders = [self.slot(slot) for slot in (state.inactive, state.active) if slot in state.versions]
        for folder in [*folders, *self.kept_versions().values()]:
            candidate = folder / name
            try:
                if candidate.is_symlink() or not candidate.is_file() or candidate.stat().st_size != length:
                    continue
                digest = hashlib.sha256()
                with candidate.open("rb") as src, destination.open("wb") as dst:
                    while chunk := src.read(1 << 20):
                        digest.update(chunk)
                        dst.write(chunk)
            except OSError:  # an unreadable copy is no copy: the next candidate, else the download
                destination.unlink(missing_ok=True)
                continue
            if digest.hexdigest() == sha256:
                return candidate
            destination.unlink()
        return None

    def prune(self) -> list[str]:
        """Drop kept versions beyond the policy (oldest first) and those a slot holds again; returns the dropped.
        Runs after each step that changes which versions are good or in a slot."""
        policy, state = self.keep, self.state()
        in_slots = set(state.versions.values())
        room = max(0, policy.versions - len(in_slots & set(state.history)))
        used, dropped = 0, []
        for version, folder in self.kept_versions().items():
            size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file() and not f.is_symlink())
            if version in in_slots or version not in state.history or room == 0 or used + size > policy.budget_bytes:
                shutil.rmtree(folder, ignore_errors=True)
                dropped.append(version)
                continue
            room, used = room - 1, used + size
        return dropped

    def stage(self, source: Path) -> Path:
        """Copy a verified artifact folder into the inactive slot (fsynced); returns the slot. A version staged
        there before is forgotten first: its files are about to be replaced. A version there that passed its
        trial here is moved to ``kept/`` (one rename), not deleted."""
        state = self.state()
        if state.staged is not None:
            self._write(staged=None)
        target = self.slot(state.inactive)
        previous = state.versions.get(state.inactive)
        if target.is_symlink():
            target.unlink()
        elif previous in state.history and previous not in self.kept_versions() and self._room_to_keep(target, source):
            kept = self.root / "kept" / previous
            kept.parent.mkdir(exist_ok=True)
            os.rename(target, kept)
            os.utime(kept)  # the newest kept version: pruned last
            fsync_dir(kept.parent)
        elif target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for file in sorted(Path(source).iterdir()):
            if file.is_symlink() or not file.is_file():
                raise UnsafeNameError(f"{file.name}: not a plain file")
            with file.open("rb") as src, (target / file.name).open("xb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
                sync_file(dst)
            crash_point("mid-copy")
        fsync_dir(target)
        fsync_dir(target.parent)
        self.prune()
        return target

    def record_staged(self, version: str, minimum_counter: int) -> None:
        self._write(staged={"version": version, "minimumCounter": minimum_counter})

    def record_failure(self, failure: dict[str, Any]) -> None:
        self._write(failed=failure)

    def switch(self, slot: Path, trial: Trial) -> SlotState:
        """Make ``slot`` active with ``trial`` running, in one write; the floor is raised only at :meth:`mark_good`."""
        name = self._slot_name(slot)
        self._write(active=name, trial={"version": trial.version, "started": trial.started.isoformat(),
                                        "minimumCounter": trial.minimum_counter}, staged=None, failed=None)  # fmt: skip
        self._link(name)
        return self.state()

    def mark_good(self, minimum_counter: int) -> SlotState:
        """The version on trial passed: it is the good one now, and the revocation floor rises, in one write."""
        state = self.state()
        floor = max(state.minimum_counter, minimum_counter)
        self._write(good=state.active_version, trial=None, minimumCounter=floor,
                    history=_remember(state.history, state.active_version))  # fmt: skip
        self.prune()
        return self.state()

    def roll_back(self, failure: dict[str, Any]) -> SlotState:
        """Back to the other slot (the version before the trial) with the failure recorded, in one write. With
        no other verified version the device serves nothing rather than a model that failed on it."""
        state = self.state()
        back = state.inactive if state.inactive in state.versions else None
        history = [v for v in state.history if v != state.active_version]  # failed here now: not worth keeping
        self._write(active=back, trial=None, failed=failure, good=state.versions.get(back) if back else None,
                    history=history)  # fmt: skip
        self._link(back)
        return self.state()

    def end_trial(self) -> SlotState:
        """The version on trial is superseded: back to the other slot when it holds the good version (one write,
        no failure recorded); with no good version there, the trial just ends and the version keeps serving."""
        state = self.state()
        back = state.inactive if state.inactive in state.versions and state.good == state.previous_version else None
        if back is None:
            self._write(trial=None)
            return self.state()
        self._write(active=back, trial=None)
        self._link(back)
        return self.state()

    def activate(self, slot: Path, minimum_counter: int | None = None) -> SlotState:
        """Switch and mark good at once (a version that needs no trial: tests, pre-staged images)."""
        name = self._slot_name(slot)
        state = self.state()
        floor = max(state.minimum_counter, minimum_counter or 0)
        self._write(active=name, trial=None, staged=None, failed=None, good=state.versions.get(name),
                    minimumCounter=floor, history=_remember(state.history, state.versions.get(name)))  # fmt: skip
        self._link(name)
        return self.state()

    # --- internals ---------------------------------------------------------------------------------

    def _room_to_keep(self, slot: Path, incoming: Path) -> bool:
        """Whether keeping ``slot``'s version leaves room for the version coming in (plus a reserve): a device
        short of disk gives up a kept version before it fails to install the new one."""
        if self.keep.versions <= 2:
            return False
        size = sum(f.stat().st_size for f in slot.iterdir() if f.is_file() and not f.is_symlink())
        needed = sum(f.stat().st_size for f in Path(incoming).iterdir() if f.is_file()) + KEEP_RESERVE
        return size <= self.keep.budget_bytes and shutil.disk_usage(self.root).free >= needed

    def _slot_name(self, slot: Path) -> str:
        name = Path(slot).name
        if name not in SLOTS or Path(slot).parent != self.root / "slots":
            raise ValueError(f"not a slot of {self.model}: {slot}")
        return name

    def _raw(self) -> dict[str, Any]:
        try:
            raw = json.loads((self.root / "state.json").read_text())
        except (OSError, ValueError):
            return {}
        return raw if isinstance(raw, dict) else {}

    def _write(self, **changes: Any) -> None:
        body = self._raw()
        for key, value in changes.items():
            if value is None:
                body.pop(key, None)
            else:
                body[key] = value
        if "active" in changes and changes["active"] is None:
            body["active"] = None  # explicitly nothing: not "ask the link"
        self.root.mkdir(parents=True, exist_ok=True)
        data = json.dumps(body, sort_keys=True).encode()
        if "active" in changes:  # a switch or a rollback: the write a kill must never tear
            (self.root / ".state.json.partial").write_bytes(data[: len(data) // 2])
            crash_point("mid-state-write")
            (self.root / ".state.json.partial").unlink()
        write_atomic(self.root / "state.json", data)

    def _link(self, name: str | None) -> None:
        """The ``active`` link follows the state (a convenience: state.json decides)."""
        if name is None:
            self.active_link.unlink(missing_ok=True)
            return
        tmp = self.root / f".active-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        os.symlink(f"slots/{name}", tmp)
        move_into_place(tmp, self.active_link)

    def _active_from_link(self) -> str | None:
        try:
            target = os.readlink(self.active_link)
        except OSError:
            return None
        name = Path(target).name
        return name if name in SLOTS else None

    def _slot_version(self, name: str) -> str | None:
        slot = self.slot(name)
        if slot.is_symlink() or not slot.is_dir():
            return None  # a slot is a real folder written by the agent, never a link planted in the data dir
        try:
            return str(json.loads((slot / "manifest.json").read_bytes())["version"])
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _remember(history: tuple[str, ...], version: str | None) -> list[str]:
    """``history`` with ``version`` as the newest good one (once), at most :data:`HISTORY` long."""
    versions = [v for v in history if v != version] + ([version] if version else [])
    return versions[-HISTORY:]
