"""Mapillary Street-level Sequences (MSLS) for GCL: per-city images, poses and graded labels.

Layout (``train_val``)::

    <root>/train_val/<city>/{query,database}/images/<key>.jpg
    <root>/train_val/<city>/{query,database}/postprocessed.csv   key, easting, northing, ...
    <root>/train_val/<city>/{query,database}/raw.csv              key, lon, lat, ca, ..., pano
    <root>/train_val/<city>_gt.h5                                 released GCL labels (optional)

Rows of both CSV files are in the same order (the official ``create_json_idx.py`` asserts equal
keys row by row), which is also the row/column order of the released ``<city>_gt.h5`` matrices
(datasets ``fov``: graded ``[Q, D]``, ``sim``: binary). Columns are found by header name
(``key``, ``easting``, ``northing``, ``ca``, ``pano``) with the official positional fallback
(``postprocessed.csv`` columns 2/3 = easting/northing, ``raw.csv`` column 4 = compass angle, last
column = panorama flag). When a city's ``_gt.h5`` exists and ``h5py`` is installed its labels are
used (rows read lazily); otherwise labels are computed by our field-of-view labeller from UTM
position and compass angle and cached as ``<cache_dir>/<city>_fov.npz``. Without ``sim`` labels,
binary labels are ``psi >= 0.5``.
"""

import csv
from dataclasses import dataclass
import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from vpr_ros.data.ground_truth import positives_within_radius
from vpr_ros.errors import DatasetError
from vpr_ros_training.gcl.fov import compass_to_yaw, FovConfig
from vpr_ros_training.gcl.labels import (Cameras, graded_labels, LabelMatrix, read_labels,
                                         write_labels)
from vpr_ros_training.gcl.pairs import binary_matrix, PairSource
from vpr_ros_training.traversal import EvalSet

LOGGER = logging.getLogger(__name__)

TRAIN_CITIES = ('trondheim', 'london', 'boston', 'melbourne', 'amsterdam', 'helsinki', 'tokyo',
                'toronto', 'saopaulo', 'moscow', 'zurich', 'paris', 'bangkok', 'budapest',
                'austin', 'berlin', 'ottawa', 'phoenix', 'goa', 'amman', 'nairobi', 'manila')
VAL_CITIES = ('cph', 'sf')
LABEL_KEYS = ('fov', 'sim')
EVAL_RADIUS_M = 25.0


@dataclass(frozen=True)
class MslsSplit:
    """The query or database images of one city with their poses and panorama flags."""

    keys: tuple
    paths: tuple
    cameras: Cameras
    pano: np.ndarray


def read_csv_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """Return ``(header, rows)`` of a CSV file, raising :class:`DatasetError` when unreadable."""
    try:
        with path.open(newline='') as stream:
            rows = list(csv.reader(stream))
    except OSError as exc:
        raise DatasetError(f'cannot read MSLS metadata {path}: {exc}') from exc
    if len(rows) < 1:
        raise DatasetError(f'MSLS metadata {path} is empty')
    return [name.strip() for name in rows[0]], rows[1:]


def column(header: list[str], name: str, fallback: int) -> int:
    """Return the index of column ``name``, or ``fallback`` when the header lacks it."""
    return header.index(name) if name in header else fallback


def parse_flag(text: str) -> bool:
    """Return the boolean of an MSLS flag cell ('True'/'False', '1'/'0')."""
    return text.strip().lower() in ('true', '1', 'yes')


def read_msls_split(root: Path, city: str, split: str) -> MslsSplit:
    """Read ``<root>/train_val/<city>/<split>`` (``split`` = query or database)."""
    folder = Path(root) / 'train_val' / city / split
    pp_header, pp_rows = read_csv_rows(folder / 'postprocessed.csv')
    raw_header, raw_rows = read_csv_rows(folder / 'raw.csv')
    if len(pp_rows) != len(raw_rows):
        raise DatasetError(f'{folder}: postprocessed.csv has {len(pp_rows)} rows, raw.csv '
                           f'{len(raw_rows)}')
    key_pp, key_raw = column(pp_header, 'key', 1), column(raw_header, 'key', 1)
    east, north = column(pp_header, 'easting', 2), column(pp_header, 'northing', 3)
    compass, pano = column(raw_header, 'ca', 4), column(raw_header, 'pano', len(raw_header) - 1)
    try:
        for i, (a, b) in enumerate(zip(pp_rows, raw_rows)):
            if a[key_pp] != b[key_raw]:
                raise DatasetError(f'{folder}: row {i} keys differ ({a[key_pp]} vs {b[key_raw]})')
        xy = np.array([[float(r[east]), float(r[north])] for r in pp_rows]).reshape(-1, 2)
        yaw = compass_to_yaw(np.array([float(r[compass]) for r in raw_rows]))
        flags = np.array([parse_flag(r[pano]) for r in raw_rows], dtype=bool)
    except (IndexError, ValueError) as exc:
        raise DatasetError(f'{folder}: malformed metadata row: {exc}') from exc
    keys = tuple(r[key_pp] for r in pp_rows)
    paths = tuple(str(folder / 'images' / f'{k}.jpg') for k in keys)
    return MslsSplit(keys, paths, Cameras(xy, np.asarray(yaw).reshape(-1)), flags)


def open_h5_labels(path: Path, key: str, shape: tuple[int, int]) -> Optional[LabelMatrix]:
    """Return the ``key`` matrix of a released ``_gt.h5`` file, or None without h5py."""
    try:
        import h5py
    except ImportError:
        LOGGER.warning('%s exists but h5py is not installed: computing labels instead', path)
        return None
    handle = h5py.File(path, 'r')
    if key not in handle:
        raise DatasetError(f'{path} has no dataset {key!r} (found {list(handle.keys())})')
    if tuple(handle[key].shape) != shape:
        raise DatasetError(f'{path}: {key} is {tuple(handle[key].shape)}, expected {shape} '
                           f'(queries x database)')
    LOGGER.info('%s: released %s labels %s', path.name, key, shape)
    return LabelMatrix.from_dense(handle[key])


def computed_labels(city: str, query: MslsSplit, database: MslsSplit, fov: FovConfig,
                    cache_dir: Path) -> LabelMatrix:
    """Return our field-of-view labels of ``city``, computing and caching them when needed."""
    path = Path(cache_dir) / f'{city}_fov.npz'
    if path.is_file():
        labels = read_labels(path)
        if labels.config == fov and labels.shape == (len(query.keys), len(database.keys)):
            return labels.as_matrix()
        LOGGER.info('%s was made with other settings or data: recomputing', path)
    labels = graded_labels(query.cameras, database.cameras, fov)
    write_labels(path, labels)
    LOGGER.info('wrote %s (%d non-zero pairs)', path, len(labels.psi))
    return labels.as_matrix()


def city_labels(root: Path, city: str, query: MslsSplit, database: MslsSplit, key: str,
                fov: FovConfig, cache_dir: Path) -> LabelMatrix:
    """Return the label matrix of ``city``: released ``_gt.h5`` when present, else ours."""
    if key not in LABEL_KEYS:
        raise DatasetError(f'label key must be one of {LABEL_KEYS}, got {key!r}')
    shape = (len(query.keys), len(database.keys))
    h5_path = Path(root) / 'train_val' / f'{city}_gt.h5'
    if h5_path.is_file():
        matrix = open_h5_labels(h5_path, key, shape)
        if matrix is not None:
            return matrix
    matrix = computed_labels(city, query, database, fov, cache_dir)
    return matrix if key == 'fov' else binary_matrix(matrix)


def msls_pair_source(root: str, cities: Sequence[str] = TRAIN_CITIES, key: str = 'fov',
                     fov: FovConfig = FovConfig(), cache_dir: str = '') -> PairSource:
    """Return the MSLS training cities as a :class:`PairSource`."""
    parts = {name: [] for name in ('queries', 'database', 'matrices', 'q_pano', 'db_pano')}
    for city in cities:
        query = read_msls_split(Path(root), city, 'query')
        database = read_msls_split(Path(root), city, 'database')
        cache = Path(cache_dir) if cache_dir else Path(root) / 'train_val'
        parts['matrices'].append(city_labels(Path(root), city, query, database, key, fov, cache))
        parts['queries'].append(query.paths)
        parts['database'].append(database.paths)
        parts['q_pano'].append(query.pano)
        parts['db_pano'].append(database.pano)
    return PairSource(f'msls:{len(cities)} cities', tuple(parts['queries']),
                      tuple(parts['database']), tuple(parts['matrices']), tuple(parts['q_pano']),
                      tuple(parts['db_pano']), key == 'fov')


def msls_eval_set(root: str, cities: Sequence[str] = VAL_CITIES,
                  radius_m: float = EVAL_RADIUS_M) -> EvalSet:
    """Return the non-panoramic queries of ``cities`` against their databases (25 m positives).

    Approximates mapillary_sls' validation (positives within 25 m); the 740-query MSLS-val list
    of later papers is not reproduced here.
    """
    queries, database, positives = [], [], []
    for city in cities:
        query = read_msls_split(Path(root), city, 'query')
        db = read_msls_split(Path(root), city, 'database')
        keep = np.flatnonzero(~query.pano)
        found = positives_within_radius(query.cameras.xy[keep], db.cameras.xy, radius_m)
        positives += [tuple(int(j) + len(database) for j in ids) for ids in found]
        queries += [query.paths[i] for i in keep]
        database += list(db.paths)
    return EvalSet(f'msls:{"+".join(cities)}', tuple(queries), tuple(database), tuple(positives))
