"""Mapping of raw match scores to probabilities of "same place" (logistic calibration)."""

from dataclasses import dataclass

import numpy as np

from vpr_ros.errors import ConfigError


@dataclass(frozen=True)
class Calibration:
    """``P(same place) = sigmoid(scale * score + offset)``."""

    scale: float
    offset: float

    def probability(self, scores: np.ndarray) -> np.ndarray:
        """Return calibrated probabilities for ``scores`` (any shape)."""
        z = self.scale * np.asarray(scores, dtype=np.float64) + self.offset
        return 1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))


# Pair scores are the sum of two BCE-trained logits, so sigmoid(sum / 2) is the mean-logit
# probability the classifier was trained to output.
PAIR_SCORE_CALIBRATION = Calibration(scale=0.5, offset=0.0)
# Cosine similarity of global descriptors has no trained probability; this default puts P = 0.5
# at similarity 0.75. Fit a calibration on held-out data (fit_calibration) for loop closure.
GLOBAL_SIMILARITY_CALIBRATION = Calibration(scale=20.0, offset=-15.0)


def fit_calibration(scores: np.ndarray, labels: np.ndarray, iterations: int = 100,
                    l2: float = 1e-6) -> Calibration:
    """Fit ``scale`` and ``offset`` by maximum likelihood (Newton's method, tiny L2 prior).

    Args:
        scores: ``[N]`` raw scores.
        labels: ``[N]`` 1 for the same place, 0 otherwise; both classes must occur.
        iterations: Newton steps at most.
        l2: ridge weight that keeps separable data finite.

    """
    x = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if x.shape != y.shape or x.size == 0:
        raise ConfigError(f'need equal, non-empty scores and labels, got {x.shape} and {y.shape}')
    if not set(np.unique(y)) == {0.0, 1.0}:
        raise ConfigError('calibration labels must contain both 0 and 1 (and nothing else)')
    design = np.stack([x, np.ones_like(x)], axis=1)
    w = np.zeros(2)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ w, -60.0, 60.0)))
        gradient = design.T @ (p - y) + l2 * w
        hessian = (design * (p * (1 - p))[:, None]).T @ design + l2 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return Calibration(scale=float(w[0]), offset=float(w[1]))
