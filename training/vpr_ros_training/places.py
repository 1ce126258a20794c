"""Place collections: every training sample is drawn from the images of one place.

A *place* is a set of images showing the same location (a GSV-Cities place, a Google Landmarks
landmark, an SF-XL 15 m cell, a folder). Samplers ask a :class:`PlaceSet` for two images of a place
(stage one) or ``K`` images of a place (stage two); they never pair images of different places.
"""

import logging
from pathlib import Path
from typing import Sequence, Union

import cv2
import numpy as np

from vpr_ros.errors import DatasetError, ImageDecodeError

LOGGER = logging.getLogger(__name__)

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp')

ImageItem = Union[str, np.ndarray]


def read_image(path: str) -> np.ndarray:
    """Read an image file as ``[H, W, 3] uint8 RGB``; unreadable files raise ImageDecodeError."""
    data = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if data is None:
        raise ImageDecodeError(f'cannot read image file {path}')
    return cv2.cvtColor(data, cv2.COLOR_BGR2RGB)


def list_images(folder: Path) -> list[Path]:
    """Return the image files directly inside ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def choose(count: int, available: int, rng: np.random.Generator) -> np.ndarray:
    """Pick ``count`` indices of ``range(available)``, without replacement when possible."""
    if available <= 0:
        raise DatasetError('cannot sample from a place without images')
    return rng.choice(available, size=count, replace=count > available)


class PlaceSet:
    """Abstract collection of places that can produce image samples of one place."""

    name = 'places'

    def __len__(self) -> int:
        """Return the number of places."""
        raise NotImplementedError

    def sample_images(self, place: int, count: int,
                      rng: np.random.Generator) -> list[np.ndarray]:
        """Return ``count`` RGB images of ``place`` (distinct when the place has enough)."""
        raise NotImplementedError

    def sample_pair(self, place: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Return two different RGB images of ``place`` (stage-one pair sampling)."""
        first, second = self.sample_images(place, 2, rng)
        return first, second


class PlaceTable(PlaceSet):
    """Places given as lists of images (file paths or in-memory RGB arrays)."""

    def __init__(self, name: str, places: Sequence[Sequence[ImageItem]],
                 keys: Sequence = ()) -> None:
        """Store ``places[i]`` = images of place ``i``; ``keys`` name places (ids, folders)."""
        self.name = name
        self._places = [tuple(items) for items in places]
        self.keys = tuple(keys) if keys else tuple(range(len(self._places)))
        if len(self.keys) != len(self._places):
            raise DatasetError(f'{name}: {len(self.keys)} keys for {len(self._places)} places')

    def __len__(self) -> int:
        """Return the number of places."""
        return len(self._places)

    def images(self, place: int) -> tuple:
        """Return the image items (paths or arrays) of ``place``."""
        return self._places[place]

    def num_images(self) -> int:
        """Return the total number of images."""
        return sum(len(items) for items in self._places)

    @staticmethod
    def load(item: ImageItem) -> np.ndarray:
        """Return the RGB array of one image item."""
        return item if isinstance(item, np.ndarray) else read_image(item)

    def sample_images(self, place: int, count: int,
                      rng: np.random.Generator) -> list[np.ndarray]:
        """Return ``count`` images of ``place`` drawn at random."""
        items = self._places[place]
        return [self.load(items[i]) for i in choose(count, len(items), rng)]

    def subset(self, places: Sequence[int]) -> 'PlaceTable':
        """Return the places at the given indices, in that order."""
        return PlaceTable(self.name, [self._places[i] for i in places],
                          [self.keys[i] for i in places])

    def with_min_images(self, min_images: int) -> 'PlaceTable':
        """Return only the places that have at least ``min_images`` images."""
        keep = [i for i, items in enumerate(self._places) if len(items) >= min_images]
        if len(keep) < len(self._places):
            LOGGER.info('%s: kept %d of %d places with >= %d images', self.name, len(keep),
                        len(self._places), min_images)
        return self.subset(keep)


class PlaceUnion(PlaceSet):
    """Several place sets concatenated; place ``i`` of the union has label ``i``."""

    def __init__(self, members: Sequence[PlaceSet]) -> None:
        """Concatenate ``members`` in order."""
        self.members = tuple(members)
        self.name = '+'.join(m.name for m in self.members)
        self._offsets = np.cumsum([0] + [len(m) for m in self.members])

    def __len__(self) -> int:
        """Return the total number of places."""
        return int(self._offsets[-1])

    def locate(self, place: int) -> tuple[PlaceSet, int]:
        """Return the member holding ``place`` and the index inside it."""
        if not 0 <= place < len(self):
            raise IndexError(f'place {place} out of range [0, {len(self)})')
        member = int(np.searchsorted(self._offsets, place, side='right')) - 1
        return self.members[member], place - int(self._offsets[member])

    def sample_images(self, place: int, count: int,
                      rng: np.random.Generator) -> list[np.ndarray]:
        """Return ``count`` images of ``place`` from the member that holds it."""
        member, local = self.locate(place)
        return member.sample_images(local, count, rng)

    def sample_pair(self, place: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Return an image pair of ``place`` using the member's own pair sampling."""
        member, local = self.locate(place)
        return member.sample_pair(local, rng)

    def source_of(self, place: int) -> int:
        """Return the index of the member that holds ``place`` (for per-source statistics)."""
        return int(np.searchsorted(self._offsets, place, side='right')) - 1
