"""``vpr-eval``: evaluate a model on a VPR benchmark or a pair of bags and write a report.

Examples::

    vpr-eval --dataset-format folder --dataset pitts30k/images/test --out report/
    vpr-eval --dataset-format index-list --dataset corridor --out report/
    vpr-eval --dataset-format bags --dataset map_bag --query-bag query_bag
             --image-topic /camera/image_raw --pose-topic /odom --out report/
    vpr-eval --dataset-format sequence --dataset rtabmap_samples --min-gap 10 --out report/

The printed line follows VPR-methods-evaluation: ``R@1: 68.5, R@5: 92.8, ...``.
"""

import argparse
import math
import sys
from typing import Iterable, Optional, Sequence

from tqdm import tqdm

from vpr_ros.core.benchmark_datasets import (DEFAULT_RADIUS_M, EvalDataset, FORMATS,
                                             load_dataset, write_msls_submission)
from vpr_ros.core.cli.arguments import (add_config_arguments, add_model_arguments,
                                        config_from_args, run_command)
from vpr_ros.core.config import LocalizerConfig
from vpr_ros.core.evaluation import EvalResult, evaluate, write_report
from vpr_ros.core.localizer import load_model
from vpr_ros.core.metrics import DEFAULT_RECALL_VALUES


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``vpr-eval``."""
    parser = argparse.ArgumentParser(prog='vpr-eval', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--dataset-format', required=True, choices=FORMATS,
                        help='dataset layout (see vpr_ros.core.benchmark_datasets)')
    parser.add_argument('--dataset', required=True,
                        help='dataset root folder (bags: the map bag)')
    _add_dataset_options(parser)
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
                       help='positive radius in metres (folder, msls-val, pitts, tokyo, bags) '
                            '(default: %(default)s)')
    group.add_argument('--max-yaw-deg', type=float, default=None,
                       help='bag pairs: also require headings within this many degrees')
    group.add_argument('--recall-values', type=int, nargs='+', default=DEFAULT_RECALL_VALUES,
                       help='N of Recall@N (default: %(default)s)')
    add_config_arguments(parser, LocalizerConfig)
    parser.add_argument('--verbose', action='store_true', help='log progress details')


def _add_dataset_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('dataset options')
    group.add_argument('--ground-truth', default='ground_truth.json',
                       help='index-list / sequence ground truth file in the dataset folder '
                            '(default: %(default)s)')
    group.add_argument('--min-gap', type=int, default=10,
                       help='sequence: a frame is matched against frames at least this many '
                            'frames earlier (default: %(default)s)')
    group.add_argument('--index-dir', default=None,
                       help='msls-val: folder with the official msls_val_*.npy index lists')
    group.add_argument('--variant', default='30k', choices=('30k', '250k'),
                       help='pitts: Pittsburgh-30k or -250k (default: %(default)s)')
    group.add_argument('--query-bag', default=None, help='bags: the query bag')
    group.add_argument('--submission', default=None,
                       help='msls-test: write the MSLS challenge prediction file here')


def bag_pair_options(args: argparse.Namespace) -> dict:
    """Return the bag-pair reader keyword arguments (topics, radius, heading in radians)."""
    max_yaw = None if args.max_yaw_deg is None else math.radians(args.max_yaw_deg)
    return {'image_topic': args.image_topic, 'pose_topic': args.pose_topic,
            'radius_m': args.radius, 'max_yaw_diff_rad': max_yaw}


def dataset_options(args: argparse.Namespace) -> dict:
    """Return the reader keyword arguments that apply to ``args.dataset_format``."""
    fmt = args.dataset_format
    if fmt in ('folder', 'msls-val', 'pitts', 'tokyo'):
        options = {'radius_m': args.radius}
    elif fmt == 'index-list':
        options = {'ground_truth': args.ground_truth}
    elif fmt == 'sequence':
        options = {'ground_truth': args.ground_truth, 'min_gap': args.min_gap}
    elif fmt == 'bags':
        options = {'query_bag': args.query_bag, **bag_pair_options(args)}
    else:
        options = {}
    if fmt == 'msls-val' and args.index_dir:
        options['index_dir'] = args.index_dir
    if fmt == 'pitts':
        options['variant'] = args.variant
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
    print_recalls(result)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``vpr-eval``; returns the process exit status."""
    return run_command(build_parser(), run, argv)


if __name__ == '__main__':
    sys.exit(main())
