"""``vpr-localize``: localize every image of a folder or bag against a map; write CSV or JSON."""

import argparse
import csv
import io
import json
from pathlib import Path
import sys
from typing import Optional, Sequence

from tqdm import tqdm

from vpr_ros.atomic_file import write_text_atomic
from vpr_ros.cli.arguments import (add_config_arguments, add_input_arguments, add_model_arguments,
                                   config_from_args, run_command)
from vpr_ros.config import LocalizerConfig
from vpr_ros.data.frame import Frame
from vpr_ros.data.frame_source import batched, open_frames
from vpr_ros.errors import VprError
from vpr_ros.localization.localizer import load_localizer, LocalizationResult

CSV_FIELDS = ('query_index', 'query_stamp_ns', 'query_source', 'rank', 'map_id', 'map_stamp_ns',
              'global_similarity', 'pair_score', 'probability', 'accepted', 'map_x', 'map_y',
              'map_z')


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``vpr-localize``."""
    parser = argparse.ArgumentParser(prog='vpr-localize', description=__doc__)
    parser.add_argument('input', help='image folder, rosbag2 directory, or .mcap/.db3 file')
    parser.add_argument('--map', required=True, help='map directory built by vpr-map')
    parser.add_argument('--out', required=True, help='output file: .csv or .json')
    parser.add_argument('--candidates', type=int, default=5,
                        help='ranked candidates written per query (default: %(default)s)')
    parser.add_argument('--verbose', action='store_true', help='log progress details')
    add_input_arguments(parser)
    add_model_arguments(parser)
    add_config_arguments(parser, LocalizerConfig)
    return parser


def result_rows(index: int, frame: Frame, result: LocalizationResult,
                limit: int) -> list[dict]:
    """Flatten one result into CSV/JSON rows, best candidate first."""
    rows = []
    for rank, c in enumerate(result.candidates[:limit]):
        position = c.pose.position if c.pose is not None else (None, None, None)
        rows.append(dict(zip(CSV_FIELDS, (
            index, frame.stamp_ns, frame.source, rank, c.map_id, c.stamp_ns,
            round(c.global_similarity, 6), round(c.pair_score, 6), round(c.probability, 6),
            bool(result.accepted and rank == 0), *position))))
    return rows


def write_rows(rows: list[dict], out: Path) -> None:
    """Write ``rows`` atomically as CSV or JSON, chosen by the file suffix."""
    if out.suffix == '.json':
        write_text_atomic(out, json.dumps(rows, indent=1))
        return
    text = io.StringIO(newline='')
    writer = csv.DictWriter(text, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out, text.getvalue())


def localize(args: argparse.Namespace) -> int:
    """Localize every input frame against the map, write the rows and print a summary."""
    out = Path(args.out)
    if out.suffix not in ('.csv', '.json'):
        print(f'error: --out must end in .csv or .json, got {out}', file=sys.stderr)
        return 2
    if not Path(args.map).exists():
        raise VprError(f'map {args.map} does not exist (build it with vpr-map build)')
    localizer = load_localizer(args.map, args.checkpoint, args.model,
                               config_from_args(LocalizerConfig, args))
    frames = open_frames(args.input, args.image_topic, args.pose_topic, args.poses_csv)
    rows, index, accepted = [], 0, 0
    for batch in batched(tqdm(frames, desc='queries', unit='img'), args.batch_size):
        results = localizer.localize_batch([f.image for f in batch],
                                           [f.stamp_ns for f in batch])
        for frame, result in zip(batch, results):
            rows += result_rows(index, frame, result, args.candidates)
            accepted += result.accepted
            index += 1
    write_rows(rows, out)
    print(f'{index} queries, {accepted} accepted matches -> {out}')
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``vpr-localize``; returns the process exit status."""
    return run_command(build_parser(), localize, argv)


if __name__ == '__main__':
    sys.exit(main())
