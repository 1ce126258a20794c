"""The ``~/matches`` layout table of docs/ros.md is the layout the node encodes."""

import math
import re

from conftest import REPO_ROOT
import numpy as np
import pytest
from sensor_msgs.msg import PointField
from std_msgs.msg import Header
from vpr_ros.geometry import pose_from_xy_yaw
from vpr_ros.localization.localizer import Candidate
from vpr_ros.ros.matches import decode_matches, encode_matches

pytestmark = pytest.mark.ros

DATATYPES = {name: getattr(PointField, name) for name in
             ('INT8', 'UINT8', 'INT16', 'UINT16', 'INT32', 'UINT32', 'FLOAT32', 'FLOAT64')}


def _doc_layout() -> tuple[list, str]:
    """Return the (field, offset, datatype) rows of docs/ros.md and the prose above the table."""
    text = (REPO_ROOT / 'docs' / 'ros.md').read_text()
    start = text.index('### `~/matches` layout')
    section = text[start:re.compile(r'^#+ ', re.M).search(text, start + 1).start()]
    rows = re.findall(r'^\| `(\w+)` \| (\d+) \| (\w+) \|', section, re.M)
    return [(name, int(offset), DATATYPES[kind]) for name, offset, kind in rows], section


def _message(accepted: bool = True):
    candidates = [Candidate(map_id=7, stamp_ns=12_500_000_001, global_similarity=0.8,
                            pair_score=math.nan, probability=0.97,
                            pose=pose_from_xy_yaw(1.0, 2.0, 0.5), score=0.8),
                  Candidate(map_id=3, stamp_ns=4_000_000_000, global_similarity=0.5,
                            pair_score=math.nan, probability=0.2, pose=None, score=0.5)]
    return encode_matches(Header(frame_id='map'), candidates, accepted)


def test_doc_table_lists_every_encoded_field_with_offset_and_datatype() -> None:
    """Every PointField (name, offset, datatype, count 1) is a docs/ros.md row, in order."""
    rows, section = _doc_layout()
    msg = _message()
    assert rows == [(f.name, f.offset, f.datatype) for f in msg.fields]
    assert all(f.count == 1 for f in msg.fields)
    assert f'`point_step` {msg.point_step},' in section
    assert msg.row_step == msg.point_step * msg.width and msg.height == 1
    assert not msg.is_bigendian and not msg.is_dense


def test_doc_layout_decodes_the_encoded_values() -> None:
    """Reading the bytes at the docs/ros.md offsets gives the encoded values."""
    rows, _ = _doc_layout()
    msg = _message()
    formats = {PointField.FLOAT64: '<f8', PointField.UINT32: '<u4', PointField.INT32: '<i4',
               PointField.UINT8: '<u1'}
    data = bytes(msg.data)
    first = {name: np.frombuffer(data, formats[kind], count=1, offset=offset)[0]
             for name, offset, kind in rows}
    decoded = decode_matches(msg).candidates[0]
    assert first['map_id'] == decoded.map_id == 7
    assert int(first['map_stamp_sec']) * 10**9 + int(first['map_stamp_nanosec']) == 12_500_000_001
    assert first['accepted'] == 1 and first['probability'] == 0.97
    assert (first['x'], first['y']) == (1.0, 2.0) and math.isnan(first['pair_score'])
    assert first['score'] == decoded.score == 0.8
