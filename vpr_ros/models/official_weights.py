"""Official Pair-VPR and DINOv2 weight files: reading them and mapping their keys to ours.

Official files are read with ``torch.load(weights_only=True)`` (never unpickled otherwise) or,
for ``.safetensors`` files holding an official state dict, with safetensors. The key map between
official ``PairVPRNet`` names and ours is explicit:

==============================  =====================================
official                        ours
==============================  =====================================
``encoder.model.<dinov2 key>``  ``encoder.<key>`` (see :mod:`dinov2`)
``globalizer.0.<p>``            ``globalizer.<p>``
``decoder_clstoken``, ...       ``decoder.decoder_clstoken``, ...
==============================  =====================================

The decoder keys (``decoder_clstoken``, ``mask_token``, ``dec_pos_embed``, ``dec_pos_embed_cls``,
``decoder_embed``, ``dec_blocks``, ``dec_norm``, ``prediction_head``, ``classvprmodule``) keep
their names under the ``decoder.`` prefix.
"""

import dataclasses
import logging
import os
from pathlib import Path
from typing import Union

import torch

from vpr_ros.errors import CheckpointError
from vpr_ros.models.checkpoint import read_safetensors, require_file
from vpr_ros.models.dinov2 import DinoV2Encoder, from_official_keys, to_official_keys
from vpr_ros.models.pair_decoder import interpolate_decoder_pos_embed
from vpr_ros.models.pairvpr import PairVpr
from vpr_ros.models.registry import create_model
from vpr_ros.models.spec import PREPROCESSING_OFFICIAL
from vpr_ros.models.state_dict_keys import (check_state_dict, compare_state_dicts,
                                            describe_key_problems)

LOGGER = logging.getLogger(__name__)

OFFICIAL_ENCODER_PREFIX = 'encoder.model.'
OFFICIAL_GLOBALIZER_PREFIX = 'globalizer.0.'
OFFICIAL_DECODER_NAMES = ('decoder_clstoken', 'mask_token', 'dec_pos_embed', 'dec_pos_embed_cls',
                          'decoder_embed', 'dec_blocks', 'dec_norm', 'prediction_head',
                          'classvprmodule')

PathLike = Union[str, os.PathLike]


def from_official_state_dict(state: dict) -> dict:
    """Map official ``PairVPRNet`` keys to ours; keys the map does not know pass unchanged."""
    encoder = {key[len(OFFICIAL_ENCODER_PREFIX):]: value for key, value in state.items()
               if key.startswith(OFFICIAL_ENCODER_PREFIX)}
    out = {f'encoder.{key}': value for key, value in from_official_keys(encoder).items()}
    for key, value in state.items():
        if key.startswith(OFFICIAL_ENCODER_PREFIX):
            continue
        if key.startswith(OFFICIAL_GLOBALIZER_PREFIX):
            out['globalizer.' + key[len(OFFICIAL_GLOBALIZER_PREFIX):]] = value
        elif key.split('.')[0] in OFFICIAL_DECODER_NAMES:
            out[f'decoder.{key}'] = value
        else:
            out[key] = value
    return out


def to_official_state_dict(model: PairVpr) -> dict:
    """Return ``model``'s state dict under the official ``PairVPRNet`` names and layout."""
    state = model.state_dict()
    encoder = {key[len('encoder.'):]: value for key, value in state.items()
               if key.startswith('encoder.')}
    out = {}
    for key, value in state.items():
        if key.startswith('decoder.'):
            out[key[len('decoder.'):]] = value
        elif key.startswith('globalizer.'):
            out[OFFICIAL_GLOBALIZER_PREFIX + key[len('globalizer.'):]] = value
    official_encoder = to_official_keys(encoder, model.encoder.swiglu)
    out.update({OFFICIAL_ENCODER_PREFIX + key: value for key, value in official_encoder.items()})
    return out


def official_state_dict_keys(model: PairVpr) -> list[str]:
    """Return the sorted official key names that ``model`` corresponds to."""
    return sorted(to_official_state_dict(model))


def read_official_state_dict(path: PathLike) -> dict:
    """Read an official state dict from ``.pth`` (``weights_only``) or ``.safetensors``.

    A dict holding the state dict under ``model`` or ``state_dict`` is unwrapped, and a
    ``module.`` prefix (``DataParallel``) on every key is removed.
    """
    path = Path(path)
    require_file(path)
    if path.suffix == '.safetensors':
        return read_safetensors(path)
    try:
        loaded = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as exc:
        raise CheckpointError(f'{path}: cannot read official weights with torch.load('
                              f'weights_only=True): not a PyTorch weights file, truncated or '
                              f'corrupt, or it holds objects other than tensors ({exc})') from exc
    return _unwrap_state_dict(loaded, path)


def _unwrap_state_dict(loaded: object, path: Path) -> dict:
    """Return the tensor dictionary inside ``loaded`` (a raw or wrapped state dict)."""
    if isinstance(loaded, dict):
        for wrapper in ('model', 'state_dict'):
            if isinstance(loaded.get(wrapper), dict):
                loaded = loaded[wrapper]
                break
    if not isinstance(loaded, dict) or not all(torch.is_tensor(v) for v in loaded.values()):
        raise CheckpointError(f'{path} holds no state dict of tensors '
                              f"(expected a dict, or one under 'model' or 'state_dict')")
    if loaded and all(key.startswith('module.') for key in loaded):
        loaded = {key[len('module.'):]: value for key, value in loaded.items()}
    return loaded


def _hand_over_decoder_table(model: PairVpr, state: dict) -> dict:
    """Give a stage-one state dict (no ``dec_pos_embed_cls``) the stage-two decoder tables."""
    if 'dec_pos_embed' not in state or 'dec_pos_embed_cls' in state:
        return state
    if model.decoder.decoder_clstoken is None:
        return state
    table, with_cls = interpolate_decoder_pos_embed(state['dec_pos_embed'], model.decoder.grid)
    LOGGER.info('stage-one decoder positional table %s resized to %s with a CLS row',
                tuple(state['dec_pos_embed'].shape), tuple(table.shape))
    return dict(state, dec_pos_embed=table, dec_pos_embed_cls=with_cls)


def load_official_state_dict(model: PairVpr, state: dict, strict: bool = True,
                             source: str = 'official state dict') -> tuple[list, list]:
    """Load an official-key state dict into ``model``; return ``(missing, unexpected)`` keys.

    Keys are compared under the official names. Shape mismatches always raise; missing or
    unexpected keys raise when ``strict`` and are logged otherwise. A stage-one state dict (16x16
    decoder table, no CLS table) gets the official stage-one -> stage-two table hand-over.
    """
    state = _hand_over_decoder_table(model, state)
    expected = to_official_state_dict(model)
    missing, unexpected, mismatched = compare_state_dicts(expected, state)
    if mismatched or (strict and (missing or unexpected)):
        raise CheckpointError(f'{source} does not match the model: '
                              f'{describe_key_problems(missing, unexpected, mismatched)}')
    if missing or unexpected:
        LOGGER.warning('%s: %s', source, describe_key_problems(missing, unexpected, []))
    known = {key: value for key, value in state.items() if key in expected}
    model.load_state_dict(from_official_state_dict(known), strict=not missing)
    return missing, unexpected


def load_official_pairvpr(path: PathLike, variant: str = 'vitb14', strict: bool = True,
                          **overrides) -> PairVpr:
    """Build ``pairvpr_<variant>`` (with size ``overrides``) and load an official file into it.

    ``path`` is a released ``pairvpr-vitB/L/G.pth`` (read with ``torch.load(weights_only=True)``)
    or a ``.safetensors`` file holding an official state dict. The model is in eval mode and its
    spec has the ``'official'`` preprocessing (the official evaluation transform), which
    :func:`save_checkpoint` records.
    """
    state = read_official_state_dict(path)
    model = create_model(f'pairvpr_{variant}', **overrides)
    model.spec = dataclasses.replace(model.spec, preprocessing=PREPROCESSING_OFFICIAL)
    missing, unexpected = load_official_state_dict(model, state, strict, source=str(path))
    LOGGER.info('loaded %s into pairvpr_%s (%d missing, %d unexpected keys)', path, variant,
                len(missing), len(unexpected))
    return model.eval()


def load_official_dinov2(encoder: DinoV2Encoder, path: PathLike) -> None:
    """Load an official DINOv2 hub file (``dinov2_vit*14_reg4_pretrain.pth``) into ``encoder``.

    Keys carry no prefix; every key must match (names and shapes), else ``CheckpointError``.
    """
    state = read_official_state_dict(path)
    expected = to_official_keys(encoder.state_dict(), encoder.swiglu)
    check_state_dict(expected, state, f'DINOv2 weights {path}')
    encoder.load_state_dict(from_official_keys(state), strict=True)
