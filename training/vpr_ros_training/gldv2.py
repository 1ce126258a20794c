"""Google Landmarks v2 reader: the cleaned training CSV, one place per landmark.

``train_clean.csv`` has columns ``landmark_id, images`` where ``images`` is a space-separated list
of image ids; image ``abcdef...`` lives at ``<root>/a/b/c/abcdef....jpg``. Landmarks with fewer
than ``min_images`` images (published recipe: 4) are dropped.
"""

import csv
from pathlib import Path

from vpr_ros.errors import DatasetError
from vpr_ros_training.places import PlaceTable


def gldv2_image_path(root: Path, image_id: str) -> str:
    """Return the file path of one GLDv2 image id."""
    if len(image_id) < 3:
        raise DatasetError(f'GLDv2 image id {image_id!r} is shorter than 3 characters')
    return str(root / image_id[0] / image_id[1] / image_id[2] / f'{image_id}.jpg')


def read_gldv2(root: str | Path, csv_path: str | Path, min_images: int = 4) -> PlaceTable:
    """Return the landmarks of ``csv_path`` with at least ``min_images`` images under ``root``."""
    root = Path(root)
    keys, places = [], []
    try:
        with Path(csv_path).open(newline='') as handle:
            reader = csv.DictReader(handle)
            columns = set(reader.fieldnames or ())
            if not {'landmark_id', 'images'} <= columns:
                raise DatasetError(f'{csv_path} needs columns landmark_id and images, found '
                                   f'{reader.fieldnames}')
            for row in reader:
                ids = row['images'].split()
                keys.append(int(row['landmark_id']))
                places.append([gldv2_image_path(root, i) for i in ids])
    except OSError as exc:
        raise DatasetError(f'cannot read GLDv2 CSV {csv_path}: {exc}') from exc
    if not places:
        raise DatasetError(f'GLDv2 CSV {csv_path} has no landmarks')
    return PlaceTable('gldv2', places, keys).with_min_images(min_images)
