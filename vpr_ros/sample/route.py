"""The sample route: its settings, the closed street loop, its two facade walls and viewpoints.

The route is an L-shaped loop of six straights joined by quarter turns, run counter-clockwise from
the origin. Its facades are the loop offset by half the street width to either side, kept as
segments that camera rays are cast against. Traversal 0 (the map) drives the centre line;
traversal 1 (the query) drives with a lateral offset, yaw and pitch jitter, between the map's
positions.
"""

from dataclasses import dataclass
import math
from pathlib import Path

import numpy as np

from vpr_ros.config import option, validate
from vpr_ros.errors import ConfigError

IMAGE_TOPIC = 'camera/image_raw'
POSE_TOPIC = 'odom'
TRAVERSALS = ('map', 'query')


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
class Walls:
    """Facade polylines as segments: endpoints, wall id, arc length and street-facing normal."""

    a: np.ndarray
    b: np.ndarray
    wall: np.ndarray
    u0: np.ndarray
    normal: np.ndarray
    lengths: tuple


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


def closed_route(config: RouteConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense route vertices (closed by repeating the first), arc lengths and unwrapped headings."""
    xy, heading = _trace(_route_pieces(config), 0.05)
    xy = np.vstack([xy, xy[:1]])
    heading = np.append(heading, heading[0] + 2.0 * math.pi)
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xy, axis=0), axis=1))])
    return xy, s, heading


def build_walls(config: RouteConfig) -> Walls:
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
    return Walls(*cat, lengths=tuple(p[5] for p in parts))


def cast(walls: Walls, origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, ...]:
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


def viewpoints(config: RouteConfig, traversal: int) -> tuple[np.ndarray, ...]:
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
