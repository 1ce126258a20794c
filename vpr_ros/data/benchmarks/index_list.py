"""Benchmark format ``index-list``: ``query/`` + ``ref/`` folders and an index ground truth.

- ``index-list``: ``query/`` + ``ref/`` folders and a ground-truth file: a JSON list of
  ``{"query": i, "positives": [j, ...]}`` (VPR-Bench converted), or an ``.npz`` with a boolean
  ``GThard`` ``[db, q]`` matrix (VPR_Tutorial). Out-of-range indices are clipped away.
"""

from pathlib import Path
from typing import Optional

import numpy as np

from vpr_ros.data.benchmarks.dataset import clip_ids, EvalDataset, PathLike, read_json
from vpr_ros.data.benchmarks.image_folders import list_image_files
from vpr_ros.errors import DatasetError


def read_index_list_dataset(root: PathLike, ground_truth: str = 'ground_truth.json',
                            query_dir: str = 'query', ref_dir: str = 'ref',
                            name: Optional[str] = None) -> EvalDataset:
    """Read ``query/`` + ``ref/`` folders and an index-list ground truth (see module doc).

    Queries absent from the ground truth get no positive (they count as misses).
    """
    root = Path(root)
    db_files = list_image_files(root / ref_dir)
    query_files = list_image_files(root / query_dir)
    gt_path = root / ground_truth
    if gt_path.suffix == '.npz':
        positives = _positives_from_matrix(gt_path, len(query_files), len(db_files))
    else:
        positives = _positives_from_json(gt_path, len(query_files), len(db_files))
    return EvalDataset(name or root.name, tuple(db_files), tuple(query_files), tuple(positives),
                       info={'format': 'index-list', 'ground_truth': gt_path.name})


def _positives_from_json(path: Path, num_queries: int, num_db: int) -> list[np.ndarray]:
    data = read_json(path)
    if not isinstance(data, list):
        raise DatasetError(f'{path}: expected a list of {{"query", "positives"}} objects')
    positives = [np.empty(0, np.int64) for _ in range(num_queries)]
    for n, item in enumerate(data):
        try:
            query, ids = int(item['query']), [int(j) for j in item['positives']]
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f'{path}: entry {n} needs an integer "query" and a list of '
                               f'integer "positives" ({exc!r})') from exc
        if not 0 <= query < num_queries:
            raise DatasetError(f'{path}: entry {n} names query {query}, but there are '
                               f'{num_queries} query images')
        positives[query] = clip_ids(ids, num_db)
    return positives


def _positives_from_matrix(path: Path, num_queries: int, num_db: int) -> list[np.ndarray]:
    try:
        with np.load(path) as archive:
            key = 'GThard' if 'GThard' in archive.files else 'positives'
            matrix = np.asarray(archive[key], dtype=bool)
    except (OSError, KeyError, ValueError) as exc:
        raise DatasetError(f'cannot read a GThard [db, q] matrix from {path}: {exc}') from exc
    if matrix.shape != (num_db, num_queries):
        raise DatasetError(f'{path}: matrix shape {matrix.shape} is not (database {num_db}, '
                           f'queries {num_queries})')
    return [np.flatnonzero(matrix[:, q]).astype(np.int64) for q in range(num_queries)]
