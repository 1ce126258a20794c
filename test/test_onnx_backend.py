"""ONNX export and the onnxruntime backend: parity with PyTorch on random weights (<= 1e-3)."""

import json
import os

import numpy as np
import pytest
import torch
from vpr_ros.config import LocalizerConfig
from vpr_ros.errors import BackendError
from vpr_ros.localization.localizer import Localizer
from vpr_ros.map.database import MapDatabase
from vpr_ros.models.backend import apply_backend
from vpr_ros.models.onnx_backend import (ENCODER_FILE, export_model, MANIFEST_FILE, OnnxVprModel,
                                         PAIR_LOGIT_FILE, PAIR_SCORE_FILE, select_providers)
from vpr_ros.models.parity import compare
from vpr_ros.models.registry import create_model

ort = pytest.importorskip('onnxruntime', reason='onnxruntime is not installed '
                          '(pip install "vpr_ros[onnx]")')

PARITY = 1e-3


def _perturbed(model):
    """Return ``model`` with pair-classifier weights moved off their init (zero biases...)."""
    torch.manual_seed(1)
    head = model.matcher if hasattr(model, 'matcher') else model.decoder
    with torch.no_grad():
        for param in head.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model.eval()


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
    """An export cache directory shared by the tests of this module."""
    torch.set_num_threads(1)
    return tmp_path_factory.mktemp('onnx_cache')


@pytest.fixture(scope='module')
def lite(cache):
    """``(torch model, onnxruntime model)`` for a random-weight pairvpr_lite at 240x320."""
    torch.manual_seed(0)
    model = _perturbed(create_model('pairvpr_lite', pretrained=False))
    return model, apply_backend(model, 'onnx', cache_dir=cache, device='cpu')


@pytest.fixture(scope='module')
def vit(cache):
    """``(torch model, onnxruntime model)`` for a tiny ViT Pair-VPR (4x4 patches)."""
    torch.manual_seed(0)
    model = _perturbed(create_model('pairvpr_vitb14', encoder_dim=64, encoder_depth=2,
                                    encoder_heads=2, decoder_dim=64, decoder_depth=2,
                                    decoder_heads=2, descriptor_dim=32, image_size=56))
    return model, apply_backend(model, 'onnx', cache_dir=cache, device='cpu')


@pytest.fixture(scope='module')
def matcher(cache):
    """``(torch model, onnxruntime model)`` for the correspondence pairvpr_lite (shipped head)."""
    torch.manual_seed(0)
    model = _perturbed(create_model('pairvpr_lite', pretrained=False, input_size=(64, 96),
                                    pair_head='correspondence'))
    return model, apply_backend(model, 'onnx', cache_dir=cache, device='cpu')


def _images(spec, count: int, seed: int) -> torch.Tensor:
    height, width = spec.input_size
    return torch.randn(count, 3, height, width, generator=torch.Generator().manual_seed(seed))


def _tokens(spec, count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, spec.num_tokens, spec.token_dim, generator=generator)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a.float() - b.float()).abs().max())


@pytest.mark.parametrize('name', ['lite', 'vit', 'matcher'])
def test_encoder_parity_at_other_batch_sizes(name, request):
    model, onnx_model = request.getfixturevalue(name)
    images = _images(model.spec, 3, 1)          # exported with a batch of 2
    with torch.inference_mode():
        want = model.describe(images)
        got = onnx_model.describe(images)
        single = onnx_model.describe(images[:1])
        empty = onnx_model.describe(images[:0])
    assert empty[0].shape == (0, model.spec.descriptor_dim)
    assert empty[1].shape == (0, model.spec.num_tokens, model.spec.token_dim)
    assert _max_diff(got[0], want[0]) <= PARITY
    assert _max_diff(got[1], want[1]) <= PARITY
    assert _max_diff(single[1], want[1][:1]) <= PARITY
    assert float(want[1].std()) > 50 * PARITY   # the outputs are not trivially small


@pytest.mark.parametrize('name', ['lite', 'vit', 'matcher'])
def test_pair_decoder_parity_both_graphs(name, request):
    model, onnx_model = request.getfixturevalue(name)
    spec = model.spec
    first, second, query = _tokens(spec, 5, 2), _tokens(spec, 5, 3), _tokens(spec, 1, 4)
    second[:2] = first[:2] + 0.05 * second[:2]  # two near-identical pairs: logits must vary
    with torch.inference_mode():
        logit = model.pair_logit(first, second)
        shared = model.pair_score(query.expand(5, -1, -1), second)
        general = model.pair_score(first, second)
        assert _max_diff(onnx_model.pair_logit(first, second), logit) <= PARITY
        assert _max_diff(onnx_model.pair_score(query.expand(5, -1, -1), second),
                         shared) <= PARITY
        assert _max_diff(onnx_model.score_candidates(query[0], second), shared) <= PARITY
        assert _max_diff(onnx_model.pair_score(first, second), general) <= PARITY
    assert float(logit.std()) > 10 * PARITY


def test_export_directory_is_complete_reused_and_keyed_by_weights(lite, cache):
    model, onnx_model = lite
    directory = onnx_model.directory
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    assert manifest['graphs'] == [ENCODER_FILE, PAIR_LOGIT_FILE, PAIR_SCORE_FILE]
    assert onnx_model.spec == model.spec
    stamp = os.stat(directory / ENCODER_FILE).st_mtime_ns
    assert export_model(model, cache) == directory
    assert os.stat(directory / ENCODER_FILE).st_mtime_ns == stamp
    assert not [p for p in cache.iterdir() if p.name.endswith('.tmp')]
    other = create_model('efficientnet_lite0_gem', pretrained=False)
    exported = export_model(other.eval(), cache)
    assert exported != directory
    assert json.loads((exported / MANIFEST_FILE).read_text())['graphs'] == [ENCODER_FILE]


def test_localizer_runs_the_onnx_model_like_the_torch_model(lite):
    model, onnx_model = lite
    config = LocalizerConfig(device='cpu', top_k=4, rerank_batch_size=3)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (120, 160, 3), np.uint8) for _ in range(6)]
    results = []
    for vpr_model in (model, onnx_model):
        localizer = Localizer(vpr_model, MapDatabase(model.spec), config)
        for stamp, image in enumerate(images[:5]):
            localizer.add_to_map(image, stamp, None)
        results.append(localizer.localize(images[5]))
    want, got = ({c.map_id: c for c in r.candidates} for r in results)
    assert set(got) == set(want) and len(got) == 4
    for map_id, candidate in want.items():
        assert abs(got[map_id].global_similarity - candidate.global_similarity) <= PARITY
        assert abs(got[map_id].pair_score - candidate.pair_score) <= PARITY


def test_missing_providers_are_named():
    if 'TensorrtExecutionProvider' not in ort.get_available_providers():
        with pytest.raises(BackendError, match='TensorrtExecutionProvider'):
            select_providers('tensorrt', 'cuda')
    if 'CUDAExecutionProvider' not in ort.get_available_providers():
        with pytest.raises(BackendError, match='CUDAExecutionProvider'):
            select_providers('onnx', 'cuda')
        assert select_providers('onnx', 'auto') == ['CPUExecutionProvider']


def test_unreadable_export_directory_is_named(tmp_path):
    with pytest.raises(BackendError, match='manifest'):
        OnnxVprModel(tmp_path, ['CPUExecutionProvider'])


def test_parity_report_passes_onnx_and_fails_a_wrong_engine(lite):
    model, onnx_model = lite
    images = _images(model.spec, 2, 5)
    report = compare(model, onnx_model.describe, onnx_model.pair_logit, images, queries=2,
                     candidates=6)
    assert report.passes(min_cosine=0.9999, max_rank_changes=0.0)
    assert report.max_token_diff <= PARITY and report.max_logit_diff <= PARITY

    def shuffled(x):                         # a "miscompiled" engine: descriptors of other images
        g, t = model.describe(x)
        return g.roll(1, dims=0), t
    broken = compare(model, shuffled, lambda a, b: -model.pair_logit(a, b), images, queries=2,
                     candidates=6)
    assert not broken.passes(min_cosine=0.999, max_rank_changes=0.0)
    assert broken.same_best < 1.0


def test_parity_command_line_on_cpu(tmp_path, capsys):
    from vpr_ros.models.parity import main
    assert main(['--model', 'efficientnet_lite0_gem', '--device', 'cpu', '--images', '2',
                 '--cache-dir', str(tmp_path)]) == 0
    assert 'PASS' in capsys.readouterr().out
