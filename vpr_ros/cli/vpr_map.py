"""``vpr-map``: build a map database from an image folder or a rosbag2 bag, or describe one."""

import argparse
import json
import sys
import time
from typing import Optional, Sequence

from tqdm import tqdm

from vpr_ros.cli.arguments import (add_config_arguments, add_input_arguments, add_model_arguments,
                                   config_from_args, run_command)
from vpr_ros.config import IndexConfig, LocalizerConfig
from vpr_ros.data.frame_source import open_frames
from vpr_ros.localization.localizer import load_localizer
from vpr_ros.localization.mapping import add_frames
from vpr_ros.map.database import MapDatabase


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``vpr-map``."""
    parser = argparse.ArgumentParser(prog='vpr-map', description=__doc__)
    parser.add_argument('--verbose', action='store_true', help='log progress details')
    commands = parser.add_subparsers(dest='command', required=True,
                                     help='build a map, or print a map summary')
    build = commands.add_parser('build', help='build (or extend) a map from images')
    build.add_argument('input', help='image folder, rosbag2 directory, or .mcap/.db3 file')
    build.add_argument('--out', required=True, help='map directory to write')
    build.add_argument('--extend', action='store_true',
                       help='add to an existing map at --out instead of refusing to overwrite it')
    add_input_arguments(build)
    add_model_arguments(build)
    add_config_arguments(build, IndexConfig, prefix='index_')
    add_config_arguments(build, LocalizerConfig)
    info = commands.add_parser('info', help='print a map summary as JSON')
    info.add_argument('map', help='map directory')
    return parser


def build(args: argparse.Namespace) -> int:
    """Run ``vpr-map build``."""
    from pathlib import Path
    if Path(args.out).exists() and not args.extend:
        print(f'error: {args.out} exists; pass --extend to add to it', file=sys.stderr)
        return 2
    localizer = load_localizer(args.out, args.checkpoint, args.model,
                               config_from_args(LocalizerConfig, args),
                               config_from_args(IndexConfig, args, prefix='index_'))
    frames = open_frames(args.input, args.image_topic, args.pose_topic, args.poses_csv)
    start = time.perf_counter()
    count = len(add_frames(localizer, tqdm(frames, desc='map images', unit='img')))
    localizer.database.save(args.out)
    seconds = time.perf_counter() - start
    print(f'map {args.out}: added {count} images ({count / max(seconds, 1e-9):.1f} img/s), '
          f'{len(localizer.database)} places, model {localizer.model.spec.architecture}')
    return 0


def info(args: argparse.Namespace) -> int:
    """Run ``vpr-map info``."""
    database = MapDatabase.load(args.map, verify_tokens=False)
    print(json.dumps(summarize(database), indent=2))
    return 0


def summarize(database: MapDatabase) -> dict:
    """Return a JSON-ready summary of a map: size, model, index and pose coverage."""
    entries = database.entries
    stamps = [e.stamp_ns for e in entries]
    return {
        'places': len(database),
        'model': database.spec.architecture,
        'model_digest': database.spec.digest(),
        'descriptor_dim': database.spec.descriptor_dim,
        'index': database.index_type,
        'tokens': list(database.token_shape) if database.has_tokens else None,
        'with_pose': sum(e.pose is not None for e in entries),
        'first_stamp_ns': min(stamps) if stamps else None,
        'last_stamp_ns': max(stamps) if stamps else None,
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``vpr-map``; returns the process exit status."""
    return run_command(build_parser(),
                       lambda args: build(args) if args.command == 'build' else info(args), argv)


if __name__ == '__main__':
    sys.exit(main())
