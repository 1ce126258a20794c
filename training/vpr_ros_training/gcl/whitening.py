"""PCA-whitening of global descriptors (Radenovic's ``pcawhitenlearn``), learned without labels.

Learned from a set of L2-normalised descriptors ``X`` ``[N, D]``: mean ``m``, eigen-decomposition
of the covariance ``(X - m)^T (X - m) / N = V diag(lambda) V^T``, and the projection
``P = V_k diag(lambda_k + eps)^(-1/2)`` onto the ``k`` leading components. Applied as
``L2((x - m) P)``. Until it is learned (``fitted`` False) networks skip it, so training and
mining see the un-whitened descriptors. GCL learns it on the evaluation map's descriptors
(``apply_pca.py``); SARE and NetVLAD learn it on training descriptors and keep 4,096
dimensions. With ``N < D`` (NetVLAD's 32,768 dimensions) the components come from a thin SVD of
``X - m`` instead of the covariance.
"""

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from vpr_ros.errors import ConfigError

EIGEN_EPS = 1e-9


def learn_pca_whitening(descriptors: np.ndarray, dim: int,
                        eps: float = EIGEN_EPS) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(mean [D], projection [D, dim])`` learned from ``descriptors`` ``[N, D]``."""
    x = torch.as_tensor(np.asarray(descriptors), dtype=torch.float64)
    if x.ndim != 2 or not 1 <= dim <= min(x.shape):
        raise ConfigError(f'PCA-whitening to {dim} dims needs [N, D] descriptors with '
                          f'N, D >= {dim}; got {tuple(x.shape)}')
    mean = x.mean(dim=0)
    centred = x - mean
    if x.shape[1] <= x.shape[0]:
        values, vectors = torch.linalg.eigh(centred.T @ centred / x.shape[0])
        values, vectors = values.flip(0), vectors.flip(1)
    else:
        _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
        values, vectors = singular.pow(2) / x.shape[0], vh.T
    projection = vectors[:, :dim] / (values[:dim].clamp(min=0) + eps).sqrt()
    return mean.numpy().astype(np.float32), projection.numpy().astype(np.float32)


class PcaWhitening(nn.Module):
    """``L2((x - mean) @ projection)`` with the mean and projection as buffers."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        """Create an empty whitening (``fitted`` False) to be filled by :meth:`fit` or a load."""
        super().__init__()
        self.register_buffer('mean', torch.zeros(in_dim))
        self.register_buffer('projection', torch.zeros(in_dim, out_dim))
        self.register_buffer('fitted', torch.zeros((), dtype=torch.bool))

    @property
    def out_dim(self) -> int:
        """Return the output dimension."""
        return int(self.projection.shape[1])

    def fit(self, descriptors: np.ndarray, eps: float = EIGEN_EPS) -> 'PcaWhitening':
        """Learn the whitening from ``descriptors`` ``[N, in_dim]``; return ``self``."""
        mean, projection = learn_pca_whitening(descriptors, self.out_dim, eps)
        self.mean.copy_(torch.from_numpy(mean))
        self.projection.copy_(torch.from_numpy(projection))
        self.fitted.fill_(True)
        return self

    def forward(self, descriptors: torch.Tensor) -> torch.Tensor:
        """Return whitened, L2-normalised descriptors ``[B, out_dim]``."""
        projected = (descriptors.float() - self.mean) @ self.projection
        return F.normalize(projected, dim=-1)
