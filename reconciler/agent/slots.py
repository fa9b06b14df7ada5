"""A/B slots per model on the device: the active model is never touched while a new one is installed.

Who calls it: the agent. Layout under the data directory::

    models/<model>/slots/a/         one complete, verified artifact (files + manifest + release + bundle)
    models/<model>/slots/b/         the other one (the previous version, or the one being installed)
    models/<model>/active -> slots/a
    models/<model>/state.json       versions per slot, the highest minimumCounter seen

The rules that make a crash at any moment harmless:

- a new artifact is written only into the *inactive* slot: files written, fsynced, folder fsynced;
- the ``active`` link is switched with one ``rename`` of a new link over the old one (atomic on POSIX),
  then the folder is fsynced, and only after the new slot passed its health check;
- ``state.json`` is written the same way (temp file, fsync, rename) after the switch; after a crash
  between switch and state, the link is the truth and the state is rebuilt from the slots' manifests.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from reconciler.durable import fsync_dir, move_into_place, sync_file, write_atomic

SLOTS = ("a", "b")


@dataclass(frozen=True)
class SlotState:
    active: str | None
    versions: dict[str, str]
    minimum_counter: int = 0

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
    def __init__(self, data_dir: Path, model: str) -> None:
        self.root = Path(data_dir) / "models" / model
        self.model = model

    def slot(self, name: str) -> Path:
        return self.root / "slots" / name

    @property
    def active_link(self) -> Path:
        return self.root / "active"

    def state(self) -> SlotState:
        active = self._active_from_link()
        versions = {name: version for name in SLOTS if (version := self._slot_version(name))}
        minimum = 0
        with contextlib.suppress(OSError, ValueError, AttributeError):
            minimum = int(json.loads((self.root / "state.json").read_text()).get("minimumCounter", 0))
        return SlotState(active, versions, minimum)

    def active_dir(self) -> Path | None:
        active = self._active_from_link()
        return self.slot(active) if active else None

    def stage(self, source: Path) -> Path:
        """Copy a verified artifact folder into the inactive slot (fsynced); returns the slot."""
        target = self.slot(self.state().inactive)
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for file in sorted(Path(source).iterdir()):
            with file.open("rb") as src, (target / file.name).open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
                sync_file(dst)
        fsync_dir(target)
        fsync_dir(target.parent)
        return target

    def activate(self, slot: Path, minimum_counter: int | None = None) -> SlotState:
        """Point ``active`` at ``slot`` atomically, then record the state."""
        name = Path(slot).name
        if name not in SLOTS:
            raise ValueError(f"not a slot: {slot}")
        tmp = self.root / f".active-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        os.symlink(f"slots/{name}", tmp)
        move_into_place(tmp, self.active_link)
        state = self.state()
        floor = max(state.minimum_counter, minimum_counter or 0)
        self._write_state({"active": name, "versions": state.versions, "minimumCounter": floor})
        return SlotState(name, state.versions, floor)

    def _active_from_link(self) -> str | None:
        try:
            target = os.readlink(self.active_link)
        except OSError:
            return None
        name = Path(target).name
        return name if name in SLOTS and self.slot(name).is_dir() else None

    def _slot_version(self, name: str) -> str | None:
        try:
            return str(json.loads((self.slot(name) / "manifest.json").read_bytes())["version"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _write_state(self, body: dict) -> None:
        write_atomic(self.root / "state.json", json.dumps(body, sort_keys=True).encode())
