"""ROS layer without a graph: message conversions, the matches layout, outputs, gating, buffers."""

import math
import struct
import zlib

from geometry_msgs.msg import Pose as PoseMsg
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image, PointCloud2
from std_msgs.msg import Header
from vpr_ros.data.image_codec import encode_compressed
from vpr_ros.geometry import Pose, pose_from_xy_yaw
from vpr_ros.localization.localizer import Candidate
from vpr_ros.ros.conversions import (compressed_to_msg, image_from_msg, image_to_msg,
                                     ImageRejected, ns_to_stamp, pose_from_msg, pose_to_msg,
                                     PoseRejected, stamp_to_ns)
from vpr_ros.ros.keyframe_gate import KeyframeGate
from vpr_ros.ros.latest_slot import LatestSlot
from vpr_ros.ros.matches import decode_matches, encode_matches, MatchesFormatError
from vpr_ros.ros.node_config import KeyframeGateConfig
from vpr_ros.ros.outputs import loop_closure_message, pose_covariance, pose_message
from vpr_ros.ros.pose_buffer import PoseBuffer


pytestmark = pytest.mark.ros

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(7, 5, 3), dtype=np.uint8)


def _raw(encoding: str, pixels: np.ndarray, pad: int = 0) -> Image:
    """Build an Image by hand (independent of image_to_msg), with ``pad`` bytes per row."""
    h, w = pixels.shape[:2]
    rows = pixels.reshape(h, -1)
    padded = np.concatenate([rows, np.full((h, pad), 77, np.uint8)], axis=1)
    msg = Image(height=h, width=w, encoding=encoding, step=padded.shape[1])
    msg.data = padded.tobytes()
    return msg


@pytest.mark.parametrize('encoding,layout', [
    ('rgb8', lambda x: x), ('bgr8', lambda x: x[:, :, ::-1]),
    ('rgba8', lambda x: np.dstack([x, np.full(x.shape[:2], 9, np.uint8)])),
    ('bgra8', lambda x: np.dstack([x[:, :, ::-1], np.full(x.shape[:2], 9, np.uint8)])),
])
def test_colour_encodings_decode_with_row_padding(encoding, layout) -> None:
    """Hand-built padded buffers of each colour encoding decode to the original RGB."""
    np.testing.assert_array_equal(image_from_msg(_raw(encoding, layout(RGB), pad=3)), RGB)


def test_mono8_replicates_grey() -> None:
    """mono8 becomes three equal channels."""
    grey = RGB[:, :, 0]
    decoded = image_from_msg(_raw('mono8', grey[:, :, None], pad=1))
    np.testing.assert_array_equal(decoded, np.repeat(grey[:, :, None], 3, axis=2))


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'rgba8', 'bgra8'])
def test_raw_round_trip_keeps_stamp_and_frame(encoding: str) -> None:
    """image_to_msg -> image_from_msg is exact for colour encodings and keeps the header."""
    msg = image_to_msg(RGB, 1_700_000_000_123_456_789, 'cam', encoding)
    assert stamp_to_ns(msg.header.stamp) == 1_700_000_000_123_456_789
    assert msg.header.frame_id == 'cam' and msg.encoding == encoding
    np.testing.assert_array_equal(image_from_msg(msg), RGB)


def test_compressed_round_trips() -> None:
    """PNG is lossless; JPEG stays close on a smooth image."""
    np.testing.assert_array_equal(image_from_msg(compressed_to_msg(RGB, 5, 'c', 'png')), RGB)
    smooth = np.dstack(list(np.meshgrid(np.arange(64), np.arange(48))) + [np.full((48, 64), 30)])
    smooth = (smooth * 3).astype(np.uint8)
    decoded = image_from_msg(compressed_to_msg(smooth, 5, 'c', 'jpeg', 95))
    assert decoded.shape == smooth.shape
    assert np.abs(decoded.astype(int) - smooth).mean() < 3.0


def _png_bomb() -> bytes:
    """Return a tiny PNG whose header claims 100000 x 100000 pixels."""
    ihdr = struct.pack('>IIBBBBB', 100_000, 100_000, 8, 2, 0, 0, 0)
    chunk = struct.pack('>I', len(ihdr)) + b'IHDR' + ihdr
    chunk += struct.pack('>I', zlib.crc32(b'IHDR' + ihdr))
    return b'\x89PNG\r\n\x1a\n' + chunk + b'\x00' * 32


def _malformed() -> dict:
    good = image_to_msg(RGB, 1, 'cam')
    cases = {}
    cases['bad_step'] = Image(height=7, width=5, encoding='rgb8', step=14, data=good.data)
    cases['truncated_data'] = Image(height=7, width=5, encoding='rgb8', step=15,
                                    data=bytes(good.data)[:50])
    cases['unsupported_encoding'] = Image(height=7, width=5, encoding='yuv422_yuy2', step=15,
                                          data=good.data)
    cases['empty_image'] = Image(height=7, width=0, encoding='rgb8', step=0, data=b'')
    jpeg = bytearray(encode_compressed(RGB, 'jpeg'))
    jpeg[len(jpeg) // 2:] = b'\x00' * (len(jpeg) - len(jpeg) // 2)
    cases['corrupt_compressed'] = CompressedImage(format='jpeg', data=bytes(jpeg[:40]))
    cases['image_too_large'] = CompressedImage(format='png', data=_png_bomb())
    return cases


@pytest.mark.parametrize('reason', sorted(_malformed()))
def test_malformed_images_are_rejected_with_their_reason(reason: str) -> None:
    """Each malformed message raises ImageRejected naming the problem."""
    with pytest.raises(ImageRejected) as info:
        image_from_msg(_malformed()[reason])
    assert info.value.reason == reason


def test_pose_round_trip_and_normalisation() -> None:
    """Pose -> msg -> Pose is exact; an unnormalised quaternion is normalised."""
    pose = pose_from_xy_yaw(1.5, -2.0, 0.7, 'map')
    assert pose_from_msg(pose_to_msg(pose), 'map') == pose
    msg = pose_to_msg(pose)
    msg.orientation.z, msg.orientation.w = msg.orientation.z * 2, msg.orientation.w * 2
    assert pose_from_msg(msg, 'odom').yaw == pytest.approx(0.7)


@pytest.mark.parametrize('field,value', [('x', math.nan), ('w', math.inf), ('zero', 0.0)])
def test_unusable_poses_are_rejected(field: str, value: float) -> None:
    """Non-finite values (NaN, inf) and a zero quaternion raise PoseRejected."""
    msg = PoseMsg()
    if field == 'x':
        msg.position.x = value
    elif field == 'w':
        msg.orientation.w = value
    else:
        msg.orientation.w = 0.0
    with pytest.raises(PoseRejected):
        pose_from_msg(msg, 'map')


@pytest.mark.parametrize('stamp_ns', [0, 1, 999_999_999, 10**9, 1_700_000_000_987_654_321])
def test_stamp_round_trip(stamp_ns: int) -> None:
    """Nanoseconds survive the builtin_interfaces/Time round trip exactly."""
    stamp = ns_to_stamp(stamp_ns)
    assert 0 <= stamp.nanosec < 1_000_000_000
    assert stamp_to_ns(stamp) == stamp_ns


def _candidates() -> list:
    return [Candidate(3, 1_600_000_000_500_000_000, 0.91, 4.5, 0.97,
                      pose_from_xy_yaw(1, 2, 0.3), 77.3),
            Candidate(7, 12, 0.55, math.nan, 0.2, None, 0.55),
            Candidate(2**31 + 5, 0, -0.1, -3.0, 0.0, Pose((0, 0, 1), (0, 0, 0, 1)))]


def test_matches_round_trip() -> None:
    """encode_matches -> decode_matches returns every field of every candidate, in order."""
    header = Header(stamp=ns_to_stamp(42_000_000_007), frame_id='world')
    decoded = decode_matches(encode_matches(header, _candidates(), accepted=True))
    assert decoded.stamp_ns == 42_000_000_007 and decoded.frame_id == 'world' and decoded.accepted
    for got, want in zip(decoded.candidates, _candidates(), strict=True):
        assert (got.map_id, got.map_stamp_ns) == (want.map_id, want.stamp_ns)
        assert got.global_similarity == want.global_similarity
        assert got.probability == want.probability
        assert got.pair_score == want.pair_score or math.isnan(want.pair_score)
        assert got.score == want.score or math.isnan(want.score)
        if want.pose is None:
            assert got.pose is None
        else:
            assert got.pose.position == want.pose.position
            assert got.pose.orientation == want.pose.orientation and got.pose.frame_id == 'world'


def test_matches_fields_are_labelled_and_rejected_is_flagged() -> None:
    """Field names are present in the message; 'accepted' is 0 when the match was rejected."""
    msg = encode_matches(Header(), _candidates(), accepted=False)
    names = [f.name for f in msg.fields]
    assert names[:3] == ['x', 'y', 'z'] and 'probability' in names and 'map_id' in names
    assert msg.width == 3 and len(msg.data) == msg.row_step == 3 * msg.point_step
    assert not decode_matches(msg).accepted
    empty = decode_matches(encode_matches(Header(), [], accepted=False))
    assert empty.candidates == () and not empty.accepted


def test_decoder_refuses_a_foreign_cloud() -> None:
    """A PointCloud2 without the matches fields raises MatchesFormatError."""
    with pytest.raises(MatchesFormatError):
        decode_matches(PointCloud2(width=1, height=1, point_step=4, data=b'\x00' * 4))


def test_pose_covariance_against_numpy() -> None:
    """The position block is the weighted second moment about the best pose plus the floor."""
    best = pose_from_xy_yaw(0, 0, 0.0)
    others = [(best, 0.5), (pose_from_xy_yaw(2, 0, 0.2), 0.3),
              (pose_from_xy_yaw(0, -1, -0.1), 0.2)]
    cov = np.array(pose_covariance(best, others, 0.1, math.radians(2.0))).reshape(6, 6)
    offsets = np.array([[0, 0, 0], [2, 0, 0], [0, -1, 0]], float)
    weights = np.array([0.5, 0.3, 0.2])
    expected = (weights[:, None] * offsets).T @ offsets + 0.01 * np.eye(3)
    np.testing.assert_allclose(cov[:3, :3], expected, atol=1e-12)
    yaw_var = 0.3 * 0.2 ** 2 + 0.2 * 0.1 ** 2 + math.radians(2.0) ** 2
    assert cov[5, 5] == pytest.approx(yaw_var)
    np.testing.assert_allclose(cov, cov.T)


def test_pose_message_uses_header_and_best_pose() -> None:
    """~/pose carries the given header and the best candidate's pose."""
    header = Header(stamp=ns_to_stamp(9), frame_id='map')
    msg = pose_message(header, _candidates(), 5, 0.5, 5.0)
    assert msg.header.frame_id == 'map' and stamp_to_ns(msg.header.stamp) == 9
    assert (msg.pose.pose.position.x, msg.pose.pose.position.y) == (1.0, 2.0)
    assert pose_message(header, _candidates()[1:2], 5, 0.5, 5.0) is None


def test_loop_closure_is_lio_sam_seconds() -> None:
    """[query_stamp_sec, map_stamp_sec] as float seconds."""
    msg = loop_closure_message(1_700_000_000_250_000_000, 1_699_999_000_500_000_000)
    assert list(msg.data) == pytest.approx([1_700_000_000.25, 1_699_999_000.5])


def test_keyframe_gate_time_and_motion() -> None:
    """Time is a minimum; with motion enabled distance or rotation must be reached too."""
    gate = KeyframeGate(KeyframeGateConfig(min_interval_s=1.0, min_distance_m=2.0,
                                           min_rotation_deg=30.0))
    start = pose_from_xy_yaw(0, 0, 0)
    assert gate.passes(0, start)
    gate.commit(0, start)
    assert not gate.passes(500_000_000, pose_from_xy_yaw(5, 0, 0))        # too soon
    assert not gate.passes(2_000_000_000, pose_from_xy_yaw(1, 0, 0.2))     # too little motion
    assert gate.passes(2_000_000_000, pose_from_xy_yaw(2, 0, 0))           # far enough
    assert gate.passes(2_000_000_000, pose_from_xy_yaw(0, 0, math.radians(31)))  # turned
    assert not gate.passes(2_000_000_000, None)
    gate.update_config(KeyframeGateConfig(min_interval_s=0.5))
    assert gate.passes(600_000_000, None)


def test_pose_buffer_nearest_matches_brute_force() -> None:
    """nearest() equals an argmin over all stamps, honours the tolerance, refuses old stamps."""
    buffer = PoseBuffer(capacity=100)
    stamps = np.cumsum(RNG.integers(1, 50, size=60))
    for s in stamps:
        assert buffer.add(int(s), pose_from_xy_yaw(float(s), 0, 0))
    assert not buffer.add(int(stamps[-1]), pose_from_xy_yaw(0, 0, 0))
    for query in RNG.integers(-20, int(stamps[-1]) + 20, size=200):
        gaps = np.abs(stamps - query)
        found = buffer.nearest(int(query), 10)
        if gaps.min() > 10:
            assert found is None
        else:
            assert abs(found[0] - query) == gaps.min()


def test_latest_slot_keeps_only_the_newest() -> None:
    """Overwriting an untaken item reports a drop; take returns the newest once."""
    slot = LatestSlot()
    assert not slot.put(1)
    assert slot.put(2) and slot.put(3)
    assert slot.take(0.1) == 3 and slot.take(0.05) is None
    slot.close()
    assert slot.take(5.0) is None
