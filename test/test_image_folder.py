"""Tests of vpr_ros.data.image_folder: file listing, UTM names, CSV poses, the corridor data."""

import math
import types

import cv2
import numpy as np
import pytest

from vpr_ros.data.image_folder import iter_folder, list_images, read_folder, utm_from_name
from vpr_ros.errors import DatasetError, ImageDecodeError

UTM_NAMES = [  # (name, east, north, compass heading or None)
    ('@0543210.50@4181000.25@10@S@37.77@-122.41@pano1@0@045.0@@@@@@.jpg', 543210.5, 4181000.25,
     45.0),
    ('@0543200.00@4181010.00@10@S@37.77@-122.41@pano2@0@@@@@@@.jpg', 543200.0, 4181010.0, None),
    ('@0543190.00@4180990.00@10@S@@@@@180.0@@@@@@.png', 543190.0, 4180990.0, 180.0),
    ('@-0000012.5@0000000.00@.png', -12.5, 0.0, None),
]


def _write_image(path, rgb: np.ndarray) -> None:
    """Write ``rgb`` losslessly (PNG) or as JPEG, following the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = '.png' if path.suffix.lower() == '.png' else '.jpg'
    ok, data = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    path.write_bytes(data.tobytes())


def _reference(path) -> np.ndarray:
    """Read a file with plain OpenCV as RGB."""
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.fixture
def utm_dir(tmp_path):
    """Return a folder of four UTM-named images plus a text file that must be ignored."""
    rng = np.random.default_rng(11)
    for name, *_ in UTM_NAMES:
        _write_image(tmp_path / name, rng.integers(0, 256, (8, 10, 3), dtype=np.uint8))
    (tmp_path / 'notes.txt').write_text('not an image')
    return tmp_path


def test_utm_from_name():
    """UTM coordinates are parsed from the file name only; other names give None."""
    assert utm_from_name('@12.5@-3@x@.jpg') == (12.5, -3.0)
    assert utm_from_name('/data/db/@1@2@.jpg') == (1.0, 2.0)
    assert utm_from_name('/data/a@b/@1@2@.jpg') == (1.0, 2.0)
    for name in ('0000001.jpg', '@east@2@.jpg', '@1@@.jpg', '@nan@2@.jpg', '@1.jpg'):
        assert utm_from_name(name) is None, name


def test_read_folder_with_utm_names(utm_dir):
    """Frames are sorted by name, poses come from the names, stamps are index * 100 ms."""
    frames = read_folder(utm_dir)
    expected = sorted(UTM_NAMES, key=lambda row: row[0])
    assert [f.source for f in frames] == [str(utm_dir / row[0]) for row in expected]
    for index, (frame, (name, east, north, heading)) in enumerate(zip(frames, expected)):
        assert frame.stamp_ns == index * 100_000_000
        np.testing.assert_array_equal(frame.image, _reference(utm_dir / name))
        assert frame.pose.position == (east, north, 0.0)
        assert frame.pose.frame_id == 'utm'
        want_yaw = 0.0 if heading is None else math.radians(90.0 - heading)
        assert math.isclose(math.cos(frame.pose.yaw - want_yaw), 1.0, abs_tol=1e-12)


def test_iter_folder_is_lazy(utm_dir):
    """iter_folder is a generator that yields the same frames as read_folder."""
    lazy = iter_folder(utm_dir)
    assert isinstance(lazy, types.GeneratorType)
    first = next(lazy)
    assert first.source == read_folder(utm_dir)[0].source
    assert len(list(lazy)) == len(UTM_NAMES) - 1


def _rgb_folder(root, names):
    """Write a small random image at each relative path in ``names``."""
    rng = np.random.default_rng(2)
    for name in names:
        _write_image(root / name, rng.integers(0, 256, (6, 7, 3), dtype=np.uint8))


def test_csv_full_poses_and_stamps(tmp_path):
    """The 7-column CSV gives 6-DoF poses and stamps; images without a row get no pose."""
    _rgb_folder(tmp_path / 'img', ['a.png', 'b.PNG', 'c.jpeg', 'sub/d.jpg'])
    csv_path = tmp_path / 'poses.csv'
    csv_path.write_text('filename, x, y, z, qx, qy, qz, qw, stamp_ns\n'
                        'a.png, 1, 2, 3, 0, 0, 0, 1, 5000\n'
                        'c.jpeg, -1, 0.5, 0, 0, 0.6, 0, 0.8,\n'
                        'sub/d.jpg, 4, 4, 4, 1, 0, 0, 0, 7000\n')
    flat = read_folder(tmp_path / 'img', csv_path)
    assert [f.source.split('/')[-1] for f in flat] == ['a.png', 'b.PNG', 'c.jpeg']
    assert [f.stamp_ns for f in flat] == [5000, 100_000_000, 200_000_000]
    assert flat[0].pose.position == (1.0, 2.0, 3.0) and flat[0].pose.frame_id == 'map'
    assert flat[1].pose is None
    assert flat[2].pose.orientation == (0.0, 0.6, 0.0, 0.8)
    deep = read_folder(tmp_path / 'img', csv_path, recursive=True)
    assert len(deep) == 4 and deep[3].stamp_ns == 7000
    assert deep[3].pose.orientation == (1.0, 0.0, 0.0, 0.0)


def test_csv_planar_poses(tmp_path):
    """The x,y,yaw CSV gives planar poses; columns may come in any order."""
    _rgb_folder(tmp_path, ['0.jpg', '1.jpg'])
    csv_path = tmp_path / 'poses.csv'
    csv_path.write_text('yaw,filename,y,x\n0.5,0.jpg,2,1\n-3.0,1.jpg,0,-4\n')
    frames = read_folder(tmp_path, csv_path)
    for frame, (x, y, yaw) in zip(frames, [(1, 2, 0.5), (-4, 0, -3.0)]):
        assert frame.pose.position == (x, y, 0.0)
        assert math.isclose(frame.pose.yaw, yaw, abs_tol=1e-12)


@pytest.mark.parametrize('text, words', [
    ('a.jpg,1,2,0\n', ['filename']),
    ('filename,x,y\na.jpg,1,2\n', ['yaw', 'qw']),
    ('filename,x,y,yaw\na.jpg,1,north,0\n', ['poses.csv:2', 'y']),
    ('filename,x,y,z,qx,qy,qz,qw\na.jpg,0,0,0,0,0,0,2\n', ['poses.csv:2', 'quaternion']),
    ('filename,x,y,yaw\na.jpg,0,0,0\na.jpg,1,1,1\n', ['poses.csv:3', 'repeated']),
    ('filename,x,y,yaw,stamp_ns\na.jpg,0,0,0,1.5e9\n', ['stamp_ns', '1.5e9']),
])
def test_malformed_csv_is_refused(tmp_path, text, words):
    """Missing header or columns and bad values raise DatasetError naming the line."""
    _rgb_folder(tmp_path, ['a.jpg'])
    (tmp_path / 'poses.csv').write_text(text)
    with pytest.raises(DatasetError) as info:
        read_folder(tmp_path, tmp_path / 'poses.csv')
    for word in words:
        assert word in str(info.value)


def test_missing_folder_and_corrupt_image(tmp_path):
    """A missing folder raises DatasetError; a corrupt image names its file."""
    with pytest.raises(DatasetError, match='does not exist'):
        read_folder(tmp_path / 'missing')
    with pytest.raises(DatasetError, match='poses.csv'):
        read_folder(tmp_path, tmp_path / 'poses.csv')
    (tmp_path / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 truncated')
    with pytest.raises(ImageDecodeError, match='broken.jpg'):
        read_folder(tmp_path)


def test_corridor_counts_and_pixels(corridor_dir):
    """The corridor set reads as 111 + 111 sorted 160x120 frames without poses."""
    query = read_folder(corridor_dir / 'query')
    assert len(query) == 111
    assert [f.source.rsplit('/', 1)[-1] for f in query] == [f'{i:07d}.jpg' for i in range(111)]
    assert all(f.image.shape == (120, 160, 3) and f.pose is None for f in query)
    np.testing.assert_array_equal(query[42].image, _reference(corridor_dir / 'query/0000042.jpg'))
    both = read_folder(corridor_dir, recursive=True)
    assert len(both) == 222 and len(list_images(corridor_dir / 'ref')) == 111
    assert both[111].source == str(corridor_dir / 'ref' / '0000000.jpg')
