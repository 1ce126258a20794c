"""StructVPR: label maps, partition weights and distillation against numpy, toy two-stage run."""

import json

from conftest import REPO_ROOT
import numpy as np
import pytest
import torch

from vpr_ros.errors import ConfigError, DatasetError, ImageDecodeError, ImageEncodeError
from vpr_ros.models.checkpoint import load_checkpoint
from vpr_ros_training.config import load_config
from vpr_ros_training.gcl.export import export_core_checkpoint
from vpr_ros_training.gcl.networks import GemNet
from vpr_ros_training.gcl.retrieval import evaluate_recall
from vpr_ros_training.gcl.runner import load_weights
from vpr_ros_training.structvpr.colour_segmenter import (ColourSegmenter, ColourSegmenterConfig,
                                                         fit_traversal, main as segment_main,
                                                         pixel_features, write_label_map)
from vpr_ros_training.structvpr.distillation import weighted_distillation
from vpr_ros_training.structvpr.label_maps import encode_label_maps, LabelMapConfig, read_label_map
from vpr_ros_training.structvpr.partition import (distillation_weights, partition, PartitionConfig,
                                                  positive_ranks)
from vpr_ros_training.structvpr.street_scenes import CLASSES, render_street, StreetConfig
from vpr_ros_training.structvpr.train import (BranchConfig, run_structvpr, StructDataConfig,
                                              StructEvalConfig, StructVprConfig, untrained_student)

TOY_CONFIG = REPO_ROOT / 'training' / 'vpr_ros_training' / 'configs' / 'structvpr_toy.yaml'
CORRIDOR_CONFIG = TOY_CONFIG.parent / 'structvpr_corridor_toy.yaml'


def test_weighted_one_hot_matches_numpy() -> None:
    """Channel c holds weight_c where the label is c; ignored pixels are 0 everywhere."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, (2, 6, 7)).astype(np.uint8)
    labels[0, 0, :3] = 255
    config = LabelMapConfig(num_classes=5, class_weights=(1.0, 0.5, 2.0, 0.0, 1.5))
    encoded = encode_label_maps(list(labels), (6, 7), config).numpy()
    weights = np.array(config.class_weights)
    expected = np.zeros((2, 5, 6, 7))
    for b, y, x in np.ndindex(labels.shape):
        if labels[b, y, x] != 255:
            expected[b, labels[b, y, x], y, x] = weights[labels[b, y, x]]
    np.testing.assert_array_equal(encoded, expected)
    with pytest.raises(ConfigError):
        encode_label_maps([np.full((4, 4), 7, np.uint8)], (4, 4), config)
    with pytest.raises(ConfigError):
        LabelMapConfig(num_classes=3, class_weights=(1.0, 2.0))


def test_label_maps_resize_with_nearest_neighbour() -> None:
    """Resizing never blends labels: the output holds only input classes, one channel per pixel."""
    labels = np.zeros((20, 30), np.uint8)
    labels[5:15, 10:25] = 3
    labels[:, :4] = 1
    encoded = encode_label_maps([labels], (9, 13), LabelMapConfig(num_classes=4))
    assert encoded.shape == (1, 4, 9, 13)
    np.testing.assert_array_equal(encoded.sum(dim=1).numpy(), 1.0)
    assert set(np.unique(encoded.argmax(dim=1).numpy())) == {0, 1, 3}


def numpy_weight(x: int, y: int, c: PartitionConfig) -> float:
    """Return the documented weight of one sample, written out case by case."""
    if x > c.teacher_max_rank or (c.zero_when_student_better and y < x):
        return 0.0
    kappa = np.exp(-(x - 1) / c.knowledge_scale)
    gamma = 1 - np.exp(-max(y - x, 0) / c.gap_scale)
    return float(kappa * (c.base_weight + (1 - c.base_weight) * gamma))


def test_distillation_weights_grow_with_knowledge_and_gap() -> None:
    """Weights equal the formula, grow with teacher knowledge and with the gap, 0 on S2."""
    config = PartitionConfig(teacher_max_rank=5, knowledge_scale=2.0, gap_scale=4.0)
    x, y = np.meshgrid(np.arange(1, 9), np.arange(1, 30), indexing='ij')
    weights = distillation_weights(x.ravel(), y.ravel(), config).reshape(x.shape)
    expected = np.vectorize(lambda a, b: numpy_weight(a, b, config))(x, y)
    np.testing.assert_allclose(weights, expected, atol=1e-12)
    assert np.all(weights[5:] == 0)
    for row in range(5):
        valid = weights[row, row:]
        assert np.all(np.diff(valid) > 0) and valid[0] > 0
    at_gap = np.array([weights[r, r + 6] for r in range(5)])
    assert np.all(np.diff(at_gap) < 0)
    assert weights[0, 0] == pytest.approx(config.base_weight)
    lenient = distillation_weights(np.array([3]), np.array([1]),
                                   PartitionConfig(zero_when_student_better=False))
    assert lenient[0] > 0


def test_partition_groups_are_consistent() -> None:
    """D1 + D2 + D3 = S1, D4 = S2, R1 + R2 = all; every weighted sample lies in S1."""
    rng = np.random.default_rng(1)
    x, y = rng.integers(1, 30, 500), rng.integers(1, 30, 500)
    config = PartitionConfig(teacher_max_rank=6, large_gap=8, student_good_rank=2)
    groups = partition(x, y, config)
    np.testing.assert_array_equal(groups['D1'] | groups['D2'] | groups['D3'], groups['S1'])
    assert not np.any((groups['D1'] & groups['D2']) | (groups['D2'] & groups['D3']))
    np.testing.assert_array_equal(groups['D4'], groups['S2'])
    np.testing.assert_array_equal(groups['R1'] ^ groups['R2'], np.ones(500, bool))
    np.testing.assert_array_equal(groups['D1'], (x <= 6) & (y - x >= 8))
    assert np.all(groups['S1'][distillation_weights(x, y, config) > 0])


def test_positive_ranks_match_brute_force() -> None:
    """The 1-based rank of the first positive, capped at max_rank + 1."""
    rng = np.random.default_rng(2)
    query, database = rng.normal(size=(6, 4)), rng.normal(size=(20, 4))
    positives = [[3], [0, 7], [19], [], [5, 6, 7], [11]]
    ranks = positive_ranks(query, database, positives, max_rank=10)
    for q, found in enumerate(positives):
        order = list(np.argsort(-(database @ query[q]), kind='stable'))
        expected = min([order.index(j) + 1 for j in found], default=11)
        assert ranks[q] == (expected if expected <= 10 else 11)


def test_weighted_distillation_matches_numpy_with_gradients() -> None:
    """sum_i w_i ||s_i - t_i||^2 / #(w > 0); the gradient reaches the student only."""
    rng = np.random.default_rng(3)
    s, t = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    w = np.array([0.0, 0.5, 1.0, 0.0, 0.25])
    student = torch.tensor(s, requires_grad=True)
    teacher = torch.tensor(t, requires_grad=True)
    loss = weighted_distillation(student, teacher, torch.tensor(w))
    loss.backward()
    expected = (w * ((s - t) ** 2).sum(1)).sum() / 3
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(student.grad.numpy(), 2 * w[:, None] * (s - t) / 3, atol=1e-12)
    assert teacher.grad is None
    zero = weighted_distillation(student, teacher, torch.zeros(5))
    assert zero.item() == 0.0


def test_street_scenes_keep_structure_and_change_appearance() -> None:
    """Night queries keep the label layout of their place while the RGB changes strongly."""
    config = StreetConfig(places=12, shift_px=0.0, zoom=0.0, label_noise=0.0)
    views = render_street(3, config)
    assert len(views.db_rgb) == 12 and views.db_rgb[0].shape == (48, 64, 3)
    for q in range(12):
        np.testing.assert_array_equal(views.query_labels[q], views.db_labels[q])
        difference = np.abs(views.query_rgb[q].astype(float) - views.db_rgb[q]).mean()
        assert difference > 20.0
    present = set(np.unique(np.concatenate([m.ravel() for m in views.db_labels])))
    assert present <= set(range(len(CLASSES))) and len(present) >= 6
    again = render_street(3, config)
    np.testing.assert_array_equal(again.query_rgb[5], views.query_rgb[5])


def test_structvpr_toy_run_improves_held_out_recall(tmp_path) -> None:
    """Teacher (label maps) and RGB student both improve Recall@1 on an unseen street."""
    torch.set_num_threads(1)
    config = load_config(StructVprConfig, TOY_CONFIG, [f'run.output_root={tmp_path}'])
    run_dir = run_structvpr(config, progress=lambda items, total: items)
    teacher = json.loads((run_dir / 'teacher' / 'export.json').read_text())['evaluation']
    student = json.loads((run_dir / 'export.json').read_text())['evaluation']
    assert teacher['final']['r@1'] > teacher['initial']['r@1']
    model = load_weights(run_dir / 'weights.safetensors', GemNet)
    assert model.options['in_channels'] == 3
    measured = evaluate_recall(model, config.evaluation.load(config.data))
    assert measured['r@1'] == pytest.approx(student['final']['r@1'])
    assert measured['r@1'] >= student['initial']['r@1'] + 10.0, (student, measured)
    scalars = [json.loads(line) for line in (run_dir / 'scalars.jsonl').read_text().splitlines()]
    fractions = [s['distilled_fraction'] for s in scalars if 'distilled_fraction' in s]
    assert fractions and 0.0 < max(fractions) <= 1.0
    occupancy = [s for s in scalars if 'partition/S1' in s]
    assert len(occupancy) == config.student_optim.epochs
    for entry in occupancy:
        assert entry['partition/S1'] + entry['partition/S2'] == pytest.approx(1.0)
        assert sum(entry[f'partition/D{i}'] for i in range(1, 5)) == pytest.approx(1.0)


def test_msls_recipe_parses_with_every_assumption_configurable() -> None:
    """The MSLS recipe names its class set, thresholds and lambda_KD explicitly."""
    config = load_config(StructVprConfig, TOY_CONFIG.parent / 'structvpr_msls.yaml')
    assert config.labels.num_classes == 19 and config.distillation_weight == 0.1
    assert config.teacher.pool == config.student.pool == 'netvlad'
    assert config.partition == PartitionConfig()
    assert len(config.data.cities) == 22 and tuple(config.evaluation.cities) == ('cph', 'sf')


def test_efficientnet_branches_match_and_the_student_exports_to_the_core(tmp_path) -> None:
    """A SEG teacher gets a C-channel stem; the RGB student is a core efficientnet_lite0_gem."""
    branch = BranchConfig(backbone='efficientnet_lite0', weights='', pool='gem', last_layer=0,
                          input_size=(64, 96))
    teacher, student = branch.build(in_channels=8).eval(), branch.build(in_channels=3).eval()
    assert teacher.backbone.model.conv_stem.in_channels == 8
    with torch.no_grad():
        encoded = encode_label_maps([np.zeros((64, 96), np.uint8)], (64, 96),
                                    LabelMapConfig(num_classes=8))
        assert teacher.describe(encoded)[0].shape == (1, 1280)
        core = load_checkpoint(export_core_checkpoint(student, tmp_path / 'student.safetensors'))
        images = torch.randn(1, 3, 64, 96)
        np.testing.assert_allclose(core.global_descriptor(images).numpy(),
                                   student.describe(images)[0].numpy(), atol=1e-5)


# ---- colour segmenter (stand-in label maps) ------------------------------------------------

PALETTE = np.array([[20, 20, 20], [200, 30, 30], [30, 160, 60], [240, 240, 240]], np.uint8)


def numpy_lab(rgb: np.ndarray) -> np.ndarray:
    """Return CIE Lab (D65) of uint8 sRGB, written out from the sRGB and CIE definitions."""
    c = rgb / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    matrix = np.array([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169],
                       [0.019334, 0.119193, 0.950227]])
    xyz = linear @ matrix.T / np.array([0.950456, 1.0, 1.088754])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    lightness = np.where(xyz[..., 1] > 0.008856, 116 * f[..., 1] - 16, 903.3 * xyz[..., 1])
    return np.stack([lightness, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def palette_image(layout: np.ndarray, rng: np.random.Generator, noise: int = 6) -> np.ndarray:
    """Return an RGB image painting ``layout`` (palette indices) with small colour noise."""
    image = PALETTE[layout].astype(int) + rng.integers(-noise, noise + 1, layout.shape + (3,))
    return image.clip(0, 255).astype(np.uint8)


def test_colour_features_match_numpy_lab_and_positions() -> None:
    """Features are Lab (checked against the CIE formulas) then weighted (row, column)."""
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (9, 12, 3)).astype(np.uint8)
    config = ColourSegmenterConfig(num_classes=3, blur_sigma=0.0, position_weight=40.0)
    features = pixel_features(image, config)
    np.testing.assert_allclose(features[:, :3], numpy_lab(image).reshape(-1, 3), atol=0.5)
    rows, cols = np.meshgrid((np.arange(9) + 0.5) / 9, (np.arange(12) + 0.5) / 12,
                             indexing='ij')
    np.testing.assert_allclose(features[:, 3:], 40.0 * np.stack([rows.ravel(), cols.ravel()], 1))
    plain = pixel_features(image, ColourSegmenterConfig(num_classes=3, blur_sigma=0.0))
    assert plain.shape == (108, 3)


def test_colour_segmenter_labels_equal_brute_force_nearest_centre() -> None:
    """Every pixel gets the nearest centre (full distance matrix), for unseen images too."""
    rng = np.random.default_rng(5)
    train = [rng.integers(0, 256, (16, 20, 3)).astype(np.uint8) for _ in range(3)]
    config = ColourSegmenterConfig(num_classes=6, position_weight=25.0, blur_sigma=1.0,
                                   pixels_per_image=150, seed=3)
    segmenter = ColourSegmenter.fit(train, config)
    assert segmenter.centres.shape == (6, 5)
    assert np.all(np.diff(segmenter.centres[:, 0]) >= 0)
    for image in train[:1] + [rng.integers(0, 256, (11, 7, 3)).astype(np.uint8)]:
        features = pixel_features(image, config)
        distances = ((features[:, None, :] - segmenter.centres[None]) ** 2).sum(-1)
        expected = distances.argmin(1).reshape(image.shape[:2])
        labels = segmenter.label(image)
        assert labels.dtype == np.uint8 and labels.shape == image.shape[:2]
        np.testing.assert_array_equal(labels, expected)


def test_colour_segmenter_is_deterministic_and_consistent_across_images() -> None:
    """A colour gets the same id in every image (ordered by lightness); fits are repeatable."""
    rng = np.random.default_rng(6)
    layouts = [rng.integers(0, 4, (12, 16)) for _ in range(4)]
    images = [palette_image(layout, rng) for layout in layouts]
    config = ColourSegmenterConfig(num_classes=4, blur_sigma=0.0, pixels_per_image=100, seed=7)
    segmenter = ColourSegmenter.fit(images[:2], config)
    order = np.argsort(numpy_lab(PALETTE[None])[0, :, 0])
    colour_to_id = np.empty(4, int)
    colour_to_id[order] = np.arange(4)
    for layout, image in zip(layouts, images):
        np.testing.assert_array_equal(segmenter.label(image), colour_to_id[layout])
    again = ColourSegmenter.fit(images[:2], config)
    np.testing.assert_array_equal(again.centres, segmenter.centres)


def write_traversal(root, frames: int, rng: np.random.Generator) -> None:
    """Write a small two-traversal folder (PNG frames, lossless) with a ground truth."""
    import cv2
    for folder in ('query', 'ref'):
        (root / folder).mkdir(parents=True)
        for index in range(frames):
            layout = np.zeros((12, 16), int) + index % 4
            layout[:, : 2 + index] = (index + 1) % 4
            image = palette_image(layout, rng)
            cv2.imwrite(str(root / folder / f'{index:07d}.png'), image[:, :, ::-1])
    truth = [{'query': i, 'positives': [j for j in range(frames) if abs(i - j) <= 1]}
             for i in range(frames)]
    (root / 'ground_truth.json').write_text(json.dumps(truth))


def test_label_pngs_round_trip_and_feed_the_traversal_sources(tmp_path) -> None:
    """The CLI writes label PNGs equal to the in-memory maps; seg_root and k-means agree."""
    rng = np.random.default_rng(8)
    root, seg_root = tmp_path / 'corridor', tmp_path / 'labels'
    write_traversal(root, 10, rng)
    assert segment_main(['--root', str(root), '--out', str(seg_root), '--stop-frame', '6',
                         '--num-classes', '4', '--blur-sigma', '0']) == 0
    config = ColourSegmenterConfig(num_classes=4, blur_sigma=0.0)
    segmenter = fit_traversal(root, 0, 6, config)
    for folder in ('query', 'ref'):
        for index in (0, 9):
            stored = read_label_map(seg_root / folder / f'{index:07d}.png')
            assert stored.dtype == np.uint8
            np.testing.assert_array_equal(
                stored, segmenter.label(str(root / folder / f'{index:07d}.png')))
    common = {'kind': 'traversal', 'traversal_root': str(root), 'stop_frame': 6,
              'segmenter': config}
    from_pngs = StructDataConfig(seg_root=str(seg_root), **common).load()
    in_memory = StructDataConfig(**common).load()
    assert len(in_memory.queries) == len(in_memory.query_labels) == 6
    for path, array in zip(from_pngs.db_labels, in_memory.db_labels):
        np.testing.assert_array_equal(read_label_map(path), array)
    evaluation = StructEvalConfig(kind='traversal', traversal_root=str(root), first_frame=6)
    held_out = evaluation.load(StructDataConfig(**common), labels=True)
    assert held_out.positives[0] == (0, 1) and len(held_out.queries) == 4
    for offset, labels in enumerate(held_out.queries):
        np.testing.assert_array_equal(
            labels, segmenter.label(str(root / 'query' / f'{6 + offset:07d}.png')))
    assert evaluation.load(StructDataConfig(), labels=True) is None


def test_colour_segmenter_rejects_bad_input(tmp_path) -> None:
    """Wrong dims or dtype, missing files, too few colours and class mismatches raise."""
    config = ColourSegmenterConfig(num_classes=3, pixels_per_image=50)
    segmenter = ColourSegmenter(np.zeros((3, 3)), config)
    with pytest.raises(ImageDecodeError, match=r'\[H, W, 3\] uint8'):
        segmenter.label(np.zeros((8, 8), np.uint8))
    with pytest.raises(ImageDecodeError, match=r'\[H, W, 3\] uint8'):
        segmenter.label(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ImageDecodeError, match='missing.jpg'):
        ColourSegmenter.fit([str(tmp_path / 'missing.jpg')], config)
    with pytest.raises(DatasetError, match='no training images'):
        ColourSegmenter.fit([], config)
    with pytest.raises(ConfigError, match='distinct'):
        ColourSegmenter.fit([np.full((6, 6, 3), 90, np.uint8)], config)
    with pytest.raises(ConfigError, match='centres'):
        ColourSegmenter(np.zeros((2, 3)), config)
    with pytest.raises(ConfigError):
        ColourSegmenterConfig(num_classes=0)
    with pytest.raises(ImageEncodeError, match='uint8'):
        write_label_map(tmp_path / 'bad.png', np.zeros((4, 4), np.int32))
    with pytest.raises(ConfigError, match='labels.num_classes'):
        load_config(StructVprConfig, CORRIDOR_CONFIG, ['labels.num_classes=12'])
    with pytest.raises(DatasetError, match='does not exist'):
        fit_traversal(tmp_path / 'nowhere', 0, 0, config)


def test_structvpr_toy_run_on_the_corridor_improves_held_out_recall(tmp_path,
                                                                    corridor_dir) -> None:
    """Frames 0-59 of the real corridor train, frames 60-110 (unseen places) evaluate.

    Label maps are colour k-means clusters fitted on the training frames (no segmenter is
    available). The untrained student (seeded init, batch-norm statistics and NetVLAD clusters
    from the training database) and the exported, reloaded student are measured here. Seeds
    0-7 gave +11.8 to +29.5 R@1 points (see docs/training.md).
    """
    torch.set_num_threads(1)
    overrides = [f'run.output_root={tmp_path}', f'data.traversal_root={corridor_dir}',
                 f'evaluation.traversal_root={corridor_dir}']
    config = load_config(StructVprConfig, CORRIDOR_CONFIG, overrides)
    eval_set = config.evaluation.load(config.data)
    assert len(eval_set.queries) == 51 and all(eval_set.positives)
    untrained = evaluate_recall(untrained_student(config, config.data.load()), eval_set)
    run_dir = run_structvpr(config, progress=lambda items, total: items)
    student = json.loads((run_dir / 'export.json').read_text())['evaluation']
    assert student['initial']['r@1'] == pytest.approx(untrained['r@1'])
    model = load_weights(run_dir / 'weights.safetensors', GemNet)
    assert model.options['in_channels'] == 3
    measured = evaluate_recall(model, eval_set)
    assert measured['r@1'] == pytest.approx(student['final']['r@1'])
    assert measured['r@1'] >= untrained['r@1'] + 8.0, (untrained, measured)
    scalars = [json.loads(line) for line in (run_dir / 'scalars.jsonl').read_text().splitlines()]
    assert any(s.get('distilled_fraction', 0.0) > 0.0 for s in scalars)
