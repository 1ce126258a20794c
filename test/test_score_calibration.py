"""Fusion beta choice and calibration fitting of the default-weights recipe, against loops."""

import numpy as np
import pytest
import torch
from training_fixtures import one_thread  # noqa: F401  (autouse fixture)
from vpr_ros.models.registry import create_model
from vpr_ros_training.route_features import encode_route, RoutesConfig
from vpr_ros_training.score_calibration import (assess_scoring, calibration_samples, choose_beta,
                                                fit_route_calibration, score_shortlists,
                                                ShortlistScores)


def random_scores(seed: int, queries: int = 30, k: int = 6) -> ShortlistScores:
    """Shortlists whose pair score and similarity are both noisy signals of correctness."""
    rng = np.random.default_rng(seed)
    correct = rng.random((queries, k)) < 0.3
    pair = 2.0 * correct + rng.normal(0, 1.5, (queries, k))
    similarity = 0.6 + 0.05 * correct + rng.normal(0, 0.04, (queries, k))
    shortlist = np.tile(np.arange(k), (queries, 1))
    positives = tuple(np.flatnonzero(row) for row in correct)
    return ShortlistScores(seed, shortlist, pair, similarity, correct, positives)


def brute_force_r1(route: ShortlistScores, beta: float) -> float:
    """Recall@1 of pair + beta * similarity, one query at a time (ties: first slot)."""
    hits = []
    for q in range(len(route.pair)):
        best = max(range(route.pair.shape[1]),
                   key=lambda j: (route.pair[q, j] + beta * route.similarity[q, j], -j))
        hits.append(bool(route.correct[q, best]))
    return 100.0 * np.mean(hits)


def test_choose_beta_matches_brute_force() -> None:
    """The chosen beta has the best Recall@1 of the grid; every table entry is exact."""
    route = random_scores(1)
    betas = (0.0, 5.0, 20.0, 80.0)
    beta, table = choose_beta([route], betas)
    for b in betas:
        assert table[b][1] == pytest.approx(brute_force_r1(route, b))
    assert table[beta][1] == max(table[b][1] for b in betas)


def test_ties_go_to_the_smaller_beta() -> None:
    """When every beta ranks the same, the smallest one is chosen."""
    route = random_scores(2)
    same = ShortlistScores(2, route.shortlist, route.pair, np.zeros_like(route.similarity),
                           route.correct, route.positives)
    assert choose_beta([same], (40.0, 10.0, 80.0))[0] == 10.0


def test_empty_slots_never_rank_first() -> None:
    """Slots with similarity -inf (fewer map frames than K) stay last, whatever beta is."""
    route = random_scores(3)
    similarity = route.similarity.copy()
    similarity[:, 0] = -np.inf
    pair = route.pair.copy()
    pair[:, 0] = 100.0
    holed = ShortlistScores(3, route.shortlist, pair, similarity, route.correct,
                            route.positives)
    for beta in (0.0, 10.0):
        assert (holed.ranking('fused', beta)[:, -1] == 0).all()
        assert np.isfinite(holed.best('fused', beta)[0]).all()


def test_calibration_is_fitted_on_both_settings_and_monotone() -> None:
    """One sample per query and setting; the fitted probability rises with the score."""
    revisit, novel = [random_scores(4)], [random_scores(5)]
    scores, labels = calibration_samples(revisit, novel, 10.0)
    assert scores.shape == labels.shape == (60,)
    scoring = fit_route_calibration(revisit, novel, 10.0, 'unit test')
    assert scoring.beta == 10.0 and scoring.calibration.scale > 0
    probability = scoring.calibration.probability(np.sort(scores))
    assert np.all(np.diff(probability) >= 0)
    report = assess_scoring(revisit, novel, scoring)
    assert report['mixed_reliability']['decisions'] == 60
    assert set(report) >= {'global', 'pair', 'fused', 'novel_at_0.9'}


def test_score_shortlists_on_a_rendered_route() -> None:
    """Pair scores equal the model's on stored tokens; the novel setting has no positives."""
    torch.manual_seed(0)
    model = create_model('pairvpr_lite', pretrained=False, input_size=(64, 96),
                         pair_head='correspondence').eval()
    routes = RoutesConfig(train_seeds=(1,), frames_per_traversal=12)
    route = encode_route(model, 101, routes)
    revisit = score_shortlists(model, route, top_k=5, radius_m=12.0)
    novel = score_shortlists(model, route, top_k=5, radius_m=12.0, novel_exclusion_m=15.0)
    q, j = 3, revisit.shortlist[3, 1]
    with torch.no_grad():
        expected = model.pair_score(route.query_features[q:q + 1].float(),
                                    route.map_features[j:j + 1].float())
    assert revisit.pair[q, 1] == pytest.approx(float(expected), abs=1e-3)
    near = route.distance <= 15.0
    for row in range(len(novel.shortlist)):
        slots = np.isfinite(novel.similarity[row])
        assert not near[row, novel.shortlist[row][slots]].any()
        assert len(novel.positives[row]) == 0 and not novel.correct[row].any()
