"""Set-up shared by the training tests: recipes, single thread, no progress bars, gradients.

A test module activates the autouse fixture by importing it::

    from training_fixtures import CONFIGS, quiet
    from training_fixtures import one_thread  # noqa: F401  (autouse fixture)
"""

from typing import Iterable, Iterator

from conftest import REPO_ROOT
import numpy as np
import pytest
import torch

CONFIGS = REPO_ROOT / 'training' / 'vpr_ros_training' / 'configs'


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Run single-threaded: deterministic CPU kernels, and fair to a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def quiet(iterable: Iterable, total: int) -> Iterable:
    """Return the batches without a progress bar."""
    return iterable


def finite_difference(function, x: np.ndarray, step: float = 1e-6) -> np.ndarray:
    """Return the central finite-difference gradient of a scalar numpy function."""
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[index] += step
        minus[index] -= step
        grad[index] = (function(plus) - function(minus)) / (2 * step)
    return grad
