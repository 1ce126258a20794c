"""NetVLAD pooling (Arandjelovic et al., CVPR 2016) as SARE and NetVLAD-GCL use it.

``vlad_preL2_intra`` in the MatConvNet code: every local feature ``x_n`` (a ``C``-vector of the
``[C, H, W]`` map) is L2-normalised, soft-assigned to ``K`` clusters by
``a_k(x) = softmax_k(w_k . x + b_k)``, the residuals are summed per cluster,
``V_k = sum_n a_k(x_n) (x_n - c_k)``, every ``V_k`` is L2-normalised (intra-normalisation) and the
flattened ``K * C`` vector is L2-normalised again. Without :meth:`NetVlad.init_from_features` the
assignment is random; the published recipe initialises the centroids by k-means on conv5_3
features and sets ``w_k = alpha * c_k / ||c_k||``, ``b_k = 0`` with
``alpha = -log(0.01) / mean(first - second largest dot product)`` (the ``vladv2 = False`` path of
the PyTorch ports).
"""

import logging
import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

LOGGER = logging.getLogger(__name__)

DEFAULT_CLUSTERS = 64
KMEANS_ITERATIONS = 100


class NetVlad(nn.Module):
    """NetVLAD layer: ``[B, C, H, W]`` feature maps to ``[B, K * C]`` L2-normalised descriptors."""

    def __init__(self, dim: int, num_clusters: int = DEFAULT_CLUSTERS,
                 normalise_input: bool = True) -> None:
        """Create ``num_clusters`` randomly initialised clusters for ``dim``-channel features."""
        super().__init__()
        self.dim, self.num_clusters, self.normalise_input = dim, num_clusters, normalise_input
        self.assignment = nn.Conv2d(dim, num_clusters, kernel_size=1, bias=True)
        self.centroids = nn.Parameter(torch.rand(num_clusters, dim))

    @property
    def out_dim(self) -> int:
        """Return ``K * C``."""
        return self.num_clusters * self.dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return the NetVLAD descriptors of ``features`` ``[B, C, H, W]``."""
        if self.normalise_input:
            features = F.normalize(features, dim=1)
        soft = F.softmax(self.assignment(features).flatten(2), dim=1)
        flat = features.flatten(2)
        residuals = (torch.einsum('bkn,bcn->bkc', soft, flat)
                     - self.centroids.unsqueeze(0) * soft.sum(dim=2, keepdim=True))
        intra = F.normalize(residuals, dim=2)
        return F.normalize(intra.flatten(1), dim=1)

    @torch.no_grad()
    def init_from_features(self, local_features: np.ndarray, seed: int = 0) -> None:
        """Initialise centroids (k-means) and assignment weights from ``[M, C]`` local features.

        The features must already be L2-normalised per location when ``normalise_input`` is set.
        """
        centroids = kmeans(np.asarray(local_features, dtype=np.float32), self.num_clusters, seed)
        directions = centroids / np.linalg.norm(centroids, axis=1, keepdims=True).clip(1e-12)
        dots = np.sort(directions @ np.asarray(local_features, np.float32).T, axis=0)[::-1]
        alpha = -math.log(0.01) / max(float(np.mean(dots[0] - dots[1])), 1e-6)
        self.centroids.copy_(torch.from_numpy(centroids))
        self.assignment.weight.copy_(torch.from_numpy(alpha * directions)[:, :, None, None])
        self.assignment.bias.zero_()
        LOGGER.info('NetVLAD initialised: %d clusters, alpha %.2f', self.num_clusters, alpha)


def kmeans_plus_plus(points: np.ndarray, clusters: int, seed: int = 0) -> np.ndarray:
    """Return ``clusters`` k-means++ seeds (each next seed drawn with probability ~ d^2)."""
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(len(points)))]
    nearest = ((points - points[chosen[0]]) ** 2).sum(1)
    for _ in range(clusters - 1):
        total = float(nearest.sum())
        index = int(rng.choice(len(points), p=nearest / total)) if total > 0 else \
            int(rng.integers(len(points)))
        chosen.append(index)
        nearest = np.minimum(nearest, ((points - points[index]) ** 2).sum(1))
    return points[chosen].copy()


def kmeans(points: np.ndarray, clusters: int, seed: int = 0) -> np.ndarray:
    """Return ``[clusters, C]`` k-means centroids of ``points`` (k-means++ seeds, faiss, CPU)."""
    import faiss
    if len(points) < clusters:
        raise ValueError(f'k-means needs at least {clusters} points, got {len(points)}')
    points = np.ascontiguousarray(points, dtype=np.float32)
    model = faiss.Kmeans(points.shape[1], clusters, niter=KMEANS_ITERATIONS, seed=seed,
                         verbose=False, min_points_per_centroid=1)
    model.train(points, init_centroids=kmeans_plus_plus(points, clusters, seed))
    return np.asarray(model.centroids, dtype=np.float32)


def sample_local_features(feature_maps: torch.Tensor, per_image: int, seed: int = 0,
                          normalise: bool = True) -> np.ndarray:
    """Return up to ``per_image`` random local features ``[M, C]`` of each ``[B, C, H, W]`` map."""
    generator = torch.Generator().manual_seed(seed)
    if normalise:
        feature_maps = F.normalize(feature_maps, dim=1)
    flat = feature_maps.flatten(2).transpose(1, 2)
    chosen = [f[torch.randperm(f.shape[0], generator=generator)[:per_image]] for f in flat]
    return torch.cat(chosen).float().cpu().numpy()
