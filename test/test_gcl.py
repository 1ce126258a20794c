"""GCL: field-of-view labels vs shapely, loss vs numpy, sampling, MSLS reader, toy run."""

import json
import math

from conftest import REPO_ROOT
import cv2
import numpy as np
import pytest
import torch
from torch import nn
import torchvision
from training_fixtures import finite_difference

from vpr_ros.errors import CheckpointError, DatasetError
from vpr_ros.models.checkpoint import load_checkpoint
from vpr_ros_training.config import load_config
from vpr_ros_training.gcl.export import export_core_checkpoint
from vpr_ros_training.gcl.fov import compass_to_yaw, fov_similarity, FovConfig
from vpr_ros_training.gcl.labels import Cameras, graded_labels, read_labels, write_labels
from vpr_ros_training.gcl.loss import contrastive_loss, gcl_loss
from vpr_ros_training.gcl.msls import msls_pair_source, read_msls_split
from vpr_ros_training.gcl.networks import calibrate_batch_norm, GemNet, load_official_gcl
from vpr_ros_training.gcl.retrieval import evaluate_recall
from vpr_ros_training.gcl.runner import load_weights
from vpr_ros_training.gcl.sampling import draw_pairs, sample_partner
from vpr_ros_training.gcl.train import GclConfig, initialise_network, PairImages, run_gcl
from vpr_ros_training.gcl.whitening import PcaWhitening

TOY_CONFIG = REPO_ROOT / 'training' / 'vpr_ros_training' / 'configs' / 'gcl_toy.yaml'
PURE_IOU = FovConfig(half_angle_deg=35.0, radius_m=20.0, max_heading_diff_deg=180.0)


# ---- field-of-view similarity ----------------------------------------------------------------

@pytest.fixture
def shapely_iou():
    """Return an IoU of two sectors computed by shapely polygons (independent reference)."""
    geometry = pytest.importorskip('shapely.geometry', reason='shapely is a test dependency')

    def sector(x: float, y: float, yaw: float, config: FovConfig, arc_points: int = 4000):
        half = math.radians(config.half_angle_deg)
        angles = np.linspace(yaw - half, yaw + half, arc_points)
        r = config.radius_m
        return geometry.Polygon([(x, y)] + [(x + r * math.cos(a), y + r * math.sin(a))
                                            for a in angles])

    def iou(pose_a: tuple, pose_b: tuple, config: FovConfig) -> float:
        a, b = sector(*pose_a, config), sector(*pose_b, config)
        return a.intersection(b).area / a.union(b).area
    return iou


def random_pose_pairs(count: int, seed: int, spread: float, origin=(0.0, 0.0)) -> list:
    """Return ``count`` random ``((x, y, yaw), (x, y, yaw))`` pairs around ``origin``."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(count):
        a = (origin[0] + rng.uniform(-5, 5), origin[1] + rng.uniform(-5, 5),
             rng.uniform(-math.pi, math.pi))
        b = (a[0] + rng.uniform(-spread, spread), a[1] + rng.uniform(-spread, spread),
             a[2] + rng.uniform(-1.6, 1.6))
        pairs.append((a, b))
    return pairs


@pytest.mark.parametrize('half_angle', [10.0, 35.0, 60.0, 90.0])
def test_fov_similarity_matches_shapely_polygons(half_angle: float, shapely_iou) -> None:
    """The exact Green's-theorem IoU equals shapely's polygon IoU to 1e-3, UTM offsets included."""
    config = FovConfig(half_angle_deg=half_angle, radius_m=20.0, max_heading_diff_deg=180.0)
    pairs = random_pose_pairs(40, seed=int(half_angle), spread=30.0)
    pairs += random_pose_pairs(10, seed=7, spread=10.0, origin=(512345.0, 6543210.0))
    values = []
    for a, b in pairs:
        psi = fov_similarity(a, b, config)
        assert psi == pytest.approx(shapely_iou(a, b, config), abs=1e-3)
        values.append(psi)
    assert max(values) > 0.1 and min(values) == 0.0


def test_fov_similarity_with_collinear_edges_matches_shapely(shapely_iou) -> None:
    """Sectors sharing an edge line (partly coincident boundaries) are handled exactly."""
    half = math.radians(PURE_IOU.half_angle_deg)
    for distance in (3.0, 12.0):
        b = (distance * math.cos(half), distance * math.sin(half), 0.0)
        psi = fov_similarity((0.0, 0.0, 0.0), b, PURE_IOU)
        assert psi == pytest.approx(shapely_iou((0.0, 0.0, 0.0), b, PURE_IOU), abs=1e-3)
    touching = fov_similarity((0.0, 0.0, 0.0), (0.0, 0.0, 2 * half), PURE_IOU)
    assert touching == pytest.approx(0.0, abs=1e-12)


def test_fov_similarity_properties() -> None:
    """Symmetric, 1 for identical poses, 0 beyond two radii and for opposite headings."""
    for a, b in random_pose_pairs(30, seed=3, spread=25.0):
        assert fov_similarity(a, b, PURE_IOU) == pytest.approx(fov_similarity(b, a, PURE_IOU),
                                                               abs=1e-12)
    for pose in [(0.0, 0.0, 0.0), (512345.5, 6543210.25, 2.1), (3.0, -4.0, -math.pi)]:
        assert fov_similarity(pose, pose, PURE_IOU) == pytest.approx(1.0, abs=1e-12)
    r = PURE_IOU.radius_m
    assert fov_similarity((0, 0, 0), (2 * r + 1e-6, 0, math.pi), PURE_IOU) == 0.0
    assert fov_similarity((0, 0, 0.3), (0, 2 * r + 0.01, 0.3), PURE_IOU) == 0.0
    assert fov_similarity((0, 0, 0), (0, 0, math.pi), PURE_IOU) == pytest.approx(0.0, abs=1e-12)
    assert fov_similarity((0, 0, 0), (-5, 0, math.pi), PURE_IOU) == pytest.approx(0.0, abs=1e-12)
    facing = ((0.0, 0.0, 0.0), (10.0, 0.0, math.pi))
    assert fov_similarity(*facing, PURE_IOU) > 0.05
    assert fov_similarity(*facing, FovConfig(radius_m=20.0)) == 0.0


def test_fov_similarity_decreases_with_distance_and_angle() -> None:
    """Moving one camera forward or turning it lowers psi monotonically."""
    forward = [fov_similarity((0, 0, 0), (d, 0, 0), PURE_IOU) for d in (0, 2, 5, 10, 15, 19)]
    turned = [fov_similarity((0, 0, 0), (0, 0, t), PURE_IOU) for t in (0, 0.2, 0.5, 1.0, 1.2)]
    assert all(a > b for a, b in zip(forward, forward[1:])) and forward[-1] > 0
    assert all(a > b for a, b in zip(turned, turned[1:]))


def test_compass_angles_convert_to_enu_yaw() -> None:
    """North (0 deg) is +y, east (90 deg) is +x, compass angles turn clockwise."""
    assert compass_to_yaw(0.0) == pytest.approx(math.pi / 2)
    assert compass_to_yaw(90.0) == pytest.approx(0.0)
    assert compass_to_yaw(180.0) == pytest.approx(-math.pi / 2)


# ---- label matrices --------------------------------------------------------------------------

def random_cameras(count: int, seed: int, extent: float = 60.0) -> Cameras:
    """Return random planar cameras."""
    rng = np.random.default_rng(seed)
    return Cameras(rng.uniform(0, extent, (count, 2)), rng.uniform(-math.pi, math.pi, count))


def test_graded_labels_equal_brute_force_and_round_trip(tmp_path) -> None:
    """Sparse labels equal psi of every pair; the npz file reads back identically."""
    config = FovConfig(radius_m=15.0)
    queries, database = random_cameras(25, 1), random_cameras(30, 2)
    labels = graded_labels(queries, database, config)
    brute = np.array([[fov_similarity(queries.pose(q), database.pose(d), config)
                       for d in range(len(database))] for q in range(len(queries))])
    np.testing.assert_allclose(labels.dense(), brute, atol=1e-6)
    assert 0 < len(labels.psi) < brute.size
    path = write_labels(tmp_path / 'city_fov.npz', labels)
    again = read_labels(path)
    assert again.config == config and again.shape == labels.shape
    np.testing.assert_array_equal(again.dense(), labels.dense())
    np.testing.assert_array_equal(again.as_matrix().row(4), labels.dense()[4])
    (tmp_path / 'bad.npz').write_bytes(b'not a zip')
    with pytest.raises(DatasetError):
        read_labels(tmp_path / 'bad.npz')


# ---- loss ------------------------------------------------------------------------------------

def numpy_gcl(x0: np.ndarray, x1: np.ndarray, psi: np.ndarray, tau: float) -> float:
    """Return the GCL of raw descriptors (L2-normalised here) in numpy."""
    f0 = x0 / np.linalg.norm(x0, axis=1, keepdims=True)
    f1 = x1 / np.linalg.norm(x1, axis=1, keepdims=True)
    d = np.linalg.norm(f0 - f1, axis=1)
    return float(np.mean(psi * 0.5 * d ** 2 + (1 - psi) * 0.5 * np.maximum(tau - d, 0) ** 2))


def numpy_contrastive(x0: np.ndarray, x1: np.ndarray, same: np.ndarray, tau: float) -> float:
    """Return Hadsell et al.'s contrastive loss with a branch per binary label."""
    f0 = x0 / np.linalg.norm(x0, axis=1, keepdims=True)
    f1 = x1 / np.linalg.norm(x1, axis=1, keepdims=True)
    d = np.linalg.norm(f0 - f1, axis=1)
    values = [0.5 * di ** 2 if s else 0.5 * max(tau - di, 0.0) ** 2 for di, s in zip(d, same)]
    return float(np.mean(values))


def test_gcl_loss_and_gradients_match_numpy() -> None:
    """Value and both input gradients agree with numpy (finite differences), psi graded."""
    rng = np.random.default_rng(0)
    x0, x1 = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    x1[:2] = x0[:2] + 0.05 * rng.normal(size=(2, 5))
    psi = np.array([1.0, 0.8, 0.3, 0.0, 0.5, 0.1])
    t0 = torch.tensor(x0, requires_grad=True)
    t1 = torch.tensor(x1, requires_grad=True)
    loss = gcl_loss(t0, t1, torch.tensor(psi), margin=0.5)
    loss.backward()
    assert loss.item() == pytest.approx(numpy_gcl(x0, x1, psi, 0.5), rel=1e-10)
    np.testing.assert_allclose(t0.grad.numpy(), finite_difference(
        lambda v: numpy_gcl(v, x1, psi, 0.5), x0), atol=1e-7)
    np.testing.assert_allclose(t1.grad.numpy(), finite_difference(
        lambda v: numpy_gcl(x0, v, psi, 0.5), x1), atol=1e-7)


def test_gcl_equals_contrastive_loss_for_binary_labels() -> None:
    """With psi in {0, 1} GCL is the standard contrastive loss (value and gradients)."""
    rng = np.random.default_rng(1)
    x0, x1 = rng.normal(size=(8, 4)), rng.normal(size=(8, 4))
    x1[::2] = x0[::2] + 0.3 * rng.normal(size=(4, 4))
    same = np.array([1, 0, 1, 0, 1, 1, 0, 0], dtype=bool)
    grads = []
    for loss_fn in (lambda a, b: gcl_loss(a, b, torch.tensor(same, dtype=torch.float64)),
                    lambda a, b: contrastive_loss(a, b, torch.tensor(same))):
        a = torch.tensor(x0, requires_grad=True)
        value = loss_fn(a, torch.tensor(x1))
        value.backward()
        assert value.item() == pytest.approx(numpy_contrastive(x0, x1, same, 0.5), rel=1e-10)
        grads.append(a.grad.numpy())
    np.testing.assert_allclose(grads[0], grads[1], atol=1e-12)


# ---- sampling --------------------------------------------------------------------------------

def test_partner_sampling_follows_published_fractions() -> None:
    """50 % psi >= 0.5, 25 % soft, 25 % hard; panoramas never chosen; empty category skipped."""
    row = np.array([1.0, 0.7, 0.5, 0.4, 0.1, 0.0, 0.0, 0.0, 0.9], dtype=np.float32)
    pano = np.zeros(len(row), bool)
    pano[8] = True
    rng = np.random.default_rng(0)
    draws = [sample_partner(row, rng, True, pano) for _ in range(4000)]
    counts = np.bincount([category for _, category in draws], minlength=3)
    np.testing.assert_allclose(counts / 4000, [0.5, 0.25, 0.25], atol=0.03)
    for partner, category in draws:
        assert partner != 8
        assert [row[partner] >= 0.5, 0 < row[partner] < 0.5, row[partner] == 0][category]
    only_hard = np.zeros(5, np.float32)
    results = [sample_partner(only_hard, rng, True) for _ in range(200)]
    assert sum(r is None for r in results) == pytest.approx(150, abs=30)
    binary = [sample_partner(np.array([1, 0, 0, 1], np.float32), rng, False)
              for _ in range(2000)]
    assert np.mean([c for _, c in binary]) == pytest.approx(0.5, abs=0.04)


def test_draw_pairs_covers_cities_and_labels() -> None:
    """A step draws cache_size queries over all cities; each pair carries its psi."""
    matrices = [graded_labels(random_cameras(20, 5), random_cameras(25, 6),
                              FovConfig(radius_m=20.0)).as_matrix(),
                graded_labels(random_cameras(10, 7), random_cameras(12, 8),
                              FovConfig(radius_m=20.0)).as_matrix()]
    pairs = draw_pairs(matrices, np.random.default_rng(2), cache_size=30)
    assert 15 <= len(pairs) <= 30 and {p.city for p in pairs} == {0, 1}
    assert len({(p.city, p.query) for p in pairs}) == len(pairs)
    for pair in pairs:
        row = matrices[pair.city].row(pair.query)
        assert pair.label == pytest.approx(float(row[pair.partner]))


# ---- MSLS reader -----------------------------------------------------------------------------

def write_msls_city(root, city: str, counts=(4, 6), named_columns: bool = True) -> None:
    """Write a tiny MSLS city (CSV metadata and 8x8 JPEG images)."""
    rng = np.random.default_rng(len(city))
    for split, count in zip(('query', 'database'), counts):
        folder = root / 'train_val' / city / split
        (folder / 'images').mkdir(parents=True)
        header = ',key,easting,northing,night' if named_columns else ',key,e,n,night'
        pp, raw = [header], [',key,lon,lat,ca,captured_at,pano']
        for i in range(count):
            key = f'{split[0]}{i:03d}'
            east, north = 500000 + rng.uniform(0, 30), 6000000 + rng.uniform(0, 30)
            pp.append(f'{i},{key},{east},{north},False')
            raw.append(f'{i},{key},10.0,59.0,{rng.uniform(0, 60):.3f},0,{i == count - 1}')
            image = np.full((8, 8, 3), 40 * i, np.uint8)
            cv2.imwrite(str(folder / 'images' / f'{key}.jpg'), image)
        (folder / 'postprocessed.csv').write_text('\n'.join(pp) + '\n')
        (folder / 'raw.csv').write_text('\n'.join(raw) + '\n')


def test_msls_reader_computes_and_caches_labels(tmp_path) -> None:
    """Without _gt.h5 our labeller runs on UTM + compass and writes <city>_fov.npz."""
    write_msls_city(tmp_path, 'toyville', named_columns=False)
    query = read_msls_split(tmp_path, 'toyville', 'query')
    database = read_msls_split(tmp_path, 'toyville', 'database')
    assert query.pano.tolist() == [False, False, False, True]
    config = FovConfig(radius_m=25.0)
    source = msls_pair_source(str(tmp_path), ['toyville'], 'fov', config, str(tmp_path / 'c'))
    expected = graded_labels(query.cameras, database.cameras, config).dense()
    np.testing.assert_allclose(source.matrices[0].row(1), expected[1])
    assert (tmp_path / 'c' / 'toyville_fov.npz').is_file()
    assert read_labels(tmp_path / 'c' / 'toyville_fov.npz').config == config
    binary = msls_pair_source(str(tmp_path), ['toyville'], 'sim', config, str(tmp_path / 'c'))
    np.testing.assert_array_equal(binary.matrices[0].row(1), expected[1] >= 0.5)


def test_msls_reader_uses_released_h5_labels(tmp_path) -> None:
    """A city's _gt.h5 (fov and sim datasets) is preferred to computed labels."""
    h5py = pytest.importorskip('h5py', reason='h5py is optional; MSLS _gt.h5 files need it')
    write_msls_city(tmp_path, 'toyville')
    fov = np.random.default_rng(3).uniform(0, 1, (4, 6)).astype(np.float32)
    with h5py.File(tmp_path / 'train_val' / 'toyville_gt.h5', 'w') as handle:
        handle['fov'], handle['sim'] = fov, (fov > 0.5).astype(np.float32)
    source = msls_pair_source(str(tmp_path), ['toyville'], 'fov')
    np.testing.assert_array_equal(source.matrices[0].row(2), fov[2])
    binary = msls_pair_source(str(tmp_path), ['toyville'], 'sim')
    np.testing.assert_array_equal(binary.matrices[0].row(2), fov[2] > 0.5)
    assert not (tmp_path / 'train_val' / 'toyville_fov.npz').exists()
    first, second, label = PairImages(source, GemNet('tiny', input_size=(16, 16)).spec)[
        (0, 2, 3, float(fov[2, 3]))]
    assert first.shape == second.shape == (3, 16, 16) and float(label) == pytest.approx(fov[2, 3])
    write_msls_city(tmp_path, 'badcity')
    with h5py.File(tmp_path / 'train_val' / 'badcity_gt.h5', 'w') as handle:
        handle['fov'] = np.zeros((3, 6), np.float32)
    with pytest.raises(DatasetError, match='expected'):
        msls_pair_source(str(tmp_path), ['badcity'], 'fov')


# ---- networks, whitening, export -------------------------------------------------------------

class OfficialGem(nn.Module):
    """The official GeM layer's parameter layout (``p`` of shape [1])."""

    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * 3)


def test_official_gcl_layout_loads_and_matches_reference_forward(tmp_path) -> None:
    """A state dict under the official BaseNet names loads; output = GeM + L2 recomputed."""
    torch.manual_seed(0)
    official = nn.Module()
    official.backbone = nn.Sequential(*list(torchvision.models.resnet18().children())[:-2])
    official.pool = OfficialGem()
    with torch.no_grad():
        official.pool.p.fill_(2.5)
    torch.save({'step': 3, 'model_state_dict': official.state_dict()}, tmp_path / 'gcl.pth')
    model = GemNet('resnet18', input_size=(64, 64)).eval()
    load_official_gcl(model, str(tmp_path / 'gcl.pth'))
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = official.eval().backbone(images).clamp(min=1e-6)
        expected = nn.functional.normalize(features.pow(2.5).mean((2, 3)).pow(1 / 2.5), dim=1)
        np.testing.assert_allclose(model.describe(images)[0].numpy(), expected.numpy(),
                                   atol=1e-5)
    assert model.spec.descriptor_dim == 512
    torch.save({'model_state_dict': {'backbone.0.weight': torch.zeros(1)}}, tmp_path / 'bad.pth')
    with pytest.raises(CheckpointError):
        load_official_gcl(model, str(tmp_path / 'bad.pth'))


@pytest.mark.parametrize('samples', [200, 12])
def test_pca_whitening_matches_numpy_eigenvectors(samples: int) -> None:
    """Whitened training descriptors have identity covariance; components = numpy's leading."""
    rng = np.random.default_rng(samples)
    x = rng.normal(size=(samples, 20)) @ rng.normal(size=(20, 20)) + rng.normal(size=20)
    whitening = PcaWhitening(20, 6).fit(x)
    mean, projection = whitening.mean.double().numpy(), whitening.projection.double().numpy()
    projected = (x - x.mean(0)) @ projection
    np.testing.assert_allclose(projected.T @ projected / samples, np.eye(6), atol=1e-4)
    values, vectors = np.linalg.eigh(np.cov(x.T, bias=True))
    leading = vectors[:, ::-1][:, :6]
    cosines = np.abs(np.sum(leading * projection / np.linalg.norm(projection, axis=0), axis=0))
    np.testing.assert_allclose(cosines, 1.0, atol=1e-4)
    np.testing.assert_allclose(mean, x.mean(0), atol=1e-5)
    out = whitening(torch.tensor(x[:3], dtype=torch.float32))
    np.testing.assert_allclose(out.norm(dim=1).numpy(), 1.0, atol=1e-6)


def test_efficientnet_gem_exports_to_the_core_registry(tmp_path) -> None:
    """EfficientNet-Lite0 + GeM writes a core checkpoint that reproduces its descriptors."""
    torch.manual_seed(0)
    model = GemNet('efficientnet_lite0', input_size=(64, 96), gem_p=3.0).eval()
    with torch.no_grad():
        model.pool.p.fill_(2.2)
    path = export_core_checkpoint(model, tmp_path / 'model.safetensors')
    core = load_checkpoint(path)
    assert core.spec.architecture == 'efficientnet_lite0_gem'
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        np.testing.assert_allclose(core.global_descriptor(images).numpy(),
                                   model.describe(images)[0].numpy(), atol=1e-5)
    with pytest.raises(CheckpointError, match='no core architecture'):
        export_core_checkpoint(GemNet('tiny'), tmp_path / 'tiny.safetensors')


def test_batch_norm_calibration_sets_the_cumulative_data_statistics() -> None:
    """Fresh batch norms get the average per-batch mean and variance; others stay untouched."""
    torch.manual_seed(0)
    model = GemNet('tiny', input_size=(24, 32)).train()
    layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        layers[-1].running_mean.fill_(0.5)
    kept = layers[-1].running_mean.clone(), layers[-1].running_var.clone()
    seen: dict = {id(layer): [] for layer in layers}
    hooks = [layer.register_forward_hook(
        lambda module, inputs, output: seen[id(module)].append(inputs[0].detach().clone()))
        for layer in layers]
    batches = [torch.rand(5, 3, 24, 32) * (i + 1) for i in range(3)]
    assert calibrate_batch_norm(model, batches) == len(layers) - 1
    for hook in hooks:
        hook.remove()
    for layer in layers[:-1]:
        means = [x.double().mean(dim=(0, 2, 3)).numpy() for x in seen[id(layer)]]
        variances = [x.double().permute(1, 0, 2, 3).flatten(1).var(dim=1).numpy()
                     for x in seen[id(layer)]]
        np.testing.assert_allclose(layer.running_mean.numpy(), np.mean(means, 0), atol=1e-5)
        np.testing.assert_allclose(layer.running_var.numpy(), np.mean(variances, 0), rtol=1e-4)
        assert layer.momentum == 0.1
    torch.testing.assert_close((layers[-1].running_mean, layers[-1].running_var), kept)
    assert model.training and calibrate_batch_norm(model, batches) == 0


@pytest.mark.slow
@pytest.mark.parametrize('backbone,dim', [('vgg16', 512), ('resnet50', 2048),
                                          ('resnet152', 2048), ('resnext101_32x8d', 2048)])
def test_published_backbones_give_published_dimensions(backbone: str, dim: int) -> None:
    """Published GCL backbones build without downloads and give 512/2048-D unit descriptors."""
    model = GemNet(backbone, input_size=(96, 128), whitening_dim=0).eval()
    with torch.no_grad():
        descriptors = model.describe(torch.randn(1, 3, 96, 128))[0]
    assert descriptors.shape == (1, dim)
    assert float(descriptors.norm()) == pytest.approx(1.0, abs=1e-5)


# ---- toy run ---------------------------------------------------------------------------------

def test_gcl_toy_run_improves_held_out_recall(tmp_path) -> None:
    """Training on one route improves Recall@1 on a route the network never saw."""
    torch.set_num_threads(1)
    config = load_config(GclConfig, TOY_CONFIG, [f'run.output_root={tmp_path}'])
    run_dir = run_gcl(config, progress=lambda items, total: items)
    export = json.loads((run_dir / 'export.json').read_text())
    initial, final = export['evaluation']['initial'], export['evaluation']['final']
    model = load_weights(run_dir / 'weights.safetensors', GemNet)
    measured = evaluate_recall(model, config.evaluation.load())
    assert measured['r@1'] == pytest.approx(final['r@1'])
    torch.manual_seed(config.run.seed)
    untrained_model = config.model.build()
    database = [item for items in config.data.load().database for item in items]
    initialise_network(untrained_model, config, database, torch.device('cpu'))
    untrained = evaluate_recall(untrained_model, config.evaluation.load())
    assert untrained['r@1'] == pytest.approx(initial['r@1'])
    assert measured['r@1'] >= untrained['r@1'] + 8.0, (untrained, measured)
    assert (run_dir / 'config.yaml').is_file() and (run_dir / 'scalars.jsonl').is_file()


@pytest.mark.parametrize('name,backbone,pool,whitening', [
    ('vgg16_gem', 'vgg16', 'gem', 512), ('resnet50_gem', 'resnet50', 'gem', 1024),
    ('resnet152_gem', 'resnet152', 'gem', 2048),
    ('resnext101_gem', 'resnext101_32x8d', 'gem', 1024),
    ('vgg16_netvlad', 'vgg16_conv5_3', 'netvlad', 4096)])
def test_published_configs_follow_the_official_recipe(name: str, backbone: str, pool: str,
                                                      whitening: int) -> None:
    """Every published-row config parses into the official settings and its PCA-w dimension."""
    config = load_config(GclConfig, TOY_CONFIG.parent / f'gcl_{name}.yaml')
    assert (config.model.backbone, config.model.pool) == (backbone, pool)
    assert config.model.whitening_dim == whitening and tuple(config.model.input_size) == (480, 640)
    assert (config.optim.optimizer, config.optim.lr, config.optim.momentum) == ('sgd', 0.1, 0.0)
    optim = config.optim
    assert (optim.lr_step_size, optim.lr_gamma, optim.margin) == (25, 0.1, 0.5)
    assert config.run.batch_size_per_gpu * config.run.num_gpus == 32
    assert config.data.cache_size == 10000 and config.data.labels == 'fov'


def test_gcl_netvlad_run_initialises_clusters_and_whitens(tmp_path) -> None:
    """NetVLAD-GCL: k-means cluster init, one step, whitening learned on the map, exported."""
    torch.set_num_threads(1)
    overrides = [f'run.output_root={tmp_path}', 'model.pool=netvlad', 'model.netvlad_clusters=4',
                 'model.whitening_dim=16', 'optim.steps=1']
    config = load_config(GclConfig, TOY_CONFIG, overrides)
    run_dir = run_gcl(config, progress=lambda items, total: items)
    final = json.loads((run_dir / 'export.json').read_text())['evaluation']['final']
    model = load_weights(run_dir / 'weights.safetensors', GemNet)
    assert model.spec.descriptor_dim == 16 and model.pool.out_dim == 256
    assert bool(model.whitening.fitted) and 'whitened_r@1' in final
    assert float(model.pool.centroids.detach().norm(dim=1).max()) < 1.01


def test_gcl_toy_run_on_the_corridor_improves_held_out_recall(tmp_path, corridor_dir) -> None:
    """Frames 0-59 of the real corridor train, frames 60-110 (unseen places) evaluate.

    Measured with these settings over run seeds 0-4: untrained 18-31 % Recall@1, trained
    35-69 % (+13.7 to +37.2 points).
    """
    torch.set_num_threads(1)
    overrides = [f'run.output_root={tmp_path}', 'data.kind=traversal',
                 f'data.traversal_root={corridor_dir}', 'data.stop_frame=60',
                 'data.fov={half_angle_deg: 35.0, radius_m: 4.0, max_heading_diff_deg: 90.0}',
                 'data.cache_size=60', 'evaluation.kind=traversal',
                 f'evaluation.traversal_root={corridor_dir}', 'evaluation.first_frame=60',
                 'optim.steps=80', 'optim.lr_step_size=40']
    config = load_config(GclConfig, TOY_CONFIG, overrides)
    run_dir = run_gcl(config, progress=lambda items, total: items)
    evaluation = json.loads((run_dir / 'export.json').read_text())['evaluation']
    model = load_weights(run_dir / 'weights.safetensors', GemNet)
    measured = evaluate_recall(model, config.evaluation.load())
    assert measured['r@1'] == pytest.approx(evaluation['final']['r@1'])
    assert measured['r@1'] >= evaluation['initial']['r@1'] + 8.0, (evaluation, measured)
