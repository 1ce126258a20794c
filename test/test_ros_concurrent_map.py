"""build_map grows and saves a map while localize reloads and queries that same map folder.

Real nodes on a real rclpy graph, real saves and loads of one map directory. A torn read (files
of two saves mixed in one load) would show as a failed reload, a wrong candidate, or a map that
does not hold what was sent.
"""

import threading
import time

from nav_msgs.msg import Odometry
import numpy as np
import pytest
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile
from ros_harness import call_service, domain_id, RosGraph, wait_for, wait_for_progress
from sensor_msgs.msg import Image
from std_srvs.srv import Trigger
from vpr_ros.config import LocalizerConfig
from vpr_ros.errors import MapChangedError
from vpr_ros.geometry import pose_from_xy_yaw
from vpr_ros.localization.localizer import Localizer
from vpr_ros.map.database import MapDatabase
from vpr_ros.ros.build_map_node import BuildMapNode
from vpr_ros.ros.conversions import image_to_msg, ns_to_stamp, pose_to_msg
from vpr_ros.ros.localize_node import LocalizeNode
from vpr_ros.ros.matches import decode_matches
from vpr_ros.ros.output_monitor import OutputMonitor
from vpr_ros.ros.tools.slow_model import register_slow_model, SlowPoolingModel
from vpr_ros.ros.tools.soak_scenario import place_image


pytestmark = pytest.mark.ros

KEYFRAMES = 150
MAP_T0_NS = 500 * 10**9
QUERY_T0_NS = 9000 * 10**9
TIMEOUT_S = 60.0
DEPTH = 300
IN_FLIGHT = 32
"""Keyframes sent ahead of the builder (its queue holds 64)."""


def _map_stamp(k: int) -> int:
    return MAP_T0_NS + k * 10**8


def _unit_rows(ids, dim: int) -> np.ndarray:
    rows = np.stack([np.random.default_rng(i).normal(size=dim) for i in ids]).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_load_during_saves_reads_one_map_or_reports_the_change(tmp_path) -> None:
    """Loading a map that another thread keeps re-saving never returns a mixed map.

    Row ``i`` of the growing map has stamp ``i`` and a descriptor seeded by ``i``. Every load
    either returns a map whose rows all match that rule (entries, descriptors and index of one
    save) or raises :class:`MapChangedError`; never another format error.
    """
    spec = SlowPoolingModel().spec
    database = MapDatabase(spec)
    database.add(_unit_rows(range(5), spec.descriptor_dim), [{'stamp_ns': i} for i in range(5)])
    database.save(tmp_path / 'map')
    done = threading.Event()

    def grow() -> None:
        for i in range(5, 125):
            database.add(_unit_rows([i], spec.descriptor_dim), [{'stamp_ns': i}])
            database.save(tmp_path / 'map')
        done.set()

    writer = threading.Thread(target=grow)
    writer.start()
    loaded, changed = [], 0
    try:
        while not done.is_set():
            try:
                loaded.append(MapDatabase.load(tmp_path / 'map', expected_spec=spec))
            except MapChangedError:
                changed += 1
    finally:
        writer.join()
    assert loaded, 'no load completed'
    for snapshot in loaded[::max(1, len(loaded) // 40)] + loaded[-1:]:
        n = len(snapshot)
        assert [e.stamp_ns for e in snapshot.entries] == list(range(n))
        want = _unit_rows(range(n), spec.descriptor_dim)
        np.testing.assert_array_equal(snapshot.descriptors, want)
        sims, ids = snapshot.search(snapshot.descriptors[-1:], 1)
        assert ids[0, 0] == n - 1
    print(f'{len(loaded)} loads, {changed} reported a concurrent save')


class Probe:
    """Publishers of map frames (image + odometry) and queries, and a localize monitor."""

    def __init__(self, graph: RosGraph) -> None:
        self.node = graph.add(Node('concurrent_probe', context=graph.context))
        qos = QoSProfile(depth=DEPTH)
        self.map_images = self.node.create_publisher(Image, 'map/image', qos)
        self.map_odom = self.node.create_publisher(Odometry, 'map/odom', qos)
        self.queries = self.node.create_publisher(Image, 'query/image', qos)
        self.monitor = OutputMonitor(self.node, '/localize', outputs=('matches',))
        self.query_stamps: list = []
        self._stop = threading.Event()

    def connected(self) -> bool:
        return all(p.get_subscription_count() > 0
                   for p in (self.map_images, self.map_odom, self.queries))

    def send_keyframe(self, k: int) -> None:
        odom = Odometry()
        odom.header.stamp, odom.header.frame_id = ns_to_stamp(_map_stamp(k)), 'map'
        odom.pose.pose = pose_to_msg(pose_from_xy_yaw(k, 0.0, 0.0))
        self.map_odom.publish(odom)
        self.map_images.publish(image_to_msg(place_image(k), _map_stamp(k), 'camera'))

    def send_query(self, place: int) -> int:
        stamp = QUERY_T0_NS + len(self.query_stamps) * 10**7
        self.query_stamps.append(stamp)
        self.queries.publish(image_to_msg(place_image(place, 1), stamp, 'camera'))
        return stamp

    def query_until_stopped(self) -> None:
        rng = np.random.default_rng(0)
        while not self._stop.wait(0.02):
            self.send_query(int(rng.integers(0, KEYFRAMES)))

    def stop(self) -> None:
        self._stop.set()

    def answers(self) -> list:
        return [decode_matches(m) for m in self.monitor.messages('matches')]


def _nodes(graph: RosGraph, map_path: str) -> tuple[LocalizeNode, BuildMapNode]:
    model = register_slow_model(0.0)      # both nodes build it by name from the registry
    common = [Parameter('map_path', value=map_path), Parameter('model', value=model),
              Parameter('localizer.device', value='cpu'),
              Parameter('reliability', value='reliable'), Parameter('queue_depth', value=DEPTH),
              Parameter('diagnostics_period_s', value=0.1)]
    localize = graph.add(LocalizeNode(context=graph.context, parameter_overrides=common + [
        Parameter('image_topic', value='query/image'), Parameter('localizer.top_k', value=3),
        Parameter('map_watch_period_s', value=0.02)]))
    builder = graph.add(BuildMapNode(context=graph.context, parameter_overrides=common + [
        Parameter('image_topic', value='map/image'), Parameter('pose_topic', value='map/odom'),
        Parameter('autosave_period_s', value=0.05)]))
    return localize, builder


def _state(node) -> str:
    """Return every counter and rejection of ``node`` (for an assertion message)."""
    return f'counters {node.stats.snapshot()!s}; rejections {node.stats.rejections()!s}'


def _build_while_querying(probe: Probe, localize: LocalizeNode, builder: BuildMapNode) -> None:
    querying = threading.Thread(target=probe.query_until_stopped)
    querying.start()
    try:
        def added() -> int:
            return builder.stats.counter('keyframes_added')
        for k in range(KEYFRAMES):
            # Back-pressure, as a camera driver cannot: at most IN_FLIGHT keyframes ahead of the
            # builder, so a slow machine delays the test instead of overflowing its queue.
            assert wait_for_progress(added, k - IN_FLIGHT, TIMEOUT_S), _state(builder)
            probe.send_keyframe(k)
            time.sleep(0.01)
        assert wait_for_progress(added, KEYFRAMES, TIMEOUT_S), _state(builder)
        reply = call_service(probe.node, Trigger, '/build_map/save', Trigger.Request())
        assert reply.success and f'saved {KEYFRAMES} places' in reply.message
        assert wait_for_progress(lambda: len(localize.localizer.database), KEYFRAMES, TIMEOUT_S)
    finally:
        probe.stop()
        querying.join()


def _check_answers(probe: Probe, localize: LocalizeNode) -> None:
    """Every candidate carries the stamp and pose of its map id; sizes seen only grow."""
    answers = probe.answers()
    assert answers
    for answer in answers:
        for c in answer.candidates:
            assert c.map_stamp_ns == _map_stamp(c.map_id) and c.pose.position[0] == c.map_id
    sizes = [int(d['map_size']) for d in probe.monitor.messages('diagnostics')]
    assert sizes == sorted(sizes) and sizes[-1] == KEYFRAMES
    stats = localize.stats
    assert stats.counter('map_reload_failures') == 0 and stats.rejections() == {}
    assert stats.counter('map_reloads') >= 5          # the map was reloaded while it grew


def _check_final_map(map_path: str, localize: LocalizeNode) -> None:
    """The saved map holds every keyframe: stamps, poses and the model's own descriptors."""
    model = SlowPoolingModel()
    reference = Localizer(model, MapDatabase(model.spec), LocalizerConfig(device='cpu'))
    want, _ = reference.describe([place_image(k) for k in range(KEYFRAMES)])
    saved = MapDatabase.load(map_path, expected_spec=model.spec)
    assert [e.stamp_ns for e in saved.entries] == [_map_stamp(k) for k in range(KEYFRAMES)]
    assert [e.pose.position[0] for e in saved.entries] == list(range(KEYFRAMES))
    np.testing.assert_allclose(saved.descriptors, want, atol=1e-6)
    np.testing.assert_array_equal(localize.localizer.database.descriptors, saved.descriptors)


def test_build_map_and_localize_share_a_growing_map(tmp_path) -> None:
    """build_map adds and autosaves keyframes while localize watches, reloads and answers.

    No reload fails, no input is rejected, every answer is consistent with the map, the map
    sizes localize reports only grow, and the final map holds every keyframe sent, which
    localize then uses (each place found as itself).
    """
    map_path = str(tmp_path / 'map')
    graph = RosGraph(domain_id(60))
    try:
        localize, builder = _nodes(graph, map_path)
        probe = Probe(graph)
        assert wait_for(probe.connected, TIMEOUT_S)
        _build_while_querying(probe, localize, builder)
        assert builder.stats.rejections() == {} and builder.stats.counter('saves') >= 3
        graph.remove(builder)
        for place in (0, KEYFRAMES // 2, KEYFRAMES - 1):
            stamp = probe.send_query(place)
            assert probe.monitor.wait_until(lambda m: any(
                decode_matches(x).stamp_ns == stamp for x in m.messages('matches')), TIMEOUT_S)
            got = [a for a in probe.answers() if a.stamp_ns == stamp][0]
            assert got.candidates[0].map_id == place
        _check_answers(probe, localize)
        _check_final_map(map_path, localize)
    finally:
        graph.close()
