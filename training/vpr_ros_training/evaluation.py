"""Held-out evaluation of a Pair-VPR model: global Recall@N, pair-classifier ROC-AUC, re-ranking.

Images go through :func:`vpr_ros.models.preprocessing.preprocess` (the inference resize and
normalisation). Global retrieval ranks the database by inner product of the L2-normalised
descriptors; the pair classifier scores each query's top-``K`` shortlist with both input orders
summed (as the localizer does) and re-ranks it. The pair ROC-AUC is measured over the
shortlisted (query, candidate) pairs labelled by the ground truth; with ``K`` >= database size it
covers every pair.
"""

from typing import Sequence

import numpy as np
import torch

from vpr_ros.evaluation.metrics import recall_at_n
from vpr_ros.models.preprocessing import preprocess
from vpr_ros.models.vpr_model import VprModel
from vpr_ros_training.traversal import EvalSet

RECALL_VALUES = (1, 5, 10)


@torch.no_grad()
def describe_images(model: VprModel, images: Sequence[np.ndarray], batch_size: int = 32,
                    device: torch.device = torch.device('cpu')
                    ) -> tuple[np.ndarray, torch.Tensor]:
    """Return ``(descriptors [N, D] float32, tokens [N, T, C] float32 on the CPU)``."""
    model.eval()
    descriptors, tokens = [], []
    for start in range(0, len(images), batch_size):
        batch = preprocess(images[start:start + batch_size], model.spec, device)
        global_desc, dense = model.describe(batch)
        descriptors.append(global_desc.float().cpu())
        tokens.append(dense.float().cpu())
    return torch.cat(descriptors).numpy(), torch.cat(tokens)


@torch.no_grad()
def pair_score_matrix(model: VprModel, query_tokens: torch.Tensor, db_tokens: torch.Tensor,
                      shortlist: np.ndarray, batch_size: int = 64,
                      device: torch.device = torch.device('cpu')) -> np.ndarray:
    """Return ``[Q, K]`` symmetric pair scores of each query against its shortlisted entries."""
    rows, cols = np.nonzero(np.ones_like(shortlist, dtype=bool))
    scores = np.empty(len(rows), dtype=np.float32)
    for start in range(0, len(rows), batch_size):
        q = query_tokens[rows[start:start + batch_size]].to(device)
        d = db_tokens[shortlist[rows[start:start + batch_size], cols[start:start + batch_size]]]
        scores[start:start + len(q)] = model.pair_score(q, d.to(device)).float().cpu().numpy()
    return scores.reshape(shortlist.shape)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Return the ROC-AUC (Mann-Whitney, ties count half); NaN without both label values."""
    scores, labels = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels).ravel()
    positives, negatives = scores[labels.astype(bool)], scores[~labels.astype(bool)]
    if len(positives) == 0 or len(negatives) == 0:
        return float('nan')
    merged = np.concatenate([positives, negatives])
    ranks = np.empty(len(merged), dtype=np.float64)
    ranks[np.argsort(merged, kind='mergesort')] = np.arange(1, len(merged) + 1)
    _, tie_group = np.unique(merged, return_inverse=True)
    ranks = (np.bincount(tie_group, weights=ranks) / np.bincount(tie_group))[tie_group]
    rank_sum = ranks[:len(positives)].sum()
    return float((rank_sum - len(positives) * (len(positives) + 1) / 2)
                 / (len(positives) * len(negatives)))


def evaluate(model: VprModel, eval_set: EvalSet, top_k: int = 100, batch_size: int = 32,
             device: torch.device = torch.device('cpu')) -> dict[str, float]:
    """Return global and re-ranked Recall@1/5/10 (percent) and the pair ROC-AUC on ``eval_set``."""
    q_desc, q_tok = describe_images(model, eval_set.load_queries(), batch_size, device)
    db_desc, db_tok = describe_images(model, eval_set.load_database(), batch_size, device)
    ranking = np.argsort(-(q_desc @ db_desc.T), axis=1, kind='stable')
    shortlist = ranking[:, :min(top_k, ranking.shape[1])]
    positives = [list(p) for p in eval_set.positives]
    results = {f'global_r@{n}': v for n, v in recall_at_n(ranking, positives,
                                                          RECALL_VALUES).items()}
    if not model.spec.has_pair_classifier:
        return results
    scores = pair_score_matrix(model, q_tok, db_tok, shortlist, batch_size, device)
    reranked = np.take_along_axis(shortlist, np.argsort(-scores, axis=1, kind='stable'), axis=1)
    results.update({f'reranked_r@{n}': v for n, v in recall_at_n(reranked, positives,
                                                                 RECALL_VALUES).items()})
    labels = np.take_along_axis(eval_set.labels(), shortlist, axis=1)
    results['pair_auc'] = roc_auc(scores, labels)
    return results
