"""The files of a saved map: names, the manifest, and the checks every file passes on load.

On disk a map is a directory (see ``docs/architecture.md``)::

    manifest.json    format, version, model spec + digest, shapes, count, index kind/config,
                     sha256 and byte size of every other file
    index.faiss      faiss.write_index of the CPU index
    entries.jsonl    one JSON object per entry, ids 0..N-1 in order
    descriptors.npy  [N, D] float32
    tokens.f16       raw little-endian float16 [N, T, C] (only when the map stores tokens)

:meth:`MapDatabase.load` checks every file and raises :class:`MapFormatError` or
:class:`MapMismatchError` naming the file and the problem. No file reaches a parser unchecked:
the ``.npy`` header and the faiss index layout (:mod:`vpr_ros.map.index_layout`) are checked
against the manifest and the file sizes first, and nothing is ever unpickled. Checksums
detect corruption and accidental edits; they are not a signature, so a deliberately forged map
whose checksums were recomputed is caught only by the structural cross-checks (shapes, counts, ids,
finite unit descriptors, and the flat/HNSW index vectors against ``descriptors.npy``).
"""

from dataclasses import dataclass
import hashlib
import json
import math
from pathlib import Path
import tokenize
from typing import Any, Optional

import faiss
import numpy as np

from vpr_ros.config import config_from_dict, IndexConfig
from vpr_ros.errors import CheckpointError, ConfigError, MapFormatError
from vpr_ros.map.index import check_index_config, index_type, INDEX_TYPES
from vpr_ros.map.index_layout import check_index_bytes
from vpr_ros.models.spec import ModelSpec

MAP_FORMAT = 'vpr_ros.map'
MAP_FORMAT_VERSION = 1
MANIFEST_FILE = 'manifest.json'
INDEX_FILE = 'index.faiss'
ENTRIES_FILE = 'entries.jsonl'
DESCRIPTORS_FILE = 'descriptors.npy'
TOKENS_FILE = 'tokens.f16'
TOKEN_DTYPE = np.dtype('<f2')
NORM_TOLERANCE = 1e-2
CHUNK_BYTES = 4 << 20
MAX_MANIFEST_BYTES = 1 << 20


def read_manifest(root: Path) -> dict:
    """Return the manifest of map directory ``root``, checking its format and version."""
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


def manifest_spec(root: Path, manifest: dict) -> ModelSpec:
    """Return the model spec recorded in ``manifest``, checked against its digest."""
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
class Layout:
    """Shapes and settings recorded in a manifest, checked against each other and the spec."""

    count: int
    dim: int
    token_shape: Optional[tuple[int, int]]
    index_config: IndexConfig
    index_type: str

    @classmethod
    def from_manifest(cls, root: Path, manifest: dict, spec: ModelSpec) -> 'Layout':
        """Return the layout recorded in ``manifest``, checked against ``spec``."""
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
        check_index_config(config, dim)
    except (ConfigError, TypeError) as exc:
        raise MapFormatError(f'{where}: bad index config: {exc}') from exc
    kind = index.get('type')
    if kind not in INDEX_TYPES[config.kind]:
        raise MapFormatError(f'{where}: index type {kind!r} is not valid for kind {config.kind!r}')
    return config, kind


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(CHUNK_BYTES), b''):
            digest.update(block)
    return digest.hexdigest()


def verify_files(root: Path, records: dict, layout: Layout, verify_tokens: bool) -> None:
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


def read_descriptors(path: Path, layout: Layout) -> np.ndarray:
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


def read_index(path: Path, layout: Layout, descriptors: np.ndarray) -> faiss.Index:
    """Read the faiss index at ``path`` after checking its bytes against ``layout``."""
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
    kind = index_type(index)
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
    step = max(1, CHUNK_BYTES // max(1, descriptors[:1].nbytes))
    for start in range(0, len(descriptors), step):
        stop = min(start + step, len(descriptors))
        stored = index.reconstruct_n(start, stop - start)
        differs = np.flatnonzero((stored != descriptors[start:stop]).any(axis=1))
        if differs.size:
            raise MapFormatError(f'{path} does not match {DESCRIPTORS_FILE}: row '
                                 f'{start + int(differs[0])} differs')
