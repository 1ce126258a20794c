"""Calibration fitting: the fusion beta and match probabilities fitted on a validation set.

Every query is described and searched as the localizer does, and scored twice against its global
top-K shortlist (:func:`collect_shortlists`): once as a *revisit* (the whole map) and once as a
*new place* (its true places removed from the map, so its best match is always wrong).
:func:`fit_scoring` chooses the beta of the fused score ``pair + beta * similarity`` by Recall@1
of the revisits and fits logistic calibrations of the best candidate's fused score and of the
global similarity alone, with their reliability before and after. ``vpr-calibrate``
(:mod:`vpr_ros.cli.vpr_calibrate`) writes the result into a checkpoint.
"""

from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import numpy as np

from vpr_ros.config import BETA_FROM_CHECKPOINT, LocalizerConfig
from vpr_ros.data.benchmarks.dataset import EvalDataset
from vpr_ros.errors import DatasetError
from vpr_ros.evaluation.metrics import reliability
from vpr_ros.evaluation.result import json_ready
from vpr_ros.evaluation.runner import build_map, make_localizer, Progress
from vpr_ros.localization.localizer import Localizer
from vpr_ros.models.calibration import Calibration, fit_calibration, GLOBAL_SIMILARITY_CALIBRATION
from vpr_ros.models.fusion import fuse_scores, plan_scoring, RerankScoring
from vpr_ros.models.vpr_model import VprModel

BETAS = (0.0, 2.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
"""Candidate betas (as the shipped weights' recipe, ``vpr_ros_training.score_calibration``)."""
RELIABILITY_BINS = 10


# ---- shortlists -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Shortlists:
    """Queries against their global top-K map entries (``[Q, K]``, best global match first).

    Slots beyond the entries a query's map holds have similarity ``-inf``, pair score NaN and
    are never correct. ``query`` is the dataset index of each row.
    """

    query: np.ndarray
    similarity: np.ndarray
    pair: np.ndarray
    correct: np.ndarray

    def __len__(self) -> int:
        """Return the number of queries."""
        return len(self.query)

    def subset(self, rows: np.ndarray) -> 'Shortlists':
        """Return the rows selected by the boolean or index array ``rows``."""
        return Shortlists(self.query[rows], self.similarity[rows], self.pair[rows],
                          self.correct[rows])

    def score(self, fusion: str, beta: float) -> np.ndarray:
        """Return the ranking score ``[Q, K]`` (``-inf`` in empty slots)."""
        valid = np.isfinite(self.similarity)
        fused = fuse_scores(np.where(valid, self.pair, 0.0),
                            np.where(valid, self.similarity, 0.0), fusion, beta)
        return np.where(valid, fused, -np.inf)

    def best(self, fusion: str, beta: float) -> dict:
        """Return each row's best candidate: ``score``, ``correct``, ``pair``, ``similarity``."""
        score = self.score(fusion, beta)
        top = np.argmax(score, axis=1)
        rows = np.arange(len(top))
        return {'score': score[rows, top], 'correct': self.correct[rows, top],
                'pair': self.pair[rows, top], 'similarity': self.similarity[rows, top]}

    def recall(self, fusion: str, beta: float, n: int) -> float:
        """Return Recall@``n`` (percent) of the re-ordered shortlists."""
        if not len(self):
            return float('nan')
        order = np.argsort(-self.score(fusion, beta), axis=1, kind='stable')[:, :n]
        hits = np.take_along_axis(self.correct, order, axis=1).any(axis=1)
        return float(100.0 * hits.mean())


@dataclass(frozen=True)
class CalibrationSet:
    """Every query scored as a revisit (if the map holds its place) and as a new place."""

    revisit: Shortlists
    novel: Shortlists
    dataset: str
    top_k: int
    num_queries: int


def _top(similarity: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """Return the ``k`` ids of ``candidates`` with the largest similarity, best first."""
    if candidates.size > k:
        part = np.argpartition(-similarity[candidates], k - 1)[:k]
        candidates = candidates[part]
    return candidates[np.argsort(-similarity[candidates], kind='stable')]


def _row(similarity: np.ndarray, pair: dict, ids: np.ndarray, positives: set,
         k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return one padded shortlist row: similarity, pair score, correct."""
    sims = np.full(k, -np.inf)
    scores = np.full(k, np.nan)
    correct = np.zeros(k, dtype=bool)
    sims[:ids.size] = similarity[ids]
    scores[:ids.size] = [pair[int(i)] for i in ids]
    correct[:ids.size] = [int(i) in positives for i in ids]
    return sims, scores, correct


def _stack(rows: list, k: int) -> Shortlists:
    """Return :class:`Shortlists` from ``(query, sims, pair, correct)`` rows."""
    if not rows:
        return Shortlists(np.zeros(0, np.int64), np.zeros((0, k)), np.zeros((0, k)),
                          np.zeros((0, k), bool))
    query, sims, pair, correct = zip(*rows)
    return Shortlists(np.asarray(query, np.int64), np.stack(sims), np.stack(pair),
                      np.stack(correct))


def _described_queries(localizer: Localizer, dataset: EvalDataset, map_ids: np.ndarray,
                       progress: Optional[Progress]) -> Iterable[tuple]:
    """Yield ``(query index, descriptor, tokens)``; a sequence reuses its map's descriptions."""
    database = localizer.database
    if dataset.sequence_gap is not None:
        descriptors = database.descriptors
        for q in range(dataset.num_queries):
            ids = np.asarray([map_ids[q]], np.int64)
            yield q, descriptors[map_ids[q]], database.tokens(ids)[0]
        return
    frames = dataset.query_frames()
    if progress is not None:
        frames = progress(frames, 'queries', dataset.num_queries)
    batch, index = [], 0
    for frame in frames:
        batch.append(frame.image)
        if len(batch) == localizer.config.batch_size:
            yield from _describe(localizer, batch, index)
            index, batch = index + len(batch), []
    if batch:
        yield from _describe(localizer, batch, index)


def _describe(localizer: Localizer, images: list, start: int) -> Iterable[tuple]:
    """Yield ``(query index, descriptor, tokens)`` of a batch of query images."""
    descriptors, tokens = localizer.describe(images)
    for i in range(len(images)):
        yield start + i, descriptors[i], tokens[i]


def collect_shortlists(model: VprModel, dataset: EvalDataset,
                       config: LocalizerConfig = LocalizerConfig(),
                       progress: Optional[Progress] = None) -> CalibrationSet:
    """Describe ``dataset``, then score every query's shortlists as a revisit and a new place.

    The map and the queries go through the localizer (same preprocessing, backend and float16
    map tokens as the nodes). A loop-closure sequence matches each frame against the frames
    its protocol allows (:meth:`EvalDataset.sequence_map_sizes`).

    Raises:
        DatasetError: when the model has no pair classifier or no query has a true match.
    """
    if not model.spec.has_pair_classifier:
        raise DatasetError(f'{model.spec.architecture} has no pair classifier: there is no '
                           'fusion beta or re-ranked probability to calibrate')
    k = config.top_k
    localizer = make_localizer(model, k, True, config)
    map_ids, _ = build_map(localizer, dataset, progress)
    descriptors = np.asarray(localizer.database.descriptors, dtype=np.float32)
    sizes = dataset.sequence_map_sizes() if dataset.sequence_gap is not None else None
    revisit, novel = [], []
    for q, descriptor, tokens in _described_queries(localizer, dataset, map_ids, progress):
        allowed = map_ids if sizes is None else map_ids[:sizes[q]]
        if allowed.size == 0:
            continue
        positives = {int(i) for i in map_ids[dataset.positives[q]]} & set(allowed.tolist())
        similarity = descriptors @ np.asarray(descriptor, np.float32)
        lists = {'revisit': _top(similarity, allowed, k) if positives else None}
        others = allowed[~np.isin(allowed, list(positives))]
        lists['novel'] = _top(similarity, others, k) if others.size else None
        union = np.unique(np.concatenate([ids for ids in lists.values() if ids is not None]))
        pair = dict(zip(union.tolist(), localizer.score_pairs(tokens, union).tolist()))
        for name, target in (('revisit', revisit), ('novel', novel)):
            if lists[name] is not None:
                target.append((q, *_row(similarity, pair, lists[name], positives, k)))
    if not revisit:
        raise DatasetError(f'{dataset.name}: no query has a true match in its map; a '
                           'calibration needs queries that revisit mapped places')
    return CalibrationSet(_stack(revisit, k), _stack(novel, k), dataset.name, k,
                          dataset.num_queries)


# ---- fitting --------------------------------------------------------------------------------

@dataclass(frozen=True)
class CalibrationFit:
    """The chosen scoring and how well it and the one it replaces are calibrated."""

    scoring: RerankScoring
    beta_table: dict
    before: dict
    after: dict
    cross_validated: dict
    counts: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """Return a JSON-ready dictionary of everything."""
        scoring = self.scoring
        return json_ready({
            'beta': scoring.beta, 'fusion': scoring.fusion,
            'calibration': vars(scoring.calibration),
            'global_calibration': vars(scoring.global_calibration),
            'fitted_on': scoring.fitted_on, 'recall_at_1_by_beta': self.beta_table,
            'before': self.before, 'after': self.after,
            'cross_validated': self.cross_validated, 'counts': self.counts})


def choose_beta(revisit: Shortlists, betas: Sequence[float] = BETAS) -> tuple[float, dict]:
    """Return the beta with the best Recall@1 (then Recall@5; ties: the smaller) and all R@1."""
    table = {float(beta): (revisit.recall('fused', beta, 1), revisit.recall('fused', beta, 5))
             for beta in sorted(betas)}
    best = max(table, key=lambda beta: (round(table[beta][0], 6), round(table[beta][1], 6),
                                        -beta))
    return best, {beta: recalls[0] for beta, recalls in table.items()}


def _samples(sets: CalibrationSet, fusion: str, beta: float,
             rows: Optional[tuple] = None) -> dict:
    """Return the best candidates of both settings (``rows``: query selections per setting)."""
    parts = [sets.revisit, sets.novel]
    if rows is not None:
        parts = [part.subset(select) for part, select in zip(parts, rows)]
    bests = [part.best(fusion, beta) for part in parts if len(part)]
    if not bests:
        raise DatasetError(f'{sets.dataset}: no query to calibrate on')
    return {key: np.concatenate([best[key] for best in bests]) for key in bests[0]}


def _fit(scores: np.ndarray, labels: np.ndarray, what: str) -> Calibration:
    """Fit a logistic calibration; refuse one whose probability does not rise with the score."""
    labels = labels.astype(np.float64)
    if labels.min() == labels.max():
        state = 'right' if labels[0] else 'wrong'
        raise DatasetError(f'every best match is {state}, so the {what} cannot be calibrated: '
                           'the dataset needs queries whose best match is right and wrong')
    calibration = fit_calibration(scores, labels)
    if not calibration.scale > 0.0:
        raise DatasetError(f'the {what} does not rise with correctness on this dataset (fitted '
                           f'scale {calibration.scale:.3g}): too few queries, or a model that '
                           'does not recognise these places')
    return calibration


def _reliability(probability: np.ndarray, labels: np.ndarray) -> dict:
    """Return ECE, Brier and the decisions count of probabilities."""
    table = reliability(probability, labels.astype(bool), RELIABILITY_BINS)
    return {'ece': table['ece'], 'brier': table['brier'], 'decisions': table['decisions']}


def _halves(sets: CalibrationSet) -> list[tuple]:
    """Return two ``(revisit rows, novel rows)`` selections: first and second half of queries."""
    middle = sets.num_queries // 2
    first = (sets.revisit.query < middle, sets.novel.query < middle)
    return [first, tuple(~rows for rows in first)]


def _cross_validated(sets: CalibrationSet, beta: float) -> dict:
    """Return ECE with each half of the queries scored by a calibration fitted on the other."""
    fused, fused_labels, similarity, labels = [], [], [], []
    halves = _halves(sets)
    for fit_rows, test_rows in (halves, halves[::-1]):
        train = _samples(sets, 'fused', beta, fit_rows)
        test = _samples(sets, 'fused', beta, test_rows)
        train_global, test_global = (_samples(sets, 'global', 0.0, fit_rows),
                                     _samples(sets, 'global', 0.0, test_rows))
        try:
            calibration = _fit(train['score'], train['correct'], 'fused score')
            global_calibration = _fit(train_global['score'], train_global['correct'],
                                      'global similarity')
        except DatasetError as exc:
            return {'skipped': str(exc)}
        fused.append(calibration.probability(test['score']))
        fused_labels.append(test['correct'])
        similarity.append(global_calibration.probability(test_global['score']))
        labels.append(test_global['correct'])
    return {'fused': _reliability(np.concatenate(fused), np.concatenate(fused_labels)),
            'global': _reliability(np.concatenate(similarity), np.concatenate(labels))}


def fit_scoring(sets: CalibrationSet, stored: Optional[RerankScoring],
                betas: Sequence[float] = BETAS, fitted_on: str = '') -> CalibrationFit:
    """Choose beta and fit the fused and global calibrations (see the module doc).

    ``stored`` is the checkpoint's current scoring: "before" is what the localizer computes
    with it and the default settings (the fused score with the stored beta, its calibration or
    the uncalibrated fallback; the stored global calibration or the generic default).
    """
    beta, table = choose_beta(sets.revisit, betas)
    fused = _samples(sets, 'fused', beta)
    calibration = _fit(fused['score'], fused['correct'], 'fused score')
    best_global = _samples(sets, 'global', 0.0)
    global_calibration = _fit(best_global['score'], best_global['correct'], 'global similarity')
    scoring = RerankScoring('fused', float(beta), calibration, fitted_on, global_calibration)
    active = plan_scoring(stored, 'fused', BETA_FROM_CHECKPOINT)
    old = _samples(sets, 'fused', active.beta)
    old_global = getattr(stored, 'global_calibration', None) or GLOBAL_SIMILARITY_CALIBRATION
    before = {'beta': active.beta, 'calibrated': active.calibrated,
              'recall_at_1': sets.revisit.recall('fused', active.beta, 1),
              'fused': _reliability(active.probability(old['pair'], old['similarity'],
                                                       old['score']), old['correct']),
              'global': _reliability(old_global.probability(best_global['score']),
                                     best_global['correct'])}
    after = {'beta': beta, 'calibrated': True, 'recall_at_1': table[beta],
             'fused': _reliability(calibration.probability(fused['score']), fused['correct']),
             'global': _reliability(global_calibration.probability(best_global['score']),
                                    best_global['correct'])}
    counts = {'queries': sets.num_queries, 'revisit': len(sets.revisit),
              'novel': len(sets.novel), 'right_best_matches': int(fused['correct'].sum()),
              'top_k': sets.top_k}
    return CalibrationFit(scoring, table, before, after, _cross_validated(sets, beta), counts)


def describe_fit(dataset: EvalDataset, top_k: int) -> str:
    """Return the ``fitted_on`` text recorded with the scoring."""
    fmt = dataset.info.get('format', 'dataset')
    return (f'vpr-calibrate on {dataset.name} ({fmt}, {dataset.num_queries} queries, '
            f'{dataset.num_database} map images): top-{top_k} shortlists, every query as a '
            'revisit and as a new place')
