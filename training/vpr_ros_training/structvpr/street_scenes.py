"""A procedural street facade with exact segmentation, seen by day and by night (CPU toy data).

A *world* is a long strip (``height`` x ``length`` pixels) of labelled structure: sky, buildings
of random widths and heights with window grids and doors, trees, poles with signs and the road
(:data:`CLASSES`). Every building, tree and sign is an instance with its own colour. The day
rendering paints each instance in its colour with a fixed per-world texture; the night rendering
keeps the structure but darkens and recolours every instance, lights a random subset of windows
and adds sensor noise, so that RGB appearance changes much more than the label map does, the
setting where a segmentation teacher knows more than an RGB student.

Places are evenly spaced positions along the strip. The database is the day view of every place,
the queries are night views from shifted and zoomed viewpoints; label maps are warped with the
same viewpoint (nearest-neighbour) and can get a small fraction of random label noise, like a real
segmenter's errors. Deterministic for a given seed.
"""

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from vpr_ros.config import validate
from vpr_ros_training.config import option

CLASSES = ('sky', 'building', 'window', 'door', 'vegetation', 'pole', 'road', 'sign')
SKY, BUILDING, WINDOW, DOOR, VEGETATION, POLE, ROAD, SIGN = range(len(CLASSES))
NIGHT_KEEP = 0.7


@dataclass(frozen=True)
class StreetConfig:
    """Size of the world strip, number of places and the query viewpoint change."""

    height: int = option(48, 'strip (and view) height in pixels', (16, 4096))
    length: int = option(1800, 'strip length in pixels', (64, 10 ** 6))
    view_width: int = option(64, 'width of the strip window one view shows', (8, 4096))
    places: int = option(60, 'evenly spaced places along the strip', (2, 100000))
    shift_px: float = option(4.0, 'maximum horizontal viewpoint shift of queries', (0.0, 1e4))
    zoom: float = option(0.08, 'maximum relative zoom change of queries', (0.0, 0.9))
    label_noise: float = option(0.02, 'fraction of query label pixels set to a random class',
                                (0.0, 1.0))

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)


@dataclass(frozen=True)
class StreetViews:
    """Rendered places: day database and night queries, RGB and label maps, positions."""

    db_rgb: tuple
    db_labels: tuple
    query_rgb: tuple
    query_labels: tuple
    db_x: np.ndarray
    query_x: np.ndarray


def paint(labels: np.ndarray, instances: np.ndarray, box: tuple, label: int,
          instance: int) -> None:
    """Fill rows ``y0:y1`` and columns ``x0:x1`` with a label and an instance id."""
    y0, y1, x0, x1 = (max(0, int(v)) for v in box)
    labels[y0:y1, x0:x1] = label
    instances[y0:y1, x0:x1] = instance


def add_building(labels: np.ndarray, instances: np.ndarray, x0: int, width: int,
                 rng: np.random.Generator, next_id: int) -> int:
    """Draw one building with windows and a door; return the next free instance id."""
    height, road = labels.shape[0], int(labels.shape[0] * 0.8)
    top = int(rng.integers(2, height // 3))
    paint(labels, instances, (top, road, x0, x0 + width), BUILDING, next_id)
    win_w, win_h = int(rng.integers(3, 7)), int(rng.integers(3, 7))
    step_x, step_y = win_w + int(rng.integers(2, 6)), win_h + int(rng.integers(2, 6))
    for wy in range(top + 2, road - win_h - 6, step_y):
        for wx in range(x0 + 2, x0 + width - win_w - 1, step_x):
            paint(labels, instances, (wy, wy + win_h, wx, wx + win_w), WINDOW, next_id + 1)
    door_x = x0 + int(rng.integers(1, max(2, width - 8)))
    paint(labels, instances, (road - int(rng.integers(6, 10)), road, door_x, door_x + 5), DOOR,
          next_id + 2)
    return next_id + 3


def add_street_furniture(labels: np.ndarray, instances: np.ndarray, rng: np.random.Generator,
                         next_id: int) -> None:
    """Draw trees and poles with signs in front of the buildings."""
    height, length = labels.shape
    road = int(height * 0.8)
    for x in rng.integers(0, length, size=length // 40):
        radius = int(rng.integers(4, 9))
        centre = (int(x), int(road - radius - rng.integers(2, 8)))
        cv2.circle(labels, centre, radius, VEGETATION, -1)
        cv2.circle(instances, centre, radius, next_id, -1)
        next_id += 1
    for x in rng.integers(0, length, size=length // 60):
        top = int(rng.integers(height // 4, height // 2))
        paint(labels, instances, (top, road, x, x + 2), POLE, next_id)
        paint(labels, instances, (top, top + 5, x - 3, x + 5), SIGN, next_id + 1)
        next_id += 2


@lru_cache(maxsize=8)
def build_world(seed: int, height: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the ``(labels, instances)`` strips of world ``seed``."""
    rng = np.random.default_rng([seed, 0])
    labels = np.full((height, length), SKY, np.int32)
    instances = np.zeros((height, length), np.int32)
    paint(labels, instances, (int(height * 0.8), height, 0, length), ROAD, 1)
    x, next_id = 0, 2
    while x < length:
        width = int(rng.integers(24, 72))
        next_id = add_building(labels, instances, x, width, rng, next_id)
        x += width + int(rng.integers(0, 6))
    add_street_furniture(labels, instances, rng, next_id + 1)
    return labels.astype(np.uint8), instances


def render_rgb(labels: np.ndarray, instances: np.ndarray, seed: int, night: bool) -> np.ndarray:
    """Return the ``[H, L, 3] uint8`` day or night rendering of a world strip."""
    rng = np.random.default_rng([seed, 1])
    day_colour = rng.uniform(30, 230, (int(instances.max()) + 1, 3))
    texture = rng.normal(0, 12, labels.shape + (1,))
    colour = day_colour[instances]
    colour[labels == SKY] = (150, 190, 235)
    if night:
        night_rng = np.random.default_rng([seed, 2])
        recolour = night_rng.uniform(10, 90, day_colour.shape)
        colour = NIGHT_KEEP * colour + (1.0 - NIGHT_KEEP) * recolour[instances]
        lit = night_rng.random(day_colour.shape[0]) < 0.5
        colour[(labels == WINDOW) & lit[instances]] = (250, 220, 120)
        colour[labels == SKY] = (20, 25, 60)
    return np.clip(colour + texture, 0, 255).astype(np.uint8)


def view_matrix(centre: float, config: StreetConfig, shift: float, zoom: float) -> np.ndarray:
    """Return the affine map from strip pixels to a view of ``height`` x ``view_width``."""
    scale = 1.0 + zoom
    x0 = centre + shift - config.view_width / (2 * scale)
    y0 = config.height / 2 - config.height / (2 * scale)
    return np.array([[scale, 0.0, -x0 * scale], [0.0, scale, -y0 * scale]])


def warp(strip: np.ndarray, matrix: np.ndarray, config: StreetConfig, nearest: bool) -> np.ndarray:
    """Return one view of a strip (bilinear for RGB, nearest for labels)."""
    flags = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.warpAffine(strip, matrix, (config.view_width, config.height), flags=flags,
                          borderMode=cv2.BORDER_REFLECT)


def noisy_labels(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Return ``labels`` with ``fraction`` of its pixels set to random classes."""
    noisy = labels.copy()
    mask = rng.random(labels.shape) < fraction
    noisy[mask] = rng.integers(0, len(CLASSES), int(mask.sum()))
    return noisy


def render_street(seed: int, config: StreetConfig = StreetConfig()) -> StreetViews:
    """Render the day database and night queries of world ``seed``."""
    labels, instances = build_world(seed, config.height, config.length)
    day = render_rgb(labels, instances, seed, night=False)
    night = render_rgb(labels, instances, seed, night=True)
    rng = np.random.default_rng([seed, 3])
    margin = config.view_width
    centres = np.linspace(margin, config.length - margin, config.places)
    db_rgb, db_labels, q_rgb, q_labels, q_x = [], [], [], [], []
    for centre in centres:
        matrix = view_matrix(centre, config, 0.0, 0.0)
        db_rgb.append(warp(day, matrix, config, False))
        db_labels.append(warp(labels, matrix, config, True))
        shift = rng.uniform(-config.shift_px, config.shift_px)
        matrix = view_matrix(centre, config, shift, rng.uniform(-config.zoom, config.zoom))
        night_view = warp(night, matrix, config, False)
        q_rgb.append(np.clip(night_view + rng.normal(0, 6, night_view.shape), 0, 255)
                     .astype(np.uint8))
        q_labels.append(noisy_labels(warp(labels, matrix, config, True), config.label_noise,
                                     rng))
        q_x.append(centre + shift)
    return StreetViews(tuple(db_rgb), tuple(db_labels), tuple(q_rgb), tuple(q_labels),
                       centres, np.asarray(q_x))
