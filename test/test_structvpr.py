"""StructVPR: label maps, partition weights and distillation against numpy, toy two-stage run."""

import json

from conftest import REPO_ROOT
import numpy as np
import pytest
import torch

from vpr_ros.core.errors import ConfigError
from vpr_ros.core.models.checkpoint import load_checkpoint
from vpr_ros_training.config import load_config
from vpr_ros_training.gcl.export import export_core_checkpoint
from vpr_ros_training.gcl.networks import GemNet
from vpr_ros_training.gcl.retrieval import evaluate_recall
from vpr_ros_training.gcl.runner import load_weights
from vpr_ros_training.structvpr.distillation import weighted_distillation
from vpr_ros_training.structvpr.label_maps import encode_label_maps
from vpr_ros_training.structvpr.label_maps import LabelMapConfig
from vpr_ros_training.structvpr.partition import distillation_weights
from vpr_ros_training.structvpr.partition import partition, PartitionConfig
from vpr_ros_training.structvpr.partition import positive_ranks
from vpr_ros_training.structvpr.street_scenes import CLASSES, render_street
from vpr_ros_training.structvpr.street_scenes import StreetConfig
from vpr_ros_training.structvpr.train import BranchConfig, run_structvpr, StructVprConfig

TOY_CONFIG = REPO_ROOT / 'training' / 'vpr_ros_training' / 'configs' / 'structvpr_toy.yaml'


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
    measured = evaluate_recall(model, config.evaluation.load(config.data.street))
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
