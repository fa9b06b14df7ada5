"""Durable writes: what the store, the TUF metadata and the device's slots need to survive a power loss.

Outside the layered packages on purpose: the build store (controller side) and the agent's slots and
downloads (device side) both need it, and neither may import the other.

A file is replaced, never rewritten in place: readers (and a device after a power cut) see the old content
or the new, never a torn mix. That takes four steps in this order, and each is here once: write a temporary
file in the target's file system, fsync it (the data is on disk before a name points at it), rename it over
the target, fsync the folder (the rename itself is on disk).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import BinaryIO


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (the directory entry itself)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_file(handle: BinaryIO) -> None:
    """Python's buffer, then the kernel's: the bytes written so far are on disk."""
    handle.flush()
    os.fsync(handle.fileno())


def move_into_place(source: Path, target: Path) -> None:
    """Rename a complete, synced file over ``target`` and make the rename durable (same file system only)."""
    os.replace(source, target)
    fsync_dir(Path(target).parent)


def write_atomic(path: Path, data: bytes, mode: int | None = None, *, temp_dir: Path | None = None) -> None:
    """Replace ``path`` with ``data``, all or nothing, durably.

    ``mode``: the file's permissions, set before any byte is written (0o600 for a secret); None gives what
    ``open()`` would (0o666 less the umask). ``temp_dir``: where the temporary file goes when the target's
    folder must hold only complete files (same file system; default the target's folder). On any failure
    the temporary file is removed and the target is as it was.
    """
    path = Path(path)
    folder = Path(temp_dir) if temp_dir is not None else path.parent
    tmp = folder / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            fd = -1  # the file object owns the descriptor now
            out.write(data)
            sync_file(out)
        move_into_place(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
