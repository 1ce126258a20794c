"""Command-line plumbing shared by the stage entry points (argparse, tqdm, logging)."""

import argparse
import logging
import os
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from tqdm import tqdm

from vpr_ros_training.config import load_config
from vpr_ros_training.distributed import DistContext


def stage_parser(description: str) -> argparse.ArgumentParser:
    """Return the argument parser of a training stage."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('--config', default=None,
                        help='YAML recipe (see vpr_ros_training/configs); default: %(default)s')
    parser.add_argument('--set', dest='overrides', action='append', default=[],
                        metavar='SECTION.KEY=VALUE',
                        help='override one option, e.g. run.max_steps=10 (repeatable); '
                             'default: %(default)s')
    parser.add_argument('--resume', default='',
                        help='run folder whose state.pt is resumed; default: a new run')
    parser.add_argument('--log-level', default='INFO',
                        help='console log level; default: %(default)s')
    return parser


def parse_stage_args(description: str, argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Parse a stage's command line and configure console logging."""
    args = stage_parser(description).parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    return args


def parse_recipe_args(description: str, argv: Sequence[str], default_config: Optional[str],
                      config_help: str) -> argparse.Namespace:
    """Parse a weights recipe's command line (``--config``, ``--set``, ``--log-level``).

    The console handler gets the ``--log-level``; the package loggers stay at DEBUG for the run
    folder's log files.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('--config', default=default_config, help=config_help)
    parser.add_argument('--set', dest='overrides', action='append', default=[],
                        metavar='SECTION.KEY=VALUE', help='override one option (repeatable)')
    parser.add_argument('--log-level', default='INFO', help='console log level')
    args = parser.parse_args(argv)
    logging.basicConfig(format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    for handler in logging.getLogger().handlers:
        handler.setLevel(args.log_level.upper())
    return args


def run_stage_command(description: str, config_type: type, run: Callable[..., Path],
                      argv: Optional[Sequence[str]]) -> Path:
    """Parse a stage's command line, load its config, call ``run(config, resume)``.

    Returns what ``run`` returns: the run folder.
    """
    args = parse_stage_args(description, argv)
    return run(load_config(config_type, args.config, args.overrides), args.resume)


def tqdm_progress(context: Optional[DistContext] = None):
    """Return a progress wrapper: a tqdm bar on rank 0 (torchrun ``RANK``), none elsewhere."""
    rank = context.rank if context is not None else int(os.environ.get('RANK', '0'))

    def wrap(iterable: Iterable, total: int) -> Iterable:
        return tqdm(iterable, total=total, disable=rank != 0, dynamic_ncols=True)
    return wrap
