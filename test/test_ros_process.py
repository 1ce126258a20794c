"""The localize node as a separate process (``python -m vpr_ros.ros.localize_node --ros-args``)."""

import os
import signal
import subprocess
import sys

from conftest import REPO_ROOT
from geometry_msgs.msg import PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
import pytest
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from ros_harness import (build_localizer, domain_id, map_stamp_ns, place_image, place_pose,
                         RosGraph, tiny_model, wait_for)
from sensor_msgs.msg import Image
from vpr_ros.data.bag import write_frames
from vpr_ros.data.frame import Frame
from vpr_ros.models.checkpoint import save_checkpoint
from vpr_ros.ros.conversions import image_to_msg, stamp_to_ns
from vpr_ros.ros.matches import decode_matches
from vpr_ros.ros.output_monitor import OutputMonitor


pytestmark = pytest.mark.ros

DOMAIN = domain_id(4)
STARTUP_S = 90.0


def _start(*ros_args: str) -> subprocess.Popen:
    env = dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN),
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get('PYTHONPATH', '')]),
               OMP_NUM_THREADS='1')
    return subprocess.Popen([sys.executable, '-m', 'vpr_ros.ros.localize_node', '--ros-args',
                             *ros_args], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """Return a checkpoint of the small model and a 6-place map built with it."""
    root = tmp_path_factory.mktemp('process')
    checkpoint = save_checkpoint(tiny_model(), root / 'tiny.safetensors')
    build_localizer(range(6)).database.save(root / 'map')
    return str(checkpoint), str(root / 'map')


def test_node_process_answers_with_remapped_pose_and_stops_cleanly(files) -> None:
    """Answer a best-effort camera from a namespaced process and stop cleanly on SIGINT.

    The process answers ~/matches, publishes ~/pose remapped to /initialpose (as for Nav2 AMCL),
    and exits 0.
    """
    checkpoint, map_path = files
    process = _start('-r', '__ns:=/robot', '-r', '~/pose:=/initialpose',
                     '-p', f'map_path:={map_path}', '-p', f'checkpoint:={checkpoint}',
                     '-p', 'image_topic:=camera/image_raw', '-p', 'localizer.device:=cpu',
                     '-p', 'localizer.accept_probability:=0.5',
                     '-p', 'localizer.temporal_window:=0')
    graph = RosGraph(DOMAIN)
    try:
        probe = graph.add(Node('process_probe', context=graph.context))
        monitor = OutputMonitor(probe, '/robot/localize', outputs=('matches',))
        initial = []
        probe.create_subscription(PoseWithCovarianceStamped, '/initialpose', initial.append, 10)
        camera = probe.create_publisher(Image, '/robot/camera/image_raw', qos_profile_sensor_data)
        assert wait_for(lambda: camera.get_subscription_count() > 0 or process.poll() is not None,
                        STARTUP_S) and process.poll() is None, process.stdout.read()
        for place in range(6):
            stamp = 2_000_000_000_000 + place * 10**8
            for _ in range(5):     # best effort: resend until answered
                camera.publish(image_to_msg(place_image(place, 1), stamp, 'cam'))
                if monitor.wait_until(lambda m: any(decode_matches(x).stamp_ns == stamp
                                                    for x in m.messages('matches')), 5.0):
                    break
            got = [d for d in map(decode_matches, monitor.messages('matches'))
                   if d.stamp_ns == stamp][0]
            assert got.candidates[0].map_id == place and got.frame_id == 'map'
        assert wait_for(lambda: len(initial) >= 6, 10.0)
        assert {stamp_to_ns(p.header.stamp) % 10**12 // 10**8: p.pose.pose.position.x
                for p in initial} == {p: place_pose(p).position[0] for p in range(6)}
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=20)
        finally:
            process.kill()
            graph.close()
    assert code == 0


def test_invalid_parameter_stops_the_process_with_a_clear_error(files) -> None:
    """An out-of-range override makes the process exit 1 naming the parameter."""
    checkpoint, map_path = files
    process = _start('-p', 'localizer.top_k:=0', '-p', f'map_path:={map_path}')
    output, _ = process.communicate(timeout=STARTUP_S)
    assert process.returncode == 1
    assert 'localizer.top_k' in output and 'cannot start' in output


def test_bag_player_command_line_publishes_every_frame(files, tmp_path) -> None:
    """Publish every bag frame from the bag player's command line.

    ``python -m vpr_ros.ros.tools.bag_player BAG --real-time`` publishes each frame with its stamp
    and pose (Odometry) to the given topics.
    """
    frames = [Frame(map_stamp_ns(p), place_image(p), place_pose(p)) for p in range(5)]
    bag = write_frames(tmp_path / 'bag', frames, 'camera/image_raw', 'odom')
    graph = RosGraph(DOMAIN)
    try:
        probe = graph.add(Node('player_probe', context=graph.context))
        images, poses = [], []
        probe.create_subscription(Image, '/cam', images.append, 10)
        probe.create_subscription(Odometry, '/pose_out', poses.append, 10)
        env = dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN), PYTHONPATH=str(REPO_ROOT))
        result = subprocess.run(
            [sys.executable, '-m', 'vpr_ros.ros.tools.bag_player', str(bag),
             '--pose-topic', 'odom',
             '--out-image', '/cam', '--out-pose', '/pose_out', '--real-time', '--speed', '20'],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=STARTUP_S)
        assert result.returncode == 0, result.stdout + result.stderr
        assert 'published 5 frames' in result.stdout
        assert wait_for(lambda: len(images) == 5 and len(poses) == 5)
    finally:
        graph.close()
    assert [stamp_to_ns(m.header.stamp) for m in images] == [f.stamp_ns for f in frames]
    assert [m.pose.pose.position.x for m in poses] == [f.pose.position[0] for f in frames]
