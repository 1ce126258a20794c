"""The correspondence pair classifier against a per-token numpy loop, and its lite model."""

import numpy as np
import pytest
import torch

from vpr_ros.models.checkpoint import load_checkpoint, save_checkpoint
from vpr_ros.models.correspondence import (both_orders_features, correspondence_features,
                                           CorrespondenceClassifier, grid_positions,
                                           mutual_medians, NO_MUTUAL_OFFSET, similarity_features,
                                           TOKEN_FEATURES)
from vpr_ros.models.registry import create_model

GRID = (3, 4)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def loop_features(a: np.ndarray, b: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Compute every per-token feature of ``a`` against ``b`` with plain loops."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    rows, cols = grid
    pos = np.array([((c + 0.5) / cols * 2 - 1, (r + 0.5) / rows * 2 - 1)
                    for r in range(rows) for c in range(cols)])
    sim = a @ b.T
    n = len(a)
    match = [int(np.argmax(sim[i])) for i in range(n)]
    best = np.array([sim[i, match[i]] for i in range(n)])
    second = np.array([np.sort(sim[i])[-2] for i in range(n)])
    ratio = np.minimum((1 - best) / (1 - second), 1.0)
    mutual = np.array([int(np.argmax(sim[:, match[i]])) == i for i in range(n)])
    disp = np.array([pos[match[i]] - pos[i] for i in range(n)])
    median = np.median(disp[mutual], axis=0) if mutual.any() else None
    off_median = (np.full(n, NO_MUTUAL_OFFSET) if median is None
                  else np.linalg.norm(disp - median, axis=1))
    field = disp.reshape(rows, cols, 2)
    off_neighbours = np.zeros(n)
    for r in range(rows):
        for c in range(cols):
            near = [field[min(max(r + dr, 0), rows - 1), min(max(c + dc, 0), cols - 1)]
                    for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1))]
            off_neighbours[r * cols + c] = np.mean([np.linalg.norm(field[r, c] - v)
                                                    for v in near])
    return np.column_stack([ratio, mutual, off_median, off_neighbours])


def test_features_match_the_loop() -> None:
    """Every feature of a random pair equals the loop's (median of an odd mutual set)."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(12, 5)), rng.normal(size=(12, 5))
    ours = correspondence_features(torch.tensor(a[None]), torch.tensor(b[None]),
                                   grid_positions(GRID), GRID)[0].numpy()
    reference = loop_features(a, b, GRID)
    assert ours.shape == (12, len(TOKEN_FEATURES))
    mutual = reference[:, 1].astype(bool)
    columns = list(range(len(TOKEN_FEATURES)))
    if mutual.sum() % 2 == 0:  # torch's median of an even set is the lower middle value
        columns.remove(TOKEN_FEATURES.index('off_median'))
    np.testing.assert_allclose(ours[:, columns], reference[:, columns], atol=1e-5)


def test_identical_and_shifted_grids() -> None:
    """Same grid: all mutual and consistent; one column shift: inner tokens consistent."""
    rng = np.random.default_rng(1)
    a = rng.normal(size=(12, 16))
    same = correspondence_features(torch.tensor(a[None]), torch.tensor(a[None]),
                                   grid_positions(GRID), GRID)[0]
    assert torch.all(same[:, 1] == 1) and torch.allclose(same[:, 2:4], torch.zeros(12, 2))
    grid = a.reshape(3, 4, 16)
    shifted = np.concatenate([rng.normal(size=(3, 1, 16)), grid[:, :3]], axis=1).reshape(12, 16)
    features = correspondence_features(torch.tensor(a[None]), torch.tensor(shifted[None]),
                                       grid_positions(GRID), GRID)[0]
    inner = [r * 4 + c for r in range(3) for c in range(3)]
    assert torch.all(features[inner, 1] == 1)
    assert torch.allclose(features[inner, 2], torch.zeros(9), atol=1e-6)  # the median shift


def test_both_orders_equal_two_single_order_passes() -> None:
    """One pass over the matrix gives exactly what each order's own pass gives.

    Random, near-identical (many mutual matches, odd and even counts) and permuted grids: the
    shared sort's medians of the second order must equal its own lower medians.
    """
    rng = torch.Generator().manual_seed(3)
    positions = grid_positions(GRID)
    a = torch.randn(30, 12, 8, generator=rng)
    b = torch.randn(30, 12, 8, generator=rng)
    b[10:20] = a[10:20] + 0.3 * b[10:20]
    b[20:] = a[20:, torch.randperm(12, generator=rng)]
    similarity = torch.bmm(torch.nn.functional.normalize(a, dim=-1),
                           torch.nn.functional.normalize(b, dim=-1).transpose(1, 2))
    rows, columns = both_orders_features(similarity, positions, GRID)
    assert torch.equal(rows, similarity_features(similarity, positions, GRID))
    assert torch.equal(columns, similarity_features(similarity.transpose(1, 2), positions, GRID))
    counts = {int(c) for c in rows[..., 1].sum(dim=1)}
    assert any(c % 2 == 0 for c in counts) and any(c % 2 for c in counts)


def test_mutual_medians_are_the_middle_values() -> None:
    """Lower and upper middle values per coordinate, over the mutual tokens only."""
    displacement = torch.tensor([[[0.0, 5.0], [3.0, 1.0], [1.0, 2.0], [9.0, 9.0], [2.0, 0.0]]])
    mutual = torch.tensor([[True, True, True, False, True]])
    lower, upper = mutual_medians(displacement, mutual)
    assert lower.tolist() == [[[1.0, 1.0]]] and upper.tolist() == [[[2.0, 2.0]]]
    lower, upper = mutual_medians(displacement, torch.tensor([[False] * 3 + [True] + [False]]))
    assert lower.tolist() == upper.tolist() == [[[9.0, 9.0]]]


def test_score_candidates_and_folded_read_out() -> None:
    """``score_candidates`` equals both orders' logits; the folded read-out the per-token mean."""
    torch.manual_seed(4)
    classifier = CorrespondenceClassifier(GRID).eval()
    query, candidates = torch.randn(12, 16), torch.randn(7, 12, 16)
    candidates[:3] = query + 0.2 * candidates[:3]
    features = torch.rand(5, 12, len(TOKEN_FEATURES))
    with torch.no_grad():
        first = query[None].expand(7, -1, -1)
        both = classifier.logit(first, candidates) + classifier.logit(candidates, first)
        torch.testing.assert_close(classifier.score_candidates(query, candidates), both)
        per_token = classifier.evidence(classifier.embed(features)).squeeze(-1).mean(dim=1)
        torch.testing.assert_close(classifier._classify(features), per_token)
    assert float(both[:3].min()) > float(both[3:].max())    # the near copies score highest


@pytest.fixture(scope='module')
def lite():
    """The correspondence pairvpr_lite at a small input, random classifier weights."""
    torch.manual_seed(2)
    return create_model('pairvpr_lite', input_size=(64, 96), pair_head='correspondence').eval()


def test_lite_model_tokens_and_pair_score(lite) -> None:
    """Stage-4 tokens on the stride-16 grid, final map as forward_features, summed orders."""
    assert lite.spec.num_tokens == 4 * 6 and lite.spec.token_dim == 112
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        middle, final = lite.feature_maps(images)
        assert torch.equal(final, lite.encoder.forward_features(images))
        descriptors, tokens = lite.describe(images)
        assert torch.allclose(tokens.norm(dim=-1), torch.ones(2, 24), atol=1e-5)
        score = lite.pair_score(tokens[:1], tokens[1:])
        both = lite.pair_logit(tokens[:1], tokens[1:]) + lite.pair_logit(tokens[1:], tokens[:1])
    assert torch.allclose(score, both)
    assert descriptors.shape == (2, 1280)


def test_partial_checkpoint_round_trip(lite, tmp_path) -> None:
    """The matcher variant saves as a partial checkpoint over the ImageNet encoder."""
    path = save_checkpoint(lite, tmp_path / 'lite.safetensors',
                           base_weights='efficientnet_lite0_imagenet')
    loaded = load_checkpoint(path)
    assert loaded.spec == lite.spec
    for key, value in lite.state_dict().items():
        if key.startswith('matcher.'):
            assert torch.equal(loaded.state_dict()[key], value.half().float()), key


def test_unknown_pair_head_is_named() -> None:
    """A typo in pair_head lists the valid heads."""
    with pytest.raises(ValueError, match='correspondence'):
        create_model('pairvpr_lite', pretrained=False, pair_head='matcher')
