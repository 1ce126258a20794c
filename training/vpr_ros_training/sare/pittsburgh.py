"""Pittsburgh-30k/250k splits from NetVLAD's ``dbStruct`` ``.mat`` files (``pitts30k_train.mat``).

The struct's fields, in order: ``whichSet``, ``dbImageFns`` (cell of relative paths), ``utmDb``
(``2 x N``), ``qImageFns``, ``utmQ`` (``2 x Q``), ``numImages``, ``numQueries``, ``posDistThr``
(25 m), ``posDistSqThr`` (625), ``nonTrivPosDistSqThr`` (100). Fields are read by name when the
file has them, else by position (as the PyTorch ports do). Database paths are relative to
``db_root`` (``<pitts>/``), query paths to ``query_root`` (``<pitts>/queries_real/``). Read with
:func:`scipy.io.loadmat` (no pickle involved).
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vpr_ros.data.ground_truth import positives_within_radius
from vpr_ros.errors import DatasetError
from vpr_ros_training.traversal import EvalSet

FIELDS = ('whichSet', 'dbImageFns', 'utmDb', 'qImageFns', 'utmQ', 'numImages', 'numQueries',
          'posDistThr', 'posDistSqThr', 'nonTrivPosDistSqThr')


@dataclass(frozen=True)
class PittsSplit:
    """Database and query images of one split with UTM positions."""

    name: str
    db_paths: tuple
    db_xy: np.ndarray
    query_paths: tuple
    query_xy: np.ndarray
    pos_dist_thr: float

    def eval_set(self, radius_m: float = 0.0) -> EvalSet:
        """Return the split as an evaluation set (positives within ``radius_m`` or posDistThr)."""
        found = positives_within_radius(self.query_xy, self.db_xy,
                                        radius_m or self.pos_dist_thr)
        return EvalSet(self.name, self.query_paths, self.db_paths,
                       tuple(tuple(int(j) for j in ids) for ids in found))


def struct_fields(path: Path) -> dict:
    """Return the ``dbStruct`` fields of a NetVLAD ``.mat`` file by name."""
    from scipy.io import loadmat
    try:
        data = loadmat(str(path))
        struct = data['dbStruct']
    except (OSError, ValueError, KeyError, NotImplementedError) as exc:
        raise DatasetError(f'cannot read dbStruct from {path}: {exc}') from exc
    names = struct.dtype.names or FIELDS
    values = struct.item() if struct.dtype.names else struct
    if len(values) < len(FIELDS):
        raise DatasetError(f'{path}: dbStruct has {len(values)} fields, expected {len(FIELDS)}')
    return dict(zip(names if set(FIELDS) <= set(names) else FIELDS, values))


def cell_strings(cell: np.ndarray) -> tuple:
    """Return the strings of a MATLAB cell array of char arrays."""
    return tuple(str(np.asarray(item).reshape(-1)[0]) for item in np.asarray(cell).reshape(-1))


def utm_rows(array: np.ndarray, count: int, path: Path) -> np.ndarray:
    """Return ``[N, 2]`` positions from a ``2 x N`` (or ``N x 2``) MATLAB matrix."""
    utm = np.asarray(array, dtype=np.float64)
    utm = utm.T if utm.shape[0] == 2 and utm.shape[1] == count else utm
    if utm.shape != (count, 2):
        raise DatasetError(f'{path}: UTM matrix of shape {array.shape} for {count} images')
    return utm


def read_pitts_split(mat_path: str, db_root: str, query_root: str) -> PittsSplit:
    """Read a NetVLAD ``dbStruct`` file and resolve image paths."""
    path = Path(mat_path)
    fields = struct_fields(path)
    db_files, q_files = cell_strings(fields['dbImageFns']), cell_strings(fields['qImageFns'])
    db_xy = utm_rows(fields['utmDb'], len(db_files), path)
    query_xy = utm_rows(fields['utmQ'], len(q_files), path)
    return PittsSplit(path.stem, tuple(str(Path(db_root) / f) for f in db_files), db_xy,
                      tuple(str(Path(query_root) / f) for f in q_files), query_xy,
                      float(np.asarray(fields['posDistThr']).reshape(-1)[0]))
