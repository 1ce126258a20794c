"""``vpr-demo-live``: the nodes on the embedded default sample, through real ROS 2 topics.

Writes the procedural sample (two traversals as rosbag2 bags), builds the map from the first one
with the core, starts the ``localize`` node, plays the second bag into it with the bag player
(lock-step by default) and prints what arrived on each output topic, with the share of query
frames whose best match lies within ``--radius-m`` of the true position.
"""

import argparse
from pathlib import Path
import shutil
import sys
import time
from typing import Iterator, Optional, Sequence

import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter

from vpr_ros.config import LocalizerConfig
from vpr_ros.data.bag import read_frames
from vpr_ros.data.frame import Frame
from vpr_ros.localization.localizer import Localizer
from vpr_ros.localization.mapping import add_frames
from vpr_ros.map.database import MapDatabase
from vpr_ros.models.loader import load_model
from vpr_ros.ros.localize_node import LocalizeNode
from vpr_ros.ros.matches import decode_matches
from vpr_ros.ros.output_monitor import OutputMonitor
from vpr_ros.ros.tools.bag_player import BagPlayer, PlayerConfig
from vpr_ros.ros.vpr_node import spin_in_background

OUTPUTS = ('pose', 'loop_closure', 'matches', 'markers', 'debug_image')


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``vpr-demo-live``."""
    parser = argparse.ArgumentParser(prog='vpr-demo-live', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='demo_live_output',
                        help='folder for the sample bags and the map; default: %(default)s')
    parser.add_argument('--checkpoint', default=None,
                        help='model checkpoint; default: the shipped pairvpr_lite weights')
    parser.add_argument('--real-time', action='store_true',
                        help='play at the bag pace (frames may be dropped) instead of lock-step')
    parser.add_argument('--speed', type=float, default=1.0,
                        help='real-time playback speed factor; default: %(default)s')
    parser.add_argument('--radius-m', type=float, default=5.0,
                        help='a best match within this distance is correct; default: %(default)s')
    return parser


def build_map(paths, checkpoint: Optional[str], map_dir: Path) -> Localizer:
    """Describe every frame of the map bag, save the map, and return the localizer."""
    model = load_model(checkpoint)
    database = MapDatabase(model.spec, store_tokens=model.spec.has_pair_classifier)
    localizer = Localizer(model, database, LocalizerConfig())
    start = time.perf_counter()
    add_frames(localizer, read_frames(paths.map_bag, paths.image_topic, paths.pose_topic))
    database.save(map_dir)
    print(f'map: {len(database)} places from {paths.map_bag} with {model.spec.architecture} '
          f'({time.perf_counter() - start:.1f} s) -> {map_dir}')
    return localizer


def _recording(frames: Iterator[Frame], truth: dict) -> Iterator[Frame]:
    for frame in frames:
        truth[frame.stamp_ns] = frame.pose
        yield frame


def accuracy_lines(monitor: OutputMonitor, truth: dict, radius_m: float) -> list[str]:
    """Return how many best matches (and accepted ones) lie within ``radius_m`` of the truth."""
    decoded = [decode_matches(m) for m in monitor.messages('matches')]
    scored = [(d, truth.get(d.stamp_ns)) for d in decoded if d.candidates]
    scored = [(d, t) for d, t in scored if t is not None and d.candidates[0].pose is not None]
    correct = [np.linalg.norm(np.subtract(d.candidates[0].pose.position[:2], t.position[:2]))
               <= radius_m for d, t in scored]
    accepted = [ok for (d, _), ok in zip(scored, correct) if d.accepted]
    return [f'best match within {radius_m:g} m: {sum(correct)}/{len(correct)} query frames',
            f'accepted matches: {len(accepted)}, of which correct: {sum(accepted)}']


def run_live(localizer: Localizer, paths, map_dir: Path, args: argparse.Namespace) -> int:
    """Start the node and a monitor, play the query bag into it, print what arrived."""
    context = Context()
    rclpy.init(context=context)
    executor = MultiThreadedExecutor(context=context)
    node = LocalizeNode(localizer, context=context,
                        parameter_overrides=[Parameter('map_path', value=str(map_dir))])
    probe = Node('vpr_demo_monitor', context=context)
    monitor = OutputMonitor(probe, '/localize', outputs=OUTPUTS)
    for each in (node, probe):
        executor.add_node(each)
    spin_in_background(executor)
    player = BagPlayer(PlayerConfig(image_topic='image', lock_step=not args.real_time,
                                    wait_topic='/localize/matches', speed=args.speed),
                       context=context)
    truth: dict = {}
    try:
        player.wait_for_peers()
        report = player.play(_recording(read_frames(paths.query_bag, paths.image_topic,
                                                    paths.pose_topic), truth))
        time.sleep(2.0 * node.params.config().diagnostics_period_s)
        print(f'played {report.published} query frames in {report.wall_s:.1f} s'
              + (f' ({report.timed_out} unanswered)' if not args.real_time else ''))
        for line in monitor.summary_lines() + accuracy_lines(monitor, truth, args.radius_m):
            print('  ' + line)
    finally:
        player.close()
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
        probe.destroy_node()
        rclpy.try_shutdown(context=context)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the live demo; return the process exit code."""
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from vpr_ros.sample.renderer import write_sample   # needed only for the full demo
    if (out / 'sample').exists():
        shutil.rmtree(out / 'sample')   # our own output of an earlier run
    paths = write_sample(out / 'sample')
    print(f'sample: {paths.map_bag} (map), {paths.query_bag} (query), topic {paths.image_topic}')
    localizer = build_map(paths, args.checkpoint, out / 'map')
    return run_live(localizer, paths, out / 'map', args)


if __name__ == '__main__':
    sys.exit(main())
