"""Tests of vpr_ros.data.image_codec against numpy / OpenCV references and malformed inputs."""

import array
import struct
import zlib

import cv2
import numpy as np
import pytest

from vpr_ros.data.image_codec import (decode_compressed, decode_raw, encode_compressed, encode_raw,
                                      MAX_PIXELS, RAW_ENCODINGS, RawImage, read_image_file)
from vpr_ros.errors import ImageDecodeError, ImageEncodeError

H, W = 9, 13


@pytest.fixture
def rng() -> np.random.Generator:
    """Return a seeded random generator."""
    return np.random.default_rng(7)


@pytest.fixture
def rgb(rng: np.random.Generator) -> np.ndarray:
    """Return a random ``[H, W, 3] uint8`` RGB image."""
    return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


def _raw_reference(encoding: str, rng: np.random.Generator, bigendian: bool = False):
    """Return (packed pixel bytes [H, W*bpp], expected RGB) built with plain numpy."""
    if encoding in ('mono16', '16UC1'):
        values = rng.integers(0, 65536, (H, W), dtype=np.uint16)
        packed = values.astype('>u2' if bigendian else '<u2').view(np.uint8).reshape(H, -1)
        return packed, np.stack([(values >> 8).astype(np.uint8)] * 3, axis=2)
    channels = RAW_ENCODINGS[encoding][0]
    pixels = rng.integers(0, 256, (H, W, channels), dtype=np.uint8)
    if channels == 1:
        expected = np.concatenate([pixels] * 3, axis=2)
    elif encoding.startswith('bgr'):
        expected = np.stack([pixels[:, :, 2], pixels[:, :, 1], pixels[:, :, 0]], axis=2)
    else:
        expected = pixels[:, :, :3].copy()
    return pixels.reshape(H, -1), expected


@pytest.mark.parametrize('encoding', sorted(RAW_ENCODINGS))
@pytest.mark.parametrize('padding', [0, 5])
def test_decode_raw_matches_numpy_reference(encoding, padding, rng):
    """Every encoding, packed and with row padding, decodes to the reference RGB."""
    packed, expected = _raw_reference(encoding, rng)
    garbage = rng.integers(0, 256, (H, padding), dtype=np.uint8)
    rows = np.concatenate([packed, garbage], axis=1)
    for data in (rows.tobytes(), memoryview(rows.tobytes()), rows.reshape(-1),
                 array.array('B', rows.tobytes())):
        out = decode_raw(encoding, H, W, rows.shape[1], data)
        assert out.shape == (H, W, 3) and out.dtype == np.uint8
        np.testing.assert_array_equal(out, expected)
        assert out.flags.c_contiguous and out.flags.writeable


@pytest.mark.parametrize('encoding', ['mono16', '16UC1'])
def test_decode_raw_big_endian_16_bit(encoding, rng):
    """Big-endian 16-bit data keeps its high byte."""
    packed, expected = _raw_reference(encoding, rng, bigendian=True)
    out = decode_raw(encoding, H, W, packed.shape[1], packed.tobytes(), is_bigendian=True)
    np.testing.assert_array_equal(out, expected)


def test_decode_raw_does_not_alias_input(rng):
    """The result is a copy: changing it leaves the message buffer untouched."""
    data = rng.integers(0, 256, H * W * 3, dtype=np.uint8)
    before = data.copy()
    out = decode_raw('rgb8', H, W, W * 3, data)
    out[:] = 0
    np.testing.assert_array_equal(data, before)


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'rgba8', 'bgra8'])
def test_encode_raw_colour_round_trip(encoding, rgb):
    """Colour encodings are lossless and laid out as numpy says."""
    raw = encode_raw(rgb, encoding)
    channels = RAW_ENCODINGS[encoding][0]
    assert (raw.height, raw.width, raw.encoding, raw.step) == (H, W, encoding, W * channels)
    assert len(raw.data) == H * W * channels
    pixels = np.frombuffer(raw.data, np.uint8).reshape(H, W, channels)
    order = [2, 1, 0] if encoding.startswith('bgr') else [0, 1, 2]
    np.testing.assert_array_equal(pixels[:, :, :3], rgb[:, :, order])
    if channels == 4:
        assert (pixels[:, :, 3] == 255).all()
    np.testing.assert_array_equal(decode_raw(encoding, H, W, raw.step, raw.data), rgb)


@pytest.mark.parametrize('encoding', ['mono8', '8UC1', 'mono16', '16UC1'])
def test_encode_raw_mono_gives_bt601_luma(encoding, rgb):
    """Mono encodings store the BT.601 luma (within 1 of the float formula)."""
    raw = encode_raw(rgb, encoding)
    out = decode_raw(encoding, raw.height, raw.width, raw.step, raw.data)
    luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    assert np.abs(out[:, :, 0].astype(np.float64) - luma).max() <= 1.0
    np.testing.assert_array_equal(out[:, :, 0], out[:, :, 2])
    with pytest.raises(AttributeError):
        raw.height = 1


@pytest.mark.parametrize('kwargs, words', [
    ({'encoding': 'rgb8', 'height': H, 'width': W, 'step': W * 3 - 1}, ['step', str(W * 3 - 1)]),
    ({'encoding': 'rgb8', 'height': H, 'width': W, 'step': W * 3, 'cut': 1},
     ['truncated', str(H * W * 3)]),
    ({'encoding': 'yuv422', 'height': H, 'width': W, 'step': W * 2}, ['yuv422', 'rgb8', 'mono16']),
    ({'encoding': 'rgb8', 'height': H, 'width': 0, 'step': 0}, ['width=0']),
    ({'encoding': 'mono8', 'height': -1, 'width': W, 'step': W}, ['height=-1']),
    ({'encoding': 'mono8', 'height': 8193, 'width': 8192, 'step': 8192},
     ['exceeds', str(MAX_PIXELS)]),
])
def test_decode_raw_rejects_malformed(kwargs, words):
    """Each malformed buffer raises ImageDecodeError with an informative message."""
    cut = kwargs.pop('cut', 0)
    data = bytes(max(kwargs['step'] * max(kwargs['height'], 0) - cut, 0))
    with pytest.raises(ImageDecodeError) as info:
        decode_raw(data=data, **kwargs)
    for word in words:
        assert word in str(info.value)


def test_decode_raw_rejects_wrong_dtype():
    """A non-uint8 array is refused rather than reinterpreted."""
    with pytest.raises(ImageDecodeError, match='uint8'):
        decode_raw('mono8', 2, 2, 2, np.zeros(4, np.float32))


def _cv_reference(data: bytes) -> np.ndarray:
    """Decode with plain OpenCV (BGR) and convert to RGB."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@pytest.mark.parametrize('fmt', ['png', 'bgr8; png compressed bgr8', ''])
def test_png_round_trip_is_lossless(fmt, rgb):
    """PNG encoding then decoding returns the same pixels."""
    data = encode_compressed(rgb, 'png')
    assert data.startswith(b'\x89PNG')
    np.testing.assert_array_equal(decode_compressed(fmt, data), rgb)


@pytest.mark.parametrize('fmt', ['jpeg', 'jpg', 'rgb8; jpeg compressed bgr8', ''])
def test_jpeg_decode_matches_opencv(fmt, rng):
    """JPEG decoding equals OpenCV's own decode and stays close to the source image."""
    smooth = cv2.resize(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8), (40, 32))
    data = encode_compressed(smooth, 'jpeg', quality=95)
    out = decode_compressed(fmt, data)
    np.testing.assert_array_equal(out, _cv_reference(data))
    assert np.abs(out.astype(int) - smooth.astype(int)).mean() < 4.0


def test_grey_and_alpha_png_become_rgb(rgb):
    """A grey PNG is replicated; an RGBA PNG loses its alpha."""
    grey = rgb[:, :, 0]
    ok, data = cv2.imencode('.png', grey)
    np.testing.assert_array_equal(decode_compressed('png', data.tobytes()),
                                  np.stack([grey] * 3, axis=2))
    bgra = np.concatenate([rgb[:, :, ::-1], np.full((H, W, 1), 7, np.uint8)], axis=2)
    ok, data = cv2.imencode('.png', bgra)
    np.testing.assert_array_equal(decode_compressed('png', data.tobytes()), rgb)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    """Return one PNG chunk with a valid CRC."""
    return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body))


def test_png_bomb_header_is_refused_before_decoding():
    """A 100-byte PNG whose IHDR claims 100000 x 100000 pixels is refused from its header."""
    ihdr = struct.pack('>IIBBBBB', 100000, 100000, 8, 2, 0, 0, 0)
    data = (b'\x89PNG\r\n\x1a\n' + _png_chunk(b'IHDR', ihdr)
            + _png_chunk(b'IDAT', zlib.compress(b'\x00' * 64)) + _png_chunk(b'IEND', b''))
    assert len(data) < 120
    with pytest.raises(ImageDecodeError) as info:
        decode_compressed('png', data)
    assert '100000x100000' in str(info.value) and 'exceeds' in str(info.value)


def _sof_offset(data: bytes) -> int:
    """Return the offset of the baseline SOF0 marker in a JPEG produced by OpenCV."""
    offset = data.find(b'\xff\xc0')
    assert offset > 0
    return offset


def test_jpeg_bomb_header_is_refused(rgb):
    """A JPEG whose SOF claims 60000 x 60000 pixels is refused from its header."""
    data = bytearray(encode_compressed(rgb, 'jpeg'))
    sof = _sof_offset(bytes(data))
    assert struct.unpack('>HH', data[sof + 5:sof + 9]) == (H, W)
    data[sof + 5:sof + 9] = struct.pack('>HH', 60000, 60000)
    with pytest.raises(ImageDecodeError, match='60000x60000'):
        decode_compressed('jpeg', bytes(data))


@pytest.mark.parametrize('damage, words', [
    ('truncated', ['corrupt jpeg', 'OpenCV']), ('garbage', ['neither JPEG nor PNG']),
    ('no_sof', ['no frame header (SOF)']), ('zero_height', ['height=0']),
])
def test_corrupt_jpeg_is_refused(damage, words, rgb):
    """Truncated, non-image, SOF-less and zero-size JPEG data raise ImageDecodeError."""
    data = encode_compressed(rgb, 'jpeg')
    sof = _sof_offset(data)
    damaged = {
        'truncated': data[:len(data) // 2],
        'garbage': b'this is not an image at all',
        'no_sof': data[:sof] + b'\xff\xda\x00\x02' + data[sof + 4:],
        'zero_height': data[:sof + 5] + b'\x00\x00' + data[sof + 7:],
    }[damage]
    with pytest.raises(ImageDecodeError) as info:
        decode_compressed('jpeg', damaged)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize('fmt, words', [
    ('png', ['png', 'jpeg']), ('tiff', ['tiff', 'supported']),
    ('16UC1; compressedDepth png', ['compressedDepth']),
])
def test_decode_compressed_rejects_bad_format(fmt, words, rgb):
    """A format naming another or an unsupported codec is refused with its name."""
    with pytest.raises(ImageDecodeError) as info:
        decode_compressed(fmt, encode_compressed(rgb, 'jpeg'))
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize('bad', [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32),
                                 np.zeros((0, 4, 3), np.uint8), np.zeros((4, 4, 4), np.uint8)])
def test_encoders_reject_non_rgb(bad):
    """Encoders accept only non-empty [H, W, 3] uint8 arrays."""
    with pytest.raises(ImageEncodeError, match='uint8 RGB'):
        encode_raw(bad)
    with pytest.raises(ImageEncodeError, match='uint8 RGB'):
        encode_compressed(bad)


def test_encoders_reject_bad_options(rgb):
    """Unknown encodings/formats and out-of-range quality are refused."""
    with pytest.raises(ImageEncodeError, match='yuv422'):
        encode_raw(rgb, 'yuv422')
    with pytest.raises(ImageEncodeError, match='webp'):
        encode_compressed(rgb, 'webp')
    with pytest.raises(ImageEncodeError, match='quality'):
        encode_compressed(rgb, 'jpeg', quality=101)


def test_read_image_file(tmp_path, rgb):
    """Files decode like the bytes; missing, empty and corrupt files name the path."""
    good = tmp_path / 'good.png'
    good.write_bytes(encode_compressed(rgb, 'png'))
    np.testing.assert_array_equal(read_image_file(good), rgb)
    np.testing.assert_array_equal(read_image_file(str(good)), rgb)
    empty, corrupt = tmp_path / 'empty.jpg', tmp_path / 'corrupt.jpg'
    empty.write_bytes(b'')
    corrupt.write_bytes(encode_compressed(rgb, 'jpeg')[:40])
    for path, word in ((tmp_path / 'missing.jpg', 'does not exist'), (empty, 'empty'),
                       (corrupt, 'corrupt')):
        with pytest.raises(ImageDecodeError) as info:
            read_image_file(path)
        assert str(path) in str(info.value) and word in str(info.value)


def test_raw_image_is_frozen_dataclass():
    """Check that the fields of a RawImage cannot be reassigned."""
    raw = RawImage(1, 1, 'mono8', 1, b'\x00')
    with pytest.raises(AttributeError):
        raw.data = b'\x01'
