"""Logistic calibration against a closed-form case and a brute-force likelihood search."""

import numpy as np
import pytest

from vpr_ros.errors import ConfigError
from vpr_ros.models.calibration import Calibration, fit_calibration


def test_probability_closed_form() -> None:
    """sigmoid(scale * s + offset) at hand-picked points."""
    cal = Calibration(scale=2.0, offset=-1.0)
    p = cal.probability(np.array([0.5, 0.0, 1e6]))
    assert p[0] == pytest.approx(0.5)
    assert p[1] == pytest.approx(1 / (1 + np.e))
    assert p[2] == pytest.approx(1.0)


def _nll(scale: float, offset: float, x: np.ndarray, y: np.ndarray) -> float:
    p = Calibration(scale, offset).probability(x).clip(1e-12, 1 - 1e-12)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).sum())


def test_fit_recovers_generating_parameters_and_beats_grid() -> None:
    """The fit finds the maximum-likelihood point: no grid point has a lower loss."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=4000)
    y = (rng.random(4000) < Calibration(3.0, 0.5).probability(x)).astype(float)
    cal = fit_calibration(x, y)
    assert cal.scale == pytest.approx(3.0, abs=0.35)
    assert cal.offset == pytest.approx(0.5, abs=0.2)
    best = _nll(cal.scale, cal.offset, x, y)
    grid = [_nll(a, b, x, y) for a in np.linspace(2, 4, 21) for b in np.linspace(0, 1, 21)]
    assert best <= min(grid) + 1e-6


def test_fit_rejects_one_class() -> None:
    """Labels of a single class cannot be calibrated."""
    with pytest.raises(ConfigError, match='both 0 and 1'):
        fit_calibration(np.arange(3.0), np.ones(3))
