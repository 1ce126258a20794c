"""The core command-line tools end to end on a small generated image folder and bag."""

import argparse
import csv
import json
from pathlib import Path

from conftest import scene_image, write_utm_folder
import pytest

from vpr_ros.cli import vpr_eval, vpr_localize, vpr_map
from vpr_ros.data.bag import write_frames
from vpr_ros.data.frame import Frame
from vpr_ros.geometry import pose_from_xy_yaw


@pytest.fixture(scope='module')
def folder(tmp_path_factory) -> Path:
    """Six images named with UTM coordinates 10 m apart."""
    return write_utm_folder(tmp_path_factory.mktemp('images'), 6)


def test_map_build_info_localize(folder: Path, tmp_path: Path, capsys) -> None:
    """build -> info -> localize: each image finds itself at rank 0 with its stored pose."""
    map_dir = tmp_path / 'map'
    assert vpr_map.main(['build', str(folder), '--out', str(map_dir), '--batch-size', '4']) == 0
    assert vpr_map.main(['build', str(folder), '--out', str(map_dir)]) == 2  # no overwrite
    assert vpr_map.main(['info', str(map_dir)]) == 0
    info = json.loads(capsys.readouterr().out.split('\n', 1)[1])
    assert (info['places'], info['with_pose'], info['model']) == (6, 6, 'pairvpr_lite')
    out = tmp_path / 'matches.csv'
    assert vpr_localize.main([str(folder), '--map', str(map_dir), '--out', str(out),
                              '--candidates', '3']) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 18
    top = [r for r in rows if r['rank'] == '0']
    assert [int(r['map_id']) for r in top] == list(range(6))
    assert [float(r['map_x']) for r in top] == [500000.0 + 10 * i for i in range(6)]
    assert all(float(r['global_similarity']) > 0.999 for r in top)


def test_localize_bag_to_json(folder: Path, tmp_path: Path) -> None:
    """A rosbag2 query input works like a folder; JSON output carries the same fields."""
    map_dir = tmp_path / 'map'
    assert vpr_map.main(['build', str(folder), '--out', str(map_dir)]) == 0
    frames = [Frame(i * 10**8, scene_image(i), pose_from_xy_yaw(i, 0, 0)) for i in (3, 1)]
    bag = write_frames(tmp_path / 'query_bag', frames, pose_topic='odom', storage='sqlite3')
    out = tmp_path / 'matches.json'
    assert vpr_localize.main([str(bag), '--map', str(map_dir), '--out', str(out),
                              '--pose-topic', 'odom', '--candidates', '1']) == 0
    rows = json.loads(out.read_text())
    # A bag is read in stamp order, whatever the order the frames were written in.
    assert [r['map_id'] for r in rows] == [1, 3]
    assert [r['query_stamp_ns'] for r in rows] == [10**8, 3 * 10**8]


def test_errors_are_reported_not_raised(tmp_path: Path, capsys) -> None:
    """Missing inputs and maps give exit status 1 with a message naming the path."""
    assert vpr_map.main(['build', str(tmp_path / 'nope'), '--out', str(tmp_path / 'm')]) == 1
    assert 'does not exist' in capsys.readouterr().err
    assert vpr_localize.main([str(tmp_path), '--map', str(tmp_path / 'none'),
                              '--out', str(tmp_path / 'x.csv')]) == 1
    assert 'none' in capsys.readouterr().err
    (tmp_path / 'fake_map').mkdir()
    assert vpr_map.main(['info', str(tmp_path / 'fake_map')]) == 1
    assert 'manifest' in capsys.readouterr().err


@pytest.mark.parametrize('module', [vpr_map, vpr_localize, vpr_eval])
def test_every_option_has_help(module) -> None:
    """Every flag has a real help text (no placeholders)."""
    parser = module.build_parser()
    parsers = [parser] + [a.choices[c] for a in parser._actions
                          if isinstance(a, argparse._SubParsersAction) for c in a.choices]
    for p in parsers:
        for action in p._actions:
            if action.dest != 'help':
                assert action.help and len(action.help) > 8, f'{action.dest} lacks help'
