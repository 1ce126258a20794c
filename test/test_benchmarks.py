"""Smoke tests: every benchmark script runs with tiny sizes and prints its ratios."""

import importlib
import re
import sys

from conftest import REPO_ROOT
import pytest
import torch

BENCHMARKS = REPO_ROOT / 'benchmarks'
RATIO = re.compile(r'x\s*\d+\.\d+ vs (baseline|exact)')


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
    """One ONNX export cache for the scripts (each would otherwise export the model again)."""
    torch.set_num_threads(1)
    return str(tmp_path_factory.mktemp('bench_cache'))


def run(name: str, argv: list, capsys) -> str:
    """Run ``benchmarks/<name>.py``'s main with ``argv``; return what it printed."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    module = importlib.import_module(name)
    assert module.main(argv) == 0
    return capsys.readouterr().out


def test_rerank_benchmark(cache, capsys):
    pytest.importorskip('onnxruntime', reason='onnxruntime is not installed')
    out = run('benchmark_rerank', ['--queries', '1', '--top-k', '5', '--map-size', '30',
                                   '--rounds', '1', '--cache-dir', cache], capsys)
    assert 'official per-query loop' in out
    assert len(RATIO.findall(out)) == 3, out
    assert 'same best' in out


def test_extraction_benchmark(cache, capsys):
    pytest.importorskip('onnxruntime', reason='onnxruntime is not installed')
    out = run('benchmark_extraction', ['--images', '2', '--image-size', '60', '80',
                                       '--rounds', '1', '--matmul-size', '128',
                                       '--cache-dir', cache], capsys)
    assert 'naive per-image loop' in out and 'of matmul' in out
    assert len(RATIO.findall(out)) == 7, out


@pytest.mark.ros
def test_node_benchmark(cache, capsys):
    pytest.importorskip('onnxruntime', reason='onnxruntime is not installed')
    pytest.importorskip('rclpy', reason='rclpy is not installed')
    out = run('benchmark_node', ['--frames', '2', '--map-size', '20', '--top-k', '5',
                                 '--image-size', '60', '80', '--cache-dir', cache], capsys)
    shares = re.findall(r'outside the localizer\s+([\d.]+) %, outside the model\s+([\d.]+) %',
                        out)
    assert len(shares) == 2, out
    for node_share, model_share in shares:
        assert 0 <= float(node_share) <= float(model_share) <= 100
    assert '4 ~/matches received' in out


def test_map_scale_benchmark(capsys):
    out = run('benchmark_map_scale', ['--sizes', '10000', '--queries', '20'], capsys)
    assert len(RATIO.findall(out)) == 3, out
    assert 'recall@10' in out and 'B/entry' in out


def test_repeat_collects_every_ratio_line() -> None:
    """benchmarks/repeat.py reads the ratio lines of every script's format, and only those."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    repeat = importlib.import_module('repeat')
    output = '\n'.join([
        'pairvpr_lite (weights x); input (240, 320), 1.201 GFLOP/image',
        '  naive per-image loop (baseline)                  24.8 images/s   x 1.00 vs baseline',
        '  Localizer.describe, default settings (onnx)     104.2 images/s   x 4.19 vs baseline',
        '  official per-query loop                       563.0 pairs/s   x 1.00 vs baseline',
        '  torch first, nothing set                  539.4        2         True x  0.17 vs '
        'baseline',
        '  HNSW M32                                  0.086 ms   x 1.66 vs exact',
        '  HNSW M32                                  0.237 ms   x15.50 vs exact'])
    assert repeat.ratios_of(output) == {
        'naive per-image loop (baseline)': 1.0,
        'Localizer.describe, default settings (onnx)': 4.19, 'official per-query loop': 1.0,
        'torch first, nothing set': 0.17, 'HNSW M32': 1.66, 'HNSW M32 #2': 15.5}
    table = repeat.summary([{'a': 1.0, 'b': 2.0}, {'a': 3.0, 'b': 2.5}, {'a': 2.0}])
    assert 'x   2.00     1.00-3.00' in table and 'x   2.25     2.00-2.50' in table
