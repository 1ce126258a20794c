"""Procedural routes encoded once by a frozen encoder, and the pairs mined from them.

A route seed renders two traversals of :mod:`vpr_ros.sample.renderer`: traversal 0 (day) is the
map,
traversal 1 (dusk, offset viewpoint) the queries. With ``randomize`` the seed also draws the
camera (field of view, height), the street width and how far the query camera strays (lateral
offset, yaw jitter) from :data:`RANDOM_RANGES`, and with ``degrade`` every query image goes
through :func:`~vpr_ros_training.augmentation.degrade_camera` (resolution loss, blur, noise,
exposure, JPEG). Both are seeded by the route seed, so a route is the same in every run. The
held-out demo route is never randomised or degraded: it must stay the ``vpr-demo`` route.

The encoder is frozen, so every frame is encoded once; training and evaluation read the cached
token inputs (:func:`token_input`) and the global descriptors. With ``cache_dir`` the encoded
routes are also kept on disk (safetensors, keyed by everything that changes them), so a second
run with other training settings does not render and encode them again.
"""

from dataclasses import asdict, dataclass, replace
import hashlib
import json
import logging
import os
from pathlib import Path
import tempfile
import time
from typing import Optional, Sequence

import numpy as np
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
import torch

from vpr_ros.config import validate
from vpr_ros.errors import ConfigError
from vpr_ros.geometry import positions_array
from vpr_ros.models.preprocessing import preprocess
from vpr_ros.sample.renderer import render_traversal
from vpr_ros.sample.route import RouteConfig
from vpr_ros_training.augmentation import degrade_camera
from vpr_ros_training.config import option

LOGGER = logging.getLogger(__name__)

RANDOM_RANGES = {
    'fov_deg': (55.0, 95.0), 'street_width_m': (6.0, 11.0), 'camera_height_m': (1.0, 2.2),
    'query_lateral_offset_m': (0.2, 1.6), 'query_yaw_jitter_deg': (1.0, 8.0),
}
"""Uniform ranges of the :class:`RouteConfig` fields a randomised route draws from its seed."""


@dataclass(frozen=True)
class RoutesConfig:
    """Which procedural routes are rendered, how, and how pairs are labelled."""

    train_seeds: tuple = option((101, 102, 103, 104), 'route seeds the classifier trains on')
    val_seeds: tuple = option((201,), 'route seeds that choose the fusion beta and fit the '
                              'calibration (never trained on)')
    test_seeds: tuple = option((), 'route seeds evaluated once after training: recall and '
                               'calibration reliability (never used for any choice)')
    holdout_seed: int = option(RouteConfig().seed, 'held-out route (the demo route), only '
                               'evaluated, before and after training')
    frames_per_traversal: int = option(120, 'frames rendered per traversal', (2, 100000))
    randomize: bool = option(False, 'draw camera, street width and query offsets from each '
                             'seed (train, validation and test routes; never the held-out one)')
    degrade: bool = option(False, 'pass query images of train, validation and test routes '
                           'through the camera degradation')
    positive_m: float = option(5.0, 'map frames this close to a query are positives',
                               (0.0, 1000.0))
    negative_m: float = option(5.0, 'shortlisted map frames farther than this are negatives',
                               (0.0, 1000.0))
    shortlist: int = option(20, 'global top-K of each query: negatives are mined there and '
                            're-ranked in evaluation (the demo re-ranks 20)', (1, 100000))
    encode_batch: int = option(40, 'images per encoder batch', (1, 4096))
    cache_dir: str = option('', 'folder that keeps encoded routes between runs ("" = off)')

    def __post_init__(self) -> None:
        """Validate values and that train, validation, test and held-out seeds are disjoint."""
        validate(self)
        groups = {'train': set(self.train_seeds), 'validation': set(self.val_seeds),
                  'test': set(self.test_seeds), 'held-out': {self.holdout_seed}}
        if not groups['train']:
            raise ConfigError('routes.train_seeds is empty')
        seen: set = set()
        for seeds in groups.values():
            if seen & seeds:
                raise ConfigError('route seeds overlap: ' + ', '.join(
                    f'{name} {sorted(seeds)}' for name, seeds in groups.items()))
            seen |= seeds
        if self.negative_m < self.positive_m:
            raise ConfigError(f'routes.negative_m={self.negative_m} is below '
                              f'routes.positive_m={self.positive_m}')


@dataclass(frozen=True)
class RouteFeatures:
    """One rendered route encoded by the frozen encoder.

    ``map_features`` / ``query_features`` are the cached float16 token inputs of every frame
    (:func:`token_input`); ``similarity`` is ``[Q, M]`` (global descriptor inner products) and
    ``distance`` ``[Q, M]`` (metres between the camera positions).
    """

    seed: int
    map_features: torch.Tensor
    query_features: torch.Tensor
    similarity: np.ndarray
    distance: np.ndarray

    def shortlist(self, k: int) -> np.ndarray:
        """Return each query's global top-``k`` map indices ``[Q, k]``, best first."""
        return np.argsort(-self.similarity, axis=1, kind='stable')[:, :k]


def route_config(seed: int, routes: RoutesConfig) -> RouteConfig:
    """Return the :class:`RouteConfig` of ``seed`` (randomised unless it is the held-out one)."""
    config = RouteConfig(seed=seed, frames_per_traversal=routes.frames_per_traversal)
    if not routes.randomize or seed == routes.holdout_seed:
        return config
    rng = np.random.default_rng([seed, 1])
    return replace(config, **{name: float(rng.uniform(*bounds))
                              for name, bounds in RANDOM_RANGES.items()})


def token_input(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Return ``(cached token input, global descriptors [B, D])`` of preprocessed images.

    The cached input is what ``tokens_of`` turns into pair-classifier tokens: the final feature
    map ``[B, 1280, h, w]`` for the decoder head (whose projection trains), the normalised
    tokens ``[B, N, C]`` for the correspondence head (which has no trainable token part).
    """
    if hasattr(model, 'matcher'):
        middle, final = model.feature_maps(images)
        return model.tokens(middle), model.pool_descriptor(final)
    final = model.feature_map(images)
    return final, model.pool_descriptor(final)


def tokens_of(model: torch.nn.Module, cached: torch.Tensor) -> torch.Tensor:
    """Return the pair-classifier tokens ``[B, N, C]`` (float32) of cached token inputs."""
    if hasattr(model, 'matcher'):
        return cached.float()
    return model.tokens(cached.float())


@torch.no_grad()
def encode_frames(model: torch.nn.Module, images: Sequence[np.ndarray],
                  batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(cached token inputs float16, global descriptors [N, D])`` of ``images``."""
    features, descriptors = [], []
    for start in range(0, len(images), batch):
        cached, descriptor = token_input(model, preprocess(images[start:start + batch],
                                                           model.spec))
        descriptors.append(descriptor)
        features.append(cached.half())
    return torch.cat(features), torch.cat(descriptors)


def render_route(seed: int, routes: RoutesConfig) -> tuple[list, list]:
    """Return ``(map frames, query frames)`` of route ``seed`` (queries degraded if set)."""
    config = route_config(seed, routes)
    map_frames, query_frames = render_traversal(config, 0), render_traversal(config, 1)
    if routes.degrade and seed != routes.holdout_seed:
        rng = np.random.default_rng([seed, 2])
        query_frames = [replace(f, image=degrade_camera(f.image, rng)) for f in query_frames]
    return map_frames, query_frames


def encode_route(model: torch.nn.Module, seed: int, routes: RoutesConfig) -> RouteFeatures:
    """Render both traversals of route ``seed`` and encode them with the frozen encoder."""
    encoded = []
    for frames in render_route(seed, routes):
        features, descriptors = encode_frames(model.eval(), [f.image for f in frames],
                                              routes.encode_batch)
        encoded.append((features, descriptors, positions_array([f.pose for f in frames])[:, :2]))
    (map_f, map_d, map_xy), (query_f, query_d, query_xy) = encoded
    distance = np.linalg.norm(query_xy[:, None] - map_xy[None], axis=2)
    return RouteFeatures(seed, map_f, query_f, (query_d @ map_d.T).numpy(), distance)


def encode_routes(model: torch.nn.Module, seeds: Sequence[int],
                  routes: RoutesConfig) -> list[RouteFeatures]:
    """Encode every route of ``seeds`` (logged one by one), through the cache when set."""
    return [cached_route(model, int(seed), routes) for seed in seeds]


def cached_route(model: torch.nn.Module, seed: int, routes: RoutesConfig) -> RouteFeatures:
    """Return route ``seed`` from ``routes.cache_dir`` or encode it (and store it there)."""
    path = cache_path(model, seed, routes)
    route = read_cached_route(path, seed) if path is not None else None
    if route is not None:
        return route
    start = time.perf_counter()
    route = encode_route(model, seed, routes)
    LOGGER.info('route %d rendered and encoded in %.1f s', seed, time.perf_counter() - start)
    if path is not None:
        write_cached_route(path, route)
    return route


def cache_path(model: torch.nn.Module, seed: int, routes: RoutesConfig) -> Optional[Path]:
    """Return the cache file of route ``seed``: a digest of rendering, degradation and encoder."""
    if not routes.cache_dir:
        return None
    spec = model.spec
    key = {'seed': seed, 'route': asdict(route_config(seed, routes)),
           'degrade': routes.degrade and seed != routes.holdout_seed,
           'model': [spec.architecture, list(spec.input_size), list(spec.mean), list(spec.std),
                     type(model).__name__, spec.kwargs.get('match_stage')]}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    return Path(routes.cache_dir) / f'route{seed}-{digest[:16]}.safetensors'


def read_cached_route(path: Path, seed: int) -> Optional[RouteFeatures]:
    """Return the route stored at ``path``, or None when it is absent or unreadable."""
    if not path.is_file():
        return None
    try:
        data = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        LOGGER.warning('ignoring unreadable route cache %s: %s', path, exc)
        return None
    LOGGER.info('route %d read from %s', seed, path)
    return RouteFeatures(seed, data['map_features'], data['query_features'],
                         data['similarity'].numpy(), data['distance'].numpy())


def write_cached_route(path: Path, route: RouteFeatures) -> None:
    """Store ``route`` at ``path`` atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f'.{path.name}.', dir=path.parent)
    os.close(handle)
    tensors = {'map_features': route.map_features.contiguous(),
               'query_features': route.query_features.contiguous(),
               'similarity': torch.from_numpy(np.ascontiguousarray(route.similarity)),
               'distance': torch.from_numpy(np.ascontiguousarray(route.distance))}
    try:
        save_file(tensors, temp)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def mine_pairs(routes: Sequence[RouteFeatures],
               config: RoutesConfig) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(positives, negatives)`` as ``[P, 3]`` rows ``(route, query, map frame)``.

    Positives are all map frames within ``positive_m`` of the query; negatives are the query's
    global top-``shortlist`` frames farther than ``negative_m``.
    """
    positives, negatives = [], []
    for index, route in enumerate(routes):
        queries, frames = np.nonzero(route.distance <= config.positive_m)
        positives.append(np.stack([np.full_like(queries, index), queries, frames], axis=1))
        shortlist = route.shortlist(config.shortlist)
        far = np.take_along_axis(route.distance, shortlist, axis=1) > config.negative_m
        queries = np.nonzero(far)[0]
        negatives.append(np.stack([np.full_like(queries, index), queries, shortlist[far]],
                                  axis=1))
    return np.concatenate(positives), np.concatenate(negatives)


def gather_pairs(routes: Sequence[RouteFeatures],
                 rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the float32 ``(query, map)`` cached inputs of ``rows`` ``(route, query, frame)``."""
    queries = torch.stack([routes[r].query_features[q] for r, q, _ in rows])
    frames = torch.stack([routes[r].map_features[m] for r, _, m in rows])
    return queries.float(), frames.float()
