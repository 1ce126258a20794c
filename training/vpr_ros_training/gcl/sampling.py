"""GCL pair sampling: one partner per query, drawn by label category, no mining.

Every *step* (the official ``cache_size`` = 10,000 queries) draws a fresh random subset of the
training queries; each non-panoramic query gets one partner, with category ``s`` drawn as

* graded labels (``fov``): ``s = 0`` (50 %) positive ``psi >= 0.5``, ``s = 1`` (25 %) soft negative
  ``0 < psi < 0.5``, ``s = 2`` (25 %) hard negative ``psi == 0``;
* binary labels (``sim``, the CL baseline): 50 % ``label == 1``, 50 % ``label == 0``;

and the partner is uniform among the non-panoramic database images of that category. A query
without any candidate in its drawn category is skipped for this step (as in the official
``MSLSDataSet.load_pairs``). The pair's training label is its ``psi`` (or binary label).
"""

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

GRADED_FRACTIONS = (0.5, 0.25, 0.25)
BINARY_FRACTIONS = (0.5, 0.5)
POSITIVE_PSI = 0.5


@dataclass(frozen=True)
class Pair:
    """One training pair: city (label matrix) index, query index, database index and label."""

    city: int
    query: int
    partner: int
    label: float


def category_masks(row: np.ndarray, graded: bool) -> list[np.ndarray]:
    """Return the candidate masks per category for one query's label ``row``."""
    if graded:
        return [row >= POSITIVE_PSI, (row > 0) & (row < POSITIVE_PSI), row == 0]
    return [row == 1, row == 0]


def sample_partner(row: np.ndarray, rng: np.random.Generator, graded: bool = True,
                   db_is_pano: Optional[np.ndarray] = None,
                   fractions: Optional[Sequence[float]] = None) -> Optional[tuple[int, int]]:
    """Return ``(partner, category)`` for one query, or None when the drawn category is empty."""
    fractions = fractions or (GRADED_FRACTIONS if graded else BINARY_FRACTIONS)
    masks = category_masks(row, graded)
    if len(fractions) != len(masks):
        raise ValueError(f'{len(fractions)} category fractions for {len(masks)} categories')
    category = int(rng.choice(len(masks), p=np.asarray(fractions) / np.sum(fractions)))
    allowed = masks[category] if db_is_pano is None else masks[category] & ~db_is_pano
    candidates = np.flatnonzero(allowed)
    if len(candidates) == 0:
        return None
    return int(rng.choice(candidates)), category


def draw_pairs(matrices: Sequence, rng: np.random.Generator, cache_size: int,
               graded: bool = True, query_is_pano: Sequence = (), db_is_pano: Sequence = (),
               fractions: Optional[Sequence[float]] = None) -> list[Pair]:
    """Draw one step's pairs from per-city label matrices (objects with ``shape`` and ``row``).

    Args:
        matrices: one label matrix per city (rows = queries, columns = database images).
        rng: the random generator of this step.
        cache_size: queries drawn (without replacement) over all cities together.
        graded: use the 50/25/25 graded rule (True) or the 50/50 binary rule.
        query_is_pano: per city, a boolean array of panoramic queries (skipped), or empty.
        db_is_pano: per city, a boolean array of panoramic database images (never partners).
        fractions: category probabilities (default: the published ones).

    Returns:
        The pairs, sorted by (city, query) as the official code sorts its cache for I/O.
    """
    offsets = np.cumsum([0] + [m.shape[0] for m in matrices])
    chosen = np.sort(rng.permutation(int(offsets[-1]))[:cache_size])
    pairs = []
    for index in chosen:
        city = int(np.searchsorted(offsets, index, side='right')) - 1
        query = int(index - offsets[city])
        if len(query_is_pano) and query_is_pano[city][query]:
            continue
        pano = db_is_pano[city] if len(db_is_pano) else None
        row = matrices[city].row(query)
        drawn = sample_partner(row, rng, graded, pano, fractions)
        if drawn is not None:
            pairs.append(Pair(city, query, drawn[0], float(row[drawn[0]])))
    return pairs
