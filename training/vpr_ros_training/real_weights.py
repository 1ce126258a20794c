"""Real-image weights for ``pairvpr_lite``: ``python -m vpr_ros_training.real_weights``.

The shipped ``pairvpr_lite`` starts from ImageNet (global descriptor) and procedural routes (pair
classifier). This recipe adapts both to real images of ``shared/data/real_vpr``
(:mod:`vpr_ros_training.real_vpr`), on the training split only:

1. **Global descriptor.** The encoder up to block stage ``tune_from_stage`` stays frozen (so the
   stage-4 tokens of the pair classifier do not move); the later stages and the head convolution
   train with the multi-similarity loss on batches of places seen in several conditions. Batch
   norms keep their ImageNet statistics. The frozen part runs once per image (cached).
2. **Pair classifier.** Trained again (from the shipped weights) on the training pairings with
   hard negatives mined by the tuned global descriptor (``default_weights``' trainer).
3. **Scoring.** The fusion beta and the probability calibration are fitted on the validation
   pairings, with every query once as a revisit and once as a new place (its own place removed
   from the map); the global similarity gets a calibration of its own (``--no-rerank``).

The validation pairings choose the descriptor step and the scoring; nothing is fitted on the
evaluation sets of the README (corridor, rtabmap_samples). The result is written to ``output``
only when its mean validation Recall@1 (fused) beats the weights already there. The record
next to it names the command, the data split, the seed and the numbers.
"""

from dataclasses import dataclass, replace
import logging
import os
from pathlib import Path
import sys
import time
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from vpr_ros.config import validate
from vpr_ros.evaluation.metrics import recall_at_n
from vpr_ros.evaluation.result import json_ready
from vpr_ros.models.calibration import fit_calibration
from vpr_ros.models.checkpoint import load_checkpoint, load_pretrained, save_checkpoint
from vpr_ros.models.fingerprint import model_fingerprint
from vpr_ros.models.preprocessing import preprocess
from vpr_ros_training.command_line import parse_recipe_args
from vpr_ros_training.config import config_as_dict, load_config, option
from vpr_ros_training.default_weights import (evaluate_route, format_metrics, FusionConfig,
                                              PairTrainingConfig, train_pair_classifier,
                                              TRAINED_PREFIXES, UNTRAINED_PREFIXES)
from vpr_ros_training.real_vpr import Pairing, parse_pairing, read_rgb, Traversal
from vpr_ros_training.route_features import RouteFeatures, RoutesConfig
from vpr_ros_training.run_folder import git_state, REPO_ROOT, run_in_new_folder, write_json_atomic
from vpr_ros_training.score_calibration import (assess_scoring, choose_beta, fit_route_calibration,
                                                score_shortlists)

LOGGER = logging.getLogger('vpr_ros_training.real_weights')
STAGE = 'real_weights'
CHECKPOINT = 'model.safetensors'
BASE_WEIGHTS = 'efficientnet_lite0_imagenet'
TRAIN_PAIRINGS = (
    'gardens_point:day_right->day_left[0-139]', 'gardens_point:night_right->day_left[0-139]',
    'gardens_point:night_right->day_right[0-139]', 'nordland:winter->summer[0-3575:8]')
VAL_PAIRINGS = (
    'gardens_point:day_right->day_left[140-199]', 'gardens_point:night_right->day_left[140-199]',
    'gardens_point:night_right->day_right[140-199]', 'sped:query->reference')


@dataclass(frozen=True)
class DescriptorTuningConfig:
    """Multi-similarity fine-tuning of the late encoder stages (the global descriptor)."""

    tune_from_stage: int = option(6, 'first trained block stage (0-6); earlier stages stay at '
                                  'ImageNet; must be above the token stage (4)', (5, 7))
    steps: int = option(300, 'optimiser steps (0 = keep the ImageNet descriptor)', (0, 10 ** 6))
    places_per_batch: int = option(48, 'places per batch, each with all its images', (2, 4096))
    lr: float = option(3e-5, 'AdamW learning rate (cosine decay)', (0.0, 1.0))
    weight_decay: float = option(1e-4, 'AdamW weight decay', (0.0, 10.0))
    ms_alpha: float = option(1.0, 'multi-similarity loss: positive scale', (0.0, 1000.0))
    ms_beta: float = option(50.0, 'multi-similarity loss: negative scale', (0.0, 1000.0))
    ms_base: float = option(0.0, 'multi-similarity loss: similarity offset', (-1.0, 1.0))
    miner_margin: float = option(0.1, 'multi-similarity miner margin', (0.0, 2.0))
    exclusion: int = option(2, 'Gardens Point places closer than this in index never share a '
                            'batch (they show the same place)', (0, 100))
    eval_every: int = option(50, 'validate every N steps; the best step is kept', (1, 10 ** 6))

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)


@dataclass(frozen=True)
class RealWeightsConfig:
    """Complete recipe of the real-image ``pairvpr_lite`` weights."""

    data_root: str = option('', 'the real_vpr folder ("" = $VPR_SHARED_DATA/real_vpr or '
                            '../shared/data/real_vpr beside the repository)')
    train_pairings: tuple = option(TRAIN_PAIRINGS, 'query->map pairings trained on '
                                   '(dataset:query->map[first-last:step])')
    val_pairings: tuple = option(VAL_PAIRINGS, 'pairings that choose the descriptor step, the '
                                 'fusion beta and the calibrations (never trained on)')
    descriptor: DescriptorTuningConfig = option(DescriptorTuningConfig(), 'global descriptor')
    train: PairTrainingConfig = option(PairTrainingConfig(steps=1500, eval_every=0),
                                       'pair-classifier optimiser and schedule')
    routes: RoutesConfig = option(RoutesConfig(positive_m=2.0, negative_m=5.0, shortlist=20),
                                  'pair labels in frame units (Gardens Point frames 1 apart, '
                                  'other places 100): positives, hard negatives, shortlist')
    fusion: FusionConfig = option(FusionConfig(novel_exclusion_m=5.0, report_probability=0.99),
                                  'fusion beta and calibration (novel setting: places within '
                                  '5 frame units removed)')
    radius_m: float = option(2.0, 'a map place within this distance (frame units) is correct '
                             '(Gardens Point: +-2 frames)', (0.0, 1000.0))
    encode_batch: int = option(16, 'images per encoder batch', (1, 4096))
    output: str = option('vpr_ros/weights/pairvpr_lite.safetensors', 'where the weights go when '
                         'they beat the weights there on validation ("" = run folder only)')
    output_root: str = option('runs/real_weights', 'folder of the run folders')
    seed: int = option(0, 'seed of the initialisation and of the sampling')
    threads: int = option(0, 'torch CPU threads (0 = torch default)', (0, 1024))

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)


# ---- encoding -----------------------------------------------------------------------------

@dataclass
class EncodedTraversal:
    """One traversal run through the frozen part: pair tokens and the trunk output."""

    traversal: Traversal
    tokens: torch.Tensor
    trunk: torch.Tensor


def data_root(config: RealWeightsConfig) -> Path:
    """Return the real_vpr folder of ``config``."""
    if config.data_root:
        return Path(config.data_root)
    shared = os.environ.get('VPR_SHARED_DATA', str(REPO_ROOT.parent / 'shared' / 'data'))
    return Path(shared) / 'real_vpr'


def frozen_part(model: torch.nn.Module, images: torch.Tensor, stage: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(pair tokens [B, N, C], input of block stage ``stage`` [B, C', h, w])``."""
    encoder, token_stage = model.encoder, model.options['match_stage']
    x = encoder.bn1(encoder.conv_stem(images))
    tokens = None
    for index, block in enumerate(encoder.blocks[:stage]):
        x = block(x)
        if index == token_stage:
            tokens = model.tokens(x)
    return tokens, x


def tuned_part(model: torch.nn.Module, trunk: torch.Tensor, stage: int) -> torch.Tensor:
    """Return L2-normalised global descriptors from the trunk output (trained stages)."""
    encoder, x = model.encoder, trunk
    for block in encoder.blocks[stage:]:
        x = block(x)
    return model.pool_descriptor(encoder.bn2(encoder.conv_head(x)))


@torch.no_grad()
def encode(model: torch.nn.Module, traversal: Traversal, stage: int,
           batch: int) -> EncodedTraversal:
    """Run every image of ``traversal`` through the frozen part once (float16 results)."""
    tokens, trunks = [], []
    for start in range(0, len(traversal), batch):
        images = [read_rgb(path) for path in traversal.paths[start:start + batch]]
        token, trunk = frozen_part(model, preprocess(images, model.spec), stage)
        tokens.append(token.half())
        trunks.append(trunk.half())
    return EncodedTraversal(traversal, torch.cat(tokens), torch.cat(trunks))


def encode_all(model: torch.nn.Module, pairings: Sequence[Pairing],
               config: RealWeightsConfig) -> dict:
    """Return ``{(dataset, condition, places digest): EncodedTraversal}`` for every side."""
    stage, cache = config.descriptor.tune_from_stage, {}
    sides = [side for p in pairings for side in (p.reference, p.query)]
    for side in tqdm(sides, desc='encoding traversals', unit='traversal'):
        key = traversal_key(side)
        if key not in cache:
            cache[key] = encode(model, side, stage, config.encode_batch)
    return cache


def traversal_key(traversal: Traversal) -> tuple:
    """Return the key of a traversal in the encoding cache."""
    return traversal.dataset, traversal.condition, traversal.places.tobytes()


@torch.no_grad()
def descriptors(model: torch.nn.Module, encoded: EncodedTraversal, stage: int,
                batch: int = 256) -> torch.Tensor:
    """Return the global descriptors of an encoded traversal with the current tuned part."""
    model.eval()
    return torch.cat([tuned_part(model, encoded.trunk[s:s + batch].float(), stage)
                      for s in range(0, len(encoded.trunk), batch)])


def route_features(model: torch.nn.Module, pairing: Pairing, cache: dict, index: int,
                   stage: int) -> RouteFeatures:
    """Return the pairing as the :class:`RouteFeatures` the pair trainer and scorer read."""
    map_side = cache[traversal_key(pairing.reference)]
    query_side = cache[traversal_key(pairing.query)]
    similarity = (descriptors(model, query_side, stage)
                  @ descriptors(model, map_side, stage).T).numpy().astype(np.float64)
    return RouteFeatures(index, map_side.tokens, query_side.tokens, similarity,
                         pairing.distance())


def global_recall(model: torch.nn.Module, pairing: Pairing, cache: dict, stage: int,
                  radius: float) -> float:
    """Return the global Recall@1 (percent) of one pairing."""
    route = route_features(model, pairing, cache, 0, stage)
    ranking = np.argsort(-route.similarity, axis=1, kind='stable')[:, :1]
    positives = [np.flatnonzero(row <= radius) for row in route.distance]
    return recall_at_n(ranking, positives, (1,))[1]


# ---- descriptor tuning --------------------------------------------------------------------

@dataclass(frozen=True)
class PlaceTable:
    """Training images grouped by place: rows of the stacked trunk tensor per place."""

    trunk: torch.Tensor
    groups: tuple
    datasets: tuple
    indices: tuple


def place_table(pairings: Sequence[Pairing], cache: dict) -> PlaceTable:
    """Stack the trunk outputs of every training image and group them by place."""
    rows, groups = [], {}
    training = {traversal_key(side) for p in pairings for side in (p.reference, p.query)}
    for key, encoded in cache.items():
        if key not in training:
            continue
        start = sum(len(r) for r in rows)
        rows.append(encoded.trunk)
        for offset, place in enumerate(encoded.traversal.places):
            groups.setdefault((key[0], int(place)), []).append(start + offset)
    keys = sorted(groups)
    return PlaceTable(torch.cat(rows), tuple(tuple(groups[k]) for k in keys),
                      tuple(k[0] for k in keys), tuple(k[1] for k in keys))


def sample_places(table: PlaceTable, count: int, exclusion: int,
                  rng: np.random.Generator) -> list[int]:
    """Return ``count`` place numbers, as many from each set as from the others.

    The sets differ a lot in size: the larger must not take over the batches. No two Gardens
    Point places within ``exclusion`` share a batch (they show the same place).
    """
    datasets = sorted(set(table.datasets))
    chosen: list[int] = []
    for number, dataset in enumerate(datasets):
        quota = (count - len(chosen)) // (len(datasets) - number)
        members = [i for i, name in enumerate(table.datasets) if name == dataset]
        chosen += _sample_set(table, rng.permutation(members), quota, exclusion)
    return chosen


def _sample_set(table: PlaceTable, order: np.ndarray, count: int, exclusion: int) -> list[int]:
    """Return up to ``count`` places of ``order``, skipping Gardens Point neighbours."""
    chosen, taken = [], set()
    for place in order:
        dataset, index = table.datasets[place], table.indices[place]
        near = range(index - exclusion, index + exclusion + 1)
        if dataset == 'gardens_point' and any((dataset, i) in taken for i in near):
            continue
        taken.add((dataset, index))
        chosen.append(int(place))
        if len(chosen) == count:
            break
    return chosen


def tune_descriptor(model: torch.nn.Module, table: PlaceTable, val: Sequence[Pairing],
                    cache: dict, config: RealWeightsConfig, log) -> dict:
    """Train the late stages with the multi-similarity loss; keep the best validation step."""
    from pytorch_metric_learning import losses, miners
    options, stage = config.descriptor, config.descriptor.tune_from_stage
    params = tuned_parameters(model, stage)
    optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=options.weight_decay)
    loss_fn = losses.MultiSimilarityLoss(options.ms_alpha, options.ms_beta, options.ms_base)
    miner = miners.MultiSimilarityMiner(options.miner_margin)
    rng = np.random.default_rng(config.seed)
    best = validate_descriptor(model, val, cache, config)
    best_state, history = tuned_state(model, stage), {0: best}
    LOGGER.info('descriptor before tuning: validation R@1 %s', best)
    for step in tqdm(range(1, options.steps + 1), desc='descriptor', unit='step'):
        places = sample_places(table, options.places_per_batch, options.exclusion, rng)
        rows = [row for place in places for row in table.groups[place]]
        labels = torch.tensor([i for i, place in enumerate(places)
                               for _ in table.groups[place]])
        model.eval()            # batch norms keep their statistics; gradients still flow
        output = tuned_part(model, table.trunk[rows].float(), stage)
        loss = loss_fn(output, labels, miner(output, labels))
        for group in optimizer.param_groups:
            group['lr'] = options.lr * 0.5 * (1 + np.cos(np.pi * step / options.steps))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        log(step, {'loss/descriptor': float(loss)})
        if step % options.eval_every == 0 or step == options.steps:
            recalls = validate_descriptor(model, val, cache, config)
            history[step] = recalls
            LOGGER.info('descriptor step %d: loss %.4f, validation R@1 %s', step, float(loss),
                        recalls)
            if recalls['mean'] > best['mean']:
                best, best_state = recalls, tuned_state(model, stage)
    model.load_state_dict(best_state, strict=False)
    return {'history': history, 'best': best}


def tuned_parameters(model: torch.nn.Module, stage: int) -> list:
    """Set ``requires_grad`` on the tuned stages and head only; return those parameters."""
    prefixes = tuple(f'encoder.blocks.{s}.' for s in range(stage, 7)) + (
        'encoder.conv_head.', 'encoder.bn2.')
    params = []
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(prefixes))
        if param.requires_grad:
            params.append(param)
    return params


def tuned_state(model: torch.nn.Module, stage: int) -> dict:
    """Return a copy of the tuned tensors."""
    prefixes = tuple(f'encoder.blocks.{s}.' for s in range(stage, 7)) + (
        'encoder.conv_head.', 'encoder.bn2.')
    return {k: v.detach().clone() for k, v in model.state_dict().items()
            if k.startswith(prefixes)}


def validate_descriptor(model: torch.nn.Module, val: Sequence[Pairing], cache: dict,
                        config: RealWeightsConfig) -> dict:
    """Return the global Recall@1 of every validation pairing and their mean."""
    stage = config.descriptor.tune_from_stage
    recalls = {p.name: global_recall(model, p, cache, stage, config.radius_m) for p in val}
    recalls['mean'] = float(np.mean(list(recalls.values())))
    return {k: round(v, 2) for k, v in recalls.items()}


# ---- scoring ------------------------------------------------------------------------------

def fit_scorings(model: torch.nn.Module, val_routes: Sequence[RouteFeatures],
                 val: Sequence[Pairing], config: RealWeightsConfig) -> tuple:
    """Choose beta, fit the fused and the global-only calibrations; return them and a record."""
    top_k, radius = config.routes.shortlist, config.radius_m
    revisit = [score_shortlists(model, r, top_k, radius) for r in val_routes]
    novel = [score_shortlists(model, r, top_k, radius, config.fusion.novel_exclusion_m)
             for r in val_routes]
    beta, table = choose_beta(revisit, config.fusion.betas)
    fitted_on = ('real validation pairings ' + ', '.join(p.name for p in val)
                 + f': top-{top_k} shortlists, every query as a revisit and as a new place')
    scoring = fit_route_calibration(revisit, novel, beta, fitted_on)
    scores = np.concatenate([r.best('global', 0.0)[0] for r in revisit + novel])
    labels = np.concatenate([r.best('global', 0.0)[1] for r in revisit + novel])
    global_calibration = fit_calibration(scores, labels.astype(np.float64))
    scoring = replace(scoring, global_calibration=global_calibration)
    report = assess_scoring(revisit, novel, scoring, config.fusion.report_probability)
    LOGGER.info('beta %g, calibration %s, global calibration %s', beta, scoring.calibration,
                global_calibration)
    return scoring, {'beta': beta, 'beta_table': {f'{b:g}': r for b, r in table.items()},
                     'calibration': scoring.calibration.__dict__,
                     'global_calibration': global_calibration.__dict__,
                     'validation': report}


def validation_metrics(model: torch.nn.Module, val_routes: Sequence[RouteFeatures],
                       val: Sequence[Pairing], config: RealWeightsConfig,
                       beta: Optional[float]) -> dict:
    """Return per-pairing recalls (global, pair, fused) and the mean fused Recall@1."""
    metrics = {}
    for pairing, route in zip(val, val_routes):
        metrics[pairing.name] = evaluate_route(model, route, config.routes.shortlist,
                                               config.radius_m, beta)
        LOGGER.info('%s: %s', pairing.name, format_metrics(metrics[pairing.name]))
    key = 'fused_r@1' if beta is not None else 'reranked_r@1'
    metrics['mean_r@1'] = float(np.mean([m[key] for m in metrics.values()]))
    return metrics


# ---- run ----------------------------------------------------------------------------------

def incumbent_score(config: RealWeightsConfig, val: Sequence[Pairing],
                    cache_model_stage: int) -> Optional[float]:
    """Return the mean validation fused Recall@1 of the weights at ``output`` (None if none)."""
    path = REPO_ROOT / config.output if config.output else None
    if path is None or not path.is_file():
        return None
    model = load_checkpoint(path).eval()
    cache = encode_all(model, val, config)
    routes = [route_features(model, p, cache, i, cache_model_stage) for i, p in enumerate(val)]
    beta = model.rerank_scoring.beta if model.rerank_scoring else None
    return validation_metrics(model, routes, val, config, beta)['mean_r@1']


def train_and_export(config: RealWeightsConfig, run_dir: Path, log,
                     argv: Sequence[str] = ()) -> dict:
    """Run the three steps, export the checkpoint and publish it if it beats the incumbent."""
    root, times = data_root(config), {}
    train = [parse_pairing(root, text) for text in config.train_pairings]
    val = [parse_pairing(root, text) for text in config.val_pairings]
    stage = config.descriptor.tune_from_stage
    model = load_pretrained('pairvpr_lite').eval()
    start = time.perf_counter()
    cache = encode_all(model, train + val, config)
    times['encode'] = time.perf_counter() - start
    start = time.perf_counter()
    descriptor = tune_descriptor(model, place_table(train, cache), val, cache, config, log)
    times['descriptor'] = time.perf_counter() - start
    train_routes = [route_features(model, p, cache, i, stage) for i, p in enumerate(train)]
    val_routes = [route_features(model, p, cache, 1000 + i, stage) for i, p in enumerate(val)]
    before = validation_metrics(model, val_routes, val, config, None)
    start = time.perf_counter()
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(TRAINED_PREFIXES)
                             and not name.startswith(UNTRAINED_PREFIXES))
    train_pair_classifier(model, train_routes, val_routes, config, log)
    times['pair'] = time.perf_counter() - start
    model.rerank_scoring, fusion = fit_scorings(model, val_routes, val, config)
    path = save_checkpoint(model, run_dir / CHECKPOINT, base_weights=BASE_WEIGHTS)
    loaded = load_checkpoint(path)
    after = validation_metrics(loaded, val_routes, val, config, loaded.rerank_scoring.beta)
    incumbent = incumbent_score(config, val, stage)
    record = json_ready({
        'command': 'python -m vpr_ros_training.real_weights ' + ' '.join(argv),
        'config': config_as_dict(config), 'data_root': str(root), 'git': git_state(),
        'torch': torch.__version__, 'threads': torch.get_num_threads(), 'seconds': times,
        'split': {'train': [p.name for p in train], 'validation': [p.name for p in val]},
        'descriptor': descriptor, 'validation_before_pair_training': before,
        'validation': after, 'fusion': fusion, 'incumbent_mean_r@1': incumbent,
        'fingerprint': model_fingerprint(loaded),
        'exported': incumbent is None or after['mean_r@1'] > incumbent})
    write_json_atomic(run_dir / 'record.json', record)
    record['published'] = str(publish(config, path, record) or '')
    return record


def publish(config: RealWeightsConfig, checkpoint: Path, record: dict) -> Optional[Path]:
    """Copy the checkpoint and its record to ``config.output`` when it beats the incumbent."""
    if not config.output:
        return None
    if not record['exported']:
        LOGGER.warning('validation mean R@1 %.2f does not beat the weights at %s (%.2f); not '
                       'written', record['validation']['mean_r@1'], config.output,
                       record['incumbent_mean_r@1'])
        return None
    output = save_checkpoint(load_checkpoint(checkpoint), REPO_ROOT / config.output,
                             base_weights=BASE_WEIGHTS)
    write_json_atomic(output.with_suffix('.json'), record)
    LOGGER.info('wrote %s and %s', output, output.with_suffix('.json'))
    return output


def run_real_weights(config: RealWeightsConfig, argv: Sequence[str] = ()) -> dict:
    """Run the recipe in a new run folder; return the record (``run_dir`` added)."""
    return run_in_new_folder(config, STAGE, lambda run_dir, log: train_and_export(
        config, run_dir, log, argv))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; prints the validation numbers and where the weights went."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_recipe_args(__doc__.split('\n')[0], argv, None,
                             'YAML recipe (default: the defaults of RealWeightsConfig)')
    record = run_real_weights(load_config(RealWeightsConfig, args.config, args.overrides), argv)
    for name, metrics in record['validation'].items():
        if isinstance(metrics, dict):
            print(f'{name}: {format_metrics(metrics)}')
    print(f'mean validation R@1 (fused) {record["validation"]["mean_r@1"]:.2f}; incumbent '
          f'{record["incumbent_mean_r@1"]}')
    print(f'run folder: {record["run_dir"]}; weights: {record["published"] or "not written"}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
