"""Benchmark formats ``pitts`` and ``tokyo``: the NetVLAD splits, ``.mat`` files or folders.

- ``pitts`` (30k / 250k) and ``tokyo`` (Tokyo 24/7, queries resized to max side 640): either the
  VPR-datasets-downloader folder layout or the NetVLAD ``dbStruct`` ``.mat`` files.
"""

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from vpr_ros.data.benchmarks.dataset import DEFAULT_RADIUS_M, EvalDataset, PathLike, warn_counts
from vpr_ros.data.benchmarks.image_folders import read_folder_dataset
from vpr_ros.data.ground_truth import positives_within_radius
from vpr_ros.errors import DatasetError

TOKYO_QUERY_MAX_SIDE = 640


def read_mat_struct(path: PathLike) -> dict:
    """Return the NetVLAD ``dbStruct`` of a ``.mat`` file as a dictionary.

    Keys: ``db_images``, ``utm_db [D, 2]``, ``q_images``, ``utm_q [Q, 2]`` and ``pos_dist_thr``
    (NaN when absent). Fields are read by name, falling back to the NetVLAD field order.
    """
    try:
        from scipy.io import loadmat
    except ImportError as exc:
        raise DatasetError(f'reading {path} needs scipy (pip install scipy)') from exc
    try:
        struct = loadmat(str(path))['dbStruct']
    except (OSError, KeyError, ValueError, NotImplementedError) as exc:
        raise DatasetError(f'cannot read a NetVLAD dbStruct from {path}: {exc}') from exc
    record = struct.reshape(-1)[0]
    order = ('whichSet', 'dbImageFns', 'utmDb', 'qImageFns', 'utmQ', 'numImages',
             'numQueries', 'posDistThr')
    names = struct.dtype.names
    fields = {n: record[n] for n in names} if names else dict(zip(order, record))
    return {'db_images': _mat_strings(fields['dbImageFns']),
            'utm_db': np.asarray(fields['utmDb'], np.float64).reshape(2, -1).T,
            'q_images': _mat_strings(fields['qImageFns']),
            'utm_q': np.asarray(fields['utmQ'], np.float64).reshape(2, -1).T,
            'pos_dist_thr': float(np.asarray(fields.get('posDistThr', np.nan)).reshape(-1)[0])}


def _mat_strings(cell: np.ndarray) -> list[str]:
    return [str(np.asarray(item).reshape(-1)[0]).strip() for item in np.asarray(cell).reshape(-1)]


def _resolve_images(names: Sequence[str], bases: Sequence[Path]) -> list[Path]:
    """Join ``names`` to the first base folder that holds the first name (also ``.png->.jpg``)."""
    if not names:
        return []
    first = Path(names[0])
    for base in bases:
        for suffix in (first.suffix, '.jpg'):
            if (base / first.with_suffix(suffix)).is_file():
                return [base / Path(n).with_suffix(suffix) for n in names]
    raise DatasetError(f'image {names[0]} not found under any of {[str(b) for b in bases]}')


def _mat_dataset(root: Path, mat_path: Path, query_bases: Sequence[Path], name: str,
                 radius_m: float, query_max_side: Optional[int]) -> EvalDataset:
    struct = read_mat_struct(mat_path)
    db_files = _resolve_images(struct['db_images'], [root, root / 'images'])
    q_files = _resolve_images(struct['q_images'], list(query_bases) + [root])
    positives = positives_within_radius(struct['utm_q'], struct['utm_db'], radius_m)
    info = {'format': 'netvlad-mat', 'mat': mat_path.name, 'positive_radius_m': radius_m}
    return warn_counts(EvalDataset(name, tuple(db_files), tuple(q_files), tuple(positives),
                                   query_max_side, info))


def _downloader_root(root: Path, split: str) -> Optional[Path]:
    for candidate in (root / 'images' / split, root):
        if (candidate / 'database').is_dir() and (candidate / 'queries').is_dir():
            return candidate
    return None


def _find_file(root: Path, names: Sequence[str]) -> Path:
    for name in names:
        for folder in (root, root / 'datasets'):
            if (folder / name).is_file():
                return folder / name
    raise DatasetError(f'{root}: neither images/<split>/{{database,queries}} folders nor any of '
                       f'{list(names)} (in {root} or {root / "datasets"}) found')


def read_pittsburgh(root: PathLike, variant: str = '30k', split: str = 'test',
                    radius_m: float = DEFAULT_RADIUS_M) -> EvalDataset:
    """Read Pittsburgh-30k or -250k: downloader folders or ``pitts<variant>_<split>.mat``."""
    if variant not in ('30k', '250k'):
        raise DatasetError(f'Pittsburgh variant must be 30k or 250k, got {variant!r}')
    root, name = Path(root), f'pitts{variant}-{split}'
    folders = _downloader_root(root, split)
    if folders is not None:
        dataset = read_folder_dataset(folders, radius_m, name=name)
        return warn_counts(dataset)
    mat = _find_file(root, [f'pitts{variant}_{split}.mat'])
    return _mat_dataset(root, mat, [root / 'queries_real'], name, radius_m, None)


def read_tokyo247(root: PathLike, radius_m: float = DEFAULT_RADIUS_M,
                  query_max_side: int = TOKYO_QUERY_MAX_SIDE) -> EvalDataset:
    """Read Tokyo 24/7 (downloader folders or ``tokyo247.mat``); queries shrink to max side 640."""
    root = Path(root)
    folders = _downloader_root(root, 'test')
    if folders is not None:
        base = read_folder_dataset(folders, radius_m, name='tokyo247')
        return warn_counts(EvalDataset(base.name, base.database, base.queries, base.positives,
                                       query_max_side, base.info))
    mat = _find_file(root, ['tokyo247.mat'])
    query_bases = [root / '247query_v3', root / '247query_subset_v2', root / 'queries']
    return _mat_dataset(root, mat, query_bases, 'tokyo247', radius_m, query_max_side)
