"""A time-ordered buffer of recent poses, looked up by nearest stamp (no ROS imports)."""

import bisect
from collections import deque
import threading
from typing import Optional

from vpr_ros.geometry import Pose


class PoseBuffer:
    """The last ``capacity`` poses, in increasing stamp order; thread-safe."""

    def __init__(self, capacity: int = 1000) -> None:
        """Create an empty buffer holding at most ``capacity`` poses."""
        self._stamps: deque = deque(maxlen=capacity)
        self._poses: deque = deque(maxlen=capacity)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Return the number of buffered poses."""
        with self._lock:
            return len(self._stamps)

    @property
    def latest_stamp_ns(self) -> Optional[int]:
        """Stamp of the newest pose, or None when empty."""
        with self._lock:
            return self._stamps[-1] if self._stamps else None

    def latest(self) -> Optional[Pose]:
        """Return the newest pose, or None when empty."""
        with self._lock:
            return self._poses[-1] if self._poses else None

    def add(self, stamp_ns: int, pose: Pose) -> bool:
        """Append a pose; return False (and keep nothing) when ``stamp_ns`` is not newer."""
        with self._lock:
            if self._stamps and stamp_ns <= self._stamps[-1]:
                return False
            self._stamps.append(stamp_ns)
            self._poses.append(pose)
            return True

    def nearest(self, stamp_ns: int, tolerance_ns: int) -> Optional[tuple[int, Pose]]:
        """Return ``(stamp, pose)`` nearest to ``stamp_ns`` within ``tolerance_ns``, else None.

        On a tie the earlier pose wins.
        """
        with self._lock:
            stamps = list(self._stamps)
            right = bisect.bisect_left(stamps, stamp_ns)
            near = [i for i in (right - 1, right) if 0 <= i < len(stamps)]
            if not near:
                return None
            best = min(near, key=lambda i: abs(stamps[i] - stamp_ns))
            if abs(stamps[best] - stamp_ns) > tolerance_ns:
                return None
            return stamps[best], self._poses[best]
