"""``vpr-calibrate``: fit a checkpoint's fusion beta and match probability on your own data.

Examples::

    vpr-calibrate --checkpoint pairvpr-vitB.safetensors --dataset-format index-list
                  --dataset my_val --out pairvpr-vitB-calibrated.safetensors
    vpr-calibrate --checkpoint model.safetensors --dataset-format folder --dataset val/
                  --in-place
    vpr-calibrate --model pairvpr_lite --dataset-format bags --dataset map_bag
                  --query-bag query_bag --pose-topic /odom --out lite_calibrated.safetensors

The dataset is any that ``vpr-eval`` reads (a validation set: never the data you report
results on). Every query is described and searched as the localizer does, and scored twice
against its global top-K shortlist: once as a *revisit* (the whole map) and once as a *new
place* (its true places removed from the map, so its best match is always wrong, as on a
first visit during SLAM). The beta of the fused score ``pair + beta * similarity`` is chosen by
Recall@1 of the revisits (ties go to the smaller beta); a logistic calibration of the best
candidate's fused score is fitted on both settings together (P(the best match is right) for a
query that is as likely a revisit as a new place), and one of the global similarity alone
(for maps without re-ranking). They are written into the checkpoint's ``rerank_scoring``
metadata: ``--out`` writes a new file, ``--in-place`` replaces the checkpoint atomically.
Printed: the Recall@1 of each beta, the chosen beta, both calibrations and their reliability
(expected calibration error, ECE) before and after, in-sample and cross-validated on two
halves of the queries.
"""

import argparse
from dataclasses import dataclass, field
import json
import logging
from pathlib import Path
import sys
from typing import Iterable, Optional, Sequence

import numpy as np
from tqdm import tqdm

from vpr_ros.cli.arguments import (add_config_arguments, add_model_arguments, config_from_args,
                                   run_command)
from vpr_ros.cli.vpr_eval import _add_dataset_options, dataset_options
from vpr_ros.config import BETA_FROM_CHECKPOINT, DEFAULT_MODEL, LocalizerConfig
from vpr_ros.data.benchmark_datasets import DEFAULT_RADIUS_M, EvalDataset, FORMATS, load_dataset
from vpr_ros.errors import CheckpointError, DatasetError
from vpr_ros.evaluation.metrics import reliability
from vpr_ros.evaluation.runner import build_map, json_ready, make_localizer, Progress
from vpr_ros.localization.localizer import Localizer
from vpr_ros.models.calibration import Calibration, fit_calibration, GLOBAL_SIMILARITY_CALIBRATION
from vpr_ros.models.checkpoint import (load_pretrained, save_checkpoint, shipped_weights_path,
                                       write_rerank_scoring)
from vpr_ros.models.conversion import (file_sha256, is_vpr_ros_checkpoint, load_any_checkpoint,
                                       read_official, source_metadata)
from vpr_ros.models.fusion import fuse_scores, plan_scoring, RerankScoring
from vpr_ros.models.vpr_model import VprModel

LOGGER = logging.getLogger(__name__)

BETAS = (0.0, 2.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
"""Candidate betas (as the shipped weights' recipe, ``vpr_ros_training.score_calibration``)."""
CONFIG_FIELDS = ('top_k', 'batch_size', 'rerank_batch_size', 'device', 'precision', 'backend',
                 'backend_cache_dir')
"""The :class:`LocalizerConfig` options that matter here (the rest keep their defaults)."""
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


# ---- the checkpoint -------------------------------------------------------------------------

def load_calibration_model(checkpoint: Optional[str], model: Optional[str]) -> VprModel:
    """Return the model to calibrate: a checkpoint file (ours or official) or a registry name."""
    if checkpoint:
        return load_any_checkpoint(checkpoint)
    return load_pretrained(model or DEFAULT_MODEL)


def output_plan(checkpoint: Optional[str], model: Optional[str], out: Optional[str],
                in_place: bool) -> tuple[Optional[Path], Path]:
    """Return ``(source file or None, file to write)``, refusing unclear or unsafe requests.

    The source is the ``checkpoint`` file, else the registry ``model``'s shipped weights
    (None when it has none). ``in_place`` rewrites only a vpr_ros ``checkpoint`` file.
    """
    source = Path(checkpoint) if checkpoint else shipped_weights_path(model or DEFAULT_MODEL)
    if in_place and out:
        raise CheckpointError('give either --out or --in-place, not both')
    if in_place:
        if not checkpoint:
            raise CheckpointError("--in-place rewrites a --checkpoint file; a registry model's "
                                  'shipped weights are not rewritten: give --out')
        if not is_vpr_ros_checkpoint(source):
            raise CheckpointError(f'{source} is not a vpr_ros checkpoint and is not rewritten '
                                  'in place: give --out NEW.safetensors')
        return source, source
    if not out:
        raise CheckpointError('give --out NEW.safetensors (or --in-place to replace the '
                              'checkpoint)')
    target = Path(out)
    if source is not None and target.exists() and target.resolve() == source.resolve():
        raise CheckpointError(f'--out {target} is the checkpoint itself: use --in-place to '
                              'replace it')
    return source, target


def write_scoring(model: VprModel, scoring: RerankScoring, source: Optional[Path],
                  target: Path) -> Path:
    """Write ``scoring`` into a copy of checkpoint ``source`` at ``target`` (atomically).

    A vpr_ros checkpoint is copied with only its ``rerank_scoring`` replaced; an official file
    becomes a new vpr_ros checkpoint; without a source, ``model`` is saved.
    """
    if source is None:
        return save_checkpoint(model, target, rerank_scoring=scoring)
    if is_vpr_ros_checkpoint(source):
        return write_rerank_scoring(source, scoring, target)
    official, layout = read_official(source)
    metadata = {'source': source_metadata(source, layout, file_sha256(source))}
    return save_checkpoint(official, target, rerank_scoring=scoring, extra_metadata=metadata)


# ---- command line ---------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``vpr-calibrate``."""
    parser = argparse.ArgumentParser(prog='vpr-calibrate', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument('--dataset-format', required=True, choices=FORMATS,
                        help='dataset layout, as vpr-eval (see vpr_ros.data.benchmark_datasets)')
    parser.add_argument('--dataset', required=True,
                        help='validation dataset root folder (bags: the map bag)')
    parser.add_argument('--out', default=None,
                        help='calibrated checkpoint to write (a new file)')
    parser.add_argument('--in-place', action='store_true',
                        help='replace the --checkpoint file atomically instead of --out')
    parser.add_argument('--betas', type=float, nargs='+', default=list(BETAS),
                        help='fusion betas to choose from (default: %(default)s)')
    parser.add_argument('--report', default=None,
                        help='also write the numbers as JSON to this file')
    group = parser.add_argument_group('ground truth')
    group.add_argument('--image-topic', default='camera/image_raw',
                       help='bags: image topic of the map and query bags (default: %(default)s)')
    group.add_argument('--pose-topic', default='camera/pose',
                       help='bags: pose / odometry topic (default: %(default)s)')
    group.add_argument('--radius', type=float, default=DEFAULT_RADIUS_M,
                       help='positive radius in metres (folder, msls-val, pitts, tokyo, bags, '
                            'kitti-poses) (default: %(default)s)')
    group.add_argument('--max-yaw-deg', type=float, default=None,
                       help='bags: also require headings within this many degrees')
    _add_dataset_options(parser)
    add_config_arguments(parser, LocalizerConfig, only=CONFIG_FIELDS)
    parser.add_argument('--verbose', action='store_true', help='log progress details')
    return parser


def progress_bar(items: Iterable, description: str, total: int) -> Iterable:
    """Wrap ``items`` in a tqdm progress bar."""
    return tqdm(items, desc=description, total=total, unit='img')


def _ece_line(name: str, before: dict, after: dict, cross: dict) -> str:
    """Return one printed reliability line."""
    text = (f'{name}: ECE {before["ece"]:.3f} -> {after["ece"]:.3f} (in-sample), Brier '
            f'{before["brier"]:.3f} -> {after["brier"]:.3f}')
    if 'ece' in cross:
        text += f'; cross-validated on two halves of the queries: ECE {cross["ece"]:.3f}'
    return text


def print_fit(fit: CalibrationFit, path: Path) -> None:
    """Print the beta table, the chosen scoring and the reliability before and after."""
    scoring, before, after = fit.scoring, fit.before, fit.after
    counts = fit.counts
    print(f'{counts["revisit"]} revisit and {counts["novel"]} new-place queries '
          f'(top-{counts["top_k"]} shortlists)')
    print('Recall@1 of the revisits by beta: '
          + ', '.join(f'{beta:g}: {r1:.1f}' for beta, r1 in fit.beta_table.items()))
    print(f'chosen beta {scoring.beta:g} (R@1 {after["recall_at_1"]:.1f}; before: beta '
          f'{before["beta"]:g}, R@1 {before["recall_at_1"]:.1f})')
    print(f'calibration of the fused score: P = sigmoid({scoring.calibration.scale:.4g} * score '
          f'{scoring.calibration.offset:+.4g})')
    print(f'calibration of the global similarity: P = sigmoid('
          f'{scoring.global_calibration.scale:.4g} * similarity '
          f'{scoring.global_calibration.offset:+.4g})')
    cross = fit.cross_validated
    if 'skipped' in cross:
        print(f'cross-validation skipped: {cross["skipped"]}')
    state = 'stored calibration' if before['calibrated'] else 'uncalibrated fallback'
    print(_ece_line(f'best-match probability (before: {state})', before['fused'],
                    after['fused'], cross.get('fused', {})))
    print(_ece_line('global-similarity probability', before['global'], after['global'],
                    cross.get('global', {})))
    print(f'wrote {path}: rerank_scoring fused, beta {scoring.beta:g}, calibrated (the nodes '
          'report probability_calibrated: True with rerank_fusion fused and fusion_beta -1)')


def run(args: argparse.Namespace) -> int:
    """Load the model and dataset, fit, write the checkpoint and print the numbers."""
    source, target = output_plan(args.checkpoint, args.model, args.out, args.in_place)
    dataset = load_dataset(args.dataset_format, args.dataset, **dataset_options(args))
    print(f'{dataset.name}: {dataset.num_queries} queries, {dataset.num_database} map images, '
          f'{dataset.queries_without_positives} queries without a true match')
    model = load_calibration_model(args.checkpoint, args.model)
    config = config_from_args(LocalizerConfig, args, only=CONFIG_FIELDS)
    sets = collect_shortlists(model, dataset, config, progress_bar)
    fit = fit_scoring(sets, getattr(model, 'rerank_scoring', None), args.betas,
                      describe_fit(dataset, config.top_k))
    path = write_scoring(model, fit.scoring, source, target)
    if args.report:
        Path(args.report).write_text(json.dumps(fit.summary(), indent=2) + '\n',
                                     encoding='utf-8')
    print_fit(fit, path)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``vpr-calibrate``; returns the process exit status."""
    return run_command(build_parser(), run, argv)


if __name__ == '__main__':
    sys.exit(main())
