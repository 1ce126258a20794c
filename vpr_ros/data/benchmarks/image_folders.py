"""Benchmark format ``folder``: a VPR-methods-evaluation folder pair, positives by UTM.

- ``folder``: VPR-methods-evaluation layout ``database/`` + ``queries/`` (recursive, sorted,
  ``.jpg/.jpeg/.png``; ``<folder>_images_paths.txt`` lists are honoured), UTM from
  ``@east@north@...@.jpg`` file names, positives within 25 m (inclusive).
"""

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from vpr_ros.data.benchmarks.dataset import DEFAULT_RADIUS_M, EvalDataset, PathLike
from vpr_ros.data.ground_truth import positives_within_radius
from vpr_ros.data.image_folder import IMAGE_SUFFIXES, utm_from_name
from vpr_ros.errors import DatasetError


def list_image_files(folder: PathLike) -> list[Path]:
    """Return the images below ``folder`` as VPR-methods-evaluation finds them.

    A sibling ``<folder>_images_paths.txt`` (one path relative to ``folder`` per line) is used
    when present; otherwise the recursive ``.jpg/.jpeg/.png`` files, sorted by relative path.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f'image folder {folder} does not exist')
    listing = folder.parent / f'{folder.name}_images_paths.txt'
    if listing.is_file():
        lines = listing.read_text(encoding='utf-8').splitlines()
        return [folder / line.strip() for line in lines if line.strip()]
    files = [p for p in folder.rglob('*') if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    if not files:
        raise DatasetError(f'image folder {folder} holds no .jpg/.jpeg/.png files')
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def utm_array(files: Sequence[Path]) -> np.ndarray:
    """Return ``[N, 2]`` (east, north) parsed from ``@east@north@...`` file names."""
    coords = []
    for file in files:
        utm = utm_from_name(file.name)
        if utm is None:
            raise DatasetError(f'{file}: file name has no @east@north@ UTM fields')
        coords.append(utm)
    return np.asarray(coords, dtype=np.float64).reshape(-1, 2)


def read_folder_dataset(root: PathLike, radius_m: float = DEFAULT_RADIUS_M,
                        database_dir: str = 'database', queries_dir: str = 'queries',
                        name: Optional[str] = None) -> EvalDataset:
    """Read a VPR-methods-evaluation folder pair; positives are database images within radius.

    Args:
        root: the folder holding ``database_dir`` and ``queries_dir``.
        radius_m: positive radius in metres (25 in every standard benchmark).
        database_dir: database sub-folder name.
        queries_dir: query sub-folder name.
        name: split name for reports (default: the folder name).
    """
    root = Path(root)
    db_files = list_image_files(root / database_dir)
    query_files = list_image_files(root / queries_dir)
    positives = positives_within_radius(utm_array(query_files), utm_array(db_files), radius_m)
    return EvalDataset(name or root.name, tuple(db_files), tuple(query_files), tuple(positives),
                       info={'format': 'folder', 'positive_radius_m': radius_m})
