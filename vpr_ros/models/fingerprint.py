"""A model's numerical fingerprint: what it computes for two fixed, seeded images.

Shipped weights record their fingerprint next to them; a test recomputes it, so a weights file
that loads but computes something else (another file under the same name, a changed
preprocessing or encoder) is caught. The images are generated from a fixed seed with numpy, so
they are the same on every machine; values are compared with a tolerance, not bit for bit,
because float summation order differs between CPUs and thread counts.
"""

from typing import Mapping

import numpy as np
import torch

from vpr_ros.models.preprocessing import preprocess

FINGERPRINT_SEED = 20261202
FINGERPRINT_TOLERANCE = 2e-3
HEAD_VALUES = 8


def fingerprint_images(height: int, width: int) -> list[np.ndarray]:
    """Return two ``[height, width, 3] uint8`` images: smooth seeded blobs and a shifted view."""
    rng = np.random.default_rng(FINGERPRINT_SEED)
    coarse = rng.uniform(0, 255, (height // 16 + 2, width // 16 + 3, 3))
    rows = np.linspace(0, coarse.shape[0] - 2, height)
    cols = np.linspace(0, coarse.shape[1] - 3, width)
    image = _bilinear(coarse, rows, cols)
    shifted = _bilinear(coarse, rows, cols + 0.5)
    return [np.clip(v, 0, 255).astype(np.uint8) for v in (image, shifted)]


def _bilinear(grid: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Sample ``grid [h, w, 3]`` at fractional ``rows`` x ``cols`` (bilinear)."""
    r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
    fr, fc = (rows - r0)[:, None, None], (cols - c0)[None, :, None]
    top = grid[r0][:, c0] * (1 - fc) + grid[r0][:, c0 + 1] * fc
    bottom = grid[r0 + 1][:, c0] * (1 - fc) + grid[r0 + 1][:, c0 + 1] * fc
    return top * (1 - fr) + bottom * fr


@torch.no_grad()
def model_fingerprint(model: torch.nn.Module) -> dict:
    """Return the fingerprint: descriptor statistics, token statistics and the pair score."""
    model = model.eval()
    height, width = model.spec.input_size
    batch = preprocess(fingerprint_images(height, width), model.spec)
    descriptors, tokens = model.describe(batch)
    result = {'descriptor_sum': float(descriptors[0].sum()),
              'descriptor_head': [float(v) for v in descriptors[0, :HEAD_VALUES]],
              'descriptor_similarity': float(descriptors[0] @ descriptors[1])}
    if tokens is not None:
        result['token_abs_mean'] = float(tokens.abs().mean())
        result['token_head'] = [float(v) for v in tokens[0, 0, :HEAD_VALUES]]
    if model.spec.has_pair_classifier:
        result['pair_score'] = float(model.pair_score(tokens[:1], tokens[1:]))
    return result


def fingerprint_differences(recorded: Mapping, computed: Mapping,
                            tolerance: float = FINGERPRINT_TOLERANCE) -> list[str]:
    """Return ``'key: recorded vs computed'`` for every value that differs beyond tolerance.

    The tolerance is absolute for values up to 1 and relative above.
    """
    problems = []
    for key in sorted(set(recorded) | set(computed)):
        a, b = np.atleast_1d(recorded.get(key, np.nan)), np.atleast_1d(computed.get(key, np.nan))
        scale = np.maximum(1.0, np.abs(a))
        if a.shape != b.shape or not np.all(np.abs(a - b) <= tolerance * scale):
            problems.append(f'{key}: recorded {recorded.get(key)} vs computed {computed.get(key)}')
    return problems
