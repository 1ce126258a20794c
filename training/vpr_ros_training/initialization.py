"""Building the trained network and initialising it (DINOv2 weights, stage-one hand-over).

Stage two starts from a stage-one checkpoint (ours, ``.safetensors``, or an official ``.pth``).
As in the official code the decoder's 2-D positional table is resized bicubically from the
stage-one grid (16x16 at 224 px) to the stage-two grid (23x23 at 322 px) and a zero row is put in
front for the decoder CLS token; the parts stage one does not train (globalizer, pair head,
decoder CLS) keep their fresh initialisation. Missing and unexpected keys are logged, and the
hand-over fails when encoder or decoder weights are missing or any shape disagrees (the official
``strict=False`` load silently ignores such mismatches).
"""

from dataclasses import dataclass
import logging
from pathlib import Path

from safetensors.torch import load_file
from torch import nn

from vpr_ros.errors import CheckpointError
from vpr_ros.models.checkpoint import read_checkpoint_spec
from vpr_ros.models.official_weights import (from_official_state_dict, load_official_dinov2,
                                             read_official_state_dict)
from vpr_ros.models.pair_decoder import interpolate_decoder_pos_embed
from vpr_ros.models.registry import create_model
from vpr_ros.models.state_dict_keys import compare_state_dicts, describe_key_problems
from vpr_ros.models.vpr_model import VprModel
from vpr_ros_training.config import ModelConfig

LOGGER = logging.getLogger(__name__)

# Parameters that stage one does not train; stage two initialises them afresh.
STAGE_TWO_NEW = ('globalizer.', 'decoder.classvprmodule.', 'decoder.decoder_clstoken',
                 'decoder.dec_pos_embed_cls')
# Missing any of these makes a stage-one hand-over useless: fail instead of training from noise.
REQUIRED = ('encoder.', 'decoder.decoder_embed.', 'decoder.dec_blocks.', 'decoder.dec_norm.')
POS_TABLE = 'decoder.dec_pos_embed'
POS_TABLE_CLS = 'decoder.dec_pos_embed_cls'


@dataclass(frozen=True)
class HandOver:
    """What a stage-one -> stage-two initialisation loaded and left out."""

    loaded: tuple
    missing: tuple
    unexpected: tuple


def build_model(config: ModelConfig) -> VprModel:
    """Create the registry model with its options; freeze early blocks; load DINOv2 weights."""
    options = dict(config.options)
    if config.name.startswith('pairvpr_vit'):
        options['num_trainable_blocks'] = config.num_trainable_blocks
    model = create_model(config.name, **options)
    if config.encoder_weights:
        load_official_dinov2(model.encoder, config.encoder_weights)
        LOGGER.info('encoder initialised from DINOv2 weights %s', config.encoder_weights)
    else:
        LOGGER.warning('model.encoder_weights is empty: the encoder starts from random weights')
    return model


def read_stage_one_state(path: str | Path) -> dict:
    """Return a stage-one state dict under our names from our checkpoint or an official file."""
    path = Path(path)
    if path.suffix == '.safetensors':
        try:
            spec = read_checkpoint_spec(path)
        except CheckpointError:
            return from_official_state_dict(read_official_state_dict(path))
        LOGGER.info('stage-one checkpoint %s: %s %s', path, spec.architecture, spec.kwargs)
        return load_file(str(path), device='cpu')
    return from_official_state_dict(read_official_state_dict(path))


def resize_decoder_table(state: dict, model: nn.Module) -> dict:
    """Replace the stage-one decoder table by its resized copy and the CLS-prefixed table."""
    if POS_TABLE not in state:
        return state
    table, with_cls = interpolate_decoder_pos_embed(state[POS_TABLE], model.decoder.grid)
    LOGGER.info('decoder positional table %s -> %s (+ CLS row)', tuple(state[POS_TABLE].shape),
                tuple(table.shape))
    return dict(state, **{POS_TABLE: table, POS_TABLE_CLS: with_cls})


def hand_over(model: nn.Module, state: dict, source: str = 'stage-one weights',
              keep_heads: bool = False) -> HandOver:
    """Load stage-one ``state`` into a stage-two ``model`` (see the module docstring).

    ``keep_heads`` also loads the globalizer, pair head and decoder CLS (fine-tuning a complete
    model); by default they keep their fresh initialisation, as after the official stage one.
    """
    if not keep_heads:
        state = {k: v for k, v in state.items() if not k.startswith(STAGE_TWO_NEW)}
    state = resize_decoder_table(state, model)
    expected = model.state_dict()
    missing, unexpected, mismatched = compare_state_dicts(expected, state)
    fatal = [k for k in missing if k.startswith(REQUIRED)]
    if fatal or mismatched:
        raise CheckpointError(f'{source} cannot initialise stage two: '
                              f'{describe_key_problems(fatal, [], mismatched)}')
    if unexpected:
        LOGGER.warning('%s: %d unexpected keys ignored: %s', source, len(unexpected), unexpected)
    LOGGER.info('%s: %d tensors loaded; not in the file (fresh): %s', source,
                len(state) - len(unexpected), missing)
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    return HandOver(tuple(sorted(set(state) - set(unexpected))), tuple(missing),
                    tuple(unexpected))


def load_initial_weights(model: nn.Module, path: str | Path, stage: int,
                         mode: str = 'stage_one') -> HandOver:
    """Initialise ``model`` from ``path``: stage 2 by :func:`hand_over`, stage 1 strictly."""
    state = read_stage_one_state(path)
    if stage == 2:
        return hand_over(model, state, str(path), keep_heads=mode == 'full')
    problems = compare_state_dicts(model.state_dict(), state)
    if any(problems):
        raise CheckpointError(f'{path} does not match the stage-one model: '
                              f'{describe_key_problems(*problems)}')
    model.load_state_dict(state, strict=True)
    return HandOver(tuple(sorted(state)), (), ())
