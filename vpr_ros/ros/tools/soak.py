"""Soak and load test of the live ``localize`` node: many frames, faster than it can keep up.

``vpr-soak --out soak_report/`` builds a synthetic map, starts the real ``localize`` node as its
own process (``python -m vpr_ros.ros.tools.slow_model``: the node with a model that sleeps
``describe_ms`` per frame) and publishes ``frames`` synthetic camera frames, stamped at
``camera_hz``, at ``speedup`` times that rate from a real rclpy publisher. Meanwhile it changes
run-time parameters through the node's parameter services, reloads the map through
``~/reload_map`` and by rewriting the map folder (which ``map_watch_period_s`` picks up), records
every ``~/matches`` message with its arrival time, reads the node's ``/diagnostics`` and samples
the node's resident memory.
:mod:`vpr_ros.ros.tools.soak_report` computes the figures and the verdict and writes the report
folder: ``report.json``, ``summary.md``, ``soak.png`` (and the node's log, ``node.log``).

The node takes the newest frame whenever it is free, so at ``speedup`` x the camera rate with a
slow model most frames are dropped, and counted (``dropped_stale``); the answers must keep
coming, with a latency bounded by about two frame times, and no frame may go unaccounted.
"""

import argparse
from functools import partial
import os
from pathlib import Path
import sys
import threading
import time
from typing import Callable, Iterable, Optional, Sequence

from diagnostic_msgs.msg import DiagnosticArray
import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient
from rclpy.qos import QoSProfile
from sensor_msgs.msg import Image, PointCloud2
from std_srvs.srv import Trigger

from vpr_ros.cli.arguments import add_config_arguments, config_from_args, run_command
from vpr_ros.config import config_to_dict
from vpr_ros.errors import VprError
from vpr_ros.map.database import MapDatabase
from vpr_ros.ros.diagnostics import DIAGNOSTICS_TOPIC, STATUS_PREFIX, status_values
from vpr_ros.ros.matches import decode_matches
from vpr_ros.ros.tools.soak_report import (ParameterChange, ReloadEvent, SoakRecording, summarise,
                                           summary_lines, write_soak_report)
from vpr_ros.ros.tools.soak_scenario import (build_maps, frame_message, frame_stamp_ns,
                                             node_command, node_environment, NodeProcess,
                                             parameter_plan, SoakConfig, STAMP_ORIGIN_NS)
from vpr_ros.ros.vpr_node import input_qos, spin_in_background

PUBLISH_DEPTH = 1000
POLL_S = 0.002
CALL_TIMEOUT_S = 10.0

Progress = Callable[[Iterable, int], Iterable]


class SoakError(VprError, RuntimeError):
    """The soak could not run: the node did not start or did not connect."""


# --------------------------------------------------------------------------- the driver

class SoakDriver:
    """The driver's rclpy node: frame publisher, answer recorder, parameter and service clients.

    ``matches`` rows are ``(stamp_ns, arrival, candidates, accepted, best probability,
    published)``: ``published`` is when the node published the answer (the DDS source
    timestamp, on the driver's ``perf_counter`` clock); ``diagnostics`` rows ``(arrival,
    values)`` of the node under test.
    """

    def __init__(self, context: Context, config: SoakConfig) -> None:
        """Create the node and its interfaces, and spin it on a background thread."""
        self.lock = threading.Lock()
        self.matches: list = []
        self._wall_minus_perf_ns = time.time_ns() - time.perf_counter_ns()
        self.diagnostics: list = []
        self._status = STATUS_PREFIX + config.node_name
        self.node = Node('vpr_soak_driver', context=context)
        self.images = self.node.create_publisher(
            Image, f'/{config.namespace.strip("/")}/image',
            input_qos(config.reliability, PUBLISH_DEPTH))
        self.matches_sub = self.node.create_subscription(
            PointCloud2, f'{config.node_name}/matches', self._on_matches, QoSProfile(depth=1000))
        self.node.create_subscription(DiagnosticArray, DIAGNOSTICS_TOPIC, self._on_diagnostics,
                                      QoSProfile(depth=100))
        self.parameters = AsyncParameterClient(self.node, config.node_name)
        self.reload = self.node.create_client(Trigger, f'{config.node_name}/reload_map')
        self._executor = MultiThreadedExecutor(num_threads=2, context=context)
        self._executor.add_node(self.node)
        self._thread = spin_in_background(self._executor, 'vpr_soak_driver')

    def _on_matches(self, msg: PointCloud2, info: dict) -> None:
        arrived = time.perf_counter()
        published = (info['source_timestamp'] - self._wall_minus_perf_ns) / 1e9
        decoded = decode_matches(msg)
        best = decoded.candidates[0].probability if decoded.candidates else float('nan')
        with self.lock:
            self.matches.append((decoded.stamp_ns, arrived, len(decoded.candidates),
                                 decoded.accepted, best, published))

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        arrived = time.perf_counter()
        for status in msg.status:
            if status.name == self._status:
                with self.lock:
                    self.diagnostics.append((arrived, status_values(status)))

    def latest_diagnostics(self) -> tuple[float, dict]:
        """Return the arrival time and values of the newest /diagnostics (``(0, {})``: none)."""
        with self.lock:
            return self.diagnostics[-1] if self.diagnostics else (0.0, {})

    def answers(self) -> int:
        """Return how many ``~/matches`` messages arrived."""
        with self.lock:
            return len(self.matches)

    def connected(self) -> bool:
        """Whether the node reads the frames, answers the recorder and reports diagnostics."""
        return (self.images.get_subscription_count() > 0
                and self.matches_sub.get_publisher_count() > 0
                and self.latest_diagnostics()[0] > 0 and self.reload.service_is_ready()
                and self.parameters.services_are_ready())

    def close(self) -> None:
        """Stop spinning and destroy the node."""
        self._executor.shutdown(timeout_sec=2.0)
        self._thread.join(timeout=5.0)
        self.node.destroy_node()


def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Poll ``condition`` until it holds or ``timeout_s`` passes; return its last value."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)
    return True


def wait_ready(driver: SoakDriver, node: NodeProcess, timeout_s: float) -> None:
    """Wait until the node process runs and is connected; raise :class:`SoakError` if not."""
    if not wait_until(lambda: driver.connected() or not node.alive(), timeout_s) or \
            not node.alive():
        raise SoakError(f'the localize node did not start and connect within {timeout_s} s; '
                        f'its output ends with:\n{node.log_tail()}')


# ----------------------------------------------------------------------------- events

def change_parameter(driver: SoakDriver, recording: SoakRecording, name: str,
                     value: object) -> None:
    """Set one parameter of the node through its parameter service and record the outcome."""
    change = ParameterChange(name, value, time.perf_counter())
    future = driver.parameters.set_parameters([Parameter(name, value=value)])
    if wait_until(future.done, CALL_TIMEOUT_S) and future.result() is not None:
        result = future.result().results[0]
        change.successful, change.reason = bool(result.successful), result.reason
    change.confirmed = time.perf_counter()
    recording.changes.append(change)
    if not change.successful:
        recording.driver_errors.append(f'setting {name}={value!r} failed: {change.reason}')


def call_reload(driver: SoakDriver, recording: SoakRecording) -> None:
    """Call ``~/reload_map`` and record the answer."""
    event = ReloadEvent('service', time.perf_counter())
    future = driver.reload.call_async(Trigger.Request())
    if wait_until(future.done, CALL_TIMEOUT_S) and future.result() is not None:
        event.successful, event.message = future.result().success, future.result().message
    event.done = time.perf_counter()
    recording.reloads.append(event)
    if not event.successful:
        recording.driver_errors.append(f'~/reload_map failed: {event.message or "no answer"}')


def rewrite_map(database: MapDatabase, map_dir: Path, recording: SoakRecording) -> None:
    """Save ``database`` over the node's map folder (atomically) and record when."""
    event = ReloadEvent('rewrite', time.perf_counter(), map_size=len(database))
    database.save(map_dir)
    event.done, event.successful = time.perf_counter(), True
    recording.reloads.append(event)


def _spread(count: int, frames: int, first: float, last: float) -> list[int]:
    return [int(frames * f) for f in np.linspace(first, last, count)] if count else []


def event_schedule(config: SoakConfig, driver: SoakDriver, recording: SoakRecording,
                   maps: Sequence[MapDatabase], map_dir: Path) -> list[tuple[int, Callable]]:
    """Return ``(frame index, action)`` pairs: changes, reloads and rewrites spread over the run.

    Set-backs of the parameters come last, before the final 3 % of the frames, so the run ends
    with the start configuration.
    """
    plan = parameter_plan(config.parameter_changes)
    frames = config.frames
    at = _spread(config.parameter_changes, frames, 0.05, 0.9)
    at += [int(frames * 0.95)] * (len(plan) - len(at))
    events = [(i, partial(change_parameter, driver, recording, n, v))
              for i, (n, v) in zip(at, plan)]
    events += [(i, partial(call_reload, driver, recording))
               for i in _spread(config.service_reloads, frames, 0.1, 0.92)]
    events += [(i, partial(rewrite_map, maps[(k + 1) % 2], map_dir, recording))
               for k, i in enumerate(_spread(config.map_rewrites, frames, 0.08, 0.94))]
    return sorted(events, key=lambda event: event[0])


class EventRunner(threading.Thread):
    """Runs each scheduled action once the publisher has reached its frame."""

    def __init__(self, schedule: Sequence[tuple[int, Callable]],
                 published: Callable[[], int], errors: list) -> None:
        """Prepare the thread (call :meth:`start`); failures are appended to ``errors``."""
        super().__init__(name='vpr_soak_events', daemon=True)
        self._schedule = list(schedule)
        self._published = published
        self._errors = errors

    def run(self) -> None:
        """Run the actions in frame order."""
        for frame, action in self._schedule:
            while self._published() < frame:
                time.sleep(POLL_S)
            try:
                action()
            except Exception as exc:  # report it and go on with the next event
                self._errors.append(f'event at frame {frame} failed: {type(exc).__name__}: '
                                    f'{exc}')


class RssSampler(threading.Thread):
    """Samples the node process's resident memory every ``period_s`` into ``samples``."""

    def __init__(self, node: NodeProcess, period_s: float, samples: list) -> None:
        """Prepare the thread (call :meth:`start`, then :meth:`stop`)."""
        super().__init__(name='vpr_soak_rss', daemon=True)
        self._node, self._period_s, self._samples = node, period_s, samples
        self._stop_event = threading.Event()

    def run(self) -> None:
        """Sample until stopped."""
        while not self._stop_event.is_set():
            rss = self._node.rss_bytes()
            if rss is not None:
                self._samples.append((time.perf_counter(), rss))
            self._stop_event.wait(self._period_s)

    def stop(self) -> None:
        """Stop sampling and wait for the thread."""
        self._stop_event.set()
        self.join(timeout=5.0)


# ----------------------------------------------------------------------------- the run

class FramePublisher:
    """Publishes the query frames on a fixed schedule and notes when each one went out."""

    def __init__(self, driver: SoakDriver, config: SoakConfig, send_times: np.ndarray) -> None:
        """Prepare publishing ``config.frames`` frames into ``send_times``."""
        self._driver, self._config, self._send_times = driver, config, send_times
        self.published = -1

    def run(self, progress: Optional[Progress] = None) -> tuple[float, float]:
        """Publish every frame at its due time; return the first and the last publish time."""
        period = self._config.publish_period_s
        indices: Iterable = range(self._config.frames)
        if progress is not None:
            indices = progress(indices, self._config.frames)
        start = time.perf_counter()
        for index in indices:
            msg = frame_message(index, self._config)
            delay = start + index * period - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            self._send_times[index] = time.perf_counter()
            self._driver.images.publish(msg)
            self.published = index
        return start, time.perf_counter()


def _node_state(driver: SoakDriver) -> tuple:
    arrived, values = driver.latest_diagnostics()
    counts = {k: int(v) for k, v in values.items()
              if k in ('received', 'processed', 'dropped_stale', 'rejected')
              or k.startswith('skipped_')}
    accounted = sum(v for k, v in counts.items() if k != 'received')
    size = int(values['map_size']) if 'map_size' in values else None
    return arrived, counts.get('received', 0), accounted, counts.get('processed', 0), size


def settle(driver: SoakDriver, sent: int, after: float, config: SoakConfig,
           map_size: Optional[int] = None) -> bool:
    """Wait until the node has accounted for every frame it received and answered it.

    Frames lost on the way never arrive: the wait ends when nothing changed for three
    diagnostics periods. With ``map_size`` (the last map rewrite's), the node must also report
    that map, so a rewrite made just before the last frame is seen. Returns False when the
    counts did not add up in time.
    """
    deadline = time.monotonic() + config.settle_timeout_s
    quiet_s = 3 * config.diagnostics_period_s + 1.0
    last, changed = None, time.monotonic()
    while time.monotonic() < deadline:
        arrived, received, accounted, processed, size = _node_state(driver)
        state = (received, accounted, processed, driver.answers(), size)
        if state != last:
            last, changed = state, time.monotonic()
        done = arrived > after and accounted == received and driver.answers() >= processed
        caught_up = received >= sent and map_size in (None, size)
        if done and (caught_up or time.monotonic() - changed > quiet_s):
            return True
        time.sleep(0.05)
    return False


def _recorded_matches(driver: SoakDriver, config: SoakConfig) -> list:
    rows = []
    with driver.lock:
        matches = list(driver.matches)
    for stamp_ns, *values in matches:
        index = round((stamp_ns - STAMP_ORIGIN_NS) * config.camera_hz / 1e9)
        known = 0 <= index < config.frames and frame_stamp_ns(index, config.camera_hz) == stamp_ns
        rows.append((index if known else -1, *values))
    return rows


def drive(driver: SoakDriver, node: NodeProcess, recording: SoakRecording, config: SoakConfig,
          schedule_args: tuple, progress: Optional[Progress]) -> None:
    """Publish the frames with the events and the memory sampler running; wait for the end."""
    publisher = FramePublisher(driver, config, recording.send_times)
    events = EventRunner(event_schedule(config, driver, recording, *schedule_args),
                         lambda: publisher.published, recording.driver_errors)
    sampler = RssSampler(node, config.rss_period_s, recording.rss)
    sampler.start()
    events.start()
    try:
        recording.start, recording.end = publisher.run(progress)
        events.join()
        rewrites = [r for r in recording.reloads if r.kind == 'rewrite' and r.successful]
        last_size = rewrites[-1].map_size if rewrites else None
        if not settle(driver, config.frames, recording.end, config, last_size):
            recording.driver_errors.append('the node did not account for every frame within '
                                           f'{config.settle_timeout_s} s')
    finally:
        sampler.stop()
    recording.matches = _recorded_matches(driver, config)
    with driver.lock:
        recording.diagnostics = list(driver.diagnostics)


def run_soak(config: SoakConfig, out_dir: Path, domain_id: Optional[int] = None,
             progress: Optional[Progress] = None) -> tuple[dict, SoakRecording]:
    """Run the soak test and write its report into ``out_dir``; return report and recording.

    The node runs on DDS domain ``domain_id`` (default ``ROS_DOMAIN_ID``, else 0).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    maps = build_maps(config.places)
    map_dir = maps[0].save(out / 'map')
    domain = int(os.environ.get('ROS_DOMAIN_ID', 0)) if domain_id is None else domain_id
    recording = SoakRecording(config_to_dict(config), np.full(config.frames, np.nan))
    node = NodeProcess(node_command(config, map_dir), node_environment(domain), out / 'node.log')
    context = Context()
    try:
        rclpy.init(context=context, domain_id=domain)
        driver = SoakDriver(context, config)
        try:
            wait_ready(driver, node, config.startup_timeout_s)
            drive(driver, node, recording, config, (maps, map_dir), progress)
        finally:
            driver.close()
    finally:
        recording.node_exit_code = node.stop()
        rclpy.try_shutdown(context=context)
    recording.node_errors = node.log_errors()
    report = summarise(recording)
    write_soak_report(recording, report, out)
    return report, recording


# ---------------------------------------------------------------------------------- CLI

CLI_EXAMPLES = """examples:
  vpr-soak --out soak_report/                                  # 10,000 frames, 10 Hz x 10
  vpr-soak --out quick/ --frames 1000 --describe-ms 20 --map-rewrites 3 --service-reloads 3
"""


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``vpr-soak``."""
    parser = argparse.ArgumentParser(prog='vpr-soak', description=__doc__.split('\n')[0],
                                     epilog=CLI_EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', required=True, help='report folder')
    parser.add_argument('--domain-id', type=int, default=None,
                        help='DDS domain of the node and the driver (default: ROS_DOMAIN_ID)')
    parser.add_argument('--verbose', action='store_true', help='log at INFO level')
    add_config_arguments(parser, SoakConfig)
    return parser


def _progress_bar(items: Iterable, total: int) -> Iterable:
    from tqdm import tqdm
    return tqdm(items, total=total, desc='frames', unit='frame')


def run(args: argparse.Namespace) -> int:
    """Run the soak, print the headline figures; exit status 0 when every check passed."""
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    report, _ = run_soak(config_from_args(SoakConfig, args), Path(args.out), args.domain_id,
                         _progress_bar)
    for line in summary_lines(report):
        print(line)
    failed = [name for name, ok in report['checks'].items() if not ok]
    print(f'{"passed" if not failed else "FAILED: " + ", ".join(failed)}; report: '
          f'{Path(args.out) / "summary.md"}')
    return 0 if not failed else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``vpr-soak``; returns the process exit status."""
    return run_command(build_parser(), run, argv)


if __name__ == '__main__':
    sys.exit(main())
