"""Atomic file writes: a temporary sibling, fsynced, then renamed over the target.

A reader sees the old file or the new one, never a partial write; a failed write leaves the old
file and no temporary behind.
"""

import os
from pathlib import Path
import tempfile
from typing import Union

PathLike = Union[str, Path]


def write_text_atomic(path: PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` atomically (see :func:`write_bytes_atomic`)."""
    return write_bytes_atomic(path, text.encode('utf-8'))


def write_bytes_atomic(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to a sibling temporary file, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, 'wb') as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
