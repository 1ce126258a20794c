"""Every benchmark reader on tiny generated folders and files, and the corridor data set."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from vpr_ros.data.benchmarks.dataset import EvalDataset
from vpr_ros.data.benchmarks.formats import load_dataset
from vpr_ros.data.benchmarks.image_folders import read_folder_dataset
from vpr_ros.data.benchmarks.index_list import read_index_list_dataset
from vpr_ros.data.benchmarks.msls import read_msls_test, read_msls_val, write_msls_submission
from vpr_ros.data.benchmarks.netvlad import read_pittsburgh, read_tokyo247
from vpr_ros.data.benchmarks.nordland import nordland_positives, read_nordland
from vpr_ros.data.benchmarks.traversals import pairs_from_traversals, read_bag_pair
from vpr_ros.data.frame import Frame
from vpr_ros.data.image_codec import encode_compressed
from vpr_ros.errors import DatasetError
from vpr_ros.geometry import pose_from_xy_yaw


def _image(seed: int, height: int = 6, width: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _write_image(path: Path, seed: int = 0, height: int = 6, width: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = 'png' if path.suffix == '.png' else 'jpeg'
    path.write_bytes(encode_compressed(_image(seed, height, width), codec))
    return path


def _utm_name(east: float, north: float, tag: str = '') -> str:
    return f'@{east}@{north}@17@T@@@{tag}@@@@@@@.jpg'


def _brute_positives(q_xy: list, db_xy: list, radius: float) -> list:
    return [[j for j, d in enumerate(db_xy) if math.dist(q, d) <= radius] for q in q_xy]


# ----------------------------------------------------------------------------------- folder

DB_XY = [(0.0, 0.0), (10.0, 0.0), (30.0, 0.0), (60.0, 5.0), (100.0, 0.0)]
Q_XY = [(5.0, 0.0), (55.0, 0.0), (500.0, 500.0)]


def _folder_dataset(root: Path) -> Path:
    for i, (e, n) in enumerate(DB_XY):
        _write_image(root / 'database' / f'{i:02d}' / _utm_name(e, n, f'db{i}'), i)
    for i, (e, n) in enumerate(Q_XY):
        _write_image(root / 'queries' / f'q{i}' / _utm_name(e, n, f'q{i}'), 100 + i)
    return root


def test_folder_reader_positives_match_brute_force(tmp_path: Path) -> None:
    """Recursive, sorted listing; positives are the database images within 25 m."""
    dataset = read_folder_dataset(_folder_dataset(tmp_path / 'set'))
    assert dataset.name == 'set'
    assert (dataset.num_database, dataset.num_queries) == (5, 3)
    assert [list(p) for p in dataset.positives] == _brute_positives(Q_XY, DB_XY, 25.0)
    assert dataset.queries_without_positives == 1
    assert dataset.database_image(1).shape == (6, 8, 3)
    assert list(dataset.query_stamps_ns()) == [0, 100_000_000, 200_000_000]


def test_folder_reader_radius_and_paths_listing(tmp_path: Path) -> None:
    """A smaller radius shrinks the positives; ``<folder>_images_paths.txt`` sets the order."""
    root = _folder_dataset(tmp_path / 'set')
    assert [list(p) for p in read_folder_dataset(root, radius_m=7.5).positives] == [
        [0, 1], [3], []]
    names = sorted(p.relative_to(root / 'queries').as_posix()
                   for p in (root / 'queries').rglob('*.jpg'))
    (root / 'queries_images_paths.txt').write_text('\n'.join(reversed(names)) + '\n')
    dataset = read_folder_dataset(root, radius_m=7.5)
    assert [list(p) for p in dataset.positives] == [[], [3], [0, 1]]


def test_folder_reader_rejects_names_without_utm(tmp_path: Path) -> None:
    """An image whose name has no @east@north@ fields is refused by name."""
    root = _folder_dataset(tmp_path / 'set')
    _write_image(root / 'queries' / 'plain.jpg')
    with pytest.raises(DatasetError, match='plain.jpg'):
        read_folder_dataset(root)


# ------------------------------------------------------------------------------ index list

def _index_list_folders(root: Path, num_queries: int = 4, num_db: int = 6) -> Path:
    for i in range(num_db):
        _write_image(root / 'ref' / f'{i:07d}.jpg', i)
    for i in range(num_queries):
        _write_image(root / 'query' / f'{i:07d}.jpg', 50 + i)
    return root


def test_index_list_json_clips_and_defaults(tmp_path: Path) -> None:
    """Out-of-range indices are clipped, duplicates merged, unlisted queries get none."""
    root = _index_list_folders(tmp_path / 'set')
    gt = [{'query': 0, 'positives': [0, 1]}, {'query': 1, 'positives': [5, 6, 7, 5]},
          {'query': 3, 'positives': [-1, 2]}]
    (root / 'ground_truth.json').write_text(json.dumps(gt))
    dataset = read_index_list_dataset(root)
    assert [list(p) for p in dataset.positives] == [[0, 1], [5], [], [2]]
    assert dataset.query_key(3) == '0000003'


def test_index_list_json_errors_name_the_problem(tmp_path: Path) -> None:
    """A query index beyond the folder, or a malformed entry, raises DatasetError."""
    root = _index_list_folders(tmp_path / 'set')
    (root / 'ground_truth.json').write_text(json.dumps([{'query': 9, 'positives': [0]}]))
    with pytest.raises(DatasetError, match='query 9'):
        read_index_list_dataset(root)
    (root / 'ground_truth.json').write_text(json.dumps([{'q': 0}]))
    with pytest.raises(DatasetError, match='entry 0'):
        read_index_list_dataset(root)


def test_index_list_gthard_matrix(tmp_path: Path) -> None:
    """A VPR_Tutorial ``GThard [db, q]`` boolean matrix gives the same lists."""
    root = _index_list_folders(tmp_path / 'set', num_queries=3, num_db=4)
    matrix = np.zeros((4, 3), dtype=bool)
    matrix[[0, 1], 0] = True
    matrix[3, 2] = True
    np.savez(root / 'GT.npz', GThard=matrix, GTsoft=matrix)
    dataset = read_index_list_dataset(root, ground_truth='GT.npz')
    assert [list(p) for p in dataset.positives] == [[0, 1], [], [3]]
    np.savez(root / 'bad.npz', GThard=matrix.T)
    with pytest.raises(DatasetError, match='shape'):
        read_index_list_dataset(root, ground_truth='bad.npz')


def test_corridor_index_list(corridor_dir: Path) -> None:
    """The corridor: 111 queries and references, positives equal to the JSON file."""
    dataset = read_index_list_dataset(corridor_dir)
    gt = json.loads((corridor_dir / 'ground_truth.json').read_text())
    assert (dataset.num_queries, dataset.num_database) == (111, 111)
    assert [list(p) for p in dataset.positives] == [e['positives'] for e in gt]
    assert dataset.queries_without_positives == 0
    assert dataset.query_image(0).shape == (120, 160, 3)


# -------------------------------------------------------------------------------- Nordland

def test_nordland_positives_follow_the_one_frame_protocol() -> None:
    """Query i matches references 10i-1..10i+1 (q0 -> [0, 1], q1 -> [9, 10, 11])."""
    positives = nordland_positives(5, 45)
    assert [list(p) for p in positives] == [[0, 1], [9, 10, 11], [19, 20, 21], [29, 30, 31],
                                            [39, 40, 41]]
    assert list(nordland_positives(2, 12, tolerance=2)[1]) == [8, 9, 10, 11]


def test_nordland_reader(tmp_path: Path) -> None:
    """The reader pairs sorted ``query/`` and ``ref/`` images with that rule."""
    root = tmp_path / 'nordland'
    for i in range(25):
        _write_image(root / 'ref' / f'{i:07d}.jpg', i)
    for i in range(3):
        _write_image(root / 'query' / f'{i:07d}.jpg', 40 + i)
    dataset = read_nordland(root)
    assert dataset.name == 'nordland'
    assert [list(p) for p in dataset.positives] == [[0, 1], [9, 10, 11], [19, 20, 21]]


# ------------------------------------------------------------------------------------ MSLS

def _write_msls_part(part: Path, rows: list) -> None:
    """rows: (key, east, north, pano)."""
    part.mkdir(parents=True, exist_ok=True)
    post = [',key,easting,northing,zone,night,view_direction'] + [
        f'{i},{k},{e},{n},10S,False,Forward' for i, (k, e, n, _) in enumerate(rows)]
    raw = [',key,lon,lat,ca,captured_at,pano'] + [
        f'{i},{k},0,0,0,0,{pano}' for i, (k, _, _, pano) in enumerate(rows)]
    (part / 'postprocessed.csv').write_text('\n'.join(post) + '\n')
    (part / 'raw.csv').write_text('\n'.join(raw) + '\n')
    for i, (key, *_unused) in enumerate(rows):
        _write_image(part / 'images' / f'{key}.jpg', i)


def _msls_root(root: Path) -> Path:
    city = root / 'train_val' / 'cph'
    _write_msls_part(city / 'database', [('d0', 0, 0, False), ('d1', 20, 0, False),
                                         ('d2', 5, 0, True), ('d3', 200, 0, False)])
    _write_msls_part(city / 'query', [('q0', 1, 0, False), ('q1', 1000, 0, False),
                                      ('q2', 199, 1, False), ('q3', 2, 0, True)])
    return root


def test_msls_val_drops_panoramas_and_queries_without_positives(tmp_path: Path) -> None:
    """Panoramas leave both sides; q1 has no database image within 25 m and is dropped."""
    dataset = read_msls_val(_msls_root(tmp_path / 'msls'), cities=('cph',))
    assert [dataset.database_key(j) for j in range(dataset.num_database)] == ['d0', 'd1', 'd3']
    assert [dataset.query_key(q) for q in range(dataset.num_queries)] == ['q0', 'q2']
    assert [list(p) for p in dataset.positives] == [[0, 1], [2]]


def test_msls_val_official_index_lists(tmp_path: Path) -> None:
    """The official lists fix the order and the query selection; object arrays are refused."""
    root = _msls_root(tmp_path / 'msls')
    lists = tmp_path / 'lists'
    lists.mkdir()
    prefix = 'train_val/cph/'
    np.save(lists / 'msls_val_dbImages.npy', np.array([prefix + 'database/images/d3.jpg',
                                                       prefix + 'database/images/d0.jpg']))
    np.save(lists / 'msls_val_qImages.npy', np.array([prefix + 'query/images/q2.jpg',
                                                      prefix + 'query/images/q0.jpg']))
    np.save(lists / 'msls_val_qIdx.npy', np.array([1]))
    dataset = read_msls_val(root, index_dir=lists, cities=('cph',))
    assert [dataset.database_key(j) for j in range(2)] == ['d3', 'd0']
    assert dataset.num_queries == 1 and dataset.query_key(0) == 'q0'
    assert [list(p) for p in dataset.positives] == [[1]]
    for name in ('msls_val_dbImages.npy', 'msls_val_qImages.npy', 'msls_val_qIdx.npy'):
        (root / name).write_bytes((lists / name).read_bytes())
    assert read_msls_val(root, cities=('cph',)).num_queries == 1
    # An object array is stored pickled (np.save's default); the reader must refuse it.
    np.save(lists / 'msls_val_qIdx.npy', np.array([[1], [0, 1]], dtype=object))
    with pytest.raises(DatasetError, match='unpickling'):
        read_msls_val(root, index_dir=lists, cities=('cph',))


def test_msls_test_and_submission_file(tmp_path: Path) -> None:
    """The challenge file has one ``query db1 .. dbK`` line per query, keys are file stems."""
    root = tmp_path / 'msls'
    for key in ('qa', 'qb'):
        _write_image(root / 'test' / 'miami' / 'query' / 'images' / f'{key}.jpg')
    for key in ('da', 'db', 'dc'):
        _write_image(root / 'test' / 'miami' / 'database' / 'images' / f'{key}.jpg')
    dataset = read_msls_test(root, cities=('miami',))
    assert dataset.queries_without_positives == 2
    out = write_msls_submission(tmp_path / 'out' / 'preds.txt', dataset,
                                np.array([[2, 0, 1], [1, -1, -1]]))
    assert out.read_text().splitlines() == ['qa dc da db', 'qb db']
    with pytest.raises(DatasetError, match='shape'):
        write_msls_submission(tmp_path / 'x.txt', dataset, np.zeros((3, 2)))


# ---------------------------------------------------------------------- Pittsburgh, Tokyo

def _save_db_struct(path: Path, db_names: list, db_xy: list, q_names: list, q_xy: list) -> None:
    from scipy.io import savemat
    struct = {'whichSet': 'test', 'dbImageFns': np.array(db_names, dtype=object)[:, None],
              'utmDb': np.array(db_xy, dtype=float).T,
              'qImageFns': np.array(q_names, dtype=object)[:, None],
              'utmQ': np.array(q_xy, dtype=float).T, 'numImages': len(db_names),
              'numQueries': len(q_names), 'posDistThr': 25.0}
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(path), {'dbStruct': struct})


def test_pittsburgh_netvlad_mat(tmp_path: Path) -> None:
    """``datasets/pitts30k_test.mat``: database under the root, queries under queries_real/."""
    root = tmp_path / 'pitts'
    db_names = [f'000/{i:06d}_pitch1_yaw1.jpg' for i in range(len(DB_XY))]
    q_names = [f'000/{i:06d}_pitch1_yaw1.jpg' for i in range(len(Q_XY))]
    for i, name in enumerate(db_names):
        _write_image(root / name, i)
    for i, name in enumerate(q_names):
        _write_image(root / 'queries_real' / name, 10 + i)
    _save_db_struct(root / 'datasets' / 'pitts30k_test.mat', db_names, DB_XY, q_names, Q_XY)
    dataset = read_pittsburgh(root)
    assert dataset.name == 'pitts30k-test'
    assert [list(p) for p in dataset.positives] == _brute_positives(Q_XY, DB_XY, 25.0)
    assert dataset.queries[0] == root / 'queries_real' / q_names[0]
    with pytest.raises(DatasetError, match='pitts250k_test.mat'):
        read_pittsburgh(root, variant='250k')


def test_pittsburgh_downloader_folders(tmp_path: Path) -> None:
    """``images/test/{database,queries}`` with @UTM names is read as the folder format."""
    root = tmp_path / 'pitts30k'
    _folder_dataset(root / 'images' / 'test')
    dataset = read_pittsburgh(root)
    assert dataset.name == 'pitts30k-test'
    assert [list(p) for p in dataset.positives] == _brute_positives(Q_XY, DB_XY, 25.0)


def test_tokyo_queries_shrink_to_max_side_640(tmp_path: Path) -> None:
    """Tokyo 24/7 queries (PNG in the .mat, JPEG on disk) come back with longer side 640."""
    root = tmp_path / 'tokyo'
    db_names = [f'03814/{i}.jpg' for i in range(len(DB_XY))]
    q_names = [f'{i:05d}.png' for i in range(len(Q_XY))]
    for i, name in enumerate(db_names):
        _write_image(root / name, i)
    for i, name in enumerate(q_names):
        _write_image(root / '247query_v3' / Path(name).with_suffix('.jpg'), i, 600, 800)
    _save_db_struct(root / 'tokyo247.mat', db_names, DB_XY, q_names, Q_XY)
    dataset = read_tokyo247(root)
    assert dataset.query_max_side == 640
    assert dataset.query_image(0).shape == (480, 640, 3)
    assert dataset.database_image(0).shape == (6, 8, 3)
    assert [list(p) for p in dataset.positives] == _brute_positives(Q_XY, DB_XY, 25.0)
    frames = list(dataset.query_frames())
    assert frames[2].image.shape == (480, 640, 3)


# ------------------------------------------------------------------------------ pose-based

def _frames(xy_yaw: list, seed: int) -> list:
    return [Frame(1000 + i, _image(seed + i), pose_from_xy_yaw(x, y, yaw), f'f{i}')
            for i, (x, y, yaw) in enumerate(xy_yaw)]


def test_pairs_from_traversals_radius_and_heading(tmp_path: Path) -> None:
    """Positives by radius, then by heading; frames without a pose are refused."""
    database = _frames([(0, 0, 0.0), (3, 0, math.pi), (8, 0, 0.1)], 0)
    queries = _frames([(1, 0, 0.0), (50, 0, 0.0)], 10)
    dataset = pairs_from_traversals(database, queries, radius_m=7.5)
    assert [list(p) for p in dataset.positives] == [[0, 1, 2], []]
    limited = pairs_from_traversals(database, queries, 7.5, math.radians(30))
    assert [list(p) for p in limited.positives] == [[0, 2], []]
    assert limited.info['max_yaw_diff_deg'] == pytest.approx(30)
    assert list(dataset.query_stamps_ns()) == [1000, 1001]
    with pytest.raises(DatasetError, match='no pose'):
        pairs_from_traversals(database, [Frame(0, _image(0))])


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_bag_pair_reader(tmp_path: Path, storage: str) -> None:
    """Two bags written with rosbags give the same pairs as the frames they hold."""
    from vpr_ros.data.bag import write_frames
    database = _frames([(0, 0, 0.0), (10, 0, 0.0), (40, 0, 0.0)], 0)
    queries = [Frame(10**9 + f.stamp_ns, f.image, f.pose, f.source)
               for f in _frames([(2, 0, 0.0), (38, 0, 0.0)], 20)]
    write_frames(tmp_path / 'map', database, 'cam', 'odom', storage=storage)
    write_frames(tmp_path / 'query', queries, 'cam', 'odom', storage=storage)
    dataset = read_bag_pair(tmp_path / 'map', tmp_path / 'query', 'cam', 'odom', radius_m=10)
    expected = pairs_from_traversals(database, queries, radius_m=10)
    assert [list(p) for p in dataset.positives] == [list(p) for p in expected.positives] == [
        [0, 1], [2]]
    assert np.array_equal(dataset.query_image(1), queries[1].image)
    assert dataset.info['format'] == 'bags'
    via_dispatch = load_dataset('bags', tmp_path / 'map', query_bag=tmp_path / 'query',
                                image_topic='cam', pose_topic='odom', radius_m=10)
    assert [list(p) for p in via_dispatch.positives] == [[0, 1], [2]]


# ------------------------------------------------------------------------------ dispatcher

def test_load_dataset_dispatch_and_errors(tmp_path: Path) -> None:
    """Formats dispatch to their reader; unknown formats and options are named."""
    root = _folder_dataset(tmp_path / 'set')
    assert load_dataset('folder', root, radius_m=5.0).num_queries == 3
    with pytest.raises(DatasetError, match='unknown dataset format'):
        load_dataset('kitti', root)
    with pytest.raises(DatasetError, match='bad option'):
        load_dataset('folder', root, radius=5.0)
    with pytest.raises(DatasetError, match='query bag'):
        load_dataset('bags', root)


def test_eval_dataset_validates_positives() -> None:
    """Positive lists must match the queries and stay inside the database."""
    with pytest.raises(DatasetError, match='positive lists'):
        EvalDataset('x', (Path('a.jpg'),), (Path('b.jpg'),), ())
    with pytest.raises(DatasetError, match='outside'):
        EvalDataset('x', (Path('a.jpg'),), (Path('b.jpg'),), (np.array([1]),))


# ------------------------------------------------------------------ loop-closure sequences

SEQ_FRAMES = 30
SEQ_GAP = 10


def _sequence_images(root: Path, count: int = SEQ_FRAMES, folder: str = 'images') -> Path:
    """Write ``1.png .. count.png`` (unpadded names: capture order is numeric, not textual)."""
    for k in range(count):
        _write_image(root / folder / f'{k + 1}.png', 200 + k)
    return root


def _loop_matrix() -> np.ndarray:
    """Frames 20..29 revisit 0..9; one pair in the upper triangle; one too close in time."""
    matrix = np.zeros((SEQ_FRAMES, SEQ_FRAMES), dtype=np.uint8)
    for i in range(20, 30):
        matrix[i, i - 20] = 1
    matrix[4, 27] = 1           # upper triangle: frames 4 and 27 show the same place
    matrix[12, 8] = 1           # 4 frames apart: below the minimum gap, never a positive
    matrix[15, 15 - SEQ_GAP] = 1  # exactly min_gap frames apart: a positive (inclusive)
    return matrix


def _brute_loop_positives(matrix: np.ndarray, gap: int) -> list:
    n = len(matrix)
    return [[j for j in range(n) if (matrix[i, j] or matrix[j, i]) and j <= i - gap]
            for i in range(n)]


def test_loop_matrix_npy_mat_npz_match_brute_force(tmp_path: Path) -> None:
    """A square matrix in .npy, .mat (found among other variables, or sparse) or .npz agrees."""
    from scipy.io import savemat
    from scipy.sparse import csc_matrix
    from vpr_ros.data.benchmarks.loop_matrix import read_loop_matrix_dataset
    root = _sequence_images(tmp_path / 'seq')
    matrix = _loop_matrix()
    np.save(root / 'gt.npy', matrix)
    savemat(root / 'gt.mat', {'GT': matrix.astype(float), 'fps': 10.0,
                              'names': np.zeros((SEQ_FRAMES, 2))})
    savemat(root / 'sparse.mat', {'L': csc_matrix(matrix.astype(float))})
    np.savez(root / 'gt.npz', loops=matrix.astype(bool))
    expected = _brute_loop_positives(matrix, SEQ_GAP)
    assert expected[15] == [5] and expected[12] == [] and expected[27] == [4, 7]
    for name in ('gt.npy', 'gt.mat', 'sparse.mat', 'gt.npz'):
        dataset = read_loop_matrix_dataset(root, name, min_gap=SEQ_GAP)
        assert [list(p) for p in dataset.positives] == expected, name
        assert dataset.sequence_gap == SEQ_GAP
        assert [p.name for p in dataset.queries] == [f'{k + 1}.png' for k in range(SEQ_FRAMES)]
    assert dataset.info['gt_key'] == 'loops'
    via_dispatch = load_dataset('loop-matrix', root, ground_truth='gt.mat', min_gap=5)
    assert [list(p) for p in via_dispatch.positives] == _brute_loop_positives(matrix, 5)
    assert via_dispatch.info['gt_key'] == 'GT'


def test_loop_matrix_errors_name_the_problem(tmp_path: Path) -> None:
    """Non-square, not 2-D, wrong size, ambiguous, missing, pickled or NaN matrices are named."""
    from scipy.io import savemat
    from vpr_ros.data.benchmarks.loop_matrix import read_loop_matrix_dataset
    root = _sequence_images(tmp_path / 'seq')
    cases = {'rect.npy': (np.zeros((30, 29)), 'not square: shape \\(30, 29\\)'),
             'cube.npy': (np.zeros((30, 30, 2)), 'shape \\(30, 30, 2\\).*2-D'),
             'small.npy': (np.zeros((29, 29)), '29x29 but .* holds 30 images'),
             'nan.npy': (np.full((30, 30), np.nan), 'non-finite'),
             'text.npy': (np.array([['a'] * 30] * 30), 'not numbers')}
    for name, (array, message) in cases.items():
        np.save(root / name, array)
        with pytest.raises(DatasetError, match=message):
            read_loop_matrix_dataset(root, name)
    np.save(root / 'objects.npy', np.array([{'loop': 1}], dtype=object))
    with pytest.raises(DatasetError, match='never unpickled'):
        read_loop_matrix_dataset(root, 'objects.npy')
    savemat(root / 'two.mat', {'a': np.eye(30), 'b': np.eye(30)})
    with pytest.raises(DatasetError, match='several square 2-D arrays .*--gt-key'):
        read_loop_matrix_dataset(root, 'two.mat')
    assert read_loop_matrix_dataset(root, 'two.mat', gt_key='b', min_gap=1).info['gt_key'] == 'b'
    with pytest.raises(DatasetError, match="no variable 'c'; it holds a 30x30"):
        read_loop_matrix_dataset(root, 'two.mat', gt_key='c')
    savemat(root / 'none.mat', {'poses': np.zeros((30, 12)), 'rate': 10.0})
    with pytest.raises(DatasetError, match='no square 2-D array'):
        read_loop_matrix_dataset(root, 'none.mat')
    with pytest.raises(DatasetError, match='does not exist'):
        read_loop_matrix_dataset(root, 'missing.npy')
    (root / 'gt.txt').write_text('0 1\n1 0\n')
    with pytest.raises(DatasetError, match='.mat, .npy or .npz'):
        read_loop_matrix_dataset(root, 'gt.txt')


def _kitti_trajectory() -> np.ndarray:
    """Return 30 camera centres: a 20-frame loop, then frames 20..29 near frames 0..9."""
    rng = np.random.default_rng(3)
    centres = np.zeros((SEQ_FRAMES, 3))
    for i in range(20):
        angle = 2 * math.pi * i / 20
        centres[i] = (40 * math.cos(angle), 0.0, 40 * math.sin(angle))
    for i in range(20, 30):
        centres[i] = centres[i - 20] + rng.uniform(-1.5, 1.5, 3) * (1, 0, 1)
    centres[22] = centres[2] + (3.0, 0.0, 4.0)     # exactly at the 5 m radius (inclusive)
    centres[27] = centres[7] + (0.0, -10.0, 0.0)   # on a bridge 10 m above: 3-D keeps it apart
    return centres


def _write_kitti(root: Path, centres: np.ndarray) -> Path:
    lines = []
    for i, centre in enumerate(centres):
        yaw = 0.3 * i
        rotation = np.array([[math.cos(yaw), 0, math.sin(yaw)], [0, 1, 0],
                             [-math.sin(yaw), 0, math.cos(yaw)]])
        pose = np.hstack([rotation, centre[:, None]])
        lines.append(' '.join(f'{v:.9e}' for v in pose.reshape(-1)))
    (root / 'poses.txt').write_text('\n'.join(lines) + '\n')
    return root / 'poses.txt'


def test_kitti_poses_positives_match_brute_force(tmp_path: Path) -> None:
    """Positives are the frames at least min-gap back within the radius (3-D, inclusive)."""
    from vpr_ros.data.benchmarks.kitti import read_kitti_poses_dataset
    root = _sequence_images(tmp_path / '00', folder='image_2')
    centres = _kitti_trajectory()
    _write_kitti(root, centres)
    (root / 'times.txt').write_text(''.join(f'{0.1 * i:.6e}\n' for i in range(SEQ_FRAMES)))
    dataset = read_kitti_poses_dataset(root, 'poses.txt', radius_m=5.0, min_gap=SEQ_GAP)
    expected = [[j for j in range(SEQ_FRAMES)
                 if j <= i - SEQ_GAP and math.dist(centres[i], centres[j]) <= 5.0]
                for i in range(SEQ_FRAMES)]
    assert [list(p) for p in dataset.positives] == expected
    assert 2 in expected[22] and expected[27] == [] and sum(map(len, expected)) >= 8
    assert dataset.info['image_dir'] == 'image_2' and dataset.info['stamps'] == 'times.txt'
    assert dataset.query_stamps_ns().tolist() == [i * 100_000_000 for i in range(SEQ_FRAMES)]
    frames = list(dataset.query_frames())
    assert [f.stamp_ns for f in frames[:3]] == [0, 100_000_000, 200_000_000]


def test_kitti_poses_errors_name_the_problem(tmp_path: Path) -> None:
    """A short line, a word, a missing pose or image folder is a DatasetError naming it."""
    from vpr_ros.data.benchmarks.kitti import read_kitti_poses_dataset
    root = _sequence_images(tmp_path / '00')
    path = _write_kitti(root, _kitti_trajectory())
    lines = path.read_text().splitlines()
    bad = {'short.txt': lines[:2] + [' '.join(lines[2].split()[:11])] + lines[3:],
           'word.txt': lines[:4] + [lines[4].replace(lines[4].split()[0], 'x')] + lines[5:],
           'fewer.txt': lines[:-1], 'square.txt': [line + ' 0 0 0 1' for line in lines]}
    messages = {'short.txt': 'line 3 has 11 values, expected 12',
                'word.txt': 'line 5 has a value that is not a number',
                'fewer.txt': '29 poses but .* holds 30 images',
                'square.txt': 'line 1 has 16 values, expected 12'}
    for name, content in bad.items():
        (root / name).write_text('\n'.join(content) + '\n')
        with pytest.raises(DatasetError, match=messages[name]):
            read_kitti_poses_dataset(root, name)
    with pytest.raises(DatasetError, match='--image-dir'):
        read_kitti_poses_dataset(tmp_path / 'empty', 'poses.txt')


def test_sequence_exclusion_by_time_matches_brute_force(tmp_path: Path) -> None:
    """The map of frame i: frames <= i - gap stamped at least exclude_recent_s earlier."""
    from vpr_ros.data.benchmarks.loop_matrix import read_loop_matrix_dataset
    root = _sequence_images(tmp_path / 'seq')
    np.save(root / 'gt.npy', _loop_matrix())
    rng = np.random.default_rng(5)
    intervals = rng.integers(20, 200, SEQ_FRAMES)
    intervals[4:13] = [30, 40, 50, 30, 40, 50, 30, 40, 40]
    ms = np.cumsum(intervals)   # frame 3 is exactly 0.35 s before frame 12: kept
    (root / 'stamps.txt').write_text(''.join(f'{m / 1000}\n' for m in ms))
    dataset = read_loop_matrix_dataset(root, 'gt.npy', min_gap=2, times='stamps.txt',
                                       exclude_recent_s=0.35)
    sizes = [sum(1 for j in range(SEQ_FRAMES) if j <= i - 2 and ms[i] - ms[j] >= 350)
             for i in range(SEQ_FRAMES)]
    assert dataset.sequence_map_sizes().tolist() == sizes
    assert sizes[12] == 4
    matrix = _loop_matrix()
    assert [list(p) for p in dataset.positives] == [
        [j for j in row if j < sizes[i]] for i, row in enumerate(_brute_loop_positives(matrix, 2))]
    assert dataset.query_stamps_ns().tolist() == [int(m) * 1_000_000 for m in ms]
    assert dataset.info['exclude_recent_s'] == 0.35 and dataset.info['stamps'] == 'stamps.txt'
    by_rate = read_loop_matrix_dataset(root, 'gt.npy', min_gap=1, frame_rate=10.0,
                                       exclude_recent_s=0.5)
    by_gap = read_loop_matrix_dataset(root, 'gt.npy', min_gap=5)
    assert by_rate.sequence_map_sizes().tolist() == by_gap.sequence_map_sizes().tolist()
    assert [list(p) for p in by_rate.positives] == [list(p) for p in by_gap.positives]


def test_sequence_exclusion_needs_stamps(tmp_path: Path) -> None:
    """Without stamps (plain image files) a time exclusion is refused, naming the remedies."""
    from vpr_ros.data.benchmarks.loop_matrix import read_loop_matrix_dataset
    root = _sequence_images(tmp_path / 'seq')
    np.save(root / 'gt.npy', _loop_matrix())
    with pytest.raises(DatasetError, match='needs frame stamps.*times.*frame rate'):
        read_loop_matrix_dataset(root, 'gt.npy', exclude_recent_s=1.0)
    with pytest.raises(DatasetError, match='not both'):
        read_loop_matrix_dataset(root, 'gt.npy', times='t.txt', frame_rate=10.0)
    (root / 'times.txt').write_text('0.0\n0.1\n')
    with pytest.raises(DatasetError, match='2 frame times but the sequence has 30 images'):
        read_loop_matrix_dataset(root, 'gt.npy', exclude_recent_s=1.0)
    (root / 'times.txt').write_text(''.join(f'{0.1 * (i % 20)}\n' for i in range(30)))
    with pytest.raises(DatasetError, match='frame 20 \\(0-based\\) is stamped'):
        read_loop_matrix_dataset(root, 'gt.npy')


def test_sequence_min_gap_is_inclusive(tmp_path: Path) -> None:
    """A revisit exactly min-gap frames back is a positive and in the map; one less is not."""
    from vpr_ros.data.benchmarks.sequence import read_sequence_dataset
    root = _sequence_images(tmp_path / 'seq', count=12)
    loops = [{'frame': 11, 'revisits': [1]}, {'frame': 10, 'revisits': [1]}]
    (root / 'ground_truth.json').write_text(json.dumps(
        {'frames': [f'{k + 1}.png' for k in range(12)], 'loops': loops}))
    dataset = read_sequence_dataset(root, min_gap=10)
    assert [list(p) for p in dataset.positives] == [[]] * 10 + [[0], []]
    assert dataset.sequence_map_sizes().tolist() == [0] * 10 + [1, 2]
