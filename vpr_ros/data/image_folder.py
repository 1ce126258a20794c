"""Reading a folder of JPEG/PNG images as camera frames, with poses from file names or a CSV file.

Images are the files ending in ``.jpg``, ``.jpeg`` or ``.png`` (any case), sorted by their path
relative to the folder, as in VPR-methods-evaluation. Poses come from, in order of priority:

1. a CSV file (``poses_csv``) with a header row naming the columns, in any order:
   ``filename`` (path relative to the folder, or the bare file name), then either
   ``x,y,z,qx,qy,qz,qw`` (position in metres, unit quaternion) or ``x,y,yaw`` (planar, yaw in
   radians about z, counter-clockwise from x); optional ``stamp_ns`` (integer nanoseconds) and
   ``frame_id`` (default ``'map'``). Images without a row get no pose;
2. VPR-datasets-downloader file names ``@utm_east@utm_north@zone@letter@lat@lon@pano_id@tile@
   heading@pitch@roll@height@timestamp@note@.jpg``: position ``(east, north, 0)`` in frame
   ``'utm'``; when the ``heading`` field (compass degrees, clockwise from north) is filled, the
   orientation is the ENU yaw ``90 deg - heading``, otherwise the identity. Unlike
   VPR-methods-evaluation, which splits the whole path on ``@``, only the file name is parsed;
3. otherwise the pose is ``None``.

Stamps are the CSV ``stamp_ns`` when present, else ``index * 100 ms`` in sorted order. A frame's
``source`` is the image path.
"""

import csv
import logging
import math
from pathlib import Path
from typing import Iterator, Optional, Union

from vpr_ros.data.frame import Frame
from vpr_ros.data.image_codec import read_image_file
from vpr_ros.errors import ConfigError, DatasetError
from vpr_ros.geometry import Pose, pose_from_xy_yaw

LOGGER = logging.getLogger(__name__)

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')
DEFAULT_PERIOD_NS = 100_000_000
"""Stamp spacing for images without a CSV ``stamp_ns`` (100 ms)."""

UTM_FRAME_ID = 'utm'
HEADING_FIELD = 9
"""Index of the heading in ``name.split('@')`` for VPR-datasets-downloader names."""

FULL_COLUMNS = ('x', 'y', 'z', 'qx', 'qy', 'qz', 'qw')
PLANAR_COLUMNS = ('x', 'y', 'yaw')

PathLike = Union[str, Path]


def _float_field(text: str) -> Optional[float]:
    """Return ``text`` as a finite float, or ``None``."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def utm_from_name(name: str) -> Optional[tuple[float, float]]:
    """Return ``(east, north)`` from a ``@east@north@...@.jpg`` file name, or ``None``.

    Only the last path component is parsed; names without two numeric fields after the first
    ``@`` give ``None``.
    """
    fields = Path(name).name.split('@')
    if len(fields) < 3:
        return None
    east, north = _float_field(fields[1]), _float_field(fields[2])
    if east is None or north is None:
        return None
    return east, north


def pose_from_name(name: str) -> Optional[Pose]:
    """Return the UTM pose encoded in a VPR-datasets-downloader file name, or ``None``."""
    utm = utm_from_name(name)
    if utm is None:
        return None
    fields = Path(name).name.split('@')
    heading = _float_field(fields[HEADING_FIELD]) if len(fields) > HEADING_FIELD + 1 else None
    if heading is None:
        return Pose((utm[0], utm[1], 0.0), frame_id=UTM_FRAME_ID)
    return pose_from_xy_yaw(utm[0], utm[1], math.radians(90.0 - heading), UTM_FRAME_ID)


def list_images(path: PathLike, recursive: bool = False) -> list[Path]:
    """Return the JPEG/PNG files in ``path`` (and below when ``recursive``), sorted.

    Raises:
        DatasetError: ``path`` is not a directory.
    """
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f'image folder {root} does not exist or is not a directory')
    candidates = root.rglob('*') if recursive else root.iterdir()
    files = [p for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _csv_pose(row: dict, columns: tuple[str, ...]) -> Pose:
    """Build a pose from one CSV row (values already checked to be numbers)."""
    frame_id = (row.get('frame_id') or 'map').strip()
    if columns == FULL_COLUMNS:
        values = [float(row[c]) for c in FULL_COLUMNS]
        return Pose(tuple(values[:3]), tuple(values[3:]), frame_id)
    return pose_from_xy_yaw(float(row['x']), float(row['y']), float(row['yaw']), frame_id)


def _csv_columns(header: list[str], csv_path: Path) -> tuple[str, ...]:
    """Return the pose columns a CSV header provides, or raise naming what is missing."""
    names = set(header)
    if 'filename' not in names:
        raise DatasetError(f'{csv_path}: header {header} has no "filename" column (a header '
                           f'row is required)')
    for columns in (FULL_COLUMNS, PLANAR_COLUMNS):
        if names.issuperset(columns):
            return columns
    raise DatasetError(f'{csv_path}: header {header} needs columns filename,'
                       f'{",".join(FULL_COLUMNS)} or filename,{",".join(PLANAR_COLUMNS)}')


def _parse_row(row: dict, columns: tuple[str, ...], where: str) -> tuple[Pose, Optional[int]]:
    """Return the pose and optional stamp of one CSV row."""
    bad = [c for c in columns if _float_field(row.get(c) or '') is None]
    if bad:
        raise DatasetError(f'{where}: column(s) {", ".join(bad)} are not finite numbers')
    try:
        pose = _csv_pose(row, columns)
    except ConfigError as exc:
        raise DatasetError(f'{where}: {exc}') from exc
    stamp_text = (row.get('stamp_ns') or '').strip()
    if not stamp_text:
        return pose, None
    if not stamp_text.isdigit():
        raise DatasetError(f'{where}: stamp_ns {stamp_text!r} is not a non-negative integer')
    return pose, int(stamp_text)


def read_poses_csv(csv_path: PathLike) -> dict[str, tuple[Pose, Optional[int]]]:
    """Return ``{filename: (pose, stamp_ns or None)}`` from a poses CSV (format: module doc).

    Raises:
        DatasetError: missing file, missing header or columns, non-numeric values, invalid
            quaternion, or a file name listed twice; the message names the file and line.
    """
    csv_path = Path(csv_path)
    try:
        with csv_path.open(newline='', encoding='utf-8') as handle:
            reader = csv.DictReader(handle, skipinitialspace=True)
            columns = _csv_columns([h.strip() for h in reader.fieldnames or []], csv_path)
            reader.fieldnames = [h.strip() for h in reader.fieldnames]
            table = {}
            for row in reader:
                where = f'{csv_path}:{reader.line_num}'
                name = (row.get('filename') or '').strip()
                if not name or name in table:
                    raise DatasetError(f'{where}: empty or repeated filename {name!r}')
                table[name] = _parse_row(row, columns, where)
    except OSError as exc:
        raise DatasetError(f'cannot read poses CSV {csv_path}: {exc}') from exc
    return table


def _lookup(table: dict, relative: str) -> Optional[tuple[Pose, Optional[int]]]:
    """Find a CSV entry by relative path, then by bare file name."""
    if relative in table:
        return table[relative]
    return table.get(Path(relative).name)


def iter_folder(path: PathLike, poses_csv: Optional[PathLike] = None,
                recursive: bool = False) -> Iterator[Frame]:
    """Yield the frames of :func:`read_folder` one at a time, decoding each image lazily.

    Raises:
        DatasetError: bad folder or CSV. ImageDecodeError: an unreadable image.
    """
    root = Path(path)
    files = list_images(root, recursive)
    table = read_poses_csv(poses_csv) if poses_csv is not None else None
    missing = 0
    for index, file in enumerate(files):
        relative = file.relative_to(root).as_posix()
        default_stamp = index * DEFAULT_PERIOD_NS
        if table is None:
            pose, stamp = pose_from_name(file.name), default_stamp
        else:
            pose, stamp = _lookup(table, relative) or (None, None)
            missing += pose is None
            stamp = default_stamp if stamp is None else stamp
        yield Frame(stamp, read_image_file(file), pose, str(file))
    if missing:
        LOGGER.warning('%d of %d images in %s have no row in %s', missing, len(files), root,
                       poses_csv)


def read_folder(path: PathLike, poses_csv: Optional[PathLike] = None,
                recursive: bool = False) -> list[Frame]:
    """Return every image of the folder ``path`` as a :class:`Frame`, sorted by name.

    See the module docstring for the file types, the pose sources and the stamps. For large
    folders prefer :func:`iter_folder`, which holds one decoded image at a time.

    Raises:
        DatasetError: missing folder, or a malformed ``poses_csv``.
        ImageDecodeError: an image file cannot be decoded (the message names it).
    """
    return list(iter_folder(path, poses_csv, recursive))
