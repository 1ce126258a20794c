"""Open a frame sequence from an image folder or a rosbag2 bag, whichever a path holds."""

from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from vpr_ros.data.frame import Frame
from vpr_ros.errors import DatasetError

BAG_SUFFIXES = ('.mcap', '.db3')


def is_bag(path: str | Path) -> bool:
    """Return True for a rosbag2 directory (with metadata.yaml) or a single .mcap/.db3 file."""
    path = Path(path)
    return (path.is_dir() and (path / 'metadata.yaml').is_file()) or path.suffix in BAG_SUFFIXES


def open_frames(path: str | Path, image_topic: str = 'camera/image_raw',
                pose_topic: Optional[str] = None,
                poses_csv: Optional[str] = None) -> Iterator[Frame]:
    """Yield the frames of a bag (``image_topic`` + optional ``pose_topic``) or an image folder."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f'input {path} does not exist')
    if is_bag(path):
        from vpr_ros.data.bag import read_frames
        return read_frames(path, image_topic, pose_topic)
    from vpr_ros.data.image_folder import read_folder
    return iter(read_folder(path, poses_csv=poses_csv))


def batched(frames: Iterable[Frame], size: int) -> Iterator[list[Frame]]:
    """Group ``frames`` into lists of at most ``size``."""
    batch: list[Frame] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def frame_positions(frames: Sequence[Frame]) -> np.ndarray:
    """Return ``[N, 2]`` x/y positions of frames (NaN where a frame has no pose)."""
    out = np.full((len(frames), 2), np.nan)
    for i, frame in enumerate(frames):
        if frame.pose is not None:
            out[i] = frame.pose.position[:2]
    return out
