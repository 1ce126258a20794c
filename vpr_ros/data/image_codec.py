"""Conversion between ROS image buffers (raw, JPEG, PNG) and ``[H, W, 3] uint8`` RGB arrays.

Raw buffers follow ``sensor_msgs/msg/Image`` (``encoding``, ``height``, ``width``, ``step`` in
bytes, ``is_bigendian``); compressed ones follow ``sensor_msgs/msg/CompressedImage`` (``format``
such as ``'jpeg'`` or ``'rgb8; jpeg compressed bgr8'``). Nothing here imports ROS.

Supported raw encodings (see :data:`RAW_ENCODINGS`): ``rgb8``, ``bgr8``, ``rgba8``, ``bgra8``
(alpha dropped), ``mono8``/``8UC1`` (grey replicated to three channels) and ``mono16``/``16UC1``
(reduced to 8 bits by keeping the high byte, ``value >> 8``, then replicated; depth images in
millimetres therefore look dark: this is a display conversion, not a metric one).

Every decoder checks the claimed size against :data:`MAX_PIXELS` and :data:`MAX_SIDE`, and the
buffer size against :data:`MAX_BUFFER_BYTES`, before it touches the pixels. For JPEG and PNG the
size is read from the file header (SOF segment, IHDR chunk), so a small file that claims a huge
image (a decompression bomb) is refused without being decoded.
"""

from dataclasses import dataclass
import logging
from pathlib import Path
import struct
from typing import Union

import cv2
import numpy as np

from vpr_ros.errors import ImageDecodeError, ImageEncodeError

LOGGER = logging.getLogger(__name__)

MAX_PIXELS = 8192 * 8192
"""Largest image (height * width, 67 megapixels) any decoder accepts."""

MAX_SIDE = 32768
"""Largest width or height any decoder accepts."""

MAX_BUFFER_BYTES = 512 << 20
"""Largest raw buffer (``height * step``), compressed message or image file accepted (512 MiB)."""

RAW_ENCODINGS = {
    'rgb8': (3, 1), 'bgr8': (3, 1), 'rgba8': (4, 1), 'bgra8': (4, 1),
    'mono8': (1, 1), '8UC1': (1, 1), 'mono16': (1, 2), '16UC1': (1, 2),
}
"""Raw encoding -> (channels, bytes per channel)."""

COMPRESSED_FORMATS = ('jpeg', 'png')
"""Codecs :func:`decode_compressed` and :func:`encode_compressed` handle."""

_PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
_JPEG_MAGIC = b'\xff\xd8'
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset(range(0xD0, 0xDA)) | {0x01}
_READ_FLAGS = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
_TO_RGB = {'bgr8': cv2.COLOR_BGR2RGB, 'rgba8': cv2.COLOR_RGBA2RGB, 'bgra8': cv2.COLOR_BGRA2RGB,
           'mono8': cv2.COLOR_GRAY2RGB, '8UC1': cv2.COLOR_GRAY2RGB}

Buffer = Union[bytes, bytearray, memoryview, np.ndarray]


@dataclass(frozen=True)
class RawImage:
    """A raw image buffer with the fields of ``sensor_msgs/msg/Image`` (little-endian)."""

    height: int
    width: int
    encoding: str
    step: int
    data: bytes


def _as_uint8(data: Buffer) -> np.ndarray:
    """Return a flat ``uint8`` view of ``data`` without copying where possible."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise ImageDecodeError(f'image data must be uint8, got dtype {data.dtype}')
        return data.reshape(-1)
    if isinstance(data, (list, tuple)):
        return np.asarray(data, dtype=np.uint8)
    try:
        return np.frombuffer(memoryview(data).cast('B'), dtype=np.uint8)
    except TypeError as exc:
        raise ImageDecodeError(f'image data of type {type(data).__name__} is not a byte '
                               f'buffer') from exc


def _check_size(height: int, width: int, what: str) -> None:
    """Reject non-positive or oversized image dimensions (before any pixel is decoded)."""
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f'{what}: image size must be positive, got '
                               f'height={height} width={width}')
    if max(height, width) > MAX_SIDE:
        raise ImageDecodeError(f'{what}: declared image of {width}x{height} pixels exceeds the '
                               f'limit of {MAX_SIDE} pixels per side')
    if height * width > MAX_PIXELS:
        raise ImageDecodeError(f'{what}: declared image of {width}x{height} = {width * height} '
                               f'pixels exceeds the limit of {MAX_PIXELS} pixels')


def _check_buffer(nbytes: int, what: str) -> None:
    """Reject a buffer larger than :data:`MAX_BUFFER_BYTES`."""
    if nbytes > MAX_BUFFER_BYTES:
        raise ImageDecodeError(f'{what} of {nbytes} bytes exceeds the limit of '
                               f'{MAX_BUFFER_BYTES} bytes')


def _raw_rows(encoding: str, height: int, width: int, step: int,
              data: Buffer) -> tuple[np.ndarray, int, int]:
    """Validate a raw buffer; return its ``[H, W * bpp]`` byte view, channels and depth."""
    if encoding not in RAW_ENCODINGS:
        raise ImageDecodeError(f'unsupported raw image encoding {encoding!r}; supported: '
                               f'{", ".join(RAW_ENCODINGS)}')
    channels, depth = RAW_ENCODINGS[encoding]
    _check_size(height, width, f'raw {encoding} image')
    row_bytes = width * channels * depth
    _check_buffer(step * height, f'raw {encoding} image (step * height)')
    if step < row_bytes:
        raise ImageDecodeError(f'raw {encoding} image step {step} is smaller than width * '
                               f'bytes per pixel = {width} * {channels * depth} = {row_bytes}')
    buf = _as_uint8(data)
    if buf.size < step * height:
        raise ImageDecodeError(f'raw {encoding} image data is truncated: {buf.size} bytes, '
                               f'expected step * height = {step} * {height} = {step * height}')
    rows = buf[:step * height].reshape(height, step)[:, :row_bytes]
    return rows, channels, depth


def decode_raw(encoding: str, height: int, width: int, step: int, data: Buffer,
               is_bigendian: bool = False) -> np.ndarray:
    """Convert a raw ``sensor_msgs/Image`` buffer into a new ``[H, W, 3] uint8 RGB`` array.

    Row padding (``step`` larger than ``width * bytes_per_pixel``) is skipped through a view, so
    8-bit pixels are copied once, into the returned array (16-bit ones first have their high
    bytes gathered into an ``[H, W]`` array).

    Raises:
        ImageDecodeError: unknown encoding, non-positive or oversized size (:data:`MAX_PIXELS`,
            :data:`MAX_SIDE`, ``step * height`` over :data:`MAX_BUFFER_BYTES`), ``step`` too
            small, data shorter than ``step * height``, or data that is not a ``uint8`` buffer.
    """
    rows, channels, depth = _raw_rows(encoding, int(height), int(width), int(step), data)
    if depth == 2:
        high = 0 if is_bigendian else 1
        return cv2.cvtColor(np.ascontiguousarray(rows[:, high::2]), cv2.COLOR_GRAY2RGB)
    if encoding == 'rgb8':
        return rows.copy().reshape(rows.shape[0], -1, 3)
    pixels = rows.reshape(rows.shape[0], -1, channels)
    return cv2.cvtColor(pixels if channels > 1 else pixels[:, :, 0], _TO_RGB[encoding])


def _check_rgb(rgb: np.ndarray) -> None:
    """Reject anything but a non-empty ``[H, W, 3] uint8`` array."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 \
            or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        shape = getattr(rgb, 'shape', None)
        dtype = getattr(rgb, 'dtype', type(rgb).__name__)
        raise ImageEncodeError(f'expected a [H, W, 3] uint8 RGB array, got shape {shape} '
                               f'dtype {dtype}')


def _grey(rgb: np.ndarray) -> np.ndarray:
    """Return the ITU-R BT.601 luma of ``rgb`` (OpenCV's RGB -> grey conversion)."""
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)


def _raw_pixels(rgb: np.ndarray, encoding: str) -> np.ndarray:
    """Return the ``[H, W, C]`` or ``[H, W]`` array laid out as ``encoding`` expects."""
    if encoding == 'rgb8':
        return rgb
    if encoding == 'bgr8':
        return rgb[:, :, ::-1]
    if encoding in ('rgba8', 'bgra8'):
        alpha = np.full(rgb.shape[:2] + (1,), 255, dtype=np.uint8)
        colour = rgb if encoding == 'rgba8' else rgb[:, :, ::-1]
        return np.concatenate([colour, alpha], axis=2)
    grey = _grey(rgb)
    if encoding in ('mono8', '8UC1'):
        return grey
    return grey.astype('<u2') * np.uint16(257)


def encode_raw(rgb: np.ndarray, encoding: str = 'rgb8') -> RawImage:
    """Encode ``rgb`` as a packed (no row padding) little-endian raw image.

    Colour encodings keep the pixels exactly (alpha is set to 255). ``mono8`` stores the BT.601
    luma; ``mono16``/``16UC1`` store ``luma * 257`` so that :func:`decode_raw` returns the luma.

    Raises:
        ImageEncodeError: ``rgb`` is not ``[H, W, 3] uint8`` or ``encoding`` is unsupported.
    """
    _check_rgb(rgb)
    if encoding not in RAW_ENCODINGS:
        raise ImageEncodeError(f'unsupported raw image encoding {encoding!r}; supported: '
                               f'{", ".join(RAW_ENCODINGS)}')
    height, width = rgb.shape[:2]
    channels, depth = RAW_ENCODINGS[encoding]
    data = np.ascontiguousarray(_raw_pixels(rgb, encoding)).tobytes()
    return RawImage(height, width, encoding, width * channels * depth, data)


def _codec_from_format(fmt: str) -> str:
    """Return 'jpeg', 'png' or '' (unspecified) from a ``CompressedImage.format`` string."""
    text = fmt.lower()
    if 'compresseddepth' in text:
        raise ImageDecodeError(f'compressed image format {fmt!r} (compressedDepth) is not '
                               f'supported; supported: {", ".join(COMPRESSED_FORMATS)}')
    # The codec is named after the last ';' ('rgb8; jpeg compressed bgr8') or alone ('jpeg').
    words = text.split(';')[-1].replace('compressed', ' ').split()
    codecs = {'jpeg' if w in ('jpeg', 'jpg') else w for w in words if w in ('jpeg', 'jpg', 'png')}
    if len(codecs) == 1:
        return codecs.pop()
    if not text.strip():
        return ''
    raise ImageDecodeError(f'compressed image format {fmt!r} names no supported codec; '
                           f'supported: {", ".join(COMPRESSED_FORMATS)}')


def _png_size(buf: np.ndarray) -> tuple[int, int]:
    """Return (height, width) from a PNG IHDR chunk."""
    head = buf[:24].tobytes()
    if len(head) < 24 or head[12:16] != b'IHDR':
        raise ImageDecodeError('corrupt PNG: missing IHDR chunk')
    width, height = struct.unpack('>II', head[16:24])
    return height, width


def _jpeg_size(buf: np.ndarray) -> tuple[int, int]:
    """Return (height, width) from the first JPEG SOF segment, walking the marker segments."""
    pos, size = 2, buf.size
    while pos + 4 <= size:
        if buf[pos] != 0xFF:
            raise ImageDecodeError(f'corrupt JPEG: expected a marker at byte {pos}')
        marker = int(buf[pos + 1])
        if marker == 0xFF:
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        length = int(buf[pos + 2]) << 8 | int(buf[pos + 3])
        if marker in _JPEG_SOF and pos + 9 <= size:
            height, width = struct.unpack('>HH', buf[pos + 5:pos + 9].tobytes())
            return height, width
        if marker == 0xDA or length < 2:
            break
        pos += 2 + length
    raise ImageDecodeError('corrupt JPEG: no frame header (SOF) found before the image data')


def _sniff(buf: np.ndarray) -> str:
    """Return 'jpeg' or 'png' from the magic bytes of ``buf``."""
    head = buf[:8].tobytes()
    if head.startswith(_PNG_MAGIC):
        return 'png'
    if head.startswith(_JPEG_MAGIC):
        return 'jpeg'
    raise ImageDecodeError(f'compressed data ({buf.size} bytes, starting {head[:8]!r}) is '
                           f'neither JPEG nor PNG')


def decode_compressed(fmt: str, data: Buffer) -> np.ndarray:
    """Decode JPEG or PNG bytes (a ``CompressedImage``) into ``[H, W, 3] uint8 RGB``.

    ``fmt`` is the message's ``format`` field; an empty string means "detect from the data". The
    data's magic bytes must agree with the codec ``fmt`` names. The header size is checked against
    :data:`MAX_PIXELS` and :data:`MAX_SIDE` before decoding (decompression bombs are refused).
    Grey images are replicated, alpha is dropped, 16-bit PNGs are reduced to 8 bits, and EXIF
    orientation is ignored (as PIL does by default).

    Raises:
        ImageDecodeError: unknown format, data that is not JPEG/PNG, an oversized or zero header
            size, or data OpenCV cannot decode.
    """
    if not isinstance(fmt, str):
        raise ImageDecodeError(f'compressed image format must be a string, got '
                               f'{type(fmt).__name__}')
    expected = _codec_from_format(fmt)
    buf = _as_uint8(data)
    _check_buffer(buf.size, 'compressed image data')
    codec = _sniff(buf)
    if expected and expected != codec:
        raise ImageDecodeError(f'compressed format {fmt!r} says {expected} but the data is '
                               f'{codec}')
    height, width = _png_size(buf) if codec == 'png' else _jpeg_size(buf)
    _check_size(height, width, f'{codec} header')
    image = cv2.imdecode(buf, _READ_FLAGS)
    if image is None:
        raise ImageDecodeError(f'corrupt {codec} data ({buf.size} bytes, header {width}x'
                               f'{height}): OpenCV could not decode it')
    if image.shape != (height, width, 3):
        raise ImageDecodeError(f'{codec} decoded to shape {image.shape}, header says '
                               f'{width}x{height}')
    return image


def encode_compressed(rgb: np.ndarray, fmt: str = 'jpeg', quality: int = 90) -> bytes:
    """Encode ``rgb`` as JPEG (``quality`` 0-100) or PNG (lossless; ``quality`` ignored).

    Raises:
        ImageEncodeError: bad input array, unknown format or quality out of range.
    """
    _check_rgb(rgb)
    codec = {'jpeg': 'jpeg', 'jpg': 'jpeg', 'png': 'png'}.get(fmt.lower())
    if codec is None:
        raise ImageEncodeError(f'unsupported compressed format {fmt!r}; supported: '
                               f'{", ".join(COMPRESSED_FORMATS)}')
    if not 0 <= int(quality) <= 100:
        raise ImageEncodeError(f'JPEG quality must be in [0, 100], got {quality}')
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if codec == 'jpeg' else []
    bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode('.jpg' if codec == 'jpeg' else '.png', bgr, params)
    if not ok:
        raise ImageEncodeError(f'OpenCV failed to encode a {rgb.shape} image as {codec}')
    return encoded.tobytes()


def read_image_file(path: Union[str, Path]) -> np.ndarray:
    """Read a JPEG or PNG file into ``[H, W, 3] uint8 RGB`` with ``decode_compressed``'s checks.

    Raises:
        ImageDecodeError: the file is missing, unreadable, empty, not JPEG/PNG, or corrupt; the
            message names the file.
    """
    path = Path(path)
    try:
        _check_buffer(path.stat().st_size, f'image file {path}')
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ImageDecodeError(f'image file {path} does not exist') from exc
    except OSError as exc:
        raise ImageDecodeError(f'cannot read image file {path}: {exc}') from exc
    if not data:
        raise ImageDecodeError(f'image file {path} is empty')
    try:
        return decode_compressed('', data)
    except ImageDecodeError as exc:
        raise ImageDecodeError(f'image file {path}: {exc}') from exc
