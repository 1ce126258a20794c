"""Shared helpers of the ROS tests: an isolated rclpy context, a small real model, place images.

Every test module gets its own ``rclpy.Context`` on a DDS domain derived from the process id, so
concurrent test runs on one machine do not see each other's nodes.
"""

from functools import lru_cache
import os
from pathlib import Path
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Iterable, Optional, Sequence

import cv2
import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
import torch

from vpr_ros.config import LocalizerConfig
from vpr_ros.geometry import pose_from_xy_yaw
from vpr_ros.localization.localizer import Localizer
from vpr_ros.map.database import MapDatabase
from vpr_ros.ros.vpr_node import spin_in_background

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGE_SHAPE = (72, 96)
MODEL_INPUT = (64, 96)
PLACE_SPACING_M = 1.0


def domain_id(offset: int = 0) -> int:
    """Return a DDS domain id (1..200) unique to this process (plus ``offset``)."""
    return 1 + (os.getpid() * 7 + offset) % 200


@lru_cache(maxsize=1)
def tiny_model():
    """EfficientNet-Lite0 + GeM, ImageNet weights, small input size (one per process)."""
    from vpr_ros.models.registry import create_model
    torch.set_num_threads(1)
    return create_model('efficientnet_lite0_gem', pretrained=True, input_size=MODEL_INPUT).eval()


def place_image(place: int, variant: int = 0) -> np.ndarray:
    """Return a ``[72, 96, 3] uint8`` view of place ``place``; variants are shifted and relit.

    Each place is a smooth colour field with random rectangles and discs from its own seed, so
    places are distinct, and a variant (crop shifted by a few pixels, brightness changed by a few
    percent) still looks like its place.
    """
    rng = np.random.default_rng(1000 + place)
    base = cv2.resize(rng.integers(0, 256, (6, 8, 3)).astype(np.uint8), (112, 84),
                      interpolation=cv2.INTER_CUBIC)
    for _ in range(12):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        corner = tuple(int(v) for v in rng.integers(0, (112, 84)))
        other = tuple(int(v) for v in rng.integers(0, (112, 84)))
        if rng.random() < 0.5:
            cv2.rectangle(base, corner, other, colour, -1)
        else:
            cv2.circle(base, corner, int(rng.integers(4, 20)), colour, -1)
    dx, dy = (2 * variant) % 9, variant % 5
    image = base[dy:dy + IMAGE_SHAPE[0], dx:dx + IMAGE_SHAPE[1]].astype(np.float32)
    image *= 1.0 + 0.06 * ((variant % 3) - 1) if variant else 1.0
    return np.clip(image, 0, 255).astype(np.uint8)


def place_pose(place: int):
    """Return the map pose of place ``place``: along the x axis, 1 m apart, facing +x."""
    return pose_from_xy_yaw(place * PLACE_SPACING_M, 0.0, 0.0)


def map_stamp_ns(place: int) -> int:
    """Return the map stamp of place ``place`` (one place every 0.5 s from t = 100 s)."""
    return 100_000_000_000 + place * 500_000_000


def build_localizer(places: Iterable[int], config: LocalizerConfig = LocalizerConfig(
        device='cpu', top_k=5, accept_probability=0.5)) -> Localizer:
    """Return a localizer whose map holds one entry per place, made with the core directly."""
    model = tiny_model()
    localizer = Localizer(model, MapDatabase(model.spec), config)
    for place in places:
        localizer.add_to_map(place_image(place), map_stamp_ns(place), place_pose(place),
                             source=f'place {place}')
    return localizer


class RosGraph:
    """An initialised context and a multi-threaded executor spinning on a background thread."""

    def __init__(self, domain: int) -> None:
        """Initialise rclpy on DDS domain ``domain`` and start spinning."""
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.executor = MultiThreadedExecutor(num_threads=4, context=self.context)
        self.nodes: list[Node] = []
        self._thread = spin_in_background(self.executor)

    def add(self, node: Node) -> Node:
        """Spin ``node`` from now on and return it."""
        self.nodes.append(node)
        self.executor.add_node(node)
        return node

    def remove(self, node: Node) -> None:
        """Stop spinning ``node`` and destroy it."""
        self.executor.remove_node(node)
        self.nodes.remove(node)
        node.destroy_node()

    def close(self) -> None:
        """Destroy every node and shut the context down."""
        for node in list(self.nodes):
            self.remove(node)
        self.executor.shutdown(timeout_sec=2.0)
        rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=5.0)


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0, period_s: float = 0.02
             ) -> bool:
    """Poll ``condition`` until it holds or ``timeout_s`` passes; return its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(period_s)
    return condition()


def wait_for_progress(progress: Callable[[], float], target: float, stall_s: float = 30.0,
                      period_s: float = 0.05) -> bool:
    """Wait until ``progress()`` reaches ``target``; give up only when it stops moving.

    A loaded machine makes work slower, not wrong: the wait goes on as long as the value keeps
    changing, and fails only after ``stall_s`` without any change (a real stall).
    """
    last, changed = progress(), time.monotonic()
    while last < target:
        time.sleep(period_s)
        value = progress()
        if value != last:
            last, changed = value, time.monotonic()
        elif time.monotonic() - changed > stall_s:
            return False
    return True


def call_service(node: Node, srv_type, name: str, request, timeout_s: float = 30.0):
    """Call service ``name`` from ``node`` (spun elsewhere) and return the response."""
    client = node.create_client(srv_type, name)
    try:
        assert client.wait_for_service(timeout_sec=timeout_s), f'service {name} not available'
        future = client.call_async(request)
        assert wait_for(future.done, timeout_s), f'service {name} did not answer'
        return future.result()
    finally:
        node.destroy_client(client)


class ModuleProcess:
    """``python -m <module> <args>`` in a subprocess on DDS domain ``domain``.

    stdout and stderr are merged and read line by line on a thread, so a test can wait for a
    line (``localize ready: ...``) while the process runs, then stop it with a signal.
    """

    def __init__(self, module: str, args: Sequence[str], domain: int,
                 env: Optional[dict] = None) -> None:
        """Start the process (PYTHONPATH = the repository, one OpenMP thread)."""
        environment = dict(os.environ, ROS_DOMAIN_ID=str(domain), OMP_NUM_THREADS='1',
                           PYTHONPATH=os.pathsep.join([str(REPO_ROOT),
                                                       os.environ.get('PYTHONPATH', '')]))
        environment.update(env or {})
        self.command = [sys.executable, '-m', module, *args]
        self.process = subprocess.Popen(self.command, cwd=REPO_ROOT, env=environment,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True)
        self._lines: list[str] = []
        self._eof = False
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            with self._cond:
                self._lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    @property
    def output(self) -> str:
        """Return everything the process printed so far (stdout and stderr)."""
        with self._cond:
            return ''.join(self._lines)

    def wait_for_line(self, text: str, timeout_s: float) -> bool:
        """Wait until a line containing ``text`` was printed; False if the process ended first."""
        with self._cond:
            self._cond.wait_for(lambda: self._eof or any(text in x for x in self._lines),
                                timeout=timeout_s)
            return any(text in x for x in self._lines)

    def wait(self, timeout_s: float) -> int:
        """Wait for the process to exit and its output to be read; return the exit status."""
        try:
            code = self.process.wait(timeout=timeout_s)
        finally:
            self.kill()
        self._reader.join(timeout=timeout_s)
        return code

    def stop(self, sig: int = signal.SIGINT, timeout_s: float = 60.0) -> int:
        """Send ``sig`` and return the exit status (the process is killed if it hangs)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.wait(timeout_s)

    def kill(self) -> None:
        """Kill the process if it still runs."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
