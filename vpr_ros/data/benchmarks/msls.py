"""Benchmark formats ``msls-val`` and ``msls-test`` (Mapillary SLS) and the submission file.

- ``msls-val``: official MSLS layout; queries without positives dropped (740 / 18,871), and the
  official index lists (``msls_val_{db,q}Images.npy``, ``msls_val_qIdx.npy``) when given.
- ``msls-test``: the challenge split without labels, for :func:`write_msls_submission`.
"""

import csv
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from vpr_ros.atomic_file import write_text_atomic
from vpr_ros.data.benchmarks.dataset import DEFAULT_RADIUS_M, EvalDataset, PathLike, warn_counts
from vpr_ros.data.benchmarks.image_folders import list_image_files
from vpr_ros.data.ground_truth import positives_within_radius
from vpr_ros.errors import DatasetError

MSLS_VAL_CITIES = ('cph', 'sf')
MSLS_TEST_CITIES = ('miami', 'athens', 'buenosaires', 'stockholm', 'bengaluru', 'kampala')


def _read_csv_rows(path: Path) -> list[dict]:
    try:
        with path.open(newline='', encoding='utf-8') as handle:
            return list(csv.DictReader(handle))
    except OSError as exc:
        raise DatasetError(f'cannot read MSLS metadata {path}: {exc}') from exc


def _is_true(text: Optional[str]) -> bool:
    return str(text).strip().lower() in ('true', '1')


def _msls_part(part_dir: Path) -> tuple[list[str], np.ndarray]:
    """Return the non-panorama keys of an MSLS ``query``/``database`` folder and their UTM.

    ``postprocessed.csv``, ``raw.csv`` and ``subtask_index.csv`` are aligned row by row, as the
    official ``mapillary_sls`` loader assumes.
    """
    rows = _read_csv_rows(part_dir / 'postprocessed.csv')
    raw = _read_csv_rows(part_dir / 'raw.csv')
    subtask_path = part_dir / 'subtask_index.csv'
    subtask = _read_csv_rows(subtask_path) if subtask_path.is_file() else [{}] * len(rows)
    if not len(rows) == len(raw) == len(subtask):
        raise DatasetError(f'{part_dir}: postprocessed.csv, raw.csv and subtask_index.csv have '
                           f'{len(rows)}, {len(raw)} and {len(subtask)} rows')
    keys, utm = [], []
    for row, raw_row, task in zip(rows, raw, subtask):
        if _is_true(raw_row.get('pano')) or not _is_true(task.get('all', 'True')):
            continue
        keys.append(row['key'])
        utm.append((float(row['easting']), float(row['northing'])))
    return keys, np.asarray(utm, dtype=np.float64).reshape(-1, 2)


def _msls_city(root: Path, city: str) -> tuple:
    city_dir = root / 'train_val' / city
    q_keys, q_utm = _msls_part(city_dir / 'query')
    db_keys, db_utm = _msls_part(city_dir / 'database')
    q_paths = [city_dir / 'query' / 'images' / f'{k}.jpg' for k in q_keys]
    db_paths = [city_dir / 'database' / 'images' / f'{k}.jpg' for k in db_keys]
    return q_paths, q_utm, db_paths, db_utm


def read_msls_val(root: PathLike, index_dir: Optional[PathLike] = None,
                  radius_m: float = DEFAULT_RADIUS_M,
                  cities: Sequence[str] = MSLS_VAL_CITIES) -> EvalDataset:
    """Read MSLS-val: non-panorama images, positives within 25 m, queries without one dropped.

    Args:
        root: the MSLS root holding ``train_val/<city>/{query,database}``.
        index_dir: folder with the official ``msls_val_dbImages.npy``, ``msls_val_qImages.npy``
            and ``msls_val_qIdx.npy`` (string and integer arrays; default: ``root`` when it
            holds them); when present, their order and query selection are used and the UTM
            still comes from ``postprocessed.csv``.
        radius_m: positive radius.
        cities: the validation cities.
    """
    root = Path(root)
    parts = [_msls_city(root, city) for city in cities]
    q_paths = [p for part in parts for p in part[0]]
    db_paths = [p for part in parts for p in part[2]]
    q_utm = np.concatenate([part[1] for part in parts])
    db_utm = np.concatenate([part[3] for part in parts])
    info = {'format': 'msls-val', 'positive_radius_m': radius_m, 'cities': list(cities)}
    if index_dir is None and (root / 'msls_val_qIdx.npy').is_file():
        index_dir = root
    if index_dir is not None:
        q_paths, q_utm, db_paths, db_utm = _msls_apply_lists(
            root, Path(index_dir), (q_paths, q_utm, db_paths, db_utm))
        info['index_lists'] = str(index_dir)
    positives = positives_within_radius(q_utm, db_utm, radius_m)
    keep = [q for q, ids in enumerate(positives) if len(ids)]
    return warn_counts(EvalDataset('msls-val', tuple(db_paths), tuple(q_paths[q] for q in keep),
                                   tuple(positives[q] for q in keep), info=info))


def _load_plain_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path)
    except (OSError, ValueError) as exc:
        raise DatasetError(f'cannot load {path} without unpickling (object arrays are refused; '
                           f'convert them to plain string/int arrays): {exc}') from exc


def _msls_apply_lists(root: Path, index_dir: Path, found: tuple) -> tuple:
    q_paths, q_utm, db_paths, db_utm = found
    all_utm = np.concatenate([q_utm, db_utm])
    lookup = {p.stem: (p, xy) for p, xy in zip(q_paths + db_paths, all_utm)}
    db_list = _load_plain_npy(index_dir / 'msls_val_dbImages.npy')
    q_list = _load_plain_npy(index_dir / 'msls_val_qImages.npy')
    q_idx = _load_plain_npy(index_dir / 'msls_val_qIdx.npy').astype(np.int64).reshape(-1)
    q_list = [q_list[i] for i in q_idx]
    q_sel = [_msls_lookup(lookup, name, root) for name in q_list]
    db_sel = [_msls_lookup(lookup, name, root) for name in db_list]
    return ([p for p, _ in q_sel], np.array([xy for _, xy in q_sel]).reshape(-1, 2),
            [p for p, _ in db_sel], np.array([xy for _, xy in db_sel]).reshape(-1, 2))


def _msls_lookup(lookup: dict, name: Any, root: Path) -> tuple:
    key = Path(str(name)).stem
    if key not in lookup:
        raise DatasetError(f'MSLS index list names {name!r}, which is not a non-panorama image '
                           f'with UTM under {root}')
    return lookup[key]


def read_msls_test(root: PathLike, cities: Sequence[str] = MSLS_TEST_CITIES) -> EvalDataset:
    """Read the MSLS challenge split (``test/<city>/{query,database}/images``); no positives."""
    root = Path(root)
    q_files, db_files = [], []
    for city in cities:
        city_dir = root / 'test' / city
        q_files += list_image_files(city_dir / 'query' / 'images')
        db_files += list_image_files(city_dir / 'database' / 'images')
    empty = tuple(np.empty(0, np.int64) for _ in q_files)
    return warn_counts(EvalDataset('msls-test', tuple(db_files), tuple(q_files), empty,
                                   info={'format': 'msls-test', 'cities': list(cities)}))


def write_msls_submission(path: PathLike, dataset: EvalDataset, predictions: np.ndarray) -> Path:
    """Write the MSLS challenge file: one ``query_key db_key1 ... db_keyK`` line per query.

    ``predictions`` is ``[Q, K]`` database indices ranked best first (-1 entries are skipped).
    The file is written atomically.
    """
    preds = np.asarray(predictions, dtype=np.int64)
    if preds.ndim != 2 or len(preds) != dataset.num_queries:
        raise DatasetError(f'predictions shape {preds.shape} does not match '
                           f'{dataset.num_queries} queries')
    lines = [' '.join([dataset.query_key(q)] + [dataset.database_key(int(j)) for j in row
                                                if j >= 0]) for q, row in enumerate(preds)]
    return write_text_atomic(path, '\n'.join(lines) + '\n')
