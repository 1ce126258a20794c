"""Published Pair-VPR augmentations, applied to ``[H, W, 3] uint8 RGB`` arrays.

Sizes are a square side or ``(height, width)`` (the model spec's input size). Stage one
(``crop224,acolor``): each image of a pair independently gets
``RandomResizedCrop(224, scale=(0.7, 1))`` and ``ColorJitter`` with brightness, contrast and
saturation factors in [0.6, 1.4] (hue 0). Stage two: ``Resize((322, 322), bilinear)`` then
``RandAugment(num_ops=3)``. Both end with scaling to [0, 1] and normalisation by the model spec's
mean/std. Randomness comes from torch's generator, seeded per sample by the caller.
"""

from typing import Sequence, Union

import numpy as np
import torch
from torchvision.transforms import InterpolationMode, v2

PAIR_CROP_SCALE = (0.7, 1.0)
PAIR_JITTER = (0.6, 1.4)
RANDAUGMENT_OPS = 3
RANDAUGMENT_MAGNITUDE = 9

Size = Union[int, Sequence[int]]


def as_hw(size: Size) -> tuple[int, int]:
    """Return ``(height, width)`` of a square side or an ``(h, w)`` pair."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """Return a ``[3, H, W] uint8`` tensor view of an RGB array."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)


class Normalise:
    """Scale a uint8 tensor to [0, 1] and normalise it channel-wise."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Store the channel statistics (from the model spec)."""
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """Return the normalised ``[3, H, W] float32`` tensor."""
        return (image.to(torch.float32) / 255.0 - self.mean) / self.std


class PairAugmentation:
    """Stage-one pair transform: independent random resized crop and colour jitter per image."""

    def __init__(self, size: Size, mean: Sequence[float], std: Sequence[float]) -> None:
        """Build the crop (to ``size``: a square side or ``(h, w)``) and jitter transforms."""
        self.crop = v2.RandomResizedCrop(as_hw(size), scale=PAIR_CROP_SCALE, antialias=True)
        self.jitter = v2.ColorJitter(brightness=PAIR_JITTER, contrast=PAIR_JITTER,
                                     saturation=PAIR_JITTER, hue=0.0)
        self.normalise = Normalise(mean, std)

    def one(self, image: np.ndarray) -> torch.Tensor:
        """Augment one image."""
        return self.normalise(self.jitter(self.crop(to_tensor(image))))

    def __call__(self, first: np.ndarray,
                 second: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Return both images augmented with independently drawn parameters."""
        return self.one(first), self.one(second)


class PlaceAugmentation:
    """Stage-two image transform: bilinear resize to a square, then RandAugment(3)."""

    def __init__(self, size: Size, mean: Sequence[float], std: Sequence[float],
                 num_ops: int = RANDAUGMENT_OPS, magnitude: int = RANDAUGMENT_MAGNITUDE) -> None:
        """Build the transform; ``num_ops=0`` leaves out RandAugment (evaluation transform)."""
        self.resize = v2.Resize(as_hw(size), interpolation=InterpolationMode.BILINEAR,
                                antialias=True)
        self.augment = None
        if num_ops > 0:
            self.augment = v2.RandAugment(num_ops=num_ops, magnitude=magnitude,
                                          interpolation=InterpolationMode.BILINEAR)
        self.normalise = Normalise(mean, std)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """Return the transformed ``[3, h, w] float32`` tensor."""
        tensor = self.resize(to_tensor(image))
        if self.augment is not None:
            tensor = self.augment(tensor)
        return self.normalise(tensor)


DEGRADE_MIN_SCALE = 0.35
DEGRADE_MAX_BLUR = 1.6
DEGRADE_MAX_NOISE = 8.0
DEGRADE_GAMMA = (0.7, 1.4)
DEGRADE_CONTRAST = (0.7, 1.2)
DEGRADE_JPEG_QUALITY = (35, 95)


def degrade_camera(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Return ``image`` (``[H, W, 3] uint8 RGB``) as a cheaper camera might have taken it.

    In order: resolution loss (down to a random scale in [0.35, 1], back up bilinearly),
    Gaussian blur (sigma up to 1.6 px), gamma in [0.7, 1.4] and contrast in [0.7, 1.2] around
    the mean, Gaussian noise (sigma up to 8 grey levels) and JPEG compression (quality 35-95).
    Every parameter is drawn from ``rng``, so the same generator state gives the same image.
    """
    import cv2
    height, width = image.shape[:2]
    scale = rng.uniform(DEGRADE_MIN_SCALE, 1.0)
    small = cv2.resize(image, (max(8, round(width * scale)), max(8, round(height * scale))),
                       interpolation=cv2.INTER_AREA)
    out = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    sigma = rng.uniform(0.0, DEGRADE_MAX_BLUR)
    if sigma > 0.3:
        out = cv2.GaussianBlur(out, (0, 0), sigma)
    out = 255.0 * (out / 255.0) ** rng.uniform(*DEGRADE_GAMMA)
    out = out.mean() + rng.uniform(*DEGRADE_CONTRAST) * (out - out.mean())
    out = out + rng.normal(0.0, rng.uniform(0.0, DEGRADE_MAX_NOISE), out.shape)
    out = np.clip(out, 0, 255).astype(np.uint8)
    quality = int(rng.integers(*DEGRADE_JPEG_QUALITY))
    ok, data = cv2.imencode('.jpg', out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1].copy() if ok else out
