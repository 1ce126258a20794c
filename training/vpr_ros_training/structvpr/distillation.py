"""Weighted feature-based distillation loss of StructVPR (form unverified, see partition.py).

``L_KD = sum_i w_i * ||s_i - sg(t_i)||^2 / max(#{i : w_i > 0}, 1)`` over the samples of a batch:
``s_i`` the student's (RGB) global descriptor, ``t_i`` the frozen teacher's (SEG) descriptor of
the same place (gradient stopped), ``w_i`` the partition weight. The total student loss is
``L_VPR + distillation_weight * L_KD`` (``distillation_weight`` = lambda_KD, unverified; 0.1 by
default because 1.0 let the distillation term dominate the triplet loss and collapsed the CPU
toy student).
"""

import torch


def weighted_distillation(student: torch.Tensor, teacher: torch.Tensor,
                          weights: torch.Tensor) -> torch.Tensor:
    """Return the weighted squared-distance distillation loss of ``[B, D]`` descriptors."""
    weights = weights.to(student.dtype)
    squared = (student - teacher.detach()).pow(2).sum(dim=-1)
    active = (weights > 0).sum().clamp(min=1).to(student.dtype)
    return (weights * squared).sum() / active
