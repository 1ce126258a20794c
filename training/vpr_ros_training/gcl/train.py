"""GCL training: ``python -m vpr_ros_training.gcl.train --config configs/gcl_<row>.yaml``.

One *step* of the official recipe is one trainer epoch here: ``data.cache_size`` queries are drawn
and each gets one partner by the 50/25/25 rule (:mod:`.sampling`); the pairs are processed in
batches of ``run.batch_size_per_gpu`` pairs per rank (32 in total in the published recipe, which
accumulates micro-batches of 2 pairs; the averaged gradient is the same, only batch-norm statistics
see larger batches here). Plain SGD (lr 0.1, no momentum or weight decay), learning rate times 0.1
every 25 steps, images resized to 480 x 640 and normalised, no augmentation, no mining. After
every step the model is evaluated on the held-out set and the best one by R@5 (the official
selection metric) is kept. At the end the optional PCA-whitening is learned on the evaluation
database descriptors (the official ``apply_pca.py`` protocol) and the network is exported.
"""

from dataclasses import dataclass
import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from vpr_ros.config import validate
from vpr_ros.models.preprocessing import preprocess
from vpr_ros_training.command_line import run_stage_command, tqdm_progress
from vpr_ros_training.config import config_as_dict, option, RunConfig
from vpr_ros_training.datasets import make_loader
from vpr_ros_training.distributed import all_reduce_sum, DistContext
from vpr_ros_training.gcl.fov import FovConfig
from vpr_ros_training.gcl.loss import contrastive_loss, gcl_loss, pair_distance
from vpr_ros_training.gcl.msls import msls_eval_set, msls_pair_source, TRAIN_CITIES, VAL_CITIES
from vpr_ros_training.gcl.networks import (BACKBONES, calibrate_batch_norm, GemNet,
                                           load_official_gcl, POOLS)
from vpr_ros_training.gcl.pairs import PairSource, route_pair_source, traversal_pair_source
from vpr_ros_training.gcl.runner import BestKeeper, EpochKeySampler, Selection, StepDecay
from vpr_ros_training.gcl.sampling import draw_pairs
from vpr_ros_training.places import PlaceTable
from vpr_ros_training.route_places import read_route_eval
from vpr_ros_training.sare.train import image_batches, initialise_clusters
from vpr_ros_training.session import open_session
from vpr_ros_training.trainer import no_progress, Progress, Trainer
from vpr_ros_training.traversal import EvalSet, read_traversal_eval

LOGGER = logging.getLogger(__name__)

STAGE = 'gcl'
INIT_IMAGES = 500
NETVLAD_INIT_PER_IMAGE = 100
DATA_KINDS = ('msls', 'route', 'traversal')
EVAL_KINDS = ('msls', 'route', 'traversal', 'none')


@dataclass(frozen=True)
class GclModelConfig:
    """The network: backbone, pooling, freezing and optional PCA-whitening."""

    backbone: str = option('vgg16', 'backbone (see gcl/networks.py)', choices=BACKBONES)
    weights: str = option('', 'local backbone weights (torchvision .pth; "imagenet" for '
                          'efficientnet_lite0); empty = random init')
    init_checkpoint: str = option('', 'official GCL .pth (model_state_dict) to start from')
    pool: str = option('gem', 'global pooling', choices=POOLS)
    gem_p: float = option(3.0, 'initial GeM exponent (learnable)', (1.0, 100.0))
    last_layer: int = option(0, 'official --last_layer: train only the last L blocks (0 = all)',
                             (0, 1000))
    input_size: tuple = option((480, 640), 'image (height, width) after resizing')
    whitening_dim: int = option(0, 'PCA-whitening output dims learned after training (0 = off)',
                                (0, 1 << 20))
    netvlad_clusters: int = option(64, 'clusters when pool is netvlad', (1, 4096))

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)

    def build(self) -> GemNet:
        """Return the network."""
        model = GemNet(self.backbone, self.weights, self.pool, self.gem_p, self.last_layer,
                       tuple(self.input_size), self.whitening_dim, self.netvlad_clusters)
        if self.init_checkpoint:
            load_official_gcl(model, self.init_checkpoint)
        return model


@dataclass(frozen=True)
class GclDataConfig:
    """Training pairs: MSLS cities or the procedural route, and the labeller settings."""

    kind: str = option('msls', 'msls or route', choices=DATA_KINDS)
    root: str = option('', 'MSLS root (holding train_val/)')
    cities: tuple = option(TRAIN_CITIES, 'MSLS training cities')
    labels: str = option('fov', 'fov (graded, GCL) or sim (binary, CL baseline)',
                         choices=('fov', 'sim'))
    label_cache: str = option('', 'folder for computed <city>_fov.npz (default: train_val/)')
    fov: FovConfig = option(FovConfig(), 'field-of-view sector labeller (when no _gt.h5)')
    route_seeds: tuple = option((11,), 'route seeds used as training "cities"')
    route_frames: int = option(120, 'frames per route traversal', (2, 100000))
    route_image_size: tuple = option((48, 64), 'rendered route image (height, width)')
    traversal_root: str = option('', 'two-traversal folder (query/, ref/) for kind traversal')
    first_frame: int = option(0, 'first frame used (kind traversal)', (0, 10 ** 9))
    stop_frame: int = option(0, 'end of the frame range (exclusive, 0 = all)', (0, 10 ** 9))
    frame_spacing_m: float = option(1.0, 'distance between consecutive frames (kind traversal)',
                                    (1e-3, 1e4))
    cache_size: int = option(10000, 'queries drawn per step (official cache_size)', (1, 10 ** 8))
    num_workers: int = option(4, 'DataLoader workers per rank', (0, 256))

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)

    def load(self) -> PairSource:
        """Return the training pair source."""
        if self.kind == 'route':
            return route_pair_source(tuple(self.route_seeds), self.route_frames,
                                     tuple(self.route_image_size), self.fov,
                                     self.labels == 'fov')
        if self.kind == 'traversal':
            return traversal_pair_source(self.traversal_root, self.first_frame, self.stop_frame,
                                         self.frame_spacing_m, self.fov, self.labels == 'fov')
        return msls_pair_source(self.root, tuple(self.cities), self.labels, self.fov,
                                self.label_cache)


@dataclass(frozen=True)
class GclOptim:
    """Optimiser, schedule and loss of the official recipe."""

    steps: int = option(52, 'pair caches (official steps; 52 = one MSLS epoch)', (0, 100000))
    optimizer: str = option('sgd', 'sgd (official) or adam', choices=('sgd', 'adam'))
    lr: float = option(0.1, 'learning rate (official SGD: 0.1)', (0.0, 100.0))
    momentum: float = option(0.0, 'SGD momentum (official: none)', (0.0, 1.0))
    weight_decay: float = option(0.0, 'SGD weight decay (official: none)', (0.0, 1.0))
    lr_step_size: int = option(25, 'StepLR period in steps', (1, 100000))
    lr_gamma: float = option(0.1, 'StepLR factor', (0.0, 1.0))
    margin: float = option(0.5, 'contrastive margin tau', (0.0, 2.0))
    loss: str = option('gcl', 'gcl (graded) or contrastive (binary labels)',
                       choices=('gcl', 'contrastive'))

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)


@dataclass(frozen=True)
class GclEvalConfig:
    """Held-out evaluation after every step (model selection by R@5)."""

    kind: str = option('msls', 'msls (val cities), route, or none', choices=EVAL_KINDS)
    root: str = option('', 'MSLS root for kind msls')
    cities: tuple = option(VAL_CITIES, 'MSLS validation cities')
    route_seed: int = option(12, 'route seed for kind route (differs from training seeds)')
    route_frames: int = option(120, 'frames per route traversal', (2, 100000))
    route_image_size: tuple = option((48, 64), 'rendered route image (height, width)')
    radius_m: float = option(25.0, 'positive radius in metres', (0.0, 1e5))
    traversal_root: str = option('', 'two-traversal folder for kind traversal (its '
                                 'ground_truth.json gives the positives)')
    first_frame: int = option(0, 'first frame (kind traversal)', (0, 10 ** 9))
    stop_frame: int = option(0, 'end of the frame range (0 = all)', (0, 10 ** 9))
    batch_size: int = option(32, 'images per descriptor batch', (1, 4096))
    keep_best: bool = option(True, 'export the weights of the best step by R@5 (official); '
                             'False exports the last step')

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)

    def load(self) -> Optional[EvalSet]:
        """Return the evaluation set, or None for kind none."""
        if self.kind == 'route':
            return read_route_eval(self.route_seed, self.route_frames,
                                   tuple(self.route_image_size), self.radius_m)
        if self.kind == 'msls':
            return msls_eval_set(self.root, tuple(self.cities), self.radius_m)
        if self.kind == 'traversal':
            return read_traversal_eval(self.traversal_root, self.first_frame, self.stop_frame)
        return None


@dataclass(frozen=True)
class GclConfig:
    """Complete GCL recipe."""

    model: GclModelConfig = option(GclModelConfig(), 'network')
    data: GclDataConfig = option(GclDataConfig(), 'training pairs')
    optim: GclOptim = option(GclOptim(), 'optimiser and loss')
    run: RunConfig = option(RunConfig(batch_size_per_gpu=32, precision='fp32', clip_grad=0.0),
                            'batching, precision, checkpoints')
    evaluation: GclEvalConfig = option(GclEvalConfig(), 'held-out evaluation')


class PairImages(Dataset):
    """Pair samples ``(city, query, partner, label)`` -> two preprocessed images and the label."""

    def __init__(self, source: PairSource, spec) -> None:
        """Read images of ``source`` and preprocess them for ``spec``."""
        self.source, self.spec = source, spec

    def __len__(self) -> int:
        """Return the number of cities (samples are addressed by key)."""
        return len(self.source)

    def __getitem__(self, key: tuple) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(query image, partner image, label)``."""
        city, query, partner, label = key
        images = [PlaceTable.load(self.source.queries[city][query]),
                  PlaceTable.load(self.source.database[city][partner])]
        tensors = preprocess(images, self.spec)
        return tensors[0], tensors[1], torch.tensor(label, dtype=torch.float32)


class GclObjective(nn.Module):
    """Per-rank mean GCL (or contrastive) loss of a batch of pairs."""

    def __init__(self, model: nn.Module, margin: float, loss: str) -> None:
        """Wrap ``model``."""
        super().__init__()
        self.model, self.margin, self.loss = model, margin, loss

    def forward(self, first: torch.Tensor, second: torch.Tensor,
                labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Return ``(loss, scalars)``."""
        f0 = self.model.describe(first)[0].float()
        f1 = self.model.describe(second)[0].float()
        if self.loss == 'gcl':
            per_pair = gcl_loss(f0, f1, labels, self.margin, reduction='none')
        else:
            per_pair = contrastive_loss(f0, f1, labels >= 1.0, self.margin, reduction='none')
        count = all_reduce_sum(torch.tensor(float(len(labels)), device=labels.device))
        distance = pair_distance(f0, f1).detach()
        positive = labels >= 0.5
        return per_pair.mean(), {
            'loss': all_reduce_sum(per_pair.sum()) / count,
            'null_loss_fraction': all_reduce_sum((per_pair == 0).float().sum()) / count,
            'distance/positive': masked_mean(distance, positive),
            'distance/negative': masked_mean(distance, ~positive)}


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Return the mean of ``values[mask]`` over all ranks (NaN when empty)."""
    total = all_reduce_sum(values[mask].sum())
    count = all_reduce_sum(mask.float().sum())
    return total / count if count > 0 else torch.tensor(float('nan'))


def make_optimizer(model: nn.Module, optim: GclOptim) -> torch.optim.Optimizer:
    """Return SGD (official: no momentum, no weight decay) or Adam over trainable weights."""
    params = [p for p in model.parameters() if p.requires_grad]
    if optim.optimizer == 'adam':
        return torch.optim.Adam(params, lr=optim.lr, weight_decay=optim.weight_decay)
    return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum,
                           weight_decay=optim.weight_decay)


def make_sampler(source: PairSource, config: GclConfig, context: DistContext) -> EpochKeySampler:
    """Return the per-step pair sampler (same pairs on every rank)."""
    def draw(epoch: int) -> list:
        rng = np.random.default_rng([config.run.seed, epoch])
        pairs = draw_pairs(source.matrices, rng, config.data.cache_size, source.graded,
                           source.query_pano, source.db_pano)
        order = rng.permutation(len(pairs))
        return [(pairs[i].city, pairs[i].query, pairs[i].partner, pairs[i].label) for i in order]
    return EpochKeySampler(draw, config.run.batch_size_per_gpu, context.world_size, context.rank)


def initialise_network(model: GemNet, config: GclConfig, database: Sequence,
                       device: torch.device) -> None:
    """Estimate fresh batch-norm statistics and (NetVLAD) the cluster centres on the database."""
    if config.model.pool == 'netvlad':
        initialise_clusters(model, database, INIT_IMAGES, NETVLAD_INIT_PER_IMAGE,
                            config.run.seed, device)
    else:
        calibrate_batch_norm(model, image_batches(model, database, INIT_IMAGES,
                                                  config.run.seed, device))


def train_gcl(config: GclConfig, context: DistContext, run_dir: Path,
              resume_state: Optional[Path] = None, progress: Progress = no_progress) -> dict:
    """Train in ``run_dir`` and export; return ``export.json``'s content."""
    model = config.model.build().to(context.device)
    source, eval_set = config.data.load(), config.evaluation.load()
    if not config.model.init_checkpoint and context.is_main and resume_state is None:
        initialise_network(model, config, [item for items in source.database for item in items],
                           context.device)
    LOGGER.info('%s: %d cities, %d queries', source.name, len(source),
                sum(m.shape[0] for m in source.matrices))
    sampler = make_sampler(source, config, context)
    loader = make_loader(PairImages(source, model.spec), sampler, config.data.num_workers,
                         context.device.type == 'cuda')
    optimizer = make_optimizer(model, config.optim)
    schedule = StepDecay(config.optim.lr, config.optim.lr_step_size, config.optim.lr_gamma)
    trainer = Trainer(model, GclObjective(model, config.optim.margin, config.optim.loss),
                      optimizer, schedule, context, config.run, run_dir)
    if resume_state is not None:
        trainer.load_state(resume_state)
    schedule.epoch = trainer.position.epoch
    selection = Selection(eval_set, config.evaluation.batch_size, config.evaluation.keep_best,
                          whitening_items=eval_set.database if eval_set else None, kind=STAGE,
                          config=config_as_dict(config))
    keeper = BestKeeper(model, trainer, schedule, context, selection)
    if resume_state is None:
        keeper.evaluate_initial()
    trainer.fit(loader, sampler, config.optim.steps, keeper.on_epoch_end, progress)
    trainer.close()
    return keeper.finish(run_dir)


def run_gcl(config: GclConfig, resume: str = '', progress: Optional[Progress] = None) -> Path:
    """Run GCL training in a new (or resumed) run folder; return the folder."""
    with open_session(config, STAGE, resume) as session:
        wrap = progress or tqdm_progress(session.context)
        train_gcl(config, session.context, session.run_dir, session.resume_state, wrap)
        return session.run_dir


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point: ``python -m vpr_ros_training.gcl.train --config FILE``."""
    run_dir = run_stage_command('GCL: generalized contrastive loss with graded similarity',
                                GclConfig, run_gcl, argv)
    print(f'GCL training finished: {run_dir}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
