"""Map database: place descriptors, their metadata, dense tokens and a FAISS index.

A map holds one row per place image: an L2-normalised global descriptor (float32, searched by
inner product), a :class:`MapEntry` (time stamp, pose, GPS, source, SLAM node) and, for models with
a pair classifier, the dense tokens that re-ranking needs (stored as float16). Row ``i`` has id
``i``.

Index kinds (``IndexConfig.kind``), one :meth:`MapDatabase.search` API for all of them:

* ``flat``: exact inner product (``IndexFlatIP``).
* ``hnsw``: ``IndexHNSWFlat`` with the inner-product metric (approximate; CPU only, faiss has no
  GPU HNSW).
* ``ivfpq``: ``IndexIVFPQ`` (inner product, 8-bit codes). Training needs enough vectors: the index
  is trained, on every descriptor in the map, as soon as the map holds ``39 * max(ivf_nlist, 256)``
  entries (:func:`ivfpq_train_size`; 39 points per centroid is faiss's own minimum, 256 the
  centroids of each 8-bit sub-quantizer). Until then the map answers with exact search (a flat
  index), which is also the fastest choice for such small maps. Later additions are encoded with
  the trained codebooks and never retrain them.

With ``IndexConfig.use_gpu`` and ``faiss.get_num_gpus() > 0`` flat and IVF-PQ indexes run on GPU 0;
otherwise on CPU. The float32 descriptors are always kept in RAM as well: they are the source of
truth from which an index is rebuilt, retrained and verified.

On disk a map is a directory (see ``docs/architecture.md``)::

    manifest.json    format, version, model spec + digest, shapes, count, index kind/config,
                     sha256 and byte size of every other file
    index.faiss      faiss.write_index of the CPU index
    entries.jsonl    one JSON object per entry, ids 0..N-1 in order
    descriptors.npy  [N, D] float32
    tokens.f16       raw little-endian float16 [N, T, C] (only when the map stores tokens)

:meth:`MapDatabase.save` is atomic, also against a process killed at any point (the directories
are exchanged in one ``renameat2`` call; the next save removes what a killed one left behind);
:meth:`MapDatabase.load` checks every file and raises :class:`MapFormatError` or
:class:`MapMismatchError` naming the file and the problem. No file reaches a parser unchecked:
the ``.npy`` header and the faiss index layout (:mod:`vpr_ros.map.index_layout`) are checked
against the manifest and the file sizes first, and nothing is ever unpickled. Checksums
detect corruption and accidental edits; they are not a signature, so a deliberately forged map
whose checksums were recomputed is caught only by the structural cross-checks (shapes, counts, ids,
finite unit descriptors, and the flat/HNSW index vectors against ``descriptors.npy``).
"""

from contextlib import contextmanager
import ctypes
from dataclasses import dataclass, replace
import errno
import functools
import glob
import hashlib
import json
import logging
import math
import numbers
import os
from pathlib import Path
import shutil
import threading
import tokenize
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union
import uuid

import faiss
import numpy as np

from vpr_ros.config import config_from_dict, config_to_dict, IndexConfig
from vpr_ros.errors import (CheckpointError, ConfigError, MapChangedError, MapError,
                            MapFormatError, MapMismatchError, MapWriteError)
from vpr_ros.geometry import Pose
from vpr_ros.map.index_layout import check_index_bytes
from vpr_ros.models.spec import ModelSpec
from vpr_ros.openmp import faiss_threads

LOG = logging.getLogger(__name__)

MAP_FORMAT = 'vpr_ros.map'
MAP_FORMAT_VERSION = 1
MANIFEST_FILE = 'manifest.json'
INDEX_FILE = 'index.faiss'
ENTRIES_FILE = 'entries.jsonl'
DESCRIPTORS_FILE = 'descriptors.npy'
TOKENS_FILE = 'tokens.f16'
TOKEN_DTYPE = np.dtype('<f2')
UNASSIGNED_ID = -1
NORM_TOLERANCE = 1e-2
IVF_POINTS_PER_CENTROID = 39
PQ_BITS = 8
_CHUNK_BYTES = 4 << 20
MAX_MANIFEST_BYTES = 1 << 20
_INDEX_TYPES = {'flat': ('flat',), 'hnsw': ('hnsw',), 'ivfpq': ('flat', 'ivfpq')}
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_WRITE_CAUSES = {errno.ENOSPC: 'the disk is full', errno.EDQUOT: 'the disk quota is exceeded',
                 errno.EFBIG: 'a file exceeds the file size limit',
                 errno.EROFS: 'the file system is read-only', errno.EACCES: 'permission denied',
                 errno.EPERM: 'operation not permitted', errno.ENOENT: 'a directory is missing'}

EntryLike = Union['MapEntry', Mapping[str, Any]]


def _as_int(name: str, value: Any, optional: bool = False) -> Optional[int]:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise MapFormatError(f'map entry field {name} must be an integer, got {value!r}')
    return int(value)


def _as_gps(value: Any) -> Optional[tuple[float, float]]:
    if value is None:
        return None
    try:
        gps = tuple(float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise MapFormatError(f'map entry field gps must be two numbers, got {value!r}') from exc
    if len(gps) != 2 or not all(math.isfinite(v) for v in gps):
        raise MapFormatError(f'map entry field gps must be two finite numbers, got {value!r}')
    return gps


@dataclass(frozen=True)
class MapEntry:
    """One place in the map: when and where its image was taken and where it came from.

    ``id`` is the entry's row in the map; :meth:`MapDatabase.add` assigns it, so new entries pass
    ``UNASSIGNED_ID`` (-1). ``stamp_ns`` is the capture time in integer nanoseconds. ``pose`` is
    the camera pose in the map frame, if known. ``gps`` is ``(easting, northing)`` in metres in
    UTM (the zone is not stored), as read from ``@easting@northing@...`` image names; ``None`` when
    unknown. ``source`` is the image path, or ``'bag:<file>#<topic>@<stamp_ns>'`` for a frame read
    from a rosbag2 file. ``slam_node_id`` links the entry to a SLAM graph node (e.g. RTAB-Map).
    """

    id: int  # noqa: A003 (the on-disk field name)
    stamp_ns: int
    pose: Optional[Pose] = None
    gps: Optional[tuple[float, float]] = None
    source: str = ''
    slam_node_id: Optional[int] = None

    def __post_init__(self) -> None:
        """Check field types and normalise numbers to plain Python types."""
        object.__setattr__(self, 'id', _as_int('id', self.id))
        object.__setattr__(self, 'stamp_ns', _as_int('stamp_ns', self.stamp_ns))
        object.__setattr__(self, 'slam_node_id',
                           _as_int('slam_node_id', self.slam_node_id, optional=True))
        object.__setattr__(self, 'gps', _as_gps(self.gps))
        if self.pose is not None and not isinstance(self.pose, Pose):
            raise MapFormatError(f'map entry field pose must be a Pose, got {self.pose!r}')
        if not isinstance(self.source, str):
            raise MapFormatError(f'map entry field source must be a string, got {self.source!r}')

    def to_dict(self) -> dict:
        """Return a JSON-ready dictionary (the line format of ``entries.jsonl``)."""
        return {'id': self.id, 'stamp_ns': self.stamp_ns,
                'pose': None if self.pose is None else self.pose.to_dict(),
                'gps': None if self.gps is None else list(self.gps),
                'source': self.source, 'slam_node_id': self.slam_node_id}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> 'MapEntry':
        """Build an entry from :meth:`to_dict` output, naming a missing, unknown or bad field."""
        if not isinstance(data, Mapping):
            raise MapFormatError(f'map entry must be a JSON object, got {data!r}')
        known = {'id', 'stamp_ns', 'pose', 'gps', 'source', 'slam_node_id'}
        unknown = sorted(set(data) - known)
        missing = sorted({'id', 'stamp_ns', 'source'} - set(data))
        if unknown or missing:
            raise MapFormatError(f'map entry has unknown fields {unknown} / lacks {missing}')
        try:
            pose = None if data.get('pose') is None else Pose.from_dict(data['pose'])
        except (ConfigError, KeyError, TypeError, ValueError) as exc:
            raise MapFormatError(f'map entry field pose is malformed: {exc!r}') from exc
        return cls(data['id'], data['stamp_ns'], pose, data.get('gps'), data['source'],
                   data.get('slam_node_id'))


def ivfpq_train_size(config: IndexConfig) -> int:
    """Return the number of entries at which an ``ivfpq`` map trains its index.

    ``39 * max(ivf_nlist, 2 ** 8)``: faiss's minimum points per centroid for both the coarse
    quantizer (``ivf_nlist`` centroids) and each 8-bit product sub-quantizer (256 centroids).
    """
    return IVF_POINTS_PER_CENTROID * max(config.ivf_nlist, 2 ** PQ_BITS)


def _check_index_config(config: IndexConfig, dim: int) -> None:
    if not isinstance(config, IndexConfig):
        raise ConfigError(f'index_config must be an IndexConfig, got {type(config).__name__}')
    if config.kind == 'ivfpq' and dim % config.pq_m:
        raise ConfigError(f'IndexConfig.pq_m={config.pq_m} does not divide the descriptor '
                          f'dimension {dim}')


def _new_index(config: IndexConfig, dim: int, kind: str) -> faiss.Index:
    if kind == 'hnsw':
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = max(40, 2 * config.hnsw_m)
        return index
    if kind == 'ivfpq':
        index = faiss.index_factory(dim, f'IVF{config.ivf_nlist},PQ{config.pq_m}x{PQ_BITS}',
                                    faiss.METRIC_INNER_PRODUCT)
        # Polysemous codes only serve Hamming pre-filtering; their training is ~10x the rest.
        faiss.downcast_index(index).do_polysemous_training = False
        return index
    return faiss.IndexFlatIP(dim)


def _build_index(config: IndexConfig, vectors: np.ndarray) -> faiss.Index:
    """Return a CPU index of ``config.kind`` holding ``vectors`` (flat until IVF-PQ trains)."""
    kind = config.kind
    if kind == 'ivfpq' and len(vectors) < ivfpq_train_size(config):
        kind = 'flat'
    index = _new_index(config, vectors.shape[1], kind)
    if kind == 'ivfpq':
        LOG.info('training IVF-PQ index on %d descriptors', len(vectors))
        index.train(vectors)
    if len(vectors):
        index.add(vectors)
    return index


def _index_type(index: faiss.Index) -> str:
    index = faiss.downcast_index(index)
    for name, cls in (('hnsw', faiss.IndexHNSWFlat), ('ivfpq', faiss.IndexIVFPQ),
                      ('flat', faiss.IndexFlatIP)):
        if isinstance(index, cls):
            return name
    return type(index).__name__


def _structure(config: IndexConfig) -> tuple:
    """Return the index-config fields that change the stored index (not search-time knobs)."""
    if config.kind == 'hnsw':
        return ('hnsw', config.hnsw_m)
    if config.kind == 'ivfpq':
        return ('ivfpq', config.ivf_nlist, config.pq_m)
    return ('flat',)


def _set_search_params(index: faiss.Index, config: IndexConfig) -> None:
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = config.hnsw_ef_search
    elif isinstance(index, faiss.IndexIVF):
        index.nprobe = min(config.ivf_nprobe, index.nlist)


class _GrowableArray:
    """Rows appended to a buffer that grows by doubling; committed rows are never rewritten."""

    def __init__(self, row_shape: tuple, dtype: Any, initial: Optional[np.ndarray] = None):
        self._buf = np.empty((0,) + tuple(row_shape), dtype=dtype)
        self._n = 0
        if initial is not None:
            self.append(initial)

    def __len__(self) -> int:
        return self._n

    def append(self, rows: np.ndarray) -> None:
        need = self._n + len(rows)
        if need > len(self._buf):
            grown = np.empty((max(need, 2 * len(self._buf), 16),) + self._buf.shape[1:],
                             dtype=self._buf.dtype)
            grown[:self._n] = self._buf[:self._n]
            self._buf = grown
        self._buf[self._n:need] = rows
        self._n = need

    def truncate(self, n: int) -> None:
        self._n = min(self._n, n)

    def view(self) -> np.ndarray:
        return self._buf[:self._n]


class _TokenStore:
    """Dense tokens: saved rows from a (memory-mapped) file followed by rows added since."""

    def __init__(self, shape: tuple[int, int], base: Optional[np.ndarray] = None):
        self.shape = shape
        self._base = base if base is not None else np.empty((0,) + shape, TOKEN_DTYPE)
        self._extra = _GrowableArray(shape, TOKEN_DTYPE)

    def __len__(self) -> int:
        return len(self._base) + len(self._extra)

    def append(self, rows: np.ndarray) -> None:
        self._extra.append(rows)

    def truncate(self, n: int) -> None:
        self._extra.truncate(n - len(self._base))

    def rows(self, ids: np.ndarray) -> np.ndarray:
        out = np.empty((len(ids),) + self.shape, dtype=np.float16)
        in_base = ids < len(self._base)
        order = np.argsort(ids[in_base], kind='stable')
        out[np.flatnonzero(in_base)[order]] = self._base[ids[in_base][order]]
        out[~in_base] = self._extra.view()[ids[~in_base] - len(self._base)]
        return out

    def parts(self, n: int) -> list[np.ndarray]:
        """Return arrays that together hold rows ``[0, n)`` (safe to read without the lock)."""
        base = self._base[:n]
        return [base, self._extra.view()[:n - len(base)]]

    def rebase(self, base: np.ndarray) -> None:
        """Serve the first ``len(base)`` rows from ``base``; keep later rows in memory."""
        rest = self._extra.view()[len(base) - len(self._base):]
        self._base = base
        self._extra = _GrowableArray(self.shape, TOKEN_DTYPE, initial=rest)


@dataclass(frozen=True)
class _Snapshot:
    """A consistent copy-free view of the map taken under the lock, written out by ``save``."""

    count: int
    entries: tuple
    descriptors: np.ndarray
    token_parts: Optional[list]
    index_bytes: np.ndarray
    index_type: str


class _HashingWriter:
    """A write-only file wrapper that counts bytes and computes their SHA-256."""

    def __init__(self, raw: Any):
        self._raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast('B')
        self.sha256.update(view)
        self.size += len(view)
        return self._raw.write(view)


def _write_file(path: Path, fill: Callable[[_HashingWriter], None]) -> dict:
    """Write ``path`` through ``fill``, fsync it, and return its sha256 and byte size."""
    with open(path, 'wb') as raw:
        writer = _HashingWriter(raw)
        fill(writer)
        raw.flush()
        os.fsync(raw.fileno())
    return {'sha256': writer.sha256.hexdigest(), 'bytes': writer.size}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sibling(target: Path, tag: str) -> Path:
    """Return a new hidden sibling name of ``target``; it records this process's id."""
    return target.parent / f'.{target.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:12]}'


def _owner_alive(path: Path) -> bool:
    """Return False when the process recorded in a sibling's name no longer runs."""
    parts = path.name.rsplit('-', 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return True  # not named by _sibling: never touched
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


def _restore_aside(target: Path) -> Path:
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


def _clean_stale(target: Path) -> None:
    """Recover from killed saves of ``target``: restore a map left aside, remove temporaries.

    A killed save leaves a ``.tmp-`` directory (a partial new map, or the previous map swapped
    out of place), and possibly the previous map at ``.old-`` (see :func:`_restore_aside`).
    """
    _restore_aside(target)
    for path in _stale_siblings(target, 'old') + _stale_siblings(target, 'tmp'):
        LOG.info('removing %s left by an interrupted save', path)
        shutil.rmtree(path, ignore_errors=True)


def _check_replaceable(target: Path) -> None:
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


def _swap_into_place(new_dir: Path, target: Path) -> None:
    """Move ``new_dir`` to ``target`` so that ``target`` always holds one whole map.

    An existing map is exchanged with the new one in one atomic ``renameat2(RENAME_EXCHANGE)``
    (Linux); the previous map then sits in ``new_dir``, which is removed. Where the exchange is
    unsupported the old map is renamed aside first: a crash between the two renames leaves no
    directory at ``target`` and the previous map, intact, at ``.<name>.old-*`` beside it
    (the next load or save of ``target`` renames it back); never a partial map.
    """
    if target.exists() and _exchange(new_dir, target):
        _fsync_dir(target.parent)
        shutil.rmtree(new_dir, ignore_errors=True)
        return
    old = None
    if target.exists():
        old = _sibling(target, 'old')
        os.rename(target, old)
    try:
        os.rename(new_dir, target)
    except BaseException:
        if old is not None:
            os.rename(old, target)
        raise
    _fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_error(target: Path, exc: OSError) -> MapWriteError:
    """Return the error of a save to ``target`` that failed with ``exc`` (naming the cause)."""
    cause = _WRITE_CAUSES.get(exc.errno, 'the file system refused the write')
    return MapWriteError(f'cannot save map {target}: {cause} ({exc}); no partial map was left '
                         f'at {target}')


def _write_chunks(writer: _HashingWriter, arrays: Sequence[np.ndarray]) -> None:
    for array in arrays:
        rows = max(1, _CHUNK_BYTES // max(1, array[:1].nbytes))
        for start in range(0, len(array), rows):
            writer.write(np.ascontiguousarray(array[start:start + rows], dtype=TOKEN_DTYPE))


def _write_entries(writer: _HashingWriter, entries: Sequence[MapEntry]) -> None:
    for entry in entries:
        writer.write((json.dumps(entry.to_dict(), sort_keys=True) + '\n').encode())


def _spec_difference(a: ModelSpec, b: ModelSpec) -> list[str]:
    da, db = json.loads(a.to_json()), json.loads(b.to_json())
    return sorted(k for k in da.keys() | db.keys() if da.get(k) != db.get(k))


def _check_same_spec(where: Any, found: ModelSpec, expected: ModelSpec) -> None:
    """Raise :class:`MapMismatchError` when ``found`` is another model than ``expected``."""
    if found.digest() != expected.digest():
        raise MapMismatchError(
            f'{where} was built by model {found.architecture} (spec digest {found.digest()}), '
            f'expected {expected.architecture} (spec digest {expected.digest()}); they differ '
            f'in {_spec_difference(found, expected)}')


class MapDatabase:
    """Descriptors, entries, optional dense tokens and a FAISS index over the descriptors.

    Thread-safe: one lock serialises :meth:`add`, :meth:`search` and the other accessors, so
    entries can be added while queries are served and every search sees a whole number of
    :meth:`add` calls. :meth:`save` copies no arrays: it captures a consistent view under the lock
    and writes it without blocking searches.

    Args:
        spec: the model that produces the descriptors (dimension and digest are enforced).
        index_config: index kind and parameters.
        store_tokens: keep dense tokens for re-ranking; default ``spec.has_pair_classifier``.
            Token shape is ``(spec.num_tokens, spec.token_dim)``.
    """

    def __init__(self, spec: ModelSpec, index_config: IndexConfig = IndexConfig(),
                 store_tokens: Optional[bool] = None) -> None:
        _check_index_config(index_config, spec.descriptor_dim)
        self._spec = spec
        self._config = index_config
        keep = spec.has_pair_classifier if store_tokens is None else bool(store_tokens)
        if keep and (spec.num_tokens <= 0 or spec.token_dim <= 0):
            raise MapMismatchError(f'model {spec.architecture} declares no token shape '
                                   f'(num_tokens={spec.num_tokens}, token_dim={spec.token_dim}); '
                                   'cannot store tokens')
        self._tokens = _TokenStore((spec.num_tokens, spec.token_dim)) if keep else None
        self._lock = threading.RLock()
        self._save_lock = threading.Lock()
        self._entries: list[MapEntry] = []
        self._descriptors = _GrowableArray((spec.descriptor_dim,), np.float32)
        self._gpu_resources = None
        self._index_kind = 'flat'
        self._index = self._place(_build_index(index_config, self._descriptors.view()))

    @property
    def spec(self) -> ModelSpec:
        """Return the model that built this map."""
        return self._spec

    @property
    def index_config(self) -> IndexConfig:
        """Return the index kind and parameters."""
        return self._config

    def configure_search(self, config: IndexConfig) -> None:
        """Apply the search-time options of ``config``: HNSW efSearch, IVF nprobe, ``refine_k``.

        The index kind and its build options (``hnsw_m``, ``ivf_nlist``, ``pq_m``) stay as built.
        """
        with self._lock:
            self._config = replace(self._config, hnsw_ef_search=config.hnsw_ef_search,
                                   ivf_nprobe=config.ivf_nprobe, refine_k=config.refine_k,
                                   search_threads=config.search_threads)
            _set_search_params(self._index, self._config)

    @property
    def has_tokens(self) -> bool:
        """Return True when the map stores dense tokens (needed for pair re-ranking)."""
        return self._tokens is not None

    @property
    def token_shape(self) -> Optional[tuple[int, int]]:
        """Return ``(T, C)`` of the stored tokens, or None when the map stores none."""
        return None if self._tokens is None else self._tokens.shape

    @property
    def index_type(self) -> str:
        """Return the index now answering searches: ``flat``, ``hnsw`` or ``ivfpq``."""
        return self._index_kind

    @property
    def descriptors(self) -> np.ndarray:
        """Return a read-only ``[N, D] float32`` view of all descriptors, as a snapshot."""
        with self._lock:
            view = self._descriptors.view()[:]
        view.flags.writeable = False
        return view

    @property
    def entries(self) -> tuple[MapEntry, ...]:
        """Return all entries, in id order."""
        with self._lock:
            return tuple(self._entries)

    def __len__(self) -> int:
        """Return the number of entries."""
        with self._lock:
            return len(self._entries)

    def entry(self, entry_id: int) -> MapEntry:
        """Return the entry with id ``entry_id``."""
        with self._lock:
            if (isinstance(entry_id, bool) or not isinstance(entry_id, numbers.Integral)
                    or not 0 <= entry_id < len(self._entries)):
                raise MapError(f'map has no entry {entry_id!r} (ids 0..{len(self._entries) - 1})')
            return self._entries[int(entry_id)]

    def tokens(self, ids: Sequence[int]) -> np.ndarray:
        """Return the dense tokens of ``ids`` as ``[len(ids), T, C] float16`` (a copy)."""
        if self._tokens is None:
            raise MapError(f'this map stores no tokens (model {self._spec.architecture}, '
                           'store_tokens=False)')
        ids = np.asarray(ids).reshape(-1)
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise MapError(f'token ids must be integers, got dtype {ids.dtype}')
        ids = ids.astype(np.int64)
        with self._lock:
            n = len(self._entries)
            bad = ids[(ids < 0) | (ids >= n)]
            if bad.size:
                raise MapError(f'map has no entry {int(bad[0])} (ids 0..{n - 1})')
            return self._tokens.rows(ids)

    def add(self, descriptors: np.ndarray, entries: Sequence[EntryLike],
            tokens: Optional[np.ndarray] = None) -> list[int]:
        """Append entries with their descriptors (and tokens); return their new ids.

        Args:
            descriptors: ``[N, D]`` L2-normalised float32 global descriptors.
            entries: N :class:`MapEntry` (their ``id`` is replaced) or keyword dictionaries.
            tokens: ``[N, T, C]`` dense tokens, required when the map stores tokens (stored as
                float16) and ignored otherwise.

        Returns:
            The consecutive ids assigned to the new entries.
        """
        vectors = self._check_vectors(descriptors, 'added descriptors', unit=True)
        items = [self._as_entry(e) for e in entries]
        if len(items) != len(vectors):
            raise MapMismatchError(f'{len(vectors)} descriptors but {len(items)} entries')
        rows = self._check_tokens(tokens, len(vectors))
        if not items:
            return []
        with self._lock:
            start = len(self._entries)
            items = [replace(e, id=start + i) for i, e in enumerate(items)]
            self._append(vectors, items, rows)
        return list(range(start, start + len(items)))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return the ``k`` most similar entries of each query.

        Args:
            queries: ``[Q, D]`` descriptors of the same model.
            k: neighbours per query.

        Returns:
            ``(similarities [Q, k] float32, ids [Q, k] int64)``: inner products, best first. When
            the map holds fewer than ``k`` entries (or an approximate index finds fewer), the tail
            is padded with id -1 and similarity ``-inf``.
        """
        q = self._check_vectors(queries, 'query descriptors', unit=False)
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise MapError(f'search k must be a positive integer, got {k!r}')
        sims = np.full((len(q), int(k)), -np.inf, dtype=np.float32)
        ids = np.full((len(q), int(k)), -1, dtype=np.int64)
        with self._lock, faiss_threads(self._config.search_threads):
            kk = min(int(k), len(self._entries))
            if kk and len(q):
                sims[:, :kk], ids[:, :kk] = self._search(q, kk)
        sims[ids < 0] = -np.inf
        return sims, ids

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Search the index; an IVF-PQ shortlist of ``refine_k`` is re-scored exactly."""
        if self._index_kind != 'ivfpq' or self._config.refine_k == 0:
            return self._index.search(queries, k)
        shortlist = min(max(self._config.refine_k, k), len(self._entries))
        _, candidates = self._index.search(queries, shortlist)
        stored = self._descriptors.view()
        exact = np.einsum('qkd,qd->qk', stored[np.maximum(candidates, 0)], queries)
        exact[candidates < 0] = -np.inf
        order = np.argsort(-exact, axis=1, kind='stable')[:, :k]
        return (np.take_along_axis(exact, order, axis=1).astype(np.float32),
                np.take_along_axis(candidates, order, axis=1))

    def save(self, path: Union[str, Path]) -> Path:
        """Write the map to directory ``path`` atomically and return it.

        Everything is written into a sibling temporary directory, each file and the directory are
        fsynced, then the new directory is exchanged with the old map (if any) in one atomic
        rename and the old one removed. On any failure the temporary directory is removed and
        ``path`` is left as it was; a process killed at any point leaves either the old or the new
        map at ``path``. Temporary directories of saves that were killed are removed by the next
        save. Afterwards the tokens are served from the saved ``tokens.f16`` (memory-mapped).

        Raises:
            MapWriteError: a file system error (disk full, file size limit, read-only or
                unwritable directory), naming the path and the cause.
            MapError: ``path`` exists and is not a map directory.
        """
        target = Path(path)
        with self._save_lock:
            try:
                snap = self._write_and_swap(target)
            except OSError as exc:
                raise _write_error(target, exc) from exc
            if self._tokens is not None and snap.count:
                base = np.memmap(target / TOKENS_FILE, dtype=TOKEN_DTYPE, mode='r',
                                 shape=(snap.count,) + self._tokens.shape)
                with self._lock:
                    self._tokens.rebase(base)
        LOG.info('saved map with %d entries to %s', snap.count, target)
        return target

    @classmethod
    def load(cls, path: Union[str, Path], expected_spec: Optional[ModelSpec] = None,
             mmap_tokens: bool = True, verify_tokens: bool = True,
             index_config: Optional[IndexConfig] = None) -> 'MapDatabase':
        """Load and validate a map saved by :meth:`save`.

        Args:
            path: the map directory.
            expected_spec: when given, the map must have been built by this model (same digest),
                else :class:`MapMismatchError`.
            mmap_tokens: memory-map ``tokens.f16`` (default) instead of reading it into RAM.
            verify_tokens: check the sha256 of ``tokens.f16``. Its size is always checked; the hash
                reads the whole file once (about 1 s per GB from page cache, disk speed otherwise;
                a ViT-B Pair-VPR map holds ~0.8 MB of tokens per entry). Other files are always
                hashed.
            index_config: use these index settings instead of the saved ones; the index is rebuilt
                from the descriptors when its kind or structure differs.

        Raises:
            MapFormatError: missing file, unknown format or version, bad JSON, checksum or size
                mismatch, inconsistent counts, shapes or ids.
            MapMismatchError: the map was built by another model than ``expected_spec``.
            MapChangedError: a concurrent :meth:`save` replaced the directory during the load
                (a :class:`MapFormatError`; loading again reads the new map). A load that
                returns read every file from one and the same saved map.
        """
        root = _restore_aside(Path(path))
        with _unchanged_directory(root):
            manifest = _read_manifest(root)
            spec = _manifest_spec(root, manifest)
            if expected_spec is not None:
                _check_same_spec(f'map {root}', spec, expected_spec)
            layout = _Layout.from_manifest(root, manifest, spec)
            _verify_files(root, manifest['files'], layout, verify_tokens)
            descriptors = _read_descriptors(root / DESCRIPTORS_FILE, layout)
            entries = _read_entries(root / ENTRIES_FILE, layout.count)
            index = _read_index(root / INDEX_FILE, layout, descriptors)
            db = cls(spec, index_config or layout.index_config,
                     store_tokens=layout.token_shape is not None)
            db._restore(entries, descriptors, index, layout)
            if db._tokens is not None:
                db._tokens.rebase(_open_tokens(root / TOKENS_FILE, layout, mmap_tokens))
        LOG.info('loaded map %s: %d entries, model %s, index %s', root, layout.count,
                 spec.architecture, db.index_type)
        return db

    def _restore(self, entries: list, descriptors: np.ndarray, index: faiss.Index,
                 layout: '_Layout') -> None:
        self._entries = entries
        self._descriptors = _GrowableArray(descriptors.shape[1:], np.float32, descriptors)
        if _structure(self._config) != _structure(layout.index_config):
            LOG.info('rebuilding the %s index of %d entries as %s', layout.index_config.kind,
                     len(entries), self._config.kind)
            index = _build_index(self._config, descriptors)
        self._index = self._place(index)

    def _as_entry(self, item: EntryLike) -> MapEntry:
        if isinstance(item, MapEntry):
            return item
        if not isinstance(item, Mapping):
            raise MapFormatError(f'map entries must be MapEntry or dict, '
                                 f'got {type(item).__name__}')
        try:
            return MapEntry(**{**item, 'id': UNASSIGNED_ID})
        except TypeError as exc:
            raise MapFormatError(f'bad map entry fields {sorted(item)}: {exc}') from exc

    def _check_vectors(self, array: Any, what: str, unit: bool) -> np.ndarray:
        dim = self._spec.descriptor_dim
        vectors = np.asarray(array)
        if vectors.ndim != 2 or vectors.shape[1] != dim:
            raise MapMismatchError(f'{what} have shape {tuple(vectors.shape)}, expected '
                                   f'[N, {dim}] (descriptor_dim of model '
                                   f'{self._spec.architecture})')
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if not np.isfinite(vectors).all():
            raise MapError(f'{what} contain NaN or infinite values')
        norms = np.linalg.norm(vectors, axis=1)
        if unit and vectors.size and np.abs(norms - 1.0).max() > NORM_TOLERANCE:
            row = int(np.abs(norms - 1.0).argmax())
            raise MapError(f'{what} are not L2-normalised: row {row} has norm {norms[row]:.4f}')
        return vectors

    def _check_tokens(self, tokens: Optional[np.ndarray], n: int) -> Optional[np.ndarray]:
        if self._tokens is None:
            if tokens is not None:
                LOG.debug('map stores no tokens; ignoring the %s tokens given', len(tokens))
            return None
        want = (n,) + self._tokens.shape
        if tokens is None:
            raise MapMismatchError(f'this map stores tokens {want[1:]}; add() got none')
        rows = np.asarray(tokens)
        if rows.shape != want:
            raise MapMismatchError(f'tokens have shape {tuple(rows.shape)}, expected {list(want)} '
                                   f'(num_tokens, token_dim of model {self._spec.architecture})')
        rows = rows.astype(TOKEN_DTYPE)
        if not np.isfinite(rows).all():
            raise MapError('tokens contain NaN or infinite values (or values beyond float16)')
        return rows

    def _append(self, vectors: np.ndarray, items: list, rows: Optional[np.ndarray]) -> None:
        """Append under the lock; on failure roll the buffers back to the committed count."""
        count = len(self._entries)
        try:
            self._descriptors.append(vectors)
            if self._tokens is not None:
                self._tokens.append(rows)
            self._add_to_index(vectors)
        except BaseException:
            self._descriptors.truncate(count)
            if self._tokens is not None:
                self._tokens.truncate(count)
            raise
        self._entries.extend(items)

    def _add_to_index(self, vectors: np.ndarray) -> None:
        config = self._config
        if (config.kind == 'ivfpq' and self._index_kind == 'flat'
                and len(self._descriptors) >= ivfpq_train_size(config)):
            self._index = self._place(_build_index(config, self._descriptors.view()))
        else:
            self._index.add(vectors)

    def _place(self, index: faiss.Index) -> faiss.Index:
        """Set search parameters and move ``index`` to the GPU when configured and possible."""
        _set_search_params(index, self._config)
        self._index_kind = _index_type(index)
        if (not self._config.use_gpu or self._index_kind == 'hnsw'
                or not hasattr(faiss, 'StandardGpuResources') or faiss.get_num_gpus() < 1):
            return index
        try:
            if self._gpu_resources is None:
                self._gpu_resources = faiss.StandardGpuResources()
            return faiss.index_cpu_to_gpu(self._gpu_resources, 0, index)
        except RuntimeError as exc:
            LOG.warning('keeping the %s index on CPU: %s', self._index_kind, exc)
            return index

    def _cpu_index(self) -> faiss.Index:
        if hasattr(faiss, 'GpuIndex') and isinstance(self._index, faiss.GpuIndex):
            return faiss.index_gpu_to_cpu(self._index)
        return self._index

    def _write_and_swap(self, target: Path) -> _Snapshot:
        """Write a snapshot into a temporary sibling and swap it into ``target``."""
        target.parent.mkdir(parents=True, exist_ok=True)
        _clean_stale(target)
        _check_replaceable(target)
        snap = self._snapshot()
        tmp = _sibling(target, 'tmp')
        tmp.mkdir()
        try:
            self._write_dir(tmp, snap)
            _swap_into_place(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return snap

    def _snapshot(self) -> _Snapshot:
        with self._lock:
            count = len(self._entries)
            index = self._cpu_index()
            return _Snapshot(
                count=count, entries=tuple(self._entries), descriptors=self._descriptors.view(),
                token_parts=None if self._tokens is None else self._tokens.parts(count),
                index_bytes=faiss.serialize_index(index), index_type=_index_type(index))

    def _write_dir(self, directory: Path, snap: _Snapshot) -> None:
        files = {
            INDEX_FILE: _write_file(directory / INDEX_FILE, lambda w: w.write(snap.index_bytes)),
            ENTRIES_FILE: _write_file(directory / ENTRIES_FILE,
                                      lambda w: _write_entries(w, snap.entries)),
            DESCRIPTORS_FILE: _write_file(
                directory / DESCRIPTORS_FILE,
                lambda w: np.lib.format.write_array(w, snap.descriptors, allow_pickle=False)),
        }
        if snap.token_parts is not None:
            files[TOKENS_FILE] = _write_file(directory / TOKENS_FILE,
                                             lambda w: _write_chunks(w, snap.token_parts))
        text = json.dumps(self._manifest(snap, files), indent=2, sort_keys=True) + '\n'
        _write_file(directory / MANIFEST_FILE, lambda w: w.write(text.encode()))
        _fsync_dir(directory)

    def _manifest(self, snap: _Snapshot, files: dict) -> dict:
        return {
            'format': MAP_FORMAT, 'format_version': MAP_FORMAT_VERSION,
            'model_spec': json.loads(self._spec.to_json()), 'spec_digest': self._spec.digest(),
            'descriptor_dim': self._spec.descriptor_dim,
            'token_shape': None if self._tokens is None else list(self._tokens.shape),
            'count': snap.count,
            'index': {'kind': self._config.kind, 'type': snap.index_type,
                      'config': config_to_dict(self._config)},
            'files': files,
        }


def _directory_replaced(root: Path, pinned: os.stat_result) -> bool:
    try:
        now = os.stat(root)
    except OSError:
        return True
    return (now.st_dev, now.st_ino) != (pinned.st_dev, pinned.st_ino)


@contextmanager
def _unchanged_directory(root: Path) -> Iterator[None]:
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


def _read_manifest(root: Path) -> dict:
    path = root / MANIFEST_FILE
    if not root.is_dir():
        aside = sorted(root.parent.glob(f'.{root.name}.old-*'))
        hint = f'; an interrupted save left the previous map at {aside[-1]}' if aside else ''
        raise MapFormatError(f'map directory {root} does not exist{hint}')
    try:
        with open(path, 'rb') as f:
            text = f.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError as exc:
        raise MapFormatError(f'{path} is missing (not a map directory?)') from exc
    except OSError as exc:
        raise MapFormatError(f'cannot read {path}: {exc}') from exc
    if len(text) > MAX_MANIFEST_BYTES:
        raise MapFormatError(f'{path} is larger than {MAX_MANIFEST_BYTES} bytes (not a manifest)')
    try:
        manifest = json.loads(text.decode('utf-8'))
    except (RecursionError, ValueError) as exc:
        raise MapFormatError(f'{path} is not valid JSON: {exc!r}') from exc
    if not isinstance(manifest, dict):
        raise MapFormatError(f'{path} must hold a JSON object')
    if manifest.get('format') != MAP_FORMAT:
        raise MapFormatError(f'{path}: unknown format {manifest.get("format")!r}, '
                             f'expected {MAP_FORMAT!r}')
    if manifest.get('format_version') != MAP_FORMAT_VERSION:
        raise MapFormatError(f'{path}: format_version {manifest.get("format_version")!r} is not '
                             f'supported (expected {MAP_FORMAT_VERSION})')
    return manifest


def _field(root: Path, manifest: dict, key: str, kind: type) -> Any:
    value = manifest.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise MapFormatError(f'{root / MANIFEST_FILE}: field {key!r} must be {kind.__name__}, '
                             f'got {value!r}')
    return value


def _manifest_spec(root: Path, manifest: dict) -> ModelSpec:
    where = root / MANIFEST_FILE
    try:
        spec = ModelSpec.from_json(json.dumps(_field(root, manifest, 'model_spec', dict)))
    except (CheckpointError, OverflowError, RecursionError) as exc:
        raise MapFormatError(f'{where}: bad model_spec: {exc!r}') from exc
    digest = _field(root, manifest, 'spec_digest', str)
    if spec.digest() != digest:
        raise MapFormatError(f'{where}: model_spec ({spec.architecture}, digest '
                             f'{spec.digest()}) does not match the recorded spec_digest {digest} '
                             '(edited manifest?)')
    return spec


@dataclass(frozen=True)
class _Layout:
    """Shapes and settings recorded in a manifest, checked against each other and the spec."""

    count: int
    dim: int
    token_shape: Optional[tuple[int, int]]
    index_config: IndexConfig
    index_type: str

    @classmethod
    def from_manifest(cls, root: Path, manifest: dict, spec: ModelSpec) -> '_Layout':
        where = root / MANIFEST_FILE
        count = _field(root, manifest, 'count', int)
        dim = _field(root, manifest, 'descriptor_dim', int)
        if count < 0 or dim < 1 or dim != spec.descriptor_dim:
            raise MapFormatError(f'{where}: count {count} / descriptor_dim {dim} inconsistent '
                                 f'with model {spec.architecture} (descriptor_dim '
                                 f'{spec.descriptor_dim})')
        shape = manifest.get('token_shape')
        if shape is not None and shape != [spec.num_tokens, spec.token_dim]:
            raise MapFormatError(f'{where}: token_shape {shape} differs from the model spec '
                                 f'[{spec.num_tokens}, {spec.token_dim}]')
        config, kind = _index_settings(root, manifest, dim)
        _field(root, manifest, 'files', dict)
        return cls(count, dim, None if shape is None else tuple(shape), config, kind)

    def expected_files(self) -> dict:
        """Return the required file names with their exact size when it is known."""
        files = {INDEX_FILE: None, ENTRIES_FILE: None, DESCRIPTORS_FILE: None}
        if self.token_shape is not None:
            files[TOKENS_FILE] = self.count * math.prod(self.token_shape) * TOKEN_DTYPE.itemsize
        return files


def _index_settings(root: Path, manifest: dict, dim: int) -> tuple[IndexConfig, str]:
    where = root / MANIFEST_FILE
    index = _field(root, manifest, 'index', dict)
    try:
        config = config_from_dict(IndexConfig, index.get('config'))
        _check_index_config(config, dim)
    except (ConfigError, TypeError) as exc:
        raise MapFormatError(f'{where}: bad index config: {exc}') from exc
    kind = index.get('type')
    if kind not in _INDEX_TYPES[config.kind]:
        raise MapFormatError(f'{where}: index type {kind!r} is not valid for kind {config.kind!r}')
    return config, kind


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(_CHUNK_BYTES), b''):
            digest.update(block)
    return digest.hexdigest()


def _verify_files(root: Path, records: dict, layout: _Layout, verify_tokens: bool) -> None:
    """Check that every file exists with the recorded size and sha256."""
    expected = layout.expected_files()
    if set(records) != set(expected):
        raise MapFormatError(f'{root / MANIFEST_FILE}: lists files {sorted(records)}, expected '
                             f'{sorted(expected)}')
    for name, size in expected.items():
        record = records[name]
        if not _valid_record(record):
            raise MapFormatError(f'{root / MANIFEST_FILE}: bad record for {name}: {record!r} '
                                 '(expected {"sha256": 64 hex digits, "bytes": size})')
        if size is not None and record['bytes'] != size:
            raise MapFormatError(f'{root / MANIFEST_FILE}: {name} recorded as {record["bytes"]} '
                                 f'bytes, {size} expected for {layout.count} entries')
        _verify_file(root / name, record, check_hash=verify_tokens or name != TOKENS_FILE)


def _valid_record(record: Any) -> bool:
    """Return True for a ``{'sha256': hex digest, 'bytes': size}`` file record."""
    if not isinstance(record, dict) or set(record) != {'sha256', 'bytes'}:
        return False
    size, digest = record['bytes'], record['sha256']
    return (isinstance(size, int) and not isinstance(size, bool) and size >= 0
            and isinstance(digest, str) and len(digest) == 64
            and all(c in '0123456789abcdef' for c in digest))


def _verify_file(path: Path, record: dict, check_hash: bool) -> None:
    if not path.is_file():
        raise MapFormatError(f'{path} is missing')
    size = path.stat().st_size
    if size != record['bytes']:
        state = 'truncated' if size < record['bytes'] else 'longer than recorded'
        raise MapFormatError(f'{path} is {state}: {size} bytes, manifest records '
                             f'{record["bytes"]}')
    if check_hash:
        actual = _sha256_file(path)
        if actual != record['sha256']:
            raise MapFormatError(f'{path} is corrupt or modified: sha256 {actual[:16]}..., '
                                 f'manifest records {str(record["sha256"])[:16]}...')


def _npy_header(path: Path) -> tuple[tuple, bool, np.dtype, int]:
    """Return ``(shape, fortran_order, dtype, data offset)`` from a ``.npy`` header."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0,
               (2, 0): np.lib.format.read_array_header_2_0}
    try:
        with open(path, 'rb') as f:
            version = np.lib.format.read_magic(f)
            if version not in readers:
                raise ValueError(f'unsupported .npy version {version}')
            shape, fortran, dtype = readers[version](f)
            return shape, fortran, dtype, f.tell()
    except (OSError, TypeError, ValueError, SyntaxError, tokenize.TokenError, RecursionError,
            MemoryError) as exc:  # numpy parses the header text with tokenize and literal_eval
        raise MapFormatError(f'{path} is not a valid .npy file: {exc}') from exc


def _read_descriptors(path: Path, layout: _Layout) -> np.ndarray:
    """Read ``[count, dim]`` float32 after checking the header against the file size."""
    shape, fortran, dtype, offset = _npy_header(path)
    want = (layout.count, layout.dim)
    if dtype != np.dtype('<f4') or fortran or shape != want:
        raise MapFormatError(f'{path} holds {dtype} {list(shape)}{" (Fortran order)" * fortran}, '
                             f'expected float32 [{layout.count}, {layout.dim}]')
    size = path.stat().st_size - offset
    if size != 4 * layout.count * layout.dim:
        raise MapFormatError(f'{path} has {size} data bytes, its header declares float32 '
                             f'{list(shape)}')
    array = np.fromfile(path, dtype='<f4', count=layout.count * layout.dim, offset=offset)
    array = array.reshape(want)
    with np.errstate(over='ignore'):  # a huge finite value gives an infinite norm: refused
        norms = np.linalg.norm(array, axis=1) if np.isfinite(array).all() else np.array([np.nan])
    if not np.all(np.abs(norms - 1) <= NORM_TOLERANCE):
        raise MapFormatError(f'{path} holds non-finite or non-normalised descriptors')
    return np.ascontiguousarray(array)


def _read_entries(path: Path, count: int) -> list[MapEntry]:
    entries = []
    with open(path, 'rb') as f:
        for line_no, line in enumerate(f, start=1):
            try:
                entry = MapEntry.from_dict(json.loads(line.decode('utf-8')))
            except (ValueError, OverflowError, RecursionError, MapFormatError) as exc:
                raise MapFormatError(f'{path} line {line_no}: {exc!r}') from exc
            if entry.id != len(entries):
                raise MapFormatError(f'{path} line {line_no}: id {entry.id}, expected '
                                     f'{len(entries)} (ids must be consecutive from 0)')
            entries.append(entry)
    if len(entries) != count:
        raise MapFormatError(f'{path} has {len(entries)} entries, manifest count is {count}')
    return entries


def _read_index(path: Path, layout: _Layout, descriptors: np.ndarray) -> faiss.Index:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MapFormatError(f'cannot read {path}: {exc}') from exc
    # faiss trusts the lengths inside the file: check the whole layout before it parses a byte.
    check_index_bytes(data, layout.index_type, layout.dim, layout.count, layout.index_config,
                      str(path))
    try:
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except RuntimeError as exc:
        raise MapFormatError(f'{path} is not a readable faiss index: {exc}') from exc
    kind = _index_type(index)
    if (index.d != layout.dim or index.ntotal != layout.count or kind != layout.index_type
            or index.metric_type != faiss.METRIC_INNER_PRODUCT):
        raise MapFormatError(f'{path}: {kind} index of {index.ntotal} x {index.d} (metric '
                             f'{index.metric_type}), manifest says {layout.index_type} of '
                             f'{layout.count} x {layout.dim} inner product')
    if kind in ('flat', 'hnsw'):
        _check_index_vectors(path, index, descriptors)
    return index


def _check_index_vectors(path: Path, index: faiss.Index, descriptors: np.ndarray) -> None:
    """Check that a flat or HNSW index stores exactly ``descriptors`` (IVF-PQ codes are lossy)."""
    step = max(1, _CHUNK_BYTES // max(1, descriptors[:1].nbytes))
    for start in range(0, len(descriptors), step):
        stop = min(start + step, len(descriptors))
        stored = index.reconstruct_n(start, stop - start)
        differs = np.flatnonzero((stored != descriptors[start:stop]).any(axis=1))
        if differs.size:
            raise MapFormatError(f'{path} does not match {DESCRIPTORS_FILE}: row '
                                 f'{start + int(differs[0])} differs')


def _open_tokens(path: Path, layout: _Layout, mmap: bool) -> np.ndarray:
    shape = (layout.count,) + layout.token_shape
    if layout.count == 0:
        return np.empty(shape, TOKEN_DTYPE)
    if mmap:
        return np.memmap(path, dtype=TOKEN_DTYPE, mode='r', shape=shape)
    return np.fromfile(path, dtype=TOKEN_DTYPE).reshape(shape)
