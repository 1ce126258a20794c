"""Embedded default sample: a procedural street loop driven twice, by day and at dusk.

The scene is an L-shaped loop of streets lined with building facades (windows, doors, shop signs,
posters, murals), a paved floor with kerbs, lane markings and crosswalks, and a sky with clouds.
Every texture is built from seeded noise and OpenCV drawing primitives. A frame is rendered by
casting one 2-D ray per image column against the facade polylines and mapping every pixel to a
facade, floor or sky texel (numpy and OpenCV only, no OpenGL).

Traversal 0 is the map: daylight, the camera on the route centre line. Traversal 1 is the query:
dusk light with long shadows, warm colours and lit windows, a lateral offset, yaw and pitch jitter
and sampling positions that fall between the map's.
"""

from dataclasses import dataclass
import functools
import logging
import math
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np

from vpr_ros.config import option, validate
from vpr_ros.data.bag import write_frames
from vpr_ros.data.frame import Frame
from vpr_ros.errors import ConfigError
from vpr_ros.geometry import pose_from_xy_yaw

_LOG = logging.getLogger(__name__)

IMAGE_TOPIC = 'camera/image_raw'
POSE_TOPIC = 'odom'
TRAVERSALS = ('map', 'query')
TEXEL_M = 0.05
FACADE_MAX_M = 14.0
FACADE_ROWS = int(FACADE_MAX_M / TEXEL_M)
ATLAS_BAND_ROWS = FACADE_ROWS + 2 * (FACADE_ROWS // 4)
MIP_LEVELS = 5
SKY_EL_RANGE = (math.radians(-10.0), math.radians(70.0))
SKY_SHAPE = (360, 2048)
# cv2.remap needs every side of its source below SHRT_MAX; larger textures are sampled in
# tiles of _REMAP_TILE + 1 texels (a power of two keeps tile coordinates exact).
_REMAP_MAX_SIDE = 32767
_REMAP_TILE = 16384
_START_NS = 1_700_000_000 * 10**9
_TRAVERSAL_GAP_NS = 3 * 3600 * 10**9


@dataclass(frozen=True)
class RouteConfig:
    """The procedural route: its size, the camera and how the two traversals differ."""

    seed: int = option(7, 'seed of every texture, landmark and jitter')
    length_m: float = option(120.0, 'length of the closed L-shaped route in metres; at least '
                             '(6 + 3 pi) * (street_width_m / 2 + 2), 92.5 m for an 8 m street',
                             (93.0, 2000.0))
    frames_per_traversal: int = option(120, 'frames rendered per traversal', (2, 100000))
    image_size: tuple[int, int] = option((240, 320), 'image (height, width) in pixels')
    fov_deg: float = option(70.0, 'horizontal field of view in degrees', (20.0, 150.0))
    street_width_m: float = option(8.0, 'distance between the two facades', (5.0, 12.0))
    camera_height_m: float = option(1.6, 'camera height above the street', (0.3, 4.0))
    frame_rate_hz: float = option(10.0, 'frame rate that sets the time stamps', (0.1, 1000.0))
    query_lateral_offset_m: float = option(0.6, 'mean lateral offset of the query camera',
                                           (0.0, 2.0))
    query_yaw_jitter_deg: float = option(3.0, 'amplitude of the query yaw jitter', (0.0, 20.0))

    def __post_init__(self) -> None:
        """Validate values, the image size and that the loop fits the street width."""
        validate(self)
        size = tuple(self.image_size)
        if len(size) != 2 or not all(isinstance(v, int) and 16 <= v <= 4096 for v in size):
            raise ConfigError(f'RouteConfig.image_size={self.image_size!r} must be two integers '
                              '(height, width) in [16, 4096]')
        if min(length for length, _ in _route_pieces(self)) < 0.0:
            shortest = (6.0 + 3.0 * math.pi) * (self.street_width_m / 2.0 + 2.0)
            raise ConfigError(f'RouteConfig.length_m={self.length_m} is too short for a street '
                              f'{self.street_width_m} m wide (at least {shortest:.1f} m)')


@dataclass(frozen=True)
class SamplePaths:
    """Where :func:`write_sample` put the two bags and which topics they hold."""

    map_bag: Path
    query_bag: Path
    image_topic: str = IMAGE_TOPIC
    pose_topic: str = POSE_TOPIC


@dataclass(frozen=True)
class _Lighting:
    """Illumination, sky and camera response of one traversal."""

    sun_azimuth: float
    sun_elevation: float
    sun_rgb: tuple
    ambient_rgb: tuple
    sky_horizon: tuple
    sky_zenith: tuple
    cloud_rgb: tuple
    cloud_cover: float
    emissive: float
    exposure: float
    white_balance: tuple
    tone_gamma: float
    vignette: float
    noise_sigma: float


_LIGHTING = (
    _Lighting(sun_azimuth=math.radians(55.0), sun_elevation=math.radians(48.0),
              sun_rgb=(0.95, 0.92, 0.85), ambient_rgb=(0.46, 0.5, 0.56),
              sky_horizon=(0.78, 0.85, 0.95), sky_zenith=(0.3, 0.5, 0.85),
              cloud_rgb=(0.97, 0.97, 0.98), cloud_cover=0.45, emissive=0.0,
              exposure=1.0, white_balance=(1.0, 1.0, 1.0), tone_gamma=1.0,
              vignette=0.12, noise_sigma=0.008),
    _Lighting(sun_azimuth=math.radians(250.0), sun_elevation=math.radians(9.0),
              sun_rgb=(0.9, 0.55, 0.3), ambient_rgb=(0.28, 0.26, 0.32),
              sky_horizon=(0.98, 0.55, 0.3), sky_zenith=(0.18, 0.16, 0.38),
              cloud_rgb=(0.55, 0.35, 0.4), cloud_cover=0.6, emissive=0.65,
              exposure=1.25, white_balance=(1.08, 0.96, 0.8), tone_gamma=1.12,
              vignette=0.3, noise_sigma=0.016),
)


@dataclass(frozen=True)
class _Walls:
    """Facade polylines as segments: endpoints, wall id, arc length and street-facing normal."""

    a: np.ndarray
    b: np.ndarray
    wall: np.ndarray
    u0: np.ndarray
    normal: np.ndarray
    lengths: tuple


@dataclass(frozen=True)
class _Scene:
    """Geometry and lighting-independent textures shared by both traversals."""

    route_xy: np.ndarray
    route_s: np.ndarray
    route_heading: np.ndarray
    walls: _Walls
    atlas: tuple
    emissive: tuple
    heights: tuple
    floor_albedo: np.ndarray
    floor_origin: tuple


@dataclass(frozen=True)
class _Camera:
    """Pinhole camera pose and intrinsics of one frame."""

    xy: np.ndarray
    yaw: float
    height: float
    focal: float
    cx: float
    cy: float
    shape: tuple


# ----------------------------------------------------------------------------------- route


def _route_pieces(config: RouteConfig) -> list[tuple[float, float]]:
    """Return the loop as (length, curvature) pieces: six straights joined by quarter turns."""
    radius = config.street_width_m / 2.0 + 2.0
    arc = math.pi * radius / 2.0
    scale = (config.length_m + 12.0 * radius - 6.0 * arc) / 3.6
    sides = np.array([1.0, 0.4, 0.5, 0.4, 0.5, 0.8]) * scale - 2.0 * radius
    turns = (1.0, 1.0, -1.0, 1.0, 1.0, 1.0)
    pieces = []
    for side, turn in zip(sides, turns):
        pieces += [(float(side), 0.0), (arc, turn / radius)]
    return pieces


def _trace(pieces: list[tuple[float, float]], step: float) -> tuple[np.ndarray, np.ndarray]:
    """Walk the pieces from the origin; return vertices ``[N, 2]`` and headings ``[N]``."""
    xy, heading = np.zeros(2), 0.0
    points, headings = [xy], [heading]
    for length, curvature in pieces:
        n = max(1, int(math.ceil(length / step))) if length > 0 else 0
        ds = np.linspace(0.0, length, n + 1)[1:]
        if curvature == 0.0:
            new = xy + ds[:, None] * np.array([math.cos(heading), math.sin(heading)])
        else:
            h = heading + curvature * ds
            new = xy + np.stack([np.sin(h) - math.sin(heading),
                                 math.cos(heading) - np.cos(h)], axis=1) / curvature
        if n:
            points.append(new)
            headings.append(heading + curvature * ds)
            xy, heading = new[-1], heading + curvature * length
    return np.vstack(points)[:-1], np.hstack(headings)[:-1]


def route_polyline(config: RouteConfig, step_m: float = 0.1) -> np.ndarray:
    """Return the closed route as ``[N, 2]`` map-frame vertices about ``step_m`` apart.

    The last vertex is not repeated; the route runs counter-clockwise from the origin.
    """
    return _trace(_route_pieces(config), step_m)[0]


def _route_xy(scene: _Scene, s: np.ndarray, lateral: np.ndarray) -> np.ndarray:
    """Map route coordinates (arc length, left offset) to map-frame points ``[N, 2]``."""
    length = scene.route_s[-1]
    s = np.mod(s, length)
    x = np.interp(s, scene.route_s, scene.route_xy[:, 0])
    y = np.interp(s, scene.route_s, scene.route_xy[:, 1])
    h = np.interp(s, scene.route_s, scene.route_heading)
    return np.stack([x - np.sin(h) * lateral, y + np.cos(h) * lateral], axis=-1)


def _closed_route(config: RouteConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense route vertices (closed by repeating the first), arc lengths and unwrapped headings."""
    xy, heading = _trace(_route_pieces(config), 0.05)
    xy = np.vstack([xy, xy[:1]])
    heading = np.append(heading, heading[0] + 2.0 * math.pi)
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xy, axis=0), axis=1))])
    return xy, s, heading


def _build_walls(config: RouteConfig) -> _Walls:
    """Offset the route to both sides; wall 0 is on the left, wall 1 on the right."""
    xy, heading = _trace(_route_pieces(config), 1.0)
    normal_left = np.stack([-np.sin(heading), np.cos(heading)], axis=1)
    parts = []
    for wall, side in enumerate((1.0, -1.0)):
        pts = xy + side * config.street_width_m / 2.0 * normal_left
        a, b = pts, np.roll(pts, -1, axis=0)
        lengths = np.linalg.norm(b - a, axis=1)
        d = (b - a) / lengths[:, None]
        normal = side * np.stack([d[:, 1], -d[:, 0]], axis=1)
        u0 = np.concatenate([[0.0], np.cumsum(lengths)[:-1]])
        parts.append((a, b, np.full(len(a), wall), u0, normal, float(lengths.sum())))
    cat = [np.concatenate([p[i] for p in parts]) for i in range(5)]
    return _Walls(*cat, lengths=tuple(p[5] for p in parts))


def _cast(walls: _Walls, origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, ...]:
    """Intersect rays with every segment; return (t, segment, u along its wall), t=inf if none."""
    e = walls.b - walls.a
    ap = walls.a[None] - origins[:, None]
    denom = dirs[:, None, 0] * e[None, :, 1] - dirs[:, None, 1] * e[None, :, 0]
    denom = np.where(np.abs(denom) < 1e-12, 1e-12, denom)
    t = (ap[..., 0] * e[None, :, 1] - ap[..., 1] * e[None, :, 0]) / denom
    f = (ap[..., 0] * dirs[:, None, 1] - ap[..., 1] * dirs[:, None, 0]) / denom
    t = np.where((t > 1e-4) & (f >= 0.0) & (f <= 1.0), t, np.inf)
    seg = np.argmin(t, axis=1)
    rows = np.arange(len(origins))
    u = walls.u0[seg] + f[rows, seg] * np.linalg.norm(e[seg], axis=1)
    return t[rows, seg], seg, u


# -------------------------------------------------------------------------------- textures


def _noise(rng: np.random.Generator, shape: tuple, cells: tuple, octaves: int = 3) -> np.ndarray:
    """Fractal value noise of ``shape``, roughly zero-mean and unit amplitude, periodic in x.

    The period is exact when ``shape[1]`` is a multiple of ``cells[1] * 2**(octaves - 1)``.
    """
    out = np.zeros(shape, np.float32)
    for octave in range(octaves):
        gy, gx = (max(2, c * 2**octave) for c in cells)
        cy, cx = -(-shape[0] // gy), -(-shape[1] // gx)
        grid = np.pad(rng.standard_normal((gy + 4, gx)).astype(np.float32), ((0, 0), (2, 2)),
                      mode='wrap')
        big = cv2.resize(grid, ((gx + 4) * cx, (gy + 4) * cy), interpolation=cv2.INTER_CUBIC)
        out += big[2 * cy:2 * cy + shape[0], 2 * cx:2 * cx + shape[1]] / 2**octave
    return out / 1.75


def _col(u: float) -> int:
    return int(round(u / TEXEL_M))


def _row(z: float) -> int:
    return int(round((FACADE_MAX_M - z) / TEXEL_M))


def _rect(img: np.ndarray, u0: float, u1: float, z0: float, z1: float, colour: Any) -> None:
    """Fill the facade rectangle [u0, u1] x [z0, z1] (metres) with ``colour``."""
    cv2.rectangle(img, (_col(u0), _row(z1)), (_col(u1) - 1, _row(z0) - 1),
                  tuple(float(c) for c in np.broadcast_to(colour, 3)), -1)


_PALETTE = np.array([
    (0.62, 0.3, 0.22), (0.75, 0.68, 0.55), (0.55, 0.55, 0.57), (0.85, 0.83, 0.78),
    (0.55, 0.65, 0.75), (0.5, 0.62, 0.45), (0.85, 0.72, 0.4), (0.7, 0.45, 0.5),
    (0.4, 0.33, 0.28), (0.3, 0.38, 0.45), (0.9, 0.55, 0.35), (0.6, 0.7, 0.62)], np.float32)
_VIVID = np.array([
    (0.85, 0.1, 0.1), (0.1, 0.45, 0.85), (0.95, 0.8, 0.1), (0.1, 0.65, 0.3),
    (0.95, 0.45, 0.05), (0.55, 0.15, 0.7), (0.05, 0.7, 0.75), (0.95, 0.95, 0.95),
    (0.08, 0.08, 0.1), (0.9, 0.3, 0.6)], np.float32)


def _vivid(rng: np.random.Generator) -> np.ndarray:
    return _VIVID[rng.integers(len(_VIVID))]


def _pattern(rng: np.random.Generator, style: int, shape: tuple) -> np.ndarray:
    """Return a brightness pattern ``[H, W]`` for a facade: brick, plaster, panels or siding."""
    rows, cols = np.indices(shape)
    grain = 1.0 + 0.07 * _noise(rng, shape, (max(1, shape[0] // 40), max(1, shape[1] // 40)))
    if style == 0:
        mortar = (rows % 5 == 0) | ((cols + 5 * ((rows // 5) % 2)) % 10 == 0)
        return grain * np.where(mortar, 1.25, 1.0 + 0.06 * rng.standard_normal(shape))
    if style == 1:
        return grain * (1.0 + 0.05 * _noise(rng, shape, (max(1, shape[0] // 8), 4)))
    if style == 2:
        joint = (rows % 24 == 0) | (cols % 36 == 0)
        panel = 1.0 + 0.08 * rng.standard_normal((shape[0] // 24 + 1, shape[1] // 36 + 1))
        return grain * np.where(joint, 0.6, panel[rows // 24, cols // 36])
    return grain * np.where(rows % 4 == 0, 0.78, 1.0)


def _letters(rng: np.random.Generator, n: int) -> str:
    return ''.join(chr(65 + int(c)) for c in rng.integers(0, 26, n))


@dataclass(frozen=True)
class _Canvas:
    """Facade texture being drawn: albedo, coverage, emitted light and roof height per column."""

    rgb: np.ndarray
    alpha: np.ndarray
    emis: np.ndarray
    heights: np.ndarray


def _text(img: np.ndarray, text: str, u0: float, u1: float, z0: float, z1: float,
          colour: Any) -> None:
    """Write ``text`` centred in the facade box [u0, u1] x [z0, z1], as large as it fits."""
    font = cv2.FONT_HERSHEY_DUPLEX
    box = img[_row(z1):_row(z0), _col(u0):_col(u1)]
    (w, h), _ = cv2.getTextSize(text, font, 1.0, 1)
    scale = min(box.shape[1] * 0.9 / w, box.shape[0] * 0.75 / h)
    (w, h), _ = cv2.getTextSize(text, font, scale, 1)
    ink = np.zeros(box.shape[:2], np.uint8)
    cv2.putText(ink, text, ((box.shape[1] - w) // 2, (box.shape[0] + h) // 2), font, scale, 255,
                max(1, int(scale * 1.5)), cv2.LINE_AA)
    alpha = (ink.astype(np.float32) / 255.0)[..., None]
    box[:] = box * (1.0 - alpha) + alpha * np.asarray(colour, np.float32)


def _draw_window(rng: np.random.Generator, cv: _Canvas, box: tuple, frame: Any,
                 glass: np.ndarray) -> None:
    """Draw one framed window; some have curtains, some are lit at night."""
    u0, u1, z0, z1 = box
    _rect(cv.rgb, u0 - 0.08, u1 + 0.08, z0 - 0.1, z1 + 0.08, frame)
    _rect(cv.rgb, u0, u1, z0, z1, glass)
    _rect(cv.rgb, u0, u1, (z0 + z1) / 2 + 0.2, z1, glass * 1.35)
    if rng.random() < 0.3:
        _rect(cv.rgb, u0, u1, z1 - (z1 - z0) * rng.uniform(0.2, 0.7), z1, _PALETTE[
            rng.integers(len(_PALETTE))])
    if rng.random() < 0.4:
        _rect(cv.emis, u0, u1, z0, z1, np.array((1.0, 0.78, 0.45)) * rng.uniform(0.35, 0.9))


def _draw_windows(rng: np.random.Generator, cv: _Canvas, u0: float, u1: float,
                  height: float) -> None:
    """Draw the upper storeys: a regular grid of windows of one building."""
    storey, win_w = rng.uniform(2.8, 3.4), rng.uniform(0.6, 1.4)
    win_h, pitch = rng.uniform(1.1, 1.7), win_w + rng.uniform(0.5, 1.6)
    count = int((u1 - u0 - 0.6) // pitch)
    frame = (0.92, 0.9, 0.86) if rng.random() < 0.6 else _PALETTE[rng.integers(len(_PALETTE))]
    glass = np.array((0.12, 0.16, 0.22), np.float32) * rng.uniform(0.7, 1.4)
    start = u0 + (u1 - u0 - count * pitch) / 2.0 + (pitch - win_w) / 2.0
    z = rng.uniform(3.5, 4.0)
    while z + win_h + 0.5 < height:
        for k in range(count):
            a = start + k * pitch
            _draw_window(rng, cv, (a, a + win_w, z, z + win_h), frame, glass)
        z += storey


def _draw_shop(rng: np.random.Generator, cv: _Canvas, u0: float, u1: float) -> None:
    """Draw a shop front: lettered sign band, lit display window with goods, door."""
    sign, ink = _vivid(rng), _vivid(rng)
    _rect(cv.rgb, u0 + 0.2, u1 - 0.2, 2.5, 3.2, sign)
    _text(cv.rgb, _letters(rng, int(rng.integers(3, 8))), u0 + 0.3, u1 - 0.3, 2.5, 3.2,
          ink if np.abs(ink - sign).sum() > 0.6 else 1.0 - sign)
    _rect(cv.emis, u0 + 0.2, u1 - 0.2, 2.5, 3.2, sign * 0.5)
    door = u0 + 0.4 if rng.random() < 0.5 else u1 - 1.5
    _rect(cv.rgb, u0 + 0.3, u1 - 0.3, 0.4, 2.3, (0.2, 0.2, 0.22))
    _rect(cv.rgb, u0 + 0.4, u1 - 0.4, 0.5, 2.2, (0.1, 0.13, 0.16))
    for _ in range(int((u1 - u0) * 1.5)):
        a, z = rng.uniform(u0 + 0.4, u1 - 0.8), rng.uniform(0.5, 1.6)
        _rect(cv.rgb, a, a + rng.uniform(0.15, 0.4), z, z + rng.uniform(0.15, 0.5), _vivid(rng))
    _rect(cv.emis, u0 + 0.4, u1 - 0.4, 0.5, 2.2, (0.55, 0.5, 0.4))
    _rect(cv.rgb, door, door + 1.1, 0.0, 2.3, (0.35, 0.3, 0.25))
    _rect(cv.rgb, door + 0.1, door + 1.0, 0.1, 2.2, (0.08, 0.08, 0.1))


def _draw_entrance(rng: np.random.Generator, cv: _Canvas, u0: float, u1: float) -> None:
    """Draw a residential ground floor: coloured door with a lamp and two small windows."""
    door = rng.uniform(u0 + 1.5, max(u0 + 1.6, u1 - 2.6))
    colour = _vivid(rng) * 0.8 if rng.random() < 0.6 else np.array((0.4, 0.25, 0.12))
    _rect(cv.rgb, door - 0.15, door + 1.25, 0.0, 2.55, (0.85, 0.85, 0.8))
    _rect(cv.rgb, door, door + 1.1, 0.15, 2.4, colour)
    _rect(cv.rgb, door + 0.15, door + 0.95, 1.5, 2.25, (0.15, 0.18, 0.2))
    _rect(cv.emis, door + 0.4, door + 0.7, 2.65, 2.9, (1.0, 0.9, 0.6))
    _rect(cv.rgb, door + 0.4, door + 0.7, 2.65, 2.9, (0.9, 0.9, 0.8))
    glass = np.array((0.12, 0.16, 0.22), np.float32)
    for a in (door - 1.3, door + 1.5):
        if u0 + 0.2 < a and a + 0.9 < u1 - 0.2:
            _draw_window(rng, cv, (a, a + 0.9, 1.0, 2.2), (0.9, 0.9, 0.88), glass)


def _draw_garage(rng: np.random.Generator, cv: _Canvas, u0: float, u1: float) -> None:
    """Draw one or two roller shutters."""
    tone = rng.uniform(0.35, 0.75)
    a = u0 + 0.6
    while a + 2.8 < u1:
        _rect(cv.rgb, a - 0.1, a + 2.7, 0.0, 2.6, (0.3, 0.3, 0.3))
        for z in np.arange(0.0, 2.5, 0.1):
            _rect(cv.rgb, a, a + 2.6, z, z + 0.07, (tone, tone, tone * 1.05))
        a += rng.uniform(3.2, 6.0)


def _draw_posters(rng: np.random.Generator, cv: _Canvas, u0: float, u1: float) -> None:
    """Draw a blank wall with posters of random shapes and a graffiti tag."""
    for _ in range(int(rng.integers(1, 4))):
        a, w = rng.uniform(u0 + 0.3, u1 - 1.2), rng.uniform(0.6, 1.0)
        _rect(cv.rgb, a, a + w, 0.9, 0.9 + 1.4 * w, _vivid(rng))
        centre = (_col(a + w / 2), _row(0.9 + 0.7 * w))
        cv2.circle(cv.rgb, centre, int(rng.integers(3, 9)), tuple(map(float, _vivid(rng))), -1)
        _text(cv.rgb, _letters(rng, 3), a, a + w, 0.95, 1.25, _vivid(rng))
    c0, c1 = _col(u0 + 0.2), _col(u1 - 0.2)
    blob = _noise(rng, (_row(0.2) - _row(1.4), c1 - c0), (2, max(1, (c1 - c0) // 30)))
    region = cv.rgb[_row(1.4):_row(0.2), c0:c1]
    region[blob > 0.7] = _vivid(rng)


_GROUND_FLOORS = (_draw_shop, _draw_entrance, _draw_garage, _draw_posters)


def _draw_building(rng: np.random.Generator, cv: _Canvas, u0: float, u1: float) -> None:
    """Draw one building of the facade between ``u0`` and ``u1`` metres."""
    height = float(rng.uniform(5.0, 13.0))
    colour = _PALETTE[rng.integers(len(_PALETTE))] * rng.uniform(0.85, 1.1)
    c0, c1, r0 = _col(u0), _col(u1), _row(height)
    pattern = _pattern(rng, int(rng.integers(4)), (FACADE_ROWS - r0, c1 - c0))
    cv.rgb[r0:, c0:c1] = colour * pattern[..., None]
    cv.alpha[r0:, c0:c1] = 1.0
    cv.heights[c0:c1] = height
    _rect(cv.rgb, u0, u1, height - 0.35, height, colour * 0.55)
    _draw_windows(rng, cv, u0, u1, height)
    _rect(cv.rgb, u0, u1, 0.0, 0.3, colour * 0.5)
    _GROUND_FLOORS[rng.integers(len(_GROUND_FLOORS))](rng, cv, u0, u1)
    _rect(cv.rgb, u0, u0 + 0.12, 0.0, height, (0.25, 0.25, 0.27))


def _draw_landmark(rng: np.random.Generator, cv: _Canvas, u: float) -> None:
    """Draw a rooftop billboard or a large mural near ``u``: the place's distinctive mark."""
    width = rng.uniform(2.5, 4.5)
    height = float(cv.heights[_col(u)])
    if rng.random() < 0.5 and height < FACADE_MAX_M - 3.2:
        top = height + rng.uniform(2.0, 2.8)
        _rect(cv.rgb, u + 0.3, u + 0.45, height, top, (0.2, 0.2, 0.2))
        _rect(cv.rgb, u + width - 0.45, u + width - 0.3, height, top, (0.2, 0.2, 0.2))
        cv.alpha[_row(top):_row(height), _col(u + 0.3):_col(u + width - 0.3)] = 1.0
        base, board = _vivid(rng), (height + 0.6, top)
        _rect(cv.rgb, u, u + width, *board, base)
        _text(cv.rgb, _letters(rng, int(rng.integers(2, 6))), u, u + width, *board, 1.0 - base)
        cv.alpha[_row(top):_row(board[0]), _col(u):_col(u + width)] = 1.0
        _rect(cv.emis, u, u + width, *board, base * 0.6)
        return
    _rect(cv.rgb, u, u + width, 0.3, min(height - 0.4, 5.5), _vivid(rng))
    _rect(cv.emis, u, u + width, 0.3, min(height - 0.4, 5.5), 0.0)
    for _ in range(int(rng.integers(3, 7))):
        centre = (_col(rng.uniform(u, u + width)), _row(rng.uniform(0.6, min(height, 5.5))))
        radius = int(rng.integers(6, 25))
        if rng.random() < 0.5:
            cv2.circle(cv.rgb, centre, radius, tuple(map(float, _vivid(rng))), -1)
        else:
            cv2.rectangle(cv.rgb, centre, (centre[0] + radius, centre[1] + 2 * radius),
                          tuple(map(float, _vivid(rng))), -1)


def _facade(rng: np.random.Generator, length: float) -> _Canvas:
    """Draw the whole facade of one side of the street, ``length`` metres long."""
    cols = _col(length) + 1
    cv = _Canvas(np.zeros((FACADE_ROWS, cols, 3), np.float32),
                 np.zeros((FACADE_ROWS, cols), np.float32),
                 np.zeros((FACADE_ROWS, cols, 3), np.float32), np.zeros(cols, np.float32))
    u = 0.0
    while u < length - 1e-6:
        width = min(float(rng.uniform(5.0, 13.0)), length - u)
        if length - u - width < 4.0:
            width = length - u
        _draw_building(rng, cv, u, u + width)
        u += width
    for mark in np.cumsum(rng.uniform(8.0, 16.0, int(length / 8.0))):
        if mark + 5.0 < length:
            _draw_landmark(rng, cv, float(mark))
    return cv


def _pyramid(img: np.ndarray) -> tuple:
    """Return ``MIP_LEVELS`` successively halved copies of ``img`` (level 0 first)."""
    levels = [img]
    for _ in range(MIP_LEVELS - 1):
        levels.append(cv2.pyrDown(levels[-1]))
    return tuple(levels)


def _to_u8(img: np.ndarray) -> np.ndarray:
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _build_atlas(rng: np.random.Generator, walls: _Walls) -> tuple[tuple, tuple, tuple]:
    """Draw both facades; stack them (wall 1 mirrored so its lettering reads correctly)."""
    canvases = [_facade(rng, length) for length in walls.lengths]
    cols = max(cv.rgb.shape[1] for cv in canvases)
    rgba, emis, heights = [], [], []
    for wall, cv in enumerate(canvases):
        flip = (lambda a: a[:, ::-1]) if wall == 1 else (lambda a: a)
        rgba.append(_atlas_band(flip(np.dstack([cv.rgb, cv.alpha])), cols))
        emis.append(_atlas_band(flip(cv.emis), cols))
        heights.append(cv.heights[::-1] if wall == 1 else cv.heights)
    atlas, emissive = np.vstack(rgba), np.vstack(emis)
    return _pyramid(_to_u8(atlas)), _pyramid(_to_u8(emissive)), tuple(heights)


def _atlas_band(texture: np.ndarray, cols: int) -> np.ndarray:
    """Pad a facade to ``cols`` columns and ``ATLAS_BAND_ROWS`` rows: ground row repeated, empty.

    Repeating the ground row keeps bilinear and mip samples at the foot of a facade opaque; the
    empty rows keep the next facade's sky from bleeding into it.
    """
    quarter = FACADE_ROWS // 4
    texture = np.pad(texture, ((0, quarter), (0, 0), (0, 0)), mode='edge')
    return np.pad(texture, ((0, quarter), (0, cols - texture.shape[1]), (0, 0)))


def _floor_grid(scene_xy: np.ndarray, margin: float) -> tuple[tuple, tuple]:
    """Return the floor texture origin (x, y) and shape (rows, cols) covering the route."""
    lo, hi = scene_xy.min(axis=0) - margin, scene_xy.max(axis=0) + margin
    shape = tuple(int(v) for v in np.ceil((hi - lo) / TEXEL_M)[::-1])
    return (float(lo[0]), float(lo[1])), shape


def _world_px(origin: tuple, xy: np.ndarray) -> np.ndarray:
    return np.round((xy - np.array(origin)) / TEXEL_M).astype(np.int32)


def _band(img: np.ndarray, scene: Any, origin: tuple, s: tuple, lateral: tuple,
          colour: Any) -> None:
    """Fill the floor region s0..s1 along the route between two lateral offsets."""
    ss = np.linspace(s[0], s[1], max(2, int((s[1] - s[0]) / 0.25) + 1))
    left = _route_xy(scene, ss, np.full_like(ss, lateral[0]))
    right = _route_xy(scene, ss[::-1], np.full_like(ss, lateral[1]))
    cv2.fillPoly(img, [_world_px(origin, np.vstack([left, right]))],
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
        centre = _world_px(origin, _route_xy(scene, np.array([s]), np.array([lat]))[0])
        cv2.circle(img, tuple(int(v) for v in centre), 7, (0.12, 0.12, 0.12), -1)
        cv2.circle(img, tuple(int(v) for v in centre), 7, (0.35, 0.35, 0.35), 1)


def _floor_albedo(rng: np.random.Generator, scene: Any, config: RouteConfig) -> tuple:
    """Return the floor albedo texture (asphalt, paving, paint) and its map-frame origin."""
    origin, shape = _floor_grid(scene.route_xy, config.street_width_m)
    tone = 0.25 + 0.05 * _noise(rng, shape, (shape[0] // 60 + 1, shape[1] // 60 + 1), 4)
    grit = 0.03 * rng.standard_normal(shape).astype(np.float32)
    img = np.dstack([tone + grit] * 3) * np.array((1.0, 0.98, 0.95), np.float32)
    _floor_markings(rng, img, scene, origin, config)
    stains = _noise(rng, shape, (shape[0] // 40 + 1, shape[1] // 40 + 1), 2)
    img *= np.where(stains > 1.0, 0.7, 1.0)[..., None]
    return img.astype(np.float32), origin


@functools.lru_cache(maxsize=2)
def _build_scene(config: RouteConfig) -> _Scene:
    """Build the geometry and textures of ``config``'s route (cached: both traversals share it)."""
    rng = np.random.default_rng([config.seed, 1])
    route_xy, route_s, heading = _closed_route(config)
    walls = _build_walls(config)
    atlas, emissive, heights = _build_atlas(rng, walls)
    partial = _Scene(route_xy, route_s, heading, walls, atlas, emissive, heights, None, (0, 0))
    floor, origin = _floor_albedo(rng, partial, config)
    return _Scene(route_xy, route_s, heading, walls, atlas, emissive, heights, floor, origin)


# -------------------------------------------------------------------------------- lighting


def _sun_dir(light: _Lighting) -> np.ndarray:
    return np.array([math.cos(light.sun_azimuth), math.sin(light.sun_azimuth)])


def _shadow_mask(scene: _Scene, light: _Lighting, shape: tuple) -> np.ndarray:
    """Rasterise the shadows the facades cast on the floor into the floor texture grid."""
    mask = np.zeros(shape, np.float32)
    walls, reach = scene.walls, -_sun_dir(light) / math.tan(light.sun_elevation)
    mid = walls.u0 + 0.5 * np.linalg.norm(walls.b - walls.a, axis=1)
    for k in range(len(walls.a)):
        heights = scene.heights[walls.wall[k]]
        h = float(heights[min(_col(mid[k]), len(heights) - 1)])
        base = np.array([walls.a[k], walls.b[k]]) - 0.3 * walls.normal[k]
        quad = np.vstack([base, base[::-1] + h * reach])
        cv2.fillPoly(mask, [_world_px(scene.floor_origin, quad)], 1.0)
    return cv2.GaussianBlur(mask, (5, 5), 0)


def _lit_floor(scene: _Scene, light: _Lighting) -> tuple:
    """Return the mip pyramid of the floor as lit by ``light`` (sun, sky light, shadows)."""
    shadow = _shadow_mask(scene, light, scene.floor_albedo.shape[:2])
    sun = np.array(light.sun_rgb, np.float32) * math.sin(light.sun_elevation)
    lit = np.array(light.ambient_rgb, np.float32) + (1.0 - shadow)[..., None] * sun
    return _pyramid(scene.floor_albedo * lit)


def _sky(rng: np.random.Generator, light: _Lighting) -> np.ndarray:
    """Return the sky panorama: rows are elevation (top = highest), columns azimuth 0..2 pi."""
    rows, cols = SKY_SHAPE
    el = np.linspace(SKY_EL_RANGE[1], SKY_EL_RANGE[0], rows)[:, None]
    t = (np.clip(el / SKY_EL_RANGE[1], 0.0, 1.0) ** 0.6)[..., None]
    sky = (1.0 - t) * np.array(light.sky_horizon) + t * np.array(light.sky_zenith)
    sky = np.broadcast_to(sky, (rows, cols, 3)).astype(np.float32)
    clouds = _noise(rng, (rows, cols), (6, 16), 4)
    cover = np.clip((clouds - 1.0 + 2.0 * light.cloud_cover) * 1.5, 0.0, 0.9)[..., None]
    sky = sky * (1.0 - cover) + cover * np.array(light.cloud_rgb, np.float32)
    az = np.linspace(0.0, 2.0 * math.pi, cols, endpoint=False)[None, :]
    dist = np.arccos(np.clip(np.cos(el) * math.cos(light.sun_elevation)
                             * np.cos(az - light.sun_azimuth)
                             + np.sin(el) * math.sin(light.sun_elevation), -1.0, 1.0))
    glow = np.exp(-(dist / 0.35) ** 2)[..., None] * np.array(light.sun_rgb)
    return (sky + 0.8 * glow).astype(np.float32)


@dataclass(frozen=True)
class _Traversal:
    """Per-traversal lighting with the textures it implies."""

    light: _Lighting
    floor: tuple
    sky: np.ndarray


def _traversal_look(scene: _Scene, config: RouteConfig, traversal: int) -> _Traversal:
    light = _LIGHTING[traversal]
    rng = np.random.default_rng([config.seed, 2, traversal])
    return _Traversal(light, _lit_floor(scene, light), _sky(rng, light))


# ------------------------------------------------------------------------------- rendering


def _remap(src: np.ndarray, mx: np.ndarray, my: np.ndarray) -> np.ndarray:
    """Bilinearly sample ``src`` at the 1-D coordinate arrays; returns ``[N, C]`` float32.

    Outside ``src`` the edge texels are repeated. A texture with a side of
    :data:`_REMAP_MAX_SIDE` or more (the facade atlas of a route longer than about 1.6 km) is
    sampled tile by tile, because ``cv2.remap`` refuses such sources; the values are the same.
    """
    mx, my = mx.astype(np.float32), my.astype(np.float32)
    if max(src.shape[:2]) < _REMAP_MAX_SIDE:
        out = _remap_flat(src, mx, my)
    else:
        out = _remap_tiled(src, mx, my)
    out = out.astype(np.float32)
    return out / 255.0 if src.dtype == np.uint8 else out


def _remap_flat(src: np.ndarray, mx: np.ndarray, my: np.ndarray) -> np.ndarray:
    """Sample ``src`` (sides below :data:`_REMAP_MAX_SIDE`) at float32 coordinates: ``[N, C]``."""
    n, width = len(mx), 1024
    pad = (-n) % width
    grid = [np.pad(m, (0, pad)).reshape(-1, width) for m in (mx, my)]
    out = cv2.remap(src, grid[0], grid[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(-1, src.shape[2] if src.ndim == 3 else 1)[:n]


def _tile_index(coord: np.ndarray, size: int) -> np.ndarray:
    """Return the :data:`_REMAP_TILE` tile whose texels a bilinear sample at ``coord`` reads.

    Tile ``k`` holds texels ``k * T`` to ``(k + 1) * T`` inclusive, so a sample in
    ``[k * T, (k + 1) * T)`` finds both neighbours in it; samples before the first or after the
    last tile go to that tile, whose edge is the texture's edge.
    """
    count = max(1, -(-(size - 1) // _REMAP_TILE))
    index = np.nan_to_num(np.floor(coord / np.float32(_REMAP_TILE)), nan=0.0)
    return np.clip(index, 0, count - 1).astype(np.int64)


def _remap_tiled(src: np.ndarray, mx: np.ndarray, my: np.ndarray) -> np.ndarray:
    """Sample a texture of any size as :func:`_remap_flat` would, one tile at a time.

    Tile offsets are multiples of the power of two :data:`_REMAP_TILE`, so the coordinates
    relative to a tile are exact in float32 and every sample gets the same weights and texels as
    on the whole texture.
    """
    rows, cols = _tile_index(my, src.shape[0]), _tile_index(mx, src.shape[1])
    out = np.empty((len(mx), src.shape[2] if src.ndim == 3 else 1), src.dtype)
    keys = rows * (int(cols.max(initial=0)) + 1) + cols
    for key in np.unique(keys):
        sel = keys == key
        r0, c0 = int(rows[sel][0]) * _REMAP_TILE, int(cols[sel][0]) * _REMAP_TILE
        tile = src[r0:r0 + _REMAP_TILE + 1, c0:c0 + _REMAP_TILE + 1]  # a view: cv2 takes strides
        out[sel] = _remap_flat(tile, mx[sel] - np.float32(c0), my[sel] - np.float32(r0))
    return out


def _sample(pyramid: tuple, tx: np.ndarray, ty: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Sample a mip pyramid at level-0 texel coordinates, choosing levels by texel footprint."""
    level = np.clip(np.floor(np.log2(np.maximum(footprint, 1.0))), 0, MIP_LEVELS - 1)
    out = np.zeros((len(tx), pyramid[0].shape[2]), np.float32)
    for lev in np.unique(level).astype(int):
        sel = level == lev
        scale = 0.5**lev
        out[sel] = _remap(pyramid[lev], (tx[sel] + 0.5) * scale - 0.5,
                          (ty[sel] + 0.5) * scale - 0.5)
    return out


def _camera(config: RouteConfig, xy: np.ndarray, yaw: float, pitch: float) -> _Camera:
    height, width = config.image_size
    focal = width / 2.0 / math.tan(math.radians(config.fov_deg) / 2.0)
    return _Camera(np.asarray(xy, float), float(yaw), config.camera_height_m, focal,
                   width / 2.0, height / 2.0 + focal * math.tan(pitch), (height, width))


def _column_rays(cam: _Camera) -> tuple[np.ndarray, np.ndarray]:
    """Return each column's normalised image x and its ray (unit forward depth) ``[W, 2]``."""
    xc = (np.arange(cam.shape[1]) + 0.5 - cam.cx) / cam.focal
    fwd = np.array([math.cos(cam.yaw), math.sin(cam.yaw)])
    right = np.array([math.sin(cam.yaw), -math.cos(cam.yaw)])
    return xc, fwd[None] + xc[:, None] * right[None]


def _sky_pixels(sky: np.ndarray, cam: _Camera, xc: np.ndarray) -> np.ndarray:
    """Look the sky panorama up for every pixel: ``[H, W, 3]``."""
    rows = np.arange(cam.shape[0]) + 0.5
    az = np.mod(cam.yaw - np.arctan(xc), 2.0 * math.pi)[None, :]
    el = np.arctan((cam.cy - rows)[:, None] / (cam.focal * np.sqrt(1.0 + xc**2))[None, :])
    tx = np.broadcast_to(az / (2.0 * math.pi) * SKY_SHAPE[1], el.shape).ravel()
    ty = ((SKY_EL_RANGE[1] - el) / (SKY_EL_RANGE[1] - SKY_EL_RANGE[0]) * SKY_SHAPE[0]).ravel()
    return _remap(sky, tx, ty).reshape(cam.shape + (3,))


def _floor_pixels(scene: _Scene, floor: tuple, cam: _Camera, dirs: np.ndarray,
                  idx: tuple) -> np.ndarray:
    """Shade the floor pixels ``idx`` (row and column index arrays): ``[N, 3]``."""
    depth = cam.height * cam.focal / (idx[0] + 0.5 - cam.cy)
    world = cam.xy[None] + depth[:, None] * dirs[idx[1]]
    tx, ty = ((world - np.array(scene.floor_origin)) / TEXEL_M).T
    footprint = depth / cam.focal / TEXEL_M * (1.0 + depth / cam.height) ** 0.5
    return _sample(floor, tx, ty, footprint)


def _wall_shadow_line(scene: _Scene, light: _Lighting, hits: np.ndarray,
                      seg: np.ndarray) -> np.ndarray:
    """Height below which each column's facade point lies in the shadow of the opposite side."""
    walls, sun = scene.walls, _sun_dir(light)
    origins = hits + 0.01 * walls.normal[seg]
    dist, occluder, u = _cast(walls, origins, np.broadcast_to(sun, origins.shape))
    line = np.full(len(seg), -np.inf)
    found = np.isfinite(dist)
    for wall in (0, 1):
        sel = found & (walls.wall[occluder] == wall)
        heights = scene.heights[wall]
        cols = np.clip(np.round(u[sel] / TEXEL_M).astype(int), 0, len(heights) - 1)
        line[sel] = heights[cols] - dist[sel] * math.tan(light.sun_elevation)
    return line


def _wall_pixels(scene: _Scene, look: _Traversal, cam: _Camera, hit: tuple,
                 z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shade the facade pixels; return ``[H, W, 3]`` colours and the ``[H, W]`` facade mask."""
    depth, seg, u, hits = hit
    idx = np.nonzero((z >= 0.0) & (z < FACADE_MAX_M))
    walls, light = scene.walls, look.light
    tx = u[idx[1]] / TEXEL_M
    ty = walls.wall[seg][idx[1]] * ATLAS_BAND_ROWS + (FACADE_MAX_M - z[idx]) / TEXEL_M
    footprint = (depth / cam.focal / TEXEL_M)[idx[1]]
    rgba = _sample(scene.atlas, tx, ty, footprint)
    glow = _sample(scene.emissive, tx, ty, footprint)
    direct = np.maximum(walls.normal[seg] @ _sun_dir(light), 0.0)
    direct *= math.cos(light.sun_elevation)
    lit_col = direct[idx[1]] * (z[idx] > _wall_shadow_line(scene, light, hits, seg)[idx[1]])
    light_rgb = np.array(light.ambient_rgb) + lit_col[:, None] * np.array(light.sun_rgb)
    rgb = np.zeros(z.shape + (3,), np.float32)
    rgb[idx] = rgba[:, :3] * light_rgb + glow * light.emissive
    mask = np.zeros(z.shape, bool)
    mask[idx] = rgba[:, 3] > 0.5
    return rgb, mask


def _expose(img: np.ndarray, light: _Lighting, rng: np.random.Generator) -> np.ndarray:
    """Apply exposure, white balance, vignetting, sensor noise and the tone curve."""
    h, w = img.shape[:2]
    r2 = (((np.arange(w) + 0.5 - w / 2.0) ** 2)[None, :]
          + ((np.arange(h) + 0.5 - h / 2.0) ** 2)[:, None]) / ((w / 2.0) ** 2 + (h / 2.0) ** 2)
    gain = (light.exposure * (1.0 - light.vignette * r2)[..., None]
            * np.array(light.white_balance)).astype(np.float32)
    noise = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(light.noise_sigma)
    return _to_u8(np.clip(img * gain + noise, 0.0, 1.0) ** np.float32(light.tone_gamma))


def _render(scene: _Scene, look: _Traversal, cam: _Camera, rng: np.random.Generator) -> np.ndarray:
    """Render one ``[H, W, 3] uint8`` RGB frame seen by ``cam``."""
    xc, dirs = _column_rays(cam)
    depth, seg, u = _cast(scene.walls, np.broadcast_to(cam.xy, dirs.shape), dirs)
    rows = np.arange(cam.shape[0]) + 0.5
    with np.errstate(invalid='ignore'):
        z = cam.height + (cam.cy - rows)[:, None] * depth[None, :] / cam.focal
    img = _sky_pixels(look.sky, cam, xc)
    floor = np.nonzero(z < 0.0)
    img[floor] = _floor_pixels(scene, look.floor, cam, dirs, floor)
    hits = cam.xy[None] + np.where(np.isfinite(depth), depth, 0.0)[:, None] * dirs
    wall_rgb, wall_mask = _wall_pixels(scene, look, cam, (depth, seg, u, hits), z)
    img[wall_mask] = wall_rgb[wall_mask]
    return _expose(img, look.light, rng)


# ------------------------------------------------------------------------------ public API


def _viewpoints(config: RouteConfig, traversal: int) -> tuple[np.ndarray, ...]:
    """Arc length, left offset, yaw jitter and pitch (radians) of every frame of a traversal."""
    rng = np.random.default_rng([config.seed, 3, traversal])
    n, length = config.frames_per_traversal, config.length_m
    phase = rng.uniform(0.0, 2.0 * math.pi, 4)
    i = np.arange(n, dtype=float)
    if traversal == 0:
        s = i * length / n
        lateral = 0.05 * np.sin(2.0 * math.pi * s / length * 5.0 + phase[0])
        yaw = math.radians(0.5) * np.sin(2.0 * math.pi * s / 9.0 + phase[1])
        return s, lateral, yaw, np.zeros(n)
    s = (i + 0.5 + rng.uniform(-0.25, 0.25, n)) * length / n
    lateral = -(config.query_lateral_offset_m
                + 0.25 * np.sin(2.0 * math.pi * s / length * 3.0 + phase[0]))
    yaw = math.radians(config.query_yaw_jitter_deg) * (
        0.6 * np.sin(2.0 * math.pi * s / 17.0 + phase[1])
        + 0.4 * np.sin(2.0 * math.pi * s / 6.3 + phase[2]))
    pitch = math.radians(1.0) * np.sin(2.0 * math.pi * s / 11.0 + phase[3])
    return s, lateral, yaw, pitch


def render_traversal(config: RouteConfig, traversal: int) -> list[Frame]:
    """Render one drive around the route: 0 = map (day), 1 = query (dusk, offset viewpoint).

    Args:
        config: the route, camera and jitter settings; the same config renders the same frames.
        traversal: 0 for the map traversal, 1 for the query traversal.

    Returns:
        ``config.frames_per_traversal`` frames at ``config.frame_rate_hz`` with ground-truth
        camera poses in the 'map' frame.
    """
    if traversal not in (0, 1):
        raise ConfigError(f'traversal must be 0 (map) or 1 (query), got {traversal!r}')
    scene = _build_scene(config)
    look = _traversal_look(scene, config, traversal)
    s, lateral, jitter, pitch = _viewpoints(config, traversal)
    xy = _route_xy(scene, s, lateral)
    yaw = np.interp(np.mod(s, scene.route_s[-1]), scene.route_s, scene.route_heading) + jitter
    start = _START_NS + traversal * _TRAVERSAL_GAP_NS
    frames = []
    for i in range(len(s)):
        rng = np.random.default_rng([config.seed, 4, traversal, i])
        image = _render(scene, look, _camera(config, xy[i], yaw[i], pitch[i]), rng)
        frames.append(Frame(stamp_ns=start + int(round(i * 1e9 / config.frame_rate_hz)),
                            image=image, pose=pose_from_xy_yaw(xy[i, 0], xy[i, 1], yaw[i]),
                            source=f'sample/{TRAVERSALS[traversal]}'))
    _LOG.debug('rendered %d frames of traversal %d', len(frames), traversal)
    return frames


def write_sample(out_dir: Any, config: Optional[RouteConfig] = None,
                 storage: str = 'mcap') -> SamplePaths:
    """Render both traversals and write them as rosbag2 bags ``map`` and ``query`` in ``out_dir``.

    Each bag holds rgb8 ``sensor_msgs/Image`` messages on :data:`IMAGE_TOPIC` and the
    ground-truth camera poses as ``nav_msgs/Odometry`` on :data:`POSE_TOPIC`, with the same
    stamps.

    Args:
        out_dir: directory for the two bags (created when missing).
        config: the route; ``None`` uses ``RouteConfig()``.
        storage: rosbag2 storage plugin, 'mcap' or 'sqlite3'.

    Returns:
        The bag paths and topic names.

    Raises:
        BagError: a bag exists already at ``out_dir/map`` or ``out_dir/query``, or cannot be
            written.
    """
    config = RouteConfig() if config is None else config
    out_dir = Path(out_dir)
    bags = []
    for traversal, name in enumerate(TRAVERSALS):
        frames = render_traversal(config, traversal)
        bags.append(write_frames(out_dir / name, frames, image_topic=IMAGE_TOPIC,
                                 pose_topic=POSE_TOPIC, storage=storage))
    _LOG.info('wrote the sample route (%d frames per traversal) to %s',
              config.frames_per_traversal, out_dir)
    return SamplePaths(map_bag=bags[0], query_bag=bags[1])
