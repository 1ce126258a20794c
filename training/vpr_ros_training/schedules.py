"""Optimiser parameter groups and schedules of the published recipe.

Stage one: per-iteration cosine learning rate with linear warm-up from 0, cosine weight decay
(0.04 -> 0.4), layer-wise LR decay and a smaller patch-embedding LR. Each parameter gets
``lr_multiplier = decay ** (num_layers + 1 - layer_id)`` with ``num_layers = encoder depth +
decoder depth`` and layer ids (official ``get_vit_lr_decay_rate``): embeddings/tokens 0, encoder
block ``i`` -> ``i + 1``, encoder final norm and ``decoder_embed`` -> encoder depth, decoder block
``j`` -> encoder depth + ``j + 1``, ``dec_norm`` -> encoder + decoder depth, the reconstruction
head -> encoder + decoder depth + 1, anything else 0. Biases, norms, LayerScale gammas and 1-D
parameters get no weight decay (``wd_multiplier`` 0).
"""

import numpy as np
import torch
from torch import nn

ENCODER_EMBEDDINGS = ('patch_embed', 'cls_token', 'reg_token', 'pos_embed', 'cls_pos_embed',
                      'mask_token')


def cosine_schedule(base: float, final: float, total_iters: int, warmup_iters: int = 0,
                    warmup_start: float = 0.0) -> np.ndarray:
    """Return ``total_iters`` values: linear warm-up to ``base``, then cosine down to ``final``."""
    warmup_iters = min(warmup_iters, total_iters)
    warmup = np.linspace(warmup_start, base, warmup_iters)
    steps = np.arange(total_iters - warmup_iters)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * steps / max(len(steps), 1)))
    return np.concatenate([warmup, cosine])


def schedule_value(schedule: np.ndarray, step: int) -> float:
    """Return ``schedule[step]``, or its last value past the end."""
    return float(schedule[min(step, len(schedule) - 1)])


def layer_id(name: str, encoder_depth: int, decoder_depth: int) -> int:
    """Return the layer index of a Pair-VPR parameter name for layer-wise LR decay."""
    parts = name.split('.')
    if parts[0] == 'encoder' and len(parts) > 1:
        if parts[1] == 'blocks':
            return int(parts[2]) + 1
        return 0 if parts[1] in ENCODER_EMBEDDINGS else encoder_depth
    if parts[0] == 'decoder' and len(parts) > 1:
        head = {'decoder_embed': encoder_depth, 'dec_norm': encoder_depth + decoder_depth,
                'prediction_head': encoder_depth + decoder_depth + 1}
        if parts[1] == 'dec_blocks':
            return encoder_depth + int(parts[2]) + 1
        return head.get(parts[1], 0)
    return 0


def no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """Return True for biases, norm weights, LayerScale gammas and 1-D parameters."""
    return name.endswith('.bias') or 'norm' in name or 'gamma' in name or param.ndim == 1


def model_depths(model: nn.Module) -> tuple[int, int]:
    """Return ``(encoder blocks, decoder blocks)`` of a Pair-VPR model (0 when absent)."""
    encoder = getattr(getattr(model, 'encoder', None), 'blocks', ())
    decoder = getattr(getattr(model, 'decoder', None), 'dec_blocks', ())
    return len(encoder), len(decoder)


def layer_decay_groups(model: nn.Module, layer_decay: float,
                       patch_embed_lr_mult: float) -> list[dict]:
    """Return AdamW parameter groups with ``lr_multiplier`` and ``wd_multiplier`` per group."""
    encoder_depth, decoder_depth = model_depths(model)
    num_layers = encoder_depth + decoder_depth
    groups: dict[tuple[float, float], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr_mult = layer_decay ** (num_layers + 1 - layer_id(name, encoder_depth, decoder_depth))
        if 'patch_embed' in name:
            lr_mult *= patch_embed_lr_mult
        wd_mult = 0.0 if no_weight_decay(name, param) else 1.0
        group = groups.setdefault((lr_mult, wd_mult), {'params': [], 'names': [],
                                                       'lr_multiplier': lr_mult,
                                                       'wd_multiplier': wd_mult})
        group['params'].append(param)
        group['names'].append(name)
    return list(groups.values())


def apply_schedule(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    """Set every group's ``lr`` and ``weight_decay`` from the scheduled values and multipliers."""
    for group in optimizer.param_groups:
        group['lr'] = lr * group.get('lr_multiplier', 1.0)
        group['weight_decay'] = weight_decay * group.get('wd_multiplier', 1.0)
