"""Metrics against hand-worked 3-query cases and an independent brute-force recomputation."""

import math

import numpy as np
import pytest

from vpr_ros.data.ground_truth import positives_within_radius, wrap_angle
from vpr_ros.errors import ConfigError
from vpr_ros.evaluation.metrics import (best_f1, first_positive_ranks, format_recalls,
                                        latency_percentiles, max_recall_at_full_precision, pr_auc,
                                        precision_recall, recall_at_n)

TOY_PREDICTIONS = np.array([[4, 2, 7], [1, 3, 5], [0, 6, 8]])
TOY_POSITIVES = [[2], [1, 9], []]


def test_recall_toy_divides_by_all_queries() -> None:
    """q0 is found at rank 2, q1 at rank 1, q2 has no positive and is a miss."""
    recalls = recall_at_n(TOY_PREDICTIONS, TOY_POSITIVES, ns=(1, 2, 3))
    assert recalls == pytest.approx({1: 100 / 3, 2: 200 / 3, 3: 200 / 3})
    assert list(recalls) == [1, 2, 3]


def test_recall_toy_skipping_queries_without_positives() -> None:
    """The GCL convention leaves q2 out of the denominator."""
    recalls = recall_at_n(TOY_PREDICTIONS, TOY_POSITIVES, ns=(1, 2),
                          skip_queries_without_positives=True)
    assert recalls == pytest.approx({1: 50.0, 2: 100.0})


def test_recall_cutoff_above_k_and_padding() -> None:
    """A cut-off above K uses every prediction; -1 padding never matches."""
    preds = np.array([[-1, -1], [5, -1], [3, 1]])
    recalls = recall_at_n(preds, [[0], [5], [1]], ns=(1, 5))
    assert recalls == pytest.approx({1: 100 / 3, 5: 200 / 3})
    assert list(first_positive_ranks(preds, [[0], [5], [1]])) == [-1, 0, 1]


def test_recall_rejects_bad_shapes() -> None:
    """The prediction rows must match the queries and cut-offs must be positive."""
    with pytest.raises(ConfigError, match='predictions'):
        recall_at_n(np.zeros((2, 3)), TOY_POSITIVES)
    with pytest.raises(ConfigError, match='cut-offs'):
        recall_at_n(TOY_PREDICTIONS, TOY_POSITIVES, ns=(0,))


def test_format_recalls_matches_vpr_methods_evaluation() -> None:
    """One decimal, ``R@N: value`` joined by a comma and a space."""
    assert format_recalls({1: 68.468, 5: 92.79, 10: 99.1}) == 'R@1: 68.5, R@5: 92.8, R@10: 99.1'
    assert format_recalls({1: 68.468}, decimals=2) == 'R@1: 68.47'


def test_positives_within_radius_toy_is_inclusive() -> None:
    """Database points at exactly 25 m count; 25.01 m does not."""
    db = np.array([[0.0, 0.0], [25.0, 0.0], [0.0, 25.01], [15.0, 20.0]])
    queries = np.array([[0.0, 0.0], [100.0, 100.0], [25.0, 0.0]])
    found = positives_within_radius(queries, db, 25.0)
    assert [list(ids) for ids in found] == [[0, 1, 3], [], [0, 1, 3]]


def test_positives_within_radius_heading_limit() -> None:
    """With a 45 degree limit a database image facing backwards is not a positive."""
    db = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    db_yaw = np.array([math.pi - 0.1, 0.2, -math.pi + 0.05])
    found = positives_within_radius(np.array([[0.0, 0.0]]), db, 5.0, np.array([math.pi]), db_yaw,
                                    math.radians(45))
    assert list(found[0]) == [0, 2]
    with pytest.raises(ConfigError, match='query_yaw and db_yaw'):
        positives_within_radius(np.zeros((1, 2)), db, 5.0, max_yaw_diff_rad=1.0)


def test_positives_within_radius_empty_database() -> None:
    """No database gives an empty positive list per query."""
    found = positives_within_radius(np.zeros((2, 2)), np.zeros((0, 2)), 25.0)
    assert [len(ids) for ids in found] == [0, 0]


def test_positives_within_radius_three_dimensional() -> None:
    """[N, 3] positions use the 3-D distance (random points against a loop); widths must agree."""
    rng = np.random.default_rng(2)
    db = rng.uniform(0, 30, size=(80, 3))
    queries = np.vstack([rng.uniform(0, 30, size=(20, 3)), [[0.0, 0.0, 0.0]]])
    db[0] = (3.0, 0.0, 4.0)    # exactly 5 m from the last query: inclusive
    db[1] = (3.0, 4.0, 0.5)    # 5 m in the x-y plane, 5.02 m in 3-D: not a positive
    found = positives_within_radius(queries, db, 5.0)
    expected = [[j for j, d in enumerate(db) if math.dist(q, d) <= 5.0] for q in queries]
    assert [list(ids) for ids in found] == expected
    assert 0 in expected[-1] and 1 not in expected[-1]
    with pytest.raises(ConfigError, match='3 coordinates but database positions 2'):
        positives_within_radius(queries, db[:, :2], 5.0)
    with pytest.raises(ConfigError, match=r'\[N, 2\] or \[N, 3\]'):
        positives_within_radius(np.zeros((2, 4)), db, 5.0)


def test_precision_recall_toy() -> None:
    """Four decisions, three queries with a true match: hand-worked curve and summaries."""
    precision, recall, thresholds = precision_recall([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0],
                                                     num_positives=3)
    assert list(thresholds) == [0.9, 0.8, 0.7, 0.6]
    assert precision == pytest.approx([1.0, 0.5, 2 / 3, 0.5])
    assert recall == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3])
    assert pr_auc(precision, recall) == pytest.approx(1 / 3 + 2 / 9)
    assert max_recall_at_full_precision(precision, recall) == pytest.approx(1 / 3)
    assert best_f1(precision, recall, thresholds) == pytest.approx((2 / 3, 0.7))


def test_precision_recall_ties_form_one_point() -> None:
    """Equal scores are accepted together."""
    precision, recall, thresholds = precision_recall([0.5, 0.2, 0.5], [1, 1, 0])
    assert list(thresholds) == [0.5, 0.2]
    assert precision == pytest.approx([0.5, 2 / 3])
    assert recall == pytest.approx([0.5, 1.0])
    assert max_recall_at_full_precision(precision, recall) == 0.0


def test_precision_recall_empty_and_nan() -> None:
    """Scores that are NaN never accept; an empty curve summarises to zeros."""
    precision, recall, thresholds = precision_recall([float('nan')], [1])
    assert precision.size == recall.size == thresholds.size == 0
    assert pr_auc(precision, recall) == 0.0
    assert best_f1(precision, recall)[0] == 0.0
    with pytest.raises(ConfigError, match='labels'):
        precision_recall([0.1, 0.2], [1])


def test_latency_percentiles_hand_worked() -> None:
    """Linear-interpolated percentiles of 1..5 ms."""
    stats = latency_percentiles([3.0, 1.0, 5.0, 2.0, 4.0, float('nan')])
    assert stats['count'] == 5
    assert stats['mean'] == pytest.approx(3.0)
    assert stats['p50'] == pytest.approx(3.0)
    assert stats['p90'] == pytest.approx(4.6)
    assert stats['max'] == 5.0
    assert latency_percentiles([])['count'] == 0


def test_wrap_angle() -> None:
    """Angles wrap into [-pi, pi)."""
    assert wrap_angle(np.array([3 * math.pi / 2, -3 * math.pi / 2, 0.5])) == pytest.approx(
        [-math.pi / 2, math.pi / 2, 0.5])


# ---------------------------------------------------------------- brute-force recomputation

def _brute_recall(preds: np.ndarray, positives: list, ns: tuple) -> dict:
    result = {}
    for n in ns:
        found = sum(1 for q, row in enumerate(preds) if set(row[:n].tolist()) & set(positives[q]))
        result[n] = 100.0 * found / len(preds)
    return result


def _brute_radius(queries: np.ndarray, db: np.ndarray, radius: float) -> list:
    return [[j for j, d in enumerate(db) if math.hypot(*(q - d)) <= radius] for q in queries]


def _brute_pr(scores: np.ndarray, labels: np.ndarray, total: int) -> list:
    points = []
    for t in sorted(set(scores.tolist()), reverse=True):
        accepted = [lab for s, lab in zip(scores, labels) if s >= t]
        tp = sum(accepted)
        points.append((tp / len(accepted), tp / total, t))
    return points


def test_recall_and_radius_match_brute_force_on_random_data() -> None:
    """Random positions, KD-tree positives and Recall@N equal plain loops over everything."""
    rng = np.random.default_rng(7)
    db = rng.uniform(0, 200, size=(300, 2))
    queries = rng.uniform(0, 200, size=(60, 2))
    positives = positives_within_radius(queries, db, 12.5)
    assert [list(p) for p in positives] == _brute_radius(queries, db, 12.5)
    preds = np.stack([rng.permutation(300)[:20] for _ in range(60)])
    ns = (1, 5, 10, 20)
    assert recall_at_n(preds, positives, ns) == pytest.approx(_brute_recall(preds, positives, ns))


def test_precision_recall_matches_brute_force_on_random_data() -> None:
    """Random scores with ties: every curve point and summary equals a per-threshold loop."""
    rng = np.random.default_rng(11)
    scores = np.round(rng.uniform(0, 1, 200), 2)
    labels = rng.uniform(0, 1, 200) < scores
    total = int(labels.sum()) + 13
    precision, recall, thresholds = precision_recall(scores, labels, num_positives=total)
    brute = _brute_pr(scores, labels, total)
    assert np.column_stack([precision, recall, thresholds]) == pytest.approx(np.array(brute))
    ap = sum((r - prev_r) * p for (p, r, _), prev_r in zip(brute, [0.0] + [b[1] for b in brute]))
    assert pr_auc(precision, recall) == pytest.approx(ap)
    full = [r for p, r, _ in brute if p == 1.0]
    assert max_recall_at_full_precision(precision, recall) == pytest.approx(max(full, default=0))
    f1 = max(2 * p * r / (p + r) for p, r, _ in brute if p + r > 0)
    assert best_f1(precision, recall)[0] == pytest.approx(f1)


def test_average_precision_matches_scikit_learn() -> None:
    """A second implementation (scikit-learn) agrees on the area when it is installed."""
    metrics = pytest.importorskip('sklearn.metrics')
    rng = np.random.default_rng(3)
    scores = rng.normal(size=150)
    labels = rng.uniform(size=150) < 0.4
    precision, recall, _ = precision_recall(scores, labels)
    expected = metrics.average_precision_score(labels, scores)
    assert pr_auc(precision, recall) == pytest.approx(expected)


def test_reliability_matches_a_hand_count() -> None:
    """Bins, per-bin accuracy and ECE against values worked out by hand."""
    from vpr_ros.evaluation.metrics import precision_at_probability, reliability
    p = [0.05, 0.15, 0.95, 0.92, 0.91, 1.0, float('nan')]
    y = [False, True, True, True, False, True, True]
    table = reliability(p, y, bins=10)
    assert table['decisions'] == 6
    assert table['count'] == [1, 1, 0, 0, 0, 0, 0, 0, 0, 4]
    assert table['accuracy'][9] == pytest.approx(0.75)
    assert table['mean_probability'][9] == pytest.approx((0.95 + 0.92 + 0.91 + 1.0) / 4)
    expected_ece = (1 * 0.05 + 1 * 0.85 + 4 * abs(0.75 - 0.945)) / 6
    assert table['ece'] == pytest.approx(expected_ece)
    assert table['brier'] == pytest.approx(np.mean(
        (np.array(p[:6]) - np.array(y[:6], float)) ** 2))
    at = precision_at_probability(p, y, 0.9)
    assert (at['accepted'], at['correct']) == (4, 3) and at['precision'] == pytest.approx(0.75)
    with pytest.raises(ConfigError, match=r'\[0, 1\]'):
        reliability([1.5], [True])
