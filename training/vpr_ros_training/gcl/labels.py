"""Graded-similarity label matrices: computed from camera poses, stored per city as ``.npz``.

A label matrix holds ``psi`` for every (query, database) pair of one city. Most pairs are far
apart (``psi = 0``), so only the non-zero entries are stored, in coordinate form:

``<city>_fov.npz``: ``query_index`` int32 ``[P]``, ``db_index`` int32 ``[P]``, ``psi`` float32
``[P]`` (all > 0), ``shape`` int64 ``[2]`` = (queries, database), ``config`` = the
:class:`~vpr_ros_training.gcl.fov.FovConfig` as a JSON string.

Files are written atomically (temporary file, fsync, rename) and read with ``np.load`` without
pickle. :class:`LabelMatrix` also wraps the released GCL ``<city>_gt.h5`` files (dense ``fov`` and
``sim`` datasets) behind the same ``row(q)`` interface.
"""

from dataclasses import asdict, dataclass
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Union

import numpy as np

from vpr_ros.atomic_file import write_bytes_atomic
from vpr_ros.data.ground_truth import positives_within_radius
from vpr_ros.errors import DatasetError
from vpr_ros_training.gcl.fov import fov_similarity, FovConfig, heading_difference

LOGGER = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
NPZ_KEYS = ('query_index', 'db_index', 'psi', 'shape', 'config')


@dataclass(frozen=True)
class Cameras:
    """Planar camera poses: ``xy`` ``[N, 2]`` metres (east, north) and ``yaw`` ``[N]`` radians."""

    xy: np.ndarray
    yaw: np.ndarray

    def __post_init__(self) -> None:
        """Check shapes and finiteness."""
        xy, yaw = np.asarray(self.xy), np.asarray(self.yaw)
        if xy.ndim != 2 or xy.shape[1] != 2 or yaw.shape != (len(xy),):
            raise DatasetError(f'cameras need xy [N, 2] and yaw [N], got {xy.shape}, {yaw.shape}')
        if not (np.all(np.isfinite(xy)) and np.all(np.isfinite(yaw))):
            raise DatasetError('camera poses contain non-finite values')

    def __len__(self) -> int:
        """Return the number of cameras."""
        return len(self.xy)

    def pose(self, index: int) -> tuple[float, float, float]:
        """Return ``(x, y, yaw)`` of camera ``index``."""
        return float(self.xy[index, 0]), float(self.xy[index, 1]), float(self.yaw[index])


@dataclass(frozen=True)
class SparseLabels:
    """Non-zero graded similarities of a ``shape = (queries, database)`` matrix."""

    query_index: np.ndarray
    db_index: np.ndarray
    psi: np.ndarray
    shape: tuple[int, int]
    config: FovConfig

    def dense(self) -> np.ndarray:
        """Return the full ``[Q, D] float32`` matrix."""
        matrix = np.zeros(self.shape, dtype=np.float32)
        matrix[self.query_index, self.db_index] = self.psi
        return matrix

    def as_matrix(self) -> 'LabelMatrix':
        """Return a :class:`LabelMatrix` view with fast row access."""
        return LabelMatrix.from_sparse(self)


def graded_labels(queries: Cameras, database: Cameras,
                  config: FovConfig = FovConfig()) -> SparseLabels:
    """Return ``psi`` of every query/database pair (only pairs within two radii are tested)."""
    candidates = positives_within_radius(queries.xy, database.xy, 2.0 * config.radius_m)
    max_diff = math.radians(config.max_heading_diff_deg)
    rows, cols, values = [], [], []
    for q, ids in enumerate(candidates):
        ids = ids[heading_difference(queries.yaw[q], database.yaw[ids]) <= max_diff]
        for j in ids:
            psi = fov_similarity(queries.pose(q), database.pose(int(j)), config)
            if psi > 0.0:
                rows.append(q)
                cols.append(int(j))
                values.append(psi)
    LOGGER.info('graded labels: %d non-zero of %d x %d pairs', len(values), len(queries),
                len(database))
    return SparseLabels(np.asarray(rows, np.int32), np.asarray(cols, np.int32),
                        np.asarray(values, np.float32), (len(queries), len(database)), config)


def write_labels(path: PathLike, labels: SparseLabels) -> Path:
    """Write ``labels`` to ``path`` (``.npz``) atomically; return the path."""
    buffer = io.BytesIO()
    np.savez(buffer, query_index=labels.query_index, db_index=labels.db_index, psi=labels.psi,
             shape=np.asarray(labels.shape, np.int64),
             config=np.asarray(json.dumps(asdict(labels.config))))
    return write_bytes_atomic(path, buffer.getvalue())


def read_labels(path: PathLike) -> SparseLabels:
    """Read a label file written by :func:`write_labels`, naming what is wrong with it."""
    try:
        with np.load(Path(path), allow_pickle=False) as data:
            missing = [k for k in NPZ_KEYS if k not in data.files]
            if missing:
                raise DatasetError(f'label file {path} lacks arrays {missing}')
            arrays = {k: data[k] for k in NPZ_KEYS}
        config = FovConfig(**json.loads(str(arrays['config'])))
    except (OSError, ValueError, TypeError) as exc:
        raise DatasetError(f'cannot read label file {path}: {exc}') from exc
    labels = SparseLabels(arrays['query_index'].astype(np.int64),
                          arrays['db_index'].astype(np.int64), arrays['psi'].astype(np.float32),
                          tuple(int(v) for v in arrays['shape']), config)
    check_labels(labels, path)
    return labels


def check_labels(labels: SparseLabels, source: PathLike) -> None:
    """Raise :class:`DatasetError` when indices or values of ``labels`` are out of range."""
    rows, cols = labels.shape
    n = len(labels.psi)
    if len(labels.query_index) != n or len(labels.db_index) != n:
        raise DatasetError(f'{source}: index and value arrays differ in length')
    if n and (labels.query_index.min() < 0 or labels.query_index.max() >= rows
              or labels.db_index.min() < 0 or labels.db_index.max() >= cols):
        raise DatasetError(f'{source}: pair indices outside the {rows} x {cols} matrix')
    if n and not (np.all(labels.psi > 0) and np.all(labels.psi <= 1)):
        raise DatasetError(f'{source}: stored psi values must lie in (0, 1]')


class LabelMatrix:
    """Row access to a ``[Q, D]`` graded (or binary) label matrix, dense or sparse."""

    def __init__(self, shape: tuple[int, int], row_reader) -> None:
        """Wrap ``row_reader(q) -> float32 [D]``."""
        self.shape = (int(shape[0]), int(shape[1]))
        self._row_reader = row_reader

    def row(self, query: int) -> np.ndarray:
        """Return the labels of ``query`` against every database image."""
        return np.asarray(self._row_reader(int(query)), dtype=np.float32)

    @classmethod
    def from_dense(cls, matrix: np.ndarray) -> 'LabelMatrix':
        """Wrap an in-memory ``[Q, D]`` array (or an h5py dataset)."""
        return cls(matrix.shape, lambda q: matrix[q])

    @classmethod
    def from_sparse(cls, labels: SparseLabels) -> 'LabelMatrix':
        """Wrap sparse labels; rows are rebuilt on demand."""
        order = np.argsort(labels.query_index, kind='stable')
        rows, cols = labels.query_index[order], labels.db_index[order]
        values = labels.psi[order]
        bounds = np.searchsorted(rows, np.arange(labels.shape[0] + 1))

        def read(q: int) -> np.ndarray:
            row = np.zeros(labels.shape[1], dtype=np.float32)
            row[cols[bounds[q]:bounds[q + 1]]] = values[bounds[q]:bounds[q + 1]]
            return row
        return cls(labels.shape, read)
