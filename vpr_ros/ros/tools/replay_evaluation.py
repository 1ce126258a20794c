"""Live rosbag replay evaluation: the query bag played into the running ``localize`` node.

The offline mode (``vpr-eval --dataset-format bags``, :mod:`vpr_ros.evaluation.runner`) runs the
core pipeline on the frames of a map bag and a query bag. This live mode starts the real
``localize`` node in this process (its own rclpy context, the map loaded from disk), plays the
query frames into it with :class:`~vpr_ros.ros.tools.bag_player.BagPlayer`, records what the node
publishes (``~/matches`` with every ranked candidate, ``~/pose``, ``~/loop_closure``), and scores
the recorded rankings with the offline mode's own :func:`~vpr_ros.evaluation.runner.score_matches`
against the ground truth from the bags' poses. The report is :func:`write_report`'s, as for
``vpr-eval``.

- **lock-step** (default): publish one frame, wait for its ``~/matches``, publish the next. Every
  query's ranking equals the offline mode's, frame for frame (same images, map and model).
- **real time**: frames at the bag's pace times ``speed`` (0 = as fast as possible). The node
  always works on the newest frame; frames it dropped (or never received) get no answer, count
  as misses, and the report says how many (``frames_dropped``).

Candidates are mapped back to map-bag frames by the map stamp carried in ``~/matches`` (a map
built from the map bag stores each frame's stamp). The latency in the report is ``end_to_end``:
publishing an image to the arrival of its ``~/matches``. Query frames without a pose in the bag
have no ground truth and are not played.

The replay itself (the node, the recorder and the timed player) is
:mod:`vpr_ros.ros.tools.live_replay`; this module scores it and holds the command line.

Command line: ``vpr-eval-live --map-bag MAP_BAG --query-bag QUERY_BAG --out report/``.
"""

import argparse
from dataclasses import dataclass
import logging
import math
from pathlib import Path
import sys
from typing import Optional, Sequence

import numpy as np
from rclpy.context import Context

from vpr_ros.cli.arguments import config_from_args, run_command
from vpr_ros.cli.vpr_eval import (add_evaluation_arguments, bag_pair_options, print_recalls,
                                  progress_bar)
from vpr_ros.config import LocalizerConfig
from vpr_ros.data.benchmarks.dataset import DEFAULT_RADIUS_M, EvalDataset
from vpr_ros.data.benchmarks.traversals import read_bag_pair
from vpr_ros.evaluation.metrics import DEFAULT_RECALL_VALUES
from vpr_ros.evaluation.report import write_report
from vpr_ros.evaluation.result import EvalResult
from vpr_ros.evaluation.runner import build_map, make_localizer, Progress, score_matches
from vpr_ros.models.loader import load_model
from vpr_ros.models.vpr_model import VprModel
from vpr_ros.ros.tools.live_replay import NodeSetup, replay_frames, ReplayConfig, ReplayRecording

LOGGER = logging.getLogger(__name__)

STAMP_TOLERANCE_NS = 2000
"""``~/loop_closure`` carries float seconds: stamps are matched within 2 microseconds."""


@dataclass
class LiveEvaluation:
    """The scored live replay: the offline-format result and the raw recording."""

    result: EvalResult
    recording: ReplayRecording


# ------------------------------------------------------------------------------- scoring

def map_ids_for(dataset: EvalDataset, recording: ReplayRecording) -> np.ndarray:
    """Return ``map_ids[j]``: the map id of map-bag frame ``j``, matched by stamp.

    Frames no candidate referred to get a distinct negative id (never matched). Candidates whose
    stamp is no map-bag frame are logged; ranked, they count as wrong.
    """
    by_stamp = {int(stamp): int(map_id) for map_id, stamp in recording.candidate_stamps.items()}
    stamps = dataset.database_stamps_ns()
    ids = np.array([by_stamp.get(int(s), -1 - j) for j, s in enumerate(stamps)], dtype=np.int64)
    strangers = set(by_stamp) - {int(s) for s in stamps}
    if strangers:
        LOGGER.warning('%d ranked map places have a stamp that is no frame of the map bag; '
                       'they count as wrong matches', len(strangers))
    return ids


def _nearest(stamps: np.ndarray, seconds: float) -> int:
    if stamps.size == 0:
        return -1
    ns = round(seconds * 1e9)
    index = int(np.argmin(np.abs(stamps - ns)))
    return index if abs(int(stamps[index]) - ns) <= STAMP_TOLERANCE_NS else -1


def loop_closure_checks(recording: ReplayRecording, dataset: EvalDataset) -> dict:
    """Return how many ``~/loop_closure`` messages arrived and how many pair a true match."""
    queries, database = dataset.query_stamps_ns(), dataset.database_stamps_ns()
    correct = 0
    for query_s, map_s in recording.loop_closures:
        q, j = _nearest(queries, query_s), _nearest(database, map_s)
        correct += int(q >= 0 and j >= 0 and bool(np.isin(j, dataset.positives[q])))
    return {'loop_closure_messages': len(recording.loop_closures),
            'loop_closures_correct': correct}


def pose_checks(recording: ReplayRecording, dataset: EvalDataset) -> dict:
    """Return the ``~/pose`` count and its position error against the query's true pose."""
    index = {int(s): q for q, s in enumerate(dataset.query_stamps_ns())}
    errors = []
    for stamp, pose in recording.poses:
        truth = getattr(dataset.queries[index[stamp]], 'pose', None) if stamp in index else None
        if truth is not None:
            errors.append(float(np.linalg.norm(np.subtract(pose.position, truth.position))))
    radius = float(dataset.info.get('positive_radius_m', DEFAULT_RADIUS_M))
    has = bool(errors)
    return {'pose_messages': len(recording.poses),
            'pose_error_m_median': float(np.median(errors)) if has else math.nan,
            'pose_error_m_p90': float(np.percentile(errors, 90)) if has else math.nan,
            'poses_within_radius': int(sum(e <= radius for e in errors))}


def replay_counts(recording: ReplayRecording) -> dict:
    """Return the playback counts reported with the result (``frames_dropped`` among them)."""
    playback, counters = recording.playback, recording.node_counters
    answered = len(recording.answered_stamps)
    return {'frames_published': playback.published, 'frames_answered': answered,
            'frames_dropped': playback.published - answered,
            'lock_step_timeouts': playback.timed_out,
            'node_received': counters.get('received', 0),
            'node_dropped_stale': counters.get('dropped_stale', 0),
            'node_rejected': counters.get('rejected', 0),
            'matches_accepted': sum(bool(m.accepted) for m in recording.matches),
            'playback_wall_s': round(playback.wall_s, 3)}


def score_recording(recording: ReplayRecording, dataset: EvalDataset,
                    recall_values: Sequence[int] = DEFAULT_RECALL_VALUES,
                    settings: Optional[dict] = None) -> EvalResult:
    """Score a recording with :func:`score_matches`, as the offline mode scores its results.

    Queries without an answer count as misses. The settings hold the node's configuration, the
    playback counts, and the checks of ``~/pose`` and ``~/loop_closure`` against the truth.
    """
    details = {**recording.settings, **(settings or {}), **replay_counts(recording),
               **pose_checks(recording, dataset), **loop_closure_checks(recording, dataset)}
    threshold = recording.settings.get('accept_probability')
    return score_matches(recording.matches, dataset, map_ids_for(dataset, recording),
                         recall_values, threshold, details)


def evaluate_live(dataset: EvalDataset, setup: NodeSetup, replay: ReplayConfig = ReplayConfig(),
                  recall_values: Sequence[int] = DEFAULT_RECALL_VALUES,
                  progress: Optional[Progress] = None, context: Optional[Context] = None,
                  domain_id: Optional[int] = None) -> LiveEvaluation:
    """Play the dataset's query frames into the live node and score the answers.

    ``dataset`` is a bag pair (:func:`~vpr_ros.data.benchmarks.traversals.read_bag_pair`); the
    map at ``setup.map_path`` must be built from its map bag. See :func:`replay_frames` for
    ``context`` and ``domain_id``.
    """
    frames = dataset.query_frames()
    if progress is not None:
        frames = progress(frames, 'live queries', dataset.num_queries)
    recording = replay_frames(frames, setup, replay, context, domain_id)
    result = score_recording(recording, dataset, recall_values,
                             {'replay': replay.describe(),
                              'image_reliability': replay.node_reliability})
    return LiveEvaluation(result, recording)


def build_map_dir(model: VprModel, dataset: EvalDataset, config: LocalizerConfig,
                  map_dir: Path, progress: Optional[Progress] = None) -> Path:
    """Build the offline mode's map (exact, flat) from the map-bag frames and save it."""
    localizer = make_localizer(model, config.top_k, config.rerank, config)
    build_map(localizer, dataset, progress)
    return localizer.database.save(map_dir)


# ---------------------------------------------------------------------------------- CLI

CLI_EXAMPLES = """examples:
  vpr-eval-live --map-bag run1 --query-bag run2 --image-topic /camera/image_raw \\
                --pose-topic /odom --out report/
  vpr-eval-live --map-bag run1 --query-bag run2 --map ~/maps/run1 --real-time --speed 2 \\
                --checkpoint model.safetensors --out report_rt/
"""


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``vpr-eval-live``."""
    parser = argparse.ArgumentParser(prog='vpr-eval-live', description=__doc__.split('\n')[0],
                                     epilog=CLI_EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--map-bag', required=True, help='the map traversal (rosbag2 bag)')
    parser.add_argument('--query-bag', required=True, help='the query traversal, played live')
    parser.add_argument('--map', default=None, help='map directory built from the map bag '
                        '(default: build one with the core into <out>/map)')
    _add_replay_options(parser)
    add_evaluation_arguments(parser)
    return parser


def _add_replay_options(parser: argparse.ArgumentParser) -> None:
    defaults = ReplayConfig()
    group = parser.add_argument_group('replay')
    group.add_argument('--real-time', action='store_true',
                       help='play at the bag pace times --speed instead of lock-step')
    group.add_argument('--speed', type=float, default=defaults.speed,
                       help='real-time speed factor, 0 = as fast as possible '
                            '(default: %(default)s)')
    group.add_argument('--timeout', type=float, default=defaults.wait_timeout_s,
                       help='lock-step wait per frame in seconds (default: %(default)s)')
    group.add_argument('--namespace', default=defaults.namespace,
                       help='namespace of the node under test (default: %(default)s)')


def _replay_config(args: argparse.Namespace) -> ReplayConfig:
    return ReplayConfig(lock_step=not args.real_time, speed=args.speed,
                        wait_timeout_s=args.timeout, namespace=args.namespace)


def run(args: argparse.Namespace) -> int:
    """Read the bags, build or open the map, replay live, write the report, print the line."""
    dataset = read_bag_pair(args.map_bag, args.query_bag, **bag_pair_options(args))
    print(f'{dataset.name}: {dataset.num_queries} queries, {dataset.num_database} map frames, '
          f'{dataset.queries_without_positives} queries without a positive')
    config, replay = config_from_args(LocalizerConfig, args), _replay_config(args)
    model = load_model(args.checkpoint, args.model)
    map_path = args.map or build_map_dir(model, dataset, config, Path(args.out) / 'map',
                                         progress_bar)
    setup = NodeSetup(str(map_path), config, model)
    live = evaluate_live(dataset, setup, replay, tuple(args.recall_values), progress_bar)
    write_report(live.result, args.out)
    _print_summary(live)
    return 0


def _print_summary(live: LiveEvaluation) -> None:
    counts = replay_counts(live.recording)
    print(f'{live.result.settings["replay"]}: published {counts["frames_published"]} frames, '
          f'{counts["frames_answered"]} answered, {counts["frames_dropped"]} dropped '
          f'(counted as misses)')
    print_recalls(live.result)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``vpr-eval-live``; returns the process exit status."""
    return run_command(build_parser(), run, argv)


if __name__ == '__main__':
    sys.exit(main())
