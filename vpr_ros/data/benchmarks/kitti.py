"""Benchmark format ``kitti-poses``: a sequence with a KITTI pose file, revisits by distance.

- ``kitti-poses``: a sequence with a KITTI pose file (one row of 12 floats, the 3x4 ``[R|t]``,
  per frame); frames within ``radius_m`` of each other (camera centres, 3-D) are revisits.
"""

import math
from pathlib import Path
from typing import Optional

import numpy as np

from vpr_ros.data.benchmarks.dataset import DEFAULT_RADIUS_M, EvalDataset, PathLike
from vpr_ros.data.benchmarks.sequence import (DEFAULT_MIN_GAP, list_sequence_images,
                                              sequence_dataset, sequence_info, sequence_stamps)
from vpr_ros.data.ground_truth import positives_within_radius
from vpr_ros.errors import DatasetError

KITTI_IMAGE_DIRS = ('images', 'image_2', 'image_0')
KITTI_POSE_VALUES = 12


def read_kitti_poses_dataset(root: PathLike, ground_truth: str,
                             radius_m: float = DEFAULT_RADIUS_M,
                             image_dir: Optional[str] = None, min_gap: int = DEFAULT_MIN_GAP,
                             name: Optional[str] = None, times: Optional[str] = None,
                             frame_rate: Optional[float] = None,
                             exclude_recent_s: float = 0.0) -> EvalDataset:
    """Read a sequence with a KITTI-style pose file; revisits are frames within ``radius_m``.

    Args:
        root: the sequence folder (KITTI: ``sequences/00``, with ``times.txt``).
        ground_truth: the pose file, relative to ``root`` (or absolute; KITTI:
            ``poses/00.txt``): one line per frame of 12 numbers, the row-major 3x4 ``[R|t]``
            camera-to-world matrix.
        radius_m: frames whose camera centres ``t`` are at most this far apart (3-D Euclidean,
            inclusive) show the same place.
        image_dir: the image folder under ``root``, one image per pose, in capture order
            (:func:`list_sequence_images`); default: the first of ``images``, ``image_2``,
            ``image_0`` that exists.
        min_gap: frame ``i`` is matched against frames ``0 .. i - min_gap`` (inclusive).
        name: sequence name for reports (default: the folder name).
        times: frame times file (default ``times.txt`` when present; see
            :func:`sequence_stamps`).
        frame_rate: frame rate in Hz (see :func:`sequence_stamps`).
        exclude_recent_s: see :func:`sequence_dataset`.
    """
    root = Path(root)
    folder = root / image_dir if image_dir is not None else _kitti_image_dir(root)
    files = list_sequence_images(folder)
    path = root / ground_truth
    positions = read_kitti_positions(path)
    if len(positions) != len(files):
        raise DatasetError(f'{path} has {len(positions)} poses but {folder} holds '
                           f'{len(files)} images; it needs one pose per image')
    within = positives_within_radius(positions, positions, radius_m)
    revisits = [ids[ids < i] for i, ids in enumerate(within)]
    stamps, source = sequence_stamps(root, len(files), times, frame_rate)
    info = sequence_info('kitti-poses', ground_truth, folder.relative_to(root), source)
    info['positive_radius_m'] = radius_m
    return sequence_dataset(name or root.name, files, revisits, min_gap, stamps,
                            exclude_recent_s, info)


def _kitti_image_dir(root: Path) -> Path:
    for name in KITTI_IMAGE_DIRS:
        if (root / name).is_dir():
            return root / name
    raise DatasetError(f'{root} has none of the image folders {", ".join(KITTI_IMAGE_DIRS)}; '
                       'name the folder with --image-dir')


def read_kitti_positions(path: PathLike) -> np.ndarray:
    """Return the ``[N, 3]`` camera centres (``t`` of each 3x4 ``[R|t]`` line) of a pose file."""
    path = Path(path)
    try:
        lines = path.read_text(encoding='utf-8').splitlines()
    except OSError as exc:
        raise DatasetError(f'cannot read pose file {path}: {exc}') from exc
    rows = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != KITTI_POSE_VALUES:
            raise DatasetError(f'{path}: line {number} has {len(fields)} values, expected '
                               f'{KITTI_POSE_VALUES} (a row-major 3x4 [R|t] pose, KITTI '
                               'format)')
        try:
            values = [float(v) for v in fields]
        except ValueError as exc:
            raise DatasetError(f'{path}: line {number} has a value that is not a number '
                               f'({exc})') from exc
        if not all(math.isfinite(v) for v in values):
            raise DatasetError(f'{path}: line {number} has a non-finite value')
        rows.append(values)
    if not rows:
        raise DatasetError(f'{path} holds no pose')
    return np.asarray(rows, dtype=np.float64).reshape(-1, 3, 4)[:, :, 3]
