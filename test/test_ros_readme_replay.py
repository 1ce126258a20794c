"""The README's localize and replay commands, run verbatim as processes, work together.

The commands are parsed from README.md ("### 2. Localize"), so the test follows the README. Only
what the README leaves to the reader changes: ``$HOME/maps/office`` and ``run2_bag`` become a
test map and a test bag, the model is the small test checkpoint (the launch file's
``checkpoint`` argument), and ``device:=cuda`` becomes ``cpu`` without CUDA. There is no ``ros2``
CLI here: ``ros2 launch vpr_ros localize.launch.py ARG:=VALUE ...`` becomes the node with the
launch file's own argument-to-parameter table (parsed from ``launch/localize.launch.py``) and
its default ``params_file`` (``config/localize.yaml``); console scripts become ``python -m`` of
the module that ``setup.py`` names.
"""

import ast
import re
import shlex
import threading

import pytest
from rclpy.node import Node
from rclpy.qos import QoSProfile
from ros_harness import (build_localizer, domain_id, ModuleProcess, place_image, REPO_ROOT,
                         RosGraph, tiny_model, wait_for)
from rosgraph_msgs.msg import Clock
import torch
from vpr_ros.data.bag import write_frames
from vpr_ros.data.frame import Frame
from vpr_ros.models.checkpoint import save_checkpoint
from vpr_ros.ros.conversions import stamp_to_ns
from vpr_ros.ros.matches import decode_matches
from vpr_ros.ros.output_monitor import OutputMonitor

pytestmark = pytest.mark.ros

DOMAIN = domain_id(12)
PROCESS_S = 180.0
"""Hang guard only: a process that has not exited (or printed a line) by then fails the test."""
README_MAP = '$HOME/maps/office'
README_BAG = 'run2_bag'
PLACES = range(6)
FIRST_STAMP_NS = 2_000_000_000_000
FRAME_GAP_NS = 100_000_000


def _readme_commands() -> list[list[str]]:
    """Return every shell command of the README section "### 2. Localize" as argument lists."""
    text = (REPO_ROOT / 'README.md').read_text()
    start = text.index('### 2. Localize')
    section = text[start:re.compile(r'^##+ ', re.M).search(text, start + 1).start()]
    commands = []
    for block in re.findall(r'```bash\n(.*?)```', section, re.S):
        for line in block.replace('\\\n', ' ').splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def _find(commands: list, prefix: list) -> list:
    found = [c for c in commands if c[:len(prefix)] == prefix]
    assert found, f'README "2. Localize" has no {" ".join(prefix)} command'
    return found


def _console_modules() -> dict:
    setup = (REPO_ROOT / 'setup.py').read_text()
    return dict(re.findall(r"'([\w-]+) = ([\w.]+):main'", setup))


def _launch_arguments() -> tuple:
    """Return PARAMETER_ARGUMENTS of launch/localize.launch.py: (argument, parameter, help)."""
    tree = ast.parse((REPO_ROOT / 'launch' / 'localize.launch.py').read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and node.targets[0].id == 'PARAMETER_ARGUMENTS':
            return ast.literal_eval(node.value)
    raise AssertionError('launch/localize.launch.py has no PARAMETER_ARGUMENTS')


def _adapt(words: list, files: dict) -> list:
    """Replace the README's map and bag paths by the test's, and cuda by cpu without CUDA."""
    words = [w.replace(README_MAP, files['map']).replace(README_BAG, files['bag']) for w in words]
    if not torch.cuda.is_available():
        words = [re.sub(r'device:=cuda$', 'device:=cpu', w) for w in words]
    return words


def _launch_to_node(launch: list, extra: dict) -> list:
    """Return the ``--ros-args`` the launch file gives the node for ``launch`` ARG:=VALUE words."""
    given = dict(w.split(':=', 1) for w in launch[4:])
    given.update(extra)
    table = {argument: parameter for argument, parameter, _ in _launch_arguments()}
    unknown = sorted(set(given) - set(table) - {'use_sim_time', 'namespace', 'params_file'})
    assert not unknown, f'README launch command uses undeclared arguments {unknown}'
    args = ['--ros-args', '--params-file', str(REPO_ROOT / 'config' / 'localize.yaml'),
            '-p', f'use_sim_time:={given.get("use_sim_time", "false")}']
    for argument, parameter in table.items():
        if given.get(argument, ''):
            args += ['-p', f'{parameter}:={given[argument]}']
    return args


def _parameters(ros_args: list) -> dict:
    pairs = [ros_args[i + 1] for i, w in enumerate(ros_args) if w == '-p']
    return dict(p.split(':=', 1) for p in pairs)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """Return the small model's checkpoint, a 6-place map and a bag of the places seen again.

    The bag records the frames on the image topic the README's replay command names.
    """
    root = tmp_path_factory.mktemp('readme')
    replay = _find(_readme_commands(), ['vpr-bag-play'])[0]
    topic = replay[replay.index('--image-topic') + 1]
    frames = [Frame(FIRST_STAMP_NS + i * FRAME_GAP_NS, place_image(p, 1)) for i, p in
              enumerate(PLACES)]
    build_localizer(PLACES).database.save(root / 'map')
    return {'checkpoint': str(save_checkpoint(tiny_model(), root / 'tiny.safetensors')),
            'map': str(root / 'map'),
            'bag': str(write_frames(root / 'run2_bag', frames, topic, None)),
            'stamps': [f.stamp_ns for f in frames]}


def test_readme_replay_feeds_the_readme_launch_command(files) -> None:
    """Both README replay commands feed the README's localize node, answered on ~/matches.

    The README's ``ros2 run`` command sets the same parameters as its launch command. Lock-step
    replay: every frame answered, at its place. Real-time replay with ``--clock``: one /clock
    per frame with the frame's stamp, and the last frame (never replaced by a newer one)
    answered.
    """
    commands = [_adapt(c, files) for c in _readme_commands()]
    extra = {'checkpoint': files['checkpoint']}
    node_args = _launch_to_node(_find(commands, ['ros2', 'launch', 'vpr_ros',
                                                 'localize.launch.py'])[0], extra)
    ros2_run = _find(commands, ['ros2', 'run', 'vpr_ros', 'localize'])[0]
    assert {**_parameters(ros2_run), 'checkpoint': files['checkpoint']} == \
        {k: v for k, v in _parameters(node_args).items() if k != 'use_sim_time'}
    modules = _console_modules()
    replays = _find(commands, ['vpr-bag-play'])
    lock_step = [c for c in replays if '--real-time' not in c]
    real_time = [c for c in replays if '--real-time' in c and '--clock' in c]
    assert lock_step and real_time, replays

    node = ModuleProcess(modules['localize'], node_args, DOMAIN)
    graph = RosGraph(DOMAIN)
    try:
        assert node.wait_for_line('localize ready:', PROCESS_S), node.output
        assert f'map {files["map"]} ({len(PLACES)} places)' in node.output
        probe = graph.add(Node('readme_probe', context=graph.context))
        monitor = OutputMonitor(probe, '/localize', outputs=('matches',))
        clocks, lock = [], threading.Lock()

        def on_clock(msg: Clock) -> None:
            with lock:
                clocks.append(stamp_to_ns(msg.clock))
        probe.create_subscription(Clock, '/clock', on_clock, QoSProfile(depth=100))

        player = ModuleProcess(modules[lock_step[0][0]], lock_step[0][1:], DOMAIN)
        assert player.wait(PROCESS_S) == 0, player.output
        count = len(PLACES)
        assert f'published {count} frames' in player.output
        assert f'{count} answered, 0 timed out' in player.output, player.output
        assert 'warning' not in player.output, player.output
        assert monitor.wait_until(lambda m: len(m.messages('matches')) >= count, PROCESS_S)
        answers = [decode_matches(m) for m in monitor.messages('matches')]
        assert [a.candidates[0].map_id for a in answers] == list(PLACES)

        player = ModuleProcess(modules[real_time[0][0]], real_time[0][1:], DOMAIN)
        assert player.wait(PROCESS_S) == 0, player.output
        assert f'published {count} frames' in player.output, player.output
        assert 'warning' not in player.output, player.output
        last = files['stamps'][-1]
        assert monitor.wait_until(lambda m: any(decode_matches(x).stamp_ns == last
                                                for x in m.messages('matches')), PROCESS_S)
        assert wait_for(lambda: len(clocks) >= count, PROCESS_S)
        with lock:
            assert clocks == files['stamps']
    finally:
        code = node.stop()
        graph.close()
    assert code == 0, node.output
    assert 'Traceback' not in node.output, node.output
