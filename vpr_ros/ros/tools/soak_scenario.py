"""The soak scenario: its configuration, synthetic frames and maps, and the node under test.

:class:`SoakConfig` says how many frames, how fast, how slow the model and what happens during
the run; the query frames are noisy views of synthetic places (:func:`frame_message`), the maps
hold those places (:func:`build_maps`), and the node under test is the real ``localize`` node
with a slow model in a child process (:func:`node_command`, :class:`NodeProcess`).
:mod:`vpr_ros.ros.tools.soak` runs the scenario.
"""

from dataclasses import dataclass
from functools import lru_cache
import os
from pathlib import Path
import signal
import subprocess
import sys
from typing import Optional, Sequence

import cv2
import numpy as np
from sensor_msgs.msg import Image

import vpr_ros
from vpr_ros.config import LocalizerConfig, option, validate
from vpr_ros.geometry import pose_from_xy_yaw
from vpr_ros.localization.localizer import Localizer
from vpr_ros.map.database import MapDatabase
from vpr_ros.map.entries import MapEntry
from vpr_ros.ros.conversions import image_to_msg
from vpr_ros.ros.node_config import RELIABILITIES
from vpr_ros.ros.tools.slow_model import slow_model_name, SlowPoolingModel
from vpr_ros.ros.tools.soak_report import INITIAL_PARAMETERS

IMAGE_SHAPE = (72, 96)
FRAMES_PER_PLACE = 10
STAMP_ORIGIN_NS = 1_700_000_000 * 10**9
PARAMETER_CYCLE = (('localizer.top_k', (3, 5)), ('localizer.accept_probability', (0.6, 0.5)),
                   ('keyframe.min_interval_s', (1.0, 0.0)))
"""Changes made in turn during the run: each parameter is set, later set back."""
START_PARAMETERS = {**INITIAL_PARAMETERS, 'keyframe.min_interval_s': 0.0}


@dataclass(frozen=True)
class SoakConfig:
    """How many frames, how fast, how slow the model, and what happens during the run."""

    frames: int = option(10000, 'frames to publish', (1, 10**8))
    camera_hz: float = option(10.0, 'nominal camera rate: frame stamps are 1/camera_hz apart',
                              (0.01, 10000.0))
    speedup: float = option(10.0, 'publish at speedup x camera_hz', (0.01, 1000.0))
    describe_ms: float = option(50.0, 'sleep of the slow model per frame in milliseconds',
                                (0.0, 100000.0))
    places: int = option(100, 'synthetic places in the map', (2, 1000000))
    parameter_changes: int = option(18, 'run-time parameter changes (each parameter is set '
                                    'back to its start value by the end)', (0, 100000))
    service_reloads: int = option(10, '~/reload_map calls', (0, 100000))
    map_rewrites: int = option(10, 'map folder rewrites, alternating between two maps '
                               '(picked up by map_watch_period_s)', (0, 100000))
    warmup_fraction: float = option(0.2, 'share of the frames before memory is measured',
                                    (0.0, 0.9))
    map_watch_period_s: float = option(0.5, 'the node checks the map folder this often',
                                       (0.01, 3600.0))
    diagnostics_period_s: float = option(0.5, 'the node publishes /diagnostics this often',
                                         (0.05, 60.0))
    rss_period_s: float = option(0.25, 'resident memory sampling period', (0.01, 60.0))
    reliability: str = option('reliable', 'image topic reliability (reliable: any lost frame '
                              'is a failure; best_effort: transport losses only reported)',
                              choices=RELIABILITIES)
    queue_depth: int = option(1000, 'image subscription queue depth of the node; with reliable '
                              'delivery it must cover executor pauses (map reloads) at the '
                              'replay rate', (1, 1000))
    namespace: str = option('vpr_soak', 'namespace of the node under test')
    startup_timeout_s: float = option(120.0, 'wait this long for the node to start',
                                      (1.0, 3600.0))
    settle_timeout_s: float = option(60.0, 'after the last frame, wait this long for the node '
                                     'to account for every frame', (1.0, 3600.0))

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)

    @property
    def node_name(self) -> str:
        """Return the fully qualified name of the node under test."""
        return f'/{self.namespace.strip("/")}/localize'

    @property
    def publish_period_s(self) -> float:
        """Return the time between two published frames."""
        return 1.0 / (self.camera_hz * self.speedup)


# --------------------------------------------------------------------- frames and maps

@lru_cache(maxsize=1024)
def place_image(place: int, variant: int = 0) -> np.ndarray:
    """Return a ``[72, 96, 3] uint8`` view of synthetic place ``place`` (variants are noisy)."""
    rng = np.random.default_rng(place)
    base = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8),
                      (IMAGE_SHAPE[1], IMAGE_SHAPE[0]), interpolation=cv2.INTER_CUBIC)
    if variant == 0:
        return base
    noise = np.random.default_rng((place, variant)).integers(-8, 9, base.shape)
    return np.clip(base.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def frame_stamp_ns(index: int, camera_hz: float) -> int:
    """Return the stamp of query frame ``index`` (camera time, ``1 / camera_hz`` apart)."""
    return STAMP_ORIGIN_NS + round(index * 1e9 / camera_hz)


def frame_message(index: int, config: SoakConfig) -> Image:
    """Return query frame ``index``: a noisy view of place ``index // 10`` (modulo the map)."""
    place = (index // FRAMES_PER_PLACE) % config.places
    image = place_image(place, 1 + index % 3)
    return image_to_msg(image, frame_stamp_ns(index, config.camera_hz), 'camera')


def build_maps(places: int) -> tuple[MapDatabase, MapDatabase]:
    """Return two maps of the slow model: ``places`` places, and the same plus one."""
    model = SlowPoolingModel()
    localizer = Localizer(model, MapDatabase(model.spec), LocalizerConfig(device='cpu'))
    descriptors, _ = localizer.describe([place_image(p) for p in range(places + 1)])
    entries = [MapEntry(-1, STAMP_ORIGIN_NS - 10**12 + p * 10**9, pose_from_xy_yaw(p, 0.0, 0.0),
                        source=f'soak place {p}') for p in range(places + 1)]
    maps = MapDatabase(model.spec), MapDatabase(model.spec)
    maps[0].add(descriptors[:places], entries[:places])
    maps[1].add(descriptors, entries)
    return maps


# --------------------------------------------------------------------- the node process

def _ros_value(value: object) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def node_command(config: SoakConfig, map_dir: Path) -> list[str]:
    """Return the command line of the node under test (real ``localize``, slow model)."""
    parameters = {'map_path': str(map_dir), 'model': slow_model_name(config.describe_ms / 1e3),
                  'image_topic': 'image', 'reliability': config.reliability,
                  'queue_depth': config.queue_depth,
                  'map_watch_period_s': float(config.map_watch_period_s),
                  'diagnostics_period_s': float(config.diagnostics_period_s),
                  'localizer.device': 'cpu', **START_PARAMETERS}
    command = [sys.executable, '-m', 'vpr_ros.ros.tools.slow_model',
               '--delay-ms', repr(float(config.describe_ms)),
               '--ros-args', '-r', f'__ns:=/{config.namespace.strip("/")}']
    for name, value in parameters.items():
        command += ['-p', f'{name}:={_ros_value(value)}']
    return command


def node_environment(domain_id: int) -> dict:
    """Return the node's environment: DDS domain, localhost discovery, one OpenMP thread."""
    root = str(Path(vpr_ros.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get('PYTHONPATH', '')) if p)
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), OMP_NUM_THREADS='1',
               PYTHONPATH=path, PYTHONUNBUFFERED='1')
    env.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    return env


class NodeProcess:
    """The node under test as a child process whose output goes to ``log_path``."""

    def __init__(self, command: Sequence[str], env: dict, log_path: Path) -> None:
        """Start the process."""
        self.log_path = Path(log_path)
        self._log = open(self.log_path, 'w')
        self.process = subprocess.Popen(list(command), env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.process.poll() is None

    def rss_bytes(self) -> Optional[int]:
        """Return the process's resident memory (``VmRSS``), None when it is gone."""
        try:
            with open(f'/proc/{self.process.pid}/status') as status:
                for line in status:
                    if line.startswith('VmRSS:'):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def stop(self, timeout_s: float = 30.0) -> int:
        """Stop the node with SIGINT (as Ctrl-C does) and return its exit status."""
        if self.alive():
            self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._log.close()
        return code

    def log_errors(self, limit: int = 20) -> list[str]:
        """Return the node's logged errors, fatal messages and tracebacks (at most ``limit``)."""
        markers = ('[ERROR]', '[FATAL]', 'Traceback')
        lines = self.log_path.read_text(errors='replace').splitlines()
        return [line.strip() for line in lines if any(m in line for m in markers)][:limit]

    def log_tail(self, lines: int = 30) -> str:
        """Return the end of the node's output."""
        return '\n'.join(self.log_path.read_text(errors='replace').splitlines()[-lines:])


# ------------------------------------------------------------------- parameter changes

def parameter_plan(count: int) -> list[tuple[str, object]]:
    """Return ``count`` changes from :data:`PARAMETER_CYCLE`, then set back what is left."""
    plan = [(PARAMETER_CYCLE[k % 3][0], PARAMETER_CYCLE[k % 3][1][(k // 3) % 2])
            for k in range(count)]
    last = dict(plan)
    return plan + [(n, START_PARAMETERS[n]) for n, v in last.items() if v != START_PARAMETERS[n]]
