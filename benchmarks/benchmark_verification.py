"""Geometric verification: its cost next to re-ranking, and how well it separates matches.

Run: ``.venv/bin/python benchmarks/benchmark_verification.py [--queries 10 --top-k 20 ...]``.

Timing (always): the re-ranking of a top-K shortlist (:meth:`Localizer.score_pairs`, ``torch``
backend, float16 map tokens) against the geometric verification
(:func:`~vpr_ros.localization.verification.count_inliers`: mutual nearest neighbours of the
token grids,
then RANSAC) of the best ``--verify-top-n`` candidates, per model, alternated round by round in
the same process. Every query is a noisy copy of one of its candidates, so the RANSAC sees a
real match among random ones. Printed: milliseconds per candidate and the ratio of the
verification's cost per candidate to the re-ranking's (above 1: verification costs more).

Separation (``--validation DIR``, the ``real_vpr`` folder of the shared data): with the shipped
weights, Gardens Point ``night_right`` queries against a ``day_left`` map on places 140-199
(correct within +-2 frames) and SPED ``query`` against ``reference`` (same index). For the best
re-ranked candidate: ROC AUC of the inlier count, of the fused score and of the probability for
"the best match is right"; precision and recall at inlier thresholds; the precision of matches
accepted at a probability with and without a ``min_inliers`` floor; and Recall@1 when the best
``--verify-top-n`` are re-ordered by ``score + gamma * inliers``. Only validation sets: the
held-out corridor and RTAB-Map sets must not be measured here.
"""

import argparse
from pathlib import Path
import sys
import time
from typing import Callable, Optional, Sequence

from harness import (add_common_arguments, interleaved, load_lite, set_threads, synthetic_map,
                     unit_rows)
import numpy as np

from vpr_ros.config import LocalizerConfig, VERIFY_MODELS
from vpr_ros.localization.localizer import Localizer
from vpr_ros.localization.verification import count_inliers, token_grid
from vpr_ros.map.database import MapDatabase
from vpr_ros.map.entries import MapEntry

GAMMAS = (0.0, 0.1, 0.2, 0.5, 1.0)
INLIER_THRESHOLDS = (10, 20, 30, 40, 60, 80)
ACCEPT_PROBABILITIES = (0.5, 0.9, 0.99)
GP_PLACES = range(140, 200)
GP_TOLERANCE = 2


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print the cost ratios, then the separation on the validation sets when asked."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument('--queries', type=int, default=10,
                        help='queries per round (default: %(default)s)')
    parser.add_argument('--top-k', type=int, default=20,
                        help='candidates re-ranked per query (default: %(default)s)')
    parser.add_argument('--verify-top-n', type=int, default=5,
                        help='candidates verified per query (default: %(default)s)')
    parser.add_argument('--map-size', type=int, default=500,
                        help='places in the synthetic map (default: %(default)s)')
    parser.add_argument('--threshold', type=float, default=1.0,
                        help='RANSAC inlier distance in grid cells (default: %(default)s)')
    parser.add_argument('--validation', default=None,
                        help='real_vpr folder: also measure the separation on Gardens Point '
                        '140-199 and SPED (minutes on a CPU)')
    args = parser.parse_args(argv)
    set_threads(args.threads)
    model, weights = load_lite(args.checkpoint)
    timing(model, weights, args)
    if args.validation:
        separation(model, Path(args.validation), args)
    return 0


def timing(model, weights: str, args: argparse.Namespace) -> None:
    """Time re-ranking and verification on a synthetic map; print per-candidate ratios."""
    spec = model.spec
    grid = token_grid(model)
    database, _, tokens = synthetic_map(spec, args.map_size)
    rng = np.random.default_rng(1)
    shortlists = database.search(unit_rows(rng, args.queries, spec.descriptor_dim),
                                 args.top_k)[1]
    picks = shortlists[np.arange(args.queries), rng.integers(0, args.verify_top_n,
                                                             args.queries)]
    queries = (tokens[picks] + 0.5 * rng.standard_normal(tokens[picks].shape,
                                                         dtype=np.float32)).astype(np.float16)
    config = LocalizerConfig(device='cpu', backend='torch', top_k=args.top_k,
                             rerank_batch_size=args.top_k)
    localizer = Localizer(model, database, config)
    top_n = min(args.verify_top_n, args.top_k)
    methods: dict[str, Callable[[], object]] = {
        'rerank': lambda: [localizer.score_pairs(q, ids) for q, ids in zip(queries, shortlists)]}
    for name in VERIFY_MODELS:
        methods[name] = (lambda name=name: [
            count_inliers(q, database.tokens(ids[:top_n]), grid, name, args.threshold)
            for q, ids in zip(queries, shortlists)])
    seconds = interleaved(methods, args.rounds)
    inliers = {name: np.concatenate(methods[name]()) for name in VERIFY_MODELS}
    rerank_ms = seconds['rerank'] * 1e3 / (args.queries * args.top_k)
    print(f'pairvpr_lite ({weights}); grid {grid[0]}x{grid[1]}, {spec.token_dim} channels; '
          f'{args.queries} queries, re-rank K={args.top_k}, verify N={top_n}; '
          f'{args.threads} thread(s)')
    print(f'  {"re-ranking (score_pairs, torch fp32)":<40s} {rerank_ms:8.3f} ms/candidate'
          f'   (baseline)               {rerank_ms * args.top_k:7.2f} ms/query (K)')
    for name in VERIFY_MODELS:
        per = seconds[name] * 1e3 / (args.queries * top_n)
        print(f'  {"verification, " + name:<40s} {per:8.3f} ms/candidate'
              f'   cost x{per / rerank_ms:5.2f} of baseline   {per * top_n:7.2f} ms/query (N), '
              f'median inliers {np.median(inliers[name]):.0f}')


def separation(model, root: Path, args: argparse.Namespace) -> None:
    """Print the separation of right and wrong best matches on the validation sets."""
    from vpr_ros.data.image_codec import read_image_file
    config = LocalizerConfig(device='cpu', backend='torch', top_k=args.top_k)
    describer = Localizer(model, MapDatabase(model.spec), config)
    sets = {
        'Gardens Point 140-199, night_right vs day_left (+-2 frames)': (
            [root / f'gardens_point/day_left/{i:03d}.jpg' for i in GP_PLACES],
            [root / f'gardens_point/night_right/{i:03d}.jpg' for i in GP_PLACES],
            lambda query, place: abs(query - place) <= GP_TOLERANCE),
        'SPED query vs reference (same index)': (
            sorted((root / 'sped/reference').glob('*.png')),
            sorted((root / 'sped/query').glob('*.png')),
            lambda query, place: query == place),
    }
    for title, (map_paths, query_paths, correct) in sets.items():
        start = time.perf_counter()
        map_g, map_t = describer.describe([read_image_file(p) for p in map_paths])
        query_g, query_t = describer.describe([read_image_file(p) for p in query_paths])
        database = MapDatabase(model.spec, store_tokens=True)
        database.add(map_g, [MapEntry(-1, i) for i in range(len(map_g))], map_t)
        localizer = Localizer(model, database, config)
        results = [localizer.rank(g, t, i) for i, (g, t) in enumerate(zip(query_g, query_t))]
        print(f'\n{title}: {len(results)} queries ({time.perf_counter() - start:.0f} s to '
              'describe and rank)')
        for name in VERIFY_MODELS:
            report_model(localizer, results, query_t, correct, name, args)


def report_model(localizer: Localizer, results: list, query_tokens: np.ndarray,
                 correct: Callable[[int, int], bool], name: str,
                 args: argparse.Namespace) -> None:
    """Print one geometric model's separation numbers on one validation set."""
    grid = token_grid(localizer.model)
    rows = []
    for query, result in enumerate(results):
        top = result.candidates[:args.verify_top_n]
        ids = np.array([c.map_id for c in top])
        inliers = count_inliers(query_tokens[query], localizer.database.tokens(ids), grid, name,
                                args.threshold)
        rows.append((np.array([correct(query, int(i)) for i in ids]),
                     np.array([c.score for c in top]), inliers, top[0].probability))
    right = np.array([r[0][0] for r in rows])
    inliers = np.array([r[2][0] for r in rows])
    probability = np.array([r[3] for r in rows])
    score = np.array([r[1][0] for r in rows])
    print(f'  {name}: best match right {100 * right.mean():.1f} % (R@1); ROC AUC for "best '
          f'is right": inliers {roc_auc(inliers, right):.3f}, fused score '
          f'{roc_auc(score, right):.3f}, probability {roc_auc(probability, right):.3f}; '
          f'median inliers right {np.median(inliers[right]) if right.any() else 0:.0f}, '
          f'wrong {np.median(inliers[~right]) if (~right).any() else 0:.0f}')
    print('    inliers >= t (precision / recall of right best matches): ' + ', '.join(
        f'{t}: {precision_recall(right, inliers >= t)}' for t in INLIER_THRESHOLDS))
    for p in ACCEPT_PROBABILITIES:
        accepted = probability >= p
        print(f'    probability >= {p}: {precision_recall(right, accepted)}; with min_inliers '
              + ', '.join(f'{t}: {precision_recall(right, accepted & (inliers >= t))}'
                          for t in INLIER_THRESHOLDS[:4]))
    recalls = [np.mean([r[0][int(np.argmax(r[1] + gamma * r[2]))] for r in rows])
               for gamma in GAMMAS]
    print('    R@1 re-ordered by score + gamma * inliers: ' + ', '.join(
        f'{gamma}: {100 * r:.1f}' for gamma, r in zip(GAMMAS, recalls)))


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Return the ROC AUC (ties count half); nan without both classes."""
    positive, negative = scores[labels].astype(float), scores[~labels].astype(float)
    if not positive.size or not negative.size:
        return float('nan')
    greater = (positive[:, None] > negative[None]).mean()
    return float(greater + 0.5 * (positive[:, None] == negative[None]).mean())


def precision_recall(right: np.ndarray, selected: np.ndarray) -> str:
    """Return ``'P/R'`` in percent: right among selected, selected right among all right."""
    precision = 100 * right[selected].mean() if selected.any() else float('nan')
    recall = 100 * (right & selected).sum() / max(right.sum(), 1)
    return f'{precision:.1f}/{recall:.1f}'


if __name__ == '__main__':
    sys.exit(main())
