"""SARE training: ``python -m vpr_ros_training.sare.train --config configs/sare_<recipe>.yaml``.

The published recipe (deepIBL ``trainGaussKernalInd.m`` / ``...Joint.m`` + relja/netvlad):
VGG16 cropped at conv5_3 (ImageNet weights), trained down to conv5_1; NetVLAD with 64 clusters
initialised by k-means on conv5_3 features of training database images (50,000 descriptors,
100 per image); Pittsburgh-30k train tuples mined as in :mod:`.mining`; batches of 4 tuples;
SGD (lr 0.001, momentum 0.9, weight decay 0.001), learning rate halved every 5 epochs; the best
epoch by validation recall is kept (usually epoch <= 5 of 30); finally PCA-whitening to 4,096
dimensions is learned on training database descriptors. One trainer *epoch* here is one cache of
``mining.cache_size`` queries; ``optim.epochs`` counts passes over all training queries.
"""

from dataclasses import dataclass
import logging
import math
from pathlib import Path
from typing import Iterator, Optional, Sequence

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
from vpr_ros_training.gcl.networks import BACKBONES, calibrate_batch_norm, GemNet
from vpr_ros_training.gcl.pairs import render_route_cameras, traversal_pair_source
from vpr_ros_training.gcl.retrieval import describe_items, Transform
from vpr_ros_training.gcl.runner import (BestKeeper, EpochKeySampler, load_weights, Selection,
                                         StepDecay)
from vpr_ros_training.places import PlaceTable
from vpr_ros_training.route_places import read_route_eval
from vpr_ros_training.sare.losses import (contrastive_tuple_loss, KERNELS, REDUCTIONS, sare_loss,
                                          triplet_loss, VARIANTS)
from vpr_ros_training.sare.mining import broadcast_keys, MiningConfig, TupleMiner
from vpr_ros_training.sare.netvlad import sample_local_features
from vpr_ros_training.sare.pittsburgh import read_pitts_split
from vpr_ros_training.session import open_session
from vpr_ros_training.trainer import no_progress, Progress, Trainer
from vpr_ros_training.traversal import EvalSet, read_traversal_eval

LOGGER = logging.getLogger(__name__)

STAGE = 'sare'
LOSSES = ('sare', 'triplet', 'contrastive')


@dataclass(frozen=True)
class TupleSource:
    """Query and database images with planar positions (metres)."""

    name: str
    queries: tuple
    database: tuple
    query_xy: np.ndarray
    db_xy: np.ndarray


@dataclass(frozen=True)
class SareModelConfig:
    """VGG16 conv5_3 + NetVLAD + PCA-whitening."""

    backbone: str = option('vgg16_conv5_3', 'backbone (see gcl/networks.py)', choices=BACKBONES)
    weights: str = option('', 'local backbone weights (torchvision vgg16 .pth); empty = random')
    init_weights: str = option('', 'our weights.safetensors to start from (skips cluster init)')
    last_layer: int = option(1, 'trainable conv blocks: 1 = conv5_1 .. conv5_3 (published)',
                             (0, 1000))
    input_size: tuple = option((480, 640), 'image (height, width); Pittsburgh is 480 x 640')
    netvlad_clusters: int = option(64, 'NetVLAD clusters K', (1, 4096))
    whitening_dim: int = option(4096, 'PCA-whitening output dims (0 = off)', (0, 1 << 20))
    whitening_images: int = option(10000, 'training database images the whitening is learned '
                                   'on', (1, 10 ** 8))
    cluster_images: int = option(500, 'database images sampled for the k-means init',
                                 (1, 10 ** 7))
    descriptors_per_image: int = option(100, 'local features per image for k-means',
                                        (1, 100000))

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)

    def build(self) -> GemNet:
        """Return the untrained network."""
        return GemNet(self.backbone, self.weights, 'netvlad', last_layer=self.last_layer,
                      input_size=tuple(self.input_size), whitening_dim=self.whitening_dim,
                      netvlad_clusters=self.netvlad_clusters)


@dataclass(frozen=True)
class SareDataConfig:
    """Training tuples: Pittsburgh dbStruct files or the procedural route."""

    kind: str = option('pitts', 'pitts, route or traversal', choices=('pitts', 'route',
                                                                      'traversal'))
    train_mat: str = option('', 'pitts30k_train.mat')
    db_root: str = option('', 'folder the dbImageFns are relative to')
    query_root: str = option('', 'folder the qImageFns are relative to (queries_real/)')
    route_seeds: tuple = option((31,), 'route seeds whose traversals are merged for training')
    route_frames: int = option(120, 'frames per route traversal', (2, 100000))
    route_image_size: tuple = option((48, 64), 'rendered route image (height, width)')
    traversal_root: str = option('', 'two-traversal folder (query/, ref/) for kind traversal')
    first_frame: int = option(0, 'first frame used (kind traversal)', (0, 10 ** 9))
    stop_frame: int = option(0, 'end of the frame range (exclusive, 0 = all)', (0, 10 ** 9))
    frame_spacing_m: float = option(1.0, 'distance between consecutive frames (kind traversal)',
                                    (1e-3, 1e4))
    mining: MiningConfig = option(MiningConfig(), 'tuple mining')
    num_workers: int = option(4, 'DataLoader workers per rank', (0, 256))

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)

    def load(self) -> TupleSource:
        """Return the training queries and database."""
        if self.kind == 'pitts':
            split = read_pitts_split(self.train_mat, self.db_root, self.query_root)
            return TupleSource(split.name, split.query_paths, split.db_paths, split.query_xy,
                               split.db_xy)
        if self.kind == 'traversal':
            return traversal_tuple_source(self.traversal_root, self.first_frame,
                                          self.stop_frame, self.frame_spacing_m)
        return route_tuple_source(tuple(self.route_seeds), self.route_frames,
                                  tuple(self.route_image_size))


def traversal_tuple_source(root: str, first: int, stop: int, spacing_m: float) -> TupleSource:
    """Return query frames against reference frames of ``[first, stop)``, ``spacing_m`` apart."""
    source = traversal_pair_source(root, first, stop, spacing_m, FovConfig())
    frames = np.arange(len(source.queries[0])) * spacing_m
    xy = np.stack([frames, np.zeros_like(frames)], 1)
    return TupleSource(source.name, source.queries[0], source.database[0], xy, xy.copy())


def route_tuple_source(seeds: tuple, frames: int, image_size: tuple) -> TupleSource:
    """Return dusk frames as queries and day frames as the database of the given routes."""
    parts: list = [[], [], [], []]
    for offset, seed in enumerate(seeds):
        (day, day_cams), (dusk, dusk_cams) = render_route_cameras(int(seed), frames, image_size)
        shift = np.array([10000.0 * offset, 0.0])
        for index, value in enumerate((dusk, day, dusk_cams.xy + shift, day_cams.xy + shift)):
            parts[index].append(value)
    return TupleSource(f'route:{seeds}', sum(map(tuple, parts[0]), ()),
                       sum(map(tuple, parts[1]), ()), np.concatenate(parts[2]),
                       np.concatenate(parts[3]))


@dataclass(frozen=True)
class SareOptim:
    """Optimiser, schedule and loss."""

    epochs: int = option(30, 'passes over the training queries', (0, 100000))
    lr: float = option(0.001, 'SGD learning rate (README script: 0.001)', (0.0, 10.0))
    momentum: float = option(0.9, 'SGD momentum', (0.0, 1.0))
    weight_decay: float = option(0.001, 'SGD weight decay', (0.0, 1.0))
    lr_step_epochs: int = option(5, 'halve the learning rate every N epochs', (1, 100000))
    lr_gamma: float = option(0.5, 'learning-rate factor', (0.0, 1.0))
    loss: str = option('sare', 'sare, or the triplet / contrastive baselines', choices=LOSSES)
    variant: str = option('ind', 'SARE variant: ind (Our-Ind.) or joint (Our-Joint)',
                          choices=VARIANTS)
    kernel: str = option('gaussian', 'SARE kernel', choices=KERNELS)
    temperature: float = option(0.5, '0.5 = the MATLAB kernels, 0.07 = OpenIBL',
                                (1e-4, 100.0))
    reduction: str = option('triplets', 'divide the summed loss by B*J (triplets), B or 1',
                            choices=REDUCTIONS)
    margin: float = option(0.1, 'triplet margin on squared distances (NetVLAD: 0.1)',
                           (0.0, 4.0))
    contrastive_margin: float = option(0.5, 'contrastive margin tau on distances', (0.0, 2.0))

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)


@dataclass(frozen=True)
class SareEvalConfig:
    """Held-out evaluation once per pass (model selection by R@5)."""

    kind: str = option('pitts', 'pitts (val .mat), route, traversal or none',
                       choices=('pitts', 'route', 'traversal', 'none'))
    val_mat: str = option('', 'pitts30k_val.mat (paths resolved with data.db_root/query_root)')
    route_seed: int = option(32, 'route seed for kind route')
    route_frames: int = option(120, 'frames per route traversal', (2, 100000))
    route_image_size: tuple = option((48, 64), 'rendered route image (height, width)')
    radius_m: float = option(25.0, 'positive radius in metres', (0.0, 1e5))
    traversal_root: str = option('', 'two-traversal folder for kind traversal')
    first_frame: int = option(0, 'first frame (kind traversal)', (0, 10 ** 9))
    stop_frame: int = option(0, 'end of the frame range (0 = all)', (0, 10 ** 9))
    batch_size: int = option(32, 'images per descriptor batch', (1, 4096))
    keep_best: bool = option(True, 'export the best pass by R@5 (False: the last)')

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)

    def load(self, data: SareDataConfig) -> Optional[EvalSet]:
        """Return the evaluation set (None for kind none)."""
        if self.kind == 'route':
            return read_route_eval(self.route_seed, self.route_frames,
                                   tuple(self.route_image_size), self.radius_m)
        if self.kind == 'pitts':
            split = read_pitts_split(self.val_mat, data.db_root, data.query_root)
            return split.eval_set(self.radius_m)
        if self.kind == 'traversal':
            return read_traversal_eval(self.traversal_root, self.first_frame, self.stop_frame)
        return None


@dataclass(frozen=True)
class SareConfig:
    """Complete SARE recipe."""

    model: SareModelConfig = option(SareModelConfig(), 'network')
    data: SareDataConfig = option(SareDataConfig(), 'training tuples')
    optim: SareOptim = option(SareOptim(), 'optimiser and loss')
    run: RunConfig = option(RunConfig(batch_size_per_gpu=4, precision='fp32', clip_grad=0.0),
                            'batching (tuples per rank), precision, checkpoints')
    evaluation: SareEvalConfig = option(SareEvalConfig(), 'held-out evaluation')


class TupleImages(Dataset):
    """Tuple keys ``(q, p, n_1..n_J)`` -> ``[2 + J, 3, H, W]`` preprocessed images."""

    def __init__(self, source: TupleSource, spec) -> None:
        """Read images of ``source`` for the model ``spec``."""
        self.source, self.spec = source, spec

    def __len__(self) -> int:
        """Return the number of queries."""
        return len(self.source.queries)

    def __getitem__(self, key: tuple) -> tuple[torch.Tensor]:
        """Return ``(images,)``: the query, positive and negative images stacked."""
        items = [self.source.queries[key[0]]] + [self.source.database[j] for j in key[1:]]
        return (preprocess([PlaceTable.load(item) for item in items], self.spec),)


class SareObjective(nn.Module):
    """Loss of a batch of tuples ``[B, 2 + J, 3, H, W]``."""

    def __init__(self, model: nn.Module, optim: SareOptim) -> None:
        """Wrap ``model`` with the configured loss."""
        super().__init__()
        self.model, self.optim = model, optim

    def loss(self, q: torch.Tensor, p: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """Return the configured loss of descriptor tuples."""
        o = self.optim
        if o.loss == 'sare':
            return sare_loss(q, p, n, o.variant, o.kernel, o.temperature, o.reduction)
        if o.loss == 'triplet':
            return triplet_loss(q, p, n, o.margin, o.reduction)
        return contrastive_tuple_loss(q, p, n, o.contrastive_margin, o.reduction)

    def forward(self, tuples: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Return ``(per-rank loss, scalars)``."""
        batch, size = tuples.shape[:2]
        descriptors = self.model.describe(tuples.flatten(0, 1))[0].float()
        descriptors = descriptors.view(batch, size, -1)
        q, p, n = descriptors[:, 0], descriptors[:, 1], descriptors[:, 2:]
        loss = self.loss(q, p, n)
        with torch.no_grad():
            d2p = (q - p).pow(2).sum(-1)
            hardest = (q.unsqueeze(1) - n).pow(2).sum(-1).min(dim=1).values
            violated = (d2p > hardest).float().sum()
        world = all_reduce_sum(torch.tensor(1.0, device=loss.device))
        return loss, {'loss': all_reduce_sum(loss) / world,
                      'positive_farther_than_hardest_negative':
                          all_reduce_sum(violated) / (world * batch)}


def image_batches(model: GemNet, items: Sequence, count: int, seed: int, device: torch.device,
                  transform: Optional[Transform] = None) -> Iterator[torch.Tensor]:
    """Yield preprocessed batches (16 images) of ``count`` random ``items`` (seeded)."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(items), size=min(count, len(items)), replace=False)
    transform = transform or (lambda batch: preprocess([PlaceTable.load(i) for i in batch],
                                                       model.spec))
    for start in range(0, len(chosen), 16):
        yield transform([items[i] for i in chosen[start:start + 16]]).to(device)


def initialise_clusters(model: GemNet, items: Sequence, count: int, per_image: int, seed: int,
                        device: torch.device, transform: Optional[Transform] = None) -> None:
    """Initialise NetVLAD by k-means on local features of ``count`` random ``items``.

    Fresh batch norms (random init) first get their statistics from the same images
    (:func:`calibrate_batch_norm`), so the centres are computed in the feature space training
    starts from.
    """
    calibrate_batch_norm(model, image_batches(model, items, count, seed, device, transform))
    features = []
    model.eval()
    with torch.no_grad():
        for inputs in image_batches(model, items, count, seed, device, transform):
            maps = model.feature_map(inputs).cpu()
            features.append(sample_local_features(maps, per_image, seed))
    model.train()
    model.pool.init_from_features(np.concatenate(features), seed)


def make_sampler(source: TupleSource, model: GemNet, config: SareConfig,
                 context: DistContext) -> tuple[EpochKeySampler, int]:
    """Return the mining sampler and the number of caches per pass over the queries."""
    miner = TupleMiner(source.query_xy, source.db_xy, config.data.mining)
    trainable = miner.trainable_queries()
    per_cache = config.data.mining.cache_size
    caches = max(1, math.ceil(len(trainable) / per_cache))
    LOGGER.info('%d of %d queries have non-trivial positives; %d caches per pass',
                len(trainable), len(source.queries), caches)
    width = 2 + config.data.mining.num_negatives

    def draw(epoch: int) -> list:
        pass_index, chunk = divmod(epoch, caches)
        order = np.random.default_rng([config.run.seed, pass_index]).permutation(trainable)
        queries = order[chunk * per_cache:(chunk + 1) * per_cache]
        keys = []
        if context.is_main:
            batch, device = config.evaluation.batch_size, context.device
            q_desc = describe_items(model, [source.queries[q] for q in queries], batch, device)
            db_desc = describe_items(model, source.database, batch, device)
            keys = miner.mine(queries, q_desc, db_desc,
                              np.random.default_rng([config.run.seed, epoch, 1]))
        return broadcast_keys(keys, width, context)
    return EpochKeySampler(draw, config.run.batch_size_per_gpu, context.world_size,
                           context.rank), caches


def prepare_model(config: SareConfig, source: TupleSource, context: DistContext,
                  resuming: bool) -> GemNet:
    """Build the network and initialise its clusters (or load ``init_weights``)."""
    model = config.model.build().to(context.device)
    if config.model.init_weights:
        model.load_state_dict(load_weights(Path(config.model.init_weights), GemNet).state_dict())
    elif not resuming and context.is_main:
        initialise_clusters(model, source.database, config.model.cluster_images,
                            config.model.descriptors_per_image, config.run.seed, context.device)
    return model


def whitening_items(source: TupleSource, count: int, seed: int) -> list:
    """Return ``count`` random training database images to learn the whitening on."""
    rng = np.random.default_rng([seed, 2])
    chosen = rng.choice(len(source.database), size=min(count, len(source.database)),
                        replace=False)
    return [source.database[i] for i in np.sort(chosen)]


def train_sare(config: SareConfig, context: DistContext, run_dir: Path,
               resume_state: Optional[Path] = None, progress: Progress = no_progress) -> dict:
    """Train in ``run_dir`` and export; return ``export.json``'s content."""
    source = config.data.load()
    eval_set = config.evaluation.load(config.data)
    model = prepare_model(config, source, context, resume_state is not None)
    sampler, caches = make_sampler(source, model, config, context)
    loader = make_loader(TupleImages(source, model.spec), sampler, config.data.num_workers,
                         context.device.type == 'cuda')
    o = config.optim
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=o.lr,
                                momentum=o.momentum, weight_decay=o.weight_decay)
    schedule = StepDecay(o.lr, o.lr_step_epochs * caches, o.lr_gamma)
    trainer = Trainer(model, SareObjective(model, o), optimizer, schedule, context, config.run,
                      run_dir)
    if resume_state is not None:
        trainer.load_state(resume_state)
    schedule.epoch = trainer.position.epoch
    whitening = whitening_items(source, config.model.whitening_images, config.run.seed)
    selection = Selection(eval_set, config.evaluation.batch_size, config.evaluation.keep_best,
                          caches, whitening, STAGE, config_as_dict(config))
    keeper = BestKeeper(model, trainer, schedule, context, selection)
    if resume_state is None:
        keeper.evaluate_initial()
    trainer.fit(loader, sampler, o.epochs * caches, keeper.on_epoch_end, progress)
    trainer.close()
    return keeper.finish(run_dir)


def run_sare(config: SareConfig, resume: str = '', progress: Optional[Progress] = None) -> Path:
    """Run SARE training in a new (or resumed) run folder; return the folder."""
    with open_session(config, STAGE, resume) as session:
        wrap = progress or tqdm_progress(session.context)
        train_sare(config, session.context, session.run_dir, session.resume_state, wrap)
        return session.run_dir


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point: ``python -m vpr_ros_training.sare.train --config FILE``."""
    run_dir = run_stage_command('SARE: NetVLAD trained with the SARE loss', SareConfig,
                                run_sare, argv)
    print(f'SARE training finished: {run_dir}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
