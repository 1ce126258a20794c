"""The live demo's ROS half on a small generated sample: every output topic reports arrivals."""

import argparse
from dataclasses import dataclass
from pathlib import Path

import pytest
from ros_harness import (build_localizer, domain_id, map_stamp_ns, place_image, place_pose,
                         tiny_model)
from vpr_ros.data.bag import write_frames
from vpr_ros.data.frame import Frame
from vpr_ros.ros.tools.demo_live import run_live

pytestmark = pytest.mark.ros

PLACES = range(6)


@dataclass(frozen=True)
class Sample:
    """The fields of ``vpr_ros.sample.renderer.SamplePaths`` the live demo reads."""

    map_bag: Path
    query_bag: Path
    image_topic: str = 'camera/image_raw'
    pose_topic: str = 'odom'


def test_live_demo_prints_every_output_topic(tmp_path, monkeypatch, capsys) -> None:
    """Print a line per output topic with arrivals, and the accuracy.

    Playing a query bag lock-step into the node answers every frame, and every best match is
    correct (each query is a shifted view of a mapped place).
    """
    tiny_model()
    monkeypatch.setenv('ROS_DOMAIN_ID', str(domain_id(6)))
    frames = [Frame(map_stamp_ns(p) + 10**12, place_image(p, 1), place_pose(p)) for p in PLACES]
    query_bag = write_frames(tmp_path / 'query', frames, 'camera/image_raw', 'odom')
    localizer = build_localizer(PLACES)
    localizer.database.save(tmp_path / 'map')
    args = argparse.Namespace(real_time=False, speed=1.0, radius_m=0.5)
    assert run_live(localizer, Sample(tmp_path / 'unused', query_bag), tmp_path / 'map',
                    args) == 0
    out = capsys.readouterr().out
    assert f'played {len(PLACES)} query frames' in out and '(0 unanswered)' in out
    for topic in ('pose', 'loop_closure', 'matches', 'markers', 'debug_image'):
        line = next(s for s in out.splitlines() if s.strip().startswith(f'/localize/{topic}:'))
        assert int(line.split(': ')[1].split()[0]) > 0, line
    assert f'best match within 0.5 m: {len(PLACES)}/{len(PLACES)} query frames' in out
    assert '/diagnostics:' in out
