"""``backend: auto`` (the default): onnx where it is installed and equals PyTorch, else torch."""

import json
import logging

import pytest
import torch
from vpr_ros.config import LocalizerConfig
from vpr_ros.localization.localizer import Localizer
from vpr_ros.map.database import MapDatabase
from vpr_ros.models import backend as backends
from vpr_ros.models.registry import create_model
from vpr_ros.ros.tools.slow_model import SlowPoolingModel

pytest.importorskip('onnxruntime', reason='onnxruntime is not installed')
SIZE = (64, 96)


@pytest.fixture(scope='module')
def model():
    """The ImageNet EfficientNet-Lite0 + GeM at a small input size (deterministic weights)."""
    torch.set_num_threads(1)
    return create_model('efficientnet_lite0_gem', pretrained=True, input_size=SIZE).eval()


def _localizer(model, cache) -> Localizer:
    return Localizer(model, MapDatabase(model.spec),
                     LocalizerConfig(device='cpu', backend_cache_dir=str(cache)))


def test_default_config_is_auto() -> None:
    assert LocalizerConfig().backend == 'auto'


def test_auto_runs_onnx_equal_to_torch_and_caches_the_check(model, tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger=backends.__name__)
    localizer = _localizer(model, tmp_path)
    assert localizer.backend == 'onnx'
    assert 'backend auto -> onnx' in caplog.text
    reports = list(tmp_path.glob('*/parity-cpu-ort*.json'))
    assert len(reports) == 1, 'the parity check is stored next to the graphs'
    images = torch.randn(3, 3, *SIZE, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        want = model.describe(images)[0]
    got = localizer.model.describe(images)[0]
    assert float((got - want).abs().max()) < 1e-4
    # A second start reuses the graphs and the stored check: no export, no new comparison.
    calls = []
    original = backends.compare
    backends.compare = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        assert _localizer(model, tmp_path).backend == 'onnx'
    finally:
        backends.compare = original
    assert calls == []


def test_auto_keeps_torch_when_the_stored_check_failed(model, tmp_path, caplog) -> None:
    _localizer(model, tmp_path)
    report = next(tmp_path.glob('*/parity-cpu-ort*.json'))
    data = json.loads(report.read_text())
    report.write_text(json.dumps({**data, 'min_cosine': 0.5}))
    caplog.set_level(logging.INFO, logger=backends.__name__)
    assert _localizer(model, tmp_path).backend == 'torch'
    assert 'differ from PyTorch' in caplog.text


def test_auto_keeps_torch_for_a_model_that_must_not_be_exported(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger=backends.__name__)
    slow = SlowPoolingModel()
    assert _localizer(slow, tmp_path).backend == 'torch'
    assert 'SlowPoolingModel is not exportable' in caplog.text
    assert not list(tmp_path.iterdir()), 'nothing was exported'


def test_auto_keeps_torch_without_onnxruntime(model, tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setattr(backends, 'onnxruntime_version', lambda: None)
    caplog.set_level(logging.INFO, logger=backends.__name__)
    assert _localizer(model, tmp_path).backend == 'torch'
    assert 'onnxruntime is not installed' in caplog.text


def test_auto_keeps_torch_when_the_export_fails(model, tmp_path, monkeypatch, caplog) -> None:
    def fail(*args, **kwargs):
        raise backends.BackendError('exporter broke')
    monkeypatch.setattr(backends, 'export_model', fail)
    caplog.set_level(logging.INFO, logger=backends.__name__)
    assert _localizer(model, tmp_path).backend == 'torch'
    assert 'the ONNX export failed (exporter broke)' in caplog.text


def test_explicit_torch_is_honoured(model, tmp_path) -> None:
    localizer = Localizer(model, MapDatabase(model.spec),
                          LocalizerConfig(device='cpu', backend='torch',
                                          backend_cache_dir=str(tmp_path)))
    assert localizer.backend == 'torch' and not list(tmp_path.iterdir())
