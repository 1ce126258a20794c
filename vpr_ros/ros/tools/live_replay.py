"""The live replay: the ``localize`` node, a recorder and a timed player on one rclpy context.

:func:`replay_frames` starts the real ``localize`` node (the map loaded from disk), plays query
frames into it with :class:`~vpr_ros.ros.tools.bag_player.BagPlayer` (lock-step or real time,
:class:`ReplayConfig`) and returns what it published (:class:`ReplayRecording`): every
``~/matches`` with its arrival time, ``~/pose`` and ``~/loop_closure``.
:mod:`vpr_ros.ros.tools.replay_evaluation` scores the recording.
"""

from dataclasses import dataclass, field
import logging
import threading
import time
import typing
from typing import Iterable, Optional

from geometry_msgs.msg import PoseWithCovarianceStamped
import rclpy
from rclpy.context import Context
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Float64MultiArray

from vpr_ros.config import config_to_dict, LocalizerConfig, option, validate
from vpr_ros.data.frame import Frame
from vpr_ros.errors import VprError
from vpr_ros.evaluation.result import Match
from vpr_ros.evaluation.runner import match_from_result
from vpr_ros.localization.localizer import Candidate, LocalizationResult, Localizer
from vpr_ros.map.database import MapDatabase
from vpr_ros.models.vpr_model import VprModel
from vpr_ros.ros.conversions import pose_from_msg, PoseRejected, stamp_to_ns
from vpr_ros.ros.localize_node import LocalizeNode
from vpr_ros.ros.matches import decode_matches, Matches
from vpr_ros.ros.node_config import DEFAULT_MODEL, RELIABILITIES
from vpr_ros.ros.tools.bag_player import BagPlayer, PlaybackReport, PlayerConfig
from vpr_ros.ros.vpr_node import spin_in_background

LOGGER = logging.getLogger(__name__)

RECORD_DEPTH = 1000
POLL_S = 0.02
QUIET_S = 0.5
"""After playback, with frames unaccounted for, wait this long without news before giving up."""
NODE_COUNTERS = ('received', 'processed', 'dropped_stale', 'skipped_paused',
                 'skipped_keyframe_gate')


class ReplayError(VprError, RuntimeError):
    """The live replay could not run: the node and the recorder never connected, or similar."""


@dataclass(frozen=True)
class ReplayConfig:
    """How the query frames are played into the node and how long to wait for its answers."""

    lock_step: bool = option(True, 'wait for the ~/matches of each frame before the next one '
                             '(false: real time at the bag pace times speed)')
    speed: float = option(1.0, 'real-time playback speed factor (0 = as fast as possible)',
                          (0.0, 1000.0))
    wait_timeout_s: float = option(30.0, 'lock-step: wait this long for each answer',
                                   (0.01, 3600.0))
    settle_timeout_s: float = option(30.0, 'after playback: wait at most this long for the '
                                     'answers to frames the node still holds', (0.0, 3600.0))
    discovery_timeout_s: float = option(20.0, 'wait this long for the node, the player and '
                                        'the recorder to connect', (0.1, 3600.0))
    namespace: str = option('vpr_eval_live', 'ROS namespace of the node and topics under test')
    reliability: str = option('auto', 'image subscription reliability of the node; auto: '
                              'reliable in lock-step (no frame lost), best_effort in real time '
                              '(as for a camera)', choices=('auto',) + RELIABILITIES)

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)

    @property
    def node_reliability(self) -> str:
        """Return the reliability the node subscribes with (``auto`` resolved)."""
        if self.reliability != 'auto':
            return self.reliability
        return 'reliable' if self.lock_step else 'best_effort'

    def describe(self) -> str:
        """Return the mode for reports (``'live, lock-step'``, ``'live, real time x2'``...)."""
        if self.lock_step:
            return 'live, lock-step'
        pace = 'as fast as possible' if self.speed == 0 else f'x{self.speed:g}'
        return f'live, real time {pace}; unanswered frames count as misses'


@dataclass(frozen=True)
class NodeSetup:
    """The ``localize`` node under test: map, model and localizer configuration.

    Attributes:
        map_path: the map directory the node loads (``MapDatabase.load``).
        config: the localizer configuration, given to the node as ``localizer.*`` parameters.
        model: a model object to inject (the node then skips loading one); else the node loads
            ``checkpoint`` or the registry model ``model_name`` itself, as ``ros2 run`` does.
        checkpoint: safetensors checkpoint for the node to load when ``model`` is None.
        model_name: registry model for the node to build when neither is given.
        parameters: further node parameters (``rclpy.parameter.Parameter``).
    """

    map_path: str
    config: LocalizerConfig = LocalizerConfig()
    model: Optional[VprModel] = None
    checkpoint: str = ''
    model_name: str = DEFAULT_MODEL
    parameters: tuple = ()


@dataclass
class ReplayRecording:
    """What the node published during one replay, and the playback counts.

    ``matches`` holds one :class:`Match` per answered frame in arrival order (``timings_ms``
    has ``end_to_end``); ``candidate_stamps`` maps every map id seen to its map stamp;
    ``poses`` are ``(query stamp, pose)`` of ``~/pose``; ``loop_closures`` are the
    ``[query_stamp_s, map_stamp_s]`` of ``~/loop_closure``; ``node_counters`` the node's own
    counts; ``settings`` describe the node's model, map and configuration.
    """

    matches: list = field(default_factory=list)
    candidate_stamps: dict = field(default_factory=dict)
    poses: list = field(default_factory=list)
    loop_closures: list = field(default_factory=list)
    playback: PlaybackReport = field(default_factory=PlaybackReport)
    published_stamps: list = field(default_factory=list)
    node_counters: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    @property
    def answered_stamps(self) -> set:
        """Return the stamps of the published frames that got a ``~/matches`` answer."""
        return {m.query_stamp_ns for m in self.matches} & set(self.published_stamps)


# ------------------------------------------------------------------------------ the node

def _absolute(namespace: str, name: str) -> str:
    return '/' + '/'.join(p for p in (namespace.strip('/'), name.strip('/')) if p)


def _parameter_value(value: object, hint: object) -> object:
    return float(value) if hint is float else value


def node_parameters(setup: NodeSetup, replay: ReplayConfig) -> list:
    """Return the parameter overrides of the node under test (map, model, localizer, input)."""
    hints = typing.get_type_hints(LocalizerConfig)
    params = [Parameter(f'localizer.{k}', value=_parameter_value(v, hints[k]))
              for k, v in config_to_dict(setup.config).items()]
    params += [Parameter('map_path', value=str(setup.map_path)),
               Parameter('checkpoint', value=str(setup.checkpoint)),
               Parameter('model', value=setup.model_name),
               Parameter('image_topic', value='image'),
               Parameter('reliability', value=replay.node_reliability)]
    return params + list(setup.parameters)


def start_node(setup: NodeSetup, replay: ReplayConfig, context: Context) -> LocalizeNode:
    """Create the ``localize`` node in ``replay.namespace``; it loads the map from disk.

    With ``setup.model`` the model is injected (map checked against its spec); otherwise the
    node builds model and map from its parameters.
    """
    localizer = None
    if setup.model is not None:
        database = MapDatabase.load(setup.map_path, expected_spec=setup.model.spec)
        localizer = Localizer(setup.model, database, setup.config)
    return LocalizeNode(localizer, context=context, namespace=_absolute(replay.namespace, ''),
                        parameter_overrides=node_parameters(setup, replay))


def node_settings(node: LocalizeNode) -> dict:
    """Return the node's model, map and localizer settings for the report."""
    localizer = node.localizer
    spec, config = localizer.model.spec, localizer.config
    return {'model': spec.architecture, 'model_digest': spec.digest(),
            'input_size': list(spec.input_size), 'descriptor_dim': spec.descriptor_dim,
            'top_k': config.top_k, 'rerank': localizer.can_rerank,
            'device': str(localizer.device), 'precision': config.precision,
            'index': localizer.database.index_type, 'map_size': len(localizer.database),
            'map_path': node.params.config().map_path,
            'accept_probability': config.accept_probability}


def _accounted(node: LocalizeNode) -> int:
    counted = sum(node.stats.counter(name) for name in NODE_COUNTERS[1:])
    return counted + sum(node.stats.rejections().values())


def node_counters(node: LocalizeNode) -> dict:
    """Return the node's input counters and its rejections (total)."""
    counters = {name: node.stats.counter(name) for name in NODE_COUNTERS}
    counters['rejected'] = sum(node.stats.rejections().values())
    return counters


# -------------------------------------------------------------------------- the recorder

class OutputRecorder:
    """Records ``~/matches`` (decoded, with arrival times), ``~/pose`` and ``~/loop_closure``."""

    def __init__(self, node: Node, node_name: str) -> None:
        """Subscribe on ``node`` (spun by the caller) to the outputs of ``node_name``."""
        self._lock = threading.Lock()
        self._matches: list = []
        self._poses: list = []
        self._loops: list = []
        self._accepted = 0
        self._accepted_with_pose = 0
        qos = QoSProfile(depth=RECORD_DEPTH)
        self.subscriptions = [
            node.create_subscription(PointCloud2, f'{node_name}/matches', self._on_matches, qos),
            node.create_subscription(PoseWithCovarianceStamped, f'{node_name}/pose',
                                     self._on_pose, qos),
            node.create_subscription(Float64MultiArray, f'{node_name}/loop_closure',
                                     self._on_loop, qos)]

    def _on_matches(self, msg: PointCloud2) -> None:
        arrived = time.perf_counter()
        decoded = decode_matches(msg)
        accepted = decoded.accepted and bool(decoded.candidates)
        with self._lock:
            self._matches.append((decoded, arrived))
            self._accepted += int(accepted)
            self._accepted_with_pose += int(accepted and decoded.candidates[0].pose is not None)

    def _on_pose(self, msg: PoseWithCovarianceStamped) -> None:
        try:
            pose = pose_from_msg(msg.pose.pose, msg.header.frame_id)
        except PoseRejected as exc:
            LOGGER.warning('unusable ~/pose message ignored: %s', exc)
            return
        with self._lock:
            self._poses.append((stamp_to_ns(msg.header.stamp), pose))

    def _on_loop(self, msg: Float64MultiArray) -> None:
        with self._lock:
            self._loops.append(tuple(float(v) for v in msg.data[:2]))

    @property
    def matches_count(self) -> int:
        """Return how many ``~/matches`` messages arrived."""
        with self._lock:
            return len(self._matches)

    def outputs_complete(self, poses: bool, loop_closures: bool) -> bool:
        """Whether every accepted match's ``~/pose`` and ``~/loop_closure`` arrived.

        The node publishes them after ``~/matches`` (a pose only when the best match has one);
        ``poses`` / ``loop_closures`` say whether the node publishes them at all.
        """
        with self._lock:
            return (len(self._poses) >= (self._accepted_with_pose if poses else 0)
                    and len(self._loops) >= (self._accepted if loop_closures else 0))

    def snapshot(self) -> tuple[list, list, list]:
        """Return copies of ``(matches with arrival times, poses, loop closures)``."""
        with self._lock:
            return list(self._matches), list(self._poses), list(self._loops)


class TimedPlayer(BagPlayer):
    """A :class:`BagPlayer` that notes when each frame was published (for latencies)."""

    def __init__(self, *args, **kwargs) -> None:
        """Create the player (see :class:`BagPlayer`)."""
        super().__init__(*args, **kwargs)
        self.sent: dict = {}

    def publish(self, frame: Frame) -> None:
        """Note the time, then publish ``frame``."""
        self.sent[int(frame.stamp_ns)] = time.perf_counter()
        super().publish(frame)


def match_from_message(decoded: Matches, latency_ms: Optional[float] = None) -> Match:
    """Convert a decoded ``~/matches`` message into the offline mode's :class:`Match`.

    The candidates go through :func:`match_from_result`, exactly as offline results do.
    """
    candidates = tuple(Candidate(c.map_id, c.map_stamp_ns, c.global_similarity, c.pair_score,
                                 c.probability, c.pose, c.score) for c in decoded.candidates)
    timings = {} if latency_ms is None else {'end_to_end': float(latency_ms)}
    reason = 'accepted' if decoded.accepted else 'not accepted'
    result = LocalizationResult(decoded.stamp_ns, candidates, decoded.accepted, reason, timings)
    return match_from_result(result)


# ---------------------------------------------------------------------------- the replay

class LiveGraph:
    """The node under test, a recorder node and a timed player on one context.

    Use as a context manager; :meth:`run` plays frames and returns the recording.
    """

    def __init__(self, setup: NodeSetup, replay: ReplayConfig, context: Context) -> None:
        """Start the node (loading model and map) and the recorder; spin them."""
        self.replay = replay
        self.node = start_node(setup, replay, context)
        self._executor = MultiThreadedExecutor(num_threads=3, context=context)
        self._probe = Node('vpr_eval_live_recorder', context=context)
        self.recorder = OutputRecorder(self._probe, self.node.get_fully_qualified_name())
        for node in (self.node, self._probe):
            self._executor.add_node(node)
        self._thread = spin_in_background(self._executor)
        self.player = TimedPlayer(self._player_config(), context=context,
                                  node_name='vpr_eval_live_player')

    def _player_config(self) -> PlayerConfig:
        replay = self.replay
        return PlayerConfig(image_topic=_absolute(replay.namespace, 'image'),
                            lock_step=replay.lock_step, wait_timeout_s=replay.wait_timeout_s,
                            wait_topic=self.node.get_fully_qualified_name() + '/matches',
                            speed=replay.speed, discovery_timeout_s=replay.discovery_timeout_s)

    def __enter__(self) -> 'LiveGraph':
        """Return self."""
        return self

    def __exit__(self, *exc_info) -> None:
        """Stop the player, the executor and both nodes."""
        self.close()

    def close(self) -> None:
        """Stop the player, the executor and both nodes."""
        self.player.close()
        self._executor.shutdown(timeout_sec=2.0)
        self._thread.join(timeout=5.0)
        self.node.destroy_node()
        self._probe.destroy_node()

    def wait_connected(self) -> None:
        """Wait until player, node and recorder are connected; raise :class:`ReplayError`."""
        if not self.player.wait_for_peers():
            raise ReplayError(f'the localize node did not connect to the player within '
                              f'{self.replay.discovery_timeout_s} s')
        readers = 1 + int(self.replay.lock_step)
        node = self.node
        deadline = time.monotonic() + self.replay.discovery_timeout_s
        while time.monotonic() < deadline:
            if (node.matches_pub.get_subscription_count() >= readers
                    and node.pose_pub.get_subscription_count() >= 1
                    and node.loop_pub.get_subscription_count() >= 1):
                return
            time.sleep(POLL_S)
        raise ReplayError(f'the recorder did not connect to the outputs of '
                          f'{node.get_fully_qualified_name()} within '
                          f'{self.replay.discovery_timeout_s} s')

    def settle(self, published: int) -> bool:
        """Wait until the node has handled every frame it received and its answers arrived.

        Returns False when ``settle_timeout_s`` passed first. Frames lost before reaching the
        node are given up after :data:`QUIET_S` without any change.
        """
        deadline = time.monotonic() + self.replay.settle_timeout_s
        last, changed = None, time.monotonic()
        while True:
            received = self.node.stats.counter('received')
            processed = self.node.stats.counter('processed')
            state = (received, _accounted(self.node), self.recorder.matches_count)
            if state != last:
                last, changed = state, time.monotonic()
            idle = state[1] >= received and state[2] >= processed and self._outputs_complete()
            if idle and (received >= published or time.monotonic() - changed >= QUIET_S):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)

    def _outputs_complete(self) -> bool:
        config = self.node.params.config()
        return self.recorder.outputs_complete(config.publish_pose, config.publish_loop_closure)

    def run(self, frames: Iterable) -> ReplayRecording:
        """Play ``frames`` into the node, wait for the answers, return the recording."""
        self.wait_connected()
        stamps: list = []
        playback = self.player.play(_noting(frames, stamps))
        if not self.settle(playback.published):
            LOGGER.warning('the node still had frames in hand after %.1f s; scoring what '
                           'arrived', self.replay.settle_timeout_s)
        return self._recording(playback, stamps)

    def _recording(self, playback: PlaybackReport, stamps: list) -> ReplayRecording:
        raw, poses, loops = self.recorder.snapshot()
        recording = ReplayRecording(poses=poses, loop_closures=loops, playback=playback,
                                    published_stamps=stamps,
                                    node_counters=node_counters(self.node),
                                    settings=node_settings(self.node))
        for decoded, arrived in raw:
            sent = self.player.sent.get(decoded.stamp_ns)
            latency = None if sent is None else (arrived - sent) * 1e3
            recording.matches.append(match_from_message(decoded, latency))
            recording.candidate_stamps.update(
                {c.map_id: c.map_stamp_ns for c in decoded.candidates})
        return recording


def _noting(frames: Iterable, stamps: list) -> Iterable:
    for frame in frames:
        stamps.append(int(frame.stamp_ns))
        yield frame


def replay_frames(frames: Iterable, setup: NodeSetup, replay: ReplayConfig = ReplayConfig(),
                  context: Optional[Context] = None,
                  domain_id: Optional[int] = None) -> ReplayRecording:
    """Start the node, play ``frames`` into it and return what it published.

    Args:
        frames: the query frames (:class:`~vpr_ros.data.frame.Frame`), in stamp order.
        setup: map, model and configuration of the node.
        replay: lock-step or real time, timeouts and namespace.
        context: an initialised rclpy context to use; by default a private one is created (on
            ``domain_id``, else ``ROS_DOMAIN_ID``) and shut down afterwards.
        domain_id: DDS domain of the private context.
    """
    own = context is None
    if own:
        context = Context()
        rclpy.init(context=context, domain_id=domain_id)
    try:
        with LiveGraph(setup, replay, context) as graph:
            return graph.run(frames)
    finally:
        if own:
            rclpy.try_shutdown(context=context)
