"""Atomic writes: the target holds the old or the new bytes, and no temporary is left behind."""

import os
from pathlib import Path

import pytest

from vpr_ros import atomic_file
from vpr_ros.atomic_file import write_bytes_atomic, write_text_atomic


def test_write_creates_parents_and_replaces(tmp_path: Path) -> None:
    """A first write creates the folders; a second one replaces the content."""
    target = tmp_path / 'a' / 'b' / 'report.md'
    assert write_text_atomic(target, 'first') == target
    write_bytes_atomic(target, b'second')
    assert target.read_bytes() == b'second'
    assert sorted(p.name for p in target.parent.iterdir()) == ['report.md']
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch) -> None:
    """When the rename fails, the old content stays and the temporary file is removed."""
    target = tmp_path / 'rows.csv'
    write_text_atomic(target, 'old')

    def fail(src: str, dst: str) -> None:
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(atomic_file.os, 'replace', fail)
    with pytest.raises(OSError, match='No space'):
        write_text_atomic(target, 'new')
    monkeypatch.setattr(atomic_file.os, 'replace', os.replace)
    assert target.read_text() == 'old'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['rows.csv']
