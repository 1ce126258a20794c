"""Start-up and shut-down of the ROS entry points as separate processes.

A node that cannot start prints one FATAL line naming the parameter and the fix and exits 1
without a traceback; a started node logs one ``<name> ready: ...`` summary line; ``--help``
prints usage (the node parameters included) and exits 0 without starting anything; SIGINT stops
``build_map`` with status 0 after saving the map, without "Failed to publish log message to
rosout".
"""

import os
import re
import signal
import subprocess
import sys

import pytest
from rclpy.node import Node
from ros_harness import (build_localizer, domain_id, map_stamp_ns, ModuleProcess, place_image,
                         place_pose, REPO_ROOT, RosGraph, tiny_model)
import torch
from vpr_ros.data.frame import Frame
from vpr_ros.map.database import MapDatabase
from vpr_ros.models.checkpoint import save_checkpoint
from vpr_ros.ros.node_config import NODE_GROUPS
from vpr_ros.ros.output_monitor import OutputMonitor
from vpr_ros.ros.parameters import group_parameter_names
from vpr_ros.ros.tools.bag_player import BagPlayer, PlayerConfig


pytestmark = pytest.mark.ros

DOMAIN = domain_id(11)
PROCESS_S = 180.0
"""Hang guard only: a process that has not exited (or printed a line) by then fails the test."""
LOCALIZE = 'vpr_ros.ros.localize_node'
BUILD_MAP = 'vpr_ros.ros.build_map_node'
ROSOUT_FAILURE = 'Failed to publish log message to rosout'


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """Return a checkpoint of the small model, a 3-place map made with it, a folder not a map."""
    root = tmp_path_factory.mktemp('startup')
    checkpoint = str(save_checkpoint(tiny_model(), root / 'tiny.safetensors'))
    build_localizer(range(3)).database.save(root / 'map')
    (root / 'not_a_map').mkdir()
    (root / 'not_a_map' / 'notes.txt').write_text('no manifest here\n')
    return {'checkpoint': checkpoint, 'map': str(root / 'map'),
            'not_a_map': str(root / 'not_a_map'), 'root': root}


def _failure_cases(files) -> dict:
    """Return case -> (module, ROS arguments, the parameter the FATAL line must name)."""
    checkpoint, root = files['checkpoint'], files['root']
    cases = {
        'missing_checkpoint': (LOCALIZE, ['-p', f'checkpoint:={root}/missing.safetensors'],
                               'checkpoint'),
        'map_path_not_a_map': (LOCALIZE, ['-p', f'checkpoint:={checkpoint}',
                                          '-p', f'map_path:={files["not_a_map"]}'], 'map_path'),
        'map_of_another_model': (LOCALIZE, ['-p', 'model:=efficientnet_lite0_gem',
                                            '-p', f'map_path:={files["map"]}'], 'map_path'),
        'device_not_a_choice': (LOCALIZE, ['-p', f'checkpoint:={checkpoint}',
                                           '-p', 'localizer.device:=gpu'], 'localizer.device'),
        'build_map_without_map_path': (BUILD_MAP, ['-p', f'checkpoint:={checkpoint}'],
                                       'map_path'),
        'build_map_path_not_a_map': (BUILD_MAP, ['-p', f'checkpoint:={checkpoint}',
                                                 '-p', f'map_path:={files["not_a_map"]}'],
                                     'map_path'),
    }
    if not torch.cuda.is_available():
        cases['cuda_without_cuda'] = (LOCALIZE, ['-p', f'checkpoint:={checkpoint}',
                                                 '-p', 'localizer.device:=cuda'],
                                      'localizer.device')
    return cases


@pytest.fixture(scope='module')
def failures(files):
    """Run every failing start-up at once; return case -> (parameter, exit status, output)."""
    cases = _failure_cases(files)
    processes = {name: ModuleProcess(module, ['--ros-args', *args], DOMAIN)
                 for name, (module, args, _) in cases.items()}
    results = {}
    for name, process in processes.items():
        code = process.wait(PROCESS_S)
        results[name] = (cases[name][2], code, process.output)
    return results


@pytest.mark.parametrize('case', ['missing_checkpoint', 'map_path_not_a_map',
                                  'map_of_another_model', 'device_not_a_choice',
                                  'cuda_without_cuda', 'build_map_without_map_path',
                                  'build_map_path_not_a_map'])
def test_start_up_failure_is_one_fatal_line_naming_the_parameter(failures, case) -> None:
    """Exit 1 with exactly one FATAL line that names the parameter and the fix, no traceback."""
    if case not in failures:
        pytest.skip('CUDA is available: localizer.device:=cuda starts')
    parameter, code, output = failures[case]
    fatal = [line for line in output.splitlines() if 'FATAL' in line]
    assert code == 1, output
    assert len(fatal) == 1, output
    assert f'parameter {parameter}=' in fatal[0] and 'fix: ' in fatal[0], fatal[0]
    assert 'Traceback' not in output and ROSOUT_FAILURE not in output, output


def _console_scripts() -> dict:
    """Return the console scripts of setup.py that live in vpr_ros/ros: name -> module."""
    setup = (REPO_ROOT / 'setup.py').read_text()
    found = dict(re.findall(r"'([\w-]+) = (vpr_ros\.ros\.[\w.]+):main'", setup))
    assert {'localize', 'build_map', 'vpr-bag-play'} <= set(found), found
    return found


def test_help_of_every_ros_entry_point_prints_usage_and_starts_nothing() -> None:
    """``--help`` (and ``-h`` for the nodes) prints usage and exits 0 without starting a node.

    The node usage lists every declared parameter (generated from the config dataclasses) and
    an example ``--ros-args -p name:=value`` command.
    """
    scripts = _console_scripts()
    runs = {(name, flag): ModuleProcess(module, [flag], DOMAIN)
            for name, module in scripts.items()
            for flag in (('--help', '-h') if name in NODE_GROUPS else ('--help',))}
    for (name, flag), process in runs.items():
        code = process.wait(PROCESS_S)
        output = process.output
        assert code == 0, f'{name} {flag}: {output}'
        assert output.lstrip().startswith('usage:') and 'Traceback' not in output, output
        assert 'ready:' not in output and '[INFO]' not in output and '[WARN]' not in output
        if name in NODE_GROUPS:
            assert f'usage: {name}' in output
            assert re.search(rf'\n  {name} --ros-args -p map_path:=\S+', output), output
            missing = [p for p in group_parameter_names(NODE_GROUPS[name])
                       if f'\n  {p} (' not in output]
            assert not missing, f'{name} --help lacks {missing}'


@pytest.mark.parametrize('name', sorted(NODE_GROUPS))
def test_node_help_needs_no_model_code(name) -> None:
    """The nodes answer ``--help`` without importing torch (so it is quick)."""
    module = _console_scripts()[name]
    check = (f'import sys; sys.argv = [{name!r}, "--help"]; from {module} import main; '
             'code = main(); sys.exit(3 if "torch" in sys.modules else code)')
    result = subprocess.run([sys.executable, '-c', check], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=PROCESS_S,
                            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr


def test_node_rejects_arguments_outside_ros_args() -> None:
    """A stray argument before ``--ros-args`` exits 2 with a hint instead of being ignored."""
    process = ModuleProcess(LOCALIZE, ['--map', '/somewhere'], DOMAIN)
    assert process.wait(PROCESS_S) == 2
    assert '--ros-args' in process.output and 'Traceback' not in process.output


def test_localize_without_map_says_so_and_stops_on_sigterm(files) -> None:
    """Without map_path the node says no map is loaded and how to set one; SIGTERM exits 0."""
    process = ModuleProcess(LOCALIZE, ['--ros-args', '-p', f'checkpoint:={files["checkpoint"]}',
                                       '-p', 'localizer.device:=cpu'], DOMAIN)
    try:
        assert process.wait_for_line('localize ready:', PROCESS_S), process.output
    finally:
        code = process.stop(signal.SIGTERM)
    output = process.output
    assert code == 0, output
    assert 'no map loaded (map_path is empty)' in output and 'map_path:=' in output
    assert 'does not exist' not in output
    ready = [line for line in output.splitlines() if 'localize ready:' in line]
    assert len(ready) == 1 and 'no map' in ready[0] and 'device cpu' in ready[0], output
    assert 'Traceback' not in output and ROSOUT_FAILURE not in output, output


def test_build_map_saves_and_stops_cleanly_on_sigint(files) -> None:
    """SIGINT stops build_map with status 0 after saving what it received, logging no rosout error.

    The ready line names the model, device and the new map; the images and poses received before
    the signal are paired and saved as the map.
    """
    map_path = files['root'] / 'built_map'
    process = ModuleProcess(BUILD_MAP, [
        '--ros-args', '-p', f'map_path:={map_path}', '-p', f'checkpoint:={files["checkpoint"]}',
        '-p', 'localizer.device:=cpu', '-p', 'image_topic:=/startup/image',
        '-p', 'pose_topic:=/startup/odom', '-p', 'reliability:=reliable',
        '-p', 'diagnostics_period_s:=0.1'], DOMAIN)
    frames = [Frame(map_stamp_ns(p), place_image(p), place_pose(p)) for p in range(4)]
    graph = RosGraph(DOMAIN)
    try:
        assert process.wait_for_line('build_map ready:', PROCESS_S), process.output
        monitor = OutputMonitor(graph.add(Node('startup_probe', context=graph.context)),
                                '/build_map', outputs=())
        player = BagPlayer(PlayerConfig(image_topic='/startup/image', pose_topic='/startup/odom',
                                        lock_step=False, speed=0.0), context=graph.context,
                           node_name='startup_player')
        try:
            assert player.wait_for_peers()
            assert player.play(frames).published == len(frames)
            assert monitor.wait_until(
                lambda m: int(m.latest_diagnostics().get('received', 0)) == len(frames)
                and int(m.latest_diagnostics().get('poses', 0)) == len(frames), PROCESS_S)
        finally:
            player.close()
    finally:
        code = process.stop(signal.SIGINT)
        graph.close()
    output = process.output
    assert code == 0, output
    assert ROSOUT_FAILURE not in output and 'Traceback' not in output, output
    ready = [line for line in output.splitlines() if 'build_map ready:' in line]
    assert len(ready) == 1 and f'new map {map_path}' in ready[0] and 'device cpu' in ready[0]
    assert f'saved map {map_path}: {len(frames)} places' in output, output
    saved = MapDatabase.load(map_path, expected_spec=tiny_model().spec)
    assert [e.stamp_ns for e in saved.entries] == [f.stamp_ns for f in frames]
