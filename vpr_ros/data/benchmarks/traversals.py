"""Pose-based benchmarks: two traversals with poses, and format ``bags`` (a map and a query bag).

- pose-based: two frame lists with poses (:func:`pairs_from_traversals`, :func:`read_bag_pair`).
"""

from dataclasses import replace
import logging
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from vpr_ros.data.benchmarks.dataset import DEFAULT_RADIUS_M, EvalDataset, PathLike
from vpr_ros.data.frame import Frame
from vpr_ros.data.ground_truth import positives_within_radius
from vpr_ros.errors import DatasetError

LOGGER = logging.getLogger(__name__)


def _frame_xy_yaw(frames: Sequence[Frame], what: str) -> tuple[np.ndarray, np.ndarray]:
    missing = [i for i, f in enumerate(frames) if f.pose is None]
    if missing:
        raise DatasetError(f'{len(missing)} {what} frames have no pose (first: index '
                           f'{missing[0]}); pose-based ground truth needs every pose')
    xy = np.array([f.pose.position[:2] for f in frames], dtype=np.float64).reshape(-1, 2)
    yaw = np.array([f.pose.yaw for f in frames], dtype=np.float64)
    return xy, yaw


def pairs_from_traversals(database: Sequence[Frame], queries: Sequence[Frame],
                          radius_m: float = DEFAULT_RADIUS_M,
                          max_yaw_diff_rad: Optional[float] = None,
                          name: str = 'traversals') -> EvalDataset:
    """Pair two traversals with poses: positives within ``radius_m`` (and the heading limit).

    Both traversals must share a pose frame; every frame needs a pose.
    """
    db_xy, db_yaw = _frame_xy_yaw(database, 'database')
    q_xy, q_yaw = _frame_xy_yaw(queries, 'query')
    positives = positives_within_radius(q_xy, db_xy, radius_m, q_yaw, db_yaw, max_yaw_diff_rad)
    info = {'format': 'pose-pairs', 'positive_radius_m': radius_m,
            'max_yaw_diff_deg': (None if max_yaw_diff_rad is None
                                 else math.degrees(max_yaw_diff_rad))}
    return EvalDataset(name, tuple(database), tuple(queries), tuple(positives), info=info)


def read_bag_pair(map_bag: PathLike, query_bag: PathLike, image_topic: str, pose_topic: str,
                  radius_m: float = DEFAULT_RADIUS_M,
                  max_yaw_diff_rad: Optional[float] = None) -> EvalDataset:
    """Read a map bag and a query bag (images + poses) and pair them by pose.

    Images without a pose within the bag reader's time gap are dropped with a warning.
    """
    from vpr_ros.data.bag import read_frames
    traversals = []
    for path in (map_bag, query_bag):
        frames = list(read_frames(path, image_topic, pose_topic))
        posed = [f for f in frames if f.pose is not None]
        if len(posed) < len(frames):
            LOGGER.warning('%s: %d of %d images have no pose and are skipped', path,
                           len(frames) - len(posed), len(frames))
        if not posed:
            raise DatasetError(f'{path}: no image on {image_topic} has a pose on {pose_topic}')
        traversals.append(posed)
    dataset = pairs_from_traversals(traversals[0], traversals[1], radius_m, max_yaw_diff_rad,
                                    name=f'{Path(map_bag).name}+{Path(query_bag).name}')
    info = {**dataset.info, 'format': 'bags', 'image_topic': image_topic,
            'pose_topic': pose_topic}
    return replace(dataset, info=info)
