"""Evaluation numbers: Recall@N, positives by radius, loop-closure precision-recall, latency.

Recall@N follows VPR-methods-evaluation: a query counts as found at ``N`` when any of its first
``N`` predictions is a positive, and the count is divided by *all* queries (queries without a
positive are misses) unless ``skip_queries_without_positives`` is set (the GCL convention).

Loop-closure precision-recall treats every query as one decision: the system's best match with its
score, labelled correct when that match is a positive. Accepting every match whose score reaches a
threshold gives one (precision, recall) point per distinct score; recall is divided by the number
of queries that have a true match (``num_positives``).
"""

from typing import Mapping, Optional, Sequence

import numpy as np

from vpr_ros.errors import ConfigError

DEFAULT_RECALL_VALUES = (1, 5, 10, 20)
LATENCY_PERCENTILES = (50, 90, 95, 99)


def recall_at_n(predictions: np.ndarray, positives: Sequence[Sequence[int]],
                ns: Sequence[int] = DEFAULT_RECALL_VALUES,
                skip_queries_without_positives: bool = False) -> dict[int, float]:
    """Return Recall@N in percent for every ``N`` in ``ns``.

    Args:
        predictions: ``[Q, K]`` database ids ranked best first; ``-1`` pads missing results.
        positives: for each query, the database ids that count as a correct match.
        ns: the cut-offs ``N`` (a cut-off above ``K`` uses all ``K`` predictions).
        skip_queries_without_positives: divide by the queries that have a positive instead of
            by all queries (those without one are then left out entirely).

    Returns:
        ``{N: recall_percent}`` in the order of ``ns``.
    """
    preds = _as_predictions(predictions, len(positives))
    ns = _check_ns(ns)
    first_hits = first_positive_ranks(preds, positives)
    has_positive = np.array([len(p) > 0 for p in positives], dtype=bool)
    denominator = int(has_positive.sum()) if skip_queries_without_positives else len(positives)
    if denominator == 0:
        return dict.fromkeys(ns, 0.0)
    found = first_hits >= 0
    return {n: 100.0 * float(np.sum(found & (first_hits < n))) / denominator for n in ns}


def first_positive_ranks(predictions: np.ndarray,
                         positives: Sequence[Sequence[int]]) -> np.ndarray:
    """Return, per query, the 0-based rank of the first positive prediction (-1 when none)."""
    preds = _as_predictions(predictions, len(positives))
    ranks = np.full(len(positives), -1, dtype=np.int64)
    for q, query_positives in enumerate(positives):
        hits = np.flatnonzero(np.isin(preds[q], np.asarray(query_positives, dtype=np.int64)))
        if hits.size:
            ranks[q] = hits[0]
    return ranks


def _as_predictions(predictions: np.ndarray, num_queries: int) -> np.ndarray:
    preds = np.asarray(predictions)
    if preds.ndim == 1 and preds.size == 0:
        preds = preds.reshape(num_queries, 0)
    if preds.ndim != 2 or preds.shape[0] != num_queries:
        raise ConfigError(f'predictions must be [Q, K] with Q = {num_queries} queries, '
                          f'got shape {preds.shape}')
    return preds.astype(np.int64, copy=False)


def _check_ns(ns: Sequence[int]) -> tuple[int, ...]:
    ns = tuple(int(n) for n in ns)
    if not ns or min(ns) < 1:
        raise ConfigError(f'recall cut-offs must be positive integers, got {ns}')
    return ns


def precision_recall(scores: Sequence[float], labels: Sequence[bool],
                     num_positives: Optional[int] = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the precision-recall curve of accepting every decision with ``score >= t``.

    Args:
        scores: one confidence per decision (higher = more confident); NaN scores never accept.
        labels: whether each decision is correct.
        num_positives: recall denominator (default: the number of correct decisions). For loop
            closure it is the number of queries that have a true match in the map.

    Returns:
        ``(precision, recall, thresholds)``, one entry per distinct score, thresholds decreasing
        (so recall is non-decreasing). Empty arrays when nothing can be accepted.
    """
    score_arr, label_arr = _check_scores(scores, labels)
    total = int(label_arr.sum()) if num_positives is None else int(num_positives)
    if total < label_arr.sum():
        raise ConfigError(f'num_positives={total} is below the {int(label_arr.sum())} correct '
                          'decisions')
    order = np.argsort(-score_arr, kind='stable')
    sorted_scores, sorted_labels = score_arr[order], label_arr[order]
    last_of_each = np.flatnonzero(np.diff(sorted_scores, append=-np.inf) != 0)
    true_pos = np.cumsum(sorted_labels)[last_of_each].astype(np.float64)
    accepted = (last_of_each + 1).astype(np.float64)
    precision = true_pos / np.maximum(accepted, 1.0)
    recall = true_pos / total if total > 0 else np.zeros_like(true_pos)
    return precision, recall, sorted_scores[last_of_each]


def _check_scores(scores: Sequence[float],
                  labels: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    score_arr = np.asarray(scores, dtype=np.float64).reshape(-1)
    label_arr = np.asarray(labels).reshape(-1).astype(bool)
    if score_arr.shape != label_arr.shape:
        raise ConfigError(f'{score_arr.size} scores but {label_arr.size} labels')
    finite = ~np.isnan(score_arr)
    return score_arr[finite], label_arr[finite]


def pr_auc(precision: np.ndarray, recall: np.ndarray) -> float:
    """Return the area under the precision-recall curve as average precision.

    ``sum_i (R_i - R_{i-1}) * P_i`` with ``R_0 = 0`` over the points of :func:`precision_recall`
    (the step interpolation scikit-learn's ``average_precision_score`` uses; no trapezoids).
    """
    precision, recall = np.asarray(precision, float), np.asarray(recall, float)
    if recall.size == 0:
        return 0.0
    steps = np.diff(recall, prepend=0.0)
    return float(np.sum(steps * precision))


def max_recall_at_full_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """Return the highest recall reached with no false positive (0 when none is)."""
    precision, recall = np.asarray(precision, float), np.asarray(recall, float)
    full = precision >= 1.0
    return float(recall[full].max()) if np.any(full) else 0.0


def best_f1(precision: np.ndarray, recall: np.ndarray,
            thresholds: Optional[np.ndarray] = None) -> tuple[float, float]:
    """Return ``(best F1, threshold reaching it)``; the threshold is NaN without ``thresholds``.

    F1 is ``2PR / (P + R)`` (0 where both are 0); an empty curve gives ``(0.0, nan)``.
    """
    precision, recall = np.asarray(precision, float), np.asarray(recall, float)
    if precision.size == 0:
        return 0.0, float('nan')
    denominator = precision + recall
    f1 = np.where(denominator > 0, 2 * precision * recall / np.maximum(denominator, 1e-300), 0.0)
    best = int(np.argmax(f1))
    threshold = float(thresholds[best]) if thresholds is not None else float('nan')
    return float(f1[best]), threshold


def reliability(probabilities: Sequence[float], correct: Sequence[bool],
                bins: int = 10) -> dict:
    """Return the reliability diagram of probabilistic decisions and the calibration error.

    Decisions are grouped into ``bins`` equal-width probability bins over [0, 1] (the last one
    closed). Per bin: ``count``, ``mean_probability`` and ``accuracy`` (fraction correct; NaN in
    an empty bin). ``ece`` is the expected calibration error
    ``sum_b count_b / n * |accuracy_b - mean_probability_b|``; ``brier`` the mean squared error
    of the probabilities. NaN probabilities are left out.
    """
    prob, labels = _check_scores(probabilities, correct)
    if bins < 1:
        raise ConfigError(f'reliability needs at least one bin, got {bins}')
    if np.any((prob < 0.0) | (prob > 1.0)):
        raise ConfigError('probabilities must lie in [0, 1]')
    index = np.minimum((prob * bins).astype(np.int64), bins - 1)
    counts = np.bincount(index, minlength=bins)
    sums = np.bincount(index, weights=prob, minlength=bins)
    hits = np.bincount(index, weights=labels.astype(np.float64), minlength=bins)
    with np.errstate(invalid='ignore', divide='ignore'):
        mean_p, accuracy = sums / counts, hits / counts
    filled = counts > 0
    n = max(int(prob.size), 1)
    ece = float(np.sum(counts[filled] / n * np.abs(accuracy[filled] - mean_p[filled])))
    brier = float(np.mean((prob - labels) ** 2)) if prob.size else float('nan')
    return {'bins': bins, 'edges': np.linspace(0.0, 1.0, bins + 1).tolist(),
            'count': counts.tolist(), 'mean_probability': mean_p.tolist(),
            'accuracy': accuracy.tolist(), 'ece': ece if prob.size else float('nan'),
            'brier': brier, 'decisions': int(prob.size)}


def precision_at_probability(probabilities: Sequence[float], correct: Sequence[bool],
                             threshold: float) -> dict:
    """Return how many decisions reach ``threshold`` and the fraction of them that is correct."""
    prob, labels = _check_scores(probabilities, correct)
    accepted = prob >= threshold
    count = int(accepted.sum())
    return {'threshold': float(threshold), 'accepted': count,
            'correct': int(labels[accepted].sum()),
            'precision': float(labels[accepted].mean()) if count else float('nan')}


def latency_percentiles(ms: Sequence[float],
                        percentiles: Sequence[int] = LATENCY_PERCENTILES) -> dict:
    """Summarise latencies in milliseconds: count, mean, p50/p90/p95/p99 and max.

    NaN values are ignored; an empty input gives a count of 0 and NaN statistics.
    """
    values = np.asarray(ms, dtype=np.float64).reshape(-1)
    values = values[~np.isnan(values)]
    summary: dict = {'count': int(values.size)}
    if values.size == 0:
        summary.update({'mean': float('nan'), 'max': float('nan')})
        summary.update({f'p{p}': float('nan') for p in percentiles})
        return summary
    summary['mean'] = float(values.mean())
    summary.update({f'p{p}': float(np.percentile(values, p)) for p in percentiles})
    summary['max'] = float(values.max())
    return summary


def format_recalls(recalls: Mapping[int, float], decimals: int = 1) -> str:
    """Format recalls as VPR-methods-evaluation prints them: ``'R@1: 68.5, R@5: 92.8'``."""
    return ', '.join(f'R@{n}: {value:.{decimals}f}' for n, value in recalls.items())
