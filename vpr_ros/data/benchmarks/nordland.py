"""Benchmark format ``nordland``: the VPR-Bench Nordland split, positives by frame index.

- ``nordland``: the VPR-Bench split (2,760 queries / 27,592 references); query ``i`` matches
  references ``10 i - 1 .. 10 i + 1`` (the 1-frame threshold).
"""

from pathlib import Path

import numpy as np

from vpr_ros.data.benchmarks.dataset import clip_ids, EvalDataset, PathLike, warn_counts
from vpr_ros.data.benchmarks.image_folders import list_image_files

NORDLAND_STRIDE = 10


def nordland_positives(num_queries: int, num_db: int, tolerance: int = 1,
                       stride: int = NORDLAND_STRIDE) -> list[np.ndarray]:
    """Return query ``i`` -> references ``stride*i - tolerance .. stride*i + tolerance``."""
    return [clip_ids(range(stride * q - tolerance, stride * q + tolerance + 1), num_db)
            for q in range(num_queries)]


def read_nordland(root: PathLike, tolerance: int = 1, query_dir: str = 'query',
                  ref_dir: str = 'ref') -> EvalDataset:
    """Read the VPR-Bench Nordland split (``query/%07d.jpg``, ``ref/%07d.jpg``).

    Args:
        root: folder with ``query_dir`` and ``ref_dir``.
        tolerance: frames either side of ``10 i`` that count (1 is the headline "Nordland*").
        query_dir: query sub-folder.
        ref_dir: reference sub-folder.
    """
    root = Path(root)
    db_files = list_image_files(root / ref_dir)
    query_files = list_image_files(root / query_dir)
    positives = nordland_positives(len(query_files), len(db_files), tolerance)
    info = {'format': 'nordland', 'tolerance_frames': tolerance, 'stride': NORDLAND_STRIDE}
    return warn_counts(EvalDataset('nordland', tuple(db_files), tuple(query_files),
                                   tuple(positives), info=info))
