"""Structure check of a serialized FAISS index before FAISS parses it.

``faiss.deserialize_index`` trusts the lengths and ids stored in its input: a forged file can make
it allocate a huge buffer, or build an index whose graph or inverted lists point outside its
arrays (a crash at search time). :func:`check_index_bytes` walks the byte layout of the three
index types a map stores and checks every length against the bytes that remain and against the
dimension, count and index settings recorded in the map manifest, so that only a well-formed file
reaches FAISS. Layouts (little-endian, as ``faiss/impl/index_write.cpp`` writes them):

* header of every index: ``d`` int32, ``ntotal`` int64, two unused int64, ``is_trained`` uint8,
  ``metric_type`` int32 (0 = inner product).
* ``IxFI`` (``IndexFlatIP``): header, then ``ntotal * d`` float32 prefixed by their count.
* ``IHNf`` (``IndexHNSWFlat``): header, the HNSW graph (level probabilities, cumulative neighbour
  counts per level, node levels, neighbour offsets, neighbours, entry point, maximum level, two
  search parameters and a deprecated int32), then its ``IxFI`` storage.
* ``IwPQ`` (``IndexIVFPQ``): header, ``nlist``, ``nprobe``, the ``IxFI`` coarse quantizer, the
  direct map, ``by_residual``, ``code_size``, the product quantizer (``d``, ``M``, ``nbits``,
  centroids), then the ``ilar`` inverted lists (list sizes, then codes and ids of each list).
"""

import struct
from typing import Optional

import numpy as np

from vpr_ros.config import IndexConfig
from vpr_ros.errors import MapFormatError

METRIC_INNER_PRODUCT = 0
PQ_BITS = 8
MAX_HNSW_LEVELS = 64
_FOURCC = {'flat': b'IxFI', 'hnsw': b'IHNf', 'ivfpq': b'IwPQ'}
_FULL_LISTS = b'full'
_SPARSE_LISTS = b'sprs'
_ARRAY_LISTS = b'ilar'


class _Cursor:
    """Reads little-endian fields from ``data``, refusing to read past its end."""

    def __init__(self, data: bytes, where: str) -> None:
        self._data = memoryview(data).cast('B')
        self._where = where
        self.pos = 0

    def fail(self, problem: str) -> MapFormatError:
        """Return the error for ``problem`` found at the current byte."""
        return MapFormatError(f'{self._where}: {problem} (byte {self.pos} of '
                              f'{len(self._data)}); not a faiss index this map wrote')

    def take(self, nbytes: int, what: str) -> memoryview:
        """Return the next ``nbytes`` bytes."""
        left = len(self._data) - self.pos
        if nbytes > left:
            raise self.fail(f'{what} needs {nbytes} bytes, only {left} left (truncated or '
                            f'forged length)')
        view = self._data[self.pos:self.pos + nbytes]
        self.pos += nbytes
        return view

    def scalar(self, fmt: str, what: str) -> int:
        """Return one ``struct`` value of format ``fmt``."""
        return struct.unpack('<' + fmt, self.take(struct.calcsize(fmt), what))[0]

    def array(self, dtype: str, what: str, expected: Optional[int] = None) -> np.ndarray:
        """Return a vector stored as its length (uint64) followed by its items."""
        count = self.scalar('Q', f'{what} length')
        if expected is not None and count != expected:
            raise self.fail(f'{what} holds {count} values, expected {expected}')
        itemsize = np.dtype(dtype).itemsize
        return np.frombuffer(self.take(count * itemsize, what), dtype=dtype)

    def expect(self, actual: object, wanted: object, what: str) -> None:
        """Raise unless ``actual == wanted``."""
        if actual != wanted:
            raise self.fail(f'{what} is {actual!r}, expected {wanted!r}')

    def end(self) -> None:
        """Raise unless every byte was read."""
        if self.pos != len(self._data):
            raise self.fail(f'{len(self._data) - self.pos} unexpected bytes after the index')


def _header(cur: _Cursor, fourcc: bytes, dim: int, count: int, what: str) -> None:
    """Read the type tag and common header of an index of ``count`` x ``dim`` vectors."""
    cur.expect(bytes(cur.take(4, f'{what} type')), fourcc, f'{what} type')
    cur.expect(cur.scalar('i', f'{what} dimension'), dim, f'{what} dimension')
    cur.expect(cur.scalar('q', f'{what} ntotal'), count, f'{what} ntotal')
    cur.take(16, f'{what} header')
    cur.expect(cur.scalar('B', f'{what} is_trained'), 1, f'{what} is_trained')
    cur.expect(cur.scalar('i', f'{what} metric'), METRIC_INNER_PRODUCT, f'{what} metric')


def _flat(cur: _Cursor, dim: int, count: int, what: str) -> None:
    """Read an ``IndexFlatIP`` of ``count`` vectors."""
    _header(cur, _FOURCC['flat'], dim, count, what)
    cur.array('<f4', f'{what} vectors', expected=count * dim)


def _check_range(cur: _Cursor, values: np.ndarray, low: int, high: int, what: str) -> None:
    """Raise unless every value lies in ``[low, high)``."""
    bad = np.flatnonzero((values < low) | (values >= high))
    if bad.size:
        raise cur.fail(f'{what}[{int(bad[0])}] = {int(values[bad[0]])} is outside '
                       f'[{low}, {high})')


def _hnsw_levels(cur: _Cursor, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Read level probabilities, cumulative neighbour counts and node levels."""
    probas = cur.array('<f8', 'HNSW level probabilities')
    if not 1 <= probas.size <= MAX_HNSW_LEVELS or not np.all((probas >= 0) & (probas <= 1)):
        raise cur.fail(f'HNSW has {probas.size} level probabilities outside [0, 1] or '
                       f'beyond {MAX_HNSW_LEVELS} levels')
    cum = cur.array('<i4', 'HNSW neighbour counts', expected=probas.size + 1).astype(np.int64)
    if cum[0] != 0 or np.any(np.diff(cum) < 0):
        raise cur.fail(f'HNSW cumulative neighbour counts {cum.tolist()} do not rise from 0')
    levels = cur.array('<i4', 'HNSW levels', expected=count).astype(np.int64)
    _check_range(cur, levels, 1, cum.size, 'HNSW levels')
    return cum, levels


def _hnsw_graph(cur: _Cursor, count: int) -> None:
    """Read an HNSW graph of ``count`` nodes, checking every offset and neighbour id."""
    cum, levels = _hnsw_levels(cur, count)
    offsets = cur.array('<u8', 'HNSW offsets', expected=count + 1)
    wanted = np.concatenate([[0], np.cumsum(cum[levels])]).astype(np.uint64)
    if not np.array_equal(offsets, wanted):
        raise cur.fail('HNSW offsets do not match the node levels')
    neighbours = cur.array('<i4', 'HNSW neighbours', expected=int(wanted[-1]))
    _check_range(cur, neighbours, -1, count, 'HNSW neighbours')
    entry, max_level = cur.scalar('i', 'HNSW entry point'), cur.scalar('i', 'HNSW max level')
    cur.expect(entry < 0, count == 0, 'HNSW empty entry point')
    cur.expect(max_level, int(levels.max()) - 1 if count else -1, 'HNSW max level')
    _check_range(cur, np.array([entry]), -1, max(count, 0), 'HNSW entry point')
    for what in ('HNSW efConstruction', 'HNSW efSearch'):
        if cur.scalar('i', what) < 1:
            raise cur.fail(f'{what} is not positive')
    cur.take(4, 'HNSW reserved field')


def _hnsw(cur: _Cursor, dim: int, count: int) -> None:
    """Read an ``IndexHNSWFlat``: header, graph, flat storage."""
    _header(cur, _FOURCC['hnsw'], dim, count, 'HNSW index')
    _hnsw_graph(cur, count)
    _flat(cur, dim, count, 'HNSW storage')


def _ivf_header(cur: _Cursor, dim: int, count: int, config: IndexConfig) -> None:
    """Read the IVF part of an ``IndexIVFPQ``: list count, quantizer and direct map."""
    _header(cur, _FOURCC['ivfpq'], dim, count, 'IVF-PQ index')
    nlist = cur.scalar('Q', 'IVF nlist')
    cur.expect(nlist, config.ivf_nlist, 'IVF nlist')
    if not 1 <= cur.scalar('Q', 'IVF nprobe') <= nlist:
        raise cur.fail('IVF nprobe is outside [1, nlist]')
    _flat(cur, dim, nlist, 'IVF coarse quantizer')
    cur.expect(cur.scalar('B', 'IVF direct map type'), 0, 'IVF direct map type')
    cur.array('<i8', 'IVF direct map', expected=0)


def _product_quantizer(cur: _Cursor, dim: int, config: IndexConfig) -> None:
    """Read ``by_residual``, ``code_size`` and the product quantizer."""
    if cur.scalar('B', 'IVF-PQ by_residual') > 1:
        raise cur.fail('IVF-PQ by_residual is not a boolean')
    cur.expect(cur.scalar('Q', 'IVF-PQ code size'), config.pq_m, 'IVF-PQ code size')
    cur.expect(cur.scalar('Q', 'PQ dimension'), dim, 'PQ dimension')
    cur.expect(cur.scalar('Q', 'PQ sub-quantizers'), config.pq_m, 'PQ sub-quantizers')
    cur.expect(cur.scalar('Q', 'PQ bits'), PQ_BITS, 'PQ bits')
    cur.array('<f4', 'PQ centroids', expected=dim * 2 ** PQ_BITS)


def _list_sizes(cur: _Cursor, nlist: int) -> list[int]:
    """Read the inverted-list sizes (stored in full, or sparse as (list, size) pairs)."""
    kind = bytes(cur.take(4, 'inverted list layout'))
    if kind == _FULL_LISTS:
        return cur.array('<u8', 'inverted list sizes', expected=nlist).tolist()
    if kind != _SPARSE_LISTS:
        raise cur.fail(f'inverted list layout {kind!r} is unknown')
    pairs = cur.array('<u8', 'sparse inverted list sizes').tolist()
    if len(pairs) % 2 or len(pairs) > 2 * nlist:
        raise cur.fail(f'sparse inverted list sizes hold {len(pairs)} values')
    lists = pairs[0::2]
    if any(b <= a for a, b in zip(lists, lists[1:])) or (lists and lists[-1] >= nlist):
        raise cur.fail('sparse inverted list numbers are not increasing list ids')
    sizes = [0] * nlist
    for number, size in zip(lists, pairs[1::2]):
        sizes[number] = size
    return sizes


def _inverted_lists(cur: _Cursor, count: int, config: IndexConfig) -> None:
    """Read the ``ilar`` inverted lists; their ids must be ``0 .. count - 1``, each once."""
    cur.expect(bytes(cur.take(4, 'inverted lists type')), _ARRAY_LISTS, 'inverted lists type')
    cur.expect(cur.scalar('Q', 'inverted lists nlist'), config.ivf_nlist, 'inverted lists nlist')
    cur.expect(cur.scalar('Q', 'inverted lists code size'), config.pq_m,
               'inverted lists code size')
    sizes = [size for size in _list_sizes(cur, config.ivf_nlist) if size]
    if sum(sizes) != count:
        raise cur.fail(f'inverted lists hold {sum(sizes)} entries, expected {count}')
    ids = []
    for size in sizes:
        cur.take(size * config.pq_m, 'inverted list codes')
        ids.append(np.frombuffer(cur.take(size * 8, 'inverted list ids'), '<i8'))
    found = np.sort(np.concatenate(ids)) if ids else np.zeros(0, np.int64)
    if not np.array_equal(found, np.arange(count)):
        raise cur.fail(f'inverted list ids are not 0..{count - 1}, each once')


def check_index_bytes(data: bytes, kind: str, dim: int, count: int, config: IndexConfig,
                      where: str) -> None:
    """Check that ``data`` is a ``kind`` index of ``count`` x ``dim`` inner-product vectors.

    Args:
        data: the serialized index (``faiss.serialize_index`` / ``index.faiss``).
        kind: ``flat``, ``hnsw`` or ``ivfpq`` (the index type recorded in the manifest).
        dim: descriptor dimension.
        count: number of vectors.
        config: index settings; ``ivf_nlist`` and ``pq_m`` must match an IVF-PQ index.
        where: the file name used in error messages.

    Raises:
        MapFormatError: naming the first field that is malformed, inconsistent or truncated.
    """
    cur = _Cursor(data, where)
    if kind == 'flat':
        _flat(cur, dim, count, 'flat index')
    elif kind == 'hnsw':
        _hnsw(cur, dim, count)
    elif kind == 'ivfpq':
        _ivf_header(cur, dim, count, config)
        _product_quantizer(cur, dim, config)
        _inverted_lists(cur, count, config)
    else:
        raise MapFormatError(f'{where}: unknown index type {kind!r}')
    cur.end()
