"""Pre-processing modes against references computed here with PIL, torchvision and numpy.

The ``official`` mode must equal the official Pair-VPR evaluation transform (torchvision
``Resize((h, w), BILINEAR)`` on a PIL image, ``ToTensor``, ``Normalize`` with the ImageNet
statistics) exactly; the default ``float`` mode must stay what it was.
"""

import dataclasses
import hashlib
import json

import numpy as np
from PIL import Image
import pytest
import torch
from torch.nn import functional as F
from torchvision import transforms

from vpr_ros.errors import CheckpointError
from vpr_ros.models.checkpoint import read_checkpoint_spec, shipped_weights_path
from vpr_ros.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD, official_resize, preprocess
from vpr_ros.models.spec import ModelSpec

# (source height, width) -> (target height, width): down, up, mixed, odd aspect ratios.
RESIZES = [
    ((480, 640), (322, 322)),
    ((240, 320), (322, 322)),
    ((1080, 1920), (240, 320)),
    ((17, 900), (322, 322)),
    ((900, 17), (56, 70)),
    ((100, 37), (56, 56)),
    ((5, 3), (322, 322)),
    ((323, 321), (322, 322)),
    ((333, 555), (111, 777)),
    ((322, 322), (322, 322)),
]


def spec(size: tuple, mode: str = 'official') -> ModelSpec:
    """Return an ImageNet-normalised spec of input ``size`` with ``mode`` preprocessing."""
    return ModelSpec('toy', tuple(size), IMAGENET_MEAN, IMAGENET_STD, 8, preprocessing=mode)


def sample_image(shape: tuple, seed: int) -> np.ndarray:
    """Return a seeded ``uint8`` RGB image: smooth gradients, noise and hard edges."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    periods = np.array([5.0, 11.0, 3.0])
    smooth = 127.5 + 100.0 * np.sin(rows[..., None] / 7.0 + cols[..., None] / periods)
    image = smooth + rng.normal(0.0, 20.0, shape + (3,))
    image[rng.random(shape) < 0.05] = 255.0
    return np.clip(image, 0, 255).astype(np.uint8)


def official_transform(size: tuple) -> transforms.Compose:
    """Return the official Pair-VPR evaluation transform for ``size (h, w)``."""
    return transforms.Compose([
        transforms.Resize(tuple(size), interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.ToTensor(),
        transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)])


@pytest.mark.parametrize('source,target', RESIZES)
def test_official_resize_equals_pil(source: tuple, target: tuple) -> None:
    image = sample_image(source, seed=sum(source))
    expected = np.asarray(Image.fromarray(image).resize(target[::-1], Image.BILINEAR))
    via_torchvision = np.asarray(transforms.Resize(target)(Image.fromarray(image)))
    assert np.array_equal(expected, via_torchvision)
    got = official_resize(image, target)
    assert got.dtype == np.uint8 and got.shape == target + (3,)
    assert np.array_equal(got, expected)


@pytest.mark.parametrize('source,target', RESIZES)
def test_official_mode_equals_the_official_transform(source: tuple, target: tuple) -> None:
    image = sample_image(source, seed=sum(source) + 1)
    got = preprocess([image], spec(target))
    expected = official_transform(target)(Image.fromarray(image))
    assert got.dtype == torch.float32 and got.shape == (1, 3) + target
    assert torch.equal(got[0], expected)
    # The same numbers from numpy float32 arithmetic on PIL's uint8 resize.
    resized = np.asarray(Image.fromarray(image).resize(target[::-1], Image.BILINEAR))
    mean, std = (np.array(v, np.float32) for v in (IMAGENET_MEAN, IMAGENET_STD))
    by_numpy = (resized.astype(np.float32) / np.float32(255.0) - mean) / std
    assert np.array_equal(got[0].permute(1, 2, 0).numpy(), by_numpy)


def test_official_mode_batches_mixed_sizes_image_by_image() -> None:
    target = (56, 70)
    shapes = [(60, 80), (33, 91), (56, 70)]
    batch = [sample_image(shape, seed) for seed, shape in enumerate(shapes)]
    got = preprocess(batch, spec(target))
    transform = official_transform(target)
    expected = torch.stack([transform(Image.fromarray(image)) for image in batch])
    assert torch.equal(got, expected)
    assert preprocess([], spec(target)).shape == (0, 3) + target


def test_float_mode_is_the_unrounded_antialiased_resize() -> None:
    """The default mode: PyTorch's resize of the float image, within one grey level of PIL's."""
    image, target = sample_image((480, 640), seed=5), (240, 320)
    got = preprocess([image], spec(target, 'float'))
    planar = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    resized = F.interpolate(planar, size=target, mode='bilinear', align_corners=False,
                            antialias=True)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    assert torch.equal(got, (resized / 255.0 - mean) / std)
    official = preprocess([image], spec(target))
    grey_levels = ((got - official) * std * 255.0).abs().max().item()
    assert 0.0 < grey_levels <= 1.0 + 1e-3


def test_spec_json_holds_the_mode_only_when_it_is_not_the_default() -> None:
    """Default specs keep the JSON (and digest) they had before the field existed."""
    default = spec((240, 320), 'float')
    assert ModelSpec('toy', (240, 320), IMAGENET_MEAN, IMAGENET_STD, 8) == default
    old_json = json.dumps({
        'architecture': 'toy', 'descriptor_dim': 8, 'format_version': 1,
        'has_pair_classifier': False, 'input_size': [240, 320], 'mean': list(IMAGENET_MEAN),
        'num_tokens': 0, 'options': {}, 'std': list(IMAGENET_STD), 'token_dim': 0},
        sort_keys=True)
    assert default.to_json() == old_json
    assert default.digest() == hashlib.sha256(old_json.encode()).hexdigest()[:16]
    assert ModelSpec.from_json(old_json) == default
    official = spec((240, 320))
    assert json.loads(official.to_json())['preprocessing'] == 'official'
    assert ModelSpec.from_json(official.to_json()) == official
    assert official.digest() != default.digest()


def test_unknown_modes_are_refused() -> None:
    with pytest.raises(ValueError, match='preprocessing'):
        spec((8, 8), 'pil')
    text = json.loads(spec((8, 8)).to_json())
    text['preprocessing'] = 'nearest'
    with pytest.raises(CheckpointError, match='preprocessing'):
        ModelSpec.from_json(json.dumps(text))


def test_shipped_default_weights_keep_the_float_mode_and_their_spec_bytes() -> None:
    path = shipped_weights_path('pairvpr_lite')
    if not path.is_file():
        pytest.skip('no shipped pairvpr_lite weights')
    from safetensors import safe_open
    with safe_open(str(path), framework='pt') as handle:
        stored = handle.metadata()['spec']
    loaded = read_checkpoint_spec(path)
    assert loaded.preprocessing == 'float' and loaded.to_json() == stored
    assert dataclasses.replace(loaded, preprocessing='official').to_json() != stored
