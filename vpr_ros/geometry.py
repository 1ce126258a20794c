"""Poses in a map frame and the distances between them."""

from dataclasses import dataclass
import math
from typing import Sequence

import numpy as np

from vpr_ros.errors import ConfigError


@dataclass(frozen=True)
class Pose:
    """A 6-DoF pose: position in metres and orientation as a unit quaternion (x, y, z, w)."""

    position: tuple[float, float, float] = (0.0, 0.0, 0.0)
    orientation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)
    frame_id: str = 'map'

    def __post_init__(self) -> None:
        """Reject non-finite values and non-unit quaternions."""
        values = tuple(self.position) + tuple(self.orientation)
        if len(self.position) != 3 or len(self.orientation) != 4:
            raise ConfigError(f'pose needs 3 position and 4 orientation values, got {values}')
        if not all(math.isfinite(v) for v in values):
            raise ConfigError(f'pose has a non-finite value: {values}')
        norm = math.sqrt(sum(v * v for v in self.orientation))
        if abs(norm - 1.0) > 1e-3:
            raise ConfigError(f'pose orientation is not a unit quaternion (norm {norm:.6f})')

    @property
    def yaw(self) -> float:
        """Heading about the z axis in radians."""
        x, y, z, w = self.orientation
        return math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))

    def to_dict(self) -> dict:
        """Return a JSON-ready dictionary."""
        return {'position': list(self.position), 'orientation': list(self.orientation),
                'frame_id': self.frame_id}

    @classmethod
    def from_dict(cls, data: dict) -> 'Pose':
        """Build a pose from :meth:`to_dict` output."""
        return cls(tuple(float(v) for v in data['position']),
                   tuple(float(v) for v in data['orientation']), str(data.get('frame_id', 'map')))


def pose_from_xy_yaw(x: float, y: float, yaw: float, frame_id: str = 'map') -> Pose:
    """Return a planar pose at (x, y) facing ``yaw`` radians."""
    return Pose((float(x), float(y), 0.0), (0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2)),
                frame_id)


def positions_array(poses: Sequence[Pose]) -> np.ndarray:
    """Stack the positions of ``poses`` into a ``[N, 3] float64`` array."""
    return np.array([p.position for p in poses], dtype=np.float64).reshape(-1, 3)
