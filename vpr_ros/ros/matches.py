"""The ``~/matches`` message: every ranked candidate of one query in a standard, labelled layout.

The candidate list travels as a ``sensor_msgs/PointCloud2`` with one point per candidate (best
first), because that standard type carries a header and *named, typed fields*:

- ``header.stamp`` = the query image stamp; ``header.frame_id`` = the map frame of the poses;
- ``height = 1``, ``width = number of candidates`` (0 when the map is empty), little-endian,
  ``point_step = 104``, ``is_dense = False`` (NaN marks a missing value).

==================  ========  ======  ===============================================
field               type      offset  meaning
==================  ========  ======  ===============================================
x, y, z             FLOAT64   0-16    map entry position in ``header.frame_id`` (NaN: none)
qx, qy, qz, qw      FLOAT64   24-48   map entry orientation quaternion (NaN: no pose)
global_similarity   FLOAT64   56      inner product of the L2-normalised descriptors
pair_score          FLOAT64   64      pair-classifier score (NaN: not re-ranked)
probability         FLOAT64   72      calibrated P(same place)
map_id              UINT32    80      map entry id
map_stamp_sec       INT32     84      map entry stamp, seconds part
map_stamp_nanosec   UINT32    88      map entry stamp, nanoseconds part
accepted            UINT8     92      1 on the first point when the match was accepted
score               FLOAT64   96      the ranking score the list is sorted by (fused, pair
                                      or global, per ``localizer.rerank_fusion``)
==================  ========  ======  ===============================================

Because x, y, z come first, RViz shows the candidates as points. :func:`decode_matches` turns the
message back into :class:`Matches`; it reads fields by name, so consumers can import it as is.
"""

from dataclasses import dataclass
import math
from typing import Optional, Sequence

import numpy as np
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header

from vpr_ros.errors import VprError
from vpr_ros.geometry import Pose

NS_PER_S = 1_000_000_000
POINT_STEP = 104
_F64, _U32, _I32, _U8 = PointField.FLOAT64, PointField.UINT32, PointField.INT32, PointField.UINT8
MATCH_FIELDS = (
    ('x', 0, _F64), ('y', 8, _F64), ('z', 16, _F64),
    ('qx', 24, _F64), ('qy', 32, _F64), ('qz', 40, _F64), ('qw', 48, _F64),
    ('global_similarity', 56, _F64), ('pair_score', 64, _F64), ('probability', 72, _F64),
    ('map_id', 80, _U32), ('map_stamp_sec', 84, _I32), ('map_stamp_nanosec', 88, _U32),
    ('accepted', 92, _U8), ('score', 96, _F64),
)
"""(name, byte offset, PointField datatype) of every field of a ``~/matches`` point."""

_NUMPY_TYPES = {PointField.INT8: 'i1', PointField.UINT8: 'u1', PointField.INT16: 'i2',
                PointField.UINT16: 'u2', PointField.INT32: 'i4', PointField.UINT32: 'u4',
                PointField.FLOAT32: 'f4', PointField.FLOAT64: 'f8'}


class MatchesFormatError(VprError, ValueError):
    """A ``~/matches`` message lacks a field or its buffer does not fit its layout."""


@dataclass(frozen=True)
class MatchCandidate:
    """One decoded candidate of a ``~/matches`` message."""

    map_id: int
    map_stamp_ns: int
    global_similarity: float
    pair_score: float
    probability: float
    pose: Optional[Pose]
    score: float = math.nan


@dataclass(frozen=True)
class Matches:
    """A decoded ``~/matches`` message: the query stamp, the map frame and the ranked list."""

    stamp_ns: int
    frame_id: str
    accepted: bool
    candidates: tuple[MatchCandidate, ...]


def _dtype(fields: Sequence[tuple], point_step: int, bigendian: bool = False) -> np.dtype:
    order = '>' if bigendian else '<'
    return np.dtype({'names': [f[0] for f in fields],
                     'formats': [order + _NUMPY_TYPES[f[2]] for f in fields],
                     'offsets': [f[1] for f in fields], 'itemsize': point_step})


def _pose_columns(candidate: object) -> tuple:
    pose = getattr(candidate, 'pose', None)
    if pose is None:
        return (math.nan,) * 7
    return tuple(pose.position) + tuple(pose.orientation)


def encode_matches(header: Header, candidates: Sequence[object], accepted: bool) -> PointCloud2:
    """Build the ``~/matches`` message for ranked ``candidates`` (core ``Candidate`` objects).

    Each candidate needs ``map_id, stamp_ns, global_similarity, pair_score, probability, pose``
    and may have ``score`` (NaN when absent).
    """
    rows = np.zeros(len(candidates), dtype=_dtype(MATCH_FIELDS, POINT_STEP))
    for i, cand in enumerate(candidates):
        sec, nanosec = divmod(int(cand.stamp_ns), NS_PER_S)
        rows[i] = (_pose_columns(cand) + (cand.global_similarity, cand.pair_score,
                                          cand.probability, cand.map_id, sec, nanosec,
                                          int(accepted and i == 0),
                                          getattr(cand, 'score', math.nan)))
    msg = PointCloud2(header=header, height=1, width=len(candidates), is_bigendian=False,
                      point_step=POINT_STEP, row_step=POINT_STEP * len(candidates),
                      is_dense=False)
    msg.fields = [PointField(name=n, offset=o, datatype=t, count=1) for n, o, t in MATCH_FIELDS]
    msg.data = rows.tobytes()
    return msg


def _check_layout(msg: PointCloud2) -> list[tuple]:
    present = {f.name: (f.name, f.offset, f.datatype) for f in msg.fields}
    missing = [name for name, _, _ in MATCH_FIELDS if name not in present]
    if missing:
        raise MatchesFormatError(f'matches message lacks fields {missing}')
    layout = [present[name] for name, _, _ in MATCH_FIELDS]
    unknown = [f for f in layout if f[2] not in _NUMPY_TYPES]
    if unknown:
        raise MatchesFormatError(f'matches message has fields of unknown datatype {unknown}')
    if len(msg.data) < msg.point_step * msg.width * msg.height:
        raise MatchesFormatError(f'matches data has {len(msg.data)} bytes, expected '
                                 f'{msg.point_step * msg.width * msg.height}')
    return layout


def _candidate(row: np.void, frame_id: str) -> MatchCandidate:
    pose_values = [float(row[k]) for k in ('x', 'y', 'z', 'qx', 'qy', 'qz', 'qw')]
    pose = None
    if all(math.isfinite(v) for v in pose_values):
        pose = Pose(tuple(pose_values[:3]), tuple(pose_values[3:]), frame_id)
    stamp = int(row['map_stamp_sec']) * NS_PER_S + int(row['map_stamp_nanosec'])
    return MatchCandidate(int(row['map_id']), stamp, float(row['global_similarity']),
                          float(row['pair_score']), float(row['probability']), pose,
                          float(row['score']))


def decode_matches(msg: PointCloud2) -> Matches:
    """Decode a ``~/matches`` message (see the module docstring for the layout).

    Raises:
        MatchesFormatError: a field is missing or the buffer is shorter than the layout says.
    """
    layout = _check_layout(msg)
    count = msg.width * msg.height
    dtype = _dtype(layout, msg.point_step, bool(msg.is_bigendian))
    rows = np.frombuffer(bytes(msg.data[:msg.point_step * count]), dtype=dtype, count=count)
    candidates = tuple(_candidate(row, msg.header.frame_id) for row in rows)
    stamp = int(msg.header.stamp.sec) * NS_PER_S + int(msg.header.stamp.nanosec)
    accepted = bool(count and rows[0]['accepted'])
    return Matches(stamp, msg.header.frame_id, accepted, candidates)
