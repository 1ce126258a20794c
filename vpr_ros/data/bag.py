"""Reading and writing camera frames and poses in rosbag2 bags (sqlite3 or mcap) with ``rosbags``.

No ROS installation is needed: messages are (de)serialised with the ``rosbags`` type store of ROS 2
Jazzy (the definitions of the image and pose messages used here are the same in every ROS 2
release). Topic names are compared with a leading ``/`` added when missing, so
``'camera/image_raw'`` and ``'/camera/image_raw'`` name the same topic; bags are written with the
leading ``/`` as ``ros2 bag record`` does. A damaged or forged bag raises :class:`BagError`
naming the bag, whichever layer fails (storage file, sqlite database, mcap records, CDR message
data), never another exception.

Images: ``sensor_msgs/msg/Image`` (the encodings of :mod:`vpr_ros.data.image_codec`) or
``sensor_msgs/msg/CompressedImage`` (JPEG/PNG). Poses: ``nav_msgs/msg/Odometry``,
``geometry_msgs/msg/PoseStamped`` or ``geometry_msgs/msg/PoseWithCovarianceStamped``. Every stamp
is the message header stamp, not the bag's receive time.
"""

import functools
import logging
import os
from pathlib import Path
import shutil
import sqlite3
import struct
import tempfile
from typing import Any, Iterable, Iterator, Optional, Union

import numpy as np
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.rosbag2.errors import ReaderError, WriterError
from rosbags.serde import SerdeError
from rosbags.typesys import get_typestore, Stores

from vpr_ros.data.frame import Frame
from vpr_ros.data.image_codec import decode_compressed, decode_raw, encode_compressed, encode_raw
from vpr_ros.errors import BagError, ConfigError, ImageDecodeError
from vpr_ros.geometry import Pose

LOGGER = logging.getLogger(__name__)

IMAGE = 'sensor_msgs/msg/Image'
COMPRESSED_IMAGE = 'sensor_msgs/msg/CompressedImage'
ODOMETRY = 'nav_msgs/msg/Odometry'
POSE_STAMPED = 'geometry_msgs/msg/PoseStamped'
POSE_COV_STAMPED = 'geometry_msgs/msg/PoseWithCovarianceStamped'
IMAGE_TYPES = (IMAGE, COMPRESSED_IMAGE)
POSE_TYPES = (ODOMETRY, POSE_STAMPED, POSE_COV_STAMPED)
STORAGES = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}
POSE_WRITE_TYPES = {'odometry': ODOMETRY, 'pose_stamped': POSE_STAMPED}

DEFAULT_MAX_POSE_GAP_NS = 100_000_000
"""An image gets the pose nearest in time only if it is at most this far (100 ms) away."""

JPEG_QUALITY = 90
COMPRESSED_FORMAT = 'rgb8; jpeg compressed bgr8'
"""``format`` string written for JPEG images (as ``compressed_image_transport`` writes it)."""

PathLike = Union[str, Path]

try:  # rosbags reads sqlite3 bags with apsw when it is installed
    from apsw import Error as _ApswError
except ImportError:  # pragma: no cover
    _ApswError = sqlite3.Error

DAMAGED_BAG_ERRORS = (ReaderError, SerdeError, OSError, ValueError, KeyError, IndexError,
                      TypeError, AttributeError, ArithmeticError, struct.error, sqlite3.Error,
                      _ApswError, MemoryError, RecursionError)
"""What ``rosbags`` raises on a damaged file (its own errors and those of the layers below it)."""


@functools.lru_cache(maxsize=1)
def _typestore() -> Any:
    """Return the shared ``rosbags`` type store (ROS 2 Jazzy)."""
    return get_typestore(Stores.ROS2_JAZZY)


def _topic(name: str) -> str:
    """Return ``name`` with a leading ``/``."""
    return name if name.startswith('/') else '/' + name


def decode_image_message(msg: Any) -> np.ndarray:
    """Convert an ``Image`` or ``CompressedImage`` message into ``[H, W, 3] uint8 RGB``.

    Works on ``rosbags``-deserialised and on ``rclpy`` messages (same attribute names: ``height,
    width, encoding, step, data, is_bigendian`` or ``format, data``).

    Raises:
        ImageDecodeError: the message is neither kind or its data cannot be decoded.
    """
    if hasattr(msg, 'encoding'):
        return decode_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data,
                          bool(getattr(msg, 'is_bigendian', False)))
    if hasattr(msg, 'format'):
        return decode_compressed(msg.format, msg.data)
    raise ImageDecodeError(f'{type(msg).__name__} is neither an Image (encoding) nor a '
                           f'CompressedImage (format) message')


def _open_reader(path: Path) -> Reader:
    """Open a bag directory or storage file, mapping every failure to :class:`BagError`."""
    if not path.exists():
        raise BagError(f'bag {path} does not exist')
    try:
        reader = Reader(path)
        reader.open()
    except DAMAGED_BAG_ERRORS as exc:
        raise BagError(f'cannot open bag {path}: {exc!r}') from exc
    return reader


def _messages(reader: Reader, path: Path, connections: list) -> Iterator[tuple]:
    """Yield ``(connection, time, raw)`` of ``connections``; a damaged record is a BagError."""
    records = reader.messages(connections)
    while True:
        try:
            item = next(records)
        except StopIteration:
            return
        except DAMAGED_BAG_ERRORS as exc:
            raise BagError(f'bag {path} is damaged: {exc!r}') from exc
        yield item


def _deserialize(raw: Any, connection: Any, path: Path) -> Any:
    """Deserialise one CDR message; data that does not fit its type is a BagError."""
    try:
        return _typestore().deserialize_cdr(raw, connection.msgtype)
    except DAMAGED_BAG_ERRORS as exc:
        raise BagError(f'bag {path}: a {connection.msgtype} message on {connection.topic} is '
                       f'damaged: {exc!r}') from exc


def list_topics(path: PathLike) -> dict[str, str]:
    """Return ``{topic: message type}`` for every topic of the bag at ``path``.

    Raises:
        BagError: the bag is missing or unreadable.
    """
    reader = _open_reader(Path(path))
    try:
        return {c.topic: c.msgtype for c in reader.connections}
    finally:
        reader.close()


def _connections(reader: Reader, path: Path, topic: str, allowed: tuple[str, ...]) -> list:
    """Return the connections of ``topic``; raise if absent or of an unsupported type."""
    found = [c for c in reader.connections if c.topic == _topic(topic)]
    if not found:
        available = ', '.join(f'{c.topic} ({c.msgtype})' for c in reader.connections)
        raise BagError(f'topic {_topic(topic)!r} not in bag {path}; available topics: '
                       f'{available or "none"}')
    for conn in found:
        if conn.msgtype not in allowed:
            raise BagError(f'topic {conn.topic!r} in bag {path} has type {conn.msgtype}; '
                           f'supported: {", ".join(allowed)}')
    return found


def _stamp_ns(header: Any) -> int:
    """Return a header stamp in integer nanoseconds."""
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def _pose_from_message(msg: Any) -> Optional[Pose]:
    """Return the pose of an Odometry / PoseStamped / PoseWithCovarianceStamped message."""
    pose = msg.pose.pose if hasattr(msg.pose, 'pose') else msg.pose
    position = (pose.position.x, pose.position.y, pose.position.z)
    quat = np.array([pose.orientation.x, pose.orientation.y, pose.orientation.z,
                     pose.orientation.w], dtype=np.float64)
    norm = float(np.linalg.norm(quat))
    if not np.isfinite(norm) or norm < 1e-6:
        LOGGER.warning('skipping a pose with an invalid quaternion %s', quat.tolist())
        return None
    try:
        return Pose(tuple(float(v) for v in position), tuple(float(v) for v in quat / norm),
                    msg.header.frame_id or 'map')
    except ConfigError as exc:
        LOGGER.warning('skipping an invalid pose: %s', exc)
        return None


def _read_poses(reader: Reader, path: Path, topic: str) -> tuple[np.ndarray, list[Pose]]:
    """Return the pose stamps (sorted) and the poses of ``topic``."""
    stamped = []
    for conn, _, raw in _messages(reader, path, _connections(reader, path, topic, POSE_TYPES)):
        msg = _deserialize(raw, conn, path)
        pose = _pose_from_message(msg)
        if pose is not None:
            stamped.append((_stamp_ns(msg.header), pose))
    stamped.sort(key=lambda item: item[0])
    stamps = np.array([s for s, _ in stamped], dtype=np.int64)
    return stamps, [p for _, p in stamped]


def _nearest_pose(stamps: np.ndarray, poses: list[Pose], stamp_ns: int,
                  max_gap_ns: int) -> Optional[Pose]:
    """Return the pose nearest to ``stamp_ns`` (earlier on ties) within ``max_gap_ns``."""
    if stamps.size == 0:
        return None
    right = int(np.searchsorted(stamps, stamp_ns))
    candidates = [i for i in (right - 1, right) if 0 <= i < stamps.size]
    best = min(candidates, key=lambda i: abs(int(stamps[i]) - stamp_ns))
    return poses[best] if abs(int(stamps[best]) - stamp_ns) <= max_gap_ns else None


def read_frames(path: PathLike, image_topic: str, pose_topic: Optional[str] = None,
                max_pose_gap_ns: int = DEFAULT_MAX_POSE_GAP_NS) -> Iterator[Frame]:
    """Yield one :class:`Frame` per image message of ``image_topic``, in bag order.

    ``path`` is a bag directory (with ``metadata.yaml``) or a bare ``.mcap``/``.db3`` file. Each
    frame's ``stamp_ns`` is the image header stamp; its pose is the ``pose_topic`` message whose
    header stamp is nearest (at most ``max_pose_gap_ns`` away, else ``None``); ``source`` is
    ``'bag:<bag name>#<topic>@<stamp_ns>'``. Poses are read in a first pass, images are decoded
    one at a time in a second.

    Raises:
        BagError: missing, unreadable or damaged bag, missing topic (the message lists the
            available topics) or unsupported message type.
        ImageDecodeError: an image message cannot be decoded (the message names it).
    """
    path = Path(path)
    reader = _open_reader(path)
    try:
        image_conns = _connections(reader, path, image_topic, IMAGE_TYPES)
        stamps, poses = (_read_poses(reader, path, pose_topic) if pose_topic
                         else (np.zeros(0, np.int64), []))
        for conn, _, raw in _messages(reader, path, image_conns):
            msg = _deserialize(raw, conn, path)
            stamp = _stamp_ns(msg.header)
            source = f'bag:{path.name}#{conn.topic}@{stamp}'
            try:
                image = decode_image_message(msg)
            except ImageDecodeError as exc:
                raise ImageDecodeError(f'{source}: {exc}') from exc
            yield Frame(stamp, image, _nearest_pose(stamps, poses, stamp, max_pose_gap_ns),
                        source)
    finally:
        reader.close()


def _header(store: Any, stamp_ns: int, frame_id: str) -> Any:
    """Build a ``std_msgs/Header`` for ``stamp_ns``."""
    if stamp_ns < 0:
        raise BagError(f'cannot write a negative stamp {stamp_ns} ns')
    time = store.types['builtin_interfaces/msg/Time'](sec=stamp_ns // 1_000_000_000,
                                                      nanosec=stamp_ns % 1_000_000_000)
    return store.types['std_msgs/msg/Header'](stamp=time, frame_id=frame_id)


def _image_message(store: Any, frame: Frame, frame_id: str, compressed: bool) -> Any:
    """Build an rgb8 ``Image`` or a JPEG ``CompressedImage`` message from ``frame``."""
    header = _header(store, int(frame.stamp_ns), frame_id)
    if compressed:
        data = np.frombuffer(encode_compressed(frame.image, 'jpeg', JPEG_QUALITY), np.uint8)
        return store.types[COMPRESSED_IMAGE](header=header, format=COMPRESSED_FORMAT, data=data)
    raw = encode_raw(frame.image, 'rgb8')
    return store.types[IMAGE](header=header, height=raw.height, width=raw.width,
                              encoding=raw.encoding, is_bigendian=0, step=raw.step,
                              data=np.frombuffer(raw.data, np.uint8))


def _geometry_pose(store: Any, pose: Pose) -> Any:
    """Build a ``geometry_msgs/Pose`` from ``pose``."""
    x, y, z = (float(v) for v in pose.position)
    point = store.types['geometry_msgs/msg/Point'](x=x, y=y, z=z)
    qx, qy, qz, qw = (float(v) for v in pose.orientation)
    quat = store.types['geometry_msgs/msg/Quaternion'](x=qx, y=qy, z=qz, w=qw)
    return store.types['geometry_msgs/msg/Pose'](position=point, orientation=quat)


def _pose_message(store: Any, frame: Frame, msgtype: str, child_frame_id: str) -> Any:
    """Build an ``Odometry`` or ``PoseStamped`` message from ``frame.pose``."""
    header = _header(store, int(frame.stamp_ns), frame.pose.frame_id)
    pose = _geometry_pose(store, frame.pose)
    if msgtype == POSE_STAMPED:
        return store.types[POSE_STAMPED](header=header, pose=pose)
    types = store.types
    zero = types['geometry_msgs/msg/Vector3'](x=0.0, y=0.0, z=0.0)
    twist = types['geometry_msgs/msg/TwistWithCovariance'](
        twist=types['geometry_msgs/msg/Twist'](linear=zero, angular=zero),
        covariance=np.zeros(36, np.float64))
    pose_cov = types['geometry_msgs/msg/PoseWithCovariance'](pose=pose,
                                                             covariance=np.zeros(36, np.float64))
    return types[ODOMETRY](header=header, child_frame_id=child_frame_id, pose=pose_cov,
                           twist=twist)


def _check_write_args(storage: str, pose_type: str) -> None:
    """Reject unknown storage or pose types."""
    if storage not in STORAGES:
        raise BagError(f'unknown bag storage {storage!r}; supported: {", ".join(STORAGES)}')
    if pose_type not in POSE_WRITE_TYPES:
        raise BagError(f'unknown pose type {pose_type!r}; supported: '
                       f'{", ".join(POSE_WRITE_TYPES)}')


def _write_messages(writer: Writer, frames: Iterable[Frame], image_topic: str,
                    pose_topic: Optional[str], options: dict) -> int:
    """Write every frame (and its pose, when it has one); return the number of frames."""
    store = _typestore()
    image_type = COMPRESSED_IMAGE if options['compressed'] else IMAGE
    image_conn = writer.add_connection(_topic(image_topic), image_type, typestore=store)
    pose_type = POSE_WRITE_TYPES[options['pose_type']]
    pose_conn = (writer.add_connection(_topic(pose_topic), pose_type, typestore=store)
                 if pose_topic else None)
    count = 0
    for count, frame in enumerate(frames, start=1):
        stamp = int(frame.stamp_ns)
        msg = _image_message(store, frame, options['frame_id'], options['compressed'])
        writer.write(image_conn, stamp, store.serialize_cdr(msg, image_type))
        if pose_conn is not None and frame.pose is not None:
            msg = _pose_message(store, frame, pose_type, options['frame_id'])
            writer.write(pose_conn, stamp, store.serialize_cdr(msg, pose_type))
    return count


def _fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` and the directories themselves to disk."""
    for item in sorted(root.rglob('*')) + [root]:
        flags = os.O_RDONLY | (os.O_DIRECTORY if item.is_dir() else 0)
        fd = os.open(item, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_frames(path: PathLike, frames: Iterable[Frame], image_topic: str = 'camera/image_raw',
                 pose_topic: Optional[str] = 'camera/pose', storage: str = 'mcap',
                 compressed: bool = False, frame_id: str = 'camera',
                 pose_type: str = 'odometry') -> Path:
    """Write ``frames`` as a new rosbag2 directory at ``path`` and return ``path``.

    Images become rgb8 ``sensor_msgs/msg/Image`` messages, or JPEG ``CompressedImage`` messages
    (quality 90) when ``compressed``, with header ``frame_id``; frames with a pose also get a
    ``nav_msgs/msg/Odometry`` (``pose_type='odometry'``, ``child_frame_id=frame_id``) or
    ``geometry_msgs/msg/PoseStamped`` message on ``pose_topic`` (``None``: no pose topic) whose
    header frame is the pose's ``frame_id``. Header stamps and bag receive times are
    ``frame.stamp_ns``. The bag is written in a sibling temporary directory, flushed, then
    renamed into place, so ``path`` never holds a half-written bag.

    Raises:
        BagError: ``path`` exists, unknown storage or pose type, a negative stamp, or a writer
            failure.
    """
    path = Path(path)
    _check_write_args(storage, pose_type)
    if path.exists():
        raise BagError(f'bag {path} exists already; not overwriting it')
    options = {'compressed': compressed, 'frame_id': frame_id, 'pose_type': pose_type}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(prefix=f'.{path.name}.', dir=path.parent))
    try:
        with Writer(tmp_root / path.name, version=9, storage_plugin=STORAGES[storage]) as writer:
            count = _write_messages(writer, frames, image_topic, pose_topic, options)
        _fsync_tree(tmp_root / path.name)
        os.replace(tmp_root / path.name, path)
    except (WriterError, OSError) as exc:
        raise BagError(f'cannot write bag {path}: {exc}') from exc
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    LOGGER.info('wrote %d frames to %s (%s)', count, path, storage)
    return path
