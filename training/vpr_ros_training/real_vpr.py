"""The real multi-condition images of ``shared/data/real_vpr``: traversals and their pairings.

The folder holds three sets in which the same index is the same place in every condition:

- ``gardens_point/{day_left,day_right,night_right}/NNN.jpg``: 200 places of one campus walk;
  frames within +-2 of each other show the same place (the strict tolerance);
- ``nordland/{summer,winter}/NNNN.png``: 3576 places of a railway line, one frame every ~10 s,
  so neighbouring indices are different places;
- ``sped/{query,reference}/NNN.png``: 582 webcam pairs (with gaps in the numbering), each its own
  place.

A :class:`Traversal` is one condition restricted to a set of places; a :class:`Pairing` is a
map traversal and a query traversal of the same set, with the distance between places in
"frame units" scaled so that one radius works for every set (:data:`PLACE_SCALE`): Gardens
Point frames are 1 apart, Nordland and SPED places :data:`FAR` apart (never positives of
each other). The suggested split of the data's README is the default: train on Nordland and
Gardens Point places 0-139; choose and calibrate on Gardens Point 140-199 and SPED.
"""

from dataclasses import dataclass
import logging
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from vpr_ros.errors import DatasetError

LOGGER = logging.getLogger(__name__)

FAR = 100.0
"""Distance between two different places of a set whose neighbours are different places."""
PLACE_SCALE = {'gardens_point': 1.0, 'nordland': FAR, 'sped': FAR}
"""Distance per index step in each set (Gardens Point neighbours are the same place)."""
CONDITIONS = {'gardens_point': ('day_left', 'day_right', 'night_right'),
              'nordland': ('summer', 'winter'), 'sped': ('reference', 'query')}
SUFFIXES = ('.jpg', '.jpeg', '.png')


@dataclass(frozen=True)
class Traversal:
    """One condition of a set: image files and the place index of each, in place order."""

    dataset: str
    condition: str
    paths: tuple
    places: np.ndarray

    def __len__(self) -> int:
        """Return the number of images."""
        return len(self.paths)

    def images(self) -> list[np.ndarray]:
        """Read every image as ``[H, W, 3] uint8`` RGB."""
        return [read_rgb(path) for path in self.paths]


@dataclass(frozen=True)
class Pairing:
    """A map (``reference``) and a query traversal of the same set (``name`` for the logs)."""

    name: str
    reference: Traversal
    query: Traversal

    def distance(self) -> np.ndarray:
        """Return ``[Q, M]`` distances between query and map places (see the module doc)."""
        scale = PLACE_SCALE[self.reference.dataset]
        gap = np.abs(self.query.places[:, None] - self.reference.places[None, :])
        return gap.astype(np.float64) * scale


def read_rgb(path: Path) -> np.ndarray:
    """Return the image at ``path`` as RGB ``uint8``; unreadable files raise DatasetError."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f'{path}: not a readable image')
    return np.ascontiguousarray(image[:, :, ::-1])


def traversal(root: Path, dataset: str, condition: str,
              places: Sequence[int] | None = None) -> Traversal:
    """Return ``condition`` of ``dataset`` under ``root`` (the real_vpr folder), in place order.

    Args:
        root: the ``real_vpr`` folder.
        dataset: ``gardens_point``, ``nordland`` or ``sped``.
        condition: a folder of that set (:data:`CONDITIONS`).
        places: keep only these place indices (default: every image in the folder).
    """
    if condition not in CONDITIONS.get(dataset, ()):
        raise DatasetError(f'unknown real_vpr traversal {dataset}/{condition}; valid: '
                           f'{ {name: list(c) for name, c in CONDITIONS.items()} }')
    folder = Path(root) / dataset / condition
    if not folder.is_dir():
        raise DatasetError(f'{folder}: no such folder (is {root} the real_vpr folder?)')
    files = {int(p.stem): p for p in folder.iterdir()
             if p.suffix.lower() in SUFFIXES and p.stem.isdigit()}
    wanted = sorted(files) if places is None else sorted({int(i) for i in places})
    missing = [i for i in wanted if i not in files]
    if missing:
        raise DatasetError(f'{folder}: places {missing[:5]} are missing ({len(missing)} in all)')
    return Traversal(dataset, condition, tuple(files[i] for i in wanted),
                     np.asarray(wanted, dtype=np.int64))


def pairing(root: Path, dataset: str, map_condition: str, query_condition: str,
            places: Sequence[int] | None = None) -> Pairing:
    """Return the pairing of two conditions of ``dataset`` over the same places."""
    map_side = traversal(root, dataset, map_condition, places)
    query_side = traversal(root, dataset, query_condition, map_side.places)
    name = f'{dataset}:{query_condition}->{map_condition}'
    if places is not None:
        name += f'[{int(map_side.places.min())}-{int(map_side.places.max())}]'
    return Pairing(name, map_side, query_side)


def parse_pairing(root: Path, text: str) -> Pairing:
    """Return the pairing written ``dataset:query->map[first-last]`` (places optional).

    Examples: ``gardens_point:night_right->day_left[140-199]``, ``sped:query->reference``,
    ``nordland:winter->summer[0-3575:4]`` (every 4th place).
    """
    try:
        dataset, rest = text.split(':', 1)
        sides, _, places = rest.partition('[')
        query_condition, map_condition = sides.split('->')
        chosen = None
        if places:
            bounds = places.rstrip(']').split(':')
            first, last = (int(v) for v in bounds[0].split('-'))
            step = int(bounds[1]) if len(bounds) > 1 else 1
            chosen = range(first, last + 1, step)
    except ValueError as exc:
        raise DatasetError(f'cannot read pairing {text!r}: write dataset:query->map'
                           '[first-last(:step)]') from exc
    return pairing(root, dataset.strip(), map_condition.strip(), query_condition.strip(),
                   chosen)
