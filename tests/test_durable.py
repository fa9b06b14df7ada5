"""write_atomic: the new content or the old one, never a mix, and no temporary file left behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from reconciler import durable
from reconciler.durable import write_atomic


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_it_writes_and_replaces(tmp_path: Path):
    target = tmp_path / "state.json"
    write_atomic(target, b'{"active": "a"}')
    assert target.read_bytes() == b'{"active": "a"}'
    write_atomic(target, b'{"active": "b"}')
    assert target.read_bytes() == b'{"active": "b"}'
    assert _leftovers(tmp_path) == []


def test_mode_is_exact_and_the_default_follows_the_umask(tmp_path: Path):
    write_atomic(tmp_path / "secret", b"s3cret", mode=0o600)
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o600
    old = os.umask(0o027)
    try:
        write_atomic(tmp_path / "plain", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o640


def test_a_failed_rename_leaves_the_old_content_and_no_temporary_file(tmp_path: Path, monkeypatch):
    target = tmp_path / "timestamp.json"
    target.write_bytes(b"old")

    def refuse(src, dst):
        raise OSError("injected: the disk went away")

    monkeypatch.setattr(durable.os, "replace", refuse)
    with pytest.raises(OSError, match="injected"):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_a_failed_sync_leaves_the_old_content_and_no_temporary_file(tmp_path: Path, monkeypatch):
    target = tmp_path / "state.json"
    target.write_bytes(b"old")

    def refuse(fd):
        raise OSError("injected: EIO")

    monkeypatch.setattr(durable.os, "fsync", refuse)
    with pytest.raises(OSError, match="EIO"):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_a_target_that_cannot_be_replaced_leaves_no_temporary_file(tmp_path: Path):
    """A real failure, no injection: a folder where the file should go (root may write anywhere else)."""
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "inside").write_bytes(b"kept")
    with pytest.raises(OSError):
        write_atomic(tmp_path / "busy", b"new")
    assert (tmp_path / "busy" / "inside").read_bytes() == b"kept"
    assert _leftovers(tmp_path) == []


def test_the_temporary_file_can_live_in_another_folder(tmp_path: Path):
    """The artifact store keeps writes in progress out of the folders it lists."""
    (tmp_path / "tmp").mkdir()
    (tmp_path / "blobs").mkdir()
    write_atomic(tmp_path / "blobs" / "abc", b"blob", temp_dir=tmp_path / "tmp")
    assert (tmp_path / "blobs" / "abc").read_bytes() == b"blob"
    assert list((tmp_path / "tmp").iterdir()) == [] and [p.name for p in (tmp_path / "blobs").iterdir()] == ["abc"]
