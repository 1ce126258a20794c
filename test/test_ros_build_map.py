"""build_map from a published bag sequence, then localize a second sequence (real rclpy)."""

import math

from nav_msgs.msg import Odometry
import pytest
from rclpy.node import Node
from rclpy.parameter import Parameter
from ros_harness import (call_service, domain_id, map_stamp_ns, place_image,
                         place_pose, RosGraph, tiny_model, wait_for)
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from std_srvs.srv import Trigger
from vpr_ros.data.bag import read_frames, write_frames
from vpr_ros.data.frame import Frame
from vpr_ros.map.database import MapDatabase
from vpr_ros.models.checkpoint import save_checkpoint
from vpr_ros.ros.build_map_node import BuildMapNode
from vpr_ros.ros.conversions import image_to_msg, ns_to_stamp, pose_to_msg
from vpr_ros.ros.localize_node import LocalizeNode
from vpr_ros.ros.matches import decode_matches
from vpr_ros.ros.output_monitor import OutputMonitor
from vpr_ros.ros.tools.bag_player import BagPlayer, PlayerConfig


pytestmark = pytest.mark.ros

PLACES = range(12)
MIN_DISTANCE_M = 1.5
TIMEOUT_S = 30.0
QUERY_OFFSET_NS = 3600 * 10**9


def _frames(variant: int, offset_ns: int = 0) -> list:
    return [Frame(map_stamp_ns(p) + offset_ns, place_image(p, variant), place_pose(p),
                  f'place {p}') for p in PLACES]


def _expected_keyframes() -> list:
    """Greedy distance selection computed independently of KeyframeGate."""
    kept = [0]
    for place in PLACES[1:]:
        if math.dist(place_pose(place).position, place_pose(kept[-1]).position) >= \
                MIN_DISTANCE_M:
            kept.append(place)
    return kept


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    """Return a graph, a checkpoint of the small model, and the two traversals as bags."""
    root = tmp_path_factory.mktemp('build_map')
    checkpoint = save_checkpoint(tiny_model(), root / 'tiny.safetensors')
    write_frames(root / 'map_bag', _frames(0), 'camera/image_raw', 'odom')
    write_frames(root / 'query_bag', _frames(1, QUERY_OFFSET_NS), 'camera/image_raw', 'odom')
    graph = RosGraph(domain_id(3))
    yield graph, root, str(checkpoint)
    graph.close()


def _build_map_node(graph, map_path: str, checkpoint: str) -> BuildMapNode:
    params = [Parameter('map_path', value=map_path), Parameter('checkpoint', value=checkpoint),
              Parameter('keyframe.min_distance_m', value=MIN_DISTANCE_M),
              Parameter('localizer.device', value='cpu'),
              Parameter('reliability', value='reliable'),
              Parameter('diagnostics_period_s', value=0.2)]
    return graph.add(BuildMapNode(context=graph.context, parameter_overrides=params))


def test_build_map_from_bag_then_localize_second_traversal(setup) -> None:
    """Build a map live, watch it grow from localize, then localize the second traversal.

    Keyframes by distance enter the map; a localize node watching the same map reloads it while
    it grows; the second traversal played lock-step is localized at the mapped places.
    """
    graph, root, checkpoint = setup
    map_path = str(root / 'map')
    localize = graph.add(LocalizeNode(context=graph.context, parameter_overrides=[
        Parameter('map_path', value=map_path), Parameter('checkpoint', value=checkpoint),
        Parameter('map_watch_period_s', value=0.2), Parameter('localizer.device', value='cpu'),
        Parameter('localizer.accept_probability', value=0.5),
        Parameter('localizer.temporal_window', value=0),
        Parameter('diagnostics_period_s', value=0.2)]))
    builder = _build_map_node(graph, map_path, checkpoint)
    player = BagPlayer(PlayerConfig(image_topic='image', pose_topic='odom', lock_step=False,
                                    speed=20.0), context=graph.context, node_name='map_player')
    try:
        assert player.wait_for_peers()
        report = player.play(read_frames(root / 'map_bag', 'camera/image_raw', 'odom'))
        assert report.published == len(PLACES)
        expected = _expected_keyframes()
        assert wait_for(lambda: builder.stats.counter('keyframes_added') == len(expected),
                        TIMEOUT_S)
        reply = call_service(builder, Trigger, '/build_map/save', Trigger.Request())
        assert reply.success and f'{len(expected)} places' in reply.message
    finally:
        player.close()
        graph.remove(builder)
    saved = MapDatabase.load(map_path, expected_spec=tiny_model().spec)
    assert [e.stamp_ns for e in saved.entries] == [map_stamp_ns(p) for p in expected]
    assert [e.pose.position for e in saved.entries] == [place_pose(p).position for p in expected]
    assert wait_for(lambda: len(localize.localizer.database) == len(expected), TIMEOUT_S)
    try:
        _localize_second_traversal(graph, root, expected)
    finally:
        graph.remove(localize)


def _localize_second_traversal(graph, root, expected: list) -> None:
    probe = graph.add(Node('query_probe', context=graph.context))
    monitor = OutputMonitor(probe, '/localize', outputs=('matches', 'pose'))
    player = BagPlayer(PlayerConfig(image_topic='image', lock_step=True,
                                    wait_topic='/localize/matches', wait_timeout_s=TIMEOUT_S),
                       context=graph.context, node_name='query_player')
    try:
        assert player.wait_for_peers()
        report = player.play(read_frames(root / 'query_bag', 'camera/image_raw'))
    finally:
        player.close()
    assert (report.published, report.acknowledged, report.timed_out) == (len(PLACES),) * 2 + (0,)
    by_stamp = {d.stamp_ns: d for d in map(decode_matches, monitor.messages('matches'))}
    for place in expected:
        match = by_stamp[map_stamp_ns(place) + QUERY_OFFSET_NS]
        assert match.accepted and match.candidates[0].map_stamp_ns == map_stamp_ns(place)
        assert match.candidates[0].pose.position == place_pose(place).position


def _odometry(stamp_ns: int, place: int) -> Odometry:
    msg = Odometry()
    msg.header.stamp, msg.header.frame_id = ns_to_stamp(stamp_ns), 'odom'
    msg.pose.pose = pose_to_msg(place_pose(place))
    return msg


def test_bad_inputs_are_rejected_and_mapping_continues(setup) -> None:
    """Refuse and count bad inputs, keep mapping, and save at shutdown.

    A NaN pose, an out-of-order pose stamp, an image without a pose in tolerance and an empty
    image are each refused and counted; a good image/pose pair afterwards still becomes a
    keyframe; destroying the node saves the map.
    """
    graph, root, checkpoint = setup
    map_path = str(root / 'map2')
    builder = _build_map_node(graph, map_path, checkpoint)
    probe = graph.add(Node('bad_probe', context=graph.context))
    odom = probe.create_publisher(Odometry, 'odom', 10)
    images = probe.create_publisher(Image, 'image', 10)
    assert wait_for(lambda: odom.get_subscription_count() and images.get_subscription_count())
    t0 = 500 * 10**9
    nan_pose = _odometry(t0, 0)
    nan_pose.pose.pose.orientation.w = math.nan
    cases = [
        ('invalid_pose', lambda: odom.publish(nan_pose)),
        ('out_of_order_stamp', lambda: (odom.publish(_odometry(t0 + 10**9, 0)),
                                        odom.publish(_odometry(t0 + 5 * 10**8, 0)))),
        ('no_pose_within_tolerance', lambda: (
            images.publish(image_to_msg(place_image(0), t0 + 8 * 10**8, 'cam')),
            odom.publish(_odometry(t0 + 2 * 10**9, 1)))),
        ('empty_image', lambda: images.publish(Image(
            encoding='rgb8', header=Header(stamp=ns_to_stamp(t0 + 25 * 10**8))))),
    ]
    for reason, send in cases:
        before = builder.stats.rejections().get(reason, 0)
        send()
        assert wait_for(lambda: builder.stats.rejections().get(reason, 0) == before + 1), reason
    images.publish(image_to_msg(place_image(3), t0 + 3 * 10**9, 'cam'))
    odom.publish(_odometry(t0 + 3 * 10**9 + 10**7, 3))
    assert wait_for(lambda: builder.stats.counter('keyframes_added') == 1, TIMEOUT_S)
    graph.remove(builder)          # destroy_node saves the map
    saved = MapDatabase.load(map_path)
    assert len(saved) == 1 and saved.entry(0).stamp_ns == t0 + 3 * 10**9
    assert saved.entry(0).pose.position == place_pose(3).position
