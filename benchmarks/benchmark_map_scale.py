"""Map scale: approximate (HNSW, IVF-PQ) vs exact search through MapDatabase at 10k..1M places.

Run: ``.venv/bin/python benchmarks/benchmark_map_scale.py [--sizes 10000 100000 1000000]``.

Data: synthetic clustered descriptors, ``--dim`` wide (default 256: 1M float32 rows are 1 GiB
per copy, and the map keeps the rows besides its index, so 1M x 1280 would need ~10 GiB and
minutes per copy on this 2-core machine; 256 is also a common PCA-reduced descriptor size).
Places come in clusters of ``--cluster`` (a stretch of route seen from nearby poses); queries
are revisits: a random map row plus noise. Every figure is measured through
:meth:`MapDatabase.search`, one query at a time as the localizer searches, on the same queries
for all index kinds; queries are sub-sampled (``--queries``), nothing is cached between runs.

Printed per size and ANN index: median single-query latency and its speed-up over the exact
flat index, recall@1 and recall@10 of the ANN results relative to the exact ones (the exact top
1 found; overlap of the top 10), build time, and bytes per entry (the serialized index, and the
whole map in RAM: index plus the float32 rows the map always keeps, tokens excluded).
``ivfpq`` is plain IVF-PQ (``refine_k: 0``); ``ivfpq+refine`` re-scores the IVF-PQ top 100
exactly from the float32 rows the map already holds (``IndexConfig.refine_k``, the default 100),
both through :meth:`MapDatabase.search` on the same index.
"""

import argparse
from dataclasses import replace
import gc
import sys
import time
from typing import Optional, Sequence

import faiss
from harness import set_threads
import numpy as np

from vpr_ros.config import IndexConfig
from vpr_ros.map.database import MapDatabase
from vpr_ros.map.entries import MapEntry
from vpr_ros.models.spec import ModelSpec

TOP_K = 10
REFINE_K = 100
"""``IndexConfig.refine_k`` of the ``+refine`` line: the IVF-PQ shortlist re-scored exactly."""
SPREAD = 0.35
"""Per-dimension noise of a place around its cluster centre (centres are N(0, 1) per dimension)."""
REVISIT = 0.15
"""Per-dimension noise of a revisit query around its map place, on the same scale."""


def ann_configs(size: int, hnsw_max: int) -> dict[str, IndexConfig]:
    """Return the approximate index configurations measured at ``size`` places.

    IVF cells grow with the map (about sqrt(N), within what the map can train on:
    ``39 * max(nlist, 256)`` rows); PQ uses 32 one-byte codes (8 dimensions each at 256-D).
    """
    nlist = int(min(max(64, 2 ** round(np.log2(np.sqrt(size)))), size // 39))
    configs = {'ivfpq': IndexConfig(kind='ivfpq', ivf_nlist=nlist, ivf_nprobe=max(8, nlist // 32),
                                    pq_m=32, use_gpu=False, search_threads=0)}
    if size <= hnsw_max:
        configs['hnsw'] = IndexConfig(kind='hnsw', hnsw_m=32, hnsw_ef_search=128,
                                      use_gpu=False, search_threads=0)
    return configs


def clustered_rows(size: int, dim: int, cluster: int, seed: int) -> np.ndarray:
    """Return ``[size, dim]`` unit rows: cluster centre + ``SPREAD`` x noise, in clusters."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((-(-size // cluster), dim), dtype=np.float32)
    rows = np.repeat(centres, cluster, axis=0)[:size]
    rows += SPREAD * rng.standard_normal((size, dim), dtype=np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def revisit_queries(rows: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Return ``count`` unit queries: random map rows plus ``REVISIT`` x noise (revisits).

    The rows are normalised, so the noise is scaled by their norm before normalisation.
    """
    rng = np.random.default_rng(seed)
    picked = rows[rng.choice(len(rows), count, replace=False)]
    scale = REVISIT / np.sqrt(rows.shape[1] * (1 + SPREAD ** 2))
    queries = picked + scale * rng.standard_normal(picked.shape, dtype=np.float32)
    return queries / np.linalg.norm(queries, axis=1, keepdims=True)


def build_map(rows: np.ndarray, config: IndexConfig) -> tuple[MapDatabase, float]:
    """Return ``(map holding rows with index config, build seconds)``."""
    spec = ModelSpec('synthetic', (1, 1), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), rows.shape[1])
    start = time.perf_counter()
    database = MapDatabase(spec, config, store_tokens=False)
    database.add(rows, [MapEntry(-1, i) for i in range(len(rows))])
    return database, time.perf_counter() - start


def search_all(database: MapDatabase, queries: np.ndarray,
               refine: bool = False) -> tuple[np.ndarray, float]:
    """Return ``(ids [Q, 10], median seconds per query)``, one query per call.

    ``refine`` sets ``refine_k`` to ``REFINE_K`` (else 0) through
    :meth:`MapDatabase.configure_search` first.
    """
    config = replace(database.index_config, refine_k=REFINE_K if refine else 0)
    database.configure_search(config)
    database.search(queries[:1], TOP_K)
    ids, times = [], []
    for query in queries:
        start = time.perf_counter()
        ids.append(database.search(query[None], TOP_K)[1][0])
        times.append(time.perf_counter() - start)
    return np.stack(ids), float(np.median(times))


def recalls(found: np.ndarray, exact: np.ndarray) -> tuple[float, float]:
    """Return recall@1 (same top 1) and recall@10 (top-10 overlap) relative to exact search."""
    at1 = float(np.mean(found[:, 0] == exact[:, 0]))
    at10 = float(np.mean([len(set(f) & set(e)) / TOP_K for f, e in zip(found, exact)]))
    return at1, at10


def index_bytes(database: MapDatabase) -> int:
    """Return the size of the map's serialized FAISS index."""
    return int(faiss.serialize_index(database._cpu_index()).size)


def measure_size(size: int, args: argparse.Namespace) -> None:
    """Print exact and approximate search figures for one map size."""
    rows = clustered_rows(size, args.dim, args.cluster, seed=size)
    queries = revisit_queries(rows, min(args.queries, size), seed=size + 1)
    exact_db, exact_build = build_map(rows, IndexConfig(kind='flat', use_gpu=False,
                                                        search_threads=0))
    exact_ids, exact_s = search_all(exact_db, queries)
    row_bytes = rows.shape[1] * 4
    print(f'{size:>9,d} places, {len(queries)} queries: exact flat {1e3 * exact_s:8.3f} ms/query, '
          f'{index_bytes(exact_db) / size:6.0f} B/entry index '
          f'({(index_bytes(exact_db) / size + row_bytes):6.0f} B/entry map), '
          f'build {exact_build:5.1f} s')
    del exact_db
    gc.collect()
    for kind, config in ann_configs(size, args.hnsw_max).items():
        database, build = build_map(rows, config)
        nbytes = index_bytes(database) / size
        for refine in (False, True) if kind == 'ivfpq' else (False,):
            ids, seconds = search_all(database, queries, refine)
            at1, at10 = recalls(ids, exact_ids)
            name = kind + ('+refine' if refine else '')
            print(f'  {name:<12s} {_params(config):<28s} {1e3 * seconds:8.3f} ms/query  '
                  f'x{exact_s / seconds:7.1f} vs exact  recall@1 {at1:.3f}  '
                  f'recall@10 {at10:.3f}  {nbytes:6.0f} B/entry index ({nbytes + row_bytes:6.0f} '
                  f'map)  build {build:5.1f} s', flush=True)
        del database
        gc.collect()


def _params(config: IndexConfig) -> str:
    if config.kind == 'hnsw':
        return f'M={config.hnsw_m} efSearch={config.hnsw_ef_search}'
    return f'nlist={config.ivf_nlist} nprobe={config.ivf_nprobe} PQ{config.pq_m}x8'


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print the exact/approximate search comparison for every requested map size."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sizes', type=int, nargs='+', default=[10_000, 100_000, 1_000_000],
                        help='map sizes (default: %(default)s)')
    parser.add_argument('--dim', type=int, default=256,
                        help='descriptor dimension (default: %(default)s)')
    parser.add_argument('--cluster', type=int, default=20,
                        help='places per cluster (default: %(default)s)')
    parser.add_argument('--queries', type=int, default=200,
                        help='queries per size, sub-sampled (default: %(default)s)')
    parser.add_argument('--hnsw-max', type=int, default=100_000,
                        help='largest map that also gets an HNSW index (default: %(default)s; '
                        'building HNSW over 1M rows takes tens of minutes on 2 cores)')
    parser.add_argument('--threads', type=int, default=1,
                        help='FAISS threads (default: %(default)s)')
    args = parser.parse_args(argv)
    set_threads(args.threads)
    print(f'synthetic clustered descriptors, {args.dim}-D, clusters of {args.cluster}; '
          f'one query per search call; {args.threads} FAISS thread(s)')
    for size in args.sizes:
        measure_size(size, args)
    return 0


if __name__ == '__main__':
    sys.exit(main())
