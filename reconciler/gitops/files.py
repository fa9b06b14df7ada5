"""Read a fleet repo's spec files from a directory on disk.

Who calls it: ``edgectl validate`` and anything that loads a checkout. It only reads: every ``*.yaml`` /
``*.yml`` below the root, skipping hidden files and folders (``.git``, ``.github`` workflows are not
fleet documents). Problems (a missing root, an unreadable or oversized file) become
``SourceFile.read_error`` values so the loader reports them with the other errors; nothing here raises
for a bad repo except a root that does not exist.
"""

from __future__ import annotations

import os
from pathlib import Path

from reconciler.api import Limits, SourceFile

SPEC_SUFFIXES = (".yaml", ".yml")


class FleetPathError(Exception):
    """The fleet repo path itself is unusable (missing, not a directory or file, unreadable)."""


def read_fleet_dir(root: str | os.PathLike[str], limits: Limits | None = None) -> list[SourceFile]:
    """Every spec file below ``root`` (or ``root`` itself when it is a file), with repo-relative paths."""
    limits = limits or Limits()
    base = Path(root)
    if not base.exists():
        raise FleetPathError(f"{base}: no such file or directory")
    if base.is_file():
        return [_read(base, base.name, limits)]
    if not base.is_dir():
        raise FleetPathError(f"{base}: not a file or directory")
    files: list[SourceFile] = []
    walk_errors: list[OSError] = []
    for folder, dirs, names in os.walk(base, onerror=walk_errors.append):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith(".") or not name.endswith(SPEC_SUFFIXES):
                continue
            path = Path(folder, name)
            files.append(_read(path, path.relative_to(base).as_posix(), limits))
    for error in walk_errors:
        where = Path(error.filename).relative_to(base).as_posix() if error.filename else str(base)
        if where == ".":
            raise FleetPathError(f"{base}: {error.strerror or error}")
        files.append(SourceFile(where, read_error=f"cannot read directory: {error.strerror or error}"))
    return files


def _read(path: Path, display: str, limits: Limits) -> SourceFile:
    try:
        size = path.stat().st_size
        if size > limits.max_file_bytes:
            return SourceFile(display, read_error=f"file is {size} bytes, over the limit of {limits.max_file_bytes}")
        with path.open("rb") as handle:
            # Read one byte past the limit: the file may have grown since stat().
            content = handle.read(limits.max_file_bytes + 1)
    except OSError as exc:
        return SourceFile(display, read_error=f"cannot read file: {exc.strerror or exc}")
    if len(content) > limits.max_file_bytes:
        return SourceFile(display, read_error=f"file is over the limit of {limits.max_file_bytes} bytes")
    return SourceFile(display, content)
