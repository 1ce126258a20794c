"""A pair classifier that reads only the local feature correspondences of two token grids.

Pair-VPR's decoder compares two images through cross-attention over their (projected) tokens, so
it learns what the training images look like, and a classifier trained on procedural routes then
fails on camera images. This classifier never sees a token's appearance, nor how similar two
tokens are in absolute terms (that level differs between rendered and real images), nor where a
token lies in the image or which way it moved (the scene layout and camera motion of the training
routes): it reads only which local features correspond and whether those correspondences agree
geometrically, what geometric verification reads too (docs/default_weights.md has the
measurements).

For every token ``i`` of the first grid, with ``S = a b^T`` the cosine similarities to all tokens
of the second grid and ``j*`` its best match, the per-token input is (:data:`TOKEN_FEATURES`):

- ``ratio``: Lowe's distance ratio ``(1 - best) / (1 - second best)`` (small = distinctive);
- ``mutual``: 1 when ``i`` is also the best match of its best match ``j*``;
- ``off_median``: distance of the displacement ``pos(j*) - pos(i)`` (normalised image
  coordinates) from the median displacement of the mutual matches (a global shift, as a
  viewpoint change along a route causes; 2 when none is mutual);
- ``off_neighbours``: mean distance to the displacements of the 4-neighbour tokens (a smooth
  displacement field means a consistent view of the same structure).

An MLP embeds each token's inputs, optional self-attention blocks (``depth``; none in the shipped
model, which transfers best to camera images) give it the context of the others, a linear layer
turns every token into evidence for "same place", and the logit is the mean evidence. The mean
keeps the score count-like: more distinctive, consistent correspondences give a higher logit,
without the plateau a normalised read-out has, so the ranking still separates pairs in scenes
where every candidate matches better than anything seen in training (a corridor, say).
``pair_score`` sums both input orders, as Pair-VPR does.
"""

from timm.layers import Mlp
import torch
from torch import nn
from torch.nn import functional as F

from vpr_ros.models.pair_decoder import NORM_EPS, SelfAttention

TOKEN_FEATURES = ('ratio', 'mutual', 'off_median', 'off_neighbours')
NO_MUTUAL_OFFSET = 2.0
DISTANCE_EPS = 1e-6
NORMALIZE_EPS = 1e-12  # F.normalize's default


def grid_positions(grid: tuple[int, int]) -> torch.Tensor:
    """Return ``[rows * cols, 2]`` token centres ``(x, y)`` in ``[-1, 1]``, row-major."""
    rows, cols = grid
    y = (torch.arange(rows, dtype=torch.float32) + 0.5) / rows * 2 - 1
    x = (torch.arange(cols, dtype=torch.float32) + 0.5) / cols * 2 - 1
    yy, xx = torch.meshgrid(y, x, indexing='ij')
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


def correspondence_features(first: torch.Tensor, second: torch.Tensor,
                            positions: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Return the per-token inputs ``[B, N, 4]`` (:data:`TOKEN_FEATURES`) of ``first``.

    ``first`` and ``second`` are ``[B, N, C]`` tokens on ``grid`` (``positions`` ``[N, 2]``,
    row-major); they are L2-normalised here, in float32.
    """
    return similarity_features(similarity_matrix(first, second), positions, grid)


def similarity_matrix(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Return the cosine similarities ``[B, N, M]`` of two token sets (float32)."""
    return torch.bmm(unit_tokens(first), unit_tokens(second).transpose(1, 2))


def unit_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """Return float32 ``tokens`` scaled to unit length along the last axis (``F.normalize``).

    The division broadcasts the norms, which exports to ONNX without expanding them first.
    """
    tokens = tokens.float()
    return tokens / tokens.norm(dim=-1, keepdim=True).clamp(min=NORMALIZE_EPS)


def similarity_features(similarity: torch.Tensor, positions: torch.Tensor,
                        grid: tuple[int, int]) -> torch.Tensor:
    """Return the per-token inputs ``[B, N, 4]`` of the rows of ``similarity`` ``[B, N, N]``."""
    top = similarity.topk(2, dim=2)
    match = top.indices[..., 0]
    mutual = _is_mutual(match, similarity.argmax(dim=1))
    displacement = positions[match] - positions
    lower, _ = mutual_medians(displacement, mutual)
    return match_features(top.values, mutual, displacement, lower, grid)


def both_orders_features(similarity: torch.Tensor, positions: torch.Tensor,
                         grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the inputs of the rows and of the columns of ``similarity`` ``[B, N, N]``.

    The columns are the second input's tokens, i.e. the other input order. One top-2 per
    direction serves both orders: each direction's best match is the other's mutual check. The
    mutual matches are the same pairs in both orders, with negated displacements, so one sort
    gives both medians: the columns' lower median is minus the rows' upper one.
    """
    rows = similarity.topk(2, dim=2)
    down = similarity.topk(2, dim=1)  # the columns, without a transposed copy of the matrix
    row_match, column_match = rows.indices[..., 0], down.indices[:, 0]
    row_mutual = _is_mutual(row_match, column_match)
    row_shift = positions[row_match] - positions
    column_shift = positions[column_match] - positions
    lower, upper = mutual_medians(row_shift, row_mutual)
    return (match_features(rows.values, row_mutual, row_shift, lower, grid),
            match_features(down.values.transpose(1, 2), _is_mutual(column_match, row_match),
                           column_shift, -upper, grid))


def _is_mutual(match: torch.Tensor, back: torch.Tensor) -> torch.Tensor:
    """Return ``[B, N]``: token ``i``'s best match ``match[i]`` has ``i`` as its best match."""
    own = torch.arange(match.shape[1], device=match.device).expand_as(match)
    return back.gather(1, match) == own


def mutual_medians(displacement: torch.Tensor,
                   mutual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the lower and upper medians ``[B, 1, 2]`` of the mutual tokens' displacements.

    Per coordinate, over the mutual tokens (the lower one is ``torch.median``'s choice for an
    even count), by sorting: operations that ONNX exports. Infinite where no token is mutual.
    """
    masked = displacement.masked_fill(~mutual.unsqueeze(-1), float('inf'))
    ordered = masked.sort(dim=1).values
    count = mutual.sum(dim=1, keepdim=True).unsqueeze(-1).expand(-1, 1, 2)
    return ordered.gather(1, (count - 1).clamp(min=0) // 2), ordered.gather(1, count // 2)


def match_features(top: torch.Tensor, mutual: torch.Tensor, displacement: torch.Tensor,
                   median: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Return the per-token inputs ``[B, N, 4]`` of one input order.

    ``top`` holds the similarities ``[B, N, 2]`` of every first-input token's two best matches
    in the second input, ``mutual`` ``[B, N]`` whether the best match is mutual,
    ``displacement`` ``[B, N, 2]`` the best match's offset and ``median`` ``[B, 1, 2]`` the
    median offset of the mutual tokens.
    """
    ratio = (1.0 - top[..., 0]).clamp(min=0.0) / (1.0 - top[..., 1]).clamp(min=DISTANCE_EPS)
    off_median = (displacement - median).norm(dim=-1)
    any_mutual = mutual.any(dim=1, keepdim=True)
    off_median = torch.where(any_mutual, off_median, torch.full_like(off_median,
                                                                     NO_MUTUAL_OFFSET))
    return torch.stack([ratio.clamp(max=1.0), mutual.float(), off_median,
                        _off_neighbours(displacement, grid)], dim=-1)


def _off_neighbours(displacement: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Return ``[B, N]`` mean distances to the 4-neighbours' displacements (edges replicated)."""
    batch = displacement.shape[0]
    field = displacement.transpose(1, 2).reshape(batch, 2, *grid)
    padded = F.pad(field, (1, 1, 1, 1), mode='replicate')
    rows, cols = grid
    neighbours = (padded[:, :, :-2, 1:-1], padded[:, :, 2:, 1:-1], padded[:, :, 1:-1, :-2],
                  padded[:, :, 1:-1, 2:])
    distance = sum((field - n).norm(dim=1) for n in neighbours) / len(neighbours)
    return distance.reshape(batch, rows * cols)


class EncoderBlock(nn.Module):
    """Pre-norm self-attention block with a GELU MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        """Create the norms, the attention and the MLP of hidden width ``dim * mlp_ratio``."""
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=NORM_EPS)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the updated tokens ``[B, N, dim]``."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CorrespondenceClassifier(nn.Module):
    """Same-place logit of two token grids from their correspondence structure.

    Args:
        grid: token grid (rows, cols); inputs must have ``rows * cols`` tokens.
        dim: width of the attention blocks.
        depth: number of attention blocks.
        heads: attention heads per block.
        mlp_ratio: MLP hidden width over ``dim``.
    """

    def __init__(self, grid: tuple[int, int], dim: int = 32, depth: int = 0, heads: int = 2,
                 mlp_ratio: float = 2.0) -> None:
        """Build the classifier with fresh weights."""
        super().__init__()
        if dim % heads:
            raise ValueError(f'classifier width {dim} is not divisible by {heads} heads')
        self.grid = tuple(grid)
        self.register_buffer('positions', grid_positions(self.grid), persistent=False)
        self.embed = Mlp(len(TOKEN_FEATURES), dim, dim, act_layer=nn.GELU)
        self.blocks = nn.ModuleList(EncoderBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.evidence = nn.Linear(dim, 1)

    def _check_tokens(self, tokens: torch.Tensor) -> None:
        """Raise ``ValueError`` when ``tokens`` do not cover the classifier's grid."""
        expected = self.positions.shape[0]
        if tokens.dim() != 3 or tokens.shape[1] != expected:
            raise ValueError(f'correspondence classifier expects [B, {expected}, C] tokens for '
                             f'grid {self.grid}, got {list(tokens.shape)}')

    def logit(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Return the same-place logit ``[B]`` (larger = same place) for one input order."""
        self._check_tokens(first)
        self._check_tokens(second)
        return self._classify(correspondence_features(first, second, self.positions, self.grid))

    def score(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Return ``logit(first, second) + logit(second, first)`` ``[B]`` from one similarity.

        The second order reads the transposed similarity matrix, so the matrix product, the
        most expensive step, runs once for both orders.
        """
        self._check_tokens(first)
        self._check_tokens(second)
        return self.score_similarity(similarity_matrix(first, second))

    def score_similarity(self, similarity: torch.Tensor) -> torch.Tensor:
        """Return both orders' logits summed ``[B]`` from the similarities ``[B, N, N]``."""
        features = torch.cat(both_orders_features(similarity, self.positions, self.grid))
        logits = self._classify(features)
        count = similarity.shape[0]
        return logits[:count] + logits[count:]

    def score_candidates(self, query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Return ``[K]`` symmetric scores of one query ``[N, C]`` against ``[K, N, C]``.

        The similarities of all candidates come from one matrix product with the query.
        """
        self._check_tokens(candidates)
        self._check_tokens(query[None])
        a, b = unit_tokens(query), unit_tokens(candidates)
        count, tokens, width = b.shape
        # Candidate rows: one plain matrix product. The score sums both orders, so it does not
        # matter which input the rows are.
        similarity = (b.reshape(count * tokens, width) @ a.T).reshape(count, tokens, -1)
        return self.score_similarity(similarity)

    def _classify(self, features: torch.Tensor) -> torch.Tensor:
        """Return the logits ``[B]``: the mean per-token evidence of inputs ``[B, N, F]``.

        Without attention blocks the embedding's second layer and the evidence are affine, so
        they apply to the mean of the hidden activations: the same logit, with ``N`` times
        fewer products.
        """
        if not self.blocks:
            hidden = self.embed.act(self.embed.fc1(features)).mean(dim=1)
            return self.evidence(self.embed.fc2(hidden)).squeeze(-1)
        x = self.embed(features)
        for block in self.blocks:
            x = block(x)
        return self.evidence(x).squeeze(-1).mean(dim=1)
