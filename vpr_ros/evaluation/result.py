"""Evaluation records: one query's :class:`Match` and the :class:`EvalResult` of a dataset.

A :class:`Match` is the localizer's answer for one query, recorded offline or from the live
node; :func:`~vpr_ros.evaluation.runner.score_matches` turns a list of them into an
:class:`EvalResult`, whose :meth:`~EvalResult.to_dict` is the ``metrics.json`` content
(:func:`json_ready`).
"""

from dataclasses import dataclass, field
import math
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from vpr_ros.data.benchmarks.dataset import EvalDataset
from vpr_ros.evaluation.metrics import format_recalls


@dataclass(frozen=True)
class Match:
    """The localizer's answer for one query, as recorded offline or from the live node.

    Attributes:
        query_stamp_ns: the query image stamp (identifies the query in the dataset).
        map_ids: map entry ids ranked best first (after re-ranking when it ran).
        scores: the ranking score of each candidate (the localizer's fused, pair or global
            score).
        probability: calibrated probability of the best candidate (NaN when unknown).
        global_map_ids: the ranking by global similarity before re-ranking (None if not
            re-ranked).
        timings_ms: per-stage latencies of this query.
        accepted: the localizer's accept decision (None when unknown).
        reason: why it was accepted or rejected (``LocalizationResult.reason``; '' unknown).
    """

    query_stamp_ns: int
    map_ids: tuple
    scores: tuple
    probability: float = float('nan')
    global_map_ids: Optional[tuple] = None
    timings_ms: Mapping[str, float] = field(default_factory=dict)
    accepted: Optional[bool] = None
    reason: str = ''


MatchLike = Union[Match, Sequence]


@dataclass
class EvalResult:
    """Everything measured on one dataset; :meth:`to_dict` is the ``metrics.json`` content.

    ``predictions`` / ``scores`` are ``[Q, K]`` database indices (``-1`` padded) and scores
    (NaN padded); ``first_positive_rank`` is ``-1`` for queries never matched correctly.
    Per query, ``best_probability`` is the best match's probability (NaN: none),
    ``accepted`` the accept decision (None: no decision known) taken as ``accept_source``
    says (``'localizer decision'`` or ``'score >= threshold'``), and ``reasons`` the
    localizer's reason ('' when unknown).
    """

    dataset: EvalDataset
    recall_values: tuple
    recalls: dict
    recalls_before_rerank: Optional[dict]
    predictions: np.ndarray
    scores: np.ndarray
    first_positive_rank: np.ndarray
    loop_closure: dict
    pr_curve: tuple
    latency_ms: dict
    settings: dict = field(default_factory=dict)
    first_positive_rank_before_rerank: Optional[np.ndarray] = None
    latency_samples: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    best_probability: Optional[np.ndarray] = None
    accepted: tuple = ()
    accept_source: Optional[str] = None
    reasons: tuple = ()

    def summary_line(self) -> str:
        """Return the VPR-methods-evaluation line ``R@1: 68.5, R@5: ...``."""
        return format_recalls(self.recalls)

    def recall_curve(self, before_rerank: bool = False) -> np.ndarray:
        """Return Recall@N in percent for every ``N = 1 .. K``."""
        ranks = self.first_positive_rank
        if before_rerank and self.first_positive_rank_before_rerank is not None:
            ranks = self.first_positive_rank_before_rerank
        found = ranks >= 0
        total = max(_recall_denominator(self.dataset), 1)
        return np.array([100.0 * np.sum(found & (ranks < n)) / total
                         for n in range(1, self.predictions.shape[1] + 1)])

    def to_dict(self) -> dict:
        """Return the JSON-ready metrics (NaN becomes ``null``)."""
        data = {'dataset': self.dataset.summary(), 'recall_values': list(self.recall_values),
                'recalls': self.recalls, 'recalls_before_rerank': self.recalls_before_rerank,
                'summary': self.summary_line(), 'loop_closure': self.loop_closure,
                'calibration': self.calibration, 'latency_ms': self.latency_ms,
                'settings': self.settings}
        return json_ready(data)


def _recall_denominator(dataset: EvalDataset) -> int:
    """Return the queries Recall@N divides by (sequences: only those with a revisit)."""
    if dataset.sequence_gap is None:
        return dataset.num_queries
    return dataset.num_queries - dataset.queries_without_positives


def json_ready(value: Any) -> Any:
    """Return ``value`` with numpy scalars as Python numbers and NaN as None (JSON-ready)."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    return value
