"""Conversions between ROS messages and core types: images, poses and time stamps.

Images go through :mod:`vpr_ros.data.image_codec` (no cv_bridge). Before the codec touches a raw
buffer, :func:`image_from_msg` checks the size, encoding, step and data length itself so that a
rejected message carries a short machine-readable reason (``ImageRejected.reason``), which the
nodes count in /diagnostics.
"""

import math
from typing import Union

from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose as PoseMsg
import numpy as np
from sensor_msgs.msg import CompressedImage, Image

from vpr_ros.data import image_codec
from vpr_ros.errors import ConfigError, ImageDecodeError
from vpr_ros.geometry import Pose

NS_PER_S = 1_000_000_000
ImageMessage = Union[Image, CompressedImage]


class ImageRejected(ImageDecodeError):
    """An image message was refused; ``reason`` is a short snake_case key for the statistics."""

    def __init__(self, reason: str, message: str) -> None:
        """Store ``reason`` (e.g. ``'bad_step'``) with the human-readable ``message``."""
        super().__init__(message)
        self.reason = reason


class PoseRejected(ConfigError):
    """A pose message was refused (non-finite value or a zero quaternion)."""

    reason = 'invalid_pose'


def stamp_to_ns(stamp: Time) -> int:
    """Return a ``builtin_interfaces/Time`` as integer nanoseconds."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def ns_to_stamp(stamp_ns: int) -> Time:
    """Return integer nanoseconds as a ``builtin_interfaces/Time``."""
    sec, nanosec = divmod(int(stamp_ns), NS_PER_S)
    return Time(sec=sec, nanosec=nanosec)


def _check_raw(msg: Image) -> None:
    """Raise :class:`ImageRejected` with a precise reason for a malformed raw image."""
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise ImageRejected('empty_image', f'image has zero size ({width}x{height})')
    if (height * width > image_codec.MAX_PIXELS or max(height, width) > image_codec.MAX_SIDE
            or height * step > image_codec.MAX_BUFFER_BYTES):
        raise ImageRejected('image_too_large', f'image of {width}x{height} pixels (step {step}) '
                            f'exceeds the limit of {image_codec.MAX_PIXELS} pixels, '
                            f'{image_codec.MAX_SIDE} per side, {image_codec.MAX_BUFFER_BYTES} '
                            'bytes')
    if msg.encoding not in image_codec.RAW_ENCODINGS:
        raise ImageRejected('unsupported_encoding', f'unsupported encoding {msg.encoding!r}; '
                            f'supported: {", ".join(image_codec.RAW_ENCODINGS)}')
    channels, depth = image_codec.RAW_ENCODINGS[msg.encoding]
    if step < width * channels * depth:
        raise ImageRejected('bad_step', f'step {step} < width * bytes per pixel = '
                            f'{width * channels * depth}')
    if len(msg.data) < step * height:
        raise ImageRejected('truncated_data', f'data has {len(msg.data)} bytes, step * height '
                            f'= {step * height}')


def _compressed_reason(exc: ImageDecodeError) -> str:
    text = str(exc)
    if 'exceeds the limit' in text or 'must be positive' in text:
        return 'image_too_large' if 'exceeds' in text else 'empty_image'
    if 'format' in text:
        return 'unsupported_format'
    return 'corrupt_compressed'


def image_from_msg(msg: ImageMessage) -> np.ndarray:
    """Decode a ``sensor_msgs/Image`` or ``CompressedImage`` into ``[H, W, 3] uint8 RGB``.

    Raises:
        ImageRejected: the message is malformed; ``reason`` names the problem.
    """
    if isinstance(msg, CompressedImage):
        if len(msg.data) == 0:
            raise ImageRejected('empty_image', 'compressed image has no data')
        try:
            return image_codec.decode_compressed(msg.format, msg.data)
        except ImageDecodeError as exc:
            raise ImageRejected(_compressed_reason(exc), str(exc)) from exc
    _check_raw(msg)
    try:
        return image_codec.decode_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data,
                                      bool(msg.is_bigendian))
    except ImageDecodeError as exc:
        raise ImageRejected('invalid_image', str(exc)) from exc


def image_to_msg(rgb: np.ndarray, stamp_ns: int, frame_id: str,
                 encoding: str = 'rgb8') -> Image:
    """Encode ``[H, W, 3] uint8 RGB`` as a ``sensor_msgs/Image`` (packed rows, little-endian)."""
    raw = image_codec.encode_raw(rgb, encoding)
    msg = Image(height=raw.height, width=raw.width, encoding=raw.encoding, step=raw.step,
                is_bigendian=0)
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.data = raw.data
    return msg


def compressed_to_msg(rgb: np.ndarray, stamp_ns: int, frame_id: str, fmt: str = 'jpeg',
                      quality: int = 90) -> CompressedImage:
    """Encode ``rgb`` as a ``CompressedImage`` (image_transport format ``rgb8; jpeg ...``)."""
    msg = CompressedImage(format=f'rgb8; {fmt} compressed bgr8')
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.data = image_codec.encode_compressed(rgb, fmt, quality)
    return msg


def pose_from_msg(msg: PoseMsg, frame_id: str) -> Pose:
    """Convert a ``geometry_msgs/Pose`` in ``frame_id`` to a core :class:`Pose`.

    The quaternion is normalised; a non-finite value or a (near-)zero quaternion is refused.

    Raises:
        PoseRejected: the pose is not usable.
    """
    position = (msg.position.x, msg.position.y, msg.position.z)
    quat = (msg.orientation.x, msg.orientation.y, msg.orientation.z, msg.orientation.w)
    if not all(math.isfinite(v) for v in position + quat):
        raise PoseRejected(f'pose has a non-finite value: {position + quat}')
    norm = math.sqrt(sum(v * v for v in quat))
    if norm < 1e-6:
        raise PoseRejected(f'pose orientation is a zero quaternion {quat}')
    return Pose(tuple(float(v) for v in position), tuple(float(v) / norm for v in quat),
                frame_id)


def pose_to_msg(pose: Pose) -> PoseMsg:
    """Convert a core :class:`Pose` to ``geometry_msgs/Pose`` (the frame goes in a header)."""
    msg = PoseMsg()
    msg.position.x, msg.position.y, msg.position.z = (float(v) for v in pose.position)
    (msg.orientation.x, msg.orientation.y, msg.orientation.z,
     msg.orientation.w) = (float(v) for v in pose.orientation)
    return msg
