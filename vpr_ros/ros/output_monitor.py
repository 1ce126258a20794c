"""Subscribes to every output of a ``localize`` node and records what arrives (demos, tests)."""

from functools import partial
import threading
from typing import Any, Callable, Optional

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
from rclpy.node import Node
from rclpy.qos import QoSProfile
from sensor_msgs.msg import Image, PointCloud2
from std_msgs.msg import Float64MultiArray
from visualization_msgs.msg import MarkerArray

from vpr_ros.ros.diagnostics import DIAGNOSTICS_TOPIC, STATUS_PREFIX, status_values
from vpr_ros.ros.matches import decode_matches

OUTPUT_TYPES = {'pose': PoseWithCovarianceStamped, 'loop_closure': Float64MultiArray,
                'matches': PointCloud2, 'markers': MarkerArray, 'debug_image': Image}
"""Output topic (relative to the node's name) -> message type."""


class OutputMonitor:
    """Records the messages of ``<node_name>/<output>`` topics and the node's /diagnostics.

    ``outputs`` selects which outputs to subscribe to (``debug_image`` is computed by the node only
    while someone subscribes, so leave it out unless wanted).
    """

    def __init__(self, node: Node, node_name: str = '/localize',
                 outputs: tuple = ('pose', 'loop_closure', 'matches', 'markers')) -> None:
        """Create the subscriptions on ``node`` (which the caller spins)."""
        self._lock = threading.Condition()
        self._node_name = node_name.rstrip('/')
        self._messages: dict[str, list] = {name: [] for name in outputs + ('diagnostics',)}
        qos = QoSProfile(depth=100)
        for name in outputs:
            node.create_subscription(OUTPUT_TYPES[name], f'{self._node_name}/{name}',
                                     partial(self._store, name), qos)
        node.create_subscription(DiagnosticArray, DIAGNOSTICS_TOPIC, self._on_diagnostics, qos)

    def _store(self, name: str, msg: Any) -> None:
        with self._lock:
            self._messages[name].append(msg)
            self._lock.notify_all()

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == f'{STATUS_PREFIX}{self._node_name}':
                self._store('diagnostics', status_values(status))

    def messages(self, name: str) -> list:
        """Return a copy of the messages received on output ``name`` so far."""
        with self._lock:
            return list(self._messages[name])

    def latest_diagnostics(self) -> dict:
        """Return the key/values of the newest /diagnostics status of the node ({} if none)."""
        with self._lock:
            return dict(self._messages['diagnostics'][-1]) if self._messages['diagnostics'] \
                else {}

    def wait_until(self, predicate: Callable[['OutputMonitor'], bool], timeout_s: float) -> bool:
        """Block until ``predicate(self)`` holds (re-checked on every message) or time runs out.

        The node passed at construction must be spun by another thread meanwhile.
        """
        with self._lock:
            return self._lock.wait_for(lambda: predicate(self), timeout=timeout_s)

    def summary_lines(self) -> list[str]:
        """Return one human-readable line per output topic describing what arrived."""
        lines = []
        for name in self._messages:
            received = self.messages(name)
            lines.append(f'{self._topic(name)}: {len(received)} message(s)'
                         + _describe(name, received[-1] if received else None))
        return lines

    def _topic(self, name: str) -> str:
        return DIAGNOSTICS_TOPIC if name == 'diagnostics' else f'{self._node_name}/{name}'


def _describe(name: str, msg: Optional[Any]) -> str:
    if msg is None:
        return ''
    if name == 'matches':
        decoded = decode_matches(msg)
        best = decoded.candidates[0] if decoded.candidates else None
        return ('' if best is None else f'; last: {len(decoded.candidates)} candidates, best map '
                f'id {best.map_id} p={best.probability:.3f}, accepted={decoded.accepted}')
    if name == 'pose':
        p = msg.pose.pose.position
        return f'; last: ({p.x:.2f}, {p.y:.2f}, {p.z:.2f}) in {msg.header.frame_id!r}'
    if name == 'loop_closure':
        return f'; last: [{msg.data[0]:.3f}, {msg.data[1]:.3f}]'
    if name == 'markers':
        return f'; last: {len(msg.markers)} marker(s)'
    if name == 'debug_image':
        return f'; last: {msg.width}x{msg.height} {msg.encoding}'
    keys = ('processed', 'map_size', 'rejected', 'dropped_stale', 'latency_ms.total.mean')
    return '; last: ' + ', '.join(f'{k}={msg[k]}' for k in keys if k in msg)
