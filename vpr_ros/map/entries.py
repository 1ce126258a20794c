"""Map entries: what is known about each place (time, pose, GPS, source) and ``entries.jsonl``."""

from dataclasses import dataclass
import json
import math
import numbers
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from vpr_ros.errors import ConfigError, MapFormatError
from vpr_ros.geometry import Pose
from vpr_ros.map.storage import HashingWriter

UNASSIGNED_ID = -1

EntryLike = Union['MapEntry', Mapping[str, Any]]


def _as_int(name: str, value: Any, optional: bool = False) -> Optional[int]:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise MapFormatError(f'map entry field {name} must be an integer, got {value!r}')
    return int(value)


def _as_gps(value: Any) -> Optional[tuple[float, float]]:
    if value is None:
        return None
    try:
        gps = tuple(float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise MapFormatError(f'map entry field gps must be two numbers, got {value!r}') from exc
    if len(gps) != 2 or not all(math.isfinite(v) for v in gps):
        raise MapFormatError(f'map entry field gps must be two finite numbers, got {value!r}')
    return gps


@dataclass(frozen=True)
class MapEntry:
    """One place in the map: when and where its image was taken and where it came from.

    ``id`` is the entry's row in the map; :meth:`MapDatabase.add` assigns it, so new entries pass
    ``UNASSIGNED_ID`` (-1). ``stamp_ns`` is the capture time in integer nanoseconds. ``pose`` is
    the camera pose in the map frame, if known. ``gps`` is ``(easting, northing)`` in metres in
    UTM (the zone is not stored), as read from ``@easting@northing@...`` image names; ``None`` when
    unknown. ``source`` is the image path, or ``'bag:<file>#<topic>@<stamp_ns>'`` for a frame read
    from a rosbag2 file. ``slam_node_id`` links the entry to a SLAM graph node (e.g. RTAB-Map).
    """

    id: int  # noqa: A003 (the on-disk field name)
    stamp_ns: int
    pose: Optional[Pose] = None
    gps: Optional[tuple[float, float]] = None
    source: str = ''
    slam_node_id: Optional[int] = None

    def __post_init__(self) -> None:
        """Check field types and normalise numbers to plain Python types."""
        object.__setattr__(self, 'id', _as_int('id', self.id))
        object.__setattr__(self, 'stamp_ns', _as_int('stamp_ns', self.stamp_ns))
        object.__setattr__(self, 'slam_node_id',
                           _as_int('slam_node_id', self.slam_node_id, optional=True))
        object.__setattr__(self, 'gps', _as_gps(self.gps))
        if self.pose is not None and not isinstance(self.pose, Pose):
            raise MapFormatError(f'map entry field pose must be a Pose, got {self.pose!r}')
        if not isinstance(self.source, str):
            raise MapFormatError(f'map entry field source must be a string, got {self.source!r}')

    def to_dict(self) -> dict:
        """Return a JSON-ready dictionary (the line format of ``entries.jsonl``)."""
        return {'id': self.id, 'stamp_ns': self.stamp_ns,
                'pose': None if self.pose is None else self.pose.to_dict(),
                'gps': None if self.gps is None else list(self.gps),
                'source': self.source, 'slam_node_id': self.slam_node_id}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> 'MapEntry':
        """Build an entry from :meth:`to_dict` output, naming a missing, unknown or bad field."""
        if not isinstance(data, Mapping):
            raise MapFormatError(f'map entry must be a JSON object, got {data!r}')
        known = {'id', 'stamp_ns', 'pose', 'gps', 'source', 'slam_node_id'}
        unknown = sorted(set(data) - known)
        missing = sorted({'id', 'stamp_ns', 'source'} - set(data))
        if unknown or missing:
            raise MapFormatError(f'map entry has unknown fields {unknown} / lacks {missing}')
        try:
            pose = None if data.get('pose') is None else Pose.from_dict(data['pose'])
        except (ConfigError, KeyError, TypeError, ValueError) as exc:
            raise MapFormatError(f'map entry field pose is malformed: {exc!r}') from exc
        return cls(data['id'], data['stamp_ns'], pose, data.get('gps'), data['source'],
                   data.get('slam_node_id'))


def write_entries(writer: HashingWriter, entries: Sequence[MapEntry]) -> None:
    """Write ``entries`` to ``writer`` as JSON lines (the format of ``entries.jsonl``)."""
    for entry in entries:
        writer.write((json.dumps(entry.to_dict(), sort_keys=True) + '\n').encode())


def read_entries(path: Path, count: int) -> list[MapEntry]:
    """Read the ``count`` entries of ``path``, checking that the ids run from 0."""
    entries = []
    with open(path, 'rb') as f:
        for line_no, line in enumerate(f, start=1):
            try:
                entry = MapEntry.from_dict(json.loads(line.decode('utf-8')))
            except (ValueError, OverflowError, RecursionError, MapFormatError) as exc:
                raise MapFormatError(f'{path} line {line_no}: {exc!r}') from exc
            if entry.id != len(entries):
                raise MapFormatError(f'{path} line {line_no}: id {entry.id}, expected '
                                     f'{len(entries)} (ids must be consecutive from 0)')
            entries.append(entry)
    if len(entries) != count:
        raise MapFormatError(f'{path} has {len(entries)} entries, manifest count is {count}')
    return entries
