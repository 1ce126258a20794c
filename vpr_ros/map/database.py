"""Map database: place descriptors, their metadata, dense tokens and a FAISS index.

A map holds one row per place image: an L2-normalised global descriptor (float32, searched by
inner product), a :class:`MapEntry` (time stamp, pose, GPS, source, SLAM node) and, for models with
a pair classifier, the dense tokens that re-ranking needs (stored as float16). Row ``i`` has id
``i``. The index kinds are described in :mod:`vpr_ros.map.index`, the files on disk and their
checks in :mod:`vpr_ros.map.manifest`, atomic saves in :mod:`vpr_ros.map.storage`.

With ``IndexConfig.use_gpu`` and ``faiss.get_num_gpus() > 0`` flat and IVF-PQ indexes run on GPU 0;
otherwise on CPU. The float32 descriptors are always kept in RAM as well: they are the source of
truth from which an index is rebuilt, retrained and verified.
"""

from dataclasses import dataclass, replace
import json
import logging
import numbers
from pathlib import Path
import shutil
import threading
from typing import Any, Mapping, Optional, Sequence, Union

import faiss
import numpy as np

from vpr_ros.config import config_to_dict, IndexConfig
from vpr_ros.errors import MapError, MapFormatError, MapMismatchError
from vpr_ros.map.entries import EntryLike, MapEntry, read_entries, UNASSIGNED_ID, write_entries
from vpr_ros.map.index import (build_index, check_index_config, index_type, ivfpq_train_size,
                               set_search_params, structure)
from vpr_ros.map.manifest import (DESCRIPTORS_FILE, ENTRIES_FILE, INDEX_FILE, Layout,
                                  MANIFEST_FILE, manifest_spec, MAP_FORMAT, MAP_FORMAT_VERSION,
                                  NORM_TOLERANCE, read_descriptors, read_index, read_manifest,
                                  TOKEN_DTYPE, TOKENS_FILE, verify_files)
from vpr_ros.map.storage import (check_replaceable, clean_stale, fsync_dir, restore_aside,
                                 sibling, swap_into_place, unchanged_directory, write_error,
                                 write_file)
from vpr_ros.map.token_store import GrowableArray, open_tokens, TokenStore, write_chunks
from vpr_ros.models.spec import ModelSpec
from vpr_ros.openmp import faiss_threads

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Snapshot:
    """A consistent copy-free view of the map taken under the lock, written out by ``save``."""

    count: int
    entries: tuple
    descriptors: np.ndarray
    token_parts: Optional[list]
    index_bytes: np.ndarray
    index_type: str


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
        check_index_config(index_config, spec.descriptor_dim)
        self._spec = spec
        self._config = index_config
        keep = spec.has_pair_classifier if store_tokens is None else bool(store_tokens)
        if keep and (spec.num_tokens <= 0 or spec.token_dim <= 0):
            raise MapMismatchError(f'model {spec.architecture} declares no token shape '
                                   f'(num_tokens={spec.num_tokens}, token_dim={spec.token_dim}); '
                                   'cannot store tokens')
        self._tokens = TokenStore((spec.num_tokens, spec.token_dim)) if keep else None
        self._lock = threading.RLock()
        self._save_lock = threading.Lock()
        self._entries: list[MapEntry] = []
        self._descriptors = GrowableArray((spec.descriptor_dim,), np.float32)
        self._gpu_resources = None
        self._index_kind = 'flat'
        self._index = self._place(build_index(index_config, self._descriptors.view()))

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
            set_search_params(self._index, self._config)

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
                raise write_error(target, exc) from exc
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
        root = restore_aside(Path(path))
        with unchanged_directory(root):
            manifest = read_manifest(root)
            spec = manifest_spec(root, manifest)
            if expected_spec is not None:
                _check_same_spec(f'map {root}', spec, expected_spec)
            layout = Layout.from_manifest(root, manifest, spec)
            verify_files(root, manifest['files'], layout, verify_tokens)
            descriptors = read_descriptors(root / DESCRIPTORS_FILE, layout)
            entries = read_entries(root / ENTRIES_FILE, layout.count)
            index = read_index(root / INDEX_FILE, layout, descriptors)
            db = cls(spec, index_config or layout.index_config,
                     store_tokens=layout.token_shape is not None)
            db._restore(entries, descriptors, index, layout)
            if db._tokens is not None:
                db._tokens.rebase(open_tokens(root / TOKENS_FILE, layout, mmap_tokens))
        LOG.info('loaded map %s: %d entries, model %s, index %s', root, layout.count,
                 spec.architecture, db.index_type)
        return db

    def _restore(self, entries: list, descriptors: np.ndarray, index: faiss.Index,
                 layout: 'Layout') -> None:
        self._entries = entries
        self._descriptors = GrowableArray(descriptors.shape[1:], np.float32, descriptors)
        if structure(self._config) != structure(layout.index_config):
            LOG.info('rebuilding the %s index of %d entries as %s', layout.index_config.kind,
                     len(entries), self._config.kind)
            index = build_index(self._config, descriptors)
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
            self._index = self._place(build_index(config, self._descriptors.view()))
        else:
            self._index.add(vectors)

    def _place(self, index: faiss.Index) -> faiss.Index:
        """Set search parameters and move ``index`` to the GPU when configured and possible."""
        set_search_params(index, self._config)
        self._index_kind = index_type(index)
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
        clean_stale(target)
        check_replaceable(target)
        snap = self._snapshot()
        tmp = sibling(target, 'tmp')
        tmp.mkdir()
        try:
            self._write_dir(tmp, snap)
            swap_into_place(tmp, target)
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
                index_bytes=faiss.serialize_index(index), index_type=index_type(index))

    def _write_dir(self, directory: Path, snap: _Snapshot) -> None:
        files = {
            INDEX_FILE: write_file(directory / INDEX_FILE, lambda w: w.write(snap.index_bytes)),
            ENTRIES_FILE: write_file(directory / ENTRIES_FILE,
                                     lambda w: write_entries(w, snap.entries)),
            DESCRIPTORS_FILE: write_file(
                directory / DESCRIPTORS_FILE,
                lambda w: np.lib.format.write_array(w, snap.descriptors, allow_pickle=False)),
        }
        if snap.token_parts is not None:
            files[TOKENS_FILE] = write_file(directory / TOKENS_FILE,
                                            lambda w: write_chunks(w, snap.token_parts))
        text = json.dumps(self._manifest(snap, files), indent=2, sort_keys=True) + '\n'
        write_file(directory / MANIFEST_FILE, lambda w: w.write(text.encode()))
        fsync_dir(directory)

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
