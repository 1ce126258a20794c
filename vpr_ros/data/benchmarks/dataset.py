"""The benchmark record type :class:`EvalDataset` and the helpers every reader shares.

An :class:`EvalDataset` holds database and query images (file paths, read when needed, or
in-memory :class:`~vpr_ros.data.frame.Frame` objects) and, per query, the database indices that
count as correct. The protocols follow ``shared/reference/eval.md``.
"""

from dataclasses import dataclass, field
import json
import logging
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np

from vpr_ros.data.frame import Frame
from vpr_ros.data.image_codec import read_image_file
from vpr_ros.errors import DatasetError

LOGGER = logging.getLogger(__name__)

PathLike = Union[str, Path]
ImageRef = Union[Path, Frame]

DEFAULT_RADIUS_M = 25.0
FRAME_PERIOD_NS = 100_000_000
"""Stamp spacing given to file-based images (index * 100 ms, as ``image_folder`` does)."""
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


def warn_counts(dataset: EvalDataset) -> EvalDataset:
    """Log a warning when ``dataset``'s sizes differ from its protocol; return ``dataset``."""
    expected = EXPECTED_COUNTS.get(dataset.name)
    found = (dataset.num_queries, dataset.num_database)
    if expected is not None and found != expected:
        LOGGER.warning('%s has %d queries / %d database images; the protocol has %d / %d',
                       dataset.name, *found, *expected)
    return dataset


def read_json(path: Path) -> Any:
    """Return the parsed JSON of ground truth file ``path`` or raise a :class:`DatasetError`."""
    try:
        return json.loads(path.read_text(encoding='utf-8'))
    except OSError as exc:
        raise DatasetError(f'cannot read ground truth {path}: {exc}') from exc
    except ValueError as exc:
        raise DatasetError(f'ground truth {path} is not valid JSON: {exc}') from exc


def clip_ids(ids: Sequence[int], num_db: int) -> np.ndarray:
    """Return the unique ``ids`` that index a database of ``num_db`` images, sorted."""
    array = np.unique(np.asarray(ids, dtype=np.int64))
    return array[(array >= 0) & (array < num_db)]
