"""Builders of the localize node's output messages: pose, loop closure, markers, debug image.

``~/pose`` covariance (6x6 row-major over x, y, z, roll, pitch, yaw): the position block is the
probability-weighted second moment of the top candidates' positions about the best one, plus
``min_position_stddev_m ** 2`` on the diagonal; the yaw variance is the weighted mean squared
heading difference plus ``min_yaw_stddev ** 2``; roll and pitch get ``min_yaw_stddev ** 2``. A
tight cluster of candidates around the match gives a small covariance, candidates spread along
the route (an ambiguous place) a large one.
"""

import math
from typing import Optional, Sequence

import cv2
from geometry_msgs.msg import Point, PoseWithCovarianceStamped
import numpy as np
from std_msgs.msg import ColorRGBA, Float64MultiArray, Header
from visualization_msgs.msg import Marker, MarkerArray

from vpr_ros.geometry import Pose
from vpr_ros.ros.conversions import pose_to_msg

NS_PER_S = 1e9
ACCEPTED_COLOUR = ColorRGBA(r=0.1, g=0.9, b=0.2, a=0.9)
REJECTED_COLOUR = ColorRGBA(r=0.95, g=0.5, b=0.1, a=0.9)
MAP_COLOUR = ColorRGBA(r=0.6, g=0.6, b=0.7, a=0.8)
PANEL_GREY = 48


def _yaw_diff(a: float, b: float) -> float:
    return (a - b + math.pi) % (2.0 * math.pi) - math.pi


def pose_covariance(best: Pose, others: Sequence[tuple[Pose, float]], min_position_stddev_m: float,
                    min_yaw_stddev_rad: float) -> list[float]:
    """Return the 36-value covariance of ``best`` from ``(pose, weight)`` of the top candidates."""
    cov = np.zeros((6, 6))
    weights = np.array([max(float(w), 0.0) for _, w in others]) if others else np.zeros(0)
    if weights.size and np.isfinite(weights).all() and weights.sum() > 0:
        weights = weights / weights.sum()
        offsets = np.array([np.subtract(p.position, best.position) for p, _ in others])
        cov[:3, :3] = (offsets * weights[:, None]).T @ offsets
        yaw = np.array([_yaw_diff(p.yaw, best.yaw) for p, _ in others])
        cov[5, 5] = float(weights @ yaw ** 2)
    cov[:3, :3] += np.eye(3) * min_position_stddev_m ** 2
    cov[3, 3] += min_yaw_stddev_rad ** 2
    cov[4, 4] += min_yaw_stddev_rad ** 2
    cov[5, 5] += min_yaw_stddev_rad ** 2
    return [float(v) for v in cov.reshape(-1)]


def pose_message(header: Header, candidates: Sequence[object], count: int,
                 min_position_stddev_m: float, min_yaw_stddev_deg: float
                 ) -> Optional[PoseWithCovarianceStamped]:
    """Return the ``~/pose`` message for the best of ``candidates`` (None when it has no pose)."""
    best = candidates[0].pose if candidates else None
    if best is None:
        return None
    top = [(c.pose, c.probability if math.isfinite(c.probability) else 0.0)
           for c in candidates[:count] if c.pose is not None]
    msg = PoseWithCovarianceStamped(header=header)
    msg.pose.pose = pose_to_msg(best)
    msg.pose.covariance = pose_covariance(best, top, min_position_stddev_m,
                                          math.radians(min_yaw_stddev_deg))
    return msg


def loop_closure_message(query_stamp_ns: int, map_stamp_ns: int) -> Float64MultiArray:
    """Return LIO-SAM's ``[query_stamp_sec, matched_map_stamp_sec]`` loop-closure message."""
    return Float64MultiArray(data=[query_stamp_ns / NS_PER_S, map_stamp_ns / NS_PER_S])


def map_marker(header: Header, positions: np.ndarray, scale_m: float) -> Marker:
    """Return one POINTS marker (namespace ``map_places``) at the ``[N, 3]`` map positions."""
    marker = Marker(header=header, ns='map_places', id=0, type=Marker.POINTS,
                    action=Marker.ADD, color=MAP_COLOUR)
    marker.pose.orientation.w = 1.0
    marker.scale.x = marker.scale.y = scale_m * 0.4
    marker.points = [_point(p) for p in positions if np.isfinite(p).all()]
    return marker


def match_markers(header: Header, best: object, accepted: bool, scale_m: float) -> MarkerArray:
    """Return the current-match markers: a sphere at the best pose and a label above it."""
    if best is None or best.pose is None:
        return MarkerArray(markers=[Marker(header=header, ns='match', id=i, action=Marker.DELETE)
                                    for i in (0, 1)])
    colour = ACCEPTED_COLOUR if accepted else REJECTED_COLOUR
    sphere = Marker(header=header, ns='match', id=0, type=Marker.SPHERE, action=Marker.ADD,
                    color=colour, pose=pose_to_msg(best.pose))
    sphere.scale.x = sphere.scale.y = sphere.scale.z = scale_m * 2.0
    label = Marker(header=header, ns='match', id=1, type=Marker.TEXT_VIEW_FACING,
                   action=Marker.ADD, color=colour, pose=pose_to_msg(best.pose))
    label.pose.position.z += scale_m * 3.0
    label.scale.z = scale_m * 1.5
    label.text = f'id {best.map_id}  p={best.probability:.2f}' + ('' if accepted else ' (rej)')
    return MarkerArray(markers=[sphere, label])


def _point(position: np.ndarray) -> Point:
    return Point(x=float(position[0]), y=float(position[1]), z=float(position[2]))


def _fit_height(image: np.ndarray, height: int) -> np.ndarray:
    if image.shape[0] == height:
        return image
    width = max(1, round(image.shape[1] * height / image.shape[0]))
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def debug_panel(query: np.ndarray, match: Optional[np.ndarray],
                lines: Sequence[str]) -> np.ndarray:
    """Return the query and the matched map image side by side, with ``lines`` of text.

    Without a map image the right half is a grey panel carrying only the text.
    """
    height = query.shape[0]
    right = (np.full_like(query, PANEL_GREY) if match is None else _fit_height(match, height))
    canvas = np.ascontiguousarray(np.concatenate([query, right], axis=1))
    scale = max(0.35, height / 480.0)
    for i, line in enumerate(lines):
        origin = (query.shape[1] + 6, int((i + 1) * 22 * scale) + 4)
        cv2.putText(canvas, line, origin, cv2.FONT_HERSHEY_SIMPLEX, scale * 0.6, (0, 0, 0), 3,
                    cv2.LINE_AA)
        cv2.putText(canvas, line, origin, cv2.FONT_HERSHEY_SIMPLEX, scale * 0.6,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return canvas
