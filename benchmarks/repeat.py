"""Run one benchmark script several times and print the median and spread of every ratio.

Run: ``.venv/bin/python benchmarks/repeat.py --runs 5 benchmark_rerank [script args...]``.

Each run is a fresh process (its own warm-up, allocator and thread pools), started one after
the other, so the runs see the machine's load at different times; inside a run the script
already alternates its methods round by round. Every printed line with a ratio
(``x1.23 vs baseline``) is collected by its label, and the table gives, per label, the median
ratio over the runs and the lowest and highest. The published figures in benchmarks/README.md
come from this command.
"""

import argparse
from pathlib import Path
import re
import subprocess
import sys
from typing import Optional, Sequence

import numpy as np

HERE = Path(__file__).resolve().parent
RATIO = re.compile(r'^\s*(?P<label>.+?)\s{2,}.*?x\s*(?P<ratio>\d+\.\d+) vs (?:baseline|exact)')


def ratios_of(output: str) -> dict[str, float]:
    """Return ``{label: ratio}`` of every ratio line a benchmark printed.

    A label printed again in the same run (the same method at the next map size) is numbered by
    its occurrence: ``hnsw``, ``hnsw #2``, ...
    """
    found = {}
    for line in output.splitlines():
        match = RATIO.match(line)
        if match:
            label = match.group('label').strip()
            occurrence = sum(1 for key in found if key == label or key.startswith(label + ' #'))
            found[label if not occurrence else f'{label} #{occurrence + 1}'] = \
                float(match.group('ratio'))
    return found


def run_once(script: str, args: Sequence[str]) -> dict[str, float]:
    """Run ``benchmarks/<script>.py args`` in a fresh interpreter; return its ratios."""
    done = subprocess.run([sys.executable, str(HERE / f'{script}.py'), *args],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f'{script} failed ({done.returncode}):\n{done.stderr[-3000:]}')
    return ratios_of(done.stdout)


def summary(runs: Sequence[dict[str, float]]) -> str:
    """Return the table: label, median ratio, lowest and highest, number of runs."""
    labels = list(dict.fromkeys(label for run in runs for label in run))
    lines = [f'  {"label":<52s} {"median":>8s} {"spread (min-max)":>18s} {"runs":>5s}']
    for label in labels:
        values = [run[label] for run in runs if label in run]
        lines.append(f'  {label:<52s} x{np.median(values):7.2f} {min(values):8.2f}-'
                     f'{max(values):<8.2f} {len(values):5d}')
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the script ``--runs`` times and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--runs', type=int, default=5, help='runs (default: %(default)s)')
    parser.add_argument('script', help='benchmark module name, e.g. benchmark_rerank')
    parser.add_argument('args', nargs=argparse.REMAINDER, help='arguments of the script')
    args = parser.parse_args(argv)
    runs = []
    for index in range(args.runs):
        runs.append(run_once(args.script, args.args))
        print(f'run {index + 1}/{args.runs}: ' + ', '.join(
            f'{label} x{ratio:.2f}' for label, ratio in runs[-1].items()), flush=True)
    print(f'{args.script} {" ".join(args.args)}: {args.runs} runs')
    print(summary(runs))
    return 0


if __name__ == '__main__':
    sys.exit(main())
