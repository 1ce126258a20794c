"""Re-rank throughput: our Localizer path vs a faithful re-implementation of the official loop.

Run: ``.venv/bin/python benchmarks/benchmark_rerank.py [--queries 6 --top-k 100 ...]``.

Baseline (Pair-VPR ``eval.py``, methods.md 1(d)): for each query, one at a time, gather its K
candidates from float32 tokens held in RAM, run the model's pair classifier
(``pair_logit``) in both input orders on the whole K batch and sum the logits.

Ours: :meth:`Localizer.score_pairs` on the map database (float16 tokens read from the map), with
the model prepared by :func:`apply_backend`: ``torch`` (one-query scoring, float32: a Pair-VPR
decoder through ``PairScorer``, the shipped correspondence classifier through one matrix
product for both orders), ``onnx`` (the same graph in onnxruntime, float32) and, where the CPU
has bfloat16 units, ``torch`` with ``precision bf16``. Same weights, same queries, same
candidate lists; each query is a noisy copy of one of its candidates, and the scores'
agreement with the baseline is printed next to the speed-up.
"""

import argparse
import sys
from typing import Optional, Sequence

from harness import (add_common_arguments, export_cache, interleaved, load_lite, ratio_line,
                     set_threads, synthetic_map, unit_rows)
import numpy as np
import torch

from vpr_ros.config import LocalizerConfig
from vpr_ros.localization.localizer import Localizer
from vpr_ros.models.backend import apply_backend

VARIANTS = (('torch fp32 (shared query)', 'torch', 'fp32'),
            ('onnx fp32 (onnxruntime, shared query)', 'onnx', 'fp32'),
            ('torch bf16 (CPU AVX-512 BF16)', 'torch', 'bf16'))


def official_loop(model, tokens: torch.Tensor, queries: torch.Tensor,
                  shortlists: np.ndarray) -> list[torch.Tensor]:
    """Score every query's shortlist as the official evaluation does (both orders, summed)."""
    scores = []
    with torch.no_grad():
        for query, ids in zip(queries, shortlists):
            candidates = tokens[torch.from_numpy(ids)]
            first = query[None].expand(len(ids), -1, -1)
            scores.append(model.pair_logit(first, candidates)
                          + model.pair_logit(candidates, first))
    return scores


def revisit_tokens(rng: np.random.Generator, tokens: np.ndarray,
                   shortlists: np.ndarray) -> np.ndarray:
    """Return float16 query tokens, each a noisy copy of one random member of its shortlist.

    Every query then has one true match among its candidates, so "same best candidate" tests
    what re-ranking decides (random queries score every candidate alike).
    """
    picks = shortlists[np.arange(len(shortlists)), rng.integers(0, shortlists.shape[1],
                                                                len(shortlists))]
    noise = rng.standard_normal((len(picks),) + tokens.shape[1:], dtype=np.float32)
    return (tokens[picks] + noise).astype(np.float16)


def our_loop(localizer: Localizer, queries: np.ndarray,
             shortlists: np.ndarray) -> list[np.ndarray]:
    """Score every query's shortlist through ``Localizer.score_pairs`` (float16 map tokens)."""
    return [localizer.score_pairs(query, ids) for query, ids in zip(queries, shortlists)]


def agreement(ours: list, baseline: list) -> tuple[float, float]:
    """Return ``(max |score difference|, share of queries with the same best candidate)``."""
    diffs = [np.abs(np.asarray(o) - b.numpy()).max() for o, b in zip(ours, baseline)]
    same = [np.argmax(o) == int(b.argmax()) for o, b in zip(ours, baseline)]
    return float(max(diffs)), float(np.mean(same))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print pairs/s of the baseline and of our variants, with speed-ups and agreement."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument('--queries', type=int, default=6,
                        help='queries per round (default: %(default)s)')
    parser.add_argument('--top-k', type=int, default=100,
                        help='candidates re-ranked per query, K (default: %(default)s)')
    parser.add_argument('--map-size', type=int, default=2000,
                        help='places in the synthetic map (default: %(default)s)')
    args = parser.parse_args(argv)
    set_threads(args.threads)
    model, weights = load_lite(args.checkpoint)
    spec = model.spec
    database, _, tokens = synthetic_map(spec, args.map_size)
    rng = np.random.default_rng(1)
    query_desc = unit_rows(rng, args.queries, spec.descriptor_dim)
    shortlists = database.search(query_desc, args.top_k)[1]
    query_tokens = revisit_tokens(rng, tokens, shortlists)
    print(f'pairvpr_lite ({weights}); {spec.num_tokens} tokens x {spec.token_dim}; '
          f'map {args.map_size} places, {args.queries} queries x K={args.top_k}; '
          f'{args.threads} thread(s), torch {torch.__version__}')
    baseline_tokens = torch.from_numpy(tokens)
    baseline_queries = torch.from_numpy(query_tokens.astype(np.float32))
    methods = {'baseline': lambda: official_loop(model, baseline_tokens, baseline_queries,
                                                 shortlists)}
    config = LocalizerConfig(device='cpu', top_k=args.top_k, rerank_batch_size=args.top_k)
    with export_cache(args.cache_dir) as cache:
        for label, backend, precision in VARIANTS:
            prepared = apply_backend(model, backend, cache_dir=cache, device='cpu',
                                     precision=precision, threads=args.threads)
            localizer = Localizer(prepared, database, config)
            methods[label] = (lambda loc=localizer: our_loop(loc, query_tokens, shortlists))
        report(methods, args)
    return 0


def report(methods: dict, args: argparse.Namespace) -> None:
    """Time the methods (interleaved) and print rates, ratios and score agreement."""
    pairs = args.queries * args.top_k
    seconds = interleaved(methods, args.rounds)
    reference = methods['baseline']()
    base = seconds['baseline']
    print(f'  {"official per-query loop (fp32 tokens in RAM)":<44s} {pairs / base:10.1f} '
          'pairs/s   (baseline)')
    for label, fn in methods.items():
        if label == 'baseline':
            continue
        diff, same = agreement(fn(), reference)
        print(ratio_line(label, seconds[label], base, pairs, 'pairs')
              + f'   max|dscore| {diff:.2e}, same best {100 * same:.0f} %')


if __name__ == '__main__':
    sys.exit(main())
