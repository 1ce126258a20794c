"""Pair-VPR: a DINOv2-reg encoder, a 512-D global descriptor and a pair classifier.

One encoder pass gives the global descriptor (``globalizer`` Linear on the final-normalised CLS
token, then L2 normalisation) and the dense patch tokens. The :class:`PairDecoder` turns two sets
of patch tokens into a same-place logit; :meth:`VprModel.pair_score` sums both input orders, as
the official re-ranking does. Stage-one training uses :meth:`PairVpr.reconstruct`.

Registry entries ``pairvpr_vitb14``, ``pairvpr_vitl14`` and ``pairvpr_vitg14`` build the released
configurations (322x322 input, decoder 768 wide, 12 heads, 12 blocks, 512-D descriptor); keyword
overrides build other sizes and are recorded in ``ModelSpec.options`` so that checkpoints rebuild
the same network. Their spec uses the ``'official'`` preprocessing (the official evaluation's
PIL resize, see :mod:`vpr_ros.models.preprocessing`), which the released weights were trained and
evaluated with.
"""

from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from vpr_ros.models.dinov2 import DinoV2Encoder, PATCH_SIZE
from vpr_ros.models.pair_decoder import PairDecoder
from vpr_ros.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from vpr_ros.models.registry import ENCODERS, register_model
from vpr_ros.models.spec import ModelSpec, PREPROCESSING_OFFICIAL
from vpr_ros.models.vpr_model import VprModel

DESCRIPTOR_EPS = 1e-12
# Registry name -> encoder registry name.
VARIANT_ENCODERS = {
    'pairvpr_vitb14': 'dinov2_vitb14_reg',
    'pairvpr_vitl14': 'dinov2_vitl14_reg',
    'pairvpr_vitg14': 'dinov2_vitg14_reg',
}
# Architecture overrides a factory accepts, with the released defaults (None = the encoder's).
DEFAULT_OPTIONS = {
    'encoder_dim': None, 'encoder_depth': None, 'encoder_heads': None,
    'decoder_dim': 768, 'decoder_depth': 12, 'decoder_heads': 12,
    'descriptor_dim': 512, 'image_size': 322,
}


def patchify(images: torch.Tensor, patch_size: int = PATCH_SIZE) -> torch.Tensor:
    """Cut ``[B, 3, H, W]`` into ``[B, N, patch*patch*3]`` rows (channel fastest, row-major)."""
    batch, channels, height, width = images.shape
    rows, cols = height // patch_size, width // patch_size
    x = images.reshape(batch, channels, rows, patch_size, cols, patch_size)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(batch, rows * cols, -1)


class PairVpr(VprModel):
    """The Pair-VPR model: encoder, globalizer and pair decoder.

    Args:
        spec: the model spec (built by the registry factories).
        encoder: a module with ``encode(images, mask=None) -> (cls [B, C], tokens [B, N, C])``.
        decoder: the pair decoder over the encoder tokens.
        descriptor_dim: global descriptor width.
    """

    def __init__(self, spec: ModelSpec, encoder: nn.Module, decoder: PairDecoder,
                 descriptor_dim: int) -> None:
        """Assemble the model; ``globalizer`` maps the encoder CLS width to ``descriptor_dim``."""
        super().__init__()
        self.spec = spec
        self.encoder = encoder
        self.decoder = decoder
        self.globalizer = nn.Linear(spec.token_dim, descriptor_dim)
        nn.init.xavier_uniform_(self.globalizer.weight)
        nn.init.zeros_(self.globalizer.bias)

    def describe(self, images: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Return ``(global [B, D] L2-normalised, patch tokens [B, N, C])`` in one pass."""
        cls, tokens = self.encoder.encode(images)
        return self.globalize(cls), tokens

    def globalize(self, cls: torch.Tensor) -> torch.Tensor:
        """Return the L2-normalised global descriptor of encoder CLS outputs ``[B, C]``."""
        return F.normalize(self.globalizer(cls), p=2, dim=-1, eps=DESCRIPTOR_EPS)

    def pair_logit(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Return the same-place logit ``[B]``; ``first`` gets the decoder CLS and is updated."""
        return self.decoder.logit(first, second)

    def encode_masked(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Return patch tokens ``[B, N, C]`` with masked patches (``mask`` True) replaced."""
        return self.encoder.encode(images, mask)[1]

    def reconstruct(self, first_images: torch.Tensor, mask: torch.Tensor,
                    second_images: torch.Tensor) -> torch.Tensor:
        """Return the stage-one prediction ``[B, N, patch*patch*3]`` for every patch.

        ``first_images`` are encoded with ``mask`` ``[B, N]`` (True = masked), ``second_images``
        without a mask; the decoder runs without its CLS token.
        """
        first = self.encode_masked(first_images, mask)
        second = self.encoder.encode(second_images)[1]
        return self.decoder.reconstruct(first, second)


def pairvpr_options(variant: str, overrides: dict) -> dict:
    """Return the complete architecture options of ``variant`` with ``overrides`` applied."""
    unknown = sorted(set(overrides) - set(DEFAULT_OPTIONS))
    if unknown:
        raise ValueError(f'unknown {variant} options {unknown}; valid: {sorted(DEFAULT_OPTIONS)}')
    options = {key: value for key, value in DEFAULT_OPTIONS.items() if value is not None}
    options.update({key: value for key, value in overrides.items() if value is not None})
    if options['image_size'] % PATCH_SIZE:
        raise ValueError(f'image_size {options["image_size"]} is not a multiple of {PATCH_SIZE}')
    return options


def build_encoder(variant: str, options: dict) -> DinoV2Encoder:
    """Build the variant's DINOv2 encoder with any width/depth/head overrides."""
    sizes = {'embed_dim': options.get('encoder_dim'), 'depth': options.get('encoder_depth'),
             'num_heads': options.get('encoder_heads')}
    return ENCODERS.get(VARIANT_ENCODERS[variant])(
        **{key: value for key, value in sizes.items() if value is not None})


def build_pairvpr(variant: str, num_trainable_blocks: Optional[int] = None,
                  **overrides) -> PairVpr:
    """Build a Pair-VPR model; ``overrides`` are recorded in the spec, the other argument is not.

    ``num_trainable_blocks`` (training only, None = all) freezes the earlier encoder blocks.
    """
    options = pairvpr_options(variant, overrides)
    encoder = build_encoder(variant, options)
    encoder.num_trainable_blocks = num_trainable_blocks
    side = options['image_size'] // PATCH_SIZE
    decoder = PairDecoder(encoder.embed_dim, options['decoder_dim'], options['decoder_depth'],
                          options['decoder_heads'], grid=(side, side), patch_size=PATCH_SIZE)
    spec = ModelSpec(architecture=variant, input_size=(options['image_size'],) * 2,
                     mean=IMAGENET_MEAN, std=IMAGENET_STD,
                     descriptor_dim=options['descriptor_dim'], token_dim=encoder.embed_dim,
                     num_tokens=side * side, has_pair_classifier=True,
                     options=tuple(sorted(overrides.items())),
                     preprocessing=PREPROCESSING_OFFICIAL)
    return PairVpr(spec, encoder, decoder, options['descriptor_dim'])


@register_model('pairvpr_vitb14')
def pairvpr_vitb14(**overrides) -> PairVpr:
    """Pair-VPR-s: DINOv2 ViT-B/14-reg encoder (the released ``pairvpr-vitB.pth``)."""
    return build_pairvpr('pairvpr_vitb14', **overrides)


@register_model('pairvpr_vitl14')
def pairvpr_vitl14(**overrides) -> PairVpr:
    """Pair-VPR with a DINOv2 ViT-L/14-reg encoder (the released ``pairvpr-vitL.pth``)."""
    return build_pairvpr('pairvpr_vitl14', **overrides)


@register_model('pairvpr_vitg14')
def pairvpr_vitg14(**overrides) -> PairVpr:
    """Pair-VPR-p: DINOv2 ViT-G/14-reg encoder (the released ``pairvpr-vitG.pth``)."""
    return build_pairvpr('pairvpr_vitg14', **overrides)
