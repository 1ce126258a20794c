"""The localize node in one process with fixture publishers (real rclpy, model and FAISS)."""

import itertools
import math
import threading

from nav_msgs.msg import Odometry
import numpy as np
import pytest
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient
from rclpy.qos import qos_profile_sensor_data
from ros_harness import (build_localizer, call_service, domain_id, map_stamp_ns,
                         place_image, place_pose, RosGraph, wait_for)
from sensor_msgs.msg import CompressedImage, Image
from std_srvs.srv import SetBool, Trigger
from test_ros_conversions import _malformed
from vpr_ros.map.database import MapDatabase
from vpr_ros.ros.conversions import compressed_to_msg, image_to_msg, pose_to_msg, stamp_to_ns
from vpr_ros.ros.localize_node import LocalizeNode
from vpr_ros.ros.matches import decode_matches
from vpr_ros.ros.output_monitor import OutputMonitor


pytestmark = pytest.mark.ros

PLACES = range(10)
STAMPS = itertools.count(1_000_000_000_000, 100_000_000)   # strictly increasing, 0.1 s apart
TIMEOUT_S = 20.0
NODE_PARAMETERS = [Parameter('map_frame', value='world'), Parameter('localizer.top_k', value=5),
                   Parameter('localizer.accept_probability', value=0.5),
                   Parameter('localizer.temporal_window', value=0),
                   Parameter('diagnostics_period_s', value=0.2),
                   Parameter('min_position_stddev_m', value=0.25)]


class Fixture:
    """The node under test, a compressed-input twin, and a probe node with publishers."""

    def __init__(self) -> None:
        self.graph = RosGraph(domain_id(2))
        self.localizer = build_localizer(PLACES)
        context = self.graph.context
        self.node = self.graph.add(LocalizeNode(self.localizer, context=context,
                                                parameter_overrides=NODE_PARAMETERS))
        self.compressed = self.graph.add(LocalizeNode(
            self.localizer, context=context, namespace='/cmp',
            parameter_overrides=NODE_PARAMETERS + [Parameter('use_compressed', value=True)]))
        self.probe = self.graph.add(Node('probe', context=context))
        self.monitor = OutputMonitor(self.probe, '/localize')
        self.cmp_monitor = OutputMonitor(self.probe, '/cmp/localize', outputs=('matches',))
        self.images = self.probe.create_publisher(Image, 'image', 10)
        self.jpegs = self.probe.create_publisher(CompressedImage, '/cmp/image/compressed', 10)
        self.odom = self.probe.create_publisher(Odometry, 'odom', 10)
        assert wait_for(lambda: self.images.get_subscription_count() > 0
                        and self.jpegs.get_subscription_count() > 0, TIMEOUT_S)

    def send(self, image: np.ndarray, frame_id: str = 'cam') -> int:
        """Publish ``image`` with the next stamp and return the stamp."""
        stamp = next(STAMPS)
        self.images.publish(image_to_msg(image, stamp, frame_id))
        return stamp

    def matches(self, stamp: int, monitor=None):
        """Wait for and return the decoded ~/matches of ``stamp``."""
        monitor = monitor or self.monitor
        found = []

        def arrived(m) -> bool:
            found[:] = [d for d in map(decode_matches, m.messages('matches'))
                        if d.stamp_ns == stamp]
            return bool(found)
        assert monitor.wait_until(arrived, TIMEOUT_S), f'no matches for stamp {stamp}'
        return found[0]

    def set_parameters(self, *params: Parameter) -> list:
        """Set parameters of /localize through its ROS service; return the results."""
        client = AsyncParameterClient(self.probe, '/localize')
        assert client.wait_for_services(timeout_sec=TIMEOUT_S)
        future = client.set_parameters(list(params))
        assert wait_for(future.done, TIMEOUT_S)
        return future.result().results


@pytest.fixture(scope='module')
def ros() -> Fixture:
    """One graph for the whole module (model and map are built once)."""
    fixture = Fixture()
    yield fixture
    fixture.graph.close()


def test_matches_pose_and_loop_closure_follow_the_query(ros: Fixture) -> None:
    """Match every place to itself, with the query stamp and the map frame on every output.

    The ranking equals the core localizer's own result for the same image.
    """
    stamps = []
    for place in PLACES:
        query = place_image(place, variant=1)
        stamp = ros.send(query)
        stamps.append(stamp)
        got = ros.matches(stamp)
        want = ros.localizer.localize(query, stamp)
        assert got.frame_id == 'world' and got.accepted == want.accepted
        assert [c.map_id for c in got.candidates] == [c.map_id for c in want.candidates]
        np.testing.assert_allclose([c.global_similarity for c in got.candidates],
                                   [c.global_similarity for c in want.candidates], atol=1e-5)
        assert got.candidates[0].map_id == place and got.accepted
        assert got.candidates[0].map_stamp_ns == map_stamp_ns(place)
        assert len(got.candidates) == 5
    assert wait_for(lambda: len(ros.monitor.messages('loop_closure')) >= len(PLACES))
    poses = {stamp_to_ns(p.header.stamp): p for p in ros.monitor.messages('pose')}
    loops = {round(m.data[0] * 1e9): m.data[1] for m in ros.monitor.messages('loop_closure')}
    for place, stamp in zip(PLACES, stamps):
        pose = poses[stamp]
        assert pose.header.frame_id == 'world'
        assert pose.pose.pose.position.x == pytest.approx(place_pose(place).position[0])
        cov = np.array(pose.pose.covariance).reshape(6, 6)
        assert cov[0, 0] >= 0.25 ** 2 and np.all(np.linalg.eigvalsh(cov) > 0)
        assert loops[stamp] == pytest.approx(map_stamp_ns(place) / 1e9)


def test_best_effort_camera_publisher_connects(ros: Fixture) -> None:
    """A sensor-data (best effort) camera publisher is answered."""
    camera = ros.probe.create_publisher(Image, 'image', qos_profile_sensor_data)
    try:
        assert wait_for(lambda: camera.get_subscription_count() > 0, TIMEOUT_S)
        stamp = next(STAMPS)
        for _ in range(3):   # best effort: allow for a lost first sample during matching
            camera.publish(image_to_msg(place_image(3, 2), stamp, 'cam'))
            if ros.monitor.wait_until(lambda m: any(
                    decode_matches(x).stamp_ns == stamp for x in m.messages('matches')), 2.0):
                break
        assert ros.matches(stamp).candidates[0].map_id == 3
    finally:
        ros.probe.destroy_publisher(camera)


def test_compressed_input(ros: Fixture) -> None:
    """With use_compressed the node reads <image_topic>/compressed (PNG: lossless at 96 px)."""
    stamp = next(STAMPS)
    ros.jpegs.publish(compressed_to_msg(place_image(6, 1), stamp, 'cam', 'png'))
    assert ros.matches(stamp, ros.cmp_monitor).candidates[0].map_id == 6


def _rejections(node: LocalizeNode, reason: str) -> int:
    return node.stats.rejections().get(reason, 0)


def _still_answers(ros: Fixture) -> None:
    stamp = ros.send(place_image(4, 1))
    assert ros.matches(stamp).candidates[0].map_id == 4


@pytest.mark.parametrize('reason', ['bad_step', 'truncated_data', 'unsupported_encoding',
                                    'empty_image'])
def test_malformed_raw_images_are_rejected_and_counted(ros: Fixture, reason: str) -> None:
    """Each malformed Image is refused, counted in /diagnostics, and the node keeps answering."""
    before = _rejections(ros.node, reason)
    msg = _malformed()[reason]
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(next(STAMPS), 1_000_000_000)
    ros.images.publish(msg)
    key = f'rejected.{reason}'
    assert ros.monitor.wait_until(
        lambda m: int(m.latest_diagnostics().get(key, 0)) == before + 1, TIMEOUT_S)
    _still_answers(ros)


@pytest.mark.parametrize('reason', ['corrupt_compressed', 'image_too_large'])
def test_malformed_compressed_images_are_rejected_and_counted(ros: Fixture, reason: str) -> None:
    """A corrupt JPEG and a PNG whose header claims 10^10 pixels are refused; node answers."""
    before = _rejections(ros.compressed, reason)
    msg = _malformed()[reason]
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(next(STAMPS), 1_000_000_000)
    ros.jpegs.publish(msg)
    assert ros.cmp_monitor.wait_until(lambda m: int(m.latest_diagnostics().get(
        f'rejected.{reason}', 0)) == before + 1, TIMEOUT_S)
    stamp = next(STAMPS)
    ros.jpegs.publish(compressed_to_msg(place_image(2, 1), stamp, 'cam', 'png'))
    assert ros.matches(stamp, ros.cmp_monitor).candidates[0].map_id == 2


def test_out_of_order_stamp_and_nan_odometry_are_rejected(ros: Fixture) -> None:
    """An image older than the last one, and a NaN odometry pose, are refused and counted."""
    stale = next(STAMPS)
    newest = ros.send(place_image(1, 1))
    ros.matches(newest)
    before = _rejections(ros.node, 'out_of_order_stamp')
    ros.images.publish(image_to_msg(place_image(1, 1), stale, 'cam'))
    assert wait_for(lambda: _rejections(ros.node, 'out_of_order_stamp') == before + 1)
    odom = Odometry()
    odom.pose.pose = pose_to_msg(place_pose(1))
    odom.pose.pose.position.y = math.nan
    before = _rejections(ros.node, 'invalid_pose')
    ros.odom.publish(odom)
    assert ros.monitor.wait_until(lambda m: int(m.latest_diagnostics().get(
        'rejected.invalid_pose', 0)) == before + 1, TIMEOUT_S)
    _still_answers(ros)


def test_stale_frames_are_dropped_and_the_newest_is_processed(ros: Fixture) -> None:
    """A burst faster than inference drops frames; the last frame of the burst is answered.

    The model is held busy (its lock taken) while the burst arrives, so the burst outruns
    inference whatever the machine's load: the test waits on the node's counters, not on time.
    """
    stats = ros.node.stats
    base = {k: stats.counter(k) for k in ('received', 'processed', 'dropped_stale')}
    with ros.localizer._model_lock:      # the worker blocks in describe until the burst is in
        stamps = [ros.send(place_image(i % 10, 1)) for i in range(30)]
        wait_for(lambda: stats.counter('received') - base['received'] == 30, TIMEOUT_S)
    ros.matches(stamps[-1])

    def settled() -> bool:   # every received frame was either processed or dropped as stale
        received = stats.counter('received') - base['received']
        done = (stats.counter('processed') - base['processed']
                + stats.counter('dropped_stale') - base['dropped_stale'])
        return 0 < received <= 30 and done == received
    assert wait_for(settled, TIMEOUT_S)
    assert stats.counter('processed') - base['processed'] < 30
    dropped = stats.counter('dropped_stale')
    assert dropped > base['dropped_stale']
    assert ros.monitor.wait_until(
        lambda m: int(m.latest_diagnostics().get('dropped_stale', 0)) == dropped, TIMEOUT_S)


def test_runtime_parameters_change_top_k_and_threshold(ros: Fixture) -> None:
    """top_k and accept_probability change at run time; an invalid value is refused."""
    results = ros.set_parameters(Parameter('localizer.top_k', value=2))
    assert results[0].successful
    assert len(ros.matches(ros.send(place_image(5, 1))).candidates) == 2
    assert ros.set_parameters(Parameter('localizer.accept_probability', value=0.9999))[0] \
        .successful
    stamp = ros.send(place_image(5, 1))
    assert not ros.matches(stamp).accepted
    refused = ros.set_parameters(Parameter('localizer.top_k', value=-3))[0]
    assert not refused.successful and 'top_k' in refused.reason
    assert all(ros.set_parameters(Parameter('localizer.top_k', value=5),
                                  Parameter('localizer.accept_probability', value=0.5)))
    assert ros.matches(ros.send(place_image(5, 1))).accepted


def test_exclude_recent_drops_places_close_in_time(ros: Fixture) -> None:
    """With exclude_recent_s, places mapped shortly before the query are never returned."""
    stamp = next(STAMPS)
    gap_s = (stamp - map_stamp_ns(5)) / 1e9 + 0.25       # places 5..9 are 'recent'
    assert ros.set_parameters(Parameter('exclude_recent_s', value=gap_s))[0].successful
    try:
        ros.images.publish(image_to_msg(place_image(7, 1), stamp, 'cam'))
        got = ros.matches(stamp)
        assert got.candidates and all(c.map_id < 5 for c in got.candidates)
        stamp = ros.send(place_image(2, 1))
        assert ros.matches(stamp).candidates[0].map_id == 2
    finally:
        ros.set_parameters(Parameter('exclude_recent_s', value=0.0))


def test_keyframe_gating_by_time_and_odometry_distance(ros: Fixture) -> None:
    """min_interval_s skips frames too close in time; min_distance_m needs odometry motion."""
    stats = ros.node.stats
    ros.set_parameters(Parameter('keyframe.min_interval_s', value=0.25))
    next(STAMPS), next(STAMPS), next(STAMPS)        # 0.3 s after the last processed frame
    first = ros.send(place_image(0, 1))
    ros.matches(first)
    skipped = stats.counter('skipped_keyframe_gate')
    ros.send(place_image(0, 1))                     # 0.1 s later: skipped
    assert wait_for(lambda: stats.counter('skipped_keyframe_gate') == skipped + 1)
    next(STAMPS)
    ros.matches(ros.send(place_image(0, 1)))        # 0.3 s after the keyframe: processed
    ros.set_parameters(Parameter('keyframe.min_interval_s', value=0.0),
                       Parameter('keyframe.min_distance_m', value=2.0))
    for x, expect_answer in ((0.0, True), (1.0, False), (2.5, True)):
        odom = Odometry()
        odom.header.stamp.sec, odom.header.stamp.nanosec = divmod(next(STAMPS), 1_000_000_000)
        odom.pose.pose = pose_to_msg(place_pose(0))
        odom.pose.pose.position.x = x
        ros.odom.publish(odom)
        assert wait_for(lambda: ros.node._odom.latest() is not None
                        and ros.node._odom.latest().position[0] == x)
        skipped = stats.counter('skipped_keyframe_gate')
        stamp = ros.send(place_image(0, 1))
        if expect_answer:
            ros.matches(stamp)
        else:
            assert wait_for(lambda: stats.counter('skipped_keyframe_gate') == skipped + 1)
    ros.set_parameters(Parameter('keyframe.min_distance_m', value=0.0))


def test_debug_image_and_markers_when_subscribed(ros: Fixture) -> None:
    """~/debug_image (query | match) and ~/markers (map places, current match) arrive."""
    debug = OutputMonitor(ros.probe, '/localize', outputs=('debug_image',))
    assert wait_for(lambda: ros.node.debug_pub.get_subscription_count() > 0, TIMEOUT_S)
    stamp = ros.send(place_image(8, 1), frame_id='camera_optical')
    ros.matches(stamp)
    assert debug.wait_until(lambda m: any(stamp_to_ns(x.header.stamp) == stamp
                                          for x in m.messages('debug_image')), TIMEOUT_S)
    image = [x for x in debug.messages('debug_image') if stamp_to_ns(x.header.stamp) == stamp][0]
    assert (image.width, image.height, image.header.frame_id) == (192, 72, 'camera_optical')
    assert ros.monitor.wait_until(lambda m: any(
        mk.ns == 'map_places' and len(mk.points) == len(PLACES)
        for arr in m.messages('markers') for mk in arr.markers), TIMEOUT_S)
    spheres = [mk for arr in ros.monitor.messages('markers') for mk in arr.markers
               if mk.ns == 'match' and mk.id == 0 and stamp_to_ns(mk.header.stamp) == stamp]
    assert spheres and spheres[0].pose.position.x == pytest.approx(8.0)


def test_diagnostics_report_rates_latencies_map_and_device(ros: Fixture) -> None:
    """/diagnostics names the node and carries the documented keys."""
    ros.send(place_image(2, 1))
    assert ros.monitor.wait_until(lambda m: 'latency_ms.total.mean' in m.latest_diagnostics(),
                                  TIMEOUT_S)
    values = ros.monitor.latest_diagnostics()
    assert values['map_size'] == str(len(PLACES)) and values['device'] == 'cpu'
    for key in ('input_rate_hz', 'processed', 'dropped_stale', 'rejected',
                'latency_ms.describe.mean', 'latency_ms.end_to_end.max', 'result.accepted'):
        assert key in values, key
    assert float(values['latency_ms.total.mean']) > 0.0


def test_a_changed_map_loads_while_the_node_keeps_working(ros: Fixture, tmp_path,
                                                          monkeypatch) -> None:
    """The map watch loads a rewritten map off the executor: services and frames go on.

    The real load is held until the test lets it go. Meanwhile ``~/pause`` answers and a frame
    is localized against the map in use; then the bigger map takes over.
    """
    ros.localizer.database.save(tmp_path / 'map')
    entered, release = threading.Event(), threading.Event()
    real_load = MapDatabase.load

    def held_load(*args, **kwargs):
        entered.set()
        assert release.wait(TIMEOUT_S)
        return real_load(*args, **kwargs)

    node = ros.graph.add(LocalizeNode(build_localizer(PLACES), context=ros.graph.context,
                                      namespace='/watch', parameter_overrides=NODE_PARAMETERS + [
                                          Parameter('image_topic', value='/watch/image'),
                                          Parameter('map_path', value=str(tmp_path / 'map')),
                                          Parameter('map_watch_period_s', value=0.05)]))
    monitor = OutputMonitor(ros.probe, '/watch/localize', outputs=('matches',))
    images = ros.probe.create_publisher(Image, '/watch/image', 10)
    try:
        monkeypatch.setattr(MapDatabase, 'load', held_load)
        build_localizer(range(12)).database.save(tmp_path / 'map')
        assert entered.wait(TIMEOUT_S), 'the map watch did not start a load'
        reply = call_service(ros.probe, SetBool, '/watch/localize/pause',
                             SetBool.Request(data=False), timeout_s=5.0)
        assert reply.success                          # the executor is free during the load
        assert wait_for(lambda: images.get_subscription_count() > 0, TIMEOUT_S)
        stamp = next(STAMPS)
        images.publish(image_to_msg(place_image(3, 1), stamp, 'cam'))
        old = ros.matches(stamp, monitor)
        assert old.candidates[0].map_id == 3 and len(node.localizer.database) == len(PLACES)
        release.set()
        assert wait_for(lambda: len(node.localizer.database) == 12, TIMEOUT_S)
        # The counter follows the swap of the map: wait for it rather than read it at once.
        assert wait_for(lambda: node.stats.counter('map_reloads') >= 1, TIMEOUT_S)
        assert node.stats.counter('map_reloads') == 1
        assert node.stats.counter('map_reload_failures') == 0
    finally:
        release.set()
        ros.probe.destroy_publisher(images)
        ros.graph.remove(node)


def test_pause_and_reload_map(ros: Fixture, tmp_path) -> None:
    """~/pause stops processing; ~/reload_map loads a bigger map saved on disk."""
    reply = call_service(ros.probe, SetBool, '/localize/pause', SetBool.Request(data=True))
    assert reply.success
    skipped = ros.node.stats.counter('skipped_paused')
    ros.send(place_image(1, 1))
    assert wait_for(lambda: ros.node.stats.counter('skipped_paused') == skipped + 1)
    assert call_service(ros.probe, SetBool, '/localize/pause', SetBool.Request(data=False)).success
    bigger = build_localizer(range(12))
    bigger.database.save(tmp_path / 'map')
    assert ros.set_parameters(Parameter('map_path', value=str(tmp_path / 'map')))[0].successful
    reply = call_service(ros.probe, Trigger, '/localize/reload_map', Trigger.Request())
    assert reply.success and '12 places' in reply.message
    assert ros.matches(ros.send(place_image(11, 1))).candidates[0].map_id == 11
    ros.set_parameters(Parameter('map_path', value=str(tmp_path / 'missing')))
    reply = call_service(ros.probe, Trigger, '/localize/reload_map', Trigger.Request())
    assert not reply.success and 'missing' in reply.message
    _still_answers(ros)
