"""Readers for the standard VPR benchmarks and for pairs of traversals (no ROS needed).

Every reader returns an :class:`EvalDataset`: database and query images (file paths, read when
needed, or in-memory :class:`~vpr_ros.data.frame.Frame` objects) and, per query, the database
indices that count as correct. The protocols follow ``shared/reference/eval.md``:

- ``folder``: VPR-methods-evaluation layout ``database/`` + ``queries/`` (recursive, sorted,
  ``.jpg/.jpeg/.png``; ``<folder>_images_paths.txt`` lists are honoured), UTM from
  ``@east@north@...@.jpg`` file names, positives within 25 m (inclusive).
- ``index-list``: ``query/`` + ``ref/`` folders and a ground-truth file: a JSON list of
  ``{"query": i, "positives": [j, ...]}`` (VPR-Bench converted), or an ``.npz`` with a boolean
  ``GThard`` ``[db, q]`` matrix (VPR_Tutorial). Out-of-range indices are clipped away.
- ``nordland``: the VPR-Bench split (2,760 queries / 27,592 references); query ``i`` matches
  references ``10 i - 1 .. 10 i + 1`` (the 1-frame threshold).
- ``msls-val``: official MSLS layout; queries without positives dropped (740 / 18,871), and the
  official index lists (``msls_val_{db,q}Images.npy``, ``msls_val_qIdx.npy``) when given.
- ``msls-test``: the challenge split without labels, for :func:`write_msls_submission`.
- ``pitts`` (30k / 250k) and ``tokyo`` (Tokyo 24/7, queries resized to max side 640): either the
  VPR-datasets-downloader folder layout or the NetVLAD ``dbStruct`` ``.mat`` files.
- pose-based: two frame lists with poses (:func:`pairs_from_traversals`, :func:`read_bag_pair`).
- ``sequence``: one loop-closure sequence (``images/`` in capture order and a ground truth of
  revisits, as ``rtabmap_samples``). Every frame is a query against the frames at least
  ``min_gap`` earlier (inclusive), which the map holds by then (the map grows as in SLAM);
  Recall@N counts the frames that revisit a place, and every other frame is a chance for a
  false loop closure. ``exclude_recent_s`` also keeps frames stamped less than that many
  seconds before the query out of the map (the localize node's ``exclude_recent_s``); it needs
  frame stamps (``times``, one time in seconds per frame as KITTI ``times.txt``, or
  ``frame_rate``).
- ``loop-matrix``: a sequence whose ground truth is a square loop-closure matrix in a ``.mat``,
  ``.npy`` or ``.npz`` file (``[i, j] != 0``: frames ``i`` and ``j`` show the same place).
- ``kitti-poses``: a sequence with a KITTI pose file (one row of 12 floats, the 3x4 ``[R|t]``,
  per frame); frames within ``radius_m`` of each other (camera centres, 3-D) are revisits.

Object (pickled) ``.npy`` files are never loaded; convert them to JSON first.
"""

import csv
from dataclasses import dataclass, field, replace
import inspect
import json
import logging
import math
import os
from pathlib import Path
import re
import tempfile
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np

from vpr_ros.data.frame import Frame
from vpr_ros.data.ground_truth import positives_within_radius
from vpr_ros.data.image_codec import read_image_file
from vpr_ros.data.image_folder import IMAGE_SUFFIXES, utm_from_name
from vpr_ros.errors import DatasetError

LOGGER = logging.getLogger(__name__)

PathLike = Union[str, Path]
ImageRef = Union[Path, Frame]

DEFAULT_RADIUS_M = 25.0
FRAME_PERIOD_NS = 100_000_000
"""Stamp spacing given to file-based images (index * 100 ms, as ``image_folder`` does)."""

TOKYO_QUERY_MAX_SIDE = 640
NORDLAND_STRIDE = 10
MSLS_VAL_CITIES = ('cph', 'sf')
MSLS_TEST_CITIES = ('miami', 'athens', 'buenosaires', 'stockholm', 'bengaluru', 'kampala')
EXPECTED_COUNTS = {
    'nordland': (2760, 27592), 'msls-val': (740, 18871), 'msls-test': (1135, 36565),
    'pitts30k-test': (6816, 10000), 'pitts250k-test': (8280, 83952),
    'tokyo247': (315, 75984),
}
"""Protocol ``(queries, database)`` sizes; other sizes are read but logged as a warning."""


@dataclass(frozen=True)
class EvalDataset:
    """Database and query images with the ground truth of one benchmark.

    Attributes:
        name: the split name reported with every result (``'pitts30k-test'``...).
        database: image paths or frames, in database-index order.
        queries: image paths or frames, in query order.
        positives: per query, the sorted ``int64`` database indices that are correct matches.
        query_max_side: queries are shrunk so their longer side is at most this (Tokyo 24/7).
        info: protocol details recorded with results (threshold, source files...).
        sequence_gap: set for a loop-closure sequence (queries and database are the same
            frames): query ``i`` is matched against database frames ``<= i - sequence_gap``
            only (inclusive), and Recall@N counts only the queries that have a positive.
        sequence_stamps_ns: capture stamps of a sequence's frames (strictly increasing); file
            images are otherwise stamped ``index * 100 ms``.
        sequence_exclude_ns: a sequence's map also leaves out the frames stamped less than
            this before the query (the localize node's ``exclude_recent_s``; 0: off). File
            images need ``sequence_stamps_ns`` for it.
    """

    name: str
    database: tuple
    queries: tuple
    positives: tuple
    query_max_side: Optional[int] = None
    info: dict = field(default_factory=dict)
    sequence_gap: Optional[int] = None
    sequence_stamps_ns: Optional[tuple] = None
    sequence_exclude_ns: int = 0

    def __post_init__(self) -> None:
        """Check the positive lists (one per query, indices in range) and the sequence fields."""
        if len(self.positives) != len(self.queries):
            raise DatasetError(f'{self.name}: {len(self.positives)} positive lists for '
                               f'{len(self.queries)} queries')
        for q, ids in enumerate(self.positives):
            ids = np.asarray(ids)
            if ids.size and (ids.min() < 0 or ids.max() >= len(self.database)):
                raise DatasetError(f'{self.name}: query {q} has positive index outside '
                                   f'0..{len(self.database) - 1}')
        self._check_sequence_fields()

    def _check_sequence_fields(self) -> None:
        sequence = self.sequence_gap is not None
        if not sequence and (self.sequence_stamps_ns is not None or self.sequence_exclude_ns):
            raise DatasetError(f'{self.name}: frame stamps and the recent-frame exclusion apply '
                               'to loop-closure sequences only (sequence_gap unset)')
        if self.sequence_stamps_ns is not None:
            stamps = np.asarray(self.sequence_stamps_ns, dtype=np.int64)
            if stamps.shape != (len(self.queries),):
                raise DatasetError(f'{self.name}: {stamps.size} frame stamps for '
                                   f'{len(self.queries)} frames')
            if stamps.size > 1 and np.any(np.diff(stamps) <= 0):
                bad = int(np.flatnonzero(np.diff(stamps) <= 0)[0]) + 1
                raise DatasetError(f'{self.name}: frame stamps must increase in capture order; '
                                   f'frame {bad} (0-based) is stamped {stamps[bad]} ns, not after '
                                   f'{stamps[bad - 1]} ns')
        if self.sequence_exclude_ns < 0:
            raise DatasetError(f'{self.name}: the recent-frame exclusion must be >= 0, got '
                               f'{self.sequence_exclude_ns} ns')
        if (self.sequence_exclude_ns and self.sequence_stamps_ns is None
                and not all(isinstance(f, Frame) for f in self.queries)):
            raise DatasetError(f'{self.name}: excluding recent frames by time needs frame '
                               'stamps, and these image files have none: give the capture '
                               'times (a times file, one time in seconds per frame, as KITTI '
                               'times.txt) or the frame rate, or exclude by frames with the '
                               'minimum gap instead')

    @property
    def num_queries(self) -> int:
        """Return the number of queries."""
        return len(self.queries)

    @property
    def num_database(self) -> int:
        """Return the number of database images."""
        return len(self.database)

    @property
    def queries_without_positives(self) -> int:
        """Return how many queries have no correct database image (they count as misses)."""
        return sum(1 for ids in self.positives if len(ids) == 0)

    def query_image(self, index: int) -> np.ndarray:
        """Return query ``index`` as ``[H, W, 3] uint8 RGB`` (resized per the protocol)."""
        return shrink_to_max_side(load_image(self.queries[index]), self.query_max_side)

    def database_image(self, index: int) -> np.ndarray:
        """Return database image ``index`` as ``[H, W, 3] uint8 RGB``."""
        return load_image(self.database[index])

    def query_stamps_ns(self) -> np.ndarray:
        """Return each query's stamp: the frame stamp, or ``index * 100 ms`` for files.

        A sequence with ``sequence_stamps_ns`` returns those.
        """
        return _stamps(self.queries, self.sequence_stamps_ns)

    def database_stamps_ns(self) -> np.ndarray:
        """Return each database image's stamp (as :meth:`query_stamps_ns`)."""
        return _stamps(self.database, self.sequence_stamps_ns)

    def sequence_map_sizes(self) -> np.ndarray:
        """Return, per frame of a sequence, how many leading frames the map holds for it.

        Frame ``i`` is matched against frames ``0 .. i - sequence_gap`` (inclusive: a frame
        exactly ``sequence_gap`` back is in the map), and with ``sequence_exclude_ns`` only
        against those stamped at least that long before it (a frame exactly that old is kept,
        as the localize node keeps it). Frames are in capture order, so the map is a prefix.
        """
        if self.sequence_gap is None:
            raise DatasetError(f'{self.name} is not a loop-closure sequence')
        index = np.arange(self.num_queries, dtype=np.int64)
        sizes = np.maximum(index - int(self.sequence_gap) + 1, 0)
        if self.sequence_exclude_ns > 0:
            stamps = self.query_stamps_ns()
            old_enough = np.searchsorted(stamps, stamps - int(self.sequence_exclude_ns),
                                         side='right')
            sizes = np.minimum(sizes, old_enough)
        return sizes

    def query_key(self, index: int) -> str:
        """Return the query's key: the file stem, or the frame's source."""
        return image_key(self.queries[index])

    def database_key(self, index: int) -> str:
        """Return the database image's key: the file stem, or the frame's source."""
        return image_key(self.database[index])

    def database_frames(self) -> Iterator[Frame]:
        """Yield the database as frames, reading one file at a time."""
        return _frames(self.database, None, self.sequence_stamps_ns)

    def query_frames(self) -> Iterator[Frame]:
        """Yield the queries as frames (resized per the protocol), reading one file at a time."""
        return _frames(self.queries, self.query_max_side, self.sequence_stamps_ns)

    def summary(self) -> dict:
        """Return the counts and protocol details for reports."""
        return {'name': self.name, 'num_queries': self.num_queries,
                'num_database': self.num_database,
                'queries_without_positives': self.queries_without_positives,
                'query_max_side': self.query_max_side, **self.info}


def load_image(ref: ImageRef) -> np.ndarray:
    """Return the RGB pixels of a path or a frame."""
    if isinstance(ref, Frame):
        return ref.image
    return read_image_file(ref)


def shrink_to_max_side(image: np.ndarray, max_side: Optional[int]) -> np.ndarray:
    """Resize ``image`` (area interpolation, aspect kept) so its longer side is ``max_side``."""
    if max_side is None or max(image.shape[:2]) <= max_side:
        return image
    import cv2
    scale = max_side / max(image.shape[:2])
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def image_key(ref: ImageRef) -> str:
    """Return a file's stem or a frame's source (or stamp when it has none)."""
    if isinstance(ref, Frame):
        return ref.source or str(ref.stamp_ns)
    return Path(ref).stem


def _stamps(refs: Sequence[ImageRef], stamps: Optional[Sequence[int]] = None) -> np.ndarray:
    if stamps is not None:
        return np.asarray(stamps, dtype=np.int64)
    return np.array([r.stamp_ns if isinstance(r, Frame) else i * FRAME_PERIOD_NS
                     for i, r in enumerate(refs)], dtype=np.int64)


def _frames(refs: Sequence[ImageRef], max_side: Optional[int],
            stamps: Optional[Sequence[int]] = None) -> Iterator[Frame]:
    for index, ref in enumerate(refs):
        stamp = None if stamps is None else int(stamps[index])
        if isinstance(ref, Frame):
            if max_side is None and stamp in (None, ref.stamp_ns):
                yield ref
            else:
                yield Frame(ref.stamp_ns if stamp is None else stamp,
                            shrink_to_max_side(ref.image, max_side), ref.pose, ref.source)
        else:
            yield Frame(index * FRAME_PERIOD_NS if stamp is None else stamp,
                        shrink_to_max_side(read_image_file(ref), max_side), None, str(ref))


def _warn_counts(dataset: EvalDataset) -> EvalDataset:
    expected = EXPECTED_COUNTS.get(dataset.name)
    found = (dataset.num_queries, dataset.num_database)
    if expected is not None and found != expected:
        LOGGER.warning('%s has %d queries / %d database images; the protocol has %d / %d',
                       dataset.name, *found, *expected)
    return dataset


# ----------------------------------------------------------------------------- folder format

def list_image_files(folder: PathLike) -> list[Path]:
    """Return the images below ``folder`` as VPR-methods-evaluation finds them.

    A sibling ``<folder>_images_paths.txt`` (one path relative to ``folder`` per line) is used
    when present; otherwise the recursive ``.jpg/.jpeg/.png`` files, sorted by relative path.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f'image folder {folder} does not exist')
    listing = folder.parent / f'{folder.name}_images_paths.txt'
    if listing.is_file():
        lines = listing.read_text(encoding='utf-8').splitlines()
        return [folder / line.strip() for line in lines if line.strip()]
    files = [p for p in folder.rglob('*') if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    if not files:
        raise DatasetError(f'image folder {folder} holds no .jpg/.jpeg/.png files')
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def utm_array(files: Sequence[Path]) -> np.ndarray:
    """Return ``[N, 2]`` (east, north) parsed from ``@east@north@...`` file names."""
    coords = []
    for file in files:
        utm = utm_from_name(file.name)
        if utm is None:
            raise DatasetError(f'{file}: file name has no @east@north@ UTM fields')
        coords.append(utm)
    return np.asarray(coords, dtype=np.float64).reshape(-1, 2)


def read_folder_dataset(root: PathLike, radius_m: float = DEFAULT_RADIUS_M,
                        database_dir: str = 'database', queries_dir: str = 'queries',
                        name: Optional[str] = None) -> EvalDataset:
    """Read a VPR-methods-evaluation folder pair; positives are database images within radius.

    Args:
        root: the folder holding ``database_dir`` and ``queries_dir``.
        radius_m: positive radius in metres (25 in every standard benchmark).
        database_dir: database sub-folder name.
        queries_dir: query sub-folder name.
        name: split name for reports (default: the folder name).
    """
    root = Path(root)
    db_files = list_image_files(root / database_dir)
    query_files = list_image_files(root / queries_dir)
    positives = positives_within_radius(utm_array(query_files), utm_array(db_files), radius_m)
    return EvalDataset(name or root.name, tuple(db_files), tuple(query_files), tuple(positives),
                       info={'format': 'folder', 'positive_radius_m': radius_m})


# ------------------------------------------------------------------------ index-list format

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


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding='utf-8'))
    except OSError as exc:
        raise DatasetError(f'cannot read ground truth {path}: {exc}') from exc
    except ValueError as exc:
        raise DatasetError(f'ground truth {path} is not valid JSON: {exc}') from exc


def _positives_from_json(path: Path, num_queries: int, num_db: int) -> list[np.ndarray]:
    data = _read_json(path)
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
        positives[query] = _clip_ids(ids, num_db)
    return positives


def _clip_ids(ids: Sequence[int], num_db: int) -> np.ndarray:
    array = np.unique(np.asarray(ids, dtype=np.int64))
    return array[(array >= 0) & (array < num_db)]


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


# -------------------------------------------------------------------------------- Nordland

def nordland_positives(num_queries: int, num_db: int, tolerance: int = 1,
                       stride: int = NORDLAND_STRIDE) -> list[np.ndarray]:
    """Return query ``i`` -> references ``stride*i - tolerance .. stride*i + tolerance``."""
    return [_clip_ids(range(stride * q - tolerance, stride * q + tolerance + 1), num_db)
            for q in range(num_queries)]


def read_nordland(root: PathLike, tolerance: int = 1, query_dir: str = 'query',
                  ref_dir: str = 'ref') -> EvalDataset:
    """Read the VPR-Bench Nordland split (``query/%07d.jpg``, ``ref/%07d.jpg``).

    Args:
        root: folder with ``query_dir`` and ``ref_dir``.
        tolerance: frames either side of ``10 i`` that count (1 is the headline "Nordland*").
        query_dir: query sub-folder.
        ref_dir: reference sub-folder.
    """
    root = Path(root)
    db_files = list_image_files(root / ref_dir)
    query_files = list_image_files(root / query_dir)
    positives = nordland_positives(len(query_files), len(db_files), tolerance)
    info = {'format': 'nordland', 'tolerance_frames': tolerance, 'stride': NORDLAND_STRIDE}
    return _warn_counts(EvalDataset('nordland', tuple(db_files), tuple(query_files),
                                    tuple(positives), info=info))


# ------------------------------------------------------------------------------------ MSLS

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
    return _warn_counts(EvalDataset('msls-val', tuple(db_paths), tuple(q_paths[q] for q in keep),
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
    return _warn_counts(EvalDataset('msls-test', tuple(db_files), tuple(q_files), empty,
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


def write_text_atomic(path: PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` atomically (see :func:`write_bytes_atomic`)."""
    return write_bytes_atomic(path, text.encode('utf-8'))


def write_bytes_atomic(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to a sibling temporary file, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, 'wb') as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# --------------------------------------------------------------- Pittsburgh and Tokyo 24/7

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
    return _warn_counts(EvalDataset(name, tuple(db_files), tuple(q_files), tuple(positives),
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
        return _warn_counts(dataset)
    mat = _find_file(root, [f'pitts{variant}_{split}.mat'])
    return _mat_dataset(root, mat, [root / 'queries_real'], name, radius_m, None)


def read_tokyo247(root: PathLike, radius_m: float = DEFAULT_RADIUS_M,
                  query_max_side: int = TOKYO_QUERY_MAX_SIDE) -> EvalDataset:
    """Read Tokyo 24/7 (downloader folders or ``tokyo247.mat``); queries shrink to max side 640."""
    root = Path(root)
    folders = _downloader_root(root, 'test')
    if folders is not None:
        base = read_folder_dataset(folders, radius_m, name='tokyo247')
        return _warn_counts(EvalDataset(base.name, base.database, base.queries, base.positives,
                                        query_max_side, base.info))
    mat = _find_file(root, ['tokyo247.mat'])
    query_bases = [root / '247query_v3', root / '247query_subset_v2', root / 'queries']
    return _mat_dataset(root, mat, query_bases, 'tokyo247', radius_m, query_max_side)


# ------------------------------------------------------------------------------ pose-based

def _frame_xy_yaw(frames: Sequence[Frame], what: str) -> tuple[np.ndarray, np.ndarray]:
    missing = [i for i, f in enumerate(frames) if f.pose is None]
    if missing:
        raise DatasetError(f'{len(missing)} {what} frames have no pose (first: index '
                           f'{missing[0]}); pose-based ground truth needs every pose')
    xy = np.array([f.pose.position[:2] for f in frames], dtype=np.float64).reshape(-1, 2)
    yaw = np.array([f.pose.yaw for f in frames], dtype=np.float64)
    return xy, yaw


def pairs_from_traversals(database: Sequence[Frame], queries: Sequence[Frame],
                          radius_m: float = DEFAULT_RADIUS_M,
                          max_yaw_diff_rad: Optional[float] = None,
                          name: str = 'traversals') -> EvalDataset:
    """Pair two traversals with poses: positives within ``radius_m`` (and the heading limit).

    Both traversals must share a pose frame; every frame needs a pose.
    """
    db_xy, db_yaw = _frame_xy_yaw(database, 'database')
    q_xy, q_yaw = _frame_xy_yaw(queries, 'query')
    positives = positives_within_radius(q_xy, db_xy, radius_m, q_yaw, db_yaw, max_yaw_diff_rad)
    info = {'format': 'pose-pairs', 'positive_radius_m': radius_m,
            'max_yaw_diff_deg': (None if max_yaw_diff_rad is None
                                 else math.degrees(max_yaw_diff_rad))}
    return EvalDataset(name, tuple(database), tuple(queries), tuple(positives), info=info)


def read_bag_pair(map_bag: PathLike, query_bag: PathLike, image_topic: str, pose_topic: str,
                  radius_m: float = DEFAULT_RADIUS_M,
                  max_yaw_diff_rad: Optional[float] = None) -> EvalDataset:
    """Read a map bag and a query bag (images + poses) and pair them by pose.

    Images without a pose within the bag reader's time gap are dropped with a warning.
    """
    from vpr_ros.data.bag import read_frames
    traversals = []
    for path in (map_bag, query_bag):
        frames = list(read_frames(path, image_topic, pose_topic))
        posed = [f for f in frames if f.pose is not None]
        if len(posed) < len(frames):
            LOGGER.warning('%s: %d of %d images have no pose and are skipped', path,
                           len(frames) - len(posed), len(frames))
        if not posed:
            raise DatasetError(f'{path}: no image on {image_topic} has a pose on {pose_topic}')
        traversals.append(posed)
    dataset = pairs_from_traversals(traversals[0], traversals[1], radius_m, max_yaw_diff_rad,
                                    name=f'{Path(map_bag).name}+{Path(query_bag).name}')
    info = {**dataset.info, 'format': 'bags', 'image_topic': image_topic,
            'pose_topic': pose_topic}
    return replace(dataset, info=info)


# ------------------------------------------------------------------------- loop sequence

DEFAULT_MIN_GAP = 10
TIMES_FILE = 'times.txt'
KITTI_IMAGE_DIRS = ('images', 'image_2', 'image_0')
KITTI_POSE_VALUES = 12


def sequence_dataset(name: str, frames: Sequence[ImageRef], revisits: Sequence[Sequence[int]],
                     min_gap: int = DEFAULT_MIN_GAP, stamps_ns: Optional[Sequence[int]] = None,
                     exclude_recent_s: float = 0.0, info: Optional[dict] = None) -> EvalDataset:
    """Return a loop-closure sequence whose positives are the revisits its growing map holds.

    Args:
        name: the sequence name for reports.
        frames: image paths or frames in capture order (queries and database at once).
        revisits: per frame, the 0-based indices of the earlier frames showing its place.
        min_gap: frame ``i`` is matched against frames ``0 .. i - min_gap`` (inclusive).
        stamps_ns: capture stamps of file images (strictly increasing), or None.
        exclude_recent_s: also leave out of the map the frames stamped less than this many
            seconds before the query (a frame exactly that old stays), as the localize node's
            ``exclude_recent_s``; needs stamps (frames, or ``stamps_ns`` for files).
        info: protocol details recorded with results.

    Revisits the map cannot hold for that frame are dropped from its positives.
    """
    if int(min_gap) < 1:
        raise DatasetError(f'sequence min_gap must be at least 1 frame, got {min_gap}')
    if not (math.isfinite(exclude_recent_s) and exclude_recent_s >= 0):
        raise DatasetError(f'exclude_recent_s must be a finite number of seconds >= 0, got '
                           f'{exclude_recent_s}')
    if len(revisits) != len(frames):
        raise DatasetError(f'{name}: {len(revisits)} revisit lists for {len(frames)} frames')
    empty = tuple(np.empty(0, np.int64) for _ in frames)
    dataset = EvalDataset(name, tuple(frames), tuple(frames), empty, sequence_gap=int(min_gap),
                          sequence_stamps_ns=None if stamps_ns is None else tuple(
                              int(s) for s in stamps_ns),
                          sequence_exclude_ns=int(round(exclude_recent_s * 1e9)))
    sizes = dataset.sequence_map_sizes()
    positives = []
    for i, ids in enumerate(revisits):
        ids = np.unique(np.asarray(ids, dtype=np.int64).reshape(-1))
        positives.append(ids[(ids >= 0) & (ids < sizes[i])])
    info = {**(info or {}), 'min_gap_frames': int(min_gap),
            'exclude_recent_s': float(exclude_recent_s),
            'frames_with_revisits': sum(1 for p in positives if len(p))}
    return replace(dataset, positives=tuple(positives), info=info)


def sequence_stamps(root: PathLike, count: int, times: Optional[PathLike] = None,
                    frame_rate: Optional[float] = None) -> tuple[Optional[tuple], str]:
    """Return the capture stamps of ``count`` sequence frames and where they came from.

    ``frame_rate`` (Hz) stamps frame ``i`` at ``i / frame_rate`` seconds; ``times`` is a file
    (relative to ``root``) with one time in seconds per frame, as KITTI ``times.txt``; without
    either, ``root/times.txt`` is read when it exists. Otherwise ``(None, ...)``: file images
    are then stamped ``index * 100 ms``, which no time-based exclusion may rely on.
    """
    if times is not None and frame_rate is not None:
        raise DatasetError('give either a times file or a frame rate for the frame stamps, '
                           'not both')
    if frame_rate is not None:
        if not (math.isfinite(frame_rate) and frame_rate > 0):
            raise DatasetError(f'frame rate must be a positive number of Hz, got {frame_rate}')
        return (tuple(int(round(i * 1e9 / frame_rate)) for i in range(count)),
                f'frame rate {frame_rate:g} Hz')
    path = Path(root) / (TIMES_FILE if times is None else times)
    if times is None and not path.is_file():
        return None, 'none (file images are stamped index * 100 ms)'
    seconds = _read_times(path, count)
    return tuple(int(round(t * 1e9)) for t in seconds), str(path.name)


def _read_times(path: Path, count: int) -> list[float]:
    try:
        lines = path.read_text(encoding='utf-8').splitlines()
    except OSError as exc:
        raise DatasetError(f'cannot read frame times {path}: {exc}') from exc
    seconds = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = float(line)
        except ValueError as exc:
            raise DatasetError(f'{path}: line {number} is not one time in seconds: '
                               f'{line.strip()[:40]!r}') from exc
        if not math.isfinite(value):
            raise DatasetError(f'{path}: line {number} is not a finite time: {value}')
        seconds.append(value)
    if len(seconds) != count:
        raise DatasetError(f'{path} has {len(seconds)} frame times but the sequence has '
                           f'{count} images; it needs one time per image')
    return seconds


def _natural_key(path: Path, folder: Path) -> list:
    parts = re.split(r'(\d+)', path.relative_to(folder).as_posix())
    return [(0, int(p), '') if p.isdigit() else (1, 0, p) for p in parts]


def list_sequence_images(folder: PathLike) -> list[Path]:
    """Return a sequence's images in capture order: by name, numbers compared by value.

    ``2.png`` comes before ``10.png``; a ``<folder>_images_paths.txt`` listing is kept as is.
    """
    folder = Path(folder)
    files = list_image_files(folder)
    if (folder.parent / f'{folder.name}_images_paths.txt').is_file():
        return files
    return sorted(files, key=lambda p: _natural_key(p, folder))


def _sequence_info(fmt: str, ground_truth: PathLike, image_dir: Path, stamps: str) -> dict:
    return {'format': fmt, 'ground_truth': str(ground_truth), 'image_dir': str(image_dir),
            'stamps': stamps}


def read_sequence_dataset(root: PathLike, ground_truth: str = 'ground_truth.json',
                          image_dir: str = 'images', min_gap: int = DEFAULT_MIN_GAP,
                          name: Optional[str] = None, times: Optional[str] = None,
                          frame_rate: Optional[float] = None,
                          exclude_recent_s: float = 0.0) -> EvalDataset:
    """Read a loop-closure sequence: frames in capture order and the places they revisit.

    The ground truth is ``{"frames": [file names in order], "loops": [{"frame": f,
    "revisits": [earlier frames]}]}`` with 1-based frame numbers (the ``rtabmap_samples``
    layout). Frame ``i`` may only match frames ``<= i - min_gap`` (inclusive), so revisits
    closer in time than that are dropped from its positives. ``times``, ``frame_rate`` and
    ``exclude_recent_s``: see :func:`sequence_stamps` and :func:`sequence_dataset`.
    """
    root = Path(root)
    if min_gap < 1:
        raise DatasetError(f'sequence min_gap must be at least 1 frame, got {min_gap}')
    data = _read_json(root / ground_truth)
    if not isinstance(data, dict) or not isinstance(data.get('frames'), list):
        raise DatasetError(f'{root / ground_truth}: expected {{"frames": [...], "loops": '
                           '[...]} (a loop-closure sequence)')
    files = [root / image_dir / str(frame) for frame in data['frames']]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DatasetError(f'{root}: {len(missing)} sequence frames are missing, first '
                           f'{missing[0]}')
    revisits = _sequence_revisits(data.get('loops', []), len(files), root / ground_truth)
    stamps, source = sequence_stamps(root, len(files), times, frame_rate)
    return sequence_dataset(name or root.name, files, revisits, min_gap, stamps,
                            exclude_recent_s,
                            _sequence_info('sequence', ground_truth, Path(image_dir), source))


def _sequence_revisits(loops: Any, count: int, path: Path) -> list[np.ndarray]:
    """Return 0-based revisits per frame from 1-based ``{"frame", "revisits"}`` entries."""
    if not isinstance(loops, list):
        raise DatasetError(f'{path}: "loops" must be a list')
    revisits = [np.empty(0, np.int64) for _ in range(count)]
    for n, item in enumerate(loops):
        try:
            frame = int(item['frame']) - 1
            earlier = np.asarray([int(v) - 1 for v in item['revisits']], dtype=np.int64)
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f'{path}: loop entry {n} needs an integer "frame" and a list of '
                               f'integer "revisits" ({exc!r})') from exc
        if not 0 <= frame < count:
            raise DatasetError(f'{path}: loop entry {n} names frame {frame + 1} of {count}')
        revisits[frame] = earlier[earlier < frame]
    return revisits


# ------------------------------------------------------------------- loop-closure matrix

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
    info = _sequence_info('loop-matrix', ground_truth, Path(image_dir), source)
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


# --------------------------------------------------------------------------- KITTI poses

def read_kitti_poses_dataset(root: PathLike, ground_truth: str,
                             radius_m: float = DEFAULT_RADIUS_M,
                             image_dir: Optional[str] = None, min_gap: int = DEFAULT_MIN_GAP,
                             name: Optional[str] = None, times: Optional[str] = None,
                             frame_rate: Optional[float] = None,
                             exclude_recent_s: float = 0.0) -> EvalDataset:
    """Read a sequence with a KITTI-style pose file; revisits are frames within ``radius_m``.

    Args:
        root: the sequence folder (KITTI: ``sequences/00``, with ``times.txt``).
        ground_truth: the pose file, relative to ``root`` (or absolute; KITTI:
            ``poses/00.txt``): one line per frame of 12 numbers, the row-major 3x4 ``[R|t]``
            camera-to-world matrix.
        radius_m: frames whose camera centres ``t`` are at most this far apart (3-D Euclidean,
            inclusive) show the same place.
        image_dir: the image folder under ``root``, one image per pose, in capture order
            (:func:`list_sequence_images`); default: the first of ``images``, ``image_2``,
            ``image_0`` that exists.
        min_gap: frame ``i`` is matched against frames ``0 .. i - min_gap`` (inclusive).
        name: sequence name for reports (default: the folder name).
        times: frame times file (default ``times.txt`` when present; see
            :func:`sequence_stamps`).
        frame_rate: frame rate in Hz (see :func:`sequence_stamps`).
        exclude_recent_s: see :func:`sequence_dataset`.
    """
    root = Path(root)
    folder = root / image_dir if image_dir is not None else _kitti_image_dir(root)
    files = list_sequence_images(folder)
    path = root / ground_truth
    positions = read_kitti_positions(path)
    if len(positions) != len(files):
        raise DatasetError(f'{path} has {len(positions)} poses but {folder} holds '
                           f'{len(files)} images; it needs one pose per image')
    within = positives_within_radius(positions, positions, radius_m)
    revisits = [ids[ids < i] for i, ids in enumerate(within)]
    stamps, source = sequence_stamps(root, len(files), times, frame_rate)
    info = _sequence_info('kitti-poses', ground_truth, folder.relative_to(root), source)
    info['positive_radius_m'] = radius_m
    return sequence_dataset(name or root.name, files, revisits, min_gap, stamps,
                            exclude_recent_s, info)


def _kitti_image_dir(root: Path) -> Path:
    for name in KITTI_IMAGE_DIRS:
        if (root / name).is_dir():
            return root / name
    raise DatasetError(f'{root} has none of the image folders {", ".join(KITTI_IMAGE_DIRS)}; '
                       'name the folder with --image-dir')


def read_kitti_positions(path: PathLike) -> np.ndarray:
    """Return the ``[N, 3]`` camera centres (``t`` of each 3x4 ``[R|t]`` line) of a pose file."""
    path = Path(path)
    try:
        lines = path.read_text(encoding='utf-8').splitlines()
    except OSError as exc:
        raise DatasetError(f'cannot read pose file {path}: {exc}') from exc
    rows = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != KITTI_POSE_VALUES:
            raise DatasetError(f'{path}: line {number} has {len(fields)} values, expected '
                               f'{KITTI_POSE_VALUES} (a row-major 3x4 [R|t] pose, KITTI '
                               'format)')
        try:
            values = [float(v) for v in fields]
        except ValueError as exc:
            raise DatasetError(f'{path}: line {number} has a value that is not a number '
                               f'({exc})') from exc
        if not all(math.isfinite(v) for v in values):
            raise DatasetError(f'{path}: line {number} has a non-finite value')
        rows.append(values)
    if not rows:
        raise DatasetError(f'{path} holds no pose')
    return np.asarray(rows, dtype=np.float64).reshape(-1, 3, 4)[:, :, 3]


# ------------------------------------------------------------------------------ dispatcher

FORMATS = ('folder', 'index-list', 'nordland', 'msls-val', 'msls-test', 'pitts', 'tokyo',
           'bags', 'sequence', 'loop-matrix', 'kitti-poses')
SEQUENCE_FORMATS = ('sequence', 'loop-matrix', 'kitti-poses')
"""The formats read as one loop-closure sequence (the map grows as the frames come)."""


def load_dataset(fmt: str, path: PathLike, **options: Any) -> EvalDataset:
    """Read the dataset at ``path`` in format ``fmt`` (one of :data:`FORMATS`).

    ``options`` go to the reader (``radius_m``, ``index_dir``, ``variant``, ``query_bag``,
    ``image_topic``, ``pose_topic``, ``max_yaw_diff_rad`` ...). For ``bags``, ``path`` is the
    map bag and ``options['query_bag']`` the query bag.
    """
    readers = {'folder': read_folder_dataset, 'index-list': read_index_list_dataset,
               'nordland': read_nordland, 'msls-val': read_msls_val,
               'msls-test': read_msls_test, 'pitts': read_pittsburgh, 'tokyo': read_tokyo247,
               'sequence': read_sequence_dataset, 'loop-matrix': read_loop_matrix_dataset,
               'kitti-poses': read_kitti_poses_dataset}
    if fmt == 'bags':
        options = dict(options)
        query_bag = options.pop('query_bag', None)
        if query_bag is None:
            raise DatasetError('dataset format bags needs a query bag')
        return read_bag_pair(path, query_bag, **options)
    if fmt not in readers:
        raise DatasetError(f'unknown dataset format {fmt!r}; valid: {", ".join(FORMATS)}')
    try:
        inspect.signature(readers[fmt]).bind(path, **options)
    except TypeError as exc:
        raise DatasetError(f'dataset format {fmt}: bad option ({exc})') from exc
    return readers[fmt](path, **options)
