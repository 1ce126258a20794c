"""Dense tokens of a map: rows kept in memory or memory-mapped from ``tokens.f16``."""

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from vpr_ros.map.manifest import CHUNK_BYTES, Layout, TOKEN_DTYPE
from vpr_ros.map.storage import HashingWriter


class GrowableArray:
    """Rows appended to a buffer that grows by doubling; committed rows are never rewritten."""

    def __init__(self, row_shape: tuple, dtype: Any, initial: Optional[np.ndarray] = None):
        self._buf = np.empty((0,) + tuple(row_shape), dtype=dtype)
        self._n = 0
        if initial is not None:
            self.append(initial)

    def __len__(self) -> int:
        return self._n

    def append(self, rows: np.ndarray) -> None:
        """Append ``rows``, growing the buffer when it is full."""
        need = self._n + len(rows)
        if need > len(self._buf):
            grown = np.empty((max(need, 2 * len(self._buf), 16),) + self._buf.shape[1:],
                             dtype=self._buf.dtype)
            grown[:self._n] = self._buf[:self._n]
            self._buf = grown
        self._buf[self._n:need] = rows
        self._n = need

    def truncate(self, n: int) -> None:
        """Keep only the first ``n`` rows."""
        self._n = min(self._n, n)

    def view(self) -> np.ndarray:
        """Return a view of the rows held."""
        return self._buf[:self._n]


class TokenStore:
    """Dense tokens: saved rows from a (memory-mapped) file followed by rows added since."""

    def __init__(self, shape: tuple[int, int], base: Optional[np.ndarray] = None):
        self.shape = shape
        self._base = base if base is not None else np.empty((0,) + shape, TOKEN_DTYPE)
        self._extra = GrowableArray(shape, TOKEN_DTYPE)

    def __len__(self) -> int:
        return len(self._base) + len(self._extra)

    def append(self, rows: np.ndarray) -> None:
        """Append ``rows`` after the last row."""
        self._extra.append(rows)

    def truncate(self, n: int) -> None:
        """Keep only the first ``n`` rows; the rows of the saved base are never dropped."""
        self._extra.truncate(n - len(self._base))

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Return a float16 copy of the rows ``ids``."""
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
        self._extra = GrowableArray(self.shape, TOKEN_DTYPE, initial=rest)


def write_chunks(writer: HashingWriter, arrays: Sequence[np.ndarray]) -> None:
    """Write ``arrays`` to ``writer`` as float16 rows, about ``CHUNK_BYTES`` at a time."""
    for array in arrays:
        rows = max(1, CHUNK_BYTES // max(1, array[:1].nbytes))
        for start in range(0, len(array), rows):
            writer.write(np.ascontiguousarray(array[start:start + rows], dtype=TOKEN_DTYPE))


def open_tokens(path: Path, layout: Layout, mmap: bool) -> np.ndarray:
    """Return the tokens in ``path``, memory-mapped or read into RAM."""
    shape = (layout.count,) + layout.token_shape
    if layout.count == 0:
        return np.empty(shape, TOKEN_DTYPE)
    if mmap:
        return np.memmap(path, dtype=TOKEN_DTYPE, mode='r', shape=shape)
    return np.fromfile(path, dtype=TOKEN_DTYPE).reshape(shape)
