"""Geometric verification of matches on the model's own token grids.

Loop-closure systems (DBoW2/ORB-SLAM, RTAB-Map, iBoW-LCD) keep a match only when the two images'
local features agree on a geometric transform. The map already stores every place's patch tokens
for re-ranking, so the same check runs on them without images and without a map-format change:

1. mutual nearest neighbours between the query's and the candidate's token grids (cosine on the
   L2-normalised tokens): token ``i`` of the query and ``j`` of the candidate correspond when each
   is the other's most similar token;
2. RANSAC of a geometric model on the matched cells' grid coordinates (cell centres, in cell
   units, ``x`` along the columns): an affine transform (default), a homography or a fundamental
   matrix (``cv2.USAC_MAGSAC``), with the inlier distance in cells;
3. the inlier count is the verification score: many correspondences that move together.

On the coarse grids of the shipped model (15 x 20 cells) the fundamental matrix is too permissive:
an epipolar line constrains one coordinate only, so random matches fit it and the count separates
same from different places worse than an affine transform (measured on the validation sets by
``benchmarks/benchmark_verification.py --validation``).
Every estimator here is deterministic (OpenCV seeds its own RANSAC generator on each call).
"""

from dataclasses import dataclass
import logging
import math
from typing import Any, Optional

import cv2
import numpy as np
import torch

from vpr_ros.config import VERIFY_MODELS
from vpr_ros.errors import VprError
from vpr_ros.models.correspondence import unit_tokens
from vpr_ros.models.spec import ModelSpec

LOG = logging.getLogger(__name__)

NOT_VERIFIED = -1
"""``Candidate.inliers`` of a candidate that was not verified."""
MIN_MATCHES = {'affine': 3, 'homography': 4, 'fundamental': 8}
"""Fewest correspondences each model's RANSAC needs; fewer give 0 inliers."""
RANSAC_MAX_ITERS = 1000
RANSAC_CONFIDENCE = 0.999


class VerificationError(VprError, ValueError):
    """Tokens do not fit the token grid, or an unknown geometric model was requested."""


@dataclass(frozen=True)
class PairVerification:
    """The geometric verification of one query / candidate pair.

    ``query_cells`` and ``candidate_cells`` are the row-major token indices of the mutual
    nearest neighbours, ``inlier_mask`` marks those the fitted ``transform`` explains (a 2x3
    affine, a 3x3 homography or a 3x3 fundamental matrix from query to candidate cell
    coordinates; None when no model could be fitted).
    """

    query_cells: np.ndarray
    candidate_cells: np.ndarray
    inlier_mask: np.ndarray
    transform: Optional[np.ndarray]

    @property
    def matches(self) -> int:
        """Return the number of mutual nearest-neighbour correspondences."""
        return int(self.query_cells.size)

    @property
    def inliers(self) -> int:
        """Return the number of correspondences consistent with the fitted model."""
        return int(self.inlier_mask.sum())


def grid_from_spec(spec: ModelSpec) -> tuple[int, int]:
    """Return the token grid ``(rows, cols)`` whose aspect is closest to the input's.

    ``rows * cols == spec.num_tokens``; used when the model does not report its grid (an
    exported graph, a map opened without its model).
    """
    count = int(spec.num_tokens)
    if count <= 0:
        raise VerificationError(f'{spec.architecture}: no token grid ({count} tokens)')
    height, width = spec.input_size
    aspect = math.log(height / width)
    pairs = [(rows, count // rows) for rows in range(1, count + 1) if count % rows == 0]
    return min(pairs, key=lambda pair: abs(math.log(pair[0] / pair[1]) - aspect))


def token_grid(model: Any) -> tuple[int, int]:
    """Return the ``(rows, cols)`` grid of the tokens ``model.describe`` returns.

    The model's ``token_grid`` (or that of the model a backend wraps, ``inner``) when it covers
    ``spec.num_tokens``, else :func:`grid_from_spec`.
    """
    spec = model.spec
    for owner in (model, getattr(model, 'inner', None)):
        grid = getattr(owner, 'token_grid', None)
        if (isinstance(grid, tuple) and len(grid) == 2
                and int(grid[0]) * int(grid[1]) == spec.num_tokens):
            return int(grid[0]), int(grid[1])
    return grid_from_spec(spec)


def cell_centres(grid: tuple[int, int]) -> np.ndarray:
    """Return ``[rows * cols, 2]`` float32 cell centres ``(x, y)`` in cell units, row-major."""
    rows, cols = grid
    y, x = np.mgrid[0:rows, 0:cols]
    return np.stack([x.ravel() + 0.5, y.ravel() + 0.5], axis=1).astype(np.float32)


def mutual_matches(query: np.ndarray,
                   candidates: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return the mutual nearest neighbours of ``query`` ``[N, C]`` in each of ``[K, N, C]``.

    One ``(query_cells, candidate_cells)`` pair of int64 index arrays per candidate, ordered by
    query cell. Cosine similarity of the L2-normalised tokens, in float32, from one matrix
    product for all candidates.
    """
    with torch.inference_mode():
        a = unit_tokens(torch.from_numpy(np.ascontiguousarray(query)))
        b = unit_tokens(torch.from_numpy(np.ascontiguousarray(candidates)))
        count, tokens, width = b.shape
        similarity = (b.reshape(count * tokens, width) @ a.T).reshape(count, tokens, -1)
        # max(...).indices: argmax along the strided axis is 2-3x slower on a CPU.
        best_query = similarity.max(dim=2).indices       # [K, M]: each candidate token's best
        best_candidate = similarity.max(dim=1).indices   # [K, N]: each query token's best
        own = torch.arange(a.shape[0]).expand_as(best_candidate)
        mutual = best_query.gather(1, best_candidate) == own
    best_candidate, mutual = best_candidate.numpy(), mutual.numpy()
    return [(np.flatnonzero(row), best[row]) for best, row in zip(best_candidate, mutual)]


def fit_transform(source: np.ndarray, target: np.ndarray, model: str = 'affine',
                  threshold: float = 1.0) -> tuple[Optional[np.ndarray], np.ndarray]:
    """Fit ``model`` from ``source`` to ``target`` points ``[M, 2]`` by RANSAC.

    Returns the transform (None when there are too few points or the fit degenerates) and the
    ``[M]`` boolean inlier mask (all False without a transform). ``threshold`` is the inlier
    distance in the points' units (reprojection distance; epipolar distance for
    ``fundamental``).
    """
    if model not in VERIFY_MODELS:
        raise VerificationError(f'unknown geometric model {model!r}; valid: {VERIFY_MODELS}')
    none = np.zeros(len(source), bool)
    if len(source) < MIN_MATCHES[model]:
        return None, none
    source = np.ascontiguousarray(source, np.float32)
    target = np.ascontiguousarray(target, np.float32)
    try:
        if model == 'affine':
            transform, mask = cv2.estimateAffine2D(
                source, target, method=cv2.RANSAC, ransacReprojThreshold=threshold,
                maxIters=RANSAC_MAX_ITERS, confidence=RANSAC_CONFIDENCE)
        elif model == 'homography':
            transform, mask = cv2.findHomography(
                source, target, cv2.USAC_MAGSAC, threshold, maxIters=RANSAC_MAX_ITERS,
                confidence=RANSAC_CONFIDENCE)
        else:
            transform, mask = cv2.findFundamentalMat(
                source, target, cv2.USAC_MAGSAC, threshold, RANSAC_CONFIDENCE, RANSAC_MAX_ITERS)
    except cv2.error as error:  # degenerate configurations (e.g. all points on a line)
        LOG.debug('%s RANSAC failed on %d points: %s', model, len(source), error)
        return None, none
    if transform is None or mask is None or transform.size == 0:
        return None, none
    return transform[:3], mask.ravel().astype(bool)


def verify(query: np.ndarray, candidates: np.ndarray, grid: tuple[int, int],
           model: str = 'affine', threshold: float = 1.0) -> list[PairVerification]:
    """Verify ``query`` tokens ``[N, C]`` against each candidate's ``[K, N, C]`` on ``grid``.

    Tokens are row-major over ``grid`` (rows, cols); any float dtype (the map's float16 too).
    """
    cells = grid[0] * grid[1]
    candidates = np.asarray(candidates)
    if (np.ndim(query) != 2 or query.shape[0] != cells or candidates.ndim != 3
            or candidates.shape[1:] != query.shape):
        raise VerificationError(f'verification on grid {tuple(grid)} expects query [{cells}, C] '
                                f'and candidates [K, {cells}, C] tokens, got '
                                f'{list(np.shape(query))} and {list(candidates.shape)}')
    if len(candidates) == 0:
        return []
    centres = cell_centres(grid)
    out = []
    for query_cells, candidate_cells in mutual_matches(query, candidates):
        transform, mask = fit_transform(centres[query_cells], centres[candidate_cells], model,
                                        threshold)
        out.append(PairVerification(query_cells, candidate_cells, mask, transform))
    return out


def count_inliers(query: np.ndarray, candidates: np.ndarray, grid: tuple[int, int],
                  model: str = 'affine', threshold: float = 1.0) -> np.ndarray:
    """Return the ``[K]`` int64 inlier counts of :func:`verify`."""
    return np.array([pair.inliers for pair in verify(query, candidates, grid, model, threshold)],
                    np.int64)
