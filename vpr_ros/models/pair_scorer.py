"""Re-ranking one query against K candidates with the query's share of the work done once.

:meth:`VprModel.pair_score` on ``(query.expand(K), candidates)`` runs the pair decoder 2K times
from scratch, as the official per-query loop does. Much of that work is identical across the K
pairs, and :class:`PairScorer` computes it once, with the same weights and the same arithmetic:

- ``decoder_embed`` of the query (once) and of each candidate (once, shared by both orders);
- query first: the query stream is the same for every candidate until the first
  cross-attention, so the first block's self-attention (and its cross-attention queries) run
  on one row set;
- candidate first: the query is the memory of every cross-attention, so each block's
  ``norm_y``, key and value projections of it run once;
- last block: only the decoder CLS row reaches the pair head, so the last block computes keys
  and values for every token but queries, attention output and MLP for the CLS row only.

For the lite decoder (2 blocks, 80 tokens) that is about 45 % of the FLOPs of the plain loop;
the scores equal :meth:`VprModel.pair_score` up to float rounding (checked in the tests).
"""

import contextlib
from typing import Optional

import torch
from torch.nn import functional as F

from vpr_ros.models.pair_decoder import DecoderBlock, PairDecoder


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """Reshape ``[B, N, C]`` to ``[B, heads, N, C / heads]``."""
    batch, tokens, dim = x.shape
    return x.reshape(batch, tokens, heads, dim // heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """Reshape ``[B, heads, N, d]`` to ``[B, N, heads * d]``."""
    batch, heads, tokens, dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * dim)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Return ``softmax(q k^T / sqrt(d)) v``, broadcasting a batch of one against the other."""
    batch = max(q.shape[0], k.shape[0])
    q, k, v = (t.expand(batch, -1, -1, -1) for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v)


def self_attention(block: DecoderBlock, x: torch.Tensor, cls_only: bool) -> torch.Tensor:
    """Return ``x + SelfAttn(norm1(x))``; with ``cls_only`` just the CLS row ``[B, 1, C]``."""
    attn = block.attn
    weight, bias = attn.qkv.weight, attn.qkv.bias
    dim = x.shape[-1]
    h = block.norm1(x)
    k, v = F.linear(h, weight[dim:], bias[dim:]).split(dim, dim=-1)
    rows = h[:, :1] if cls_only else h
    q = F.linear(rows, weight[:dim], bias[:dim])
    out = _attend(_heads(q, attn.heads), _heads(k, attn.heads), _heads(v, attn.heads))
    return (x[:, :1] if cls_only else x) + attn.proj(_merge(out))


def memory_keys(block: DecoderBlock, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the cross-attention keys and values ``[B, heads, N, d]`` of the memory ``y``."""
    cross = block.cross_attn
    memory = block.norm_y(y)
    return (_heads(cross.projk(memory), cross.heads),
            _heads(cross.projv(memory), cross.heads))


def cross_and_mlp(block: DecoderBlock, x: torch.Tensor,
                  keys: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Return the block's output after cross-attention (``keys`` of the memory) and MLP."""
    cross = block.cross_attn
    q = _heads(cross.projq(block.norm2(x)), cross.heads)
    x = x + cross.proj(_merge(_attend(q, *keys)))
    return x + block.mlp(block.norm3(x))


def decode_cls(decoder: PairDecoder, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Return the decoder CLS features ``[B, dim]`` of embedded streams (either batch may be 1).

    ``first`` and ``second`` are ``decoder_embed`` outputs ``[B or 1, N, dim]``; this equals
    :meth:`PairDecoder.cls_features` on the raw tokens, broadcast to the larger batch.
    """
    cls = decoder.decoder_clstoken.expand(first.shape[0], -1, -1)
    x = torch.cat([cls, first], dim=1) + decoder.dec_pos_embed_cls
    y = second + decoder.dec_pos_embed
    last = len(decoder.dec_blocks) - 1
    for index, block in enumerate(decoder.dec_blocks):
        x = self_attention(block, x, cls_only=index == last)
        x = cross_and_mlp(block, x, memory_keys(block, y))
    return decoder.dec_norm(x[:, 0])


class PairScorer:
    """Symmetric pair scores of one query against many candidates (query work shared).

    Args:
        decoder: a :class:`PairDecoder` built ``with_cls`` (its weights are used as they are).
        autocast_dtype: optional lower precision for the matrix products (``torch.bfloat16``
            on CPUs with AVX-512 BF16 / AMX, ``torch.float16`` or ``torch.bfloat16`` on CUDA);
            None keeps float32 and the exact scores.
    """

    def __init__(self, decoder: PairDecoder,
                 autocast_dtype: Optional[torch.dtype] = None) -> None:
        """Keep the decoder; nothing is copied."""
        if decoder.decoder_clstoken is None:
            raise ValueError('PairScorer needs a pair decoder with a CLS token (with_cls=True)')
        self.decoder = decoder
        self.autocast_dtype = autocast_dtype

    def score(self, query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Return ``[K]`` = logit(query, c_k) + logit(c_k, query) for ``[N, C]``, ``[K, N, C]``.

        The result is float32 on the candidates' device.
        """
        if query.dim() == 3:
            query = query[0]
        dtype = self.decoder.decoder_embed.weight.dtype
        with self._autocast(candidates.device):
            embedded = self.decoder.decoder_embed(torch.cat([query[None].to(dtype),
                                                             candidates.to(dtype)]))
            q, c = embedded[:1], embedded[1:]
            both = torch.cat([decode_cls(self.decoder, q, c), decode_cls(self.decoder, c, q)])
            logits = self.decoder.classvprmodule(both).squeeze(-1).float()
        count = candidates.shape[0]
        return logits[:count] + logits[count:]

    def _autocast(self, device: torch.device):
        """Return an autocast context for ``device``; without ``autocast_dtype`` the caller's."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype)


def is_broadcast(query: torch.Tensor) -> bool:
    """Return True when every row of ``query`` ``[B, N, C]`` holds the same tokens.

    True for ``q.expand(B, -1, -1)`` views (stride 0) without reading the data; otherwise the
    rows are compared (exact equality), which costs one pass over the tensor.
    """
    if query.dim() != 3 or query.shape[0] < 2:
        return False
    if query.stride(0) == 0:
        return True
    return bool(torch.equal(query, query[:1].expand_as(query)))
