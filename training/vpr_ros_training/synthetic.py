"""Procedural places for CPU tests and tiny runs.

Each place is a random 2-D scene seen from several nearby viewpoints.
A scene is a canvas of coloured shapes on a gradient; a view crops a window whose centre, size and
rotation vary (viewpoint change), then changes gain/offset and adds noise (illumination, sensor).
Different places share the same visual vocabulary, so telling them apart needs the layout, not a
single colour. Deterministic for a given seed.
"""

import math

import cv2
import numpy as np

from vpr_ros_training.places import PlaceTable

CANVAS_SCALE = 2


def render_scene(size: int, rng: np.random.Generator) -> np.ndarray:
    """Return a ``[size * 2, size * 2, 3] uint8`` canvas of random shapes on a gradient."""
    side = size * CANVAS_SCALE
    ramp = np.linspace(0.0, 1.0, side)[None, :, None]
    low, high = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    canvas = np.ascontiguousarray(np.broadcast_to(low + (high - low) * ramp, (side, side, 3)))
    canvas = canvas.astype(np.uint8)
    for _ in range(int(rng.integers(10, 16))):
        draw_shape(canvas, rng)
    return canvas


def draw_shape(canvas: np.ndarray, rng: np.random.Generator) -> None:
    """Draw one random rectangle, disc or thick line onto ``canvas`` in place."""
    side = canvas.shape[0]
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    x, y = (int(v) for v in rng.integers(0, side, 2))
    extent = int(rng.integers(side // 12, side // 4))
    kind = int(rng.integers(0, 3))
    if kind == 0:
        cv2.rectangle(canvas, (x, y), (x + extent, y + extent // 2), colour, -1)
    elif kind == 1:
        cv2.circle(canvas, (x, y), extent // 2, colour, -1)
    else:
        end = (int(x + extent * math.cos(rng.uniform(0, math.pi))), int(y + extent))
        cv2.line(canvas, (x, y), end, colour, max(2, side // 40))


def render_view(scene: np.ndarray, size: int, rng: np.random.Generator,
                shift: float = 0.12, zoom: float = 0.15, rotate_deg: float = 8.0) -> np.ndarray:
    """Return a ``[size, size, 3]`` view of ``scene`` from a perturbed viewpoint."""
    side = scene.shape[0]
    centre = side / 2 + rng.uniform(-shift, shift, 2) * side
    scale = (size / (side * 0.55)) * (1.0 + rng.uniform(-zoom, zoom))
    matrix = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])),
                                     float(rng.uniform(-rotate_deg, rotate_deg)), float(scale))
    matrix[:, 2] += size / 2 - centre
    view = cv2.warpAffine(scene, matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT)
    gain, offset = rng.uniform(0.75, 1.25), rng.uniform(-20, 20)
    noisy = view.astype(np.float32) * gain + offset + rng.normal(0, 4, view.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def render_places(num_places: int, images_per_place: int = 4, image_size: int = 64,
                  seed: int = 0, name: str = 'synthetic') -> PlaceTable:
    """Return ``num_places`` procedural places with ``images_per_place`` views each (in memory)."""
    places = []
    for place in range(num_places):
        rng = np.random.default_rng([seed, place])
        scene = render_scene(image_size, rng)
        places.append([render_view(scene, image_size, rng) for _ in range(images_per_place)])
    return PlaceTable(name, places)
