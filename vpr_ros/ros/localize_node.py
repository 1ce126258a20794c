"""The ``localize`` node: camera images in, place matches out, in standard message types.

Subscribes ``image`` (sensor_msgs/Image) or ``image/compressed`` (sensor_msgs/CompressedImage),
and ``odom`` (nav_msgs/Odometry, for keyframe gating by motion). Publishes ``~/pose``
(PoseWithCovarianceStamped), ``~/loop_closure`` (Float64MultiArray, LIO-SAM convention),
``~/matches`` (PointCloud2, see :mod:`vpr_ros.ros.matches`), ``~/markers`` (MarkerArray),
``~/debug_image`` (Image, only while subscribed) and ``/diagnostics``. Services ``~/reload_map``
(std_srvs/Trigger) and ``~/pause`` (std_srvs/SetBool).

Inference runs on a worker thread that always takes the newest frame; frames replaced before the
worker reached them are dropped and counted (``dropped_stale``). A map folder that changes on
disk (``map_watch_period_s``) is loaded on a thread of its own and swapped in when complete.
"""

from dataclasses import replace
from functools import lru_cache
import hashlib
import os
from pathlib import Path
import sys
import threading
import time
from typing import Optional, TYPE_CHECKING

from geometry_msgs.msg import PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
import numpy as np
from sensor_msgs.msg import Image, PointCloud2
from std_msgs.msg import Float64MultiArray, Header
from std_srvs.srv import SetBool, Trigger
from visualization_msgs.msg import MarkerArray

from vpr_ros.data.image_codec import read_image_file
from vpr_ros.errors import ImageDecodeError, MapChangedError, VprError
from vpr_ros.geometry import positions_array
from vpr_ros.map.database import MapDatabase
from vpr_ros.map.manifest import MANIFEST_FILE
from vpr_ros.ros.conversions import image_to_msg, pose_from_msg, PoseRejected, stamp_to_ns
from vpr_ros.ros.keyframe_gate import KeyframeGate
from vpr_ros.ros.latest_slot import LatestSlot
from vpr_ros.ros.matches import encode_matches
from vpr_ros.ros.node_config import LOCALIZE_GROUPS
from vpr_ros.ros.outputs import (debug_panel, loop_closure_message, map_marker, match_markers,
                                 pose_message)
from vpr_ros.ros.pose_buffer import PoseBuffer
from vpr_ros.ros.vpr_node import backend_summary, input_qos, run_node, VprNode

if TYPE_CHECKING:     # imported when a node starts, so that --help needs no torch
    from vpr_ros.localization.localizer import LocalizationResult, Localizer

WORKER_POLL_S = 0.2
MAP_MARKER_PERIOD_S = 5.0
MAP_LOAD_ATTEMPTS = 5
"""Loads of a map that a concurrent save keeps replacing (``MapChangedError``) before giving up."""
EXAMPLE = ('localize --ros-args -p map_path:=$HOME/maps/office '
           '-p image_topic:=/camera/image_raw')
COUNTERS = ('received', 'processed', 'dropped_stale', 'skipped_paused', 'skipped_keyframe_gate',
            'result.accepted', 'map_reloads', 'map_reload_failures')


@lru_cache(maxsize=8)
def _map_image(source: str) -> Optional[np.ndarray]:
    """Return the map image stored at ``source`` when it is a readable image file, else None."""
    if not source or source.startswith('bag:') or not os.path.isfile(source):
        return None
    try:
        return read_image_file(source)
    except ImageDecodeError:
        return None


def _manifest_key(map_path: str) -> Optional[bytes]:
    """Return a digest of the map's manifest (it lists every file's sha256), None if unreadable.

    Unlike the manifest's mtime, the digest changes with every save that changes the map, however
    close together two saves are.
    """
    try:
        return hashlib.sha256((Path(map_path) / MANIFEST_FILE).read_bytes()).digest()
    except OSError:
        return None


class LocalizeNode(VprNode):
    """Localizes every (key)frame against the map and publishes the result.

    ``localizer`` injects a ready :class:`Localizer` (tests, demos); by default the node builds
    one from the ``model``/``checkpoint`` and ``map_path`` parameters.
    """

    def __init__(self, localizer: Optional['Localizer'] = None, **kwargs) -> None:
        """Declare parameters, load model and map, create the interfaces, start the worker.

        An injected ``localizer`` keeps its configuration: it becomes the default of the
        ``localizer.*`` parameters (overrides still apply).
        """
        groups = LOCALIZE_GROUPS
        if localizer is not None:
            groups = tuple(replace(g, defaults=localizer.config) if g.prefix == 'localizer'
                           else g for g in groups)
        super().__init__('localize', groups, COUNTERS, **kwargs)
        self._lock = threading.Lock()
        self._paused = False
        self._last_stamp_ns: Optional[int] = None
        self._gate = KeyframeGate(self.params.config('keyframe'))
        self._odom = PoseBuffer(capacity=100)
        self._slot = LatestSlot()
        self._map_marker_due = 0.0
        self._map_key = _manifest_key(self.params.config().map_path)
        self._reload_lock = threading.Lock()         # one map load at a time
        self._loader: Optional[threading.Thread] = None
        self._localizer = localizer or self._build_localizer()
        self._localizer.update_config(self.params.config('localizer'))
        self._create_interfaces()
        self._worker = threading.Thread(target=self._run_worker, name='vpr_localize',
                                        daemon=True)
        self._worker.start()
        self.started()

    @property
    def localizer(self) -> 'Localizer':
        """Return the localizer now in use (replaced by ``~/reload_map``)."""
        with self._lock:
            return self._localizer

    def _build_localizer(self) -> 'Localizer':
        from vpr_ros.localization.localizer import Localizer
        model = self.load_model_from_parameters()
        database = self._open_map(model.spec)
        return Localizer(model, database, self.params.config('localizer'))

    def _open_map(self, spec) -> MapDatabase:
        path = self.params.config().map_path
        if not path:
            self.get_logger().warning(
                'no map loaded (map_path is empty): every frame is answered with an empty '
                '~/matches; set -p map_path:=<map folder> at start, or set the parameter and '
                'call ~/reload_map')
            return MapDatabase(spec)
        if not Path(path).exists():
            self.get_logger().warning(
                f'map_path {path} does not exist yet: starting with an empty map; '
                '~/reload_map (or map_watch_period_s) loads it once build_map has saved it')
            return MapDatabase(spec)
        try:
            return self._load_map(path, spec)
        except (VprError, OSError) as exc:
            raise self.map_startup_error(path, exc) from exc

    def summary(self) -> str:
        """Return the start-up summary: model, backend, device, map, ranking, acceptance."""
        localizer = self.localizer
        config = self.params.config()
        group = self.params.config('localizer')
        model = localizer.model.spec.architecture
        if config.checkpoint:
            model += f' from {config.checkpoint}'
        size = len(localizer.database)
        where = (f'map {config.map_path} ({size} places)' if config.map_path
                 else 'no map (map_path is empty)')
        if localizer.can_rerank:
            ranking = f'rerank top_k {group.top_k} {localizer.scoring.fusion}'
            if not localizer.scoring.calibrated:
                ranking += ' (uncalibrated)'
        else:
            why = ('rerank false' if not group.rerank
                   else 'model has no pair classifier'
                   if not localizer.model.spec.has_pair_classifier
                   else 'map stores no tokens')
            ranking = f'global search top_k {group.top_k} (no re-ranking: {why})'
        return (f'model {model} ({backend_summary(localizer, group)}), {where}, {ranking}, '
                f'accept p>={group.accept_probability:g} temporal_window {group.temporal_window}')

    def _create_interfaces(self) -> None:
        config = self.params.config()
        self.subscribe_images(self._on_image)
        self.create_subscription(Odometry, config.odom_topic, self._on_odometry,
                                 input_qos('best_effort', 10))
        self.pose_pub = self.create_publisher(PoseWithCovarianceStamped, '~/pose', 10)
        self.loop_pub = self.create_publisher(Float64MultiArray, '~/loop_closure', 10)
        self.matches_pub = self.create_publisher(PointCloud2, '~/matches', 10)
        self.markers_pub = self.create_publisher(MarkerArray, '~/markers', 10)
        self.debug_pub = self.create_publisher(Image, '~/debug_image', 2)
        self.create_service(Trigger, '~/reload_map', self._on_reload_map)
        self.create_service(SetBool, '~/pause', self._on_pause)
        if config.map_watch_period_s > 0:
            self.create_timer(config.map_watch_period_s, self._watch_map)

    # Executor thread ----------------------------------------------------------------------

    def _on_image(self, msg) -> None:
        self.stats.count('received')
        if self._paused:
            self.stats.count('skipped_paused')
            return
        if self._slot.put((msg, time.perf_counter())):
            self.stats.count('dropped_stale')

    def _on_odometry(self, msg: Odometry) -> None:
        try:
            pose = pose_from_msg(msg.pose.pose, msg.header.frame_id)
        except PoseRejected as exc:
            self.reject(exc.reason, f'odometry: {exc}')
            return
        if not self._odom.add(stamp_to_ns(msg.header.stamp), pose):
            self.reject('out_of_order_stamp', 'odometry stamp is not newer than the last one')

    def _on_pause(self, request: SetBool.Request, response: SetBool.Response):
        self._paused = bool(request.data)
        response.success = True
        response.message = 'paused' if self._paused else 'resumed'
        self.get_logger().info(f'localization {response.message}')
        return response

    def _on_reload_map(self, request: Trigger.Request, response: Trigger.Response):
        try:
            size = self.reload_map()
        except (VprError, OSError) as exc:
            response.success, response.message = False, f'reload failed: {exc}'
            self.get_logger().error(response.message)
            return response
        response.success, response.message = True, f'map reloaded: {size} places'
        return response

    def reload_map(self) -> int:
        """Load the map at ``map_path`` again (same model) and return its size.

        The localizer configuration is the current parameters', taken under the same lock as
        run-time parameter changes, so a change made during a reload is never lost.
        """
        try:
            with self._reload_lock:
                size = self._reload_map()
        except (VprError, OSError):
            self.stats.count('map_reload_failures')
            raise
        self.stats.count('map_reloads')
        return size

    def _reload_map(self) -> int:
        path = self.params.config().map_path
        if not path or not Path(path).exists():
            raise VprError(f'map {path!r} does not exist')
        key = _manifest_key(path)     # before loading: a save during the load is seen next time
        from vpr_ros.localization.localizer import Localizer
        model = self.localizer.model
        database = self._load_map(path, model.spec)
        with self._lock:
            self._localizer = Localizer(model, database, self.params.config('localizer'))
        self._map_key = key
        self._map_marker_due = 0.0
        self.get_logger().info(f'loaded map {path} with {len(database)} places')
        return len(database)

    def _load_map(self, path: str, spec) -> MapDatabase:
        """Load the map, again when a concurrent save replaced it meanwhile (build_map)."""
        for attempt in range(1, MAP_LOAD_ATTEMPTS + 1):
            try:
                return MapDatabase.load(path, expected_spec=spec)
            except MapChangedError as exc:
                if attempt == MAP_LOAD_ATTEMPTS:
                    raise
                self.get_logger().debug(f'{exc}; attempt {attempt + 1}')

    def _watch_map(self) -> None:
        """Start loading the map on a thread of its own when its folder changed.

        A large map takes seconds to load; meanwhile the executor keeps taking frames,
        publishing diagnostics and answering services, and the worker keeps localizing against
        the map it has.
        """
        if self._loader is not None and self._loader.is_alive():
            return
        key = _manifest_key(self.params.config().map_path)
        if key is None or key == self._map_key:
            return
        self._loader = threading.Thread(target=self._reload_changed_map, args=(key,),
                                        name='vpr_map_reload', daemon=True)
        self._loader.start()

    def _reload_changed_map(self, key) -> None:
        try:
            self.reload_map()
        except MapChangedError as exc:
            self.get_logger().warning(f'map keeps changing, trying again later: {exc}')
        except (VprError, OSError) as exc:
            self.get_logger().warning(f'map changed but could not be reloaded: {exc}')
            self._map_key = key

    def on_parameters_changed(self, prefixes: set) -> None:
        """Apply new thresholds / top-K and keyframe rules at run time."""
        if 'localizer' in prefixes:
            with self._lock:
                self._localizer.update_config(self.params.config('localizer'))
        if 'keyframe' in prefixes:
            self._gate.update_config(self.params.config('keyframe'))

    def diagnostic_values(self) -> tuple[dict, Optional[str]]:
        """Return map size, device, model, ranking and state for /diagnostics."""
        localizer = self.localizer
        size = len(localizer.database)
        scoring = localizer.scoring
        reranks = localizer.can_rerank
        values = {'map_size': size, 'device': str(localizer.device),
                  'model': localizer.model.spec.architecture, 'paused': self._paused,
                  'map_path': self.params.config().map_path,
                  'ranking': scoring.fusion if reranks else 'global (no re-ranking)',
                  'fusion_beta': scoring.beta if reranks and scoring.fusion == 'fused' else '',
                  'probability_calibrated': scoring.calibrated if reranks else False}
        warning = 'paused' if self._paused else ('map is empty' if size == 0 else None)
        if warning is None and reranks and not scoring.calibrated:
            warning = 'match probabilities are uncalibrated'
        self._publish_map_markers(localizer)
        return values, warning

    def _publish_map_markers(self, localizer: 'Localizer') -> None:
        if self.markers_pub.get_subscription_count() == 0 or time.monotonic() < \
                self._map_marker_due:
            return
        self._map_marker_due = time.monotonic() + MAP_MARKER_PERIOD_S
        entries = localizer.database.entries
        positions = positions_array([e.pose for e in entries if e.pose is not None])
        header = Header(stamp=self.get_clock().now().to_msg(),
                        frame_id=self.params.config().map_frame)
        marker = map_marker(header, positions, self.params.config().marker_scale_m)
        self.markers_pub.publish(MarkerArray(markers=[marker]))

    # Worker thread ------------------------------------------------------------------------

    def _run_worker(self) -> None:
        while not self._slot.closed:
            item = self._slot.take(WORKER_POLL_S)
            if item is None:
                continue
            try:
                self._process(*item)
            except Exception as exc:  # keep the worker alive whatever fails
                self.reject('internal_error', f'{type(exc).__name__}: {exc}')

    def _process(self, msg, received: float) -> None:
        stamp_ns = stamp_to_ns(msg.header.stamp)
        if self._last_stamp_ns is not None and stamp_ns < self._last_stamp_ns:
            self.reject('out_of_order_stamp', f'image stamp {stamp_ns} ns is older than the '
                        f'last one ({self._last_stamp_ns} ns)')
            return
        odom_pose = self._odom.latest()
        if not self._gate.passes(stamp_ns, odom_pose):
            self.stats.count('skipped_keyframe_gate')
            return
        start = time.perf_counter()
        image = self.decode_image(msg)
        if image is None:
            return
        decode_ms = (time.perf_counter() - start) * 1e3
        self._last_stamp_ns = stamp_ns
        result = self._exclude_recent(self.localizer.localize(image, stamp_ns))
        self._gate.commit(stamp_ns, odom_pose)
        self._publish(msg.header, image, result)
        self.stats.count('processed')
        self.stats.count('result.' + result.reason.replace(' ', '_'))
        self.stats.record_latencies({'decode': decode_ms, **result.timings_ms,
                                     'end_to_end': (time.perf_counter() - received) * 1e3})

    def _exclude_recent(self, result: 'LocalizationResult') -> 'LocalizationResult':
        """Drop candidates stamped within ``exclude_recent_s`` of the query.

        When the best candidate is dropped, the next one is accepted on the probability threshold
        alone (the localizer's temporal check saw the dropped one).
        """
        gap_ns = self.params.config().exclude_recent_s * 1e9
        kept = tuple(c for c in result.candidates if abs(result.stamp_ns - c.stamp_ns) >= gap_ns)
        if gap_ns <= 0 or len(kept) == len(result.candidates):
            return result
        if kept and kept[0] == result.candidates[0]:
            return replace(result, candidates=kept)
        accepted = bool(kept) and \
            kept[0].probability >= self.localizer.config.accept_probability
        reason = 'accepted' if accepted else ('below threshold' if kept else 'only recent places')
        return replace(result, candidates=kept, accepted=accepted, reason=reason)

    def _publish(self, image_header: Header, image: np.ndarray,
                 result: 'LocalizationResult') -> None:
        config = self.params.config()
        header = Header(stamp=image_header.stamp, frame_id=config.map_frame)
        self.matches_pub.publish(encode_matches(header, result.candidates, result.accepted))
        best = result.best
        if result.accepted and config.publish_pose:
            pose = pose_message(header, result.candidates, config.covariance_candidates,
                                config.min_position_stddev_m, config.min_yaw_stddev_deg)
            if pose is not None:
                self.pose_pub.publish(pose)
        if result.accepted and config.publish_loop_closure:
            self.loop_pub.publish(loop_closure_message(result.stamp_ns, best.stamp_ns))
        if self.markers_pub.get_subscription_count() > 0:
            self.markers_pub.publish(match_markers(header, best, result.accepted,
                                                   config.marker_scale_m))
        if self.debug_pub.get_subscription_count() > 0:
            self._publish_debug(image_header, image, result)

    def _publish_debug(self, image_header: Header, image: np.ndarray,
                       result: 'LocalizationResult') -> None:
        best = result.best
        lines = [f'{result.reason}']
        match = None
        if best is not None:
            entry = self.localizer.database.entry(best.map_id)
            match = _map_image(entry.source)
            lines += [f'map id {best.map_id}', f'p={best.probability:.3f}',
                      f'sim={best.global_similarity:.3f}']
        panel = debug_panel(image, match, lines)
        msg = image_to_msg(panel, stamp_to_ns(image_header.stamp), image_header.frame_id)
        self.debug_pub.publish(msg)

    def stop_work(self) -> None:
        """Stop the worker thread and wait for a map load in progress."""
        self._slot.close()
        current = threading.current_thread()
        for thread in (self._worker, self._loader):
            if thread is not None and thread.is_alive() and thread is not current:
                thread.join(timeout=10.0)


def main(args: Optional[list] = None) -> int:
    """Run the ``localize`` node until shutdown (``ros2 run vpr_ros localize``)."""
    return run_node(LocalizeNode, 'localize', args, groups=LOCALIZE_GROUPS,
                    description=__doc__, example=EXAMPLE)


if __name__ == '__main__':
    sys.exit(main())
