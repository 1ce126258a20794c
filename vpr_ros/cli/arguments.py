"""Command-line flags generated from the config dataclasses (one source of truth)."""

import argparse
from dataclasses import fields, MISSING
import logging
import sys
import typing
from typing import Callable, Optional, Sequence, Type, TypeVar

from vpr_ros.config import config_from_dict, DEFAULT_MODEL
from vpr_ros.data.benchmarks.sequence import DEFAULT_MIN_GAP
from vpr_ros.errors import VprError

T = TypeVar('T')


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = '',
                         only: Optional[Sequence[str]] = None) -> None:
    """Add one ``--flag`` per field of ``cls`` with its help text, type, choices and default.

    ``only`` limits the flags to the named fields (read them back with ``only`` too).
    """
    group = parser.add_argument_group(f'{cls.__name__} options')
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if only is not None and f.name not in only:
            continue
        flag = '--' + (prefix + f.name).replace('_', '-')
        help_text = f.metadata.get('help', f.name) + ' (default: %(default)s)'
        default = f.default if f.default is not MISSING else None
        if hints[f.name] is bool:
            group.add_argument(flag, dest=prefix + f.name, action=argparse.BooleanOptionalAction,
                               default=default, help=help_text)
        else:
            group.add_argument(flag, dest=prefix + f.name, type=hints[f.name], default=default,
                               choices=f.metadata.get('choices'), help=help_text)


def config_from_args(cls: Type[T], args: argparse.Namespace, prefix: str = '',
                     only: Optional[Sequence[str]] = None) -> T:
    """Build ``cls`` from the flags that :func:`add_config_arguments` added.

    With ``only``, the other fields keep their defaults.
    """
    return config_from_dict(cls, {f.name: getattr(args, prefix + f.name) for f in fields(cls)
                                  if only is None or f.name in only})


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--model`` / ``--checkpoint`` (mutually exclusive)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument('--model', default=None,
                       help=f'registry model name, with its shipped weights; default: '
                            f'{DEFAULT_MODEL}')
    group.add_argument('--checkpoint', default=None,
                       help='vpr_ros safetensors checkpoint, or an official Pair-VPR release '
                            '.pth (converted in memory; vpr-convert it once to start faster), '
                            'to load instead of --model (default: %(default)s)')


def add_dataset_options(parser: argparse.ArgumentParser) -> None:
    """Add the dataset reader options of ``vpr-eval`` and ``vpr-calibrate``.

    Read them back with :func:`vpr_ros.cli.vpr_eval.dataset_options`.
    """
    group = parser.add_argument_group('dataset options')
    group.add_argument('--ground-truth', default=None,
                       help='ground truth file, relative to --dataset or absolute: index-list '
                            'and sequence: default ground_truth.json; loop-matrix: the .mat / '
                            '.npy / .npz loop-closure matrix; kitti-poses: the pose file '
                            '(both required)')
    group.add_argument('--gt-key', default=None,
                       help='loop-matrix: the variable holding the matrix (default: the only '
                            'square 2-D array in the file)')
    group.add_argument('--image-dir', default=None,
                       help='sequence, loop-matrix, kitti-poses: image folder under --dataset, '
                            'in capture order (default: images; kitti-poses: images, image_2 '
                            'or image_0)')
    group.add_argument('--min-gap', type=int, default=DEFAULT_MIN_GAP,
                       help='sequence formats: frame i is matched against frames 0 .. i - '
                            'MIN_GAP; inclusive: a revisit exactly MIN_GAP frames back counts '
                            'and is in the map (default: %(default)s)')
    group.add_argument('--exclude-recent-s', type=float, default=0.0,
                       help='sequence formats: also leave out of the map the frames stamped '
                            'less than this many seconds before the query, as the localize '
                            "node's exclude_recent_s (a frame exactly this old stays); needs "
                            'frame stamps: --times or --frame-rate for image folders '
                            '(default: %(default)s, off)')
    group.add_argument('--times', default=None,
                       help='sequence formats: frame times file, one time in seconds per frame '
                            '(KITTI times.txt; default: times.txt in --dataset when present)')
    group.add_argument('--frame-rate', type=float, default=None,
                       help='sequence formats: stamp frame i at i / FRAME_RATE seconds (for '
                            'image folders without a times file)')
    group.add_argument('--index-dir', default=None,
                       help='msls-val: folder with the official msls_val_*.npy index lists')
    group.add_argument('--variant', default='30k', choices=('30k', '250k'),
                       help='pitts: Pittsburgh-30k or -250k (default: %(default)s)')
    group.add_argument('--query-bag', default=None, help='bags: the query bag')
    group.add_argument('--submission', default=None,
                       help='msls-test: write the MSLS challenge prediction file here')


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags that select topics in a bag or poses for an image folder."""
    parser.add_argument('--image-topic', default='camera/image_raw',
                        help='bag image topic (Image or CompressedImage) (default: %(default)s)')
    parser.add_argument('--pose-topic', default=None,
                        help='bag pose topic (Odometry, PoseStamped or PoseWithCovarianceStamped)'
                             ' (default: %(default)s)')
    parser.add_argument('--poses-csv', default=None,
                        help='CSV of poses for an image folder (default: %(default)s)')


def configure_logging(verbose: bool) -> None:
    """Send library logs to stderr (INFO with ``--verbose``, WARNING otherwise)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format='%(levelname)s %(name)s: %(message)s')


def run_command(parser: argparse.ArgumentParser,
                command: Callable[[argparse.Namespace], int],
                argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv``, configure logging (``--verbose``) and return ``command(args)``.

    A :class:`~vpr_ros.errors.VprError` is printed as ``error: ...`` on stderr and gives
    exit status 1; Ctrl-C gives 130, the shell's status for SIGINT, without a traceback.
    """
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        return command(args)
    except VprError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
