"""The sample scene: route geometry, facade atlas and street floor shared by both traversals.

The floor is a paved texture (asphalt, sidewalks, kerbs, lane markings, crosswalks and manhole
covers) laid along the route in the map frame. The scene does not depend on the lighting, so it
is built once per route and cached.
"""

from dataclasses import dataclass
import functools
from typing import Any

import cv2
import numpy as np

from vpr_ros.sample.facade import build_atlas, noise, TEXEL_M
from vpr_ros.sample.route import build_walls, closed_route, RouteConfig, Walls


@dataclass(frozen=True)
class Scene:
    """Geometry and lighting-independent textures shared by both traversals."""

    route_xy: np.ndarray
    route_s: np.ndarray
    route_heading: np.ndarray
    walls: Walls
    atlas: tuple
    emissive: tuple
    heights: tuple
    floor_albedo: np.ndarray
    floor_origin: tuple


def route_xy(scene: Scene, s: np.ndarray, lateral: np.ndarray) -> np.ndarray:
    """Map route coordinates (arc length, left offset) to map-frame points ``[N, 2]``."""
    length = scene.route_s[-1]
    s = np.mod(s, length)
    x = np.interp(s, scene.route_s, scene.route_xy[:, 0])
    y = np.interp(s, scene.route_s, scene.route_xy[:, 1])
    h = np.interp(s, scene.route_s, scene.route_heading)
    return np.stack([x - np.sin(h) * lateral, y + np.cos(h) * lateral], axis=-1)


def _floor_grid(scene_xy: np.ndarray, margin: float) -> tuple[tuple, tuple]:
    """Return the floor texture origin (x, y) and shape (rows, cols) covering the route."""
    lo, hi = scene_xy.min(axis=0) - margin, scene_xy.max(axis=0) + margin
    shape = tuple(int(v) for v in np.ceil((hi - lo) / TEXEL_M)[::-1])
    return (float(lo[0]), float(lo[1])), shape


def world_px(origin: tuple, xy: np.ndarray) -> np.ndarray:
    """Return map-frame points ``xy`` as integer floor texel coordinates from ``origin``."""
    return np.round((xy - np.array(origin)) / TEXEL_M).astype(np.int32)


def _band(img: np.ndarray, scene: Any, origin: tuple, s: tuple, lateral: tuple,
          colour: Any) -> None:
    """Fill the floor region s0..s1 along the route between two lateral offsets."""
    ss = np.linspace(s[0], s[1], max(2, int((s[1] - s[0]) / 0.25) + 1))
    left = route_xy(scene, ss, np.full_like(ss, lateral[0]))
    right = route_xy(scene, ss[::-1], np.full_like(ss, lateral[1]))
    cv2.fillPoly(img, [world_px(origin, np.vstack([left, right]))],
                 tuple(float(c) for c in np.broadcast_to(colour, 3)))


def _floor_markings(rng: np.random.Generator, img: np.ndarray, scene: Any, origin: tuple,
                    config: RouteConfig) -> None:
    """Paint kerbs, sidewalks, the dashed centre line, crosswalks and manhole covers."""
    length, half = scene.route_s[-1], config.street_width_m / 2.0
    walk = half - 1.6
    for side in (1.0, -1.0):
        _band(img, scene, origin, (0.0, length), (side * half, side * walk), (0.52, 0.5, 0.48))
        _band(img, scene, origin, (0.0, length), (side * walk, side * (walk - 0.15)),
              (0.7, 0.7, 0.68))
    for s in np.arange(0.0, length - 3.0, 6.0):
        _band(img, scene, origin, (s, s + 3.0), (1.35, 1.2), (0.85, 0.82, 0.6))
    for s in rng.uniform(0.0, length - 4.0, max(1, int(length / 35.0))):
        for lat in np.arange(-walk + 0.3, walk - 0.5, 0.9):
            _band(img, scene, origin, (s, s + 3.0), (lat, lat + 0.5), (0.88, 0.88, 0.86))
    for s, lat in zip(rng.uniform(0.0, length, int(length / 12.0)),
                      rng.uniform(-walk + 0.5, walk - 0.5, int(length / 12.0))):
        centre = world_px(origin, route_xy(scene, np.array([s]), np.array([lat]))[0])
        cv2.circle(img, tuple(int(v) for v in centre), 7, (0.12, 0.12, 0.12), -1)
        cv2.circle(img, tuple(int(v) for v in centre), 7, (0.35, 0.35, 0.35), 1)


def _floor_albedo(rng: np.random.Generator, scene: Any, config: RouteConfig) -> tuple:
    """Return the floor albedo texture (asphalt, paving, paint) and its map-frame origin."""
    origin, shape = _floor_grid(scene.route_xy, config.street_width_m)
    tone = 0.25 + 0.05 * noise(rng, shape, (shape[0] // 60 + 1, shape[1] // 60 + 1), 4)
    grit = 0.03 * rng.standard_normal(shape).astype(np.float32)
    img = np.dstack([tone + grit] * 3) * np.array((1.0, 0.98, 0.95), np.float32)
    _floor_markings(rng, img, scene, origin, config)
    stains = noise(rng, shape, (shape[0] // 40 + 1, shape[1] // 40 + 1), 2)
    img *= np.where(stains > 1.0, 0.7, 1.0)[..., None]
    return img.astype(np.float32), origin


@functools.lru_cache(maxsize=2)
def build_scene(config: RouteConfig) -> Scene:
    """Build the geometry and textures of ``config``'s route (cached: both traversals share it)."""
    rng = np.random.default_rng([config.seed, 1])
    route_xy, route_s, heading = closed_route(config)
    walls = build_walls(config)
    atlas, emissive, heights = build_atlas(rng, walls)
    partial = Scene(route_xy, route_s, heading, walls, atlas, emissive, heights, None, (0, 0))
    floor, origin = _floor_albedo(rng, partial, config)
    return Scene(route_xy, route_s, heading, walls, atlas, emissive, heights, floor, origin)
