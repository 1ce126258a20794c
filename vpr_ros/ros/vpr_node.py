"""Shared base of the vpr_ros nodes: typed parameters, image input, rejections and /diagnostics."""

import threading
import time
from typing import Callable, Optional, Sequence

from diagnostic_msgs.msg import DiagnosticArray
import numpy as np
import rclpy
from rclpy.exceptions import ParameterException
from rclpy.executors import Executor, ExternalShutdownException
import rclpy.logging
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image

from vpr_ros.core.errors import VprError
from vpr_ros.ros.conversions import image_from_msg, ImageRejected
from vpr_ros.ros.diagnostics import (diagnostic_array, diagnostic_status, DIAGNOSTICS_TOPIC,
                                     NodeStatistics, STATUS_PREFIX)
from vpr_ros.ros.node_config import ParameterGroup
from vpr_ros.ros.parameters import NodeParameters

REJECTION_LOG_PERIOD_S = 5.0


def input_qos(reliability: str, depth: int) -> QoSProfile:
    """Return a keep-last, volatile QoS with ``reliability`` 'best_effort' or 'reliable'."""
    policy = (ReliabilityPolicy.BEST_EFFORT if reliability == 'best_effort'
              else ReliabilityPolicy.RELIABLE)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=policy,
                      durability=DurabilityPolicy.VOLATILE)


class VprNode(Node):
    """A node whose parameters come from config dataclasses and that reports /diagnostics.

    Subclasses implement :meth:`diagnostic_values` (extra key/values and an optional warning).
    """

    def __init__(self, name: str, groups: Sequence[ParameterGroup], counters: tuple = (),
                 **kwargs) -> None:
        """Declare the parameter ``groups`` and start the /diagnostics timer.

        ``counters`` name the statistics reported from the start, even while zero.
        """
        super().__init__(name, **kwargs)
        self.stats = NodeStatistics(counters)
        self._last_rejection_log: dict[str, float] = {}
        self.params = NodeParameters(self, groups, self.on_parameters_changed)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        self._diagnostics_timer = self.create_timer(
            self.params.config().diagnostics_period_s, self.publish_diagnostics)

    def on_parameters_changed(self, prefixes: set) -> None:
        """React to accepted run-time parameter changes of the groups in ``prefixes``."""

    def diagnostic_values(self) -> tuple[dict, Optional[str]]:
        """Return node-specific diagnostic values and a warning (None when all is well)."""
        return {}, None

    def subscribe_images(self, callback: Callable) -> None:
        """Subscribe ``callback`` to the Image or CompressedImage topic the parameters name."""
        config = self.params.config()
        qos = input_qos(config.reliability, config.queue_depth)
        if config.use_compressed:
            topic = config.image_topic.rstrip('/') + '/compressed'
            self.image_sub = self.create_subscription(CompressedImage, topic, callback, qos)
        else:
            self.image_sub = self.create_subscription(Image, config.image_topic, callback, qos)
        self.get_logger().info(f'reading images from {self.image_sub.topic_name} '
                               f'({config.reliability})')

    def reject(self, reason: str, detail: str) -> None:
        """Count an input rejected for ``reason`` and log it (at most every 5 s per reason)."""
        self.stats.reject(reason)
        now = time.monotonic()
        if now - self._last_rejection_log.get(reason, -1e9) >= REJECTION_LOG_PERIOD_S:
            self._last_rejection_log[reason] = now
            total = self.stats.rejections().get(reason, 0)
            self.get_logger().warning(f'rejected input ({reason}, {total} so far): {detail}')

    def decode_image(self, msg) -> Optional[np.ndarray]:
        """Return the RGB image of ``msg``, or None after rejecting a malformed message."""
        try:
            return image_from_msg(msg)
        except ImageRejected as exc:
            self.reject(exc.reason, str(exc))
            return None

    def publish_diagnostics(self) -> None:
        """Publish one DiagnosticArray with the statistics and the node-specific values."""
        extra, warning = self.diagnostic_values()
        values = {**self.stats.snapshot(), **extra}
        status = diagnostic_status(STATUS_PREFIX + self.get_fully_qualified_name(),
                                   str(extra.get('device', '')), values, warning)
        self._diagnostics_pub.publish(diagnostic_array(status, self.get_clock().now().to_msg()))


def spin_in_background(executor: Executor, name: Optional[str] = None) -> threading.Thread:
    """Spin ``executor`` on a daemon thread until its context shuts down; return the thread."""
    thread = threading.Thread(target=_spin_quietly, args=(executor,), name=name, daemon=True)
    thread.start()
    return thread


def _spin_quietly(executor: Executor) -> None:
    try:
        executor.spin()
    except ExternalShutdownException:
        pass


def run_node(factory: Callable[[], Node], name: str, args: Optional[list] = None) -> int:
    """Init rclpy, build the node, spin until shutdown and clean up; return the exit status.

    A node that cannot start (bad parameter, unreadable map or checkpoint) logs the reason and
    returns 1; Ctrl-C while starting returns 130.
    """
    rclpy.init(args=args)
    try:
        node = factory()
    except KeyboardInterrupt:
        rclpy.try_shutdown()
        return 130
    except (VprError, ParameterException, ValueError, RuntimeError) as exc:
        rclpy.logging.get_logger(name).fatal(f'cannot start: {exc}')
        rclpy.try_shutdown()
        return 1
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
