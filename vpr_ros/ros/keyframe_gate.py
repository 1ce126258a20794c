"""Keyframe selection by time, travelled distance and heading change (no ROS imports)."""

import math
import threading
from typing import Optional

from vpr_ros.geometry import Pose
from vpr_ros.ros.node_config import KeyframeGateConfig

NS_PER_S = 1e9


def heading_change_deg(first: Pose, second: Pose) -> float:
    """Return the absolute yaw difference of two poses in degrees, in [0, 180]."""
    diff = (second.yaw - first.yaw + math.pi) % (2.0 * math.pi) - math.pi
    return abs(math.degrees(diff))


def travelled_m(first: Pose, second: Pose) -> float:
    """Return the straight-line distance between two poses in metres."""
    return math.dist(first.position, second.position)


class KeyframeGate:
    """Decides whether a frame is a keyframe, relative to the last accepted one.

    See :class:`~vpr_ros.ros.node_config.KeyframeGateConfig` for the rule. Thread-safe; the config
    may be replaced at run time with :meth:`update_config`.
    """

    def __init__(self, config: KeyframeGateConfig = KeyframeGateConfig()) -> None:
        """Start with no keyframe, so the first frame always passes."""
        self._config = config
        self._lock = threading.Lock()
        self._last_stamp_ns: Optional[int] = None
        self._last_pose: Optional[Pose] = None

    @property
    def config(self) -> KeyframeGateConfig:
        """Return the current rule."""
        return self._config

    def update_config(self, config: KeyframeGateConfig) -> None:
        """Replace the rule (the last keyframe is kept)."""
        with self._lock:
            self._config = config

    def passes(self, stamp_ns: int, pose: Optional[Pose]) -> bool:
        """Return True when a frame at ``stamp_ns`` (and ``pose``, if known) is a keyframe.

        When a motion criterion is enabled, a frame without a pose never passes (except the very
        first frame), and the first frame with a pose always does.
        """
        with self._lock:
            if self._last_stamp_ns is None:
                return True
            config = self._config
            elapsed_s = (stamp_ns - self._last_stamp_ns) / NS_PER_S
            if elapsed_s < config.min_interval_s:
                return False
            if not config.uses_motion:
                return True
            if pose is None:
                return False
            if self._last_pose is None:
                return True
            moved = config.min_distance_m > 0 and \
                travelled_m(self._last_pose, pose) >= config.min_distance_m
            turned = config.min_rotation_deg > 0 and \
                heading_change_deg(self._last_pose, pose) >= config.min_rotation_deg
            return moved or turned

    def commit(self, stamp_ns: int, pose: Optional[Pose]) -> None:
        """Record the frame at ``stamp_ns`` as the last keyframe."""
        with self._lock:
            self._last_stamp_ns = stamp_ns
            if pose is not None:
                self._last_pose = pose

    def reset(self) -> None:
        """Forget the last keyframe."""
        with self._lock:
            self._last_stamp_ns = None
            self._last_pose = None
