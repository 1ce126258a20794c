"""Property-based fuzzing of the ROS image message conversions (hypothesis, real sensor_msgs).

Every ``sensor_msgs/Image`` (any field values in their ROS ranges) and ``CompressedImage`` (any
format string, random or mutated JPEG/PNG data) gives the reference RGB image or
:class:`ImageRejected` with one of the reasons the nodes count; never another exception. Profiles
as in ``test/test_fuzz.py`` (``VPR_FUZZ_PROFILE=long`` for long runs).
"""

from fuzzing import fuzz, mutated
from hypothesis import given, strategies as st
import numpy as np
from sensor_msgs.msg import CompressedImage, Image
from test_fuzz import check_compressed, FORMATS, raw_is_valid, reference_raw, SEEDS

from vpr_ros.data.image_codec import MAX_SIDE, RAW_ENCODINGS
from vpr_ros.ros.conversions import image_from_msg, ImageRejected

REASONS = {'empty_image', 'image_too_large', 'unsupported_encoding', 'bad_step', 'truncated_data',
           'invalid_image', 'unsupported_format', 'corrupt_compressed'}
UINT32 = st.integers(0, 2 ** 32 - 1)
SIZES = st.one_of(st.integers(0, 12), UINT32, st.sampled_from([MAX_SIDE, MAX_SIDE + 1, 8193]))


@st.composite
def image_messages(draw) -> Image:
    """Return an Image message with near-valid or arbitrary fields."""
    encoding = draw(st.one_of(st.sampled_from(sorted(RAW_ENCODINGS)), st.text(max_size=8)))
    height, width = draw(SIZES), draw(SIZES)
    channels, depth = RAW_ENCODINGS.get(encoding, (3, 1))
    packed = width * channels * depth
    step = draw(st.one_of(st.integers(-1, 7).map(lambda pad: packed + pad), UINT32))
    step = min(max(step, 0), 2 ** 32 - 1)
    size = draw(st.one_of(st.integers(-3, 3).map(lambda cut: step * height + cut),
                          st.integers(0, 256)))
    size = min(max(size, 0), 1 << 16)
    return Image(height=height, width=width, encoding=encoding, step=step,
                 is_bigendian=draw(st.integers(0, 255)),
                 data=draw(st.binary(min_size=size, max_size=size)))


@fuzz(300)
@given(image_messages())
def test_raw_image_messages(msg: Image) -> None:
    """An Image decodes to the numpy reference iff it is valid, else ImageRejected(reason)."""
    data = bytes(msg.data)
    valid = raw_is_valid(msg.encoding, msg.height, msg.width, msg.step, data)
    try:
        image = image_from_msg(msg)
    except ImageRejected as exc:
        assert not valid and exc.reason in REASONS, (exc.reason, str(exc))
        return
    assert valid
    np.testing.assert_array_equal(image, reference_raw(msg.encoding, msg.height, msg.width,
                                                       msg.step, data, bool(msg.is_bigendian)))


def test_raw_message_over_the_byte_limit_is_refused() -> None:
    """A 1000 x 1000 Image with a 600 kB step and no data is refused as too large."""
    msg = Image(height=1000, width=1000, encoding='rgb8', step=600_000, data=b'')
    try:
        image_from_msg(msg)
    except ImageRejected as exc:
        assert exc.reason == 'image_too_large' and '600000' in str(exc)
    else:
        raise AssertionError('a 600 MB raw image was accepted')


@fuzz(300)
@given(FORMATS, st.one_of(st.binary(max_size=256),
                          st.sampled_from(sorted(SEEDS)).flatmap(lambda k: mutated(SEEDS[k]))))
def test_compressed_image_messages(fmt: str, data: bytes) -> None:
    """A CompressedImage gives OpenCV's image or ImageRejected with a known reason."""
    msg = CompressedImage(format=fmt, data=data)
    try:
        image = image_from_msg(msg)
    except ImageRejected as exc:
        assert exc.reason in REASONS, (exc.reason, str(exc))
        return
    check_compressed(fmt, data)
    assert image.dtype == np.uint8 and image.shape[2] == 3
