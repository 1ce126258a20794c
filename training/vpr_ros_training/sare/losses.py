"""SARE losses (independent and joint) and the triplet and contrastive baselines on tuples.

Inputs are a query ``q`` ``[B, D]``, its positive ``p`` ``[B, D]`` and ``J`` negatives ``n``
``[B, J, D]``, all L2-normalised by the network. With squared distances ``d_p^2 = ||q - p||^2``,
``d_j^2 = ||q - n_j||^2`` and a kernel ``k``, the match-ability of the positive is
``c_p = k_p / (k_p + sum_j k_j)`` (joint) or ``k_p / (k_p + k_j)`` per negative (independent),
and the loss is ``KL(one-hot || c) = -log c_p``::

    joint:  L = log(1 + sum_j k_j / k_p)          independent:  L = sum_j log(1 + k_j / k_p)

Kernels, with the temperature ``T`` (``s = d^2 / (2 T)``):

* ``gaussian``:    ``k = exp(-s)``             (the paper's main kernel)
* ``cauchy``:      ``k = 1 / (1 + s)``
* ``exponential``: ``k = exp(-d / (2 T))``     (``d`` not squared)

``T = 0.5`` reproduces the official MATLAB kernels exactly (``exp(-d^2)``, ``1 / (1 + d^2)``,
``exp(-d)``). For unit vectors ``-d^2 / (2 T) = q.x / T - 1 / T``, so the Gaussian kernel with
``T = 0.07`` is the dot-product softmax with temperature 0.07 that OpenIBL's PyTorch
re-implementation used to reproduce the paper's numbers (deepIBL itself has no temperature).

Normalisation (``reduction``): ``triplets`` divides the summed loss by the number of
(query, negative) pairs ``B * J`` (the MATLAB update and OpenIBL's independent variant),
``queries`` by ``B``, ``sum`` not at all.

Baselines: the NetVLAD triplet ranking loss ``sum_j max(0, m + d_p^2 - d_j^2)`` (squared
distances, ``m = 0.1`` as in the MatConvNet code) and the contrastive loss
``d_p^2 / 2 + sum_j max(tau - d_j, 0)^2 / 2``, both with the same reductions.
"""

import torch
from torch.nn import functional as F

KERNELS = ('gaussian', 'cauchy', 'exponential')
VARIANTS = ('ind', 'joint')
REDUCTIONS = ('triplets', 'queries', 'sum')
MATLAB_TEMPERATURE = 0.5
OPENIBL_TEMPERATURE = 0.07


def squared_distances(q: torch.Tensor, p: torch.Tensor,
                      n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(d_p^2 [B], d_j^2 [B, J])``."""
    return (q - p).pow(2).sum(-1), (q.unsqueeze(1) - n).pow(2).sum(-1)


def log_kernel(d2: torch.Tensor, kernel: str, temperature: float) -> torch.Tensor:
    """Return ``log k`` of squared distances ``d2`` for ``kernel`` at ``temperature``."""
    scaled = d2 / (2.0 * temperature)
    if kernel == 'gaussian':
        return -scaled
    if kernel == 'cauchy':
        return -torch.log1p(scaled)
    if kernel == 'exponential':
        return -(d2 + 1e-12).sqrt() / (2.0 * temperature)
    raise ValueError(f'unknown SARE kernel {kernel!r}; valid: {KERNELS}')


def normalise(total: torch.Tensor, batch: int, negatives: int, reduction: str) -> torch.Tensor:
    """Divide a summed loss by ``B * J``, ``B`` or 1."""
    if reduction == 'triplets':
        return total / (batch * negatives)
    if reduction == 'queries':
        return total / batch
    if reduction == 'sum':
        return total
    raise ValueError(f'reduction must be one of {REDUCTIONS}, got {reduction!r}')


def sare_loss(q: torch.Tensor, p: torch.Tensor, n: torch.Tensor, variant: str = 'ind',
              kernel: str = 'gaussian', temperature: float = MATLAB_TEMPERATURE,
              reduction: str = 'triplets') -> torch.Tensor:
    """Return the SARE loss of a batch of tuples (see the module docstring)."""
    d2p, d2n = squared_distances(q, p, n)
    logits = log_kernel(d2n, kernel, temperature) - log_kernel(d2p, kernel, temperature)[:, None]
    if variant == 'joint':
        zero = torch.zeros_like(logits[:, :1])
        total = torch.logsumexp(torch.cat([zero, logits], dim=1), dim=1).sum()
    elif variant == 'ind':
        total = F.softplus(logits).sum()
    else:
        raise ValueError(f'unknown SARE variant {variant!r}; valid: {VARIANTS}')
    return normalise(total, n.shape[0], n.shape[1], reduction)


def triplet_loss(q: torch.Tensor, p: torch.Tensor, n: torch.Tensor, margin: float = 0.1,
                 reduction: str = 'triplets') -> torch.Tensor:
    """Return the NetVLAD triplet ranking loss on squared distances."""
    d2p, d2n = squared_distances(q, p, n)
    total = F.relu(margin + d2p[:, None] - d2n).sum()
    return normalise(total, n.shape[0], n.shape[1], reduction)


def contrastive_tuple_loss(q: torch.Tensor, p: torch.Tensor, n: torch.Tensor,
                           margin: float = 0.5, reduction: str = 'triplets') -> torch.Tensor:
    """Return the contrastive loss of every (query, positive) and (query, negative) pair."""
    d2p, d2n = squared_distances(q, p, n)
    dn = (d2n + 1e-12).sqrt()
    total = 0.5 * d2p.sum() + 0.5 * F.relu(margin - dn).pow(2).sum()
    return normalise(total, n.shape[0], n.shape[1], reduction)
