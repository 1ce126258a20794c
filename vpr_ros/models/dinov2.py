"""DINOv2 ViT encoders with register tokens, built on timm's ``VisionTransformer``.

The network is timm's ``vit_*_patch14_reg4_dinov2`` layout (class token, four register tokens,
``no_embed_class``, LayerScale, patch 14, ``dynamic_img_size``) with three additions that the
official DINOv2 code has and timm lacks:

- ``cls_pos_embed``: the class-token row of the official positional table. timm's
  ``no_embed_class`` layout keeps only the patch grid in ``pos_embed``; we keep the row as its own
  parameter (instead of folding it into ``cls_token``) so official weights round-trip bit for bit.
- ``mask_token``: replaces masked patch vectors right after the patch embedding (stage-one MIM).
- the positional grid (a 518-px, 37x37 table) is resized to the input grid on every forward pass
  with antialiased bicubic interpolation to an explicit size, exactly as the hub models do.

:func:`from_official_keys` and :func:`to_official_keys` are the explicit key map between the
official DINOv2 state dict (hub ``dinov2_vit*14_reg4_pretrain.pth`` files, keys without prefix)
and ours.
"""

import re
from typing import Optional

from timm.layers import GluMlp, resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
import torch
from torch import nn

from vpr_ros.models.registry import ENCODERS

PATCH_SIZE = 14
POS_EMBED_IMG_SIZE = 518
NUM_REGISTERS = 4

# Official DINOv2 key (regex) -> our key (template). Every other key keeps its name.
OFFICIAL_TO_OURS = (
    (r'^register_tokens$', 'reg_token'),
    (r'^blocks\.(\d+)\.mlp\.w12\.(weight|bias)$', r'blocks.\1.mlp.fc1.\2'),
    (r'^blocks\.(\d+)\.mlp\.w3\.(weight|bias)$', r'blocks.\1.mlp.fc2.\2'),
)
# Our key (regex) -> official key; the SwiGLU renames apply only to SwiGLU encoders.
OURS_TO_OFFICIAL = ((r'^reg_token$', 'register_tokens'),)
OURS_TO_OFFICIAL_SWIGLU = (
    (r'^blocks\.(\d+)\.mlp\.fc1\.(weight|bias)$', r'blocks.\1.mlp.w12.\2'),
    (r'^blocks\.(\d+)\.mlp\.fc2\.(weight|bias)$', r'blocks.\1.mlp.w3.\2'),
)


def swiglu_hidden(hidden_features: int) -> int:
    """Return DINOv2's SwiGLU hidden width for a nominal MLP width (2/3, rounded up to 8)."""
    return (int(hidden_features * 2 / 3) + 7) // 8 * 8


def swiglu_mlp(in_features: int, hidden_features: int, **kwargs) -> nn.Module:
    """Build DINOv2's SwiGLU FFN as timm's packed GLU MLP (``fc1`` = official ``w12``).

    ``silu(first half of fc1) * second half -> fc2`` matches DINOv2's ``SwiGLUFFN``; the activation
    passed by timm's block (GELU) is ignored.
    """
    kwargs.pop('act_layer', None)
    return GluMlp(in_features, 2 * swiglu_hidden(hidden_features), act_layer=nn.SiLU,
                  gate_last=False, **kwargs)


class DinoV2Encoder(VisionTransformer):
    """A DINOv2-with-registers ViT whose forward returns the final-normalised tokens.

    Token order inside the blocks is ``[CLS, registers, patches]``; positions are added to CLS
    and patches only. ``num_trainable_blocks`` (None = all) runs the earlier blocks under
    ``torch.no_grad`` and detaches their output, as the official Pair-VPR wrapper does.
    """

    def __init__(self, embed_dim: int, depth: int, num_heads: int, swiglu: bool = False,
                 num_trainable_blocks: Optional[int] = None) -> None:
        """Build the encoder; ``swiglu`` selects the ViT-G feed-forward layer."""
        mlp = {'mlp_layer': swiglu_mlp} if swiglu else {}
        super().__init__(img_size=POS_EMBED_IMG_SIZE, patch_size=PATCH_SIZE, num_classes=0,
                         global_pool='', embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                         mlp_ratio=4.0, init_values=1.0, reg_tokens=NUM_REGISTERS,
                         no_embed_class=True, dynamic_img_size=True, **mlp)
        self.swiglu = swiglu
        self.num_trainable_blocks = num_trainable_blocks
        self.cls_pos_embed = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        nn.init.trunc_normal_(self.cls_pos_embed, std=0.02)

    def patch_pos_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        """Return the patch positional table resized to ``grid`` (rows, cols): ``[1, H*W, D]``."""
        return resample_abs_pos_embed(self.pos_embed, new_size=list(grid),
                                      old_size=list(self.patch_embed.grid_size),
                                      num_prefix_tokens=0, interpolation='bicubic',
                                      antialias=True)

    def interpolated_pos_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        """Return the table added at ``grid`` in the official layout: ``[1, 1 + H*W, D]``."""
        return torch.cat([self.cls_pos_embed, self.patch_pos_embed(grid)], dim=1)

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """Add positions to CLS and patches (``x`` is NHWC), then insert the registers."""
        batch, rows, cols, dim = x.shape
        patches = x.reshape(batch, rows * cols, dim) + self.patch_pos_embed((rows, cols))
        cls = (self.cls_token + self.cls_pos_embed).expand(batch, -1, -1)
        return torch.cat([cls, self.reg_token.expand(batch, -1, -1), patches], dim=1)

    def embed(self, images: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Return the block input tokens; where ``mask`` ``[B, N]`` is True, the mask token."""
        x = self.patch_embed(images)
        if mask is not None:
            grid_mask = mask.reshape(x.shape[:3]).unsqueeze(-1)
            x = torch.where(grid_mask, self.mask_token.to(x.dtype), x)
        return self._pos_embed(x)

    def run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the blocks; the first ``depth - num_trainable_blocks`` run without gradients."""
        frozen = 0
        if self.num_trainable_blocks is not None:
            frozen = max(len(self.blocks) - self.num_trainable_blocks, 0)
        if frozen:
            with torch.no_grad():
                for block in self.blocks[:frozen]:
                    x = block(x)
            x = x.detach()
        for block in self.blocks[frozen:]:
            x = block(x)
        return x

    def forward(self, images: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Return all final-normalised tokens ``[B, 1 + 4 + N, D]`` (CLS, registers, patches)."""
        return self.norm(self.run_blocks(self.embed(images, mask)))

    def encode(self, images: torch.Tensor, mask: Optional[torch.Tensor] = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(cls [B, D], patch tokens [B, N, D])``; register outputs are dropped."""
        tokens = self.forward(images, mask)
        return tokens[:, 0], tokens[:, self.num_prefix_tokens:]


def _rename(key: str, rules: tuple) -> str:
    """Return ``key`` rewritten by the first matching ``(regex, template)`` rule."""
    for pattern, template in rules:
        if re.match(pattern, key):
            return re.sub(pattern, template, key)
    return key


def from_official_keys(state: dict) -> dict:
    """Map an official DINOv2 state dict (no prefix) to :class:`DinoV2Encoder` names.

    The official ``pos_embed`` ``[1, 1 + G*G, D]`` is split into ``cls_pos_embed`` (row 0) and
    ``pos_embed`` (the grid); ``register_tokens`` becomes ``reg_token``; SwiGLU ``w12``/``w3``
    become ``fc1``/``fc2``.
    """
    out = {}
    for key, value in state.items():
        if key == 'pos_embed':
            out['cls_pos_embed'] = value[:, :1]
            out['pos_embed'] = value[:, 1:]
        else:
            out[_rename(key, OFFICIAL_TO_OURS)] = value
    return out


def to_official_keys(state: dict, swiglu: bool) -> dict:
    """Map a :class:`DinoV2Encoder` state dict to official DINOv2 names (inverse of the above)."""
    rules = OURS_TO_OFFICIAL + (OURS_TO_OFFICIAL_SWIGLU if swiglu else ())
    out = {}
    for key, value in state.items():
        if key == 'cls_pos_embed':
            continue
        if key == 'pos_embed':
            out['pos_embed'] = torch.cat([state['cls_pos_embed'], value], dim=1)
        else:
            out[_rename(key, rules)] = value
    return out


def build_dinov2(embed_dim: int, depth: int, num_heads: int, swiglu: bool = False,
                 num_trainable_blocks: Optional[int] = None) -> DinoV2Encoder:
    """Build a DINOv2-reg encoder of any width, depth and head count (patch 14, 518-px table)."""
    if embed_dim % num_heads:
        raise ValueError(f'encoder width {embed_dim} is not divisible by {num_heads} heads')
    return DinoV2Encoder(embed_dim, depth, num_heads, swiglu, num_trainable_blocks)


@ENCODERS.register('dinov2_vitb14_reg')
def dinov2_vitb14_reg(embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                      **kwargs) -> DinoV2Encoder:
    """DINOv2 ViT-B/14 with registers (768 wide, 12 blocks, 12 heads)."""
    return build_dinov2(embed_dim, depth, num_heads, swiglu=False, **kwargs)


@ENCODERS.register('dinov2_vitl14_reg')
def dinov2_vitl14_reg(embed_dim: int = 1024, depth: int = 24, num_heads: int = 16,
                      **kwargs) -> DinoV2Encoder:
    """DINOv2 ViT-L/14 with registers (1024 wide, 24 blocks, 16 heads)."""
    return build_dinov2(embed_dim, depth, num_heads, swiglu=False, **kwargs)


@ENCODERS.register('dinov2_vitg14_reg')
def dinov2_vitg14_reg(embed_dim: int = 1536, depth: int = 40, num_heads: int = 24,
                      **kwargs) -> DinoV2Encoder:
    """DINOv2 ViT-G/14 with registers (1536 wide, 40 blocks, 24 heads, SwiGLU FFN)."""
    return build_dinov2(embed_dim, depth, num_heads, swiglu=True, **kwargs)
