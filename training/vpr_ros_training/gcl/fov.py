"""Graded similarity from camera poses: the overlap of two 2-D field-of-view sectors.

Each camera's view is approximated by a circular sector (GCL, CVPR 2023): apex at the camera's
(east, north) position, axis along its heading, half-angle ``alpha`` and radius ``r``. The graded
similarity of two cameras is the intersection-over-union of their sectors,
``psi = |A & B| / |A | B|`` with ``|A| = |B| = alpha * r**2``.

The GCL authors never released their labeller nor the values of the angle and radius they used
for MSLS (generalized_contrastive_loss issues #8 and #20), and the IoU normalisation is our
reading of "overlap". Our defaults, all :class:`FovConfig` fields:

* ``half_angle_deg = 35``: a 70 degree horizontal field of view (a typical street-level camera;
  also the field of view of the project's sample route);
* ``radius_m = 50``: how far a street-level camera sees useful structure (methods.md section 5);
* ``max_heading_diff_deg = 90``: pairs whose headings differ by more than this get ``psi = 0``
  whatever their sector overlap. Two cameras facing each other have overlapping 2-D sectors but
  see opposite faces of the scene; 180 turns the gate off (pure sector IoU).

The area of ``A & B`` is computed exactly with Green's theorem: the boundary of the intersection
is the part of each sector's boundary (two radii and one arc, counter-clockwise) that lies inside
the other sector; each piece contributes ``1/2 * integral(x dy - y dx)``, in closed form for
segments and arcs. Boundary pieces that coincide are counted once when the two outward normals
agree and not at all when they oppose. Headings are radians counter-clockwise from east (ROS
ENU yaw); :func:`compass_to_yaw` converts compass angles (degrees clockwise from north, as in
MSLS ``raw.csv``). The half-angle is limited to 90 degrees so that every sector is convex.
"""

from dataclasses import dataclass
import math
from typing import Union

import numpy as np

from vpr_ros.config import validate
from vpr_ros_training.config import option

TWO_PI = 2.0 * math.pi
RELATIVE_EPS = 1e-9


@dataclass(frozen=True)
class FovConfig:
    """Field-of-view sector parameters of the graded-similarity labeller (our defaults)."""

    half_angle_deg: float = option(35.0, 'half of the horizontal field of view in degrees '
                                   '(GCL value unpublished; 35 = a 70 degree camera)', (1.0, 90.0))
    radius_m: float = option(50.0, 'sector radius in metres (GCL value unpublished)',
                             (0.01, 1e5))
    max_heading_diff_deg: float = option(90.0, 'pairs whose headings differ by more get psi 0 '
                                         '(180 = pure sector IoU)', (0.0, 180.0))

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)


def compass_to_yaw(compass_deg: Union[float, np.ndarray]) -> Union[float, np.ndarray]:
    """Return the ENU yaw (radians, counter-clockwise from east) of a compass angle in degrees."""
    return np.radians(90.0 - np.asarray(compass_deg, dtype=np.float64))


def heading_difference(yaw_a: np.ndarray, yaw_b: np.ndarray) -> np.ndarray:
    """Return the absolute wrapped difference of two headings in radians, in ``[0, pi]``."""
    diff = np.mod(np.asarray(yaw_a) - np.asarray(yaw_b) + math.pi, TWO_PI) - math.pi
    return np.abs(diff)


Point = tuple[float, float]


def unit(angle: float) -> Point:
    """Return the unit vector at ``angle`` radians."""
    return (math.cos(angle), math.sin(angle))


def sub(a: Point, b: Point) -> Point:
    """Return ``a - b``."""
    return (a[0] - b[0], a[1] - b[1])


def along(origin: Point, direction: Point, t: float) -> Point:
    """Return ``origin + t * direction``."""
    return (origin[0] + t * direction[0], origin[1] + t * direction[1])


def dot(a: Point, b: Point) -> float:
    """Return the dot product of two 2-D vectors."""
    return a[0] * b[0] + a[1] * b[1]


def cross(a: Point, b: Point) -> float:
    """Return the z component of the cross product of two 2-D vectors."""
    return a[0] * b[1] - a[1] * b[0]


@dataclass(frozen=True)
class Segment:
    """A directed straight boundary piece from ``start`` to ``end``."""

    start: Point
    end: Point

    def point(self, t: float) -> Point:
        """Return the point at parameter ``t`` in [0, 1]."""
        return along(self.start, sub(self.end, self.start), t)


@dataclass(frozen=True)
class Arc:
    """A counter-clockwise arc of circle (``centre``, ``radius``) from angle ``t0`` to ``t1``."""

    centre: Point
    radius: float
    t0: float
    t1: float

    def point(self, t: float) -> Point:
        """Return the point at angle ``t``."""
        return along(self.centre, unit(t), self.radius)


@dataclass(frozen=True)
class Sector:
    """A circular sector: apex, heading (radians), half-angle (radians, <= pi/2) and radius."""

    apex: Point
    heading: float
    half_angle: float
    radius: float

    @property
    def area(self) -> float:
        """Return ``half_angle * radius**2``."""
        return self.half_angle * self.radius ** 2

    def vertices(self) -> tuple[Point, Point, Point]:
        """Return the apex and the arc's start (right) and end (left) points."""
        right = along(self.apex, unit(self.heading - self.half_angle), self.radius)
        left = along(self.apex, unit(self.heading + self.half_angle), self.radius)
        return self.apex, right, left

    def boundary(self) -> tuple:
        """Return the counter-clockwise boundary: apex->right, the arc, left->apex."""
        apex, right, left = self.vertices()
        arc = Arc(apex, self.radius, self.heading - self.half_angle,
                  self.heading + self.half_angle)
        return Segment(apex, right), arc, Segment(left, apex)

    def constraints(self, point: Point) -> tuple[list, list]:
        """Return ``(values, outward normals)`` of the three constraints; inside = all >= 0."""
        v = sub(point, self.apex)
        lo, hi = self.heading - self.half_angle, self.heading + self.half_angle
        normal_right = (math.sin(lo), -math.cos(lo))
        normal_left = (-math.sin(hi), math.cos(hi))
        length = math.hypot(*v)
        normal_arc = (v[0] / length, v[1] / length) if length > 0 else unit(self.heading)
        values = [self.radius - length, -dot(v, normal_right), -dot(v, normal_left)]
        return values, [normal_arc, normal_right, normal_left]


def line_parameters(segment: Segment, origin: Point, direction: Point) -> list:
    """Return the parameters where ``segment`` crosses the line ``origin + s * direction``."""
    d = sub(segment.end, segment.start)
    denominator = cross(d, direction)
    if abs(denominator) < 1e-15:
        return []
    return [cross(sub(origin, segment.start), direction) / denominator]


def circle_parameters(segment: Segment, centre: Point, radius: float) -> list:
    """Return the parameters where ``segment`` crosses the circle (``centre``, ``radius``)."""
    d, f = sub(segment.end, segment.start), sub(segment.start, centre)
    a, b, c = dot(d, d), 2.0 * dot(f, d), dot(f, f) - radius ** 2
    disc = b * b - 4 * a * c
    if a == 0 or disc < 0:
        return []
    root = math.sqrt(disc)
    return [(-b - root) / (2 * a), (-b + root) / (2 * a)]


def arc_line_angles(arc: Arc, origin: Point, direction: Point) -> list:
    """Return the angles where the arc's circle meets the line ``origin + s * direction``."""
    k = -cross(sub(arc.centre, origin), direction) / (arc.radius * math.hypot(*direction))
    if abs(k) > 1.0:
        return []
    phi, base = math.atan2(direction[1], direction[0]), math.asin(k)
    return [phi - base, phi - math.pi + base]


def arc_circle_angles(arc: Arc, centre: Point, radius: float) -> list:
    """Return the angles where the arc's circle meets the circle (``centre``, ``radius``)."""
    offset = sub(centre, arc.centre)
    distance = math.hypot(*offset)
    if distance == 0 or distance > arc.radius + radius or distance < abs(arc.radius - radius):
        return []
    a = (arc.radius ** 2 - radius ** 2 + distance ** 2) / (2 * distance)
    spread = math.acos(max(-1.0, min(1.0, a / arc.radius)))
    beta = math.atan2(offset[1], offset[0])
    return [beta - spread, beta + spread]


def split_parameters(piece, other: Sector, eps: float) -> list[float]:
    """Return the sorted parameters where ``piece`` meets ``other``'s boundary or vertices."""
    apex, right, left = other.vertices()
    directions = (sub(right, apex), sub(left, apex))
    if isinstance(piece, Segment):
        found = [t for u in directions for t in line_parameters(piece, apex, u)]
        found += circle_parameters(piece, apex, other.radius)
        found += [vertex_parameter(piece, v, eps) for v in (apex, right, left)]
        inside = [t for t in found if t is not None and 0.0 < t < 1.0]
        return sorted([0.0, 1.0] + inside)
    found = [t for u in directions for t in arc_line_angles(piece, apex, u)]
    found += arc_circle_angles(piece, apex, other.radius)
    offsets = [sub(v, piece.centre) for v in (apex, right, left)]
    found += [math.atan2(o[1], o[0]) for o in offsets
              if abs(math.hypot(*o) - piece.radius) < eps]
    inside = [piece.t0 + (t - piece.t0) % TWO_PI for t in found]
    return sorted([piece.t0, piece.t1] + [t for t in inside if piece.t0 < t < piece.t1])


def vertex_parameter(segment: Segment, vertex: Point, eps: float):
    """Return the parameter of ``vertex`` on ``segment``'s line when it lies on it, else None."""
    d = sub(segment.end, segment.start)
    length_sq = dot(d, d)
    if length_sq == 0:
        return None
    t = dot(sub(vertex, segment.start), d) / length_sq
    return t if math.hypot(*sub(segment.point(t), vertex)) < eps else None


def green_term(piece, lo: float, hi: float) -> float:
    """Return ``1/2 * integral(x dy - y dx)`` over ``piece`` between parameters ``lo``/``hi``."""
    if isinstance(piece, Segment):
        return 0.5 * cross(piece.point(lo), piece.point(hi))
    (cx, cy), r = piece.centre, piece.radius
    return 0.5 * (r * r * (hi - lo) + r * cx * (math.sin(hi) - math.sin(lo))
                  - r * cy * (math.cos(hi) - math.cos(lo)))


def counts_towards(piece, mid: float, own: Sector, other: Sector, first: bool,
                   eps: float) -> bool:
    """Return True when the piece around parameter ``mid`` bounds ``own & other``."""
    point = piece.point(mid)
    values, normals = other.constraints(point)
    depth = min(values)
    if depth > eps:
        return True
    if depth < -eps or not first:
        return False
    own_values, own_normals = own.constraints(point)
    own_normal = own_normals[min(range(3), key=lambda i: abs(own_values[i]))]
    return dot(own_normal, normals[values.index(depth)]) > 0.0


def clipped_boundary_area(own: Sector, other: Sector, first: bool, eps: float) -> float:
    """Return the Green's-theorem contribution of ``own``'s boundary inside ``other``."""
    total = 0.0
    for piece in own.boundary():
        ts = split_parameters(piece, other, eps)
        for lo, hi in zip(ts[:-1], ts[1:]):
            if hi - lo > 1e-15 and counts_towards(piece, 0.5 * (lo + hi), own, other, first, eps):
                total += green_term(piece, lo, hi)
    return total


def intersection_area(a: Sector, b: Sector) -> float:
    """Return the exact area of ``a & b`` (both sectors convex)."""
    eps = RELATIVE_EPS * max(a.radius, b.radius)
    a_local = Sector((0.0, 0.0), a.heading, a.half_angle, a.radius)
    b_local = Sector(sub(b.apex, a.apex), b.heading, b.half_angle, b.radius)
    area = (clipped_boundary_area(a_local, b_local, True, eps)
            + clipped_boundary_area(b_local, a_local, False, eps))
    return max(0.0, min(area, a.area, b.area))


def make_sector(x: float, y: float, yaw: float, config: FovConfig) -> Sector:
    """Return the field-of-view sector of a camera at ``(x, y)`` facing ``yaw`` radians."""
    return Sector((float(x), float(y)), float(yaw), math.radians(config.half_angle_deg),
                  float(config.radius_m))


def fov_similarity(pose_a: tuple, pose_b: tuple, config: FovConfig = FovConfig()) -> float:
    """Return the graded similarity ``psi`` of two cameras given as ``(x, y, yaw)``.

    ``psi`` is the IoU of their field-of-view sectors, 0 when the cameras are more than two radii
    apart or when their headings differ by more than ``config.max_heading_diff_deg``.
    """
    (xa, ya, yaw_a), (xb, yb, yaw_b) = pose_a, pose_b
    if math.hypot(xb - xa, yb - ya) >= 2.0 * config.radius_m:
        return 0.0
    if heading_difference(yaw_a, yaw_b) > math.radians(config.max_heading_diff_deg):
        return 0.0
    a, b = make_sector(xa, ya, yaw_a, config), make_sector(xb, yb, yaw_b, config)
    inter = intersection_area(a, b)
    return float(min(1.0, inter / (a.area + b.area - inter)))
