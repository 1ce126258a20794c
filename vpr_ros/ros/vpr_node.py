"""Shared base of the vpr_ros nodes: typed parameters, image input, rejections and /diagnostics."""

import re
import signal
import sys
import threading
import time
from typing import Callable, Optional, Sequence, TYPE_CHECKING

from diagnostic_msgs.msg import DiagnosticArray
import numpy as np
import rclpy
from rclpy.exceptions import ParameterException
from rclpy.executors import Executor, ExternalShutdownException, SingleThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
import rclpy.logging
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from rclpy.utilities import remove_ros_args
from sensor_msgs.msg import CompressedImage, Image

from vpr_ros.errors import MapMismatchError, VprError
from vpr_ros.ros.conversions import image_from_msg, ImageRejected
from vpr_ros.ros.diagnostics import (diagnostic_array, diagnostic_status, DIAGNOSTICS_TOPIC,
                                     NodeStatistics, STATUS_PREFIX)
from vpr_ros.ros.node_config import ParameterGroup
from vpr_ros.ros.parameters import NodeParameters, parameters_help

if TYPE_CHECKING:
    from vpr_ros.models.vpr_model import VprModel

REJECTION_LOG_PERIOD_S = 5.0


class StartupError(VprError):
    """A node cannot start because of one parameter; the message names it and the fix."""

    def __init__(self, parameter: str, value: object, problem: str, fix: str) -> None:
        """Record ``parameter`` (its ROS name), its ``value``, the ``problem`` and the ``fix``."""
        self.parameter = parameter
        self.fix = fix
        super().__init__(f'parameter {parameter}={value!r}: {problem}; fix: {fix}')


def input_qos(reliability: str, depth: int) -> QoSProfile:
    """Return a keep-last, volatile QoS with ``reliability`` 'best_effort' or 'reliable'."""
    policy = (ReliabilityPolicy.BEST_EFFORT if reliability == 'best_effort'
              else ReliabilityPolicy.RELIABLE)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=policy,
                      durability=DurabilityPolicy.VOLATILE)


class VprNode(Node):
    """A node whose parameters come from config dataclasses and that reports /diagnostics.

    Subclasses implement :meth:`diagnostic_values` (extra key/values and an optional warning)
    and :meth:`stop_work` (their threads and final work), and call :meth:`started` last in
    ``__init__``. A node whose ``__init__`` failed half-way is still safe to destroy: only
    :meth:`stop_work` of a started node runs.
    """

    _started = False

    def __init__(self, name: str, groups: Sequence[ParameterGroup], counters: tuple = (),
                 **kwargs) -> None:
        """Declare the parameter ``groups`` and start the /diagnostics timer.

        ``counters`` name the statistics reported from the start, even while zero.
        """
        super().__init__(name, **kwargs)
        self.stats = NodeStatistics(counters)
        self._last_rejection_log: dict[str, float] = {}
        self.params = NodeParameters(self, groups, self.on_parameters_changed)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        self._diagnostics_timer = self.create_timer(
            self.params.config().diagnostics_period_s, self.publish_diagnostics)

    def started(self) -> None:
        """Mark the node as fully built: :meth:`destroy_node` now runs :meth:`stop_work`."""
        self._started = True

    def summary(self) -> str:
        """Return the start-up summary that :func:`run_node` logs as ``<name> ready: ...``."""
        return ''

    def stop_work(self) -> None:
        """Stop the node's own threads and finish its work (runs once, before destruction)."""

    def destroy_node(self) -> None:
        """Run :meth:`stop_work` of a started node, then destroy it (a half-built one, too)."""
        if self._started:
            self._started = False
            self.stop_work()
        super().destroy_node()

    def load_model_from_parameters(self) -> 'VprModel':
        """Check ``localizer.device``, then load the ``checkpoint`` or registry ``model``.

        Raises:
            StartupError: naming the parameter at fault and how to fix it.
        """
        from vpr_ros.localization.localizer import select_device
        from vpr_ros.models.loader import load_model
        from vpr_ros.models.registry import list_models
        config = self.params.config()
        device = self.params.config('localizer').device
        try:
            select_device(device)
        except RuntimeError as exc:
            raise StartupError('localizer.device', device, str(exc),
                               'set -p localizer.device:=cpu (or auto: CUDA when present), or '
                               'install a CUDA build of PyTorch') from exc
        if config.checkpoint:
            try:
                return load_model(config.checkpoint)
            except (VprError, OSError, ValueError, RuntimeError) as exc:
                raise StartupError('checkpoint', config.checkpoint, str(exc),
                                   'give a vpr_ros .safetensors checkpoint that exists, or leave '
                                   'checkpoint empty to use the registry model named by model'
                                   ) from exc
        try:
            return load_model(None, config.model)
        except (VprError, OSError, ValueError, RuntimeError) as exc:
            raise StartupError('model', config.model, str(exc),
                               f'set -p model:=NAME with a registry name '
                               f'({", ".join(list_models())}), or set checkpoint') from exc

    def map_startup_error(self, path: str, exc: Exception) -> StartupError:
        """Return the :class:`StartupError` for the map at ``path`` that failed with ``exc``."""
        if isinstance(exc, MapMismatchError):
            fix = ('use the model or checkpoint the map was built with, or build the map again '
                   'with this model')
        else:
            fix = ('point map_path at a map folder written by build_map or vpr-map build (it '
                   'holds manifest.json)')
        return StartupError('map_path', path, str(exc), fix)

    def on_parameters_changed(self, prefixes: set) -> None:
        """React to accepted run-time parameter changes of the groups in ``prefixes``."""

    def diagnostic_values(self) -> tuple[dict, Optional[str]]:
        """Return node-specific diagnostic values and a warning (None when all is well)."""
        return {}, None

    def subscribe_images(self, callback: Callable) -> None:
        """Subscribe ``callback`` to the Image or CompressedImage topic the parameters name."""
        config = self.params.config()
        qos = input_qos(config.reliability, config.queue_depth)
        if config.use_compressed:
            topic = config.image_topic.rstrip('/') + '/compressed'
            self.image_sub = self.create_subscription(CompressedImage, topic, callback, qos)
        else:
            self.image_sub = self.create_subscription(Image, config.image_topic, callback, qos)
        self.get_logger().info(f'reading images from {self.image_sub.topic_name} '
                               f'({config.reliability})')

    def reject(self, reason: str, detail: str) -> None:
        """Count an input rejected for ``reason`` and log it (at most every 5 s per reason)."""
        self.stats.reject(reason)
        now = time.monotonic()
        if now - self._last_rejection_log.get(reason, -1e9) >= REJECTION_LOG_PERIOD_S:
            self._last_rejection_log[reason] = now
            total = self.stats.rejections().get(reason, 0)
            self.get_logger().warning(f'rejected input ({reason}, {total} so far): {detail}')

    def decode_image(self, msg) -> Optional[np.ndarray]:
        """Return the RGB image of ``msg``, or None after rejecting a malformed message."""
        try:
            return image_from_msg(msg)
        except ImageRejected as exc:
            self.reject(exc.reason, str(exc))
            return None

    def publish_diagnostics(self) -> None:
        """Publish one DiagnosticArray with the statistics and the node-specific values."""
        extra, warning = self.diagnostic_values()
        values = {**self.stats.snapshot(), **extra}
        status = diagnostic_status(STATUS_PREFIX + self.get_fully_qualified_name(),
                                   str(extra.get('device', '')), values, warning)
        self._diagnostics_pub.publish(diagnostic_array(status, self.get_clock().now().to_msg()))


def backend_summary(localizer, config) -> str:
    """Return ``backend <name>, device <device>`` of ``localizer``; ``(auto)`` marks a choice.

    ``config`` holds the requested ``backend`` and ``device`` (a ``LocalizerConfig`` group).
    """
    backend = getattr(localizer, 'backend', config.backend)
    if config.backend == 'auto' and backend != 'auto':
        backend += ' (auto)'
    return f'backend {backend}, device {localizer.device}'


def spin_in_background(executor: Executor, name: Optional[str] = None) -> threading.Thread:
    """Spin ``executor`` on a daemon thread until its context shuts down; return the thread."""
    thread = threading.Thread(target=_spin_quietly, args=(executor,), name=name, daemon=True)
    thread.start()
    return thread


def _spin_quietly(executor: Executor) -> None:
    try:
        executor.spin()
    except ExternalShutdownException:
        pass


def node_usage(name: str, groups: Sequence[ParameterGroup], description: str = '',
               example: str = '') -> str:
    """Return the ``--help`` text of node ``name``: usage, example and every parameter."""
    lines = [f'usage: {name} [-h] [--ros-args [-p NAME:=VALUE ...] [--params-file FILE] '
             '[-r FROM:=TO ...]]', '']
    if description:
        lines += [re.sub(r':\w+:`([^`]*)`', r'\1', description).replace('``', '').strip(), '']
    if example:
        lines += ['example:', f'  {example}', '']
    lines += ['options:', '  -h, --help    show this help and exit', '',
              'parameters (set with --ros-args -p NAME:=VALUE or --params-file FILE; '
              '"run time" ones', 'also with ros2 param set while the node runs):',
              parameters_help(groups)]
    return '\n'.join(lines)


def _user_arguments(argv: Sequence[str]) -> list:
    """Return the arguments of ``argv`` that are neither the program name nor ROS arguments."""
    rest = list(remove_ros_args(list(argv)))
    if argv and not argv[0].startswith('-') and rest[:1] == [argv[0]]:
        rest = rest[1:]
    return rest


def _interrupt(signum: int, frame) -> None:
    raise KeyboardInterrupt


def _start_and_spin(factory: Callable[[], Node], name: str) -> int:
    """Build the node, log its summary, spin it until SIGINT/SIGTERM, destroy it; return status.

    The executor spins on a background thread while the main thread waits, so a signal
    (KeyboardInterrupt; SIGTERM raises it too) is handled at once. The node is destroyed
    (``build_map`` saves its map and logs it) before the context shuts down, so its last log
    lines still reach /rosout.
    """
    log = rclpy.logging.get_logger(name)
    node, executor, code, errors = None, None, 0, []

    def spin() -> None:
        try:
            executor.spin()
        except ExternalShutdownException:
            pass
        except BaseException as exc:  # a failing callback: raised again in the main thread
            errors.append(exc)

    try:
        node = factory()
        node.get_logger().info(f'{name} ready: {node.summary()}')
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        thread = threading.Thread(target=spin, name=name, daemon=True)
        thread.start()
        thread.join()
    except KeyboardInterrupt:
        pass
    except StartupError as exc:
        log.fatal(f'cannot start: {exc}')
        code = 1
    except (VprError, ParameterException, ValueError, RuntimeError, OSError) as exc:
        log.fatal(f'cannot start: {exc}; fix: see {name} --help for the parameters')
        code = 1
    if node is None:      # a half-built node is destroyed with the context
        return code or 130
    try:
        if executor is not None:
            executor.shutdown(timeout_sec=5.0)
        node.destroy_node()
    except KeyboardInterrupt:     # a second Ctrl-C while shutting down
        code = 130
    if errors:
        raise errors[0]
    return code


def run_node(factory: Callable[[], Node], name: str, args: Optional[list] = None, *,
             groups: Sequence[ParameterGroup] = (), description: str = '',
             example: str = '') -> int:
    """Init rclpy, build the node, spin until shutdown and clean up; return the exit status.

    ``-h``/``--help`` prints :func:`node_usage` (``groups``, ``description``, ``example``) and
    returns 0 without starting ROS; other arguments outside ``--ros-args`` return 2. A node that
    cannot start (bad parameter, unreadable map or checkpoint) logs one FATAL line naming the
    parameter and the fix and returns 1; Ctrl-C while starting returns 130. Once the node is
    built it logs ``<name> ready: <summary>``; SIGINT or SIGTERM then stops it cleanly and
    returns 0.
    """
    argv = list(sys.argv if args is None else args)
    try:
        user_args = _user_arguments(argv)
    except _rclpy.RCLInvalidROSArgsError as exc:
        rclpy.logging.get_logger(name).fatal(f'cannot start: invalid --ros-args: {exc}; fix: '
                                             f'see {name} --help')
        return 1
    if '-h' in user_args or '--help' in user_args:
        print(node_usage(name, groups, description, example))
        return 0
    if user_args:
        print(f'{name}: unexpected argument(s) {" ".join(user_args)}: node parameters go after '
              f'--ros-args, e.g. {example or name + " --ros-args -p NAME:=VALUE"} '
              f'(see {name} --help)', file=sys.stderr)
        return 2
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    try:
        rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
        try:
            return _start_and_spin(factory, name)
        finally:
            rclpy.try_shutdown()
    except KeyboardInterrupt:
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
