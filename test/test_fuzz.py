"""Property-based fuzzing of every loader of untrusted bytes (hypothesis).

Raw image buffers, compressed images (random bytes and mutated JPEG/PNG), image files, maps
(mutated in a subprocess, so that a crash inside faiss fails the test) and rosbag2 bags (mutated
mcap and sqlite3 files written with rosbags) must each give a valid result or the module's own
error, never another exception. A decoded raw buffer must equal a numpy reference decoder, and a
buffer is refused exactly when it breaks a rule (encoding, size limits, step, length).

The suite runs the ``fast`` profile (fixed examples, derandomized); ``VPR_FUZZ_PROFILE=long``
runs 50 times more random examples (see docs/reliability.md, "Reliability tests").
"""

import json
import math
from pathlib import Path
import struct
import subprocess
import sys
import tempfile
import zlib

import cv2
from fuzzing import fuzz, mutated
from hypothesis import given, strategies as st
import numpy as np
import pytest

from vpr_ros.data.bag import list_topics, read_frames, write_frames
from vpr_ros.data.frame import Frame
from vpr_ros.data.image_codec import (decode_compressed, decode_raw, encode_compressed,
                                      MAX_BUFFER_BYTES, MAX_PIXELS, MAX_SIDE, RAW_ENCODINGS,
                                      read_image_file)
from vpr_ros.errors import BagError, ImageDecodeError
from vpr_ros.geometry import Pose

WORKER = Path(__file__).with_name('map_fault_worker.py')
CHANNEL_ORDER = {'rgb8': [0, 1, 2], 'bgr8': [2, 1, 0], 'rgba8': [0, 1, 2], 'bgra8': [2, 1, 0],
                 'mono8': [0, 0, 0], '8UC1': [0, 0, 0], 'mono16': [0, 0, 0], '16UC1': [0, 0, 0]}
SIZES = st.one_of(st.integers(-2, 12), st.integers(-2 ** 40, 2 ** 40),
                  st.sampled_from([MAX_SIDE, MAX_SIDE + 1, 8192, 8193]))


@st.composite
def raw_buffers(draw) -> dict:
    """Return decode_raw arguments: mostly near-valid, sometimes anything."""
    encoding = draw(st.one_of(st.sampled_from(sorted(RAW_ENCODINGS)), st.text(max_size=8)))
    height, width = draw(SIZES), draw(SIZES)
    channels, depth = RAW_ENCODINGS.get(encoding, (3, 1))
    step = draw(st.one_of(st.integers(-1, 7).map(lambda pad: max(width, 0) * channels * depth
                                                 + pad), st.integers(-2 ** 40, 2 ** 40)))
    size = draw(st.one_of(st.integers(-3, 3).map(lambda cut: max(step * height, 0) + cut),
                          st.integers(0, 256)))
    size = min(max(size, 0), 1 << 16)
    data = draw(st.binary(min_size=size, max_size=size))
    return {'encoding': encoding, 'height': height, 'width': width, 'step': step, 'data': data,
            'is_bigendian': draw(st.booleans())}


def raw_is_valid(encoding: str, height: int, width: int, step: int, data: bytes) -> bool:
    """Return True when the raw buffer obeys every rule of sensor_msgs/Image and the limits."""
    if encoding not in RAW_ENCODINGS or height <= 0 or width <= 0:
        return False
    channels, depth = RAW_ENCODINGS[encoding]
    return (max(height, width) <= MAX_SIDE and height * width <= MAX_PIXELS
            and step * height <= MAX_BUFFER_BYTES and step >= width * channels * depth
            and len(data) >= step * height)


def reference_raw(encoding: str, height: int, width: int, step: int, data: bytes,
                  is_bigendian: bool) -> np.ndarray:
    """Decode a valid raw buffer with plain numpy (independent of image_codec)."""
    channels, depth = RAW_ENCODINGS[encoding]
    rows = np.frombuffer(data, np.uint8)[:step * height].reshape(height, step)
    pixels = rows[:, :width * channels * depth].reshape(height, width, channels * depth)
    if depth == 2:
        high = 0 if is_bigendian else 1
        pixels = pixels[:, :, high:high + 1]
    return np.ascontiguousarray(pixels[:, :, CHANNEL_ORDER[encoding]])


@fuzz(400)
@given(raw_buffers())
def test_decode_raw_fuzz(args: dict) -> None:
    """decode_raw gives the reference RGB image iff the buffer is valid, else ImageDecodeError."""
    valid = raw_is_valid(args['encoding'], args['height'], args['width'], args['step'],
                         args['data'])
    try:
        image = decode_raw(**args)
    except ImageDecodeError:
        assert not valid, args
        return
    assert valid, args
    np.testing.assert_array_equal(image, reference_raw(**args))


def _seed_images() -> dict:
    """Return small valid JPEG and PNG files (colour, grey, 16-bit grey, with alpha)."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    grey16 = rng.integers(0, 65536, (9, 7), dtype=np.uint16)
    bgra = rng.integers(0, 256, (5, 6, 4), dtype=np.uint8)
    return {'jpeg': encode_compressed(rgb, 'jpeg'), 'png': encode_compressed(rgb, 'png'),
            'png16': cv2.imencode('.png', grey16)[1].tobytes(),
            'png_alpha': cv2.imencode('.png', bgra)[1].tobytes(),
            'jpeg_grey': cv2.imencode('.jpg', rgb[:, :, 0])[1].tobytes()}


SEEDS = _seed_images()
FORMATS = st.one_of(st.sampled_from(['', 'jpeg', 'png', 'rgb8; jpeg compressed bgr8',
                                     'bgr8; png compressed bgr8', 'compressedDepth']),
                    st.text(max_size=12))


def check_compressed(fmt: str, data: bytes) -> None:
    """decode_compressed gives OpenCV's RGB image within the limits, or ImageDecodeError."""
    try:
        image = decode_compressed(fmt, data)
    except ImageDecodeError:
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[0] * image.shape[1] <= MAX_PIXELS and max(image.shape) <= MAX_SIDE
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    reference = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    np.testing.assert_array_equal(image, reference[:, :, ::-1])


@fuzz(200)
@given(FORMATS, st.binary(max_size=512))
def test_decode_compressed_random_bytes(fmt: str, data: bytes) -> None:
    """Random bytes under any format string: an image or ImageDecodeError."""
    check_compressed(fmt, data)


@fuzz(400)
@given(st.sampled_from(sorted(SEEDS)), st.data())
def test_decode_compressed_mutated_images(name: str, data: st.DataObject) -> None:
    """Valid JPEG/PNG files with up to 4 random edits: an image or ImageDecodeError."""
    fmt = data.draw(st.sampled_from(['', 'png' if name.startswith('png') else 'jpeg']))
    check_compressed(fmt, data.draw(mutated(SEEDS[name])))


@fuzz(60)
@given(st.sampled_from(sorted(SEEDS)), st.data())
def test_read_image_file_mutated(name: str, data: st.DataObject) -> None:
    """A mutated image file reads as an image or raises ImageDecodeError naming the file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f'{name}.img'
        path.write_bytes(data.draw(mutated(SEEDS[name])))
        try:
            image = read_image_file(path)
        except ImageDecodeError as exc:
            assert str(path) in str(exc)
            return
        assert image.dtype == np.uint8 and image.shape[2] == 3


# ---- decompression bombs: refused from the header or the sizes, before any pixel is decoded ----

def png_chunk(kind: bytes, body: bytes) -> bytes:
    """Return one PNG chunk with its CRC."""
    return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body))


def grey_png(width: int, height: int) -> bytes:
    """Return a valid 8-bit grey PNG of zeros (highly compressible: a real bomb when large)."""
    packer, row, parts = zlib.compressobj(1), b'\0' * (width + 1), []
    rows_per_chunk = max(1, (1 << 22) // len(row))
    for start in range(0, height, rows_per_chunk):
        parts.append(packer.compress(row * min(rows_per_chunk, height - start)))
    idat = b''.join(parts) + packer.flush()
    ihdr = struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0)
    return (b'\x89PNG\r\n\x1a\n' + png_chunk(b'IHDR', ihdr) + png_chunk(b'IDAT', idat)
            + png_chunk(b'IEND', b''))


def test_png_bomb_over_the_pixel_limit_is_refused() -> None:
    """A valid 9000 x 9000 PNG (81 MP of zeros in 350 kB) is refused naming size and limit."""
    data = grey_png(9000, 9000)
    assert len(data) < 400_000
    with pytest.raises(ImageDecodeError) as info:
        decode_compressed('png', data)
    assert '9000x9000' in str(info.value) and str(MAX_PIXELS) in str(info.value)
    small = grey_png(90, 90)
    assert decode_compressed('png', small).shape == (90, 90, 3)


@pytest.mark.parametrize('codec', ['png', 'jpeg'])
def test_image_over_the_side_limit_is_refused(codec: str) -> None:
    """A 40000 x 8 image (320 kilopixels, one side over 32768) is refused from its header."""
    if codec == 'png':
        data = grey_png(40000, 8)
    else:
        data = bytearray(encode_compressed(np.zeros((8, 16, 3), np.uint8), 'jpeg'))
        sof = data.index(b'\xff\xc0')
        data[sof + 5:sof + 9] = struct.pack('>HH', 8, 40000)
    with pytest.raises(ImageDecodeError) as info:
        decode_compressed(codec, bytes(data))
    assert '40000x8' in str(info.value) and f'{MAX_SIDE} pixels per side' in str(info.value)


def test_raw_buffer_over_the_byte_limit_is_refused() -> None:
    """A 1000 x 1000 raw image with a 600 kB step (600 MB) is refused before its data is read."""
    with pytest.raises(ImageDecodeError) as info:
        decode_raw('rgb8', 1000, 1000, 600_000, b'')
    assert '600000000 bytes' in str(info.value) and str(MAX_BUFFER_BYTES) in str(info.value)


def test_huge_image_file_is_refused_before_reading(tmp_path: Path) -> None:
    """A 600 MiB (sparse) image file is refused from its size, naming the file."""
    path = tmp_path / 'huge.png'
    with open(path, 'wb') as f:
        f.write(SEEDS['png'])
        f.truncate(600 << 20)
    with pytest.raises(ImageDecodeError) as info:
        read_image_file(path)
    assert str(path) in str(info.value) and str(MAX_BUFFER_BYTES) in str(info.value)


# ---- maps and bags ------------------------------------------------------------------------------

def test_map_loader_fuzz(tmp_path: Path) -> None:
    """Mutated flat, HNSW and IVF-PQ maps: a consistent map or MapError (in a subprocess)."""
    examples = 150
    proc = subprocess.run([sys.executable, str(WORKER), 'fuzz-map', str(tmp_path),
                           str(examples)], capture_output=True, text=True, timeout=3000,
                          cwd=WORKER.parent.parent)
    assert proc.returncode == 0, f'map fuzzing failed ({proc.returncode}):\n{proc.stderr}'
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert counts['loaded'] + counts['refused'] >= examples and counts['refused'] > examples // 2


def _bag_frames() -> list[Frame]:
    """Return three small frames with poses."""
    rng = np.random.default_rng(1)
    return [Frame(10 ** 9 + i * 10 ** 8, rng.integers(0, 256, (6, 8, 3), dtype=np.uint8),
                  Pose((float(i), 0.0, 0.0), (0.0, 0.0, 0.0, 1.0), 'map')) for i in range(3)]


@pytest.fixture(scope='module')
def bags(tmp_path_factory) -> dict:
    """Return {name: (storage file name, its bytes, metadata.yaml bytes)} of four small bags."""
    root = tmp_path_factory.mktemp('bags')
    out = {}
    for storage in ('mcap', 'sqlite3'):
        for compressed in (False, True):
            name = f'{storage}_{"jpeg" if compressed else "raw"}'
            bag = write_frames(root / name, _bag_frames(), storage=storage, compressed=compressed)
            data = next(p for p in bag.iterdir() if p.name != 'metadata.yaml')
            out[name] = (data.name, data.read_bytes(), (bag / 'metadata.yaml').read_bytes())
    return out


def read_bag(path: Path) -> None:
    """Read every frame and the topic list; check the frames that come out."""
    topics = list_topics(path)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in topics.items())
    for frame in read_frames(path, 'camera/image_raw', 'camera/pose'):
        assert frame.image.dtype == np.uint8 and frame.image.shape[2] == 3
        assert frame.pose is None or all(math.isfinite(v) for v in frame.pose.position)


@pytest.mark.parametrize('length', [2 ** 63, 2 ** 40, 0])
def test_mcap_record_length_that_lies_is_a_bag_error(bags: dict, tmp_path: Path,
                                                     length: int) -> None:
    """An mcap whose first record claims 2^63, 2^40 or 0 bytes raises BagError (found by fuzzing).

    Without the mapping, rosbags raised OverflowError (2^63) or MemoryError from a huge read.
    """
    file_name, storage, _ = bags['mcap_raw']
    path = tmp_path / file_name
    path.write_bytes(storage[:9] + struct.pack('<Q', length) + storage[17:])
    with pytest.raises(BagError, match=file_name):
        read_bag(path)


@fuzz(150)
@given(st.data())
def test_bag_reader_fuzz(bags: dict, data: st.DataObject) -> None:
    """Mutated bag files (storage bytes or metadata.yaml): frames, or BagError/ImageDecodeError."""
    name = data.draw(st.sampled_from(sorted(bags)))
    file_name, storage, metadata = bags[name]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / name
        folder.mkdir()
        if data.draw(st.booleans()):
            path = folder / file_name
            path.write_bytes(data.draw(mutated(storage)))
        else:
            path = folder
            (folder / file_name).write_bytes(storage)
            (folder / 'metadata.yaml').write_bytes(data.draw(mutated(metadata, max_edits=2)))
        try:
            read_bag(path)
        except (BagError, ImageDecodeError) as exc:
            assert path.name in str(exc), exc
