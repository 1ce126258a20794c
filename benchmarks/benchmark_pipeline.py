"""Pipeline speed on this machine: extraction, search, re-ranking; ratios against baselines.

Run: ``.venv/bin/python benchmarks/benchmark_pipeline.py [--models efficientnet_lite0_gem ...]``.
Every figure is measured in this process; the ratios compare batched re-ranking with a naive
one-pair-at-a-time loop, and FAISS search (exact flat and HNSW) with a numpy scan, on the same
data. The Pair-VPR ViT-B pair decoder is heavy on a CPU: ``--pairs 8 --repeats 1`` keeps it to
about a minute.
Random weights are used where a model's trained weights are not installed (speed only).
"""

import argparse
import sys
import time
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from vpr_ros.config import IndexConfig
from vpr_ros.map.database import MapDatabase
from vpr_ros.map.entries import MapEntry
from vpr_ros.models.preprocessing import preprocess
from vpr_ros.models.registry import create_model

DEFAULT_MODELS = ('efficientnet_lite0_gem', 'pairvpr_lite', 'pairvpr_vitb14')


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Return the median wall time of ``fn`` in seconds over ``repeats`` runs (after a warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def build_model(name: str) -> torch.nn.Module:
    """Build ``name`` with ImageNet weights when the registry can, else random weights."""
    try:
        return create_model(name).eval()
    except TypeError:
        return create_model(name, pretrained=False).eval()


def bench_extraction(model, batch: int, repeats: int) -> float:
    """Return images per second for batched descriptor extraction."""
    h, w = model.spec.input_size
    images = [np.random.default_rng(i).integers(0, 255, (h, w, 3), np.uint8) for i in range(batch)]
    x = preprocess(images, model.spec)
    with torch.inference_mode():
        seconds = timed(lambda: model.describe(x), repeats)
    return batch / seconds


def bench_search(dim: int, size: int, queries: int) -> dict:
    """Return single-query search latency in ms: FAISS flat, FAISS HNSW, and a numpy scan."""
    rng = np.random.default_rng(0)
    db = rng.normal(size=(size, dim)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    q = db[:queries] + 0.01 * rng.normal(size=(queries, dim)).astype(np.float32)
    out = {kind: _search_ms(db, q, kind) for kind in ('flat', 'hnsw')}
    out['numpy'] = timed(lambda: [np.argsort(-(db @ v))[:100] for v in q], 1) * 1e3 / queries
    return out


def _search_ms(db: np.ndarray, q: np.ndarray, kind: str) -> float:
    from vpr_ros.models.spec import ModelSpec
    spec = ModelSpec('benchmark', (1, 1), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), db.shape[1])
    database = MapDatabase(spec, IndexConfig(kind=kind), store_tokens=False)
    database.add(db, [MapEntry(-1, i, None, None, '', None) for i in range(len(db))], None)
    return timed(lambda: [database.search(v[None], 100) for v in q], 1) * 1e3 / len(q)


def bench_rerank(model, pairs: int, repeats: int) -> tuple[float, float]:
    """Return (batched pairs/s, naive one-pair-at-a-time pairs/s) for the pair classifier."""
    n, c = model.spec.num_tokens, model.spec.token_dim
    rng = torch.Generator().manual_seed(0)
    query = torch.randn(1, n, c, generator=rng)
    cands = torch.randn(pairs, n, c, generator=rng)
    with torch.inference_mode():
        batched = timed(lambda: model.pair_score(query.expand(pairs, -1, -1), cands), repeats)
        naive = timed(lambda: [model.pair_score(query, cands[i:i + 1]) for i in range(pairs)],
                      repeats)
    return pairs / batched, pairs / naive


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print the benchmark table."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', nargs='+', default=list(DEFAULT_MODELS),
                        help='registry models to measure (default: %(default)s)')
    parser.add_argument('--batch', type=int, default=8,
                        help='images per extraction batch (default: %(default)s)')
    parser.add_argument('--pairs', type=int, default=16,
                        help='candidate pairs re-ranked per query (default: %(default)s)')
    parser.add_argument('--map-size', type=int, default=20000,
                        help='synthetic map size for search (default: %(default)s)')
    parser.add_argument('--repeats', type=int, default=3,
                        help='timed repetitions per figure (default: %(default)s)')
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    print(f'torch {torch.__version__}, threads {torch.get_num_threads()}, device cpu')
    for name in args.models:
        model = build_model(name)
        spec = model.spec
        print(f'\n{name}: input {spec.input_size}, descriptor {spec.descriptor_dim}-D')
        rate = bench_extraction(model, args.batch, args.repeats)
        print(f'  extraction           {rate:8.2f} images/s', flush=True)
        ms = bench_search(spec.descriptor_dim, args.map_size, 20)
        print(f'  search, {args.map_size} places, one query at a time: faiss flat '
              f'{ms["flat"]:.3f} ms, faiss HNSW {ms["hnsw"]:.3f} ms, numpy scan {ms["numpy"]:.3f} '
              f'ms; numpy/flat {ms["numpy"] / ms["flat"]:.2f}x, numpy/HNSW '
              f'{ms["numpy"] / ms["hnsw"]:.2f}x')
        if spec.has_pair_classifier:
            batched, naive = bench_rerank(model, args.pairs, args.repeats)
            print(f'  re-rank              {batched:8.2f} pairs/s batched, {naive:.2f} pairs/s '
                  f'one at a time; batched/naive ratio {batched / naive:.2f}x', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
