"""Benchmark format ``sequence``: one loop-closure sequence, and what every sequence shares.

- ``sequence``: one loop-closure sequence (``images/`` in capture order and a ground truth of
  revisits, as ``rtabmap_samples``). Every frame is a query against the frames at least
  ``min_gap`` earlier (inclusive), which the map holds by then (the map grows as in SLAM);
  Recall@N counts the frames that revisit a place, and every other frame is a chance for a
  false loop closure. ``exclude_recent_s`` also keeps frames stamped less than that many
  seconds before the query out of the map (the localize node's ``exclude_recent_s``); it needs
  frame stamps (``times``, one time in seconds per frame as KITTI ``times.txt``, or
  ``frame_rate``).
"""

from dataclasses import replace
import math
from pathlib import Path
import re
from typing import Any, Optional, Sequence

import numpy as np

from vpr_ros.data.benchmarks.dataset import EvalDataset, ImageRef, PathLike, read_json
from vpr_ros.data.benchmarks.image_folders import list_image_files
from vpr_ros.errors import DatasetError

DEFAULT_MIN_GAP = 10
TIMES_FILE = 'times.txt'


def sequence_dataset(name: str, frames: Sequence[ImageRef], revisits: Sequence[Sequence[int]],
                     min_gap: int = DEFAULT_MIN_GAP, stamps_ns: Optional[Sequence[int]] = None,
                     exclude_recent_s: float = 0.0, info: Optional[dict] = None) -> EvalDataset:
    """Return a loop-closure sequence whose positives are the revisits its growing map holds.

    Args:
        name: the sequence name for reports.
        frames: image paths or frames in capture order (queries and database at once).
        revisits: per frame, the 0-based indices of the earlier frames showing its place.
        min_gap: frame ``i`` is matched against frames ``0 .. i - min_gap`` (inclusive).
        stamps_ns: capture stamps of file images (strictly increasing), or None.
        exclude_recent_s: also leave out of the map the frames stamped less than this many
            seconds before the query (a frame exactly that old stays), as the localize node's
            ``exclude_recent_s``; needs stamps (frames, or ``stamps_ns`` for files).
        info: protocol details recorded with results.

    Revisits the map cannot hold for that frame are dropped from its positives.
    """
    if int(min_gap) < 1:
        raise DatasetError(f'sequence min_gap must be at least 1 frame, got {min_gap}')
    if not (math.isfinite(exclude_recent_s) and exclude_recent_s >= 0):
        raise DatasetError(f'exclude_recent_s must be a finite number of seconds >= 0, got '
                           f'{exclude_recent_s}')
    if len(revisits) != len(frames):
        raise DatasetError(f'{name}: {len(revisits)} revisit lists for {len(frames)} frames')
    empty = tuple(np.empty(0, np.int64) for _ in frames)
    dataset = EvalDataset(name, tuple(frames), tuple(frames), empty, sequence_gap=int(min_gap),
                          sequence_stamps_ns=None if stamps_ns is None else tuple(
                              int(s) for s in stamps_ns),
                          sequence_exclude_ns=int(round(exclude_recent_s * 1e9)))
    sizes = dataset.sequence_map_sizes()
    positives = []
    for i, ids in enumerate(revisits):
        ids = np.unique(np.asarray(ids, dtype=np.int64).reshape(-1))
        positives.append(ids[(ids >= 0) & (ids < sizes[i])])
    info = {**(info or {}), 'min_gap_frames': int(min_gap),
            'exclude_recent_s': float(exclude_recent_s),
            'frames_with_revisits': sum(1 for p in positives if len(p))}
    return replace(dataset, positives=tuple(positives), info=info)


def sequence_stamps(root: PathLike, count: int, times: Optional[PathLike] = None,
                    frame_rate: Optional[float] = None) -> tuple[Optional[tuple], str]:
    """Return the capture stamps of ``count`` sequence frames and where they came from.

    ``frame_rate`` (Hz) stamps frame ``i`` at ``i / frame_rate`` seconds; ``times`` is a file
    (relative to ``root``) with one time in seconds per frame, as KITTI ``times.txt``; without
    either, ``root/times.txt`` is read when it exists. Otherwise ``(None, ...)``: file images
    are then stamped ``index * 100 ms``, which no time-based exclusion may rely on.
    """
    if times is not None and frame_rate is not None:
        raise DatasetError('give either a times file or a frame rate for the frame stamps, '
                           'not both')
    if frame_rate is not None:
        if not (math.isfinite(frame_rate) and frame_rate > 0):
            raise DatasetError(f'frame rate must be a positive number of Hz, got {frame_rate}')
        return (tuple(int(round(i * 1e9 / frame_rate)) for i in range(count)),
                f'frame rate {frame_rate:g} Hz')
    path = Path(root) / (TIMES_FILE if times is None else times)
    if times is None and not path.is_file():
        return None, 'none (file images are stamped index * 100 ms)'
    seconds = _read_times(path, count)
    return tuple(int(round(t * 1e9)) for t in seconds), str(path.name)


def _read_times(path: Path, count: int) -> list[float]:
    try:
        lines = path.read_text(encoding='utf-8').splitlines()
    except OSError as exc:
        raise DatasetError(f'cannot read frame times {path}: {exc}') from exc
    seconds = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = float(line)
        except ValueError as exc:
            raise DatasetError(f'{path}: line {number} is not one time in seconds: '
                               f'{line.strip()[:40]!r}') from exc
        if not math.isfinite(value):
            raise DatasetError(f'{path}: line {number} is not a finite time: {value}')
        seconds.append(value)
    if len(seconds) != count:
        raise DatasetError(f'{path} has {len(seconds)} frame times but the sequence has '
                           f'{count} images; it needs one time per image')
    return seconds


def _natural_key(path: Path, folder: Path) -> list:
    parts = re.split(r'(\d+)', path.relative_to(folder).as_posix())
    return [(0, int(p), '') if p.isdigit() else (1, 0, p) for p in parts]


def list_sequence_images(folder: PathLike) -> list[Path]:
    """Return a sequence's images in capture order: by name, numbers compared by value.

    ``2.png`` comes before ``10.png``; a ``<folder>_images_paths.txt`` listing is kept as is.
    """
    folder = Path(folder)
    files = list_image_files(folder)
    if (folder.parent / f'{folder.name}_images_paths.txt').is_file():
        return files
    return sorted(files, key=lambda p: _natural_key(p, folder))


def sequence_info(fmt: str, ground_truth: PathLike, image_dir: Path, stamps: str) -> dict:
    """Return the ``info`` record of a sequence dataset (format, sources, stamp source)."""
    return {'format': fmt, 'ground_truth': str(ground_truth), 'image_dir': str(image_dir),
            'stamps': stamps}


def read_sequence_dataset(root: PathLike, ground_truth: str = 'ground_truth.json',
                          image_dir: str = 'images', min_gap: int = DEFAULT_MIN_GAP,
                          name: Optional[str] = None, times: Optional[str] = None,
                          frame_rate: Optional[float] = None,
                          exclude_recent_s: float = 0.0) -> EvalDataset:
    """Read a loop-closure sequence: frames in capture order and the places they revisit.

    The ground truth is ``{"frames": [file names in order], "loops": [{"frame": f,
    "revisits": [earlier frames]}]}`` with 1-based frame numbers (the ``rtabmap_samples``
    layout). Frame ``i`` may only match frames ``<= i - min_gap`` (inclusive), so revisits
    closer in time than that are dropped from its positives. ``times``, ``frame_rate`` and
    ``exclude_recent_s``: see :func:`sequence_stamps` and :func:`sequence_dataset`.
    """
    root = Path(root)
    if min_gap < 1:
        raise DatasetError(f'sequence min_gap must be at least 1 frame, got {min_gap}')
    data = read_json(root / ground_truth)
    if not isinstance(data, dict) or not isinstance(data.get('frames'), list):
        raise DatasetError(f'{root / ground_truth}: expected {{"frames": [...], "loops": '
                           '[...]} (a loop-closure sequence)')
    files = [root / image_dir / str(frame) for frame in data['frames']]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DatasetError(f'{root}: {len(missing)} sequence frames are missing, first '
                           f'{missing[0]}')
    revisits = _sequence_revisits(data.get('loops', []), len(files), root / ground_truth)
    stamps, source = sequence_stamps(root, len(files), times, frame_rate)
    return sequence_dataset(name or root.name, files, revisits, min_gap, stamps,
                            exclude_recent_s,
                            sequence_info('sequence', ground_truth, Path(image_dir), source))


def _sequence_revisits(loops: Any, count: int, path: Path) -> list[np.ndarray]:
    """Return 0-based revisits per frame from 1-based ``{"frame", "revisits"}`` entries."""
    if not isinstance(loops, list):
        raise DatasetError(f'{path}: "loops" must be a list')
    revisits = [np.empty(0, np.int64) for _ in range(count)]
    for n, item in enumerate(loops):
        try:
            frame = int(item['frame']) - 1
            earlier = np.asarray([int(v) - 1 for v in item['revisits']], dtype=np.int64)
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f'{path}: loop entry {n} needs an integer "frame" and a list of '
                               f'integer "revisits" ({exc!r})') from exc
        if not 0 <= frame < count:
            raise DatasetError(f'{path}: loop entry {n} names frame {frame + 1} of {count}')
        revisits[frame] = earlier[earlier < frame]
    return revisits
