"""Sample partition and distillation weights from teacher and student ranks (StructVPR).

For every training query, ``x`` is the 1-based rank of its first true positive in the *teacher*
(SEG) retrieval over the training database and ``y`` the same rank in the *student* (RGB)
retrieval (ranks beyond ``max_rank`` count as ``max_rank + 1``). The StructVPR paper partitions
samples into groups D1-D4, S1-S2 and R1-R2 and weights the distillation of each sample so that
"the higher the knowledge level [of the teacher], the greater the weight" and "the greater the
gap [between teacher and student], the greater the weight" (project seed, poster). Its exact
thresholds and weight function are **unverified**; this module implements the following reading,
every constant a :class:`PartitionConfig` field:

* teacher knowledge: ``S1`` = ``x <= teacher_max_rank`` (the teacher retrieves the place),
  ``S2`` = the rest (= ``D4``; weight 0, the teacher has no useful knowledge of the sample);
* gap ``g = y - x`` within ``S1``: ``D1`` = ``g >= large_gap``, ``D3`` = ``0 < g < large_gap``,
  ``D2`` = ``g <= 0``; the seed's ablation table is consistent with this (D1 + D2 + D3 = S1 =
  69.55 % of MSLS samples, S2 = D4 = 30.45 %);
* student level (logged only): ``R1`` = ``y <= student_good_rank``, ``R2`` = the rest;
* weight ``w = kappa(x) * (base_weight + (1 - base_weight) * gamma(max(g, 0)))`` on ``S1``, 0 on
  ``S2``, with ``kappa(x) = exp(-(x - 1) / knowledge_scale)`` (1 for a top-1 teacher) and
  ``gamma(g) = 1 - exp(-g / gap_scale)``; with ``zero_when_student_better`` samples the student
  already ranks better than the teacher (``y < x``) get weight 0 (harmful knowledge).

The partition is recomputed from the current student at every cache refresh (cadence unverified).
"""

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from vpr_ros.config import validate
from vpr_ros.evaluation.metrics import first_positive_ranks
from vpr_ros_training.config import option

GROUPS = ('S1', 'S2', 'D1', 'D2', 'D3', 'D4', 'R1', 'R2')


@dataclass(frozen=True)
class PartitionConfig:
    """Thresholds and weight function of the sample partition (all unverified assumptions)."""

    teacher_max_rank: int = option(5, 'S1 (teacher knows the sample) when the teacher ranks '
                                   'the positive at or above this; else S2/D4, weight 0',
                                   (1, 100000))
    large_gap: int = option(10, 'D1 when the student ranks the positive this many places '
                            'below the teacher (D3 below that, D2 at or above the teacher)',
                            (1, 100000))
    student_good_rank: int = option(1, 'R1 when the student ranks the positive at or above '
                                    'this (logged only)', (1, 100000))
    knowledge_scale: float = option(2.0, 'kappa(x) = exp(-(x - 1) / knowledge_scale)',
                                    (1e-6, 1e6))
    gap_scale: float = option(5.0, 'gamma(g) = 1 - exp(-g / gap_scale)', (1e-6, 1e6))
    base_weight: float = option(0.5, 'weight factor at zero gap (1 at an infinite gap)',
                                (0.0, 1.0))
    zero_when_student_better: bool = option(True, 'weight 0 when the student ranks the '
                                            'positive better than the teacher')
    max_rank: int = option(1000, 'ranks are computed up to this (beyond: max_rank + 1)',
                           (1, 10 ** 7))

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)


def positive_ranks(query: np.ndarray, database: np.ndarray,
                   positives: Sequence[Sequence[int]], max_rank: int) -> np.ndarray:
    """Return the 1-based rank of each query's first positive (``max_rank + 1`` when not found)."""
    scores = query @ database.T
    top = min(max_rank, database.shape[0])
    order = np.argsort(-scores, axis=1, kind='stable')[:, :top]
    ranks = first_positive_ranks(order, [list(p) for p in positives])
    return np.where(ranks >= 0, ranks + 1, max_rank + 1)


def distillation_weights(teacher_rank: np.ndarray, student_rank: np.ndarray,
                         config: PartitionConfig) -> np.ndarray:
    """Return the per-sample distillation weights (see the module docstring)."""
    x = np.asarray(teacher_rank, dtype=np.float64)
    y = np.asarray(student_rank, dtype=np.float64)
    kappa = np.exp(-(x - 1.0) / config.knowledge_scale)
    gamma = 1.0 - np.exp(-np.maximum(y - x, 0.0) / config.gap_scale)
    weights = kappa * (config.base_weight + (1.0 - config.base_weight) * gamma)
    weights[x > config.teacher_max_rank] = 0.0
    if config.zero_when_student_better:
        weights[y < x] = 0.0
    return weights


def partition(teacher_rank: np.ndarray, student_rank: np.ndarray,
              config: PartitionConfig) -> dict[str, np.ndarray]:
    """Return a boolean membership mask of every group in :data:`GROUPS`."""
    x, y = np.asarray(teacher_rank), np.asarray(student_rank)
    s1 = x <= config.teacher_max_rank
    gap = y - x
    return {'S1': s1, 'S2': ~s1, 'D1': s1 & (gap >= config.large_gap),
            'D2': s1 & (gap <= 0), 'D3': s1 & (gap > 0) & (gap < config.large_gap),
            'D4': ~s1, 'R1': y <= config.student_good_rank,
            'R2': y > config.student_good_rank}


def group_fractions(teacher_rank: np.ndarray, student_rank: np.ndarray,
                    config: PartitionConfig) -> dict[str, float]:
    """Return the fraction of samples in every group (for logging group occupancy)."""
    groups = partition(teacher_rank, student_rank, config)
    count = max(len(np.asarray(teacher_rank)), 1)
    return {name: float(mask.sum()) / count for name, mask in groups.items()}
