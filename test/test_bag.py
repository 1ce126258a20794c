"""Tests of vpr_ros.data.bag with real rosbag2 bags (mcap and sqlite3) written at test time."""

import array
import math
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import get_typestore, Stores

from vpr_ros.data.bag import decode_image_message, list_topics, read_frames, write_frames
from vpr_ros.data.frame import Frame
from vpr_ros.errors import BagError, ImageDecodeError
from vpr_ros.geometry import Pose, pose_from_xy_yaw

STORE = get_typestore(Stores.ROS2_JAZZY)
T0 = 1_700_000_000_123_456_789


@pytest.fixture
def frames() -> list[Frame]:
    """Return six random frames 200 ms (+ jitter) apart; frame 3 has no pose."""
    rng = np.random.default_rng(3)
    out = []
    for i in range(6):
        image = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        pose = None if i == 3 else Pose((1.5 * i, -2.0 * i, 0.25), _quat(rng), 'odom')
        out.append(Frame(T0 + i * 200_000_000 + int(rng.integers(0, 1000)), image, pose))
    return out


def _quat(rng: np.random.Generator) -> tuple[float, float, float, float]:
    """Return a random unit quaternion."""
    q = rng.normal(size=4)
    return tuple(float(v) for v in q / np.linalg.norm(q))


def _assert_pose_equal(actual: Pose, expected: Pose) -> None:
    """Positions, orientations and frames match to float precision."""
    np.testing.assert_allclose(actual.position, expected.position, atol=1e-12)
    np.testing.assert_allclose(actual.orientation, expected.orientation, atol=1e-12)
    assert actual.frame_id == expected.frame_id


@pytest.mark.parametrize('storage, suffix', [('mcap', '.mcap'), ('sqlite3', '.db3')])
@pytest.mark.parametrize('pose_type, msgtype', [('odometry', 'nav_msgs/msg/Odometry'),
                                                ('pose_stamped', 'geometry_msgs/msg/PoseStamped')])
def test_raw_round_trip(tmp_path, frames, storage, suffix, pose_type, msgtype):
    """Frames written in either storage and pose type read back identical, with poses matched."""
    path = write_frames(tmp_path / 'bag', frames, storage=storage, pose_type=pose_type)
    assert path == tmp_path / 'bag'
    assert sorted(p.name for p in path.iterdir()) == ['bag' + suffix, 'metadata.yaml']
    assert [p.name for p in tmp_path.iterdir()] == ['bag']
    assert list_topics(path) == {'/camera/image_raw': 'sensor_msgs/msg/Image',
                                 '/camera/pose': msgtype}
    out = list(read_frames(path, 'camera/image_raw', '/camera/pose'))
    assert len(out) == len(frames)
    for got, want in zip(out, frames):
        assert got.stamp_ns == want.stamp_ns
        np.testing.assert_array_equal(got.image, want.image)
        assert got.source == f'bag:bag#/camera/image_raw@{want.stamp_ns}'
        if want.pose is None:
            assert got.pose is None
        else:
            _assert_pose_equal(got.pose, want.pose)


def test_compressed_round_trip_matches_opencv_jpeg(tmp_path, frames):
    """Compressed bags hold quality-90 JPEGs whose decoding equals OpenCV's."""
    path = write_frames(tmp_path / 'jpeg_bag', frames, compressed=True, pose_topic=None,
                        storage='sqlite3')
    assert list_topics(path) == {'/camera/image_raw': 'sensor_msgs/msg/CompressedImage'}
    out = list(read_frames(path / 'jpeg_bag.db3', '/camera/image_raw'))
    assert [f.stamp_ns for f in out] == [f.stamp_ns for f in frames]
    for got, want in zip(out, frames):
        bgr = cv2.cvtColor(want.image, cv2.COLOR_RGB2BGR)
        ok, jpeg = cv2.imencode('.jpg', bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
        reference = cv2.cvtColor(cv2.imdecode(jpeg, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(got.image, reference)
        assert got.pose is None


def _header(stamp_ns: int, frame_id: str):
    """Build a std_msgs/Header."""
    time = STORE.types['builtin_interfaces/msg/Time'](sec=stamp_ns // 10**9,
                                                      nanosec=stamp_ns % 10**9)
    return STORE.types['std_msgs/msg/Header'](stamp=time, frame_id=frame_id)


def _pose_cov_msg(stamp_ns: int, x: float):
    """Build a PoseWithCovarianceStamped at (x, 0, 0) with a planar heading of x radians."""
    types = STORE.types
    pose = types['geometry_msgs/msg/Pose'](
        position=types['geometry_msgs/msg/Point'](x=x, y=0.0, z=0.0),
        orientation=types['geometry_msgs/msg/Quaternion'](x=0.0, y=0.0, z=math.sin(x / 2),
                                                          w=math.cos(x / 2)))
    return types['geometry_msgs/msg/PoseWithCovarianceStamped'](
        header=_header(stamp_ns, 'map'),
        pose=types['geometry_msgs/msg/PoseWithCovariance'](pose=pose,
                                                           covariance=np.zeros(36)))


def _image_msg(stamp_ns: int, encoding: str, pixels: np.ndarray):
    """Build a raw Image message around ``pixels`` ([H, W] or [H, W, C] uint8)."""
    height, width = pixels.shape[:2]
    return STORE.types['sensor_msgs/msg/Image'](
        header=_header(stamp_ns, 'cam'), height=height, width=width, encoding=encoding,
        is_bigendian=0, step=pixels[0].size, data=pixels.reshape(-1))


def _write_manual_bag(path, images, poses):
    """Write a bag with rosbags directly; receive times deliberately differ from stamps."""
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        image_type = 'sensor_msgs/msg/Image'
        pose_type = 'geometry_msgs/msg/PoseWithCovarianceStamped'
        cam = writer.add_connection('/cam/image', image_type, typestore=STORE)
        pose = writer.add_connection('/gt/pose', pose_type, typestore=STORE)
        for i, (stamp, msg) in enumerate(poses):
            writer.write(pose, 10**9 * (i + 1), STORE.serialize_cdr(msg, pose_type))
        for i, (stamp, msg) in enumerate(images):
            writer.write(cam, 10**9 * (i + 1), STORE.serialize_cdr(msg, image_type))


def test_nearest_pose_within_tolerance_and_foreign_encodings(tmp_path):
    """Header stamps drive brute-force nearest pose matching; bgr8/mono8 bags decode."""
    rng = np.random.default_rng(5)
    image_stamps = [T0 + k * 100_000_000 for k in range(8)]
    pose_stamps = sorted(int(T0 + s) for s in rng.uniform(-2e8, 9e8, 12))
    pixels = [rng.integers(0, 256, (6, 5, 3) if k % 2 else (6, 5), dtype=np.uint8)
              for k in range(8)]
    images = [(s, _image_msg(s, 'bgr8' if k % 2 else 'mono8', pixels[k]))
              for k, s in enumerate(image_stamps)]
    poses = [(s, _pose_cov_msg(s, float(k))) for k, s in enumerate(pose_stamps)]
    _write_manual_bag(tmp_path / 'manual', images, poses)
    gap = 30_000_000
    out = list(read_frames(tmp_path / 'manual', '/cam/image', 'gt/pose', max_pose_gap_ns=gap))
    assert [f.stamp_ns for f in out] == image_stamps
    matched = 0
    for k, frame in enumerate(out):
        expected = pixels[k][:, :, ::-1] if k % 2 else np.stack([pixels[k]] * 3, axis=2)
        np.testing.assert_array_equal(frame.image, expected)
        dists = [abs(s - image_stamps[k]) for s in pose_stamps]
        best = int(np.argmin(dists))
        if dists[best] > gap:
            assert frame.pose is None
            continue
        matched += 1
        _assert_pose_equal(frame.pose, pose_from_xy_yaw(float(best), 0.0, float(best)))
    assert 0 < matched < len(out)


def test_missing_topic_lists_available_topics(tmp_path, frames):
    """Asking for an absent topic names the topics the bag has."""
    path = write_frames(tmp_path / 'bag', frames, image_topic='/front/image',
                        pose_topic='/odom')
    with pytest.raises(BagError) as info:
        list(read_frames(path, '/camera/image_raw'))
    message = str(info.value)
    assert '/camera/image_raw' in message and '/front/image' in message and '/odom' in message
    with pytest.raises(BagError, match='/gps'):
        list(read_frames(path, '/front/image', '/gps'))


def test_unsupported_type_and_bad_paths(tmp_path, frames):
    """Wrong message types, missing bags, existing outputs and bad options raise BagError."""
    path = write_frames(tmp_path / 'bag', frames[:2])
    with pytest.raises(BagError, match='nav_msgs/msg/Odometry'):
        list(read_frames(path, '/camera/pose'))
    with pytest.raises(BagError, match='sensor_msgs/msg/Image'):
        list(read_frames(path, '/camera/image_raw', '/camera/image_raw'))
    with pytest.raises(BagError, match='does not exist'):
        list_topics(tmp_path / 'nope')
    with pytest.raises(BagError, match='exists already'):
        write_frames(path, frames)
    with pytest.raises(BagError, match='rosbag1'):
        write_frames(tmp_path / 'other', frames, storage='rosbag1')
    with pytest.raises(BagError, match='pose_array'):
        write_frames(tmp_path / 'other', frames, pose_type='pose_array')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['bag']


def test_write_failure_leaves_no_partial_bag(tmp_path, frames):
    """A frame with a bad image aborts the write without leaving files behind."""
    bad = frames[:2] + [Frame(T0, np.zeros((4, 4), np.uint8))]
    with pytest.raises(ValueError):
        write_frames(tmp_path / 'bag', bad)
    assert list(tmp_path.iterdir()) == []


def test_decode_image_message_on_rclpy_like_messages(frames):
    """Objects with rclpy attribute names and array.array data decode like rosbags messages."""
    image = frames[0].image
    raw = SimpleNamespace(height=12, width=16, encoding='rgb8', step=48, is_bigendian=0,
                          data=array.array('B', image.tobytes()))
    np.testing.assert_array_equal(decode_image_message(raw), image)
    ok, png = cv2.imencode('.png', cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    compressed = SimpleNamespace(format='png', data=array.array('B', png.tobytes()))
    np.testing.assert_array_equal(decode_image_message(compressed), image)
    with pytest.raises(ImageDecodeError, match='neither'):
        decode_image_message(SimpleNamespace(data=b''))


@pytest.mark.ros
def test_decode_image_message_on_real_rclpy_message(frames):
    """A real sensor_msgs/Image from the ROS Python bindings decodes (skipped without ROS)."""
    msg_module = pytest.importorskip('sensor_msgs.msg')
    msg = msg_module.Image(height=12, width=16, encoding='bgr8', step=48)
    msg.data = frames[1].image[:, :, ::-1].tobytes()
    np.testing.assert_array_equal(decode_image_message(msg), frames[1].image)
