"""Tests of the embedded procedural sample route (vpr_ros.sample)."""

import dataclasses
import math

import numpy as np
import pytest

from vpr_ros.data.bag import read_frames
from vpr_ros.errors import BagError, ConfigError
from vpr_ros.sample import renderer, route, scene
from vpr_ros.sample.renderer import render_traversal, write_sample
from vpr_ros.sample.route import route_polyline, RouteConfig

SMALL = RouteConfig(length_m=100.0, frames_per_traversal=24, image_size=(48, 64))


@pytest.fixture(scope='module')
def traversals() -> tuple[list, list]:
    """Render the map and query traversals of the small route."""
    return render_traversal(SMALL, 0), render_traversal(SMALL, 1)


def _stack(frames: list) -> np.ndarray:
    return np.stack([f.image for f in frames]).astype(np.float64)


def _xy_yaw(frames: list) -> tuple[np.ndarray, np.ndarray]:
    xy = np.array([f.pose.position[:2] for f in frames])
    return xy, np.array([f.pose.yaw for f in frames])


def _nearest_on_polyline(points: np.ndarray, loop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force distance of each point to a closed polyline and that segment's heading."""
    a, b = loop, np.roll(loop, -1, axis=0)
    e = b - a
    f = np.clip(((points[:, None] - a[None]) * e[None]).sum(-1) / (e * e).sum(-1)[None], 0, 1)
    dist = np.linalg.norm(points[:, None] - (a[None] + f[..., None] * e[None]), axis=-1)
    seg = dist.argmin(axis=1)
    return dist.min(axis=1), np.arctan2(e[seg, 1], e[seg, 0])


def _wrap(angle: np.ndarray) -> np.ndarray:
    return (angle + np.pi) % (2.0 * np.pi) - np.pi


def test_frames_have_the_configured_shape_count_and_stamps(traversals: tuple) -> None:
    """Each traversal has N rgb uint8 frames at the frame rate, with map-frame poses."""
    period = round(1e9 / SMALL.frame_rate_hz)
    for frames in traversals:
        assert len(frames) == SMALL.frames_per_traversal
        for frame in frames:
            assert frame.image.shape == (*SMALL.image_size, 3)
            assert frame.image.dtype == np.uint8
            assert frame.pose is not None and frame.pose.frame_id == 'map'
        stamps = np.array([f.stamp_ns for f in frames])
        assert np.all(np.diff(stamps) == period)
    assert traversals[1][0].stamp_ns > traversals[0][-1].stamp_ns


def test_route_polyline_is_a_closed_counter_clockwise_loop_of_the_configured_length() -> None:
    """The route's perimeter matches length_m and it encloses a positive (CCW) area."""
    loop = route_polyline(SMALL)
    perimeter = np.linalg.norm(np.roll(loop, -1, axis=0) - loop, axis=1).sum()
    assert perimeter == pytest.approx(SMALL.length_m, rel=1e-3)
    x, y = loop.T
    assert 0.5 * np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) > 0.0


def test_map_poses_follow_the_route_and_query_poses_are_offset(traversals: tuple) -> None:
    """Map poses lie on the route; query poses are 0.3-1 m off it, between map poses."""
    loop = route_polyline(SMALL, step_m=0.05)
    (map_xy, map_yaw), (query_xy, query_yaw) = (_xy_yaw(f) for f in traversals)
    map_off, map_heading = _nearest_on_polyline(map_xy, loop)
    query_off, query_heading = _nearest_on_polyline(query_xy, loop)
    assert map_off.max() < 0.1
    assert 0.3 <= query_off.min() and query_off.max() <= 1.0
    assert np.abs(_wrap(map_yaw - map_heading)).max() < math.radians(1.5)
    query_jitter = np.abs(_wrap(query_yaw - query_heading))
    assert query_jitter.max() < math.radians(SMALL.query_yaw_jitter_deg + 1.0)
    assert query_jitter.max() > math.radians(0.5)
    spacing = SMALL.length_m / SMALL.frames_per_traversal
    steps = np.linalg.norm(np.diff(map_xy, axis=0), axis=1)
    assert np.all((steps > 0.8 * spacing) & (steps < 1.01 * spacing))
    gaps = np.linalg.norm(query_xy[:, None] - map_xy[None], axis=-1).min(axis=1)
    assert np.all(gaps > 0.2) and np.all(gaps < spacing)


def test_query_traversal_is_darker_and_warmer_than_the_map(traversals: tuple) -> None:
    """Dusk: the query is darker overall and its red/blue balance is warmer, frame by frame."""
    day, dusk = (_stack(f) for f in traversals)
    brightness = [x.mean(axis=(1, 2, 3)) for x in (day, dusk)]
    assert np.all(brightness[1] < 0.9 * brightness[0])
    assert brightness[1].mean() < 0.6 * brightness[0].mean()
    warmth = [x[..., 0].mean(axis=(1, 2)) / x[..., 2].mean(axis=(1, 2)) for x in (day, dusk)]
    assert np.all(warmth[1] > warmth[0])


def test_same_seed_renders_identical_frames_and_other_seeds_differ(traversals: tuple) -> None:
    """Rebuilding the scene from scratch reproduces every pixel; another seed changes them."""
    scene.build_scene.cache_clear()
    again = render_traversal(SMALL, 1)
    for first, second in zip(traversals[1], again):
        assert np.array_equal(first.image, second.image)
        assert first.pose == second.pose and first.stamp_ns == second.stamp_ns
    other = render_traversal(dataclasses.replace(SMALL, seed=SMALL.seed + 1), 1)
    diff = np.abs(_stack(again) - _stack(other)).mean(axis=(1, 2, 3))
    assert np.all(diff > 5.0)


def test_ray_cast_matches_a_per_segment_linear_solve() -> None:
    """The vectorised column ray cast finds the same nearest facade as a 2x2 solve per segment."""
    walls = route.build_walls(SMALL)
    rng = np.random.default_rng(0)
    origins = route_polyline(SMALL)[rng.integers(0, 500, 6)]
    angles = rng.uniform(-np.pi, np.pi, len(origins))
    dirs = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    t, seg, _ = route.cast(walls, origins, dirs)
    for k, (origin, direction) in enumerate(zip(origins, dirs)):
        best = np.inf
        for a, b in zip(walls.a, walls.b):
            matrix = np.column_stack([direction, a - b])
            if abs(np.linalg.det(matrix)) > 1e-12:
                dist, frac = np.linalg.solve(matrix, a - origin)
                if dist > 1e-4 and 0.0 <= frac <= 1.0:
                    best = min(best, dist)
        assert t[k] == pytest.approx(best, rel=1e-9)


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_write_sample_round_trips_through_read_frames(tmp_path: object, storage: str) -> None:
    """The written bags read back with identical images, stamps and poses."""
    config = dataclasses.replace(SMALL, frames_per_traversal=5)
    paths = write_sample(tmp_path, config, storage=storage)
    for traversal, bag in enumerate((paths.map_bag, paths.query_bag)):
        expected = render_traversal(config, traversal)
        read = list(read_frames(bag, paths.image_topic, paths.pose_topic))
        assert [f.stamp_ns for f in read] == [f.stamp_ns for f in expected]
        for got, want in zip(read, expected):
            assert np.array_equal(got.image, want.image)
            assert np.allclose(got.pose.position, want.pose.position)
            assert np.allclose(got.pose.orientation, want.pose.orientation)
            assert got.pose.frame_id == 'map'
    with pytest.raises(BagError):
        write_sample(tmp_path, config, storage=storage)


@pytest.mark.parametrize('changes', [{'image_size': (48,)}, {'image_size': (48, 8)},
                                     {'length_m': 10.0}, {'fov_deg': 179.0}])
def test_route_config_rejects_bad_values(changes: dict) -> None:
    """Malformed sizes, routes too short for the street and out-of-range fields are refused."""
    with pytest.raises(ConfigError):
        dataclasses.replace(SMALL, **changes)


def test_unknown_traversal_is_refused() -> None:
    """Only traversal 0 (map) and 1 (query) exist."""
    with pytest.raises(ConfigError, match='traversal'):
        render_traversal(SMALL, 2)


def _length_range() -> tuple[float, float]:
    """Return the declared ``(min, max)`` of ``RouteConfig.length_m``."""
    field = next(f for f in dataclasses.fields(RouteConfig) if f.name == 'length_m')
    return field.metadata['range']


# The 2000 m scene takes about 25 s and 5 GB to build (a 9278 x 11517 floor texture); the
# remap tests below cover its too-wide facade atlas quickly.
@pytest.mark.parametrize('bound', [pytest.param(0, id='shortest'),
                                   pytest.param(1, id='longest', marks=pytest.mark.slow)])
def test_routes_at_both_ends_of_the_length_range_render(bound: int) -> None:
    """The declared extremes of length_m build and render (2000 m: facade atlas > 32767 px)."""
    length = _length_range()[bound]
    outside = length - 1.0 if bound == 0 else length + 1.0
    with pytest.raises(ConfigError, match='length_m'):
        RouteConfig(length_m=outside)
    config = RouteConfig(length_m=length, frames_per_traversal=2)
    try:
        frames = render_traversal(config, 0)
        if bound == 1:
            assert scene.build_scene(config).atlas[0].shape[1] > 32767
    finally:
        scene.build_scene.cache_clear()  # the 2000 m scene holds gigabytes
    loop = route_polyline(config)
    distance, _ = _nearest_on_polyline(np.array([f.pose.position[:2] for f in frames]), loop)
    assert distance.max() < 0.1
    for frame in frames:
        assert frame.image.shape == (*config.image_size, 3) and frame.image.dtype == np.uint8
        assert frame.image.std() > 10.0


@pytest.mark.parametrize('channels', [1, 4])
def test_tiled_remap_equals_one_remap_call(monkeypatch: pytest.MonkeyPatch,
                                           channels: int) -> None:
    """With tiles of 32 texels, sampling gives the bytes one cv2.remap call gives."""
    import cv2
    rng = np.random.default_rng(3)
    src = rng.integers(0, 256, (70, 150, channels), dtype=np.uint8).squeeze()
    seams = np.array([-3.0, 0.0, 31.0, 31.99, 32.0, 32.01, 63.5, 64.0, 68.9, 69.0, 69.5, 96.0,
                      127.9, 128.0, 149.0, 149.5, 160.0])
    seam_x, seam_y = (v.ravel() for v in np.meshgrid(seams, seams[seams < 75.0]))
    mx = np.concatenate([rng.uniform(-5.0, 155.0, 3000), seam_x])
    my = np.concatenate([rng.uniform(-5.0, 75.0, 3000), seam_y])
    expected = cv2.remap(src, mx.astype(np.float32)[None], my.astype(np.float32)[None],
                         cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    expected = expected.reshape(len(mx), channels).astype(np.float32) / 255.0
    monkeypatch.setattr(renderer, '_REMAP_MAX_SIDE', 40)
    monkeypatch.setattr(renderer, '_REMAP_TILE', 32)
    got = renderer._remap(src, mx, my)
    assert got.shape == expected.shape and np.array_equal(got, expected)


def test_remap_samples_a_texture_wider_and_taller_than_opencv_allows() -> None:
    """Texels that hold their own coordinates read back the (clamped) sample positions."""
    for rows, cols in ((3, 40000), (33000, 3)):
        ys, xs = np.mgrid[0:rows, 0:cols].astype(np.float32)
        src = np.dstack([xs, ys])
        steps = np.arange(-64, 64) / 32.0  # multiples of 1/32: exact in cv2's fixed point
        mx = np.concatenate([steps + c for c in (0.0, 16384.0, 32767.0, cols - 1.0)])
        mx = mx if cols > rows else np.full(len(mx), 1.25)
        my = np.concatenate([steps + r for r in (0.0, 16384.0, 32767.0, rows - 1.0)])
        my = my if rows > cols else np.full(len(my), 1.25)
        got = renderer._remap(src, mx, my)
        expected = np.stack([np.clip(mx, 0, cols - 1), np.clip(my, 0, rows - 1)], axis=1)
        np.testing.assert_array_equal(got, expected.astype(np.float32))


def _recall_at_1(query: np.ndarray, database: np.ndarray, positives: np.ndarray) -> float:
    dist = ((query[:, None] - database[None]) ** 2).sum(-1)
    best = dist.argmin(axis=1)
    return float(positives[np.arange(len(query)), best].mean())


@pytest.mark.slow
def test_default_route_is_hard_for_raw_pixels_and_solvable_for_the_default_model() -> None:
    """Raw 32x24 grey pixels reach R@1 < 80 %, EfficientNet-Lite0-GeM R@1 >= 70 % (5 m)."""
    import cv2
    import torch

    from vpr_ros.models.registry import create_model
    from vpr_ros.models.preprocessing import preprocess

    config = RouteConfig()
    db, queries = render_traversal(config, 0), render_traversal(config, 1)
    gap = np.linalg.norm(_xy_yaw(queries)[0][:, None] - _xy_yaw(db)[0][None], axis=-1)
    positives = gap <= 5.0

    def pixels(frames: list) -> np.ndarray:
        grey = [cv2.cvtColor(f.image, cv2.COLOR_RGB2GRAY) for f in frames]
        return np.stack([cv2.resize(g, (32, 24), interpolation=cv2.INTER_AREA).ravel()
                         for g in grey]).astype(np.float64)

    assert _recall_at_1(pixels(queries), pixels(db), positives) < 0.8
    model = create_model('efficientnet_lite0_gem').eval()

    def describe(frames: list) -> np.ndarray:
        with torch.no_grad():
            return np.concatenate([model.global_descriptor(preprocess(
                [f.image for f in frames[i:i + 16]], model.spec)).numpy()
                for i in range(0, len(frames), 16)])

    assert _recall_at_1(describe(queries), describe(db), positives) >= 0.7
