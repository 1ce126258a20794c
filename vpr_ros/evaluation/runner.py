"""Benchmark evaluation: build a map from a dataset, localize its queries, score, write a report.

The pipeline is the one the ROS node runs (:class:`~vpr_ros.localization.localizer.Localizer`):

1. :func:`build_map` describes the database images in batches into a fresh exact (flat) map;
2. :func:`localize_queries` localizes every query one at a time (batch 1, as
   VPR-methods-evaluation does and as the node does), which covers describe, search and re-rank;
3. :func:`match_from_result` turns each result into a :class:`Match` (ranked map ids and scores);
4. :func:`score_matches` computes Recall@N after and, when re-ranked, before re-ranking, the
   loop-closure precision-recall of the best match, the reliability of its probability
   (calibration), and per-stage latency percentiles.

A loop-closure sequence (``EvalDataset.sequence_gap``) runs :func:`localize_sequence` instead of
steps 1-2: each frame is localized against the frames at least ``sequence_gap`` earlier (and,
with ``sequence_exclude_ns``, stamped at least that long before it), then the map grows, as
loop-closure detection runs inside SLAM.

Every query keeps the localizer's accept decision (probability threshold and temporal check):
``metrics.json`` counts the accepted and the wrongly accepted best matches
(``loop_closure.at_threshold``), and ``predictions.csv`` has the decision per query.

A live replay recorded from the node (``(query_stamp_ns, ranked map ids, scores)`` tuples) is
scored by the same :func:`score_matches`, so offline and live numbers are comparable.
:func:`~vpr_ros.evaluation.report.write_report` writes ``metrics.json``, ``summary.md``,
``predictions.csv`` and PNG plots (Recall@N, precision-recall, reliability diagram, latency,
example matches).
"""

from dataclasses import replace
import logging
import math
import time
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import numpy as np

from vpr_ros.config import IndexConfig, LocalizerConfig
from vpr_ros.data.benchmarks.dataset import EvalDataset
from vpr_ros.data.frame_source import batched
from vpr_ros.errors import DatasetError
from vpr_ros.evaluation.metrics import (best_f1, DEFAULT_RECALL_VALUES, first_positive_ranks,
                                        latency_percentiles, max_recall_at_full_precision, pr_auc,
                                        precision_at_probability, precision_recall, recall_at_n,
                                        reliability)
from vpr_ros.evaluation.result import EvalResult, Match, MatchLike
from vpr_ros.localization.localizer import LocalizationResult, Localizer
from vpr_ros.map.database import MapDatabase
from vpr_ros.map.entries import MapEntry
from vpr_ros.models.calibration import Calibration
from vpr_ros.models.vpr_model import VprModel

LOGGER = logging.getLogger(__name__)

Progress = Callable[[Iterable, str, int], Iterable]
"""``progress(iterable, description, total) -> iterable``: a hook for progress bars (tqdm)."""


# ------------------------------------------------------------------------------- pipeline

def make_localizer(localizer_or_model: Union[Localizer, VprModel], top_k: int, rerank: bool,
                   config: Optional[LocalizerConfig] = None,
                   calibration: Optional[Calibration] = None) -> Localizer:
    """Return a localizer over a fresh, empty, exact (flat) map for the given model.

    A :class:`Localizer` contributes its model and configuration (its own map is not touched);
    ``top_k`` and ``rerank`` override the configuration.
    """
    if isinstance(localizer_or_model, Localizer):
        model = localizer_or_model.model
        config = config or localizer_or_model.config
    else:
        model = localizer_or_model
    config = replace(config or LocalizerConfig(), top_k=int(top_k), rerank=bool(rerank))
    keep_tokens = bool(rerank and model.spec.has_pair_classifier)
    database = MapDatabase(model.spec, IndexConfig(kind='flat'), store_tokens=keep_tokens)
    return Localizer(model, database, config, calibration)


def _wrap(progress: Optional[Progress], items: Iterable, description: str,
          total: int) -> Iterable:
    return items if progress is None else progress(items, description, total)


def build_map(localizer: Localizer, dataset: EvalDataset,
              progress: Optional[Progress] = None) -> tuple[np.ndarray, list]:
    """Describe the database images in batches and add them to the localizer's map.

    Returns:
        ``(map_ids [D], per-image describe milliseconds)``; ``map_ids[j]`` is the map id of
        database image ``j``.
    """
    database = localizer.database
    ids: list[int] = []
    per_image_ms: list[float] = []
    frames = _wrap(progress, dataset.database_frames(), 'database', dataset.num_database)
    for batch in batched(frames, localizer.config.batch_size):
        start = time.perf_counter()
        descriptors, tokens = localizer.describe([f.image for f in batch])
        elapsed_ms = (time.perf_counter() - start) * 1e3
        entries = [MapEntry(id=-1, stamp_ns=int(f.stamp_ns), pose=f.pose, source=f.source)
                   for f in batch]
        ids += database.add(descriptors, entries, tokens if database.has_tokens else None)
        per_image_ms += [elapsed_ms / len(batch)] * len(batch)
    return np.asarray(ids, dtype=np.int64), per_image_ms


def localize_queries(localizer: Localizer, dataset: EvalDataset,
                     progress: Optional[Progress] = None) -> list[LocalizationResult]:
    """Localize every query one at a time (describe, search, re-rank, accept)."""
    localizer.reset_temporal()
    frames = _wrap(progress, dataset.query_frames(), 'queries', dataset.num_queries)
    return [localizer.localize(frame.image, int(frame.stamp_ns)) for frame in frames]


def localize_sequence(localizer: Localizer, dataset: EvalDataset,
                      progress: Optional[Progress] = None
                      ) -> tuple[np.ndarray, list[LocalizationResult], list[float]]:
    """Run the loop-closure protocol on a sequence dataset (``dataset.sequence_gap`` set).

    Every frame is described once; frame ``i`` is then localized against the map holding
    frames ``0 .. i - gap`` (inclusive; with ``dataset.sequence_exclude_ns`` only the frames
    stamped at least that long before frame ``i``: :meth:`EvalDataset.sequence_map_sizes`),
    and the map grows before the next query.

    Returns:
        ``(map_ids, results, per-image describe milliseconds)``; ``map_ids[j]`` is the map id
        of frame ``j`` (frames never added are absent).
    """
    sizes = dataset.sequence_map_sizes()
    localizer.reset_temporal()
    frames = list(_wrap(progress, dataset.query_frames(), 'sequence', dataset.num_queries))
    start = time.perf_counter()
    descriptors, tokens = localizer.describe([f.image for f in frames])
    describe_ms = (time.perf_counter() - start) * 1e3 / max(len(frames), 1)
    ids, results = [], []
    for i, frame in enumerate(frames):
        while len(ids) < sizes[i]:
            j = len(ids)
            ids.append(_add_described(localizer, frames[j], descriptors[j],
                                      None if tokens is None else tokens[j]))
        results.append(localizer.rank(descriptors[i], None if tokens is None else tokens[i],
                                      int(frame.stamp_ns), describe_ms))
    return np.asarray(ids, dtype=np.int64), results, [describe_ms] * len(frames)


def _add_described(localizer: Localizer, frame: Any, descriptor: np.ndarray,
                   tokens: Optional[np.ndarray]) -> int:
    """Append an already described frame to the localizer's map; return its map id."""
    database = localizer.database
    entry = MapEntry(id=-1, stamp_ns=int(frame.stamp_ns), pose=frame.pose, source=frame.source)
    keep = tokens[None] if database.has_tokens and tokens is not None else None
    return database.add(descriptor[None], [entry], keep)[0]


def match_from_result(result: LocalizationResult) -> Match:
    """Convert a :class:`LocalizationResult` into a :class:`Match`."""
    candidates = result.candidates
    reranked = result.reranked
    scores = tuple(c.global_similarity if math.isnan(c.score) else c.score for c in candidates)
    global_ids = None
    if reranked:
        order = sorted(range(len(candidates)), key=lambda i: -candidates[i].global_similarity)
        global_ids = tuple(candidates[i].map_id for i in order)
    best = result.best
    return Match(int(result.stamp_ns), tuple(c.map_id for c in candidates), scores,
                 best.probability if best is not None else float('nan'), global_ids,
                 dict(result.timings_ms), bool(result.accepted), str(result.reason))


def evaluate(localizer_or_model: Union[Localizer, VprModel], dataset: EvalDataset,
             top_k: int = 100, rerank: bool = True,
             recall_values: Sequence[int] = DEFAULT_RECALL_VALUES,
             progress: Optional[Progress] = None, config: Optional[LocalizerConfig] = None,
             calibration: Optional[Calibration] = None) -> EvalResult:
    """Evaluate a model (or a localizer's model and settings) on ``dataset``.

    Args:
        localizer_or_model: the model to evaluate, or a localizer whose model and
            configuration are used (its own map is left alone).
        dataset: database, queries and ground truth.
        top_k: shortlist size searched (and re-ranked); Recall@N needs ``N <= top_k``.
        rerank: re-rank the shortlist with the pair classifier when the model has one.
        recall_values: the ``N`` of Recall@N.
        progress: optional progress-bar hook.
        config: localizer configuration (batch size, device, thresholds) to start from.
        calibration: score-to-probability calibration (default: the localizer's built-in).
    """
    if top_k < max(recall_values):
        LOGGER.warning('top_k=%d is below the largest recall value %d', top_k,
                       max(recall_values))
    localizer = make_localizer(localizer_or_model, top_k, rerank, config, calibration)
    if dataset.sequence_gap is not None:
        map_ids, results, map_ms = localize_sequence(localizer, dataset, progress)
    else:
        map_ids, map_ms = build_map(localizer, dataset, progress)
        results = localize_queries(localizer, dataset, progress)
    settings = _settings(localizer, top_k)
    result = score_matches([match_from_result(r) for r in results], dataset, map_ids,
                           recall_values, localizer.config.accept_probability, settings)
    result.latency_ms['map_describe'] = latency_percentiles(map_ms)
    result.latency_samples['map_describe'] = np.asarray(map_ms, dtype=np.float64)
    return result


def _settings(localizer: Localizer, top_k: int) -> dict:
    spec = localizer.model.spec
    return {'model': spec.architecture, 'model_digest': spec.digest(),
            'input_size': list(spec.input_size), 'descriptor_dim': spec.descriptor_dim,
            'top_k': top_k, 'rerank': localizer.can_rerank,
            'database_batch_size': localizer.config.batch_size, 'query_batch_size': 1,
            'device': str(localizer.device), 'precision': localizer.config.precision,
            'index': 'flat (exact inner product)',
            'accept_probability': localizer.config.accept_probability,
            'rerank_fusion': localizer.scoring.fusion if localizer.can_rerank else 'global',
            'fusion_beta': localizer.scoring.beta if localizer.can_rerank else None,
            'calibrated': localizer.scoring.calibrated if localizer.can_rerank else False,
            'temporal_window': localizer.config.temporal_window}


# -------------------------------------------------------------------------------- scoring

def _as_match(item: MatchLike) -> Match:
    if isinstance(item, Match):
        return item
    if not 3 <= len(item) <= 4:
        raise DatasetError('a recorded match is (query_stamp_ns, ranked map ids, scores'
                           f'[, probability]), got {len(item)} fields')
    probability = float(item[3]) if len(item) == 4 else float('nan')
    return Match(int(item[0]), tuple(int(i) for i in item[1]), tuple(float(s) for s in item[2]),
                 probability)


def _query_rows(matches: Sequence[Match], dataset: EvalDataset) -> list:
    """Return, per query index, its match or None; unknown stamps are skipped with a warning."""
    stamps = dataset.query_stamps_ns()
    lookup = {int(s): q for q, s in enumerate(stamps)}
    if len(lookup) != len(stamps):
        raise DatasetError(f'{dataset.name}: query stamps are not unique; cannot match results')
    rows: list = [None] * dataset.num_queries
    unknown = 0
    for match in matches:
        q = lookup.get(match.query_stamp_ns)
        if q is None:
            unknown += 1
        else:
            rows[q] = match
    if unknown:
        LOGGER.warning('%d results have a stamp that is no query of %s; ignored', unknown,
                       dataset.name)
    return rows


def _ranked_indices(rows: list, to_index: dict, width: int, attribute: str) -> np.ndarray:
    preds = np.full((len(rows), width), -1, dtype=np.int64)
    for q, match in enumerate(rows):
        ids = () if match is None else (getattr(match, attribute) or ())
        values = [to_index.get(int(i), -1) for i in ids][:width]
        preds[q, :len(values)] = values
    return preds


def _score_matrix(rows: list, width: int) -> np.ndarray:
    scores = np.full((len(rows), width), np.nan)
    for q, match in enumerate(rows):
        if match is not None:
            values = list(match.scores)[:width]
            scores[q, :len(values)] = values
    return scores


def score_matches(matches: Iterable[MatchLike], dataset: EvalDataset,
                  map_ids: Optional[Sequence[int]] = None,
                  recall_values: Sequence[int] = DEFAULT_RECALL_VALUES,
                  accept_threshold: Optional[float] = None,
                  settings: Optional[dict] = None) -> EvalResult:
    """Score recorded matches against the dataset's ground truth.

    Args:
        matches: :class:`Match` objects or ``(query_stamp_ns, ranked map ids, scores
            [, probability])`` tuples; queries without a match count as misses.
        dataset: the ground truth; queries are identified by stamp
            (:meth:`EvalDataset.query_stamps_ns`).
        map_ids: ``map_ids[j]`` is the map id of database image ``j`` (default: ``j``).
        recall_values: the ``N`` of Recall@N.
        accept_threshold: also report the accepted matches (``loop_closure.at_threshold``:
            how many, how many wrong, precision, recall): the localizer's decisions when
            every match recorded one, else the matches whose probability (or score, when no
            probability was recorded) reaches this threshold.
        settings: free-form details stored with the result.
    """
    rows = _query_rows([_as_match(m) for m in matches], dataset)
    ids = np.arange(dataset.num_database) if map_ids is None else np.asarray(map_ids)
    to_index = {int(m): j for j, m in enumerate(ids)}
    width = max([len(m.map_ids) for m in rows if m is not None] + [max(recall_values)])
    preds = _ranked_indices(rows, to_index, width, 'map_ids')
    positives = dataset.positives
    skip = dataset.sequence_gap is not None
    before, before_ranks = None, None
    if any(m is not None and m.global_map_ids is not None for m in rows):
        global_preds = _ranked_indices(rows, to_index, width, 'global_map_ids')
        before = recall_at_n(global_preds, positives, recall_values, skip)
        before_ranks = first_positive_ranks(global_preds, positives)
    loop, curve, accepted, source = _loop_closure(rows, preds, positives, accept_threshold)
    samples = _latency_samples(rows)
    probability = np.array([m.probability if m is not None and m.map_ids else np.nan
                            for m in rows], dtype=np.float64)
    return EvalResult(
        dataset=dataset, recall_values=tuple(recall_values),
        recalls=recall_at_n(preds, positives, recall_values, skip),
        recalls_before_rerank=before, predictions=preds, scores=_score_matrix(rows, width),
        first_positive_rank=first_positive_ranks(preds, positives), loop_closure=loop,
        pr_curve=curve, latency_ms={k: latency_percentiles(v) for k, v in samples.items()},
        settings=dict(settings or {}), first_positive_rank_before_rerank=before_ranks,
        latency_samples=samples,
        calibration=_calibration(rows, preds, positives, accept_threshold),
        best_probability=probability, accepted=tuple(accepted), accept_source=source,
        reasons=tuple('' if m is None else m.reason for m in rows))


def best_match_outcomes(rows: list, preds: np.ndarray,
                        positives: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Return the best match's probability and whether it is correct, per answered query."""
    probability, correct = [], []
    for q, match in enumerate(rows):
        if match is None or not match.map_ids:
            continue
        probability.append(match.probability)
        correct.append(bool(np.isin(preds[q, 0], positives[q])))
    return np.asarray(probability, dtype=np.float64), np.asarray(correct, dtype=bool)


def _calibration(rows: list, preds: np.ndarray, positives: Sequence,
                 accept_threshold: Optional[float]) -> dict:
    """Reliability of the best match's probability (empty when no probability was recorded)."""
    probability, correct = best_match_outcomes(rows, preds, positives)
    if probability.size == 0 or np.isnan(probability).all():
        return {}
    result = {'reliability': reliability(probability, correct)}
    thresholds = sorted({0.5, 0.9} | ({accept_threshold} if accept_threshold else set()))
    result['precision_at'] = {f'{t:g}': precision_at_probability(probability, correct, t)
                              for t in thresholds}
    return result


def _loop_closure(rows: list, preds: np.ndarray, positives: Sequence,
                  accept_threshold: Optional[float]) -> tuple[dict, tuple, list, Optional[str]]:
    """Precision-recall of accepting the best match by probability (or by best score).

    Returns:
        ``(numbers, (precision, recall, thresholds), per-query decisions, decision source)``
        (see :func:`accept_decisions`).
    """
    use_probability = any(m is not None and not math.isnan(m.probability) for m in rows)
    values = np.full(len(rows), np.nan)
    answered, correct = [], []
    for q, match in enumerate(rows):
        if match is None or not match.map_ids:
            continue
        values[q] = match.probability if use_probability else match.scores[0]
        answered.append(q)
        correct.append(bool(np.isin(preds[q, 0], positives[q])))
    best = values[answered]
    with_match = sum(1 for p in positives if len(p))
    precision, recall, thresholds = precision_recall(best, correct, num_positives=with_match)
    f1, f1_threshold = best_f1(precision, recall, thresholds)
    loop = {'score': 'probability' if use_probability else 'best_score',
            'queries_with_true_match': with_match, 'decisions': len(best),
            'auc': pr_auc(precision, recall),
            'max_recall_at_100_precision': max_recall_at_full_precision(precision, recall),
            'best_f1': f1, 'best_f1_threshold': f1_threshold}
    accepted, source = accept_decisions(rows, values, accept_threshold)
    if accept_threshold is not None:
        loop['at_threshold'] = _at_threshold([accepted[q] for q in answered], correct,
                                             with_match, accept_threshold, source)
    return loop, (precision, recall, thresholds), accepted, source


def accept_decisions(rows: Sequence[Optional[Match]], values: Sequence[float],
                     threshold: Optional[float]) -> tuple[list, Optional[str]]:
    """Return each query's accept decision and where the decisions come from.

    The localizer's own decisions (``'localizer decision'``: probability threshold and
    temporal check) when every answered query recorded one; else ``values[q] >= threshold``
    (``'score >= threshold'``; NaN never accepts); with neither, ``None`` for every query. A
    query without a result gets ``None``, one with an empty ranking ``False``.
    """
    answered = [m for m in rows if m is not None and m.map_ids]
    if answered and all(m.accepted is not None for m in answered):
        source: Optional[str] = 'localizer decision'
    elif threshold is not None:
        source = 'score >= threshold'
    else:
        return [None] * len(rows), None
    decisions: list = []
    for match, value in zip(rows, values):
        if match is None:
            decisions.append(None)
        elif not match.map_ids:
            decisions.append(False)
        elif source == 'localizer decision':
            decisions.append(bool(match.accepted))
        else:
            decisions.append(bool(value >= threshold))
    return decisions, source


def _at_threshold(accepted: list, correct: list, with_match: int, threshold: float,
                  source: Optional[str]) -> dict:
    """Count the accepted best matches, the correct and the wrong ones, precision and recall."""
    decided = np.asarray(accepted, dtype=bool)
    hits = int(np.sum(decided & np.asarray(correct, dtype=bool)))
    count = int(decided.sum())
    return {'threshold': float(threshold), 'source': source, 'accepted': count,
            'correct_accepted': hits, 'wrong_accepted': count - hits,
            'precision': hits / count if count else float('nan'),
            'recall': hits / with_match if with_match else 0.0}


def _latency_samples(rows: list) -> dict:
    stages: dict[str, list] = {}
    for match in rows:
        for stage, ms in ({} if match is None else match.timings_ms).items():
            stages.setdefault(stage, []).append(float(ms))
    return {stage: np.asarray(values, dtype=np.float64) for stage, values in stages.items()}
