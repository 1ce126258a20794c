"""Pseudo-semantic label maps from colour clustering: a stand-in for a real segmenter.

StructVPR's teacher reads segmentation label maps from an off-the-shelf semantic segmenter run
offline on the training images. Where no segmentation network is available (no model hub here)
this module provides a classical, deterministic substitute: k-means over per-pixel features
(CIE Lab colour after an optional Gaussian blur, optionally the normalised row and column) is
fitted on the TRAINING images only; every pixel of any image then gets the id of its nearest
centre, so class ids are consistent across images (in a corridor, roughly: floor, white walls,
coloured doors, ceiling lights, the dark lens border). Centres are ordered by (L, a, b), so id 0
is the darkest class.

**Assumption:** colour clusters are not semantic classes; they only carry the coarse layout
("structure") the teacher is meant to see. Whether StructVPR's gains carry over to such maps is
not established by the paper. Users with a real segmenter should write single-channel label PNGs
(class ids, 255 = unlabelled) and point ``data.seg_root`` at them; the training code then reads
them with :func:`vpr_ros_training.structvpr.label_maps.read_label_map` and this module is unused.

Command line (fit on frames ``[first, stop)`` of a two-traversal folder, write label PNGs of all
frames to ``<out>/query/<stem>.png`` and ``<out>/ref/<stem>.png``, the ``seg_root`` layout of
``data.kind: traversal``)::

    python -m vpr_ros_training.structvpr.colour_segmenter --root DIR --out SEG_DIR --stop-frame 60
"""

import argparse
from dataclasses import dataclass
import logging
import os
from pathlib import Path
import tempfile
from typing import Optional, Sequence

import cv2
import numpy as np

from vpr_ros.config import validate
from vpr_ros.errors import ConfigError, DatasetError, ImageDecodeError, ImageEncodeError
from vpr_ros_training.config import option
from vpr_ros_training.places import PlaceTable
from vpr_ros_training.sare.netvlad import kmeans
from vpr_ros_training.traversal import frame_range, traversal_frames

LOGGER = logging.getLogger(__name__)

MAX_CLASSES = 255  # ids 0..254; 255 is the label maps' ignore index


@dataclass(frozen=True)
class ColourSegmenterConfig:
    """Colour k-means label maps (a stand-in for a real segmenter; see the module docstring)."""

    num_classes: int = option(8, 'colour clusters = pseudo-semantic classes (a stand-in for a '
                              'real segmenter; must equal labels.num_classes)', (1, MAX_CLASSES))
    position_weight: float = option(0.0, 'Lab units added across the full image height/width '
                                    'by the normalised (row, column) features (0 = colour only)',
                                    (0.0, 1000.0))
    blur_sigma: float = option(1.0, 'Gaussian blur sigma (pixels) before clustering (0 = none)',
                               (0.0, 100.0))
    pixels_per_image: int = option(2000, 'random pixels per training image for k-means',
                                   (1, 10 ** 7))
    seed: int = option(0, 'pixel sampling and k-means seed', (0, 2 ** 31 - 1))

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)


def check_rgb(image: np.ndarray) -> np.ndarray:
    """Return ``image`` if it is an ``[H, W, 3] uint8`` array, else raise ImageDecodeError."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or image.size == 0:
        raise ImageDecodeError(f'colour segmenter needs a non-empty [H, W, 3] uint8 RGB image, '
                               f'got {image.dtype} {image.shape}')
    return image


def pixel_features(image: np.ndarray, config: ColourSegmenterConfig) -> np.ndarray:
    """Return the ``[H * W, F] float64`` features (Lab, then optionally row and column)."""
    rgb = check_rgb(image)
    if config.blur_sigma > 0:
        rgb = cv2.GaussianBlur(rgb, (0, 0), config.blur_sigma)
    lab = cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab).astype(np.float64)
    columns = [lab.reshape(-1, 3)]
    if config.position_weight > 0:
        height, width = rgb.shape[:2]
        rows, cols = np.meshgrid((np.arange(height) + 0.5) / height,
                                 (np.arange(width) + 0.5) / width, indexing='ij')
        columns.append(config.position_weight * np.stack([rows.ravel(), cols.ravel()], 1))
    return np.concatenate(columns, 1)


def nearest_centres(features: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Return the index of the nearest centre (squared Euclidean, first on ties) of each row."""
    distances = np.empty((len(features), len(centres)))
    for index, centre in enumerate(centres):
        distances[:, index] = ((features - centre) ** 2).sum(1)
    return distances.argmin(1)


class ColourSegmenter:
    """Fitted colour centres; labels any RGB image with consistent class ids."""

    def __init__(self, centres: np.ndarray, config: ColourSegmenterConfig) -> None:
        """Store ``[num_classes, F]`` centres (in id order) and the feature settings."""
        self.centres = np.asarray(centres, dtype=np.float64)
        self.config = config
        if self.centres.shape[0] != config.num_classes:
            raise ConfigError(f'{self.centres.shape[0]} centres for num_classes '
                              f'{config.num_classes}')

    @classmethod
    def fit(cls, images: Sequence, config: ColourSegmenterConfig) -> 'ColourSegmenter':
        """Fit k-means on ``pixels_per_image`` random pixels of each training image item."""
        if not images:
            raise DatasetError('colour segmenter: no training images to fit on')
        rng = np.random.default_rng(config.seed)
        samples = []
        for item in images:
            features = pixel_features(PlaceTable.load(item), config)
            count = min(config.pixels_per_image, len(features))
            samples.append(features[rng.choice(len(features), count, replace=False)])
        points = np.concatenate(samples)
        if len(np.unique(points, axis=0)) < config.num_classes:
            raise ConfigError(f'colour segmenter: {config.num_classes} classes need at least as '
                              f'many distinct pixel features; the training images give fewer')
        centres = kmeans(points.astype(np.float32), config.num_classes, config.seed)
        centres = centres[np.lexsort(centres[:, :3].T[::-1])]
        LOGGER.info('colour segmenter: %d classes from %d pixels of %d images', len(centres),
                    len(points), len(images))
        return cls(centres, config)

    def label(self, item) -> np.ndarray:
        """Return the ``[H, W] uint8`` label map of one image item (path or RGB array)."""
        image = check_rgb(PlaceTable.load(item))
        ids = nearest_centres(pixel_features(image, self.config), self.centres)
        return ids.reshape(image.shape[:2]).astype(np.uint8)

    def label_items(self, items: Sequence) -> tuple:
        """Return the label maps of ``items`` in order."""
        return tuple(self.label(item) for item in items)


def write_label_map(path: Path, labels: np.ndarray) -> None:
    """Write an ``[H, W] uint8`` label map as a single-channel PNG (temp file, fsync, rename)."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise ImageEncodeError(f'label map {path} must be [H, W] uint8, got {labels.dtype} '
                               f'{labels.shape}')
    ok, encoded = cv2.imencode('.png', labels)
    if not ok:
        raise ImageEncodeError(f'cannot encode label map {path} as PNG')
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f'.{path.name}.', dir=path.parent)
    with os.fdopen(handle, 'wb') as stream:
        stream.write(encoded.tobytes())
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temp, path)


def fit_traversal(root: str | Path, first: int, stop: int,
                  config: ColourSegmenterConfig) -> ColourSegmenter:
    """Fit on the query and reference frames ``[first, stop)`` of a two-traversal folder."""
    queries, refs = traversal_frames(Path(root))
    frames = frame_range(len(queries), first, stop)
    return ColourSegmenter.fit([str(queries[i]) for i in frames] +
                               [str(refs[i]) for i in frames], config)


def write_traversal_labels(root: str | Path, out: str | Path, first: int, stop: int,
                           config: ColourSegmenterConfig) -> int:
    """Fit on frames ``[first, stop)``, write label PNGs of every frame; return the count."""
    segmenter = fit_traversal(root, first, stop, config)
    count = 0
    for folder, frames in zip(('query', 'ref'), traversal_frames(Path(root))):
        for frame in frames:
            write_label_map(Path(out) / folder / f'{frame.stem}.png', segmenter.label(str(frame)))
            count += 1
    return count


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point: write colour label PNGs for a two-traversal folder."""
    parser = argparse.ArgumentParser(description='Colour k-means label maps (a stand-in for a '
                                     'semantic segmenter) for a query/ + ref/ folder')
    parser.add_argument('--root', required=True, help='two-traversal folder (query/, ref/)')
    parser.add_argument('--out', required=True, help='label PNG folder (the seg_root)')
    parser.add_argument('--first-frame', type=int, default=0, help='first training frame')
    parser.add_argument('--stop-frame', type=int, default=0, help='end of training (0 = all)')
    defaults = ColourSegmenterConfig()
    parser.add_argument('--num-classes', type=int, default=defaults.num_classes)
    parser.add_argument('--position-weight', type=float, default=defaults.position_weight)
    parser.add_argument('--blur-sigma', type=float, default=defaults.blur_sigma)
    parser.add_argument('--pixels-per-image', type=int, default=defaults.pixels_per_image)
    parser.add_argument('--seed', type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    config = ColourSegmenterConfig(args.num_classes, args.position_weight, args.blur_sigma,
                                   args.pixels_per_image, args.seed)
    count = write_traversal_labels(args.root, args.out, args.first_frame, args.stop_frame, config)
    print(f'wrote {count} label maps to {args.out}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
