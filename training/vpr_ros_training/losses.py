"""Pair-VPR losses: stage-one masked pixel regression, stage-two multi-similarity + pair BCE.

Stage one: the target is the first image cut into 14x14 patches (``patchify``), each patch
normalised by its own mean and (unbiased) variance, ``(p - mean) / sqrt(var + 1e-6)``; the loss is
the per-patch mean squared error averaged over the masked patches only.

Stage two: ``L = L_MS + pair_weight * L_pair``. ``L_MS`` is pytorch-metric-learning's
``MultiSimilarityLoss(alpha, beta, base)`` with dot-product similarity on the L2-normalised global
descriptors, over the pairs chosen by ``MultiSimilarityMiner(epsilon)`` (cosine similarity).
``L_pair`` is the binary cross-entropy of the pair classifier on every anchor's batch-hard
positive (label 1) and batch-hard negative (label 0), mined by ``BatchHardMiner`` on the global
descriptors; the anchor is always the decoder's first input.
"""

from dataclasses import dataclass

from pytorch_metric_learning import losses, miners
from pytorch_metric_learning.distances import CosineSimilarity, DotProductSimilarity
import torch
from torch.nn import functional as F

from vpr_ros.models.pairvpr import patchify

PATCH_NORM_EPS = 1e-6


def normalised_patch_targets(patches: torch.Tensor, eps: float = PATCH_NORM_EPS) -> torch.Tensor:
    """Normalise every patch row ``[..., P]`` by its mean and unbiased variance."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps) ** 0.5


def masked_mse(prediction: torch.Tensor, target: torch.Tensor,
               mask: torch.Tensor) -> torch.Tensor:
    """Return the mean over masked patches of the per-patch mean squared error.

    Args:
        prediction: ``[B, N, P]`` predicted patch values.
        target: ``[B, N, P]`` target patch values.
        mask: ``[B, N]`` bool, True where the patch was masked.
    """
    per_patch = (prediction.float() - target.float()).pow(2).mean(dim=-1)
    weights = mask.to(per_patch.dtype)
    return (per_patch * weights).sum() / weights.sum().clamp(min=1.0)


def reconstruction_loss(prediction: torch.Tensor, images: torch.Tensor, mask: torch.Tensor,
                        patch_size: int) -> torch.Tensor:
    """Return the stage-one loss of ``prediction`` ``[B, N, P]`` for ``images`` ``[B,3,H,W]``.

    Images whose sides are not multiples of ``patch_size`` are zero-padded (zero = the mean colour
    after normalisation) at the bottom and right, as CNN token grids round up.
    """
    pad_h, pad_w = -images.shape[2] % patch_size, -images.shape[3] % patch_size
    if pad_h or pad_w:
        images = F.pad(images, (0, pad_w, 0, pad_h))
    target = normalised_patch_targets(patchify(images.float(), patch_size))
    return masked_mse(prediction, target, mask)


@dataclass(frozen=True)
class Triplets:
    """Batch-hard triplets: indices of anchors, their hardest positive and hardest negative."""

    anchors: torch.Tensor
    positives: torch.Tensor
    negatives: torch.Tensor

    def __len__(self) -> int:
        """Return the number of triplets."""
        return int(self.anchors.numel())

    def restricted(self, start: int, stop: int) -> 'Triplets':
        """Return the triplets whose anchor index lies in ``[start, stop)``."""
        keep = (self.anchors >= start) & (self.anchors < stop)
        return Triplets(self.anchors[keep], self.positives[keep], self.negatives[keep])


def batch_hard_triplets(descriptors: torch.Tensor, labels: torch.Tensor) -> Triplets:
    """Mine every anchor's farthest positive and closest negative (Euclidean, normalised)."""
    anchors, positives, negatives = miners.BatchHardMiner()(descriptors.detach().float(), labels)
    return Triplets(anchors, positives, negatives)


def pair_bce(positive_logits: torch.Tensor, negative_logits: torch.Tensor,
             normaliser: int | None = None) -> torch.Tensor:
    """Return the BCE of positive (label 1) and negative (label 0) pair logits.

    With ``normaliser`` ``None`` this is the mean over all logits (``BCEWithLogitsLoss``);
    otherwise the sum divided by ``normaliser`` (the global pair count under DDP).
    """
    logits = torch.cat([positive_logits, negative_logits]).float()
    targets = torch.cat([torch.ones_like(positive_logits), torch.zeros_like(negative_logits)])
    total = F.binary_cross_entropy_with_logits(logits, targets.float(), reduction='sum')
    return total / (logits.numel() if normaliser is None else normaliser)


class GlobalLoss:
    """Multi-similarity loss over multi-similarity-mined pairs (the published global loss)."""

    def __init__(self, alpha: float = 1.0, beta: float = 50.0, base: float = 0.0,
                 epsilon: float = 0.1) -> None:
        """Build the pytorch-metric-learning loss and miner."""
        self.loss = losses.MultiSimilarityLoss(alpha=alpha, beta=beta, base=base,
                                               distance=DotProductSimilarity())
        self.miner = miners.MultiSimilarityMiner(epsilon=epsilon, distance=CosineSimilarity())

    def __call__(self, descriptors: torch.Tensor,
                 labels: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Return ``(loss, fraction of anchors without any mined pair)`` for ``[B, D]`` inputs."""
        descriptors = descriptors.float()
        mined = self.miner(descriptors.detach(), labels)
        loss = self.loss(descriptors, labels, mined)
        active = torch.unique(torch.cat([mined[0], mined[2]])).numel()
        return loss, 1.0 - active / max(len(labels), 1)
