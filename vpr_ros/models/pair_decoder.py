"""The Pair-VPR pair classifier: a CroCo-style decoder over two sets of encoder tokens.

The first input's tokens are the only stream that the blocks update: each block applies
self-attention to it, then cross-attention with queries from it and keys/values from the second
input (normalised by the block's own ``norm_y``), then an MLP. The second stream is never
updated. A learned decoder CLS token is prepended to the first input for the pair logit (stage
two / inference); the stage-one reconstruction runs without it. Attention is
``torch.nn.functional.scaled_dot_product_attention`` (softmax(q k^T / sqrt(d)) v).

Parameter and buffer names are the official ones (``decoder_embed``, ``dec_blocks``,
``dec_norm``, ``decoder_clstoken``, ``dec_pos_embed``, ``dec_pos_embed_cls``, ``mask_token``,
``classvprmodule``, ``prediction_head``), so the official state dict maps onto this module by
prefix only.
"""

import numpy as np
from timm.layers import Mlp
import torch
from torch import nn
from torch.nn import functional as F

NORM_EPS = 1e-6
HEAD_HIDDEN = 512


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """Return ``[M, dim]``: sines then cosines of ``positions * 10000^(-k / (dim/2))``."""
    if dim % 2:
        raise ValueError(f'sine-cosine width {dim} must be even')
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.outer(positions.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_pos_embed_2d(dim: int, grid: tuple[int, int], num_cls: int = 0) -> np.ndarray:
    """Return the MAE/CroCo 2-D sine-cosine table ``[num_cls + H*W, dim]`` (float64).

    Rows are patches in row-major order over ``grid`` = (rows, cols). The first ``dim/2`` channels
    encode the column index, the last ``dim/2`` the row index (as the official code does); the
    ``num_cls`` leading rows are zeros.
    """
    if dim % 4:
        raise ValueError(f'2-D sine-cosine width {dim} must be divisible by 4')
    rows, cols = np.meshgrid(np.arange(grid[0]), np.arange(grid[1]), indexing='ij')
    table = np.concatenate([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], axis=1)
    return np.concatenate([np.zeros((num_cls, dim)), table], axis=0)


def interpolate_decoder_pos_embed(table: torch.Tensor, grid: tuple[int, int]
                                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize a square stage-one decoder table to ``grid``; return ``(table, table with CLS)``.

    This is the official stage-one -> stage-two hand-over: the ``[G*G, D]`` table (16x16 at 224 px)
    is resized with plain bicubic interpolation (no antialiasing, corners not aligned) to
    ``grid`` (23x23 at 322 px), and a zero row is put in front for the decoder CLS token.
    """
    dim = table.shape[1]
    resized = table
    if table.shape[0] != grid[0] * grid[1]:
        side = int(round(table.shape[0] ** 0.5))
        if side * side != table.shape[0]:
            raise ValueError(f'decoder positional table has {table.shape[0]} rows: neither the '
                             f'{grid[0]}x{grid[1]} target nor a square grid')
        square = table.float().reshape(side, side, dim).permute(2, 0, 1).unsqueeze(0)
        square = F.interpolate(square, size=tuple(grid), mode='bicubic', align_corners=False)
        resized = square.permute(0, 2, 3, 1).reshape(-1, dim).to(table.dtype)
    with_cls = torch.cat([torch.zeros_like(resized[:1]), resized], dim=0)
    return resized, with_cls


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """Reshape ``[B, N, C]`` to ``[B, heads, N, C / heads]``."""
    batch, tokens, dim = x.shape
    return x.reshape(batch, tokens, heads, dim // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """Reshape ``[B, heads, N, d]`` to ``[B, N, heads * d]``."""
    batch, heads, tokens, dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * dim)


class SelfAttention(nn.Module):
    """Multi-head self-attention with one ``qkv`` projection split as [q | k | v]."""

    def __init__(self, dim: int, heads: int) -> None:
        """Create the projections for ``heads`` heads of width ``dim / heads``."""
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the attention output ``[B, N, C]``."""
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return self.proj(_merge_heads(F.scaled_dot_product_attention(q, k, v)))


class CrossAttention(nn.Module):
    """Multi-head cross-attention with separate ``projq``, ``projk``, ``projv`` and ``proj``."""

    def __init__(self, dim: int, heads: int) -> None:
        """Create the projections for ``heads`` heads of width ``dim / heads``."""
        super().__init__()
        self.heads = heads
        self.projq = nn.Linear(dim, dim)
        self.projk = nn.Linear(dim, dim)
        self.projv = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """Return ``[B, Nq, C]``: queries from ``query``, keys and values from ``memory``."""
        q = _split_heads(self.projq(query), self.heads)
        k = _split_heads(self.projk(memory), self.heads)
        v = _split_heads(self.projv(memory), self.heads)
        return self.proj(_merge_heads(F.scaled_dot_product_attention(q, k, v)))


class DecoderBlock(nn.Module):
    """One decoder block; it updates the first stream only (no LayerScale, no drop-path)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        """Create the norms, attentions and the GELU MLP of hidden width ``dim * mlp_ratio``."""
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=NORM_EPS)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=NORM_EPS)
        self.norm3 = nn.LayerNorm(dim, eps=NORM_EPS)
        self.norm_y = nn.LayerNorm(dim, eps=NORM_EPS)
        self.cross_attn = CrossAttention(dim, heads)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Return the updated first stream ``x``; ``y`` (second stream) is left unchanged."""
        x = x + self.attn(self.norm1(x))
        x = x + self.cross_attn(self.norm2(x), self.norm_y(y))
        return x + self.mlp(self.norm3(x))


class PairDecoder(nn.Module):
    """The pair classifier and stage-one reconstruction head over encoder tokens.

    Args:
        token_dim: width of the encoder tokens fed in.
        dim: decoder width.
        depth: number of decoder blocks.
        heads: attention heads per block.
        mlp_ratio: MLP hidden width over ``dim``.
        grid: token grid (rows, cols); inputs must have ``rows * cols`` tokens.
        patch_size: image patch side; the reconstruction head predicts ``patch^2 * 3`` values.
        with_cls: create the decoder CLS token and its positional table (stage two / inference).
    """

    def __init__(self, token_dim: int, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0,
                 grid: tuple[int, int] = (23, 23), patch_size: int = 14,
                 with_cls: bool = True) -> None:
        """Build the decoder with fresh weights (official initialisation)."""
        super().__init__()
        if dim % heads:
            raise ValueError(f'decoder width {dim} is not divisible by {heads} heads')
        self.grid = tuple(grid)
        self.decoder_embed = nn.Linear(token_dim, dim)
        self.dec_blocks = nn.ModuleList(DecoderBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.dec_norm = nn.LayerNorm(dim, eps=NORM_EPS)
        self.prediction_head = nn.Linear(dim, patch_size * patch_size * 3)
        self.classvprmodule = nn.Sequential(nn.Linear(dim, HEAD_HIDDEN), nn.ReLU(),
                                            nn.Linear(HEAD_HIDDEN, 1))
        table = torch.from_numpy(sincos_pos_embed_2d(dim, self.grid)).float()
        self.register_buffer('dec_pos_embed', table)
        # Kept only so official checkpoints round-trip: the official forward never reads it.
        self.register_buffer('mask_token', torch.zeros(1, 1, dim))
        self.decoder_clstoken = None
        if with_cls:
            self.decoder_clstoken = nn.Parameter(torch.zeros(1, 1, dim))
            self.register_buffer('dec_pos_embed_cls', interpolate_decoder_pos_embed(table,
                                                                                    self.grid)[1])
        self._initialize_weights()

    def _initialize_weights(self) -> None:
        """Xavier-uniform linears with zero bias, unit LayerNorms, CLS ~ N(0, 1e-6)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.mask_token, std=0.02)
        if self.decoder_clstoken is not None:
            nn.init.normal_(self.decoder_clstoken, std=1e-6)

    def _check_tokens(self, tokens: torch.Tensor) -> None:
        """Raise ``ValueError`` when ``tokens`` do not cover the decoder's grid."""
        expected = self.dec_pos_embed.shape[0]
        if tokens.dim() != 3 or tokens.shape[1] != expected:
            raise ValueError(f'pair decoder expects [B, {expected}, C] tokens for grid '
                             f'{self.grid}, got {list(tokens.shape)}')

    def decode(self, first: torch.Tensor, second: torch.Tensor, with_cls: bool) -> torch.Tensor:
        """Return the normalised first stream ``[B, (1 +) N, dim]`` after all blocks."""
        self._check_tokens(first)
        self._check_tokens(second)
        x = self.decoder_embed(first)
        y = self.decoder_embed(second) + self.dec_pos_embed
        if with_cls:
            if self.decoder_clstoken is None:
                raise ValueError('this pair decoder has no CLS token (built with_cls=False)')
            cls = self.decoder_clstoken.expand(x.shape[0], -1, -1)
            x = torch.cat([cls, x], dim=1) + self.dec_pos_embed_cls
        else:
            x = x + self.dec_pos_embed
        for block in self.dec_blocks:
            x = block(x, y)
        return self.dec_norm(x)

    def cls_features(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Return the decoder CLS output ``[B, dim]`` (first input gets the CLS token)."""
        return self.decode(first, second, with_cls=True)[:, 0]

    def logit(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Return the same-place logit ``[B]`` (larger = same place) for one input order."""
        return self.classvprmodule(self.cls_features(first, second)).squeeze(-1)

    def reconstruct(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Return the stage-one pixel prediction ``[B, N, patch*patch*3]`` (no CLS path)."""
        return self.prediction_head(self.decode(first, second, with_cls=False))
