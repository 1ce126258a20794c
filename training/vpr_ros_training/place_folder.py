"""Generic "places" folder: one sub-folder per place, holding that place's images.

```
root/
  place_a/  0001.jpg 0002.jpg ...
  place_b/  ...
```
Sub-folders are sorted by name; the place key is the folder name.
"""

from pathlib import Path

from vpr_ros.errors import DatasetError
from vpr_ros_training.places import list_images, PlaceTable


def read_place_folders(root: str | Path, min_images: int = 2) -> PlaceTable:
    """Return one place per sub-folder of ``root`` with at least ``min_images`` images."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f'places folder {root} does not exist')
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    places = [[str(f) for f in list_images(folder)] for folder in folders]
    if not folders:
        raise DatasetError(f'places folder {root} has no sub-folders (one per place expected)')
    table = PlaceTable('places', places, [f.name for f in folders])
    return table.with_min_images(min_images)
