"""The ``build_map`` node: images plus poses in, a map database on disk out.

Subscribes ``image`` (sensor_msgs/Image) or ``image/compressed`` and a pose topic
(nav_msgs/Odometry, geometry_msgs/PoseStamped or PoseWithCovarianceStamped). Each image is paired
with the pose nearest in stamp (within ``pair_tolerance_s``) once a pose at or after the image
stamp has arrived; keyframes (by time, distance and heading) are described on a worker thread and
appended to the map. The map is saved atomically on ``~/save`` (std_srvs/Trigger), every
``autosave_period_s`` when it grew, and at shutdown. A ``localize`` node on the same ``map_path``
picks the growth up with ``~/reload_map`` or ``map_watch_period_s``.
"""

from collections import deque
from pathlib import Path
import queue
import sys
import threading
import time
from typing import Optional, TYPE_CHECKING

from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
import numpy as np
from std_srvs.srv import Trigger

from vpr_ros.config import LocalizerConfig
from vpr_ros.errors import VprError
from vpr_ros.geometry import Pose
from vpr_ros.map.database import MapDatabase
from vpr_ros.ros.conversions import pose_from_msg, PoseRejected, stamp_to_ns
from vpr_ros.ros.keyframe_gate import KeyframeGate
from vpr_ros.ros.node_config import BUILD_MAP_GROUPS
from vpr_ros.ros.pose_buffer import PoseBuffer
from vpr_ros.ros.vpr_node import backend_summary, input_qos, run_node, StartupError, VprNode

if TYPE_CHECKING:     # imported when a node starts, so that --help needs no torch
    from vpr_ros.localization.localizer import Localizer

KEYFRAME_QUEUE = 64
WORKER_POLL_S = 0.2
DRAIN_TIMEOUT_S = 60.0
POSE_TYPES = {'odometry': Odometry, 'pose_stamped': PoseStamped,
              'pose_with_covariance': PoseWithCovarianceStamped}
EXAMPLE = ('build_map --ros-args -p map_path:=$HOME/maps/office '
           '-p image_topic:=/camera/image_raw -p pose_topic:=/odom')
COUNTERS = ('received', 'poses', 'keyframes_added', 'skipped_keyframe_gate', 'saves')


class BuildMapNode(VprNode):
    """Pairs images with poses, selects keyframes and grows the map incrementally.

    ``localizer`` injects a ready :class:`Localizer` whose map is extended (tests, demos); by
    default the node builds one from the parameters, continuing the map at ``map_path`` when
    ``append`` is true.
    """

    def __init__(self, localizer: Optional['Localizer'] = None, **kwargs) -> None:
        """Declare parameters, open model and map, create the interfaces, start the worker."""
        super().__init__('build_map', BUILD_MAP_GROUPS, COUNTERS, **kwargs)
        self._continued = False
        if not self.params.config().map_path:
            raise StartupError('map_path', '', 'build_map needs a folder to save the map in',
                               'set -p map_path:=$HOME/maps/office (written on ~/save and at '
                               'shutdown; an existing map there is continued when append is '
                               'true)')
        self._localizer = localizer or self._build_localizer()
        self._poses = PoseBuffer(capacity=5000)
        self._pending: deque = deque()
        self._last_image_ns: Optional[int] = None
        self._gate = KeyframeGate(self.params.config('keyframe'))
        self._keyframes: queue.Queue = queue.Queue(maxsize=KEYFRAME_QUEUE)
        self._save_lock = threading.Lock()
        self._autosaving = threading.Event()
        self._dirty = False
        self._stop = threading.Event()
        self._create_interfaces()
        self._worker = threading.Thread(target=self._run_worker, name='vpr_build_map',
                                        daemon=True)
        self._worker.start()
        self.started()

    @property
    def localizer(self) -> 'Localizer':
        """Return the localizer whose map this node extends."""
        return self._localizer

    def _build_localizer(self) -> 'Localizer':
        from vpr_ros.localization.localizer import Localizer
        config = self.params.config()
        model = self.load_model_from_parameters()
        path = Path(config.map_path)
        if config.append and path.exists():
            try:
                database = MapDatabase.load(path, expected_spec=model.spec)
            except (VprError, OSError) as exc:
                raise self.map_startup_error(config.map_path, exc) from exc
            self._continued = True
        else:
            keep = config.store_tokens and model.spec.has_pair_classifier
            database = MapDatabase(model.spec, self.params.config('index'), store_tokens=keep)
        group = self.params.config('localizer')
        localizer_config = LocalizerConfig(batch_size=group.batch_size, device=group.device,
                                           precision=group.precision)
        return Localizer(model, database, localizer_config)

    def summary(self) -> str:
        """Return the start-up summary: model, backend, device, map, saving, keyframes."""
        config = self.params.config()
        database = self.localizer.database
        model = self.localizer.model.spec.architecture
        if config.checkpoint:
            model += f' from {config.checkpoint}'
        if self._continued:
            where = f'continuing map {config.map_path} ({len(database)} places)'
        elif len(database):
            where = f'map {config.map_path} ({len(database)} places)'
        else:
            where = f'new map {config.map_path}'
            if Path(config.map_path).exists():
                where += ' (replaces the map there on the first save: append is false)'
        saves = 'saved on ~/save and at shutdown'
        if config.autosave_period_s > 0:
            saves += f', every {config.autosave_period_s:g} s when it grew'
        gate = self.params.config('keyframe')
        backend = backend_summary(self.localizer, self.params.config('localizer'))
        return (f'model {model} ({backend}), {where}, index {self.params.config("index").kind}, '
                f'tokens {"stored" if database.has_tokens else "not stored"}, {saves}; poses '
                f'from {self._pose_topic} ({config.pose_source}), {_gate_summary(gate)}')

    def _create_interfaces(self) -> None:
        config = self.params.config()
        self.subscribe_images(self._on_image)
        pose_type = POSE_TYPES[config.pose_source]
        pose_sub = self.create_subscription(pose_type, config.pose_topic, self._on_pose,
                                            input_qos('reliable', config.queue_depth))
        self._pose_topic = pose_sub.topic_name
        self.create_service(Trigger, '~/save', self._on_save)
        if config.autosave_period_s > 0:
            self.create_timer(config.autosave_period_s, self._autosave)

    # Executor thread ----------------------------------------------------------------------

    def _on_image(self, msg) -> None:
        self.stats.count('received')
        stamp_ns = stamp_to_ns(msg.header.stamp)
        if self._last_image_ns is not None and stamp_ns <= self._last_image_ns:
            self.reject('out_of_order_stamp', f'image stamp {stamp_ns} ns is not newer than '
                        f'{self._last_image_ns} ns')
            return
        image = self.decode_image(msg)
        if image is None:
            return
        self._last_image_ns = stamp_ns
        self._pending.append((stamp_ns, image, msg.header.frame_id))
        if len(self._pending) > self.params.config().max_pending_frames:
            self._pending.popleft()
            self.reject('no_pose', 'no pose arrived for a buffered image; dropped the oldest')
        self._pair_pending(flush=False)

    def _on_pose(self, msg) -> None:
        pose_msg = msg.pose if isinstance(msg, PoseStamped) else msg.pose.pose
        try:
            pose = pose_from_msg(pose_msg, msg.header.frame_id or 'map')
        except PoseRejected as exc:
            self.reject(exc.reason, str(exc))
            return
        if not self._poses.add(stamp_to_ns(msg.header.stamp), pose):
            self.reject('out_of_order_stamp', 'pose stamp is not newer than the last one')
            return
        self.stats.count('poses')
        self._pair_pending(flush=False)

    def _pair_pending(self, flush: bool) -> None:
        """Pair buffered images whose nearest pose is known (all of them when ``flush``)."""
        tolerance_ns = int(round(self.params.config().pair_tolerance_s * 1e9))
        while self._pending and (flush or self._pose_known(self._pending[0][0])):
            stamp_ns, image, _ = self._pending.popleft()
            found = self._poses.nearest(stamp_ns, tolerance_ns)
            if found is None:
                self.reject('no_pose_within_tolerance', f'no pose within '
                            f'{tolerance_ns / 1e9:.3f} s of image stamp {stamp_ns} ns')
                continue
            self._offer_keyframe(stamp_ns, image, found[1])

    def _pose_known(self, stamp_ns: int) -> bool:
        """Whether no later pose can be nearer: one at/after ``stamp_ns`` or exactly at it."""
        latest = self._poses.latest_stamp_ns
        return latest is not None and (latest >= stamp_ns
                                       or self._poses.nearest(stamp_ns, 0) is not None)

    def _offer_keyframe(self, stamp_ns: int, image: np.ndarray, pose: Pose) -> None:
        if not self._gate.passes(stamp_ns, pose):
            self.stats.count('skipped_keyframe_gate')
            return
        try:
            self._keyframes.put_nowait((stamp_ns, image, pose))
        except queue.Full:
            self.reject('queue_full', 'keyframe queue is full (description is too slow)')
            return
        self._gate.commit(stamp_ns, pose)

    def _on_save(self, request: Trigger.Request, response: Trigger.Response):
        try:
            size = self.save_map()
        except (VprError, OSError) as exc:
            response.success, response.message = False, f'save failed: {exc}'
            self.get_logger().error(response.message)
            return response
        response.success = True
        response.message = f'saved {size} places to {self.params.config().map_path}'
        return response

    def _autosave(self) -> None:
        """Save a grown map on a background thread, so that images keep flowing meanwhile."""
        if not self._dirty or self._autosaving.is_set():
            return
        self._autosaving.set()
        threading.Thread(target=self._autosave_now, name='vpr_autosave', daemon=True).start()

    def _autosave_now(self) -> None:
        try:
            self.save_map(drain=False)
        except (VprError, OSError) as exc:
            self.get_logger().error(f'autosave failed: {exc}')
        finally:
            self._autosaving.clear()

    def save_map(self, flush: bool = False, drain: bool = True) -> int:
        """Save the map atomically and return its size.

        ``drain`` first waits for the queued keyframes (``~/save``, shutdown; an autosave saves
        what the map holds); ``flush`` also pairs the images still waiting for a later pose (used
        at shutdown).
        """
        if flush:
            self._pair_pending(flush=True)
        if drain:
            self._drain()
        with self._save_lock:
            self._dirty = False
            self.localizer.database.save(self.params.config().map_path)
            size = len(self.localizer.database)
        self.stats.count('saves')
        self.get_logger().info(f'saved map {self.params.config().map_path}: {size} places')
        return size

    def _drain(self) -> None:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while self._keyframes.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def on_parameters_changed(self, prefixes: set) -> None:
        """Apply new keyframe rules at run time (pair_tolerance_s is read on every image)."""
        if 'keyframe' in prefixes:
            self._gate.update_config(self.params.config('keyframe'))

    def diagnostic_values(self) -> tuple[dict, Optional[str]]:
        """Return map size, queue lengths and device for /diagnostics."""
        values = {'map_size': len(self.localizer.database),
                  'device': str(self.localizer.device),
                  'model': self.localizer.model.spec.architecture,
                  'pending_images': len(self._pending),
                  'queued_keyframes': self._keyframes.qsize(),
                  'map_path': self.params.config().map_path, 'unsaved_changes': self._dirty}
        return values, None

    # Worker thread ------------------------------------------------------------------------

    def _run_worker(self) -> None:
        while not self._stop.is_set():
            try:
                stamp_ns, image, pose = self._keyframes.get(timeout=WORKER_POLL_S)
            except queue.Empty:
                continue
            try:
                self._add_keyframe(stamp_ns, image, pose)
            except Exception as exc:  # keep the worker alive whatever fails
                self.reject('internal_error', f'{type(exc).__name__}: {exc}')
            finally:
                self._keyframes.task_done()

    def _add_keyframe(self, stamp_ns: int, image: np.ndarray, pose: Pose) -> None:
        start = time.perf_counter()
        source = f'topic:{self.image_sub.topic_name}@{stamp_ns}'
        with self._save_lock:
            self.localizer.add_to_map(image, stamp_ns, pose, source=source)
            self._dirty = True
        self.stats.count('keyframes_added')
        self.stats.record_latencies({'add_to_map': (time.perf_counter() - start) * 1e3})

    def stop_work(self) -> None:
        """Pair what is left, save the map if it changed, stop the worker."""
        try:
            if self._dirty or self._pending or self._keyframes.unfinished_tasks:
                self.save_map(flush=True)
        except (VprError, OSError) as exc:
            self.get_logger().error(f'saving the map at shutdown failed: {exc}')
        self._stop.set()
        self._worker.join(timeout=10.0)
        deadline = time.monotonic() + 10.0
        while self._autosaving.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)


def _gate_summary(gate) -> str:
    """Describe the keyframe rules of ``gate`` (a ``KeyframeGateConfig``) in a few words."""
    rules = []
    if gate.uses_motion:
        rules.append(f'every {gate.min_distance_m:g} m or {gate.min_rotation_deg:g} deg')
    if gate.min_interval_s > 0:
        rules.append(f'at least {gate.min_interval_s:g} s apart')
    return 'keyframes ' + (', '.join(rules) if rules else 'on every paired image')


def main(args: Optional[list] = None) -> int:
    """Run the ``build_map`` node until shutdown, then save (``ros2 run vpr_ros build_map``)."""
    return run_node(BuildMapNode, 'build_map', args, groups=BUILD_MAP_GROUPS,
                    description=__doc__, example=EXAMPLE)


if __name__ == '__main__':
    sys.exit(main())
