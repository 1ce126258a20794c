"""Node overhead: share of the localize node's per-frame time spent outside the model.

Run: ``.venv/bin/python benchmarks/benchmark_node.py [--frames 20 --map-size 1000]``.

A real :class:`LocalizeNode` (rclpy, in this process) gets an injected :class:`Localizer` over
a synthetic map with tokens; a probe node subscribes to its outputs. Each frame is a
``sensor_msgs/Image`` (rgb8) handed to the node's worker path (``_process``: decode, keyframe
gate, ``Localizer.localize``, candidate filtering, publishing ``~/matches``, ``~/pose``,
``~/loop_closure``, statistics), exactly what the worker thread runs for a received frame.

Three timers per frame: the whole worker path, ``Localizer.localize``, and the model calls
(``describe``, ``pair_score``, ``score_candidates``) inside it. Printed: the share outside
``Localizer.localize`` (message conversion, publishing, node bookkeeping) and the share outside
the model calls (that plus preprocessing, FAISS search, the token gather and ranking).
"""

import argparse
import functools
import os
import sys
import time
from typing import Optional, Sequence

from harness import (add_common_arguments, export_cache, load_lite, random_images,
                     set_threads, synthetic_map)

from vpr_ros.config import LocalizerConfig
from vpr_ros.localization.localizer import Localizer
from vpr_ros.models.backend import apply_backend

OUTPUTS = ('matches', 'pose', 'loop_closure')


class Stopwatch:
    """Accumulates the wall time of the calls it wraps; a call inside another counts once."""

    def __init__(self) -> None:
        """Start at zero."""
        self.seconds = 0.0
        self._depth = 0

    def wrap(self, fn):
        """Return ``fn`` timed into this stopwatch."""
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            self._depth += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self.seconds += time.perf_counter() - start
        return timed


MODEL_CALLS = ('describe', 'pair_score', 'score_candidates')


def instrument(localizer: Localizer) -> dict[str, Stopwatch]:
    """Time ``localizer.localize`` and its model's :data:`MODEL_CALLS`."""
    watches = {'localize': Stopwatch(), 'model': Stopwatch()}
    localizer.localize = watches['localize'].wrap(localizer.localize)
    model = localizer.model
    for name in MODEL_CALLS:
        setattr(model, name, watches['model'].wrap(getattr(model, name)))
    return watches


def run_frames(node, messages: list, warmup: int) -> tuple[float, dict]:
    """Push ``messages`` through the node's worker path; return (seconds, stopwatches)."""
    watches = instrument(node.localizer)
    for msg in messages[:warmup]:
        node._process(msg, time.perf_counter())
    for watch in watches.values():
        watch.seconds = 0.0
    start = time.perf_counter()
    for msg in messages[warmup:]:
        node._process(msg, time.perf_counter())
    return time.perf_counter() - start, watches


def build_messages(count: int, shape: Sequence[int]) -> list:
    """Return ``count`` rgb8 Image messages with increasing stamps."""
    from vpr_ros.ros.conversions import image_to_msg
    images = random_images(count, shape, seed=3)
    return [image_to_msg(image, 10 ** 12 + i * 10 ** 8, 'camera')
            for i, image in enumerate(images)]


def measure_backend(model, database, backend: str, args, cache: str) -> tuple[float, dict]:
    """Run the frames through a fresh node whose localizer uses ``backend``."""
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from vpr_ros.ros.localize_node import LocalizeNode
    from vpr_ros.ros.output_monitor import OutputMonitor
    from vpr_ros.ros.vpr_node import spin_in_background
    context = Context()
    rclpy.init(context=context, domain_id=1 + (os.getpid() * 7 + 5) % 200)
    try:
        prepared = apply_backend(model, backend, cache_dir=cache, device='cpu',
                                 threads=args.threads)
        localizer = Localizer(prepared, database, LocalizerConfig(device='cpu'))
        params = [Parameter('localizer.top_k', value=args.top_k),
                  Parameter('localizer.rerank_batch_size', value=args.top_k),
                  Parameter('localizer.accept_probability', value=0.0)]
        node = LocalizeNode(localizer, context=context, parameter_overrides=params)
        probe = rclpy.create_node('benchmark_probe', context=context)
        monitor = OutputMonitor(probe, '/localize', outputs=OUTPUTS)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(probe)
        thread = spin_in_background(executor)
        messages = build_messages(args.frames + 2, args.image_size)
        seconds, watches = run_frames(node, messages, warmup=2)
        time.sleep(0.5)
        watches['received'] = len(monitor.messages('matches'))
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
        probe.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)
    thread.join(timeout=5.0)
    return seconds, watches


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print per-frame latency and the shares outside the localizer and outside the model."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument('--frames', type=int, default=20,
                        help='timed frames per backend (default: %(default)s)')
    parser.add_argument('--map-size', type=int, default=1000,
                        help='places in the synthetic map (default: %(default)s)')
    parser.add_argument('--top-k', type=int, default=100,
                        help='candidates re-ranked per frame (default: %(default)s)')
    parser.add_argument('--image-size', type=int, nargs=2, default=(480, 640),
                        metavar=('H', 'W'), help='camera image size (default: 480 640)')
    args = parser.parse_args(argv)
    set_threads(args.threads)
    model, weights = load_lite(args.checkpoint)
    database = synthetic_map(model.spec, args.map_size)[0]
    print(f'pairvpr_lite ({weights}); localize node, rgb8 {args.image_size[0]}x'
          f'{args.image_size[1]} frames, map {args.map_size} places, top_k {args.top_k} '
          f're-ranked; {args.frames} frames; {args.threads} thread(s)')
    with export_cache(args.cache_dir) as cache:
        for backend in ('onnx', 'torch'):
            seconds, watches = measure_backend(model, database, backend, args, cache)
            report(backend, seconds, watches, args.frames)
    return 0


def report(backend: str, seconds: float, watches: dict, frames: int) -> None:
    """Print one backend's per-frame latency and its overhead shares."""
    localize, model = watches['localize'].seconds, watches['model'].seconds
    print(f'  {backend} backend: {1e3 * seconds / frames:7.1f} ms/frame; model '
          f'{1e3 * model / frames:6.1f} ms, localizer {1e3 * localize / frames:6.1f} ms; '
          f'outside the localizer {100 * (1 - localize / seconds):4.1f} %, outside the model '
          f'{100 * (1 - model / seconds):4.1f} % ({watches["received"]} ~/matches received)')


if __name__ == '__main__':
    sys.exit(main())
