"""Durable writes: what the store, the TUF metadata and the device's slots need to survive a power loss.

Outside the layered packages on purpose: the build store (controller side) and the agent's slots and
downloads (device side) both need it, and neither may import the other.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (the directory entry itself)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
