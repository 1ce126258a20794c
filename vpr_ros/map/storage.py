"""Atomic map saves: files written with their checksum, directories swapped into place.

:meth:`MapDatabase.save` is atomic, also against a process killed at any point (the directories
are exchanged in one ``renameat2`` call; the next save removes what a killed one left behind).
:func:`unchanged_directory` lets a load prove that every file it read came from one saved map.
"""

from contextlib import contextmanager
import ctypes
import errno
import functools
import glob
import hashlib
import logging
import os
from pathlib import Path
import shutil
from typing import Any, Callable, Iterator, Optional
import uuid

from vpr_ros.errors import MapChangedError, MapError, MapWriteError
from vpr_ros.map.manifest import MANIFEST_FILE

LOG = logging.getLogger(__name__)

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_WRITE_CAUSES = {errno.ENOSPC: 'the disk is full', errno.EDQUOT: 'the disk quota is exceeded',
                 errno.EFBIG: 'a file exceeds the file size limit',
                 errno.EROFS: 'the file system is read-only', errno.EACCES: 'permission denied',
                 errno.EPERM: 'operation not permitted', errno.ENOENT: 'a directory is missing'}


class HashingWriter:
    """A write-only file wrapper that counts bytes and computes their SHA-256."""

    def __init__(self, raw: Any):
        self._raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: Any) -> int:
        """Write ``data``, adding it to the byte count and the hash."""
        view = memoryview(data).cast('B')
        self.sha256.update(view)
        self.size += len(view)
        return self._raw.write(view)


def write_file(path: Path, fill: Callable[[HashingWriter], None]) -> dict:
    """Write ``path`` through ``fill``, fsync it, and return its sha256 and byte size."""
    with open(path, 'wb') as raw:
        writer = HashingWriter(raw)
        fill(writer)
        raw.flush()
        os.fsync(raw.fileno())
    return {'sha256': writer.sha256.hexdigest(), 'bytes': writer.size}


def fsync_dir(path: Path) -> None:
    """Flush the entries of directory ``path`` to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sibling(target: Path, tag: str) -> Path:
    """Return a new hidden sibling name of ``target``; it records this process's id."""
    return target.parent / f'.{target.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:12]}'


def _owner_alive(path: Path) -> bool:
    """Return False when the process recorded in a sibling's name no longer runs."""
    parts = path.name.rsplit('-', 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return True  # not named by sibling: never touched
    pid = int(parts[1])
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _stale_siblings(target: Path, tag: str) -> list[Path]:
    """Return the ``tag`` siblings of ``target`` left by processes that no longer run."""
    pattern = f'.{glob.escape(target.name)}.{tag}-*'
    return [p for p in sorted(target.parent.glob(pattern)) if not _owner_alive(p)]


def restore_aside(target: Path) -> Path:
    """Rename back a map that a killed save left aside (``.old-``) when ``target`` is missing.

    Only a save that cannot exchange directories atomically renames the old map aside; killed
    between its two renames it leaves no ``target``. Returns ``target``.
    """
    if target.exists() or not target.parent.is_dir():
        return target
    aside = [p for p in _stale_siblings(target, 'old') if (p / MANIFEST_FILE).is_file()]
    if aside:
        newest = max(aside, key=lambda p: p.stat().st_mtime)
        try:
            os.rename(newest, target)
            LOG.warning('restored map %s left aside by an interrupted save', newest)
        except OSError as exc:
            LOG.warning('cannot restore map %s left aside by an interrupted save: %s', newest, exc)
    return target


def clean_stale(target: Path) -> None:
    """Recover from killed saves of ``target``: restore a map left aside, remove temporaries.

    A killed save leaves a ``.tmp-`` directory (a partial new map, or the previous map swapped
    out of place), and possibly the previous map at ``.old-`` (see :func:`restore_aside`).
    """
    restore_aside(target)
    for path in _stale_siblings(target, 'old') + _stale_siblings(target, 'tmp'):
        LOG.info('removing %s left by an interrupted save', path)
        shutil.rmtree(path, ignore_errors=True)


def check_replaceable(target: Path) -> None:
    """Refuse to replace anything at ``target`` except a map directory or an empty directory."""
    if not target.exists():
        return
    if not target.is_dir() or not ((target / MANIFEST_FILE).is_file()
                                   or not any(target.iterdir())):
        raise MapError(f'refusing to replace {target}: it exists and is not a map directory')


@functools.lru_cache(maxsize=1)
def _renameat2() -> Optional[Callable]:
    """Return libc's ``renameat2`` (Linux, glibc 2.28 or later), or None where it is absent."""
    try:
        call = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError, TypeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call


def _exchange(a: Path, b: Path) -> bool:
    """Swap directories ``a`` and ``b`` in one atomic step; return False where unsupported."""
    call = _renameat2()
    if call is None:
        return False
    if call(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def swap_into_place(new_dir: Path, target: Path) -> None:
    """Move ``new_dir`` to ``target`` so that ``target`` always holds one whole map.

    An existing map is exchanged with the new one in one atomic ``renameat2(RENAME_EXCHANGE)``
    (Linux); the previous map then sits in ``new_dir``, which is removed. Where the exchange is
    unsupported the old map is renamed aside first: a crash between the two renames leaves no
    directory at ``target`` and the previous map, intact, at ``.<name>.old-*`` beside it
    (the next load or save of ``target`` renames it back); never a partial map.
    """
    if target.exists() and _exchange(new_dir, target):
        fsync_dir(target.parent)
        shutil.rmtree(new_dir, ignore_errors=True)
        return
    old = None
    if target.exists():
        old = sibling(target, 'old')
        os.rename(target, old)
    try:
        os.rename(new_dir, target)
    except BaseException:
        if old is not None:
            os.rename(old, target)
        raise
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_error(target: Path, exc: OSError) -> MapWriteError:
    """Return the error of a save to ``target`` that failed with ``exc`` (naming the cause)."""
    cause = _WRITE_CAUSES.get(exc.errno, 'the file system refused the write')
    return MapWriteError(f'cannot save map {target}: {cause} ({exc}); no partial map was left '
                         f'at {target}')


def _directory_replaced(root: Path, pinned: os.stat_result) -> bool:
    try:
        now = os.stat(root)
    except OSError:
        return True
    return (now.st_dev, now.st_ino) != (pinned.st_dev, pinned.st_ino)


@contextmanager
def unchanged_directory(root: Path) -> Iterator[None]:
    """Raise :class:`MapChangedError` when a save replaced ``root`` while the block read it.

    The block reads files by path. An open descriptor keeps the directory's inode from being
    reused, so finding the same inode at ``root`` afterwards proves that every file came from
    that one directory (saves never modify a map directory in place). A failure inside the block
    while the directory was being replaced is reported as the change, not as corruption.
    """
    try:
        fd = os.open(root, os.O_RDONLY | getattr(os, 'O_DIRECTORY', 0))
    except OSError:
        yield          # nothing to pin: the block reports the missing directory itself
        return
    try:
        pinned = os.fstat(fd)
        try:
            yield
        except (MapError, OSError) as exc:
            if _directory_replaced(root, pinned):
                raise MapChangedError(f'map {root} was replaced by a concurrent save while '
                                      f'loading ({exc}); load it again') from exc
            raise
        if _directory_replaced(root, pinned):
            raise MapChangedError(f'map {root} was replaced by a concurrent save while loading; '
                                  'load it again')
    finally:
        os.close(fd)
