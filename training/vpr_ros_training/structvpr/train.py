"""StructVPR training: ``python -m vpr_ros_training.structvpr.train --config FILE``.

Stage 1 trains the SEG teacher on weighted one-hot label maps with the NetVLAD triplet loss on
mined tuples (:mod:`vpr_ros_training.sare.mining`); it is written to ``teacher/`` in the run
folder (skipped when ``teacher_weights`` names a trained teacher). Stage 2 freezes the teacher
and trains the RGB student with ``L = L_triplet + distillation_weight * L_KD``; at every cache
refresh the training queries are ranked by teacher (once) and student (current weights), the
partition and weights of :mod:`.partition` are recomputed and the group occupancy is logged.
Only the student is exported (RGB at inference, no segmentation). Teacher and student must give
descriptors of the same dimension. Data kinds: MSLS with offline label PNGs, the procedural
street (exact label maps) and a two-traversal folder (``query/``, ``ref/``, e.g. the corridor)
whose label maps come from ``seg_root`` PNGs or, without them, from the colour k-means stand-in
of :mod:`.colour_segmenter` fitted on the training frames only. Optimiser, learning rates,
epochs and image size of the paper are unverified; the defaults follow the SARE/NetVLAD recipe
the paper compares against.
"""

from dataclasses import dataclass, replace
from functools import lru_cache
import logging
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from vpr_ros.config import validate
from vpr_ros.data.ground_truth import positives_within_radius
from vpr_ros.errors import ConfigError
from vpr_ros.models.preprocessing import preprocess
from vpr_ros_training.command_line import run_stage_command, tqdm_progress
from vpr_ros_training.config import config_as_dict, option, RunConfig
from vpr_ros_training.datasets import make_loader
from vpr_ros_training.distributed import all_reduce_sum, barrier, DistContext
from vpr_ros_training.gcl.msls import msls_eval_set, read_msls_split, VAL_CITIES
from vpr_ros_training.gcl.networks import BACKBONES, GemNet, POOLS
from vpr_ros_training.gcl.retrieval import describe_items
from vpr_ros_training.gcl.runner import (BestKeeper, EpochKeySampler, load_weights, Selection,
                                         StepDecay)
from vpr_ros_training.places import PlaceTable
from vpr_ros_training.sare.losses import triplet_loss
from vpr_ros_training.sare.mining import broadcast_keys, MiningConfig, TupleMiner
from vpr_ros_training.sare.train import initialise_clusters, traversal_tuple_source
from vpr_ros_training.session import open_session
from vpr_ros_training.structvpr.colour_segmenter import (ColourSegmenter, ColourSegmenterConfig,
                                                         fit_traversal)
from vpr_ros_training.structvpr.distillation import weighted_distillation
from vpr_ros_training.structvpr.label_maps import encode_label_maps, LabelMapConfig, read_label_map
from vpr_ros_training.structvpr.partition import (distillation_weights, group_fractions,
                                                  PartitionConfig, positive_ranks)
from vpr_ros_training.structvpr.street_scenes import render_street, StreetConfig
from vpr_ros_training.trainer import Progress, Trainer
from vpr_ros_training.traversal import EvalSet, read_traversal_eval

LOGGER = logging.getLogger(__name__)

STAGE = 'structvpr'
WEIGHT_SCALE = 1_000_000
SEG_MEAN_STD = ((0.0,), (1.0,))


@dataclass(frozen=True)
class SegTupleSource:
    """Query/database RGB images and label maps (arrays or file paths) with positions."""

    name: str
    queries: tuple
    database: tuple
    query_labels: tuple
    db_labels: tuple
    query_xy: np.ndarray
    db_xy: np.ndarray


@dataclass(frozen=True)
class BranchConfig:
    """The network of one branch (teacher: label maps in, student: RGB in)."""

    backbone: str = option('vgg16_conv5_3', 'backbone (unverified: VGG16 as in NetVLAD)',
                           choices=BACKBONES)
    weights: str = option('', 'local backbone weights (.pth; "imagenet" for efficientnet_lite0)')
    pool: str = option('netvlad', 'pooling (unverified: NetVLAD)', choices=POOLS)
    last_layer: int = option(1, 'trainable last blocks (0 = all)', (0, 1000))
    netvlad_clusters: int = option(64, 'NetVLAD clusters', (1, 4096))
    input_size: tuple = option((480, 640), 'input (height, width) (unverified)')
    cluster_images: int = option(500, 'database images for the NetVLAD k-means init',
                                 (1, 10 ** 7))
    descriptors_per_image: int = option(100, 'local features per image for k-means',
                                        (1, 100000))

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)

    def build(self, in_channels: int = 3) -> GemNet:
        """Return the branch network.

        A SEG branch (``in_channels`` != 3) gets a new, randomly initialised first convolution
        (the other layers keep ``weights``) and trains every layer (``last_layer`` ignored).
        """
        mean_std = {} if in_channels == 3 else {'mean': SEG_MEAN_STD[0] * 3,
                                                'std': SEG_MEAN_STD[1] * 3}
        return GemNet(self.backbone, self.weights, self.pool,
                      last_layer=self.last_layer if in_channels == 3 else 0,
                      input_size=tuple(self.input_size), netvlad_clusters=self.netvlad_clusters,
                      in_channels=in_channels, **mean_std)


@dataclass(frozen=True)
class StageOptim:
    """SGD settings of one stage (unverified; NetVLAD/SARE-like defaults)."""

    epochs: int = option(5, 'passes over the training queries', (0, 100000))
    lr: float = option(0.001, 'SGD learning rate', (0.0, 10.0))
    momentum: float = option(0.9, 'SGD momentum', (0.0, 1.0))
    weight_decay: float = option(0.001, 'SGD weight decay', (0.0, 1.0))
    lr_step_epochs: int = option(5, 'multiply the learning rate by lr_gamma every N epochs',
                                 (1, 100000))
    lr_gamma: float = option(0.5, 'learning-rate factor', (0.0, 1.0))
    margin: float = option(0.1, 'triplet margin on squared distances', (0.0, 4.0))

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)


@dataclass(frozen=True)
class StructDataConfig:
    """Training data: MSLS with offline label maps, the procedural street or a traversal folder."""

    kind: str = option('msls', 'msls, street or traversal (query/ + ref/ folder)',
                       choices=('msls', 'street', 'traversal'))
    root: str = option('', 'MSLS root (train_val/)')
    seg_root: str = option('', 'label PNGs at <seg_root>/<city>/<split>/<key>.png (msls) or '
                           '<seg_root>/{query,ref}/<frame stem>.png (traversal; empty: colour '
                           'k-means stand-in)')
    cities: tuple = option(('trondheim',), 'MSLS training cities')
    street_seeds: tuple = option((41,), 'street world seeds for kind street')
    street: StreetConfig = option(StreetConfig(), 'procedural street settings')
    traversal_root: str = option('', 'two-traversal folder (query/, ref/) for kind traversal')
    first_frame: int = option(0, 'first training frame (kind traversal)', (0, 10 ** 9))
    stop_frame: int = option(0, 'end of the training frames (exclusive, 0 = all)', (0, 10 ** 9))
    frame_spacing_m: float = option(1.0, 'distance between consecutive frames (kind traversal)',
                                    (1e-3, 1e4))
    segmenter: ColourSegmenterConfig = option(
        ColourSegmenterConfig(), 'colour k-means label maps for kind traversal without seg_root: '
        'an assumption standing in for a real segmenter, fitted on the training frames only')
    mining: MiningConfig = option(MiningConfig(), 'tuple mining')
    num_workers: int = option(4, 'DataLoader workers per rank', (0, 256))

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)

    def load(self) -> SegTupleSource:
        """Return the training source."""
        if self.kind == 'street':
            return street_source(tuple(self.street_seeds), self.street)
        if self.kind == 'traversal':
            return traversal_seg_source(self)
        return msls_seg_source(self.root, self.seg_root, tuple(self.cities))

    def frame_labels(self, items: Sequence[str]) -> tuple:
        """Return the label maps of traversal frames: seg_root PNG paths or colour k-means maps."""
        if self.seg_root:
            return tuple(str(Path(self.seg_root) / Path(i).parent.name / f'{Path(i).stem}.png')
                         for i in items)
        return training_segmenter(self.traversal_root, self.first_frame, self.stop_frame,
                                  self.segmenter).label_items(items)


@lru_cache(maxsize=2)
def training_segmenter(root: str, first: int, stop: int,
                       config: ColourSegmenterConfig) -> ColourSegmenter:
    """Return the colour segmenter fitted on training frames ``[first, stop)`` (cached)."""
    return fit_traversal(root, first, stop, config)


def traversal_seg_source(data: StructDataConfig) -> SegTupleSource:
    """Return query frames against reference frames of the training range, with label maps."""
    tuples = traversal_tuple_source(data.traversal_root, data.first_frame, data.stop_frame,
                                    data.frame_spacing_m)
    return SegTupleSource(tuples.name, tuple(tuples.queries), tuple(tuples.database),
                          data.frame_labels(tuples.queries), data.frame_labels(tuples.database),
                          tuples.query_xy, tuples.db_xy)


def street_source(seeds: Sequence[int], config: StreetConfig) -> SegTupleSource:
    """Return procedural streets (night queries, day database), positions in pixels.

    Several worlds are concatenated along x, 10^7 pixels apart (never within a radius).
    """
    parts: list = [[] for _ in range(6)]
    for index, seed in enumerate(seeds):
        views = render_street(int(seed), config)
        offset = 1e7 * index
        for slot, value in enumerate((views.query_rgb, views.db_rgb, views.query_labels,
                                      views.db_labels)):
            parts[slot] += list(value)
        parts[4].append(np.stack([views.query_x + offset, np.zeros(len(views.query_x))], 1))
        parts[5].append(np.stack([views.db_x + offset, np.zeros(len(views.db_x))], 1))
    return SegTupleSource(f'street:{",".join(str(s) for s in seeds)}', *map(tuple, parts[:4]),
                          np.concatenate(parts[4]), np.concatenate(parts[5]))


def msls_seg_source(root: str, seg_root: str, cities: Sequence[str]) -> SegTupleSource:
    """Return MSLS cities with their label maps (cities concatenated, 10 km apart)."""
    parts: list = [[] for _ in range(6)]
    for index, city in enumerate(cities):
        for split, offset in (('query', 0), ('database', 1)):
            data = read_msls_split(Path(root), city, split)
            parts[offset] += list(data.paths)
            parts[2 + offset] += [str(Path(seg_root) / city / split / f'{k}.png')
                                  for k in data.keys]
            parts[4 + offset].append(data.cameras.xy + np.array([1e7 * index, 0.0]))
    return SegTupleSource(f'msls:{len(cities)} cities', *map(tuple, parts[:4]),
                          np.concatenate(parts[4]), np.concatenate(parts[5]))


@dataclass(frozen=True)
class StructEvalConfig:
    """Held-out evaluation of the RGB student (and of the teacher on label maps)."""

    kind: str = option('msls', 'msls (val cities), street, traversal or none',
                       choices=('msls', 'street', 'traversal', 'none'))
    root: str = option('', 'MSLS root for kind msls')
    traversal_root: str = option('', 'two-traversal folder for kind traversal')
    first_frame: int = option(0, 'first frame (kind traversal)', (0, 10 ** 9))
    stop_frame: int = option(0, 'end of the frame range (0 = all)', (0, 10 ** 9))
    cities: tuple = option(VAL_CITIES, 'MSLS validation cities')
    street_seed: int = option(42, 'street world seed for kind street')
    radius_m: float = option(25.0, 'positive radius (street: pixels; traversal: unused, '
                             'ground_truth.json)', (0.0, 1e7))
    batch_size: int = option(32, 'images per descriptor batch', (1, 4096))
    keep_best: bool = option(True, 'export the best pass by R@5 (False: the last)')

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)

    def load(self, data: StructDataConfig, labels: bool = False) -> Optional[EvalSet]:
        """Return the RGB (or label-map) evaluation set; None where labels are unavailable.

        Traversal label maps come from ``data.frame_labels`` (the colour segmenter fitted on the
        training frames, never on these); MSLS has no label-map evaluation.
        """
        if self.kind == 'msls' and not labels:
            return msls_eval_set(self.root, tuple(self.cities), self.radius_m)
        if self.kind == 'traversal':
            return self.traversal(data, labels)
        if self.kind != 'street':
            return None
        source = street_source((self.street_seed,), data.street)
        found = positives_within_radius(source.query_xy, source.db_xy, self.radius_m)
        positives = tuple(tuple(int(j) for j in ids) for ids in found)
        if labels:
            return EvalSet(source.name, source.query_labels, source.db_labels, positives)
        return EvalSet(source.name, source.queries, source.database, positives)

    def traversal(self, data: StructDataConfig, labels: bool) -> Optional[EvalSet]:
        """Return frames ``[first_frame, stop_frame)`` (ground-truth positives) of ``root``."""
        found = read_traversal_eval(self.traversal_root, self.first_frame, self.stop_frame)
        if not labels:
            return found
        if data.kind != 'traversal' and not data.seg_root:
            return None
        return replace(found, queries=data.frame_labels(found.queries),
                       database=data.frame_labels(found.database))


@dataclass(frozen=True)
class StructVprConfig:
    """Complete StructVPR recipe (two stages)."""

    labels: LabelMapConfig = option(LabelMapConfig(), 'segmentation classes and weights')
    teacher: BranchConfig = option(BranchConfig(), 'SEG teacher network')
    student: BranchConfig = option(BranchConfig(), 'RGB student network')
    teacher_optim: StageOptim = option(StageOptim(), 'stage 1 (teacher) optimiser')
    student_optim: StageOptim = option(StageOptim(), 'stage 2 (student) optimiser')
    teacher_weights: str = option('', 'trained teacher weights.safetensors (skips stage 1)')
    distillation_weight: float = option(0.1, 'lambda_KD (unverified; 1.0 made the toy student '
                                        'collapse)', (0.0, 1e6))
    partition: PartitionConfig = option(PartitionConfig(), 'sample partition and weights')
    data: StructDataConfig = option(StructDataConfig(), 'training data')
    run: RunConfig = option(RunConfig(batch_size_per_gpu=4, precision='fp32', clip_grad=0.0),
                            'batching (tuples per rank), precision, checkpoints')
    evaluation: StructEvalConfig = option(StructEvalConfig(), 'held-out evaluation')

    def __post_init__(self) -> None:
        """Check that colour label maps fit the teacher's class count."""
        validate(self)
        data = self.data
        if data.kind == 'traversal' and not data.seg_root and \
                data.segmenter.num_classes != self.labels.num_classes:
            raise ConfigError(f'data.segmenter.num_classes ({data.segmenter.num_classes}) must '
                              f'equal labels.num_classes ({self.labels.num_classes})')


def load_label_map(item) -> np.ndarray:
    """Return a label map from an array or a label PNG path."""
    return item if isinstance(item, np.ndarray) else read_label_map(item)


class LabelTransform:
    """Label maps -> weighted one-hot network input at the teacher's input size."""

    def __init__(self, size: Sequence[int], config: LabelMapConfig) -> None:
        """Store the input size and encoding."""
        self.size, self.config = tuple(size), config

    def __call__(self, label_maps: Sequence[np.ndarray]) -> torch.Tensor:
        """Return ``[B, C, h, w]``."""
        return encode_label_maps([load_label_map(m) for m in label_maps], self.size,
                                 self.config)


class SegTuples(Dataset):
    """Tuple keys -> (RGB tuple, label-map tuple, weight); either modality may be skipped."""

    def __init__(self, source: SegTupleSource, rgb_spec, seg: Optional[LabelTransform],
                 with_rgb: bool = True) -> None:
        """Read images for ``rgb_spec`` and label maps with ``seg`` (None: no labels)."""
        self.source, self.rgb_spec, self.seg, self.with_rgb = source, rgb_spec, seg, with_rgb

    def __len__(self) -> int:
        """Return the number of queries."""
        return len(self.source.queries)

    def __getitem__(self, key: tuple) -> tuple:
        """Return ``(rgb [2+J, 3, H, W] | empty, labels [2+J, C, h, w] | [1, C, h, w], w)``."""
        q, rest, weight = key[0], key[1:-1], key[-1] / WEIGHT_SCALE
        out = []
        if self.with_rgb:
            items = [self.source.queries[q]] + [self.source.database[j] for j in rest]
            out.append(preprocess([PlaceTable.load(i) for i in items], self.rgb_spec))
        if self.seg is not None:
            labels = [self.source.query_labels[q]]
            if not self.with_rgb:
                labels += [self.source.db_labels[j] for j in rest]
            out.append(self.seg(labels))
        return tuple(out) + (torch.tensor(weight, dtype=torch.float32),)


def tuple_descriptors(model: nn.Module, tuples: torch.Tensor) -> tuple:
    """Return ``(q [B, D], p [B, D], n [B, J, D])`` of a ``[B, 2+J, ...]`` image tuple batch."""
    batch, size = tuples.shape[:2]
    descriptors = model.describe(tuples.flatten(0, 1))[0].float().view(batch, size, -1)
    return descriptors[:, 0], descriptors[:, 1], descriptors[:, 2:]


class TeacherObjective(nn.Module):
    """Stage 1: triplet loss of label-map tuples."""

    def __init__(self, teacher: nn.Module, margin: float) -> None:
        """Wrap the teacher."""
        super().__init__()
        self.teacher, self.margin = teacher, margin

    def forward(self, labels: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Return ``(loss, scalars)``."""
        loss = triplet_loss(*tuple_descriptors(self.teacher, labels), self.margin)
        world = all_reduce_sum(torch.tensor(1.0, device=loss.device))
        return loss, {'loss': all_reduce_sum(loss) / world}


class StudentObjective(nn.Module):
    """Stage 2: triplet loss of RGB tuples + weighted distillation from the frozen teacher."""

    def __init__(self, student: nn.Module, teacher: nn.Module, margin: float,
                 distillation_weight: float) -> None:
        """Wrap both networks; the teacher is frozen and kept in eval mode."""
        super().__init__()
        self.student, self.teacher = student, teacher.eval()
        self.margin, self.distillation_weight = margin, distillation_weight
        for param in self.teacher.parameters():
            param.requires_grad_(False)

    def forward(self, rgb: torch.Tensor, labels: torch.Tensor,
                weights: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Return ``(loss, scalars)``."""
        q, p, n = tuple_descriptors(self.student, rgb)
        vpr = triplet_loss(q, p, n, self.margin)
        with torch.no_grad():
            self.teacher.eval()
            target = self.teacher.describe(labels[:, 0])[0].float()
        kd = weighted_distillation(q, target, weights)
        world = all_reduce_sum(torch.tensor(1.0, device=vpr.device))
        return vpr + self.distillation_weight * kd, {
            'loss/triplet': all_reduce_sum(vpr) / world,
            'loss/distillation': all_reduce_sum(kd) / world,
            'distilled_fraction': all_reduce_sum((weights > 0).float().mean()) / world}


class MiningPlan:
    """Per-epoch tuple mining (and, for the student, partition weights) on rank 0."""

    def __init__(self, source: SegTupleSource, config: StructVprConfig, context: DistContext,
                 model: nn.Module, transform=None) -> None:
        """Mine with ``model`` (descriptors of items through ``transform``)."""
        self.source, self.config, self.context = source, config, context
        self.model, self.transform = model, transform
        self.miner = TupleMiner(source.query_xy, source.db_xy, config.data.mining)
        self.trainable = self.miner.trainable_queries()
        self.per_cache = config.data.mining.cache_size
        self.caches = max(1, math.ceil(len(self.trainable) / self.per_cache))
        self.teacher_ranks: Optional[dict] = None
        self.occupancy: dict[str, float] = {}
        self.on_partition = None

    def describe(self, model: nn.Module, queries: np.ndarray, labels: bool = False) -> tuple:
        """Return ``(query, database)`` descriptors of ``model`` for ``queries``."""
        batch, device = self.config.evaluation.batch_size, self.context.device
        q_items = self.source.query_labels if labels else self.source.queries
        db_items = self.source.db_labels if labels else self.source.database
        transform = self.transform if labels else None
        return (describe_items(model, [q_items[q] for q in queries], batch, device, transform),
                describe_items(model, db_items, batch, device, transform))

    def keys(self, epoch: int, teacher: Optional[nn.Module] = None) -> list:
        """Return the epoch's keys ``(q, p, n_1..n_J, weight * 1e6)`` on every rank."""
        pass_index, chunk = divmod(epoch, self.caches)
        order = np.random.default_rng([self.config.run.seed, pass_index]).permutation(
            self.trainable)
        queries = order[chunk * self.per_cache:(chunk + 1) * self.per_cache]
        keys = []
        if self.context.is_main:
            labels = teacher is None and self.transform is not None
            q_desc, db_desc = self.describe(self.model, queries, labels)
            rng = np.random.default_rng([self.config.run.seed, epoch, 1])
            tuples = self.miner.mine(queries, q_desc, db_desc, rng)
            weights = self.weights(queries, q_desc, db_desc, teacher)
            keys = [t + (int(round(w * WEIGHT_SCALE)),) for t, w in zip(tuples, weights)]
        width = 3 + self.config.data.mining.num_negatives
        return broadcast_keys(keys, width, self.context)

    def weights(self, queries: np.ndarray, q_desc: np.ndarray, db_desc: np.ndarray,
                teacher: Optional[nn.Module]) -> np.ndarray:
        """Return the partition weights of ``queries`` (zeros while training the teacher)."""
        if teacher is None:
            return np.zeros(len(queries))
        positives = [self.miner.positives[q] for q in queries]
        if self.teacher_ranks is None:
            t_q, t_db = self.describe(teacher, self.trainable, labels=True)
            all_positives = [self.miner.positives[q] for q in self.trainable]
            ranks = positive_ranks(t_q, t_db, all_positives, self.config.partition.max_rank)
            self.teacher_ranks = dict(zip(self.trainable.tolist(), ranks.tolist()))
        x = np.array([self.teacher_ranks[int(q)] for q in queries])
        y = positive_ranks(q_desc, db_desc, positives, self.config.partition.max_rank)
        self.occupancy = group_fractions(x, y, self.config.partition)
        LOGGER.info('partition: %s', ', '.join(f'{k} {v:.2f}' for k, v in self.occupancy.items()))
        if self.on_partition is not None:
            self.on_partition(self.occupancy)
        return distillation_weights(x, y, self.config.partition)


def initialise_branch(model: GemNet, branch: BranchConfig, items: Sequence, seed: int,
                      context: DistContext, transform=None) -> None:
    """Initialise a NetVLAD branch's clusters from database items (rank 0; DDP syncs)."""
    if branch.pool == 'netvlad' and context.is_main:
        initialise_clusters(model, items, branch.cluster_images, branch.descriptors_per_image,
                            seed, context.device, transform)


def make_trainer(model: nn.Module, objective: nn.Module, optim: StageOptim, caches: int,
                 config: StructVprConfig, context: DistContext,
                 run_dir: Path) -> tuple[Trainer, StepDecay]:
    """Return a trainer (SGD, step decay per pass) writing into ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=optim.lr,
                                momentum=optim.momentum, weight_decay=optim.weight_decay)
    schedule = StepDecay(optim.lr, optim.lr_step_epochs * caches, optim.lr_gamma)
    return Trainer(model, objective, optimizer, schedule, context, config.run, run_dir), schedule


def train_teacher(config: StructVprConfig, source: SegTupleSource, context: DistContext,
                  run_dir: Path, progress: Progress) -> GemNet:
    """Stage 1: train (or load) the SEG teacher; return it frozen."""
    teacher = config.teacher.build(config.labels.num_classes).to(context.device)
    transform = LabelTransform(config.teacher.input_size, config.labels)
    if config.teacher_weights:
        teacher.load_state_dict(load_weights(Path(config.teacher_weights), GemNet).state_dict())
        return teacher.eval()
    initialise_branch(teacher, config.teacher, source.db_labels, config.run.seed, context,
                      transform)
    plan = MiningPlan(source, config, context, teacher, transform)
    sampler = EpochKeySampler(plan.keys, config.run.batch_size_per_gpu, context.world_size,
                              context.rank)
    dataset = SegTuples(source, None, transform, with_rgb=False)
    loader = make_loader(dataset, sampler, config.data.num_workers)
    objective = TeacherObjective(teacher, config.teacher_optim.margin)
    trainer, schedule = make_trainer(teacher, objective, config.teacher_optim, plan.caches,
                                     config, context, run_dir / 'teacher')
    eval_set = config.evaluation.load(config.data, labels=True)
    selection = Selection(eval_set, config.evaluation.batch_size, config.evaluation.keep_best,
                          plan.caches, kind='structvpr_teacher', config=config_as_dict(config),
                          transform=transform)
    keeper = BestKeeper(teacher, trainer, schedule, context, selection)
    keeper.evaluate_initial()
    trainer.fit(loader, sampler, config.teacher_optim.epochs * plan.caches,
                keeper.on_epoch_end, progress)
    trainer.close()
    keeper.finish(run_dir / 'teacher')
    return teacher.to(context.device).eval()


def untrained_student(config: StructVprConfig, source: SegTupleSource,
                      context: Optional[DistContext] = None, initialise: bool = True) -> GemNet:
    """Return the RGB student as stage 2 starts (the "untrained" model of the evaluation).

    Its weights depend on ``run.seed`` only (not on what stage 1 drew from the generator);
    ``initialise`` estimates fresh batch-norm statistics and the NetVLAD clusters from the
    training database.
    """
    context = context or DistContext()
    torch.manual_seed(config.run.seed)
    student = config.student.build(3).to(context.device)
    if initialise:
        initialise_branch(student, config.student, source.database, config.run.seed, context)
    return student


def train_student(config: StructVprConfig, source: SegTupleSource, teacher: GemNet,
                  context: DistContext, run_dir: Path, resume_state: Optional[Path],
                  progress: Progress) -> dict:
    """Stage 2: train the RGB student with weighted distillation and export it."""
    student = untrained_student(config, source, context, initialise=resume_state is None)
    if student.spec.descriptor_dim != teacher.spec.descriptor_dim:
        raise ConfigError(f'student descriptors ({student.spec.descriptor_dim}-D) must match '
                          f"the teacher's ({teacher.spec.descriptor_dim}-D) for distillation")
    transform = LabelTransform(config.teacher.input_size, config.labels)
    plan = MiningPlan(source, config, context, student, transform)
    sampler = EpochKeySampler(lambda epoch: plan.keys(epoch, teacher),
                              config.run.batch_size_per_gpu, context.world_size, context.rank)
    loader = make_loader(SegTuples(source, student.spec, transform), sampler,
                         config.data.num_workers)
    objective = StudentObjective(student, teacher, config.student_optim.margin,
                                 config.distillation_weight)
    trainer, schedule = make_trainer(student, objective, config.student_optim, plan.caches,
                                     config, context, run_dir)
    plan.on_partition = lambda occupancy: trainer.scalars.log(
        trainer.position.step, {f'partition/{k}': v for k, v in occupancy.items()})
    if resume_state is not None:
        trainer.load_state(resume_state)
    schedule.epoch = trainer.position.epoch
    selection = Selection(config.evaluation.load(config.data), config.evaluation.batch_size,
                          config.evaluation.keep_best, plan.caches, kind='structvpr_student',
                          config=config_as_dict(config))
    keeper = BestKeeper(student, trainer, schedule, context, selection)
    if resume_state is None:
        keeper.evaluate_initial()
    trainer.fit(loader, sampler, config.student_optim.epochs * plan.caches,
                keeper.on_epoch_end, progress)
    trainer.close()
    return keeper.finish(run_dir)


def run_structvpr(config: StructVprConfig, resume: str = '',
                  progress: Optional[Progress] = None) -> Path:
    """Run both stages in a new (or resumed) run folder; return the folder."""
    with open_session(config, STAGE, resume) as session:
        wrap = progress or tqdm_progress(session.context)
        source = config.data.load()
        teacher_file = session.run_dir / 'teacher' / 'weights.safetensors'
        if resume and teacher_file.is_file():
            config = replace(config, teacher_weights=str(teacher_file))
        teacher = train_teacher(config, source, session.context, session.run_dir, wrap)
        barrier(session.context)
        train_student(config, source, teacher, session.context, session.run_dir,
                      session.resume_state, wrap)
        return session.run_dir


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point: ``python -m vpr_ros_training.structvpr.train --config FILE``."""
    run_dir = run_stage_command('StructVPR: SEG teacher, RGB student, weighted distillation',
                                StructVprConfig, run_structvpr, argv)
    print(f'StructVPR training finished: {run_dir}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
