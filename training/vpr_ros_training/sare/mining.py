"""NetVLAD-style tuple mining with a feature cache (the SARE / relja-netvlad recipe).

For every training query: the positive is the database image nearest *in feature space* among
the non-trivial positives (within ``positive_radius_m`` = 10 m, ``nonTrivPosDistSqThr = 100``);
the negatives are the ``num_negatives`` (10) nearest in feature space among the union of
``negative_pool`` (1,000) database images drawn at random from those farther than
``negative_radius_m`` (25 m) and the query's hard negatives kept from its previous tuple
(``nNegChoice 1000, nNegCap 10, nNegCache 10``). Features come from the current network and are
recomputed for every cache of ``cache_size`` (1,000) queries (``compFeatsFrequency``). Queries
without a non-trivial positive are skipped. A tuple key is ``(query, positive, n_1, ..., n_J)``.
Under DDP only rank 0 mines; :func:`broadcast_keys` sends the keys to the other ranks.
"""

from dataclasses import dataclass
import logging

import numpy as np
import torch
import torch.distributed as dist

from vpr_ros.config import validate
from vpr_ros.data.ground_truth import positives_within_radius
from vpr_ros_training.config import option
from vpr_ros_training.distributed import DistContext

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class MiningConfig:
    """Tuple mining settings (defaults: the NetVLAD / SARE MATLAB options)."""

    positive_radius_m: float = option(10.0, 'training positives within this distance (m)',
                                      (0.0, 1e5))
    negative_radius_m: float = option(25.0, 'negatives farther than this (m)', (0.0, 1e5))
    num_negatives: int = option(10, 'negatives per tuple (nNegCap)', (1, 1000))
    negative_pool: int = option(1000, 'random negatives considered (nNegChoice)', (1, 10 ** 7))
    cache_size: int = option(1000, 'queries per feature refresh (compFeatsFrequency)',
                             (1, 10 ** 8))

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)


class TupleMiner:
    """Mines tuples from query/database positions and current descriptors; keeps hard negatives."""

    def __init__(self, query_xy: np.ndarray, db_xy: np.ndarray, config: MiningConfig) -> None:
        """Precompute each query's non-trivial positives and its non-negatives."""
        self.config, self.num_db = config, len(db_xy)
        self.positives = positives_within_radius(query_xy, db_xy, config.positive_radius_m)
        self.near = positives_within_radius(query_xy, db_xy, config.negative_radius_m)
        self.hard_cache: dict[int, np.ndarray] = {}

    def trainable_queries(self) -> np.ndarray:
        """Return the queries that have a non-trivial positive and enough negatives."""
        enough = self.num_db - np.array([len(n) for n in self.near]) >= self.config.num_negatives
        has_positive = np.array([len(p) > 0 for p in self.positives])
        return np.flatnonzero(has_positive & enough)

    def random_negatives(self, query: int, rng: np.random.Generator) -> np.ndarray:
        """Return up to ``negative_pool`` random database images farther than the radius."""
        allowed = np.setdiff1d(np.arange(self.num_db), self.near[query], assume_unique=True)
        count = min(self.config.negative_pool, len(allowed))
        return rng.choice(allowed, size=count, replace=False)

    def mine_one(self, query: int, q_desc: np.ndarray, db_desc: np.ndarray,
                 rng: np.random.Generator) -> tuple:
        """Return the tuple key of one query (descriptors: this query's ``[D]``, db ``[N, D]``)."""
        positives = self.positives[query]
        positive = int(positives[np.argmax(db_desc[positives] @ q_desc)])
        pool = np.union1d(self.random_negatives(query, rng),
                          self.hard_cache.get(query, np.empty(0, np.int64)))
        closest = pool[np.argsort(-(db_desc[pool] @ q_desc), kind='stable')]
        negatives = closest[:self.config.num_negatives].astype(np.int64)
        self.hard_cache[query] = negatives
        return (int(query), positive) + tuple(int(j) for j in negatives)

    def mine(self, queries: np.ndarray, q_desc: np.ndarray, db_desc: np.ndarray,
             rng: np.random.Generator) -> list[tuple]:
        """Return tuple keys for ``queries`` (``q_desc`` rows match ``queries``)."""
        return [self.mine_one(int(q), q_desc[i], db_desc, rng) for i, q in enumerate(queries)]


def broadcast_keys(keys: list[tuple], width: int, context: DistContext) -> list[tuple]:
    """Return rank 0's integer keys (tuples of ``width`` ints) on every rank."""
    if not context.enabled:
        return keys
    count = torch.tensor([len(keys)], dtype=torch.int64, device=context.device)
    dist.broadcast(count, src=0)
    table = torch.zeros(int(count.item()), width, dtype=torch.int64, device=context.device)
    if context.is_main and keys:
        table.copy_(torch.tensor(keys, dtype=torch.int64))
    dist.broadcast(table, src=0)
    return [tuple(int(v) for v in row) for row in table.cpu().tolist()]
