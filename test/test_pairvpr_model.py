"""Pair-VPR port with random weights: official key layout, reference forward, checkpoints.

The reference forward below is a second, independent implementation written from the official
DINOv2 / Pair-VPR description (``/work/shared/data/pairvpr_golden/README.md``): it reads the
official state dict by name and uses explicit softmax attention. The port loads the same state
dict through its key map and must agree with it.
"""

import dataclasses
import inspect
import json
import math

from conftest import official_random_tensor
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.torch import save_file
import torch
from torch.nn import functional as F

from vpr_ros.errors import CheckpointError
from vpr_ros.models import dinov2, pair_decoder, pairvpr
from vpr_ros.models.checkpoint import load_checkpoint, save_checkpoint
from vpr_ros.models.official_weights import (load_official_dinov2, load_official_pairvpr,
                                             load_official_state_dict, official_state_dict_keys,
                                             to_official_state_dict)
from vpr_ros.models.registry import create_model, list_models

ENC_DIM, ENC_DEPTH, ENC_HEADS = 64, 2, 2
DEC_DIM, DEC_DEPTH, DEC_HEADS = 32, 2, 2
IMAGE, GRID, DESC = 56, 4, 16
SMALL = {'encoder_dim': ENC_DIM, 'encoder_depth': ENC_DEPTH, 'encoder_heads': ENC_HEADS,
         'decoder_dim': DEC_DIM, 'decoder_depth': DEC_DEPTH, 'decoder_heads': DEC_HEADS,
         'descriptor_dim': DESC, 'image_size': IMAGE}
ATOL = 1e-5


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


# ---- official layout, written from the description of the official model ------------------

def encoder_layout(dim: int, depth: int, swiglu: bool) -> dict:
    """Official DINOv2-reg (518 px table) parameter names and shapes under ``encoder.model.``."""
    shapes = {'cls_token': (1, 1, dim), 'register_tokens': (1, 4, dim), 'mask_token': (1, dim),
              'pos_embed': (1, 1 + 37 * 37, dim), 'patch_embed.proj.weight': (dim, 3, 14, 14),
              'patch_embed.proj.bias': (dim,), 'norm.weight': (dim,), 'norm.bias': (dim,)}
    hidden = (int(4 * dim * 2 / 3) + 7) // 8 * 8
    mlp = ({'mlp.w12.weight': (2 * hidden, dim), 'mlp.w12.bias': (2 * hidden,),
            'mlp.w3.weight': (dim, hidden), 'mlp.w3.bias': (dim,)} if swiglu else
           {'mlp.fc1.weight': (4 * dim, dim), 'mlp.fc1.bias': (4 * dim,),
            'mlp.fc2.weight': (dim, 4 * dim), 'mlp.fc2.bias': (dim,)})
    block = {'norm1.weight': (dim,), 'norm1.bias': (dim,), 'attn.qkv.weight': (3 * dim, dim),
             'attn.qkv.bias': (3 * dim,), 'attn.proj.weight': (dim, dim),
             'attn.proj.bias': (dim,), 'ls1.gamma': (dim,), 'norm2.weight': (dim,),
             'norm2.bias': (dim,), 'ls2.gamma': (dim,), **mlp}
    for index in range(depth):
        shapes.update({f'blocks.{index}.{key}': shape for key, shape in block.items()})
    return {f'encoder.model.{key}': shape for key, shape in shapes.items()}


def decoder_layout(token_dim: int, dim: int, depth: int, tokens: int, desc: int) -> dict:
    """Official Pair-VPR decoder, head and globalizer names and shapes."""
    shapes = {'decoder_clstoken': (1, 1, dim), 'mask_token': (1, 1, dim),
              'dec_pos_embed': (tokens, dim), 'dec_pos_embed_cls': (tokens + 1, dim),
              'decoder_embed.weight': (dim, token_dim), 'decoder_embed.bias': (dim,),
              'dec_norm.weight': (dim,), 'dec_norm.bias': (dim,),
              'prediction_head.weight': (588, dim), 'prediction_head.bias': (588,),
              'classvprmodule.0.weight': (512, dim), 'classvprmodule.0.bias': (512,),
              'classvprmodule.2.weight': (1, 512), 'classvprmodule.2.bias': (1,),
              'globalizer.0.weight': (desc, token_dim), 'globalizer.0.bias': (desc,)}
    block = {'attn.qkv.weight': (3 * dim, dim), 'attn.qkv.bias': (3 * dim,),
             'mlp.fc1.weight': (4 * dim, dim), 'mlp.fc1.bias': (4 * dim,),
             'mlp.fc2.weight': (dim, 4 * dim), 'mlp.fc2.bias': (dim,)}
    for name in ('attn.proj', 'cross_attn.projq', 'cross_attn.projk', 'cross_attn.projv',
                 'cross_attn.proj'):
        block.update({f'{name}.weight': (dim, dim), f'{name}.bias': (dim,)})
    for name in ('norm1', 'norm2', 'norm3', 'norm_y'):
        block.update({f'{name}.weight': (dim,), f'{name}.bias': (dim,)})
    for index in range(depth):
        shapes.update({f'dec_blocks.{index}.{key}': shape for key, shape in block.items()})
    return shapes


def official_layout(swiglu: bool = False) -> dict:
    """The full official layout of the small test network."""
    return {**encoder_layout(ENC_DIM, ENC_DEPTH, swiglu),
            **decoder_layout(ENC_DIM, DEC_DIM, DEC_DEPTH, GRID * GRID, DESC)}


def random_official_state(swiglu: bool = False, seed: int = 0) -> dict:
    """Return a random official state dict for the small network."""
    gen = torch.Generator().manual_seed(seed)
    return {key: official_random_tensor(key, shape, gen)
            for key, shape in official_layout(swiglu).items()}


def small_model(variant: str = 'pairvpr_vitb14', state: dict = None) -> pairvpr.PairVpr:
    """Build the small network (ViT-G naming for ``pairvpr_vitg14``), optionally loaded."""
    model = create_model(variant, **SMALL).eval()
    if state is not None:
        assert load_official_state_dict(model, state) == ([], [])
    return model


def images(count: int, seed: int = 1) -> torch.Tensor:
    """Return seeded normal images at the small input size."""
    return torch.randn(count, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed))


# ---- independent reference forward --------------------------------------------------------

def ref_linear(x, sd, name):
    return F.linear(x, sd[f'{name}.weight'], sd[f'{name}.bias'])


def ref_norm(x, sd, name):
    return F.layer_norm(x, x.shape[-1:], sd[f'{name}.weight'], sd[f'{name}.bias'], eps=1e-6)


def ref_attention(q, k, v, heads):
    """Explicit softmax(q k^T / sqrt(d)) v over ``heads`` heads, inputs ``[B, N, C]``."""
    split = [t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v)]
    weights = (split[0] @ split[1].transpose(-1, -2)) / math.sqrt(split[0].shape[-1])
    out = weights.softmax(-1) @ split[2]
    return out.transpose(1, 2).reshape(q.shape)


def ref_encoder_block(x, sd, name, swiglu):
    q, k, v = ref_linear(ref_norm(x, sd, f'{name}.norm1'), sd, f'{name}.attn.qkv').chunk(3, -1)
    x = x + sd[f'{name}.ls1.gamma'] * ref_linear(ref_attention(q, k, v, ENC_HEADS), sd,
                                                 f'{name}.attn.proj')
    h = ref_norm(x, sd, f'{name}.norm2')
    if swiglu:
        x1, x2 = ref_linear(h, sd, f'{name}.mlp.w12').chunk(2, -1)
        h = ref_linear(F.silu(x1) * x2, sd, f'{name}.mlp.w3')
    else:
        h = ref_linear(F.gelu(ref_linear(h, sd, f'{name}.mlp.fc1')), sd, f'{name}.mlp.fc2')
    return x + sd[f'{name}.ls2.gamma'] * h


def ref_encoder(sd, x, swiglu=False, mask=None):
    """Official DINOv2-reg forward: returns (cls [B, D], patch tokens [B, N, D])."""
    p = 'encoder.model.'
    x = F.conv2d(x, sd[p + 'patch_embed.proj.weight'], sd[p + 'patch_embed.proj.bias'], stride=14)
    batch, dim, rows, cols = x.shape
    x = x.flatten(2).transpose(1, 2)
    if mask is not None:
        x = torch.where(mask[..., None], sd[p + 'mask_token'][None], x)
    pos = sd[p + 'pos_embed']
    table = pos[:, 1:].reshape(1, 37, 37, dim).permute(0, 3, 1, 2)
    table = F.interpolate(table, size=(rows, cols), mode='bicubic', antialias=True)
    pos = torch.cat([pos[:, :1], table.permute(0, 2, 3, 1).reshape(1, -1, dim)], 1)
    x = torch.cat([sd[p + 'cls_token'].expand(batch, -1, -1), x], 1) + pos
    x = torch.cat([x[:, :1], sd[p + 'register_tokens'].expand(batch, -1, -1), x[:, 1:]], 1)
    for index in range(ENC_DEPTH):
        x = ref_encoder_block(x, sd, f'{p}blocks.{index}', swiglu)
    x = ref_norm(x, sd, p + 'norm')
    return x[:, 0], x[:, 5:]


def ref_decoder(sd, first, second, with_cls=True):
    """Official CroCo-style decoder: returns the normalised first stream."""
    x, y = ref_linear(first, sd, 'decoder_embed'), ref_linear(second, sd, 'decoder_embed')
    y = y + sd['dec_pos_embed']
    if with_cls:
        x = torch.cat([sd['decoder_clstoken'].expand(len(x), -1, -1), x], 1)
        x = x + sd['dec_pos_embed_cls']
    else:
        x = x + sd['dec_pos_embed']
    for index in range(DEC_DEPTH):
        b = f'dec_blocks.{index}'
        q, k, v = ref_linear(ref_norm(x, sd, f'{b}.norm1'), sd, f'{b}.attn.qkv').chunk(3, -1)
        x = x + ref_linear(ref_attention(q, k, v, DEC_HEADS), sd, f'{b}.attn.proj')
        mem, q = ref_norm(y, sd, f'{b}.norm_y'), ref_norm(x, sd, f'{b}.norm2')
        attn = ref_attention(ref_linear(q, sd, f'{b}.cross_attn.projq'),
                             ref_linear(mem, sd, f'{b}.cross_attn.projk'),
                             ref_linear(mem, sd, f'{b}.cross_attn.projv'), DEC_HEADS)
        x = x + ref_linear(attn, sd, f'{b}.cross_attn.proj')
        h = F.gelu(ref_linear(ref_norm(x, sd, f'{b}.norm3'), sd, f'{b}.mlp.fc1'))
        x = x + ref_linear(h, sd, f'{b}.mlp.fc2')
    return ref_norm(x, sd, 'dec_norm')


def ref_logit(sd, first, second):
    h = F.relu(ref_linear(ref_decoder(sd, first, second)[:, 0], sd, 'classvprmodule.0'))
    return ref_linear(h, sd, 'classvprmodule.2').squeeze(-1)


# ---- key layout -----------------------------------------------------------------------------

@pytest.mark.parametrize('variant,swiglu', [('pairvpr_vitb14', False), ('pairvpr_vitg14', True)])
def test_official_layout_loads_with_no_missing_or_unexpected_keys(variant, swiglu):
    state = random_official_state(swiglu)
    model = small_model(variant)
    assert official_state_dict_keys(model) == sorted(state)
    assert load_official_state_dict(model, state) == ([], [])
    exported = to_official_state_dict(model)
    assert sorted(exported) == sorted(state)
    assert all(torch.equal(exported[key], state[key]) for key in state)


def test_golden_sized_layout_has_the_fixture_counts():
    model = create_model('pairvpr_vitb14', encoder_dim=384, encoder_depth=2, encoder_heads=6,
                         decoder_dim=192, decoder_depth=2, decoder_heads=3)
    official = to_official_state_dict(model)
    assert len(official) == 100
    assert sum(value.numel() for value in official.values()) == 6_181_453


def test_wrong_official_key_is_named():
    state = random_official_state()
    block = 'encoder.model.blocks.0.mlp'
    state[f'{block}.w12.weight'] = state.pop(f'{block}.fc1.weight')
    with pytest.raises(CheckpointError, match=r'mlp\.fc1\.weight.*mlp\.w12\.weight'):
        load_official_state_dict(small_model(), state)


# ---- numerics against the reference ---------------------------------------------------------

@pytest.mark.parametrize('variant,swiglu', [('pairvpr_vitb14', False), ('pairvpr_vitg14', True)])
def test_encoder_and_descriptor_match_reference(variant, swiglu):
    state = random_official_state(swiglu, seed=3)
    model, x = small_model(variant, state), images(2)
    with torch.no_grad():
        cls, tokens = model.encoder.encode(x)
        ref_cls, ref_tokens = ref_encoder(state, x, swiglu)
        descriptor = model.global_descriptor(x)
    ref_desc = F.normalize(ref_linear(ref_cls, state, 'globalizer.0'), dim=-1)
    torch.testing.assert_close(tokens, ref_tokens, atol=ATOL, rtol=0)
    torch.testing.assert_close(cls, ref_cls, atol=ATOL, rtol=0)
    torch.testing.assert_close(descriptor, ref_desc, atol=ATOL, rtol=0)


def test_pair_logit_and_reconstruction_match_reference():
    state = random_official_state(seed=4)
    model = small_model(state=state)
    x = images(3)
    mask = torch.rand(1, GRID * GRID, generator=torch.Generator().manual_seed(5)) < 0.75
    with torch.no_grad():
        tokens = model.dense_features(x)
        logits = model.pair_logit(tokens[:2], tokens[1:])
        recon = model.reconstruct(x[:1], mask, x[1:2])
        ref_tokens = ref_encoder(state, x)[1]
        masked = ref_encoder(state, x[:1], mask=mask)[1]
        ref_recon = ref_linear(ref_decoder(state, masked, ref_tokens[1:2], with_cls=False),
                               state, 'prediction_head')
    torch.testing.assert_close(logits, ref_logit(state, ref_tokens[:2], ref_tokens[1:]),
                               atol=ATOL, rtol=0)
    assert recon.shape == (1, GRID * GRID, 588)
    torch.testing.assert_close(recon, ref_recon, atol=ATOL, rtol=0)


def test_masked_patches_ignore_image_content():
    model = small_model(state=random_official_state(seed=6))
    x = images(1)
    mask = torch.zeros(1, GRID * GRID, dtype=torch.bool)
    mask[0, 5] = True
    changed = x.clone()
    changed[:, :, 14:28, 14:28] += 3.0  # patch (row 1, col 1) = index 5
    with torch.no_grad():
        same = model.encode_masked(x, mask), model.encode_masked(changed, mask)
        unmasked = model.encode_masked(x, torch.zeros_like(mask)), model.dense_features(x)
        differs = model.dense_features(changed)
    torch.testing.assert_close(same[0], same[1], atol=0, rtol=0)
    torch.testing.assert_close(unmasked[0], unmasked[1], atol=0, rtol=0)
    assert (differs - unmasked[1]).abs().max() > 1e-3


# ---- model properties -----------------------------------------------------------------------

def test_batch_of_one_equals_batch_of_many():
    model = small_model(state=random_official_state(seed=7))
    x = images(3)
    with torch.no_grad():
        together = model.describe(x)
        alone = [model.describe(x[i:i + 1]) for i in range(3)]
    torch.testing.assert_close(together[0], torch.cat([a[0] for a in alone]), atol=1e-6, rtol=0)
    torch.testing.assert_close(together[1], torch.cat([a[1] for a in alone]), atol=1e-5, rtol=0)


def test_pair_score_is_symmetric_sum_of_both_orders():
    model = small_model(state=random_official_state(seed=8))
    with torch.no_grad():
        tokens = model.dense_features(images(4))
        a, b = tokens[:2], tokens[2:]
        forward, backward = model.pair_logit(a, b), model.pair_logit(b, a)
        score_ab, score_ba = model.pair_score(a, b), model.pair_score(b, a)
    assert (forward - backward).abs().max() > 1e-6  # only the first input gets the CLS token
    torch.testing.assert_close(score_ab, forward + backward, atol=1e-6, rtol=0)
    torch.testing.assert_close(score_ab, score_ba, atol=1e-6, rtol=0)


def test_global_descriptors_are_unit_norm():
    model = small_model(state=random_official_state(seed=9))
    with torch.no_grad():
        descriptor = model.global_descriptor(images(3))
    assert descriptor.shape == (3, DESC)
    torch.testing.assert_close(descriptor.norm(dim=-1), torch.ones(3), atol=1e-6, rtol=0)


def test_spec_records_overrides_and_preprocessing():
    spec = small_model().spec
    assert spec.architecture == 'pairvpr_vitb14'
    assert spec.input_size == (IMAGE, IMAGE) and spec.num_tokens == GRID * GRID
    assert spec.token_dim == ENC_DIM and spec.descriptor_dim == DESC and spec.has_pair_classifier
    assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)
    assert spec.kwargs == SMALL
    assert spec.preprocessing == 'official'  # the official evaluation's PIL resize


def test_frozen_blocks_get_no_gradient_and_same_output():
    state = random_official_state(seed=10)
    frozen = create_model('pairvpr_vitb14', num_trainable_blocks=1, **SMALL)
    load_official_state_dict(frozen, state)
    x = images(1)
    frozen.global_descriptor(x).sum().backward()
    assert frozen.encoder.blocks[0].attn.qkv.weight.grad is None
    assert frozen.encoder.patch_embed.proj.weight.grad is None
    assert frozen.encoder.blocks[1].attn.qkv.weight.grad.abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(frozen.global_descriptor(x),
                                   small_model(state=state).global_descriptor(x),
                                   atol=0, rtol=0)


def test_registry_lists_variants_and_rejects_unknown_names():
    assert {'pairvpr_vitb14', 'pairvpr_vitl14', 'pairvpr_vitg14'} <= set(list_models())
    with pytest.raises(ValueError, match='pairvpr_vitb14'):
        create_model('pairvpr_vitz14')
    with pytest.raises(ValueError, match='decoder_depth'):
        create_model('pairvpr_vitb14', decoder_layers=2)


def test_no_forward_takes_a_mode_argument():
    classes = (pairvpr.PairVpr, pair_decoder.PairDecoder, pair_decoder.DecoderBlock,
               pair_decoder.SelfAttention, pair_decoder.CrossAttention, dinov2.DinoV2Encoder)
    for cls in classes:
        for name, member in vars(cls).items():
            if callable(member):
                assert 'mode' not in inspect.signature(member).parameters, f'{cls}.{name}'


# ---- decoder positional tables ---------------------------------------------------------------

def direct_sincos(dim: int, rows: int, cols: int) -> np.ndarray:
    """The official table written out element by element (column first, then row)."""
    quarter = dim // 4
    table = np.zeros((rows * cols, dim))
    for r in range(rows):
        for c in range(cols):
            for k in range(quarter):
                w = 10000.0 ** (-k / quarter)
                row = table[r * cols + c]
                row[[k, quarter + k]] = math.sin(c * w), math.cos(c * w)
                row[[2 * quarter + k, 3 * quarter + k]] = math.sin(r * w), math.cos(r * w)
    return table


def test_sincos_table_matches_direct_computation():
    table = pair_decoder.sincos_pos_embed_2d(32, (5, 7), num_cls=1)
    assert table.shape == (36, 32)
    assert not table[0].any()
    np.testing.assert_allclose(table[1:], direct_sincos(32, 5, 7), atol=1e-12, rtol=0)
    assert np.abs(table).max() <= 1.0
    # Each 1-D encoding is a point on unit circles: sin^2 + cos^2 = 1 per frequency.
    np.testing.assert_allclose(table[1:, :8] ** 2 + table[1:, 8:16] ** 2, 1.0, atol=1e-12)


def test_decoder_table_hand_over_keeps_same_size_and_adds_cls_row():
    table = torch.from_numpy(pair_decoder.sincos_pos_embed_2d(32, (4, 4))).float()
    same, same_cls = pair_decoder.interpolate_decoder_pos_embed(table, (4, 4))
    assert torch.equal(same, table) and torch.equal(same_cls[1:], table)
    assert not same_cls[0].any()
    bigger, bigger_cls = pair_decoder.interpolate_decoder_pos_embed(table, (6, 6))
    assert bigger.shape == (36, 32) and bigger_cls.shape == (37, 32)
    assert (bigger - torch.from_numpy(direct_sincos(32, 6, 6)).float()).abs().max() > 0.1


# ---- our checkpoint format ------------------------------------------------------------------

def test_checkpoint_round_trip(tmp_path):
    model = small_model(state=random_official_state(seed=11))
    path = save_checkpoint(model, tmp_path / 'model.safetensors')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['model.safetensors']
    loaded = load_checkpoint(path)
    assert loaded.spec == model.spec and not loaded.training
    assert loaded.spec.preprocessing == 'official'
    with safe_open(str(path), framework='pt') as handle:
        assert json.loads(handle.metadata()['spec'])['preprocessing'] == 'official'
    x = images(2)
    with torch.no_grad():
        tokens = model.dense_features(x)
        assert torch.equal(loaded.global_descriptor(x), model.global_descriptor(x))
        assert torch.equal(loaded.pair_score(tokens, tokens.flip(0)),
                           model.pair_score(tokens, tokens.flip(0)))


def saved(tmp_path, metadata_edit=None, state_edit=None):
    """Save the small model, then rewrite its metadata / tensors; return the path."""
    path = save_checkpoint(small_model(), tmp_path / 'model.safetensors')
    with safe_open(str(path), framework='pt') as handle:
        metadata = handle.metadata()
        state = {key: handle.get_tensor(key) for key in handle.keys()}
    if metadata_edit:
        metadata_edit(metadata)
    if state_edit:
        state_edit(state)
    save_file(state, str(path), metadata=metadata)
    return path


def edit_spec(**changes):
    def edit(metadata):
        spec = json.loads(metadata['spec'])
        for key, value in changes.items():
            spec[key] = value
        metadata['spec'] = json.dumps(spec)
    return edit


def test_checkpoint_keeps_the_preprocessing_it_was_saved_with(tmp_path):
    """A spec without the field (older files, or the float mode) loads in the float mode."""
    model = small_model(state=random_official_state(seed=14))
    model.spec = dataclasses.replace(model.spec, preprocessing='float')
    path = save_checkpoint(model, tmp_path / 'float.safetensors')
    with safe_open(str(path), framework='pt') as handle:
        assert 'preprocessing' not in json.loads(handle.metadata()['spec'])
    loaded = load_checkpoint(path)
    assert loaded.spec.preprocessing == 'float' and loaded.spec == model.spec
    assert create_model('pairvpr_vitb14', **SMALL).spec.preprocessing == 'official'


@pytest.mark.parametrize('value', ['pil', None, 3])
def test_unknown_preprocessing_in_a_checkpoint_is_refused(tmp_path, value):
    with pytest.raises(CheckpointError, match='preprocessing'):
        load_checkpoint(saved(tmp_path, metadata_edit=edit_spec(preprocessing=value)))


@pytest.mark.parametrize('edit,message', [
    (lambda m: m.update(format='other'), 'not a vpr_ros checkpoint'),
    (lambda m: m.update(version='3'), 'version'),
    (lambda m: m.pop('spec'), 'no model spec'),
    (lambda m: m.update(spec='{not json'), 'not valid JSON'),
    (edit_spec(architecture='pairvpr_vitz14'), 'cannot rebuild'),
    (edit_spec(descriptor_dim=999), 'descriptor_dim'),
    (edit_spec(options=dict(SMALL, decoder_depth=1)), r'unexpected keys: decoder\.dec_blocks\.1'),
    (edit_spec(descriptor_dim=8, options=dict(SMALL, descriptor_dim=8)), 'globalizer.weight'),
    (lambda m: m.update(sha256='0' * 64), 'sha256'),
])
def test_forged_metadata_is_refused(tmp_path, edit, message):
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(saved(tmp_path, metadata_edit=edit))


@pytest.mark.parametrize('edit,message', [
    (lambda s: s.pop('decoder.dec_norm.bias'), r'missing keys: decoder\.dec_norm\.bias'),
    (lambda s: s.update(extra=torch.zeros(1)), 'unexpected keys: extra'),
    (lambda s: s.update({'globalizer.bias': torch.zeros(3)}), r'shape mismatches: globalizer'),
    (lambda s: s['globalizer.bias'].add_(1.0), 'sha256'),
])
def test_mismatched_tensors_are_named(tmp_path, edit, message):
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(saved(tmp_path, state_edit=edit))


def test_corrupt_truncated_foreign_and_missing_files(tmp_path):
    path = save_checkpoint(small_model(), tmp_path / 'model.safetensors')
    data = path.read_bytes()
    cases = {'truncated': data[:len(data) // 2], 'header_only': data[:40],
             'garbage': bytes(range(256)) * 8, 'text': b'hello'}
    flipped = bytearray(data)
    flipped[len(data) - 100] ^= 0xFF
    cases['flipped'] = bytes(flipped)
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError):
            load_checkpoint(tmp_path / name)
    torch.save({'weights': torch.zeros(2)}, tmp_path / 'torch.pth')
    with pytest.raises(CheckpointError, match='not a readable safetensors'):
        load_checkpoint(tmp_path / 'torch.pth')
    with pytest.raises(CheckpointError, match='not found'):
        load_checkpoint(tmp_path / 'absent.safetensors')


# ---- official files -------------------------------------------------------------------------

@pytest.mark.parametrize('wrap', [lambda s: s, lambda s: {'model': s},
                                  lambda s: {'state_dict': s, 'epoch': 3},
                                  lambda s: {f'module.{k}': v for k, v in s.items()}])
def test_official_pth_loads_in_every_wrapping(tmp_path, wrap):
    state = random_official_state(seed=12)
    torch.save(wrap(state), tmp_path / 'pairvpr-vitB.pth')
    model = load_official_pairvpr(tmp_path / 'pairvpr-vitB.pth', 'vitb14', **SMALL)
    exported = to_official_state_dict(model)
    assert all(torch.equal(exported[key], state[key]) for key in state)
    assert model.spec.preprocessing == 'official'


class NotAllowed:
    """A class that ``torch.load(weights_only=True)`` must refuse to unpickle."""


def test_official_pth_refuses_pickled_objects_and_mismatches(tmp_path):
    torch.save({'model': NotAllowed()}, tmp_path / 'evil.pth')
    with pytest.raises(CheckpointError, match='weights_only'):
        load_official_pairvpr(tmp_path / 'evil.pth', 'vitb14', **SMALL)
    state = random_official_state()
    del state['classvprmodule.2.bias']
    torch.save(state, tmp_path / 'short.pth')
    with pytest.raises(CheckpointError, match=r'missing keys: classvprmodule\.2\.bias'):
        load_official_pairvpr(tmp_path / 'short.pth', 'vitb14', **SMALL)
    model = load_official_pairvpr(tmp_path / 'short.pth', 'vitb14', strict=False, **SMALL)
    assert torch.equal(model.decoder.dec_norm.weight, state['dec_norm.weight'])


def test_stage_one_state_dict_gets_the_table_hand_over(tmp_path):
    state = random_official_state(seed=13)
    for key in ('decoder_clstoken', 'dec_pos_embed_cls'):
        del state[key]
    state['dec_pos_embed'] = torch.from_numpy(
        pair_decoder.sincos_pos_embed_2d(DEC_DIM, (3, 3))).float()
    torch.save(state, tmp_path / 'stage1.pth')
    with pytest.raises(CheckpointError, match='decoder_clstoken'):
        load_official_pairvpr(tmp_path / 'stage1.pth', 'vitb14', **SMALL)
    model = load_official_pairvpr(tmp_path / 'stage1.pth', 'vitb14', strict=False, **SMALL)
    expected = pair_decoder.interpolate_decoder_pos_embed(state['dec_pos_embed'], (GRID, GRID))
    assert torch.equal(model.decoder.dec_pos_embed, expected[0])
    assert torch.equal(model.decoder.dec_pos_embed_cls, expected[1])


def test_official_dinov2_hub_file_loads(tmp_path):
    state = random_official_state(swiglu=True, seed=14)
    prefix = 'encoder.model.'
    hub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    torch.save(hub, tmp_path / 'dinov2_vitg14_reg4_pretrain.pth')
    encoder = dinov2.dinov2_vitg14_reg(embed_dim=ENC_DIM, depth=ENC_DEPTH, num_heads=ENC_HEADS)
    load_official_dinov2(encoder, tmp_path / 'dinov2_vitg14_reg4_pretrain.pth')
    x = images(1)
    with torch.no_grad():
        torch.testing.assert_close(encoder.encode(x)[1], ref_encoder(state, x, swiglu=True)[1],
                                   atol=ATOL, rtol=0)
    hub['extra_token'] = torch.zeros(1)
    torch.save(hub, tmp_path / 'bad.pth')
    with pytest.raises(CheckpointError, match='unexpected keys: extra_token'):
        load_official_dinov2(encoder, tmp_path / 'bad.pth')
