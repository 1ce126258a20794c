"""Segmentation label maps pre-encoded as weighted one-hot tensors (the SEG teacher's input).

A label map is an ``[H, W]`` integer array of class ids (``ignore_index``, 255, marks unlabelled
pixels). It is resized with nearest-neighbour sampling (labels must not be blended) to the
network's input size and encoded as ``C`` channels: channel ``c`` is ``class_weights[c]`` where
the pixel has class ``c`` and 0 elsewhere; ignored pixels are 0 in every channel. The class set
(StructVPR used an off-the-shelf segmenter; Cityscapes-19 by default here) and the class weights
(all 1 by default) are **unverified** assumptions; both are config values. Label maps are stored
as single-channel PNG files (``read_label_map``) computed offline by any segmenter.
"""

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import torch

from vpr_ros.config import validate
from vpr_ros.errors import ConfigError, ImageDecodeError
from vpr_ros_training.config import option

CITYSCAPES_CLASSES = 19
IGNORE_INDEX = 255


@dataclass(frozen=True)
class LabelMapConfig:
    """Class set and class weights of the weighted one-hot encoding (unverified defaults)."""

    num_classes: int = option(CITYSCAPES_CLASSES, 'segmentation classes C (default: '
                              'Cityscapes-19, unverified)', (1, 1000))
    class_weights: tuple = option((), 'weight of each class channel (empty = all 1; '
                                  "the paper's values are unverified)")
    ignore_index: int = option(IGNORE_INDEX, 'label of unlabelled pixels (all channels 0)',
                               (0, 65535))

    def __post_init__(self) -> None:
        """Validate values and the number of class weights."""
        validate(self)
        if self.class_weights and len(self.class_weights) != self.num_classes:
            raise ConfigError(f'LabelMapConfig.class_weights has {len(self.class_weights)} '
                              f'values for {self.num_classes} classes')

    def weights(self) -> torch.Tensor:
        """Return the ``[C]`` class weights."""
        values = self.class_weights or (1.0,) * self.num_classes
        return torch.tensor([float(v) for v in values], dtype=torch.float32)


def weighted_one_hot(labels: torch.Tensor, weights: torch.Tensor,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Return ``[B, C, H, W]`` weighted one-hot maps of integer labels ``[B, H, W]``."""
    labels = labels.long()
    valid = (labels >= 0) & (labels < len(weights))
    invalid = ~valid & (labels != ignore_index)
    if bool(invalid.any()):
        raise ConfigError(f'label map holds class ids outside [0, {len(weights)}) other than '
                          f'ignore_index {ignore_index}: {sorted(set(labels[invalid].tolist()))}')
    one_hot = torch.zeros(labels.shape[0], len(weights), *labels.shape[1:],
                          dtype=weights.dtype, device=labels.device)
    one_hot.scatter_(1, labels.clamp(0, len(weights) - 1).unsqueeze(1), 1.0)
    return one_hot * valid.unsqueeze(1) * weights.to(labels.device).view(1, -1, 1, 1)


def resize_label_map(label_map: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Return ``label_map`` resized to ``(height, width)`` with nearest-neighbour sampling."""
    height, width = size
    if label_map.shape[:2] == (height, width):
        return label_map
    return cv2.resize(label_map, (width, height), interpolation=cv2.INTER_NEAREST)


def encode_label_maps(label_maps: Sequence[np.ndarray], size: Sequence[int],
                      config: LabelMapConfig) -> torch.Tensor:
    """Return the ``[B, C, h, w]`` network input of a batch of ``[H, W]`` label maps."""
    for index, label_map in enumerate(label_maps):
        if np.asarray(label_map).ndim != 2:
            raise ImageDecodeError(f'label map {index} must be [H, W], got '
                                   f'{np.asarray(label_map).shape}')
    resized = [resize_label_map(np.asarray(m), size).astype(np.int64) for m in label_maps]
    labels = torch.from_numpy(np.stack(resized)) if resized else torch.zeros(0, *size).long()
    return weighted_one_hot(labels, config.weights(), config.ignore_index)


def read_label_map(path: str) -> np.ndarray:
    """Read a single-channel label PNG as ``[H, W]`` integers."""
    data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if data is None:
        raise ImageDecodeError(f'cannot read label map {path}')
    if data.ndim != 2:
        raise ImageDecodeError(f'label map {path} has {data.shape[2]} channels; expected one')
    return data
