"""Benchmark format ``loop-matrix``: a sequence whose ground truth is a loop-closure matrix.

- ``loop-matrix``: a sequence whose ground truth is a square loop-closure matrix in a ``.mat``,
  ``.npy`` or ``.npz`` file (``[i, j] != 0``: frames ``i`` and ``j`` show the same place).
"""

import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np

from vpr_ros.data.benchmarks.dataset import EvalDataset, PathLike
from vpr_ros.data.benchmarks.sequence import (DEFAULT_MIN_GAP, list_sequence_images,
                                              sequence_dataset, sequence_info, sequence_stamps)
from vpr_ros.errors import DatasetError

LOGGER = logging.getLogger(__name__)


def read_loop_matrix_dataset(root: PathLike, ground_truth: str, gt_key: Optional[str] = None,
                             image_dir: str = 'images', min_gap: int = DEFAULT_MIN_GAP,
                             name: Optional[str] = None, times: Optional[str] = None,
                             frame_rate: Optional[float] = None,
                             exclude_recent_s: float = 0.0) -> EvalDataset:
    """Read a sequence whose ground truth is a square loop-closure matrix.

    Args:
        root: the sequence folder.
        ground_truth: the matrix file, relative to ``root`` (or absolute): ``.mat``
            (``scipy.io.loadmat``, MATLAB v5/v7; dense or sparse), ``.npy`` or ``.npz`` (read
            without unpickling). Entry ``[i, j] != 0`` means frames ``i`` and ``j`` show the same
            place (frame ``i`` revisits frame ``j``); either triangle may hold a pair, so a
            symmetric matrix reads the same as its lower triangle.
        gt_key: the variable holding the matrix; default: the only square 2-D array (1x1
            scalars aside) in the file.
        image_dir: the image folder under ``root``, one image per matrix row, in capture order
            (:func:`list_sequence_images`).
        min_gap: frame ``i`` is matched against frames ``0 .. i - min_gap`` (inclusive).
        name: sequence name for reports (default: the folder name).
        times: frame times file (see :func:`sequence_stamps`).
        frame_rate: frame rate in Hz (see :func:`sequence_stamps`).
        exclude_recent_s: see :func:`sequence_dataset`.
    """
    root = Path(root)
    files = list_sequence_images(root / image_dir)
    path = root / ground_truth
    key, matrix = read_loop_matrix(path, gt_key)
    if matrix.shape[0] != len(files):
        raise DatasetError(f'{path}: the loop-closure matrix {key!r} is {matrix.shape[0]}x'
                           f'{matrix.shape[1]} but {root / image_dir} holds {len(files)} images; '
                           'it needs one row and one column per image')
    loops = matrix | matrix.T
    revisits = [np.flatnonzero(loops[i, :i]) for i in range(len(files))]
    stamps, source = sequence_stamps(root, len(files), times, frame_rate)
    info = sequence_info('loop-matrix', ground_truth, Path(image_dir), source)
    info['gt_key'] = key
    return sequence_dataset(name or root.name, files, revisits, min_gap, stamps,
                            exclude_recent_s, info)


def read_loop_matrix(path: PathLike, key: Optional[str] = None) -> tuple[str, np.ndarray]:
    """Return ``(variable name, [N, N] bool matrix of nonzero entries)`` from a matrix file.

    See :func:`read_loop_matrix_dataset` for the formats and the choice of the variable.
    """
    path = Path(path)
    variables = _matrix_file_variables(path)
    if path.suffix.lower() == '.npy':
        if key is not None:
            LOGGER.warning('%s: a .npy file holds one array; --gt-key %s is ignored', path, key)
        key = next(iter(variables))
    elif key is not None:
        if key not in variables:
            raise DatasetError(f'{path} has no variable {key!r}; it holds '
                               f'{_describe_variables(variables)}')
    else:
        square = [k for k, v in variables.items() if _is_square_matrix(v)]
        if len(square) > 1:
            raise DatasetError(f'{path} holds several square 2-D arrays '
                               f'({_describe_variables({k: variables[k] for k in square})}); '
                               'name the loop-closure matrix with --gt-key')
        if not square and len(variables) != 1:
            raise DatasetError(f'{path} holds no square 2-D array (a [frames, frames] '
                               f'loop-closure matrix); it holds {_describe_variables(variables)}')
        key = square[0] if square else next(iter(variables))
    return key, _loop_matrix(path, key, variables[key])


def _matrix_file_variables(path: Path) -> dict:
    suffix = path.suffix.lower()
    if not path.is_file():
        raise DatasetError(f'loop-closure matrix file {path} does not exist')
    try:
        if suffix == '.mat':
            try:
                from scipy.io import loadmat
            except ImportError as exc:
                raise DatasetError(f'reading {path} needs scipy (pip install scipy)') from exc
            data = loadmat(str(path))
            return {k: v for k, v in data.items() if not k.startswith('__')}
        if suffix == '.npy':
            return {'array': np.load(path)}
        if suffix == '.npz':
            with np.load(path) as archive:
                return {k: archive[k] for k in archive.files}
    except NotImplementedError as exc:
        raise DatasetError(f'cannot read {path}: {exc} (MATLAB v7.3 files are HDF5; save with '
                           "save(..., '-v7') or convert the matrix to .npy)") from exc
    except (OSError, ValueError, TypeError) as exc:
        hint = '' if suffix == '.mat' else ' (object arrays are refused: never unpickled)'
        raise DatasetError(f'cannot read a loop-closure matrix from {path}{hint}: '
                           f'{exc}') from exc
    raise DatasetError(f'{path}: a loop-closure matrix must be a .mat, .npy or .npz file')


def _is_sparse(value: Any) -> bool:
    try:
        from scipy.sparse import issparse
    except ImportError:
        return False
    return bool(issparse(value))


def _is_square_matrix(value: Any) -> bool:
    if not _is_sparse(value) and not (isinstance(value, np.ndarray)
                                      and value.dtype.kind in 'biuf'):
        return False
    return len(value.shape) == 2 and value.shape[0] == value.shape[1] > 1


def _describe_variables(variables: dict) -> str:
    if not variables:
        return 'no variables'
    return ', '.join(f'{k} {"x".join(map(str, getattr(v, "shape", ()))) or type(v).__name__}'
                     f'{" " + str(v.dtype) if hasattr(v, "dtype") else ""}'
                     for k, v in variables.items())


def _loop_matrix(path: Path, key: str, value: Any) -> np.ndarray:
    sparse = _is_sparse(value)
    if not sparse:
        value = np.asarray(value)
        if value.dtype.kind not in 'biuf':
            raise DatasetError(f'{path}: {key!r} holds {value.dtype} values, not numbers; a '
                               'loop-closure matrix holds 0 / nonzero per frame pair')
    shape = tuple(value.shape)
    if len(shape) != 2:
        raise DatasetError(f'{path}: {key!r} has shape {shape}, but a loop-closure matrix is '
                           '2-D: [frames, frames]')
    if shape[0] != shape[1]:
        raise DatasetError(f'{path}: {key!r} is not square: shape {shape}; a loop-closure '
                           'matrix has one row and one column per frame')
    data = value.data if sparse else value
    if np.asarray(data).dtype.kind == 'f' and not np.all(np.isfinite(data)):
        raise DatasetError(f'{path}: {key!r} has non-finite (NaN or infinite) entries')
    if sparse:
        return np.asarray(value.toarray() != 0)
    return value != 0
