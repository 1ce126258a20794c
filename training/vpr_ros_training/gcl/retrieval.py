"""Held-out Recall@N of a global-descriptor model (GCL, SARE and StructVPR evaluation).

Images go through :func:`vpr_ros.models.preprocessing.preprocess` (resize to the model's input
size,
ImageNet normalisation), descriptors are L2-normalised, the database is ranked by inner product
(the same order as L2 distance) and :func:`vpr_ros.evaluation.metrics.recall_at_n` counts a query
as
found at ``N`` when a positive is among its first ``N`` results (queries without positives count
as misses).
"""

from typing import Callable, Optional, Sequence

import numpy as np
import torch

from vpr_ros.evaluation.metrics import recall_at_n
from vpr_ros.models.preprocessing import preprocess
from vpr_ros_training.places import PlaceTable
from vpr_ros_training.traversal import EvalSet

RECALL_VALUES = (1, 5, 10)

Transform = Callable[[Sequence[np.ndarray]], torch.Tensor]


@torch.no_grad()
def describe_items(model: torch.nn.Module, items: Sequence, batch_size: int = 32,
                   device: torch.device = torch.device('cpu'),
                   transform: Optional[Transform] = None) -> np.ndarray:
    """Return ``[N, D] float32`` global descriptors of image items (paths or RGB arrays).

    Without ``transform`` items are read with :meth:`PlaceTable.load` and preprocessed for the
    model's spec; a ``transform`` receives the raw items of a batch and returns the input tensor.
    """
    was_training = model.training
    model.eval()
    transform = transform or (lambda batch: preprocess([PlaceTable.load(i) for i in batch],
                                                       model.spec))
    chunks = []
    for start in range(0, len(items), batch_size):
        inputs = transform(list(items[start:start + batch_size])).to(device)
        chunks.append(model.describe(inputs)[0].float().cpu())
    model.train(was_training)
    if not chunks:
        return np.zeros((0, model.spec.descriptor_dim), np.float32)
    return torch.cat(chunks).numpy()


def rank_database(query: np.ndarray, database: np.ndarray, top_k: int = 0) -> np.ndarray:
    """Return ``[Q, K]`` database indices by decreasing inner product (``K`` 0 = all)."""
    order = np.argsort(-(query @ database.T), axis=1, kind='stable')
    return order[:, :top_k] if top_k else order


def recalls(query: np.ndarray, database: np.ndarray, positives: Sequence[Sequence[int]],
            ns: Sequence[int] = RECALL_VALUES) -> dict[str, float]:
    """Return ``{'r@N': percent}`` of descriptor sets against the ground-truth positives."""
    ranking = rank_database(query, database, max(ns))
    found = recall_at_n(ranking, [list(p) for p in positives], ns)
    return {f'r@{n}': v for n, v in found.items()}


def evaluate_recall(model: torch.nn.Module, eval_set: EvalSet, batch_size: int = 32,
                    device: torch.device = torch.device('cpu'),
                    transform: Optional[Transform] = None) -> dict[str, float]:
    """Return Recall@1/5/10 (percent) of ``model`` on ``eval_set``."""
    query = describe_items(model, eval_set.queries, batch_size, device, transform)
    database = describe_items(model, eval_set.database, batch_size, device, transform)
    return recalls(query, database, eval_set.positives)
