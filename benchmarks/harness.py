"""Shared pieces of the benchmark scripts: model loading, threads, interleaved timing, maps.

Every benchmark measures its baseline and its candidate in the same process, alternating them
round by round, and prints ratios of medians; none asserts on wall-clock time.
"""

import argparse
import contextlib
import logging
from pathlib import Path
import tempfile
import time
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from vpr_ros.map.database import MapDatabase
from vpr_ros.map.entries import MapEntry
from vpr_ros.models.checkpoint import load_checkpoint
from vpr_ros.models.registry import create_model
from vpr_ros.models.spec import ModelSpec

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_WEIGHTS = REPO_ROOT / 'vpr_ros' / 'weights' / 'pairvpr_lite.safetensors'
MODEL = 'pairvpr_lite'


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--checkpoint``, ``--threads``, ``--rounds`` and ``--cache-dir`` to ``parser``."""
    parser.add_argument('--checkpoint', default=None,
                        help='pairvpr_lite safetensors checkpoint (default: the shipped '
                        f'{SHIPPED_WEIGHTS.relative_to(REPO_ROOT)} when present, else random '
                        'weights: speed does not depend on the weights)')
    parser.add_argument('--threads', type=int, default=1,
                        help='torch / onnxruntime / FAISS threads for every method '
                        '(default: %(default)s; the machine is shared, one thread is steadier)')
    parser.add_argument('--rounds', type=int, default=5,
                        help='timed rounds per method, alternated (default: %(default)s)')
    parser.add_argument('--cache-dir', default=None,
                        help='ONNX export cache (default: a fresh temporary directory, so '
                        'every run exports again; the timed part never includes the export)')


@contextlib.contextmanager
def export_cache(cache_dir: Optional[str]) -> Iterator[str]:
    """Yield ``cache_dir``, or a temporary directory removed afterwards when it is None."""
    if cache_dir:
        yield cache_dir
        return
    with tempfile.TemporaryDirectory(prefix='vpr_bench_') as directory:
        yield directory


def set_threads(threads: int) -> None:
    """Use ``threads`` threads in torch and FAISS (onnxruntime follows torch's count).

    Also keeps library log output (e.g. the uncalibrated-model warning) out of the table.
    """
    import faiss
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


def load_lite(checkpoint: Optional[str]) -> tuple[torch.nn.Module, str]:
    """Return ``(pairvpr_lite in eval mode, description of its weights)``."""
    path = Path(checkpoint) if checkpoint else SHIPPED_WEIGHTS
    if checkpoint or path.is_file():
        return load_checkpoint(str(path)).eval(), f'weights {path}'
    torch.manual_seed(0)
    model = create_model(MODEL, pretrained=False).eval()
    return model, 'random weights (no shipped pairvpr_lite.safetensors)'


def interleaved(methods: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Return the median seconds of each method over ``rounds`` alternated runs (one warm-up).

    Alternating the methods round by round exposes them to the same machine load.
    """
    for fn in methods.values():
        fn()
    times: dict[str, list] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(values)) for name, values in times.items()}


def random_images(count: int, shape: Sequence[int], seed: int = 0) -> list[np.ndarray]:
    """Return ``count`` smooth random ``[H, W, 3] uint8`` images (upsampled noise)."""
    import cv2
    rng = np.random.default_rng(seed)
    height, width = shape
    return [cv2.resize(rng.integers(0, 256, (height // 16, width // 16, 3), np.uint8),
                       (width, height), interpolation=cv2.INTER_CUBIC) for _ in range(count)]


def unit_rows(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
    """Return ``[count, dim]`` random L2-normalised float32 rows."""
    rows = rng.standard_normal((count, dim), dtype=np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def synthetic_map(spec: ModelSpec, size: int, seed: int = 0
                  ) -> tuple[MapDatabase, np.ndarray, np.ndarray]:
    """Return ``(map with tokens, descriptors [N, D], fp32 tokens [N, T, C])`` of random places.

    Tokens are N(0, 1) like the LayerNorm-ed tokens of the model; the map stores them as
    float16 (its format), the float32 copy is what the official loop keeps in RAM.
    """
    rng = np.random.default_rng(seed)
    descriptors = unit_rows(rng, size, spec.descriptor_dim)
    tokens = rng.standard_normal((size, spec.num_tokens, spec.token_dim), dtype=np.float32)
    database = MapDatabase(spec, store_tokens=True)
    entries = [MapEntry(-1, i) for i in range(size)]
    database.add(descriptors, entries, tokens)
    return database, descriptors, tokens


def ratio_line(name: str, seconds: float, baseline: float, units: float, unit: str) -> str:
    """Return one aligned result line: rate, and speed-up over the baseline."""
    return (f'  {name:<44s} {units / seconds:10.1f} {unit}/s   '
            f'x{baseline / seconds:5.2f} vs baseline')
