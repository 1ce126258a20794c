"""Pair-VPR training losses, miners, schedules and metrics against direct computations."""

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
import torch
from vpr_ros.models.pairvpr import patchify
from vpr_ros.models.registry import create_model
from vpr_ros_training.config import StageOneOptim
from vpr_ros_training.evaluation import roc_auc
from vpr_ros_training.losses import (batch_hard_triplets, GlobalLoss, masked_mse,
                                     normalised_patch_targets, pair_bce, reconstruction_loss)
from vpr_ros_training.schedules import apply_schedule, cosine_schedule, layer_decay_groups
from vpr_ros_training.stage_two import LinearSchedule

TINY = {'encoder_dim': 32, 'encoder_depth': 3, 'encoder_heads': 2, 'decoder_dim': 32,
        'decoder_depth': 2, 'decoder_heads': 2, 'descriptor_dim': 16, 'image_size': 28}


def clustered_embeddings(seed: int, places: int = 4, per_place: int = 3,
                         spread: float = 0.6) -> tuple[torch.Tensor, torch.Tensor]:
    """Return L2-normalised ``[places * per_place, 8]`` embeddings clustered by label."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(places, 8))
    labels = np.repeat(np.arange(places), per_place)
    points = centres[labels] + spread * rng.normal(size=(len(labels), 8))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return torch.tensor(points, dtype=torch.float32), torch.tensor(labels)


def patchify_loop(images: np.ndarray, p: int) -> np.ndarray:
    """Cut ``[B, 3, H, W]`` into patches with explicit loops (row-major, channel fastest)."""
    batch, _, height, width = images.shape
    rows = []
    for b in range(batch):
        patches = [images[b, :, r:r + p, c:c + p].transpose(1, 2, 0).reshape(-1)
                   for r in range(0, height, p) for c in range(0, width, p)]
        rows.append(np.stack(patches))
    return np.stack(rows)


def test_masked_mse_with_patch_normalisation_matches_numpy() -> None:
    """Per-patch normalised targets (unbiased variance) and the masked mean agree with numpy."""
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 3, 28, 28)).astype(np.float32)
    prediction = rng.normal(size=(2, 4, 588)).astype(np.float32)
    mask = np.array([[True, False, True, True], [False, False, True, False]])
    patches = patchify_loop(images, 14)
    assert np.allclose(patchify(torch.tensor(images), 14).numpy(), patches)
    target = (patches - patches.mean(-1, keepdims=True)) / np.sqrt(
        patches.var(-1, ddof=1, keepdims=True) + 1e-6)
    expected = ((prediction - target) ** 2).mean(-1)[mask].mean()
    loss = reconstruction_loss(torch.tensor(prediction), torch.tensor(images),
                               torch.tensor(mask), 14)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    normalised = normalised_patch_targets(torch.tensor(patches)).numpy()
    assert np.allclose(normalised, target, atol=1e-5)
    unmasked = masked_mse(torch.tensor(prediction), torch.tensor(target), torch.tensor(~mask))
    assert unmasked.item() == pytest.approx(((prediction - target) ** 2).mean(-1)[~mask].mean(),
                                            rel=1e-5)


def ms_reference(embeddings: np.ndarray, labels: np.ndarray, alpha: float, beta: float,
                 base: float, epsilon: float) -> float:
    """Multi-similarity loss with multi-similarity mining, averaged over all ``m`` anchors."""
    sim = embeddings @ embeddings.T
    losses = []
    for i in range(len(labels)):
        pos = [k for k in range(len(labels)) if k != i and labels[k] == labels[i]]
        neg = [k for k in range(len(labels)) if labels[k] != labels[i]]
        hard_pos = [k for k in pos if sim[i, k] - epsilon < max(sim[i, neg])]
        hard_neg = [k for k in neg if sim[i, k] + epsilon > min(sim[i, pos])]
        loss = math.log1p(sum(math.exp(-alpha * (sim[i, k] - base)) for k in hard_pos)) / alpha
        loss += math.log1p(sum(math.exp(beta * (sim[i, k] - base)) for k in hard_neg)) / beta
        losses.append(loss)
    return float(np.mean(losses))


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_multi_similarity_loss_matches_direct_formula(seed: int) -> None:
    """MultiSimilarityLoss(1, 50, 0) over MS-miner(0.1) pairs equals the written-out formula."""
    embeddings, labels = clustered_embeddings(seed)
    loss, _ = GlobalLoss(alpha=1.0, beta=50.0, base=0.0, epsilon=0.1)(embeddings, labels)
    expected = ms_reference(embeddings.numpy(), labels.numpy(), 1.0, 50.0, 0.0, 0.1)
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    unmined = ms_reference(embeddings.numpy(), labels.numpy(), 1.0, 50.0, 0.0, 10.0)
    assert abs(unmined - expected) > 1e-3, 'the miner must drop some pairs in this example'


def test_batch_hard_mining_matches_brute_force() -> None:
    """Each anchor gets its farthest positive and its closest negative."""
    embeddings, labels = clustered_embeddings(3, places=5, per_place=4)
    triplets = batch_hard_triplets(embeddings, labels)
    distance = torch.cdist(embeddings, embeddings).numpy()
    found = set(zip(triplets.anchors.tolist(), triplets.positives.tolist(),
                    triplets.negatives.tolist()))
    expected = set()
    for a, label in enumerate(labels.tolist()):
        pos = [k for k in range(len(labels)) if k != a and labels[k] == label]
        neg = [k for k in range(len(labels)) if labels[k] != label]
        expected.add((a, max(pos, key=lambda k: distance[a, k]),
                      min(neg, key=lambda k: distance[a, k])))
    assert found == expected
    local = triplets.restricted(4, 12)
    assert sorted(local.anchors.tolist()) == list(range(4, 12))


def test_pair_bce_matches_numpy() -> None:
    """BCE of positives (label 1) and negatives (label 0), mean or global normaliser."""
    pos, neg = np.array([2.0, -0.5, 0.3]), np.array([-1.0, 0.7, 4.0])
    terms = np.concatenate([np.log1p(np.exp(-pos)), np.log1p(np.exp(neg))])
    loss = pair_bce(torch.tensor(pos), torch.tensor(neg))
    assert loss.item() == pytest.approx(terms.mean(), rel=1e-6)
    assert pair_bce(torch.tensor(pos), torch.tensor(neg), normaliser=20).item() == \
        pytest.approx(terms.sum() / 20, rel=1e-6)


def test_cosine_schedule_closed_form() -> None:
    """Linear warm-up from 0, then base -> final along half a cosine."""
    schedule = cosine_schedule(1.0, 0.1, total_iters=30, warmup_iters=10)
    assert len(schedule) == 30
    assert np.allclose(schedule[:10], np.linspace(0.0, 1.0, 10))
    k = np.arange(20)
    assert np.allclose(schedule[10:], 0.1 + 0.45 * (1 + np.cos(np.pi * k / 20)))
    assert StageOneOptim().scaled_lr(512) == pytest.approx(3e-4 * math.sqrt(0.5))


def test_linear_schedule_matches_torch_linear_lr() -> None:
    """Our LinearLR closed form equals torch.optim.lr_scheduler.LinearLR step by step."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=8e-5)
    reference = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=0.2,
                                                  total_iters=7)
    ours = LinearSchedule(8e-5, 1.0, 0.2, 7)
    for step in range(10):
        assert ours.factor(step) * 8e-5 == pytest.approx(optimizer.param_groups[0]['lr'])
        optimizer.step()
        reference.step()


def test_layer_decay_groups_follow_the_official_rule() -> None:
    """LR multipliers decay ** (L + 1 - layer id); no weight decay on norms, biases, gammas."""
    model = create_model('pairvpr_vitb14', **TINY)
    groups = layer_decay_groups(model, layer_decay=0.5, patch_embed_lr_mult=0.2)
    mult = {n: (g['lr_multiplier'], g['wd_multiplier']) for g in groups for n in g['names']}
    layers = 3 + 2
    expected = {'encoder.patch_embed.proj.weight': (0.5 ** (layers + 1) * 0.2, 1.0),
                'encoder.blocks.0.attn.qkv.weight': (0.5 ** layers, 1.0),
                'encoder.blocks.2.ls1.gamma': (0.5 ** (layers - 2), 0.0),
                'encoder.norm.weight': (0.5 ** (layers + 1 - 3), 0.0),
                'decoder.decoder_embed.weight': (0.5 ** (layers + 1 - 3), 1.0),
                'decoder.dec_blocks.1.mlp.fc1.bias': (0.5 ** 1, 0.0),
                'decoder.dec_norm.weight': (0.5, 0.0),
                'decoder.prediction_head.weight': (1.0, 1.0)}
    for name, value in expected.items():
        assert mult[name] == pytest.approx(value), name
    optimizer = torch.optim.AdamW(groups)
    apply_schedule(optimizer, lr=2.0, weight_decay=0.3)
    for group in optimizer.param_groups:
        assert group['lr'] == pytest.approx(2.0 * group['lr_multiplier'])
        assert group['weight_decay'] == pytest.approx(0.3 * group['wd_multiplier'])


def test_roc_auc_matches_sklearn_with_ties() -> None:
    """Mann-Whitney AUC with tied scores equals sklearn's roc_auc_score."""
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 6, 200).astype(float)
    labels = rng.random(200) < 0.3 + 0.1 * scores
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    assert math.isnan(roc_auc(scores, np.ones(200, dtype=bool)))
