"""Two-traversal folders (VPR-Bench layout) as training places and held-out evaluation sets.

Layout: ``<root>/query/*.jpg``, ``<root>/ref/*.jpg`` (frame ``i`` of both traversals shows the same
place) and ``<root>/ground_truth.json`` = ``[{"query": i, "positives": [ref indices]}, ...]``.
Frames ``[first, stop)`` are grouped into places of ``frames_per_place`` consecutive frames, each
holding those frames from both traversals; disjoint frame ranges give train/test place splits.
"""

from dataclasses import dataclass
import json
from pathlib import Path

import numpy as np

from vpr_ros.errors import DatasetError
from vpr_ros_training.places import list_images, PlaceTable


@dataclass(frozen=True)
class EvalSet:
    """Held-out retrieval problem: query images, database images and each query's positives."""

    name: str
    queries: tuple
    database: tuple
    positives: tuple

    def load_queries(self) -> list[np.ndarray]:
        """Return the query images as RGB arrays."""
        return [PlaceTable.load(item) for item in self.queries]

    def load_database(self) -> list[np.ndarray]:
        """Return the database images as RGB arrays."""
        return [PlaceTable.load(item) for item in self.database]

    def labels(self) -> np.ndarray:
        """Return the ``[Q, D]`` boolean matrix of query/database positives."""
        matrix = np.zeros((len(self.queries), len(self.database)), dtype=bool)
        for q, positives in enumerate(self.positives):
            matrix[q, list(positives)] = True
        return matrix


def traversal_frames(root: Path) -> tuple[list[Path], list[Path]]:
    """Return the sorted query and reference frame files, checking that the counts match."""
    if not root.is_dir():
        raise DatasetError(f'traversal folder {root} does not exist')
    queries, refs = list_images(root / 'query'), list_images(root / 'ref')
    if not queries or len(queries) != len(refs):
        raise DatasetError(f'{root}: expected equal, non-zero query/ref frame counts, found '
                           f'{len(queries)} and {len(refs)}')
    return queries, refs


def frame_range(count: int, first: int, stop: int) -> range:
    """Return ``range(first, stop)`` clipped to ``count`` frames (``stop <= 0`` means the end)."""
    stop = count if stop <= 0 else min(stop, count)
    if not 0 <= first < stop:
        raise DatasetError(f'empty frame range [{first}, {stop}) of {count} frames')
    return range(first, stop)


def read_traversal_places(root: str | Path, frames_per_place: int = 2, first: int = 0,
                          stop: int = 0) -> PlaceTable:
    """Return places of ``frames_per_place`` consecutive frames from both traversals."""
    queries, refs = traversal_frames(Path(root))
    frames = frame_range(len(queries), first, stop)
    places, keys = [], []
    for start in range(frames.start, frames.stop - frames_per_place + 1, frames_per_place):
        chosen = range(start, start + frames_per_place)
        places.append([str(queries[i]) for i in chosen] + [str(refs[i]) for i in chosen])
        keys.append(start)
    return PlaceTable(f'traversal:{Path(root).name}', places, keys)


def read_ground_truth(root: Path) -> dict[int, list[int]]:
    """Return ``{query index: [positive reference indices]}`` from ``ground_truth.json``."""
    path = root / 'ground_truth.json'
    try:
        entries = json.loads(path.read_text())
        return {int(e['query']): [int(p) for p in e['positives']] for e in entries}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f'cannot read ground truth {path}: {exc}') from exc


def read_traversal_eval(root: str | Path, first: int = 0, stop: int = 0) -> EvalSet:
    """Return query frames against reference frames, both within ``[first, stop)``."""
    root = Path(root)
    queries, refs = traversal_frames(root)
    frames = frame_range(len(queries), first, stop)
    truth = read_ground_truth(root)
    positives = tuple(tuple(p - frames.start for p in truth.get(q, []) if p in frames)
                      for q in frames)
    return EvalSet(f'traversal:{root.name}[{frames.start}:{frames.stop}]',
                   tuple(str(queries[i]) for i in frames), tuple(str(refs[i]) for i in frames),
                   positives)


def places_eval(table: PlaceTable, name: str = '') -> EvalSet:
    """Return an evaluation set: image 0 of each place in the database, the rest queries.

    Query ``j`` of place ``i`` has exactly one positive, database entry ``i``.
    """
    queries, positives = [], []
    for place in range(len(table)):
        for item in table.images(place)[1:]:
            queries.append(item)
            positives.append((place,))
    database = tuple(table.images(p)[0] for p in range(len(table)))
    return EvalSet(name or table.name, tuple(queries), database, tuple(positives))
