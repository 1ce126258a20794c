"""One camera frame with its time stamp and optional ground-truth pose."""

from dataclasses import dataclass
from typing import Optional

import numpy as np

from vpr_ros.geometry import Pose


@dataclass(frozen=True)
class Frame:
    """A camera image (``[H, W, 3] uint8 RGB``) taken at ``stamp_ns`` nanoseconds."""

    stamp_ns: int
    image: np.ndarray
    pose: Optional[Pose] = None
    source: str = ''
