"""Score fusion and calibration: brute-force orderings, checkpoint round trip, warnings."""

import logging

import numpy as np
import pytest
from safetensors import safe_open
import torch

from vpr_ros.config import LocalizerConfig
from vpr_ros.errors import CheckpointError, ConfigError
from vpr_ros.geometry import pose_from_xy_yaw
from vpr_ros.localization.localizer import Localizer
from vpr_ros.map.database import MapDatabase
from vpr_ros.models.calibration import Calibration, PAIR_SCORE_CALIBRATION
from vpr_ros.models.checkpoint import load_checkpoint, save_checkpoint
from vpr_ros.models.fusion import fuse_scores, plan_scoring, RerankScoring
from vpr_ros.models.registry import create_model

INPUT = (64, 96)
SCORING = RerankScoring('fused', 30.0, Calibration(0.2, -3.0), 'unit test')


@pytest.fixture(scope='module')
def model():
    """A small pair-classifier model with seeded random weights."""
    torch.manual_seed(1)
    torch.set_num_threads(1)
    return create_model('pairvpr_lite', pretrained=False, input_size=INPUT).eval()


def _images(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (n, 16, 24, 3)).astype(np.uint8)
    return [np.kron(b, np.ones((4, 4, 1), np.uint8)) for b in base]


@pytest.fixture
def localizer(model) -> Localizer:
    """A localizer over 10 random map images, 1 m apart, stamped 0.1 s apart."""
    loc = Localizer(model, MapDatabase(model.spec), LocalizerConfig(top_k=10, device='cpu'))
    for i, image in enumerate(_images(10, seed=0)):
        loc.add_to_map(image, stamp_ns=i * 10 ** 8, pose=pose_from_xy_yaw(float(i), 0.0, 0.0))
    return loc


def test_fuse_scores_closed_form() -> None:
    """Fused = pair + beta * similarity; pair and global ignore the other input."""
    pair, sims = np.array([1.0, -2.0]), np.array([0.5, 0.9])
    np.testing.assert_allclose(fuse_scores(pair, sims, 'fused', 10.0), [6.0, 7.0])
    np.testing.assert_allclose(fuse_scores(pair, sims, 'pair', 10.0), pair)
    np.testing.assert_allclose(fuse_scores(pair, sims, 'global', 10.0), sims)
    with pytest.raises(ConfigError, match='unknown re-ranking fusion'):
        fuse_scores(pair, sims, 'mean', 1.0)


@pytest.mark.parametrize('fusion, beta', [('fused', 25.0), ('pair', -1.0), ('global', -1.0),
                                          ('fused', 0.0)])
def test_ranking_equals_brute_force_scores(localizer: Localizer, model, fusion: str,
                                           beta: float) -> None:
    """Each fusion orders the shortlist exactly by its score computed pair by pair."""
    model.rerank_scoring = None
    localizer.update_config(LocalizerConfig(top_k=10, rerank_fusion=fusion, fusion_beta=beta))
    query = _images(1, seed=7)[0]
    result = localizer.localize(query)
    descriptor, tokens = localizer.describe([query])
    q = torch.from_numpy(tokens.astype(np.float32))
    expected = {}
    for map_id in range(10):
        with torch.inference_mode():
            pair = float(model.pair_score(q, torch.from_numpy(
                localizer.database.tokens([map_id]).astype(np.float32))))
        sim = float(localizer.database.descriptors[map_id] @ descriptor[0])
        expected[map_id] = {'fused': pair + max(beta, 0.0) * sim, 'pair': pair,
                            'global': sim}[fusion]
    ranked = [c.map_id for c in result.candidates]
    assert ranked == sorted(expected, key=lambda i: -expected[i])
    np.testing.assert_allclose([c.score for c in result.candidates],
                               [expected[i] for i in ranked], atol=2e-4)
    assert result.reranked and not np.isnan(result.candidates[0].pair_score)


def test_checkpoint_round_trip_carries_scoring(model, tmp_path) -> None:
    """The scoring is stored as checkpoint metadata and set on the loaded model."""
    path = save_checkpoint(model, tmp_path / 'm.safetensors', rerank_scoring=SCORING)
    loaded = load_checkpoint(path)
    assert loaded.rerank_scoring == SCORING
    model.rerank_scoring = None
    plain = load_checkpoint(save_checkpoint(model, tmp_path / 'plain.safetensors'))
    assert plain.rerank_scoring is None


def test_stored_calibration_gives_the_probability(localizer: Localizer, model) -> None:
    """With the stored beta, probability = sigmoid(scale * fused + offset), monotone in rank."""
    model.rerank_scoring = SCORING
    localizer.update_config(LocalizerConfig(top_k=10))
    result = localizer.localize(_images(1, seed=3)[0])
    assert localizer.scoring.calibrated and localizer.scoring.beta == 30.0
    scores = np.array([c.score for c in result.candidates])
    np.testing.assert_allclose([c.probability for c in result.candidates],
                               SCORING.calibration.probability(scores))
    fused = np.array([c.pair_score + 30.0 * c.global_similarity for c in result.candidates])
    np.testing.assert_allclose(scores, fused, atol=1e-9)
    probabilities = [c.probability for c in result.candidates]
    assert probabilities == sorted(probabilities, reverse=True)


def test_missing_or_mismatched_calibration_warns(localizer: Localizer, model, caplog) -> None:
    """No stored calibration, or another beta, falls back to sigmoid(pair / 2) with a warning."""
    for stored, beta, reason in ((None, -1.0, 'stores no calibration'),
                                 (SCORING, 5.0, 'fitted for fused (beta 30)')):
        model.rerank_scoring = stored
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger='vpr_ros.localization.localizer'):
            localizer.update_config(LocalizerConfig(top_k=10, fusion_beta=beta))
        assert reason in caplog.text and 'uncalibrated' in caplog.text
        assert not localizer.scoring.calibrated
        result = localizer.localize(_images(1, seed=4)[0])
        pair = np.array([c.pair_score for c in result.candidates])
        np.testing.assert_allclose([c.probability for c in result.candidates],
                                   PAIR_SCORE_CALIBRATION.probability(pair))


def test_plan_scoring_rules() -> None:
    """-1 takes the stored beta; the calibration applies only to the score it was fitted on."""
    assert plan_scoring(SCORING, 'fused', -1.0).calibration == SCORING.calibration
    assert plan_scoring(SCORING, 'fused', 30.0).calibrated
    assert not plan_scoring(SCORING, 'pair', -1.0).calibrated
    plan = plan_scoring(None, 'fused', -1.0)
    assert plan.beta == 0.0 and 'no fusion beta' in plan.warning
    pair_only = RerankScoring('pair', 0.0, Calibration(0.5, 0.0))
    assert plan_scoring(pair_only, 'pair', 7.0).calibrated


@pytest.mark.parametrize('text, match', [
    ('not json', 'not valid JSON'),
    ('[]', 'JSON object'),
    ('{"fusion": "fused"}', 'lacks the field'),
    ('{"fusion": "max", "beta": 1}', 'is not one of'),
    ('{"fusion": "fused", "beta": -2}', 'beta must be'),
    ('{"fusion": "fused", "beta": "80"}', 'must be a number'),
    ('{"fusion": "fused", "beta": 1, "calibration": {"kind": "logistic", "scale": -1, '
     '"offset": 0}}', 'scale > 0'),
    ('{"fusion": "fused", "beta": 1, "calibration": {"kind": "isotonic"}}', 'must be null'),
    ('{"fusion": "fused", "beta": 1, "extra": 3}', 'unknown fields'),
])
def test_malformed_scoring_is_refused(text: str, match: str) -> None:
    """Every malformed field is named."""
    with pytest.raises(ConfigError, match=match):
        RerankScoring.from_json(text)


def test_forged_scoring_metadata_is_a_checkpoint_error(model, tmp_path) -> None:
    """A checkpoint whose rerank_scoring metadata is malformed fails to load, naming it."""
    from safetensors.torch import load_file, save_file
    path = save_checkpoint(model, tmp_path / 'm.safetensors', rerank_scoring=SCORING)
    with safe_open(str(path), framework='pt') as handle:
        metadata = dict(handle.metadata())
    metadata['rerank_scoring'] = '{"fusion": "fused", "beta": "eighty"}'
    save_file(load_file(str(path)), str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match='malformed rerank_scoring'):
        load_checkpoint(path)


def test_config_refuses_negative_beta_other_than_minus_one() -> None:
    """fusion_beta is -1 (checkpoint) or >= 0."""
    with pytest.raises(ConfigError, match='fusion_beta'):
        LocalizerConfig(fusion_beta=-0.5)
    assert LocalizerConfig(fusion_beta=0.0).fusion_beta == 0.0
