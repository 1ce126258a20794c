"""GPU path (CUDA only): precision, pinned copies, CUDA graphs, torch.compile, FAISS and ORT GPU.

Every test compares against the float32 PyTorch path on the same random weights. Without CUDA
the module is skipped with the reason.
"""

import numpy as np
import pytest
import torch
from vpr_ros.config import IndexConfig, LocalizerConfig
from vpr_ros.localization.localizer import Localizer
from vpr_ros.map.database import MapDatabase
from vpr_ros.map.entries import MapEntry
from vpr_ros.models.backend import apply_backend
from vpr_ros.models.registry import create_model

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')]


@pytest.fixture(scope='module')
def lite():
    """A random-weight pairvpr_lite on the GPU (eval mode)."""
    torch.manual_seed(0)
    return create_model('pairvpr_lite', pretrained=False).eval().cuda()


def _images(model, count: int) -> torch.Tensor:
    height, width = model.spec.input_size
    generator = torch.Generator().manual_seed(count)
    return torch.randn(count, 3, height, width, generator=generator).cuda()


@pytest.mark.parametrize('precision', ['fp16', 'bf16'])
def test_low_precision_descriptors_stay_close(lite, precision):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (240, 320, 3), np.uint8) for _ in range(4)]
    reference = Localizer(lite, MapDatabase(lite.spec), LocalizerConfig(device='cuda'))
    low = Localizer(lite, MapDatabase(lite.spec),
                    LocalizerConfig(device='cuda', precision=precision))
    want, got = reference.describe(images)[0], low.describe(images)[0]
    assert np.abs(got - want).max() < 0.02
    assert (np.sum(got * want, axis=1) > 0.999).all()


def test_pinned_staging_round_trips_arrays(lite):
    from vpr_ros.models.gpu_runtime import PinnedStaging
    staging = PinnedStaging()
    rng = np.random.default_rng(1)
    cases = (((5, 80, 256), np.float16), ((3, 7), np.float32), ((9, 80, 256), np.float16))
    for shape, dtype in cases:
        array = rng.standard_normal(shape).astype(dtype)
        on_gpu = staging.to_device(array)
        assert on_gpu.is_cuda and tuple(on_gpu.shape) == shape
        np.testing.assert_array_equal(on_gpu.cpu().numpy(), array)


@pytest.mark.parametrize('accelerate', ['cuda_graphs', 'compile'])
def test_accelerated_describe_matches_eager(lite, accelerate):
    model = apply_backend(lite, 'torch', device='cuda', accelerate=accelerate)
    images = _images(lite, 5)                 # smaller than the captured batch: padded
    with torch.inference_mode():
        want = lite.describe(images)
        got = model.describe(images)
        again = model.describe(_images(lite, 20))    # larger: split into replays
    for a, b in zip(got, want):
        assert (a.float() - b.float()).abs().max() < 1e-3
    assert again[0].shape == (20, lite.spec.descriptor_dim)


def test_shared_scorer_on_gpu_matches_pair_score(lite):
    model = apply_backend(lite, 'torch', device='cuda')
    generator = torch.Generator().manual_seed(2)
    query = torch.randn(1, 80, 256, generator=generator).cuda()
    candidates = torch.randn(50, 80, 256, generator=generator).cuda()
    with torch.inference_mode():
        want = lite.pair_score(query.expand(50, -1, -1), candidates)
        got = model.pair_score(query.expand(50, -1, -1), candidates)
    assert (got - want).abs().max() < 1e-3


def test_faiss_gpu_index_matches_cpu_search(lite):
    from vpr_ros.models.gpu_runtime import faiss_gpu_available
    if not faiss_gpu_available():
        pytest.skip('faiss has no GPU support here (install faiss-gpu)')
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((2000, lite.spec.descriptor_dim)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    results = []
    for use_gpu in (False, True):
        database = MapDatabase(lite.spec, IndexConfig(use_gpu=use_gpu), store_tokens=False)
        database.add(rows, [MapEntry(-1, i) for i in range(len(rows))])
        results.append(database.search(rows[:10], 5)[1])
    np.testing.assert_array_equal(results[0], results[1])


def test_onnx_cuda_provider_matches_torch(lite, tmp_path):
    ort = pytest.importorskip('onnxruntime', reason='onnxruntime is not installed')
    if 'CUDAExecutionProvider' not in ort.get_available_providers():
        pytest.skip('onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)')
    model = apply_backend(lite, 'onnx', cache_dir=tmp_path, device='cuda')
    assert model.providers[0] == 'CUDAExecutionProvider'
    images = _images(lite, 3)
    with torch.inference_mode():
        want, got = lite.describe(images), model.describe(images)
    for a, b in zip(got, want):
        assert (a - b).abs().max() < 1e-3
