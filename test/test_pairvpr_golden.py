"""Pair-VPR port against the official code's outputs (``pairvpr_golden`` fixture, 1e-5 abs).

The fixture holds a small random-weight network under the official parameter names and the
outputs that the official Pair-VPR + DINOv2 code computed for four fixed inputs on CPU.
"""

from safetensors.torch import load_file
import torch

from vpr_ros.models.official_weights import (load_official_pairvpr, load_official_state_dict,
                                             read_official_state_dict, to_official_state_dict)
from vpr_ros.models.pair_decoder import interpolate_decoder_pos_embed, sincos_pos_embed_2d
from vpr_ros.models.registry import create_model

TOLERANCE = 1e-5
# The fixture's network (config.json): encoder 384 wide, 2 blocks, 6 heads; decoder 192/2/3.
GOLDEN_SIZES = {'encoder_dim': 384, 'encoder_depth': 2, 'encoder_heads': 6, 'decoder_dim': 192,
                'decoder_depth': 2, 'decoder_heads': 3}


def port_outputs(model, inputs: dict) -> dict:
    """Compute every fixture output with the port; pair [i, j] puts image i first."""
    images = inputs['images']
    count = len(images)
    with torch.no_grad():
        cls, tokens = model.encoder.encode(images)
        first, second = tokens.repeat_interleave(count, 0), tokens.repeat(count, 1, 1)
        grid = (images.shape[2] // 14, images.shape[3] // 14)
        return {
            'enc_patch_tokens': tokens,
            'enc_cls_token': cls,
            'global_desc': model.global_descriptor(images),
            'enc_pos_embed_interp': model.encoder.interpolated_pos_embed(grid),
            'pair_logits': model.pair_logit(first, second).reshape(count, count),
            'pair_scores': model.pair_score(first, second).reshape(count, count),
            'pair_dec_cls': model.decoder.cls_features(first, second).reshape(count, count, -1),
            'mim_pred': model.reconstruct(images[:1], inputs['mim_mask'], images[1:2]),
        }


def test_golden_state_dict_loads_by_name(golden_dir):
    state = read_official_state_dict(golden_dir / 'state_dict.safetensors')
    model = create_model('pairvpr_vitb14', **GOLDEN_SIZES)
    assert load_official_state_dict(model, state) == ([], [])
    exported = to_official_state_dict(model)
    assert sorted(exported) == sorted(state)
    assert all(torch.equal(exported[key], state[key]) for key in state)


def test_golden_outputs_match_official(golden_dir):
    torch.set_num_threads(1)
    model = load_official_pairvpr(golden_dir / 'state_dict.safetensors', 'vitb14',
                                  **GOLDEN_SIZES)
    expected = load_file(str(golden_dir / 'outputs.safetensors'))
    outputs = port_outputs(model, load_file(str(golden_dir / 'inputs.safetensors')))
    assert sorted(outputs) == sorted(expected)
    errors = {}
    for name, value in outputs.items():
        assert value.shape == expected[name].shape, name
        errors[name] = (value - expected[name]).abs().max().item()
    assert max(errors.values()) <= TOLERANCE, f'max abs errors: {errors}'


def test_golden_decoder_tables_are_the_stage_one_hand_over(golden_dir):
    state = load_file(str(golden_dir / 'state_dict.safetensors'))
    dim = state['dec_pos_embed'].shape[1]
    stage_one = torch.from_numpy(sincos_pos_embed_2d(dim, (16, 16))).float()
    table, with_cls = interpolate_decoder_pos_embed(stage_one, (23, 23))
    torch.testing.assert_close(table, state['dec_pos_embed'], atol=1e-6, rtol=0)
    torch.testing.assert_close(with_cls, state['dec_pos_embed_cls'], atol=1e-6, rtol=0)
    direct = torch.from_numpy(sincos_pos_embed_2d(dim, (23, 23))).float()
    assert (direct - state['dec_pos_embed']).abs().max() > 1.0  # README: they differ by 1.99
