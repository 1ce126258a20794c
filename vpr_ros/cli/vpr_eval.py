"""``vpr-eval``: evaluate a model on a VPR benchmark or a pair of bags and write a report.

Examples::

    vpr-eval --dataset-format folder --dataset pitts30k/images/test --out report/
    vpr-eval --dataset-format index-list --dataset corridor --out report/
    vpr-eval --dataset-format bags --dataset map_bag --query-bag query_bag
             --image-topic /camera/image_raw --pose-topic /odom --out report/
    vpr-eval --dataset-format sequence --dataset rtabmap_samples --min-gap 10 --out report/
    vpr-eval --dataset-format loop-matrix --dataset seq/ --ground-truth gt.mat --out report/
    vpr-eval --dataset-format kitti-poses --dataset kitti/sequences/00
             --ground-truth ../../poses/00.txt --radius 5 --min-gap 100
             --exclude-recent-s 30 --out report/

The printed line follows VPR-methods-evaluation: ``R@1: 68.5, R@5: 92.8, ...``.
"""

import argparse
import math
import sys
from typing import Iterable, Optional, Sequence

from tqdm import tqdm

from vpr_ros.cli.arguments import (add_config_arguments, add_dataset_options, add_model_arguments,
                                   config_from_args, run_command)
from vpr_ros.config import LocalizerConfig
from vpr_ros.data.benchmarks.dataset import DEFAULT_RADIUS_M, EvalDataset
from vpr_ros.data.benchmarks.formats import FORMATS, load_dataset, SEQUENCE_FORMATS
from vpr_ros.data.benchmarks.msls import write_msls_submission
from vpr_ros.errors import DatasetError
from vpr_ros.evaluation.metrics import DEFAULT_RECALL_VALUES
from vpr_ros.evaluation.report import write_report
from vpr_ros.evaluation.result import EvalResult
from vpr_ros.evaluation.runner import evaluate
from vpr_ros.models.loader import load_model


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``vpr-eval``."""
    parser = argparse.ArgumentParser(prog='vpr-eval', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--dataset-format', required=True, choices=FORMATS,
                        help='dataset layout (see vpr_ros.data.benchmarks)')
    parser.add_argument('--dataset', required=True,
                        help='dataset root folder (bags: the map bag)')
    add_dataset_options(parser)
    add_evaluation_arguments(parser)
    return parser


def add_evaluation_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options that ``vpr-eval`` and ``vpr-eval-live`` share.

    ``--model`` / ``--checkpoint``, ``--out``, the ground truth of a bag pair (topics, radius,
    heading), ``--recall-values``, one flag per :class:`LocalizerConfig` field and ``--verbose``.
    Read them back with :func:`bag_pair_options` and ``config_from_args(LocalizerConfig, args)``.
    """
    add_model_arguments(parser)
    parser.add_argument('--out', required=True, help='report folder to write')
    group = parser.add_argument_group('ground truth and scoring')
    group.add_argument('--image-topic', default='camera/image_raw',
                       help='image topic in the map and query bags (default: %(default)s)')
    group.add_argument('--pose-topic', default='camera/pose',
                       help='pose / odometry topic in the map and query bags '
                            '(default: %(default)s)')
    group.add_argument('--radius', type=float, default=DEFAULT_RADIUS_M,
                       help='positive radius in metres (folder, msls-val, pitts, tokyo, bags, '
                            'kitti-poses) (default: %(default)s)')
    group.add_argument('--max-yaw-deg', type=float, default=None,
                       help='bag pairs: also require headings within this many degrees')
    group.add_argument('--recall-values', type=int, nargs='+', default=DEFAULT_RECALL_VALUES,
                       help='N of Recall@N (default: %(default)s)')
    add_config_arguments(parser, LocalizerConfig)
    parser.add_argument('--verbose', action='store_true', help='log progress details')


def bag_pair_options(args: argparse.Namespace) -> dict:
    """Return the bag-pair reader keyword arguments (topics, radius, heading in radians)."""
    max_yaw = None if args.max_yaw_deg is None else math.radians(args.max_yaw_deg)
    return {'image_topic': args.image_topic, 'pose_topic': args.pose_topic,
            'radius_m': args.radius, 'max_yaw_diff_rad': max_yaw}


def dataset_options(args: argparse.Namespace) -> dict:
    """Return the reader keyword arguments that apply to ``args.dataset_format``.

    Raises:
        DatasetError: a sequence-only option given for another format, or a loop-matrix /
            kitti-poses dataset without ``--ground-truth``.
    """
    fmt = args.dataset_format
    if fmt in ('folder', 'msls-val', 'pitts', 'tokyo'):
        options = {'radius_m': args.radius}
    elif fmt == 'index-list':
        options = {'ground_truth': args.ground_truth or 'ground_truth.json'}
    elif fmt == 'bags':
        options = {'query_bag': args.query_bag, **bag_pair_options(args)}
    elif fmt in SEQUENCE_FORMATS:
        options = _sequence_options(args)
    else:
        options = {}
    if fmt not in SEQUENCE_FORMATS:
        given = [flag for flag, value in (('--exclude-recent-s', args.exclude_recent_s),
                                          ('--times', args.times),
                                          ('--frame-rate', args.frame_rate),
                                          ('--image-dir', args.image_dir),
                                          ('--gt-key', args.gt_key)) if value]
        if given:
            raise DatasetError(f'{", ".join(given)} apply to the sequence formats '
                               f'({", ".join(SEQUENCE_FORMATS)}), not to {fmt}')
    if fmt == 'msls-val' and args.index_dir:
        options['index_dir'] = args.index_dir
    if fmt == 'pitts':
        options['variant'] = args.variant
    return options


def _sequence_options(args: argparse.Namespace) -> dict:
    fmt = args.dataset_format
    if fmt != 'sequence' and not args.ground_truth:
        what = 'the loop-closure matrix (.mat, .npy, .npz)' if fmt == 'loop-matrix' else \
            'the pose file (12 values per line)'
        raise DatasetError(f'dataset format {fmt} needs --ground-truth FILE: {what}')
    if args.gt_key and fmt != 'loop-matrix':
        raise DatasetError('--gt-key applies to dataset format loop-matrix only')
    options = {'ground_truth': args.ground_truth or 'ground_truth.json',
               'min_gap': args.min_gap, 'times': args.times, 'frame_rate': args.frame_rate,
               'exclude_recent_s': args.exclude_recent_s}
    if args.image_dir:
        options['image_dir'] = args.image_dir
    if fmt == 'loop-matrix':
        options['gt_key'] = args.gt_key
    if fmt == 'kitti-poses':
        options['radius_m'] = args.radius
    return options


def progress_bar(items: Iterable, description: str, total: int) -> Iterable:
    """Wrap ``items`` in a tqdm progress bar (the evaluation ``progress`` callback)."""
    return tqdm(items, desc=description, total=total, unit='img')


def print_recalls(result: EvalResult) -> None:
    """Print the recalls before re-ranking (when re-ranked) and the summary line."""
    if result.recalls_before_rerank is not None:
        before = ', '.join(f'R@{n}: {v:.1f}' for n, v in result.recalls_before_rerank.items())
        print(f'before re-ranking: {before}')
    print(result.summary_line())


def print_decision(result: EvalResult) -> None:
    """Print how many best matches the accept decision took and how many of them were wrong."""
    decision = result.loop_closure.get('at_threshold')
    if decision:
        print(f'accept decision ({decision["source"]}, threshold {decision["threshold"]:g}): '
              f'{decision["accepted"]} of {result.loop_closure["decisions"]} best matches '
              f'accepted, {decision["wrong_accepted"]} of them wrong')


def run(args: argparse.Namespace) -> int:
    """Load the dataset and model, evaluate, write the report and print the recall line."""
    dataset: EvalDataset = load_dataset(args.dataset_format, args.dataset,
                                        **dataset_options(args))
    print(f'{dataset.name}: {dataset.num_queries} queries, {dataset.num_database} database '
          f'images, {dataset.queries_without_positives} queries without a positive')
    model = load_model(args.checkpoint, args.model)
    config = config_from_args(LocalizerConfig, args)
    result = evaluate(model, dataset, config.top_k, config.rerank, tuple(args.recall_values),
                      progress=progress_bar, config=config)
    write_report(result, args.out)
    if args.submission:
        write_msls_submission(args.submission, dataset, result.predictions)
    print_decision(result)
    print_recalls(result)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``vpr-eval``; returns the process exit status."""
    return run_command(build_parser(), run, argv)


if __name__ == '__main__':
    sys.exit(main())
