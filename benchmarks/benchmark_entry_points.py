"""Entry points vs a hand-tuned process: describe time per image with a busy process beside.

Run: ``.venv/bin/python benchmarks/benchmark_entry_points.py [--rounds 3 --busy 1]``.

Each console script of the package that runs the model (``vpr-eval``, ``vpr-map``,
``vpr-localize``, ``vpr-demo``, and the ``localize`` / ``build_map`` nodes) is started as its
module in a fresh interpreter: the module is imported first, exactly as the console script
does, then ``Localizer.describe`` (``torch`` backend, CPU, the default thread count) is timed
on the same images. The baseline is a fresh interpreter that imports ``torch`` first with
``OMP_WAIT_POLICY=PASSIVE`` and ``OMP_NUM_THREADS`` set by hand: one OpenMP runtime that
sleeps when idle, the best configuration known. ``--busy`` processes spin on the other cores
meanwhile (a robot computer is never idle). Also shown, for information: ``torch`` imported
first with nothing set (what a user's own script that imports torch before vpr_ros gets).

The processes are started round by round, alternating the configurations, and each reports
the fastest of its timed repetitions; the printed ratio is the median over rounds of the
baseline's time over the entry point's (1.0 = as fast as the hand-tuned process, lower is
slower). Each child also reports whether faiss and PyTorch share one OpenMP runtime.
"""

import argparse
import json
import os
from pathlib import Path
import subprocess
import sys
from typing import Optional, Sequence

import numpy as np

from vpr_ros.openmp import available_cpus

REPO_ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = {
    'vpr-eval': 'vpr_ros.cli.vpr_eval',
    'vpr-map': 'vpr_ros.cli.vpr_map',
    'vpr-localize': 'vpr_ros.cli.vpr_localize',
    'vpr-demo': 'vpr_ros.cli.demo',
    'localize': 'vpr_ros.ros.localize_node',
    'build_map': 'vpr_ros.ros.build_map_node',
}
BASELINE = 'baseline'
TORCH_FIRST = 'torch first, nothing set'
CHILD = """
import importlib, json, sys, time
importlib.import_module(sys.argv[1])
import cv2, numpy as np, torch
from vpr_ros.config import LocalizerConfig
from vpr_ros.map.database import MapDatabase
from vpr_ros.localization.localizer import Localizer
from vpr_ros.models.checkpoint import load_pretrained
from vpr_ros.openmp import shares_one_runtime
count, repeats = int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
images = [cv2.resize(rng.integers(0, 256, (15, 20, 3), np.uint8), (320, 240),
                     interpolation=cv2.INTER_CUBIC) for _ in range(count)]
model = load_pretrained('pairvpr_lite')
localizer = Localizer(model, MapDatabase(model.spec),
                      LocalizerConfig(device='cpu', backend='torch'))
localizer.describe(images[:2])
localizer.database.search(localizer.describe(images[:1])[0], 1)
times = []
for _ in range(repeats):
    start = time.perf_counter()
    localizer.describe(images)
    times.append((time.perf_counter() - start) / count)
print(json.dumps({'ms': 1000 * min(times), 'threads': torch.get_num_threads(),
                  'one_runtime': shares_one_runtime()}))
"""


def child_command(module: str, count: int, repeats: int) -> list[str]:
    """Return the command of one measuring child that imports ``module`` first."""
    return [sys.executable, '-c', CHILD, module, str(count), str(repeats)]


def child_env(configuration: str) -> dict:
    """Return the environment of a child: clean for entry points, hand-set for the baseline."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(('OMP_', 'GOMP_', 'KMP_', 'MKL_'))}
    if configuration == BASELINE:
        env.update(OMP_WAIT_POLICY='PASSIVE', OMP_NUM_THREADS=str(available_cpus()))
    return env


def measure(configuration: str, count: int, repeats: int) -> dict:
    """Run one child for ``configuration`` (a name of ENTRY_POINTS or a baseline)."""
    module = ENTRY_POINTS.get(configuration, 'torch')
    done = subprocess.run(child_command(module, count, repeats), env=child_env(configuration),
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f'{configuration}: child failed\n{done.stderr[-2000:]}')
    return json.loads(done.stdout.strip().splitlines()[-1])


def busy_processes(count: int) -> list[subprocess.Popen]:
    """Start ``count`` processes that keep one core busy each until killed."""
    return [subprocess.Popen([sys.executable, '-c', 'while True: pass']) for _ in range(count)]


def run(configurations: Sequence[str], rounds: int, count: int, repeats: int,
        busy: int) -> dict[str, list[dict]]:
    """Measure every configuration ``rounds`` times, alternating, with ``busy`` processes."""
    results: dict[str, list[dict]] = {name: [] for name in configurations}
    spinners = busy_processes(busy)
    try:
        for _ in range(rounds):
            for name in configurations:
                results[name].append(measure(name, count, repeats))
    finally:
        for process in spinners:
            process.kill()
            process.wait()
    return results


def ratios(results: dict[str, list[dict]]) -> dict[str, float]:
    """Return, per configuration, the median over rounds of baseline ms / its ms."""
    base = [r['ms'] for r in results[BASELINE]]
    return {name: float(np.median([b / r['ms'] for b, r in zip(base, rows)]))
            for name, rows in results.items()}


def report(results: dict[str, list[dict]]) -> str:
    """Return the printed table: ms per image, threads, runtime sharing and ratio."""
    lines = [f'  {"configuration":<26s} {"ms/image (median)":>18s} {"threads":>8s} '
             f'{"one runtime":>12s} {"ratio":>7s}']
    for name, value in ratios(results).items():
        rows = results[name]
        ms = float(np.median([r['ms'] for r in rows]))
        one = all(r['one_runtime'] for r in rows)
        lines.append(f'  {name:<26s} {ms:18.1f} {rows[0]["threads"]:8d} {str(one):>12s} '
                     f'x{value:6.2f} vs baseline')
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print the table; exit 0."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--rounds', type=int, default=3, help='rounds (default: %(default)s)')
    parser.add_argument('--images', type=int, default=16, help='images of 240x320 per call')
    parser.add_argument('--repeats', type=int, default=3, help='timed calls per child')
    parser.add_argument('--busy', type=int, default=1, help='busy processes beside')
    parser.add_argument('--only', nargs='*', default=None, choices=sorted(ENTRY_POINTS),
                        help='entry points to measure (default: all)')
    args = parser.parse_args(argv)
    names = [BASELINE, TORCH_FIRST] + list(args.only or ENTRY_POINTS)
    print(f'{available_cpus()} CPUs for this process, {args.busy} busy process(es) beside, '
          f'{args.rounds} rounds, {args.images} images x {args.repeats} calls per child')
    results = run(names, args.rounds, args.images, args.repeats, args.busy)
    print(report(results))
    return 0


if __name__ == '__main__':
    sys.exit(main())
