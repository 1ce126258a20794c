"""Shared-query re-ranking (PairScorer, TorchVprModel) against the model's own pair_score."""

import pytest
import torch
from vpr_ros.errors import ConfigError
from vpr_ros.models.backend import apply_backend, TorchVprModel
from vpr_ros.models.pair_scorer import is_broadcast, PairScorer
from vpr_ros.models.registry import create_model

TOLERANCE = 1e-4


def _perturbed(model):
    """Return ``model`` in eval mode with its decoder weights moved off their initial values.

    A fresh decoder has zero biases and a near-zero CLS token, which would hide mistakes in
    the CLS path and the biases; the perturbation makes every parameter matter.
    """
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.decoder.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model.eval()


@pytest.fixture(scope='module')
def lite():
    """A random-weight pairvpr_lite at a small input size (6 tokens)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    return _perturbed(create_model('pairvpr_lite', pretrained=False, input_size=(64, 96),
                                   decoder_depth=3))


@pytest.fixture(scope='module')
def vit():
    """A tiny ViT Pair-VPR (2 blocks, 64 wide, 4x4 patches) with random weights."""
    torch.manual_seed(0)
    return _perturbed(create_model('pairvpr_vitb14', encoder_dim=64, encoder_depth=2,
                                   encoder_heads=2, decoder_dim=64, decoder_depth=2,
                                   decoder_heads=2, descriptor_dim=32, image_size=56))


def _tokens(model, count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, model.spec.num_tokens, model.spec.token_dim, generator=generator)


@pytest.mark.parametrize('name', ['lite', 'vit'])
def test_shared_scores_equal_both_order_pair_score(name, request):
    model = request.getfixturevalue(name)
    query, candidates = _tokens(model, 1, 1), _tokens(model, 7, 2)
    with torch.inference_mode():
        reference = model.pair_score(query.expand(7, -1, -1), candidates)
        shared = PairScorer(model.decoder).score(query[0], candidates)
    assert shared.shape == (7,)
    assert torch.allclose(shared, reference, atol=TOLERANCE, rtol=0)
    # The scores are not trivially equal: they vary across candidates.
    assert reference.std() > 10 * TOLERANCE


def test_single_candidate_and_three_dimensional_query(lite):
    query, candidates = _tokens(lite, 1, 3), _tokens(lite, 1, 4)
    with torch.inference_mode():
        reference = lite.pair_logit(query, candidates) + lite.pair_logit(candidates, query)
        shared = PairScorer(lite.decoder).score(query, candidates)
    assert torch.allclose(shared, reference, atol=TOLERANCE, rtol=0)


def test_bfloat16_scores_stay_close(lite):
    query, candidates = _tokens(lite, 1, 5), _tokens(lite, 9, 6)
    with torch.inference_mode():
        reference = lite.pair_score(query.expand(9, -1, -1), candidates)
        low = PairScorer(lite.decoder, torch.bfloat16).score(query[0], candidates)
    assert low.dtype == torch.float32
    assert (low - reference).abs().max() < 0.05 * (1 + reference.abs().max())


def test_is_broadcast_detects_expanded_and_repeated_queries(lite):
    query, other = _tokens(lite, 1, 7), _tokens(lite, 3, 8)
    assert is_broadcast(query.expand(3, -1, -1))
    assert is_broadcast(query.repeat(3, 1, 1))
    assert not is_broadcast(other)
    assert not is_broadcast(query)
    changed = query.repeat(3, 1, 1)
    changed[2, 0, 0] += 1e-3
    assert not is_broadcast(changed)


def test_torch_backend_matches_model_on_both_paths(lite):
    wrapped = apply_backend(lite, 'torch', device='cpu')
    assert isinstance(wrapped, TorchVprModel) and wrapped.spec == lite.spec
    query, candidates, other = _tokens(lite, 1, 9), _tokens(lite, 5, 10), _tokens(lite, 5, 11)
    images = torch.randn(5, 3, 64, 96, generator=torch.Generator().manual_seed(12))
    with torch.inference_mode():
        shared = wrapped.pair_score(query.expand(5, -1, -1), candidates)
        general = wrapped.pair_score(other, candidates)
        assert torch.allclose(shared, lite.pair_score(query.expand(5, -1, -1), candidates),
                              atol=TOLERANCE, rtol=0)
        assert torch.allclose(general, lite.pair_score(other, candidates), atol=TOLERANCE,
                              rtol=0)
        # Micro-batches of 2 (the CPU default) give the whole batch's descriptors.
        for got, want in zip(wrapped.describe(images), lite.describe(images)):
            assert torch.allclose(got, want, atol=1e-5, rtol=0)


def test_unknown_backend_and_precision_are_named(lite):
    with pytest.raises(ConfigError, match='valid'):
        apply_backend(lite, 'openvino')
    with pytest.raises(ConfigError, match='precision'):
        apply_backend(lite, 'torch', precision='int8')
