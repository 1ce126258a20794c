"""SF-XL raw panoramas with EigenPlaces-style focal-point view sampling.

Panorama file names carry ``@``-separated metadata: field 1 = UTM east, field 2 = UTM north,
field 9 = the panorama's yaw (``north = (180 - yaw) mod 360`` degrees into the image). Images are
grouped into square UTM cells of ``cell_m`` metres (published: 15 m), cells with fewer than
``min_images`` (5) panoramas are dropped. For a pair, a focal point is drawn at ``U{10..20}`` m
from the cell's mean position in a uniformly random direction (the published "dynamic mode"
rotates the second principal direction by ``U{0..359}`` degrees); each panorama is cropped to a
square view facing it. The second panorama is re-drawn until the two viewing directions differ by
3 to 50 degrees (at most 10 tries; after 5 tries any difference above 0.1 degrees is accepted).
"""

from dataclasses import dataclass
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from vpr_ros.errors import DatasetError
from vpr_ros_training.places import PlaceSet, read_image

UTM_EAST_FIELD = 1
UTM_NORTH_FIELD = 2
YAW_FIELD = 9


@dataclass(frozen=True)
class ViewRule:
    """Focal-point distance and viewing-angle rules of the pair sampler."""

    focal_min_m: int = 10
    focal_max_m: int = 20
    min_angle_deg: float = 3.0
    max_angle_deg: float = 50.0
    max_tries: int = 10
    relaxed_after: int = 5
    relaxed_min_deg: float = 0.1


def panorama_fields(path: str) -> tuple[float, float, float]:
    """Return ``(utm_east, utm_north, yaw_deg)`` parsed from an SF-XL panorama file name."""
    parts = Path(path).name.split('@')
    try:
        return (float(parts[UTM_EAST_FIELD]), float(parts[UTM_NORTH_FIELD]),
                float(parts[YAW_FIELD]))
    except (IndexError, ValueError) as exc:
        raise DatasetError(f'SF-XL file name {path!r} lacks @utm_east@utm_north@...@yaw '
                           f'fields') from exc


def bearing_deg(focal: np.ndarray, east_north: np.ndarray) -> float:
    """Return the compass bearing (degrees clockwise from north) from a camera to ``focal``."""
    d_east, d_north = focal[0] - east_north[0], focal[1] - east_north[1]
    return math.degrees(math.atan2(d_east, d_north)) % 360.0


def angle_difference_deg(first: float, second: float) -> float:
    """Return the absolute difference of two bearings, wrapped into [0, 180]."""
    diff = (first - second) % 360.0
    return 360.0 - diff if diff > 180.0 else diff


def crop_view(panorama: np.ndarray, bearing: float, yaw_deg: float) -> np.ndarray:
    """Return the square crop of a 360-degree panorama centred on compass ``bearing``."""
    height, width = panorama.shape[:2]
    north_column = int(((180.0 - yaw_deg) % 360.0) / 360.0 * width)
    bearing_column = int(bearing / 360.0 * width % width)
    left = (north_column + bearing_column - height // 2) % width
    columns = (left + np.arange(height)) % width
    return panorama[:, columns]


def utm_cells(paths: Sequence[str], cell_m: float) -> dict[tuple[int, int], list[int]]:
    """Group panorama indices by their ``cell_m`` UTM cell (lower-left corner as key)."""
    cells: dict[tuple[int, int], list[int]] = {}
    for index, path in enumerate(paths):
        east, north, _ = panorama_fields(path)
        key = (int(east // cell_m * cell_m), int(north // cell_m * cell_m))
        cells.setdefault(key, []).append(index)
    return cells


def principal_directions(east_north: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the mean position and the 2x2 principal directions (columns) of a cell."""
    mean = east_north.mean(axis=0)
    directions, _, _ = np.linalg.svd((east_north - mean).T, full_matrices=False)
    return mean, directions


class SfxlPlaces(PlaceSet):
    """SF-XL cells as places; every sample is a set of views facing one random focal point."""

    name = 'sfxl'

    def __init__(self, paths: Sequence[str], cell_m: float = 15.0, min_images: int = 5,
                 rule: ViewRule = ViewRule()) -> None:
        """Group panorama ``paths`` into cells of ``cell_m`` metres with ``min_images`` or more."""
        self.paths = list(paths)
        self.rule = rule
        self._fields = np.array([panorama_fields(p) for p in self.paths]).reshape(-1, 3)
        cells = utm_cells(self.paths, cell_m)
        self.keys = tuple(sorted(k for k, v in cells.items() if len(v) >= min_images))
        self._members = [np.array(cells[k]) for k in self.keys]
        self._frames = [principal_directions(self._fields[m, :2]) for m in self._members]
        if not self.keys:
            raise DatasetError(f'no SF-XL cell of {cell_m} m has >= {min_images} panoramas')

    def __len__(self) -> int:
        """Return the number of cells."""
        return len(self.keys)

    def focal_point(self, place: int, rng: np.random.Generator) -> np.ndarray:
        """Draw a focal point: mean + rotated second principal direction x U{min..max} m."""
        mean, directions = self._frames[place]
        distance = rng.integers(self.rule.focal_min_m, self.rule.focal_max_m + 1)
        angle = math.radians(rng.integers(0, 360))
        rotation = np.array([[math.cos(angle), -math.sin(angle)],
                             [math.sin(angle), math.cos(angle)]])
        return mean + rotation @ directions[:, 1] * distance

    def view(self, index: int, focal: np.ndarray) -> np.ndarray:
        """Load panorama ``index`` and crop the view facing ``focal``."""
        east, north, yaw = self._fields[index]
        bearing = bearing_deg(focal, np.array([east, north]))
        return crop_view(read_image(self.paths[index]), bearing, yaw)

    def partner(self, place: int, first: int, focal: np.ndarray,
                rng: np.random.Generator) -> int:
        """Choose a second panorama whose view of ``focal`` differs by the allowed angle."""
        members, rule = self._members[place], self.rule
        first_bearing = bearing_deg(focal, self._fields[first, :2])
        candidate = first
        for attempt in range(1, rule.max_tries + 1):
            candidate = int(rng.choice(members))
            diff = angle_difference_deg(first_bearing,
                                        bearing_deg(focal, self._fields[candidate, :2]))
            if rule.min_angle_deg <= diff <= rule.max_angle_deg:
                break
            if attempt >= rule.relaxed_after and diff > rule.relaxed_min_deg:
                break
        return candidate

    def sample_pair(self, place: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Return two views of one focal point from two panoramas of the cell."""
        focal = self.focal_point(place, rng)
        first = int(rng.choice(self._members[place]))
        second = self.partner(place, first, focal, rng)
        return self.view(first, focal), self.view(second, focal)

    def sample_images(self, place: int, count: int,
                      rng: np.random.Generator) -> list[np.ndarray]:
        """Return ``count`` views of one focal point, each chosen by the angle rule."""
        focal = self.focal_point(place, rng)
        first = int(rng.choice(self._members[place]))
        others = [self.partner(place, first, focal, rng) for _ in range(count - 1)]
        return [self.view(i, focal) for i in [first] + others]


def read_sfxl_paths(root: str | Path, paths_file: str = '') -> list[str]:
    """List the panoramas under ``root`` (``paths_file`` when given, else a recursive glob)."""
    root = Path(root)
    if paths_file:
        try:
            names = Path(paths_file).read_text().split()
        except OSError as exc:
            raise DatasetError(f'cannot read SF-XL path list {paths_file}: {exc}') from exc
        return [str(root / n) for n in names]
    paths = sorted(str(p) for p in root.rglob('*.jpg'))
    if not paths:
        raise DatasetError(f'no SF-XL panoramas (*.jpg) under {root}')
    return paths
