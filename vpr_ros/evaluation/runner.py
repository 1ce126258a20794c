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
:func:`write_report` writes ``metrics.json``, ``summary.md``, ``predictions.csv`` and PNG plots
(Recall@N, precision-recall, reliability diagram, latency, example matches).
"""

import csv
from dataclasses import dataclass, field, replace
import io
import json
import logging
import math
from pathlib import Path
import time
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from vpr_ros.config import IndexConfig, LocalizerConfig
from vpr_ros.data.benchmark_datasets import EvalDataset, write_bytes_atomic, write_text_atomic
from vpr_ros.data.frame_source import batched
from vpr_ros.errors import DatasetError
from vpr_ros.evaluation.metrics import (best_f1, DEFAULT_RECALL_VALUES, first_positive_ranks,
                                        format_recalls, latency_percentiles,
                                        max_recall_at_full_precision, pr_auc,
                                        precision_at_probability, precision_recall, recall_at_n,
                                        reliability)
from vpr_ros.localization.localizer import LocalizationResult, Localizer
from vpr_ros.map.database import MapDatabase, MapEntry
from vpr_ros.models.calibration import Calibration
from vpr_ros.models.vpr_model import VprModel

LOGGER = logging.getLogger(__name__)

Progress = Callable[[Iterable, str, int], Iterable]
"""``progress(iterable, description, total) -> iterable``: a hook for progress bars (tqdm)."""

LATENCY_STAGES = ('describe', 'search', 'rerank', 'total', 'map_describe')


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


# --------------------------------------------------------------------------------- report

REPORT_FILES = ('metrics.json', 'summary.md', 'predictions.csv', 'recall_at_n.png',
                'precision_recall.png', 'reliability.png', 'latency.png', 'matches.png')
GRID_QUERIES = 6
GRID_MATCHES = 3


def write_report(result: EvalResult, out_dir: Union[str, Path]) -> list:
    """Write :data:`REPORT_FILES` into ``out_dir`` (created if needed); return their paths.

    ``metrics.json`` holds :meth:`EvalResult.to_dict`; ``summary.md`` the tables and the
    plots; ``predictions.csv`` one row per query; the PNGs are the Recall@N curve, the
    loop-closure precision-recall curve, per-stage latency histograms and a grid of queries
    with their top-3 matches framed green (correct) or red (wrong). Every file is written
    atomically.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result.to_dict(), indent=2, sort_keys=False) + '\n'
    paths = [write_text_atomic(out / 'metrics.json', text),
             write_text_atomic(out / 'summary.md', summary_markdown(result)),
             write_text_atomic(out / 'predictions.csv', predictions_csv(result))]
    plots = {'recall_at_n.png': plot_recall_curve, 'precision_recall.png': plot_pr_curve,
             'reliability.png': plot_reliability, 'latency.png': plot_latency,
             'matches.png': plot_match_grid}
    for name, plot in plots.items():
        paths.append(_save_figure(plot(result), out / name))
    return paths


def _save_figure(figure: Any, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format='png', dpi=100)
    return write_bytes_atomic(path, buffer.getvalue())


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), layout='constrained')


def plot_recall_curve(result: EvalResult) -> Any:
    """Return a figure of Recall@N for N = 1..K (before re-ranking too when it ran)."""
    figure = _figure(6, 4)
    axes = figure.add_subplot()
    ns = np.arange(1, result.predictions.shape[1] + 1)
    axes.plot(ns, result.recall_curve(), marker='.', label='final ranking')
    if result.recalls_before_rerank is not None:
        axes.plot(ns, result.recall_curve(before_rerank=True), marker='.', linestyle='--',
                  label='before re-ranking')
    for n, value in result.recalls.items():
        axes.annotate(f'{value:.1f}', (n, value), textcoords='offset points', xytext=(0, 6),
                      ha='center', fontsize=8)
    axes.set(xlabel='N', ylabel='Recall@N (%)', ylim=(0, 105), xscale='log')
    axes.set_title(f'{result.dataset.name}\n{result.summary_line()}', fontsize=9)
    axes.grid(True, alpha=0.3)
    axes.legend(loc='lower right')
    return figure


def plot_pr_curve(result: EvalResult) -> Any:
    """Return a figure of the loop-closure precision-recall curve with its summary numbers."""
    figure = _figure(6, 4)
    axes = figure.add_subplot()
    precision, recall, _ = result.pr_curve
    loop = result.loop_closure
    if len(recall):
        axes.step(np.concatenate([[0.0], recall]), np.concatenate([[precision[0]], precision]),
                  where='pre')
    axes.set(xlabel='recall', ylabel='precision', xlim=(0, 1.02), ylim=(0, 1.05))
    axes.set_title(f'loop closure, best match by {loop["score"]}\n'
                   f'AUC {loop["auc"]:.3f}, max recall at 100% precision '
                   f'{loop["max_recall_at_100_precision"]:.3f}, best F1 {loop["best_f1"]:.3f}',
                   fontsize=9)
    axes.grid(True, alpha=0.3)
    return figure


def plot_latency(result: EvalResult) -> Any:
    """Return one latency histogram per stage (per-query milliseconds, p50 and p99 marked)."""
    stages = [s for s in LATENCY_STAGES if s in result.latency_samples]
    stages += [s for s in result.latency_samples if s not in stages]
    figure = _figure(7, 1.8 * max(len(stages), 1))
    if not stages:
        return figure
    grid = figure.subplots(len(stages), 1, squeeze=False)
    for axes, stage in zip(grid[:, 0], stages):
        values = result.latency_samples[stage]
        axes.hist(values[np.isfinite(values)], bins=30, color='tab:blue')
        stats = result.latency_ms.get(stage, {})
        for key, color in (('p50', 'tab:green'), ('p99', 'tab:red')):
            if np.isfinite(stats.get(key, np.nan)):
                axes.axvline(stats[key], color=color, linestyle='--',
                             label=f'{key} {stats[key]:.2f} ms')
        axes.set_title(f'{stage} ({len(values)} images)', fontsize=9)
        axes.set_ylabel('count', fontsize=8)
        axes.legend(fontsize=8, loc='upper right')
    grid[-1, 0].set_xlabel('milliseconds per image')
    return figure


def plot_reliability(result: EvalResult) -> Any:
    """Return the reliability diagram of the best match's probability (with bin counts)."""
    figure = _figure(6, 4.5)
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], linestyle=':', color='0.5', label='perfect calibration')
    table = result.calibration.get('reliability')
    if table is None:
        axes.set_title('reliability: no probabilities recorded')
        return figure
    edges = np.asarray(table['edges'])
    centres = (edges[:-1] + edges[1:]) / 2
    accuracy = np.asarray(table['accuracy'], dtype=float)
    filled = np.asarray(table['count']) > 0
    axes.bar(centres[filled], accuracy[filled], width=np.diff(edges)[filled] * 0.9,
             alpha=0.6, label='fraction correct')
    axes.plot(np.asarray(table['mean_probability'], dtype=float)[filled], accuracy[filled],
              'o-', color='tab:red', label='mean probability vs correct')
    for x, y, count in zip(centres[filled], accuracy[filled], np.asarray(table['count'])[filled]):
        axes.annotate(str(count), (x, y), textcoords='offset points', xytext=(0, 4),
                      ha='center', fontsize=7)
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.05)
    axes.set_xlabel('probability of the best match')
    axes.set_ylabel('fraction of best matches that are correct')
    axes.set_title(f'reliability ({table["decisions"]} best matches), ECE {table["ece"]:.3f}')
    axes.legend(fontsize=8, loc='upper left')
    return figure


def _grid_queries(result: EvalResult) -> list:
    count = min(GRID_QUERIES, result.dataset.num_queries)
    return sorted({int(round(v)) for v in np.linspace(0, result.dataset.num_queries - 1, count)})


def plot_match_grid(result: EvalResult) -> Any:
    """Return a grid: one row per sampled query, its top-3 matches framed green/red."""
    queries = _grid_queries(result)
    figure = _figure(2.4 * (GRID_MATCHES + 1), 2.0 * max(len(queries), 1))
    if not queries:
        return figure
    grid = figure.subplots(len(queries), GRID_MATCHES + 1, squeeze=False)
    for row, q in enumerate(queries):
        _show(grid[row][0], result.dataset.query_image(q), f'query {q}', 'black')
        for k in range(GRID_MATCHES):
            _show_match(grid[row][k + 1], result, q, k)
    return figure


def _show_match(axes: Any, result: EvalResult, q: int, k: int) -> None:
    j = int(result.predictions[q, k]) if k < result.predictions.shape[1] else -1
    if j < 0:
        axes.axis('off')
        return
    correct = bool(np.isin(j, result.dataset.positives[q]))
    score = result.scores[q, k]
    _show(axes, result.dataset.database_image(j), f'#{k + 1} db {j} ({score:.3f})',
          'tab:green' if correct else 'tab:red')


def _show(axes: Any, image: np.ndarray, title: str, color: str) -> None:
    axes.imshow(image)
    axes.set_title(title, fontsize=8, color=color)
    axes.set_xticks([])
    axes.set_yticks([])
    for spine in axes.spines.values():
        spine.set_edgecolor(color)
        spine.set_linewidth(4)


def summary_markdown(result: EvalResult) -> str:
    """Return the Markdown summary (dataset, Recall@N, loop closure, latency, plots)."""
    info = result.dataset.summary()
    lines = [f'# VPR evaluation: {result.dataset.name}', '',
             f'`{result.summary_line()}`', '',
             f'- queries: {info["num_queries"]} ({info["queries_without_positives"]} without a '
             f'positive, counted as misses); database: {info["num_database"]}',
             *[f'- {k}: {v}' for k, v in result.settings.items()], '',
             '| | ' + ' | '.join(f'R@{n}' for n in result.recalls) + ' |',
             '|---|' + '---|' * len(result.recalls),
             '| final | ' + ' | '.join(f'{v:.2f}' for v in result.recalls.values()) + ' |']
    if result.recalls_before_rerank is not None:
        lines.append('| before re-ranking | ' + ' | '.join(
            f'{v:.2f}' for v in result.recalls_before_rerank.values()) + ' |')
    lines += ['', '## Loop closure', '']
    lines += [f'- {k}: {_fmt(v)}' for k, v in result.loop_closure.items()
              if k != 'at_threshold']
    lines += _decision_lines(result.loop_closure.get('at_threshold'))
    if result.calibration:
        table = result.calibration['reliability']
        lines += ['', '## Calibration of the best match probability', '',
                  f'- expected calibration error: {table["ece"]:.4f}, Brier score: '
                  f'{table["brier"]:.4f} ({table["decisions"]} best matches)']
        lines += [f'- accepted at p >= {k}: {v["accepted"]}, of which correct '
                  f'{_fmt(v["precision"])}' for k, v in result.calibration['precision_at'].items()]
    lines += ['', '## Latency (ms)', '', '| stage | count | mean | p50 | p90 | p99 | max |',
              '|---|---|---|---|---|---|---|']
    for stage, stats in result.latency_ms.items():
        values = [stats.get(k, float('nan')) for k in ('mean', 'p50', 'p90', 'p99', 'max')]
        lines.append(f'| {stage} | {stats["count"]} | ' + ' | '.join(f'{v:.2f}' for v in values)
                     + ' |')
    lines += ['', '## Plots', ''] + [f'![{name}]({name})' for name in REPORT_FILES
                                     if name.endswith('.png')]
    return '\n'.join(lines) + '\n'


def _decision_lines(decision: Optional[dict]) -> list:
    """Return the Markdown table of the accept decision (accepted, correct, wrong)."""
    if not decision:
        return []
    return ['', f'### Accept decision ({decision["source"]}, threshold '
                f'{decision["threshold"]:g})', '',
            '| accepted | correct | wrong | precision | recall |', '|---|---|---|---|---|',
            f'| {decision["accepted"]} | {decision["correct_accepted"]} | '
            f'{decision["wrong_accepted"]} | {_fmt(decision["precision"])} | '
            f'{_fmt(decision["recall"])} |', '',
            'Wrong accepts are accepted best matches that are no true match (false loop '
            'closures); `predictions.csv` lists them (`accepted` 1, `correct` 0).']


def _fmt(value: Any) -> str:
    if isinstance(value, dict):
        return ', '.join(f'{k}={_fmt(v)}' for k, v in value.items())
    if isinstance(value, float):
        return f'{value:.4f}'
    return str(value)


PREDICTION_COLUMNS = ('query', 'key', 'stamp_ns', 'first_positive_rank', 'database_ids',
                      'scores', 'probability', 'accepted', 'correct', 'reason')
"""``predictions.csv`` columns; ``accepted``/``correct`` are 1/0, empty when unknown."""


def predictions_csv(result: EvalResult) -> str:
    """Return one CSV row per query (:data:`PREDICTION_COLUMNS`).

    ``first_positive_rank`` is 0-based (-1: no correct match in the ranking);
    ``database_ids`` and ``scores`` are space-separated, best first; ``probability`` is the
    best match's calibrated probability (empty when unknown); ``accepted`` the accept
    decision (``result.accept_source``: the localizer's, or probability >= threshold);
    ``correct`` whether the best match is a true match (empty without a match), so the wrong
    accepts are the rows with ``accepted`` 1 and ``correct`` 0; ``reason`` the localizer's
    reason (``accepted``, ``below threshold``, ``temporal``, ``empty map``).
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator='\n')
    writer.writerow(PREDICTION_COLUMNS)
    stamps = result.dataset.query_stamps_ns()
    count = result.dataset.num_queries
    probability = (result.best_probability if result.best_probability is not None
                   else np.full(count, np.nan))
    accepted = result.accepted or (None,) * count
    reasons = result.reasons or ('',) * count
    for q in range(count):
        ids = [int(j) for j in result.predictions[q] if j >= 0]
        scores = [f'{s:.6f}' for s in result.scores[q, :len(ids)]]
        correct = '' if not ids else int(result.first_positive_rank[q] == 0)
        writer.writerow([q, result.dataset.query_key(q), int(stamps[q]),
                         int(result.first_positive_rank[q]), ' '.join(map(str, ids)),
                         ' '.join(scores),
                         '' if math.isnan(probability[q]) else f'{probability[q]:.6f}',
                         '' if accepted[q] is None else int(accepted[q]), correct, reasons[q]])
    return buffer.getvalue()
