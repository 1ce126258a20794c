"""The interface every VPR model implements: one method per computation."""

from typing import Optional

import torch
from torch import nn

from vpr_ros.models.fusion import RerankScoring
from vpr_ros.models.spec import ModelSpec


class VprModel(nn.Module):
    """A global-descriptor model with an optional pair classifier for re-ranking.

    Subclasses set ``self.spec`` and implement :meth:`describe`; models with a pair classifier also
    implement :meth:`pair_logit`. Images are ``[B, 3, H, W]`` float tensors already normalised by
    :func:`vpr_ros.models.preprocessing.preprocess`.

    ``rerank_scoring`` is the score fusion and calibration that came with the model's weights
    (set by :func:`~vpr_ros.models.checkpoint.load_checkpoint`; None for untrained or
    registry-built models). It is not part of the spec: maps do not depend on it.
    """

    spec: ModelSpec
    rerank_scoring: Optional[RerankScoring] = None
    onnx_exportable: bool = True
    """False for models whose graphs must not be exported (``backend: auto`` keeps PyTorch)."""

    def describe(self, images: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Return ``(global [B, D] L2-normalised, tokens [B, N, C] or None)`` in one pass."""
        raise NotImplementedError

    def global_descriptor(self, images: torch.Tensor) -> torch.Tensor:
        """Return L2-normalised global descriptors ``[B, D]``."""
        return self.describe(images)[0]

    def dense_features(self, images: torch.Tensor) -> torch.Tensor:
        """Return the dense tokens ``[B, N, C]`` that the pair classifier consumes."""
        tokens = self.describe(images)[1]
        if tokens is None:
            raise NotImplementedError(f'{self.spec.architecture} has no dense features')
        return tokens

    def pair_logit(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Return the same-place logit ``[B]`` with ``first`` as the decoder's updated stream."""
        raise NotImplementedError(f'{self.spec.architecture} has no pair classifier')

    def pair_score(self, query: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        """Return the symmetric re-ranking score ``[B]``: both input orders' logits summed."""
        return self.pair_logit(query, candidate) + self.pair_logit(candidate, query)

    def score_candidates(self, query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Return ``[K]`` symmetric scores of one query's tokens ``[N, C]`` against ``[K, N, C]``.

        Models that can share the query's work across candidates override this.
        """
        return self.pair_score(query[None].expand(len(candidates), -1, -1), candidates)
