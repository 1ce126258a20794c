"""A small rosbag2 player that publishes camera frames (and poses) into live nodes.

Frames are read with :func:`vpr_ros.data.bag.read_frames` (any image encoding the core decodes) and
published as rgb8 ``sensor_msgs/Image`` (or JPEG ``CompressedImage``) with their original header
stamps, optionally preceded by a ``nav_msgs/Odometry`` with the frame's pose.

Two modes:

- **lock-step** (default): publish one frame, then wait until the node under test answers on
  ``wait_topic`` (a ``~/matches`` PointCloud2 whose header stamp equals the frame's), or until
  ``wait_timeout_s``. Deterministic, no dropped frames however slow the model is;
- **real time**: publish at the bag's pace divided by ``speed`` (``speed = 0``: as fast as
  possible). Measures latency and drops as a live camera would.

Command line (``vpr-bag-play``): ``python -m vpr_ros.ros.tools.bag_player BAG --image-topic
/camera/image_raw`` republishes the frames on the topics they were recorded on (like ``ros2 bag
play``), which is what ``localize`` listens on when launched with ``image_topic:=<same topic>``;
``--clock`` also publishes ``/clock`` from the frame stamps for nodes with ``use_sim_time``.
"""

import argparse
from dataclasses import dataclass
import itertools
import sys
import threading
import time
from typing import Iterable, Optional

from nav_msgs.msg import Odometry
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CompressedImage, Image, PointCloud2

from vpr_ros.config import option, validate
from vpr_ros.data.bag import read_frames
from vpr_ros.data.frame import Frame
from vpr_ros.errors import VprError
from vpr_ros.ros.conversions import (compressed_to_msg, image_to_msg, ns_to_stamp, pose_to_msg,
                                     stamp_to_ns)
from vpr_ros.ros.node_config import RELIABILITIES
from vpr_ros.ros.vpr_node import input_qos, spin_in_background

NS_PER_S = 1e9


@dataclass(frozen=True)
class PlayerConfig:
    """Where and how the player publishes."""

    image_topic: str = option('image', 'topic the images are published on')
    pose_topic: str = option('', 'nav_msgs/Odometry topic for the frame poses ("" = none)')
    compressed: bool = option(False, 'publish JPEG CompressedImage on <image_topic>/compressed')
    jpeg_quality: int = option(90, 'JPEG quality when compressed', (1, 100))
    frame_id: str = option('camera', 'header frame_id of the images (child frame of the poses)')
    reliability: str = option('reliable', 'publisher reliability', choices=RELIABILITIES)
    lock_step: bool = option(True, 'wait for the answer on wait_topic after every frame')
    wait_topic: str = option('localize/matches', 'PointCloud2 topic acknowledging a frame')
    wait_timeout_s: float = option(10.0, 'lock-step wait per frame in seconds', (0.01, 3600.0))
    speed: float = option(1.0, 'real-time mode: playback speed factor (0 = unthrottled)',
                          (0.0, 1000.0))
    discovery_timeout_s: float = option(15.0, 'wait this long for subscribers before playing',
                                        (0.0, 3600.0))
    publish_clock: bool = option(False, 'publish /clock from the frame stamps (use_sim_time)')

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)


@dataclass
class PlaybackReport:
    """What a :meth:`BagPlayer.play` call did."""

    published: int = 0
    acknowledged: int = 0
    timed_out: int = 0
    wall_s: float = 0.0


class BagPlayer:
    """Publishes frames from its own node, spun on a background thread."""

    def __init__(self, config: PlayerConfig = PlayerConfig(), context: Optional[Context] = None,
                 node_name: str = 'vpr_bag_player') -> None:
        """Create the node, its publishers and (lock-step) the acknowledgement subscription."""
        self.config = config
        self.node = Node(node_name, context=context)
        qos = input_qos(config.reliability, 10)
        if config.compressed:
            topic = config.image_topic.rstrip('/') + '/compressed'
            self._image_pub = self.node.create_publisher(CompressedImage, topic, qos)
        else:
            self._image_pub = self.node.create_publisher(Image, config.image_topic, qos)
        self._pose_pub = (self.node.create_publisher(Odometry, config.pose_topic, qos)
                          if config.pose_topic else None)
        self._clock_pub = (self.node.create_publisher(Clock, '/clock', 10)
                           if config.publish_clock else None)
        self._acks: set = set()
        self._ack_cond = threading.Condition()
        self._ack_sub = None
        if config.lock_step:
            self._ack_sub = self.node.create_subscription(PointCloud2, config.wait_topic,
                                                          self._on_ack, 100)
        self._executor = SingleThreadedExecutor(context=context)
        self._executor.add_node(self.node)
        self._spinner = spin_in_background(self._executor, name='vpr_bag_player')

    def _on_ack(self, msg: PointCloud2) -> None:
        with self._ack_cond:
            self._acks.add(stamp_to_ns(msg.header.stamp))
            self._ack_cond.notify_all()

    def wait_for_peers(self) -> bool:
        """Wait until the images have a subscriber (and, lock-step, the answers a publisher).

        With ``publish_clock``, /clock needs a subscriber too (a node with ``use_sim_time``).
        """
        deadline = time.monotonic() + self.config.discovery_timeout_s
        while time.monotonic() < deadline:
            ready = self._image_pub.get_subscription_count() > 0
            if self._clock_pub is not None:
                ready = ready and self._clock_pub.get_subscription_count() > 0
            if self._ack_sub is not None:
                ready = ready and self.node.count_publishers(self._ack_sub.topic_name) > 0
            if ready:
                return True
            time.sleep(0.05)
        return False

    def play(self, frames: Iterable[Frame]) -> PlaybackReport:
        """Publish ``frames`` in order, lock-step or in real time; return the counts."""
        report = PlaybackReport()
        start = time.monotonic()
        first_stamp: Optional[int] = None
        for frame in frames:
            first_stamp = frame.stamp_ns if first_stamp is None else first_stamp
            if not self.config.lock_step:
                self._sleep_until(start, (frame.stamp_ns - first_stamp) / NS_PER_S)
            self.publish(frame)
            report.published += 1
            if self.config.lock_step:
                acked = self._wait_ack(frame.stamp_ns)
                report.acknowledged += int(acked)
                report.timed_out += int(not acked)
        report.wall_s = time.monotonic() - start
        return report

    def _sleep_until(self, start: float, bag_offset_s: float) -> None:
        if self.config.speed > 0:
            delay = start + bag_offset_s / self.config.speed - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def publish(self, frame: Frame) -> None:
        """Publish one frame now: clock, pose, then image, all with the frame's stamp."""
        stamp = ns_to_stamp(frame.stamp_ns)
        if self._clock_pub is not None:
            self._clock_pub.publish(Clock(clock=stamp))
        if self._pose_pub is not None and frame.pose is not None:
            odom = Odometry(child_frame_id=self.config.frame_id)
            odom.header.stamp, odom.header.frame_id = stamp, frame.pose.frame_id
            odom.pose.pose = pose_to_msg(frame.pose)
            self._pose_pub.publish(odom)
        if self.config.compressed:
            msg = compressed_to_msg(frame.image, frame.stamp_ns, self.config.frame_id,
                                    quality=self.config.jpeg_quality)
        else:
            msg = image_to_msg(frame.image, frame.stamp_ns, self.config.frame_id)
        self._image_pub.publish(msg)

    def _wait_ack(self, stamp_ns: int) -> bool:
        with self._ack_cond:
            found = self._ack_cond.wait_for(lambda: stamp_ns in self._acks,
                                            timeout=self.config.wait_timeout_s)
            self._acks.discard(stamp_ns)
            return found

    def close(self) -> None:
        """Stop spinning and destroy the node."""
        self._executor.shutdown(timeout_sec=2.0)
        self._spinner.join(timeout=2.0)
        self.node.destroy_node()


def _parse(argv: list) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='vpr-bag-play', description=__doc__.split('\n')[0],
        epilog='example: vpr-bag-play run2_bag --image-topic /camera/image_raw '
               '(feeds: localize --ros-args -p image_topic:=/camera/image_raw)')
    parser.add_argument('bag', help='rosbag2 directory or .mcap/.db3 file')
    parser.add_argument('--image-topic', default='camera/image_raw',
                        help='image topic in the bag; default: %(default)s')
    parser.add_argument('--pose-topic', default=None,
                        help='pose topic in the bag (published as Odometry); default: none')
    parser.add_argument('--out-image', default=None, help='published image topic; default: '
                        'the bag topic (--image-topic), as ros2 bag play does')
    parser.add_argument('--out-pose', default=None, help='published pose topic (with '
                        '--pose-topic); default: the bag topic (--pose-topic)')
    parser.add_argument('--compressed', action='store_true', help='publish JPEG frames on '
                        '<out-image>/compressed')
    parser.add_argument('--clock', action='store_true', help='publish /clock '
                        '(rosgraph_msgs/Clock) from the frame stamps, for nodes run with '
                        'use_sim_time:=true')
    parser.add_argument('--real-time', action='store_true', help='publish at the bag pace '
                        'instead of lock-step')
    parser.add_argument('--speed', type=float, default=1.0, help='real-time speed factor '
                        '(0 = unthrottled); default: %(default)s')
    parser.add_argument('--wait-topic', default='localize/matches', help='lock-step answer '
                        'topic; default: %(default)s')
    parser.add_argument('--timeout', type=float, default=10.0, help='lock-step wait per frame '
                        'in seconds; default: %(default)s')
    return parser.parse_args(argv)


def main(args: Optional[list] = None) -> int:
    """Play a bag into the running nodes and print what was published and acknowledged."""
    argv = sys.argv[1:] if args is None else list(args)
    ros_args = argv[argv.index('--ros-args'):] if '--ros-args' in argv else []
    options = _parse(argv[:len(argv) - len(ros_args)])
    pose_topic = (options.out_pose or options.pose_topic) if options.pose_topic else ''
    config = PlayerConfig(image_topic=options.out_image or options.image_topic,
                          pose_topic=pose_topic, compressed=options.compressed,
                          lock_step=not options.real_time, wait_topic=options.wait_topic,
                          wait_timeout_s=options.timeout, speed=options.speed,
                          publish_clock=options.clock)
    frames = read_frames(options.bag, options.image_topic, options.pose_topic)
    try:
        first = next(frames, None)     # a missing bag or topic fails here, before any waiting
    except VprError as exc:
        print(f'vpr-bag-play: {exc}', file=sys.stderr)
        return 1
    rclpy.init(args=['bag_player'] + ros_args)
    player = BagPlayer(config)
    try:
        if not player.wait_for_peers():
            print('warning: no subscriber (images; /clock with --clock) or no answering node '
                  'found; playing anyway')
        report = player.play(itertools.chain([first] if first is not None else [], frames))
        print(f'published {report.published} frames in {report.wall_s:.1f} s'
              + (f', {report.acknowledged} answered, {report.timed_out} timed out'
                 if config.lock_step else ''))
    except VprError as exc:
        print(f'vpr-bag-play: {exc}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        player.close()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
