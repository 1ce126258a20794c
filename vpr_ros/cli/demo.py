"""``vpr-demo``: the embedded default, end to end, with no arguments and no downloads.

Renders the project's procedural route twice (map and query traversal, different lighting and
viewpoints), writes both as rosbag2 bags, builds a map from the first, localizes the second, prints
Recall@1/5 and per-stage timings, and writes a plot.
"""

import argparse
from pathlib import Path
import shutil
import sys
import time
from typing import Optional, Sequence

import numpy as np
from tqdm import tqdm

from vpr_ros.cli.arguments import configure_logging
from vpr_ros.config import LocalizerConfig
from vpr_ros.data.frame_source import batched, frame_positions
from vpr_ros.data.ground_truth import positives_within_radius
from vpr_ros.evaluation.metrics import format_recalls, recall_at_n
from vpr_ros.localization.localizer import LocalizationResult, Localizer
from vpr_ros.localization.mapping import add_frames
from vpr_ros.map.database import MapDatabase
from vpr_ros.models.loader import load_model
from vpr_ros.sample.renderer import write_sample

RECALL_NS = (1, 5, 10)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``vpr-demo``."""
    parser = argparse.ArgumentParser(prog='vpr-demo', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='demo_output',
                        help='folder for the sample bags, the map and the plot '
                             '(default: %(default)s)')
    parser.add_argument('--radius-m', type=float, default=5.0,
                        help='a map frame within this distance of the query is a correct match '
                             '(default: %(default)s)')
    parser.add_argument('--checkpoint', default=None,
                        help='model checkpoint; default: the shipped pairvpr_lite weights '
                             '(global search + pair re-ranking)')
    parser.add_argument('--verbose', action='store_true', help='log progress details')
    return parser


def choose_model(checkpoint: Optional[str]):
    """Load the demo model and say plainly whether it re-ranks."""
    model = load_model(checkpoint=checkpoint)
    source = checkpoint or 'the shipped weights'
    if model.spec.has_pair_classifier:
        print(f'model: {model.spec.architecture} from {source} (global search + pair re-ranking)')
    else:
        print(f'model: {model.spec.architecture} from {source}; global search only (no pair '
              'classifier)')
    return model


def localize_all(localizer: Localizer, frames) -> list[LocalizationResult]:
    """Localize ``frames`` in batches with a progress bar."""
    results = []
    with tqdm(total=len(frames), desc='localize query', unit='img') as bar:
        for batch in batched(frames, localizer.config.batch_size):
            results += localizer.localize_batch([f.image for f in batch],
                                                [f.stamp_ns for f in batch])
            bar.update(len(batch))
    return results


def global_order(results: list[LocalizationResult]) -> np.ndarray:
    """Return each query's shortlist ranked by global similarity alone (before re-ranking)."""
    return np.array([[c.map_id for c in sorted(r.candidates, key=lambda c: -c.global_similarity)]
                     for r in results])


def describe_scoring(localizer: Localizer) -> str:
    """Return e.g. ``'pair score + 80 x global similarity, calibrated'``."""
    scoring = localizer.scoring
    text = {'fused': f'fused: pair score + {scoring.beta:g} x global similarity',
            'pair': 'pair score', 'global': 'global similarity'}[scoring.fusion]
    return f'{text}, {"calibrated" if scoring.calibrated else "uncalibrated"}'


def report_decisions(results: list[LocalizationResult], predictions: np.ndarray,
                     positives: list, threshold: float) -> None:
    """Print how many matches the localizer accepted and how many of those were wrong."""
    accepted = [q for q, r in enumerate(results) if r.accepted]
    wrong = [q for q in accepted if predictions[q, 0] not in set(positives[q])]
    print(f'accepted matches (p >= {threshold:g}, temporal check): {len(accepted)} of '
          f'{len(results)}, {len(wrong)} wrong')


def report_timings(results: list[LocalizationResult], build_rate: float) -> None:
    """Print the median and 95th-percentile latency of each stage."""
    print(f'map build: {build_rate:.1f} images/s')
    for stage in ('describe', 'search', 'rerank', 'total'):
        values = np.array([r.timings_ms.get(stage, 0.0) for r in results])
        print(f'  {stage:<9} median {np.median(values):8.2f} ms   '
              f'p95 {np.percentile(values, 95):8.2f} ms')


def plot(out: Path, map_xy: np.ndarray, query_xy: np.ndarray, predictions: np.ndarray,
         positives: list, recalls: dict) -> Path:
    """Draw the route with each query's top-1 match (green right, red wrong) and Recall@N."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (ax, ax_r) = plt.subplots(1, 2, figsize=(12, 5.5), gridspec_kw={'width_ratios': [2, 1]})
    ax.plot(map_xy[:, 0], map_xy[:, 1], '.', color='0.6', label='map traversal')
    for q, top in enumerate(predictions[:, 0]):
        right = top in set(positives[q])
        ax.plot([query_xy[q, 0], map_xy[top, 0]], [query_xy[q, 1], map_xy[top, 1]],
                '-', color='tab:green' if right else 'tab:red', lw=0.8, alpha=0.8)
    ax.plot(query_xy[:, 0], query_xy[:, 1], '.', color='tab:blue', ms=3, label='query traversal')
    ax.set_aspect('equal')
    ax.set_xlabel('x [m]')
    ax.set_ylabel('y [m]')
    ax.set_title('top-1 matches (green: within radius, red: wrong)')
    ax.legend(loc='best')
    ns = sorted(recalls)
    ax_r.plot(ns, [recalls[n] for n in ns], 'o-')
    ax_r.set_xscale('log')
    ax_r.set_xlabel('N')
    ax_r.set_ylabel('Recall@N [%]')
    ax_r.set_ylim(0, 100)
    ax_r.grid(True, alpha=0.3)
    ax_r.set_title('Recall@N')
    fig.tight_layout()
    path = out / 'demo.png'
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(out: Path, radius_m: float, checkpoint: Optional[str]) -> dict:
    """Run the demo and return the recalls it measured."""
    from vpr_ros.data.bag import read_frames
    t0 = time.perf_counter()
    if (out / 'sample').exists():
        shutil.rmtree(out / 'sample')  # our own output of an earlier run
    sample = write_sample(out / 'sample')
    print(f'sample: rendered both traversals in {time.perf_counter() - t0:.1f} s -> '
          f'{sample.map_bag}, {sample.query_bag}')
    model = choose_model(checkpoint)
    localizer = Localizer(model, MapDatabase(model.spec), LocalizerConfig())
    map_frames = list(read_frames(sample.map_bag, sample.image_topic, sample.pose_topic))
    query_frames = list(read_frames(sample.query_bag, sample.image_topic, sample.pose_topic))
    t0 = time.perf_counter()
    add_frames(localizer, tqdm(map_frames, desc='build map', unit='img'))
    build_rate = len(map_frames) / (time.perf_counter() - t0)
    localizer.database.save(out / 'map')
    results = localize_all(localizer, query_frames)
    predictions = np.array([[c.map_id for c in r.candidates] for r in results])
    map_xy, query_xy = frame_positions(map_frames), frame_positions(query_frames)
    positives = positives_within_radius(query_xy, map_xy, radius_m)
    recalls = recall_at_n(predictions, positives, ns=(1, 2, 5, 10, 20))
    print(f'{len(query_frames)} queries against {len(map_frames)} map images '
          f'(correct = within {radius_m:g} m)')
    if results and results[0].reranked:
        before = recall_at_n(global_order(results), positives, ns=RECALL_NS)
        print(f'before re-ranking (global descriptor): {format_recalls(before)}')
        print(f'after re-ranking ({describe_scoring(localizer)}): '
              f'{format_recalls({n: recalls[n] for n in RECALL_NS})}')
    else:
        print(format_recalls({n: recalls[n] for n in RECALL_NS}))
    report_decisions(results, predictions, positives, localizer.config.accept_probability)
    report_timings(results, build_rate)
    print(f'plot: {plot(out, map_xy, query_xy, predictions, positives, recalls)}')
    return recalls


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``vpr-demo``; returns the process exit status."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run(out, args.radius_m, args.checkpoint)
    return 0


if __name__ == '__main__':
    sys.exit(main())
