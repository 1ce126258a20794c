"""The generalized contrastive loss and the standard (binary) contrastive loss.

For descriptors ``f0``, ``f1`` (L2-normalised inside the loss) at distance
``d = ||f0 - f1||_2`` and graded similarity ``psi`` in [0, 1]::

    L_GCL = psi * d**2 / 2 + (1 - psi) * max(tau - d, 0)**2 / 2        (tau = 0.5)
    dL/dd = psi * d - (1 - psi) * max(tau - d, 0)

as in ``src/criteria.py:ContrastiveLoss`` of the official code; the batch loss is the mean over
pairs. With binary labels this is Hadsell et al.'s contrastive loss (the paper's CL baseline).
"""

import torch
from torch.nn import functional as F

DEFAULT_MARGIN = 0.5


def pair_distance(f0: torch.Tensor, f1: torch.Tensor, normalise: bool = True) -> torch.Tensor:
    """Return ``||f0 - f1||_2`` per row of ``[B, D]`` inputs (L2-normalised first by default).

    The square root gets a tiny floor so that identical descriptors have a finite gradient.
    """
    if normalise:
        f0, f1 = F.normalize(f0, dim=-1), F.normalize(f1, dim=-1)
    return ((f0 - f1).pow(2).sum(dim=-1) + 1e-12).sqrt()


def reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    """Return the mean, sum or the unreduced per-pair values."""
    if reduction == 'mean':
        return values.mean()
    if reduction == 'sum':
        return values.sum()
    if reduction == 'none':
        return values
    raise ValueError(f'reduction must be mean, sum or none, got {reduction!r}')


def gcl_loss(f0: torch.Tensor, f1: torch.Tensor, psi: torch.Tensor,
             margin: float = DEFAULT_MARGIN, reduction: str = 'mean') -> torch.Tensor:
    """Return the generalized contrastive loss of ``[B, D]`` descriptor pairs, labels ``psi``."""
    d = pair_distance(f0, f1)
    psi = psi.to(d.dtype)
    per_pair = psi * 0.5 * d.pow(2) + (1.0 - psi) * 0.5 * F.relu(margin - d).pow(2)
    return reduce(per_pair, reduction)


def contrastive_loss(f0: torch.Tensor, f1: torch.Tensor, same_place: torch.Tensor,
                     margin: float = DEFAULT_MARGIN, reduction: str = 'mean') -> torch.Tensor:
    """Return the standard contrastive loss: attract same-place pairs, repel others inside tau."""
    d = pair_distance(f0, f1)
    per_pair = torch.where(same_place.bool(), 0.5 * d.pow(2), 0.5 * F.relu(margin - d).pow(2))
    return reduce(per_pair, reduction)
