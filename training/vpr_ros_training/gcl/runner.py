"""Training plumbing shared by GCL, SARE and StructVPR on top of the Pair-VPR trainer.

The Pair-VPR :class:`~vpr_ros_training.trainer.Trainer` (DDP, guarded steps, clipping, resume),
:func:`~vpr_ros_training.session.open_session` (process group, seed, run folder, logs) and
:func:`~vpr_ros_training.datasets.make_loader` are reused as they are. What differs per method is
the batch content, drawn once per *epoch* (a GCL step, a SARE mining cache, a StructVPR
partition): :class:`EpochKeySampler` asks a ``draw(epoch)`` callback for the epoch's sample keys
(identical on every rank, seeded by the run seed and the epoch) and hands each rank its slice of
every global batch. :class:`StepDecay` is ``StepLR`` over those epochs.

Trained networks that the core cannot rebuild are written as ``weights.safetensors`` (state dict
plus the network options as JSON metadata, format ``vpr_ros_training.weights``) and read back
with :func:`load_weights`; EfficientNet-Lite0 + GeM networks are additionally exported as core
checkpoints (:mod:`vpr_ros_training.gcl.export`).
"""

from dataclasses import dataclass
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from safetensors import safe_open
from safetensors.torch import load_file, save_file
import torch

from vpr_ros.errors import CheckpointError
from vpr_ros_training.distributed import barrier, DistContext
from vpr_ros_training.gcl.export import core_compatible, export_core_checkpoint
from vpr_ros_training.gcl.retrieval import describe_items, evaluate_recall, Transform
from vpr_ros_training.run_folder import write_json_atomic
from vpr_ros_training.trainer import Trainer
from vpr_ros_training.traversal import EvalSet

LOGGER = logging.getLogger(__name__)

WEIGHTS_FORMAT = 'vpr_ros_training.weights'
WEIGHTS_FILE = 'weights.safetensors'
CORE_FILE = 'model.safetensors'
CORE_GAP = 'architecture not registered in vpr_ros.models.registry; see docs/deployment.md'


class EpochKeySampler:
    """Batch sampler over keys drawn per epoch; every rank takes its slice of a global batch."""

    def __init__(self, draw: Callable[[int], list], per_rank: int, world_size: int = 1,
                 rank: int = 0) -> None:
        """Use ``draw(epoch) -> keys`` (the same list on every rank)."""
        self.draw, self.per_rank, self.world_size, self.rank = draw, per_rank, world_size, rank
        self.keys: list = []
        self.skip = 0

    @property
    def global_batch(self) -> int:
        """Return the samples per global batch."""
        return self.per_rank * self.world_size

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Draw the keys of ``epoch``; skip its first ``skip`` batches (resume)."""
        self.keys, self.skip = list(self.draw(epoch)), skip
        if len(self.keys) < self.global_batch:
            LOGGER.warning('epoch %d drew %d samples, fewer than one global batch of %d: '
                           'nothing to train on in this epoch', epoch, len(self.keys),
                           self.global_batch)

    def __len__(self) -> int:
        """Return the number of full global batches of the current epoch."""
        return len(self.keys) // self.global_batch

    def __iter__(self) -> Iterator[list]:
        """Yield this rank's keys, batch by batch."""
        for batch in range(self.skip, len(self)):
            start = batch * self.global_batch + self.rank * self.per_rank
            yield self.keys[start:start + self.per_rank]


class StepDecay:
    """``StepLR`` over epochs: ``lr * gamma ** (epoch // step_size)`` for every group."""

    def __init__(self, lr: float, step_size: int, gamma: float) -> None:
        """Store the schedule; :attr:`epoch` is advanced by the training loop."""
        self.lr, self.step_size, self.gamma = lr, max(1, step_size), gamma
        self.epoch = 0

    def value(self) -> float:
        """Return the learning rate of the current epoch."""
        return self.lr * self.gamma ** (self.epoch // self.step_size)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> dict[str, float]:
        """Set every group's learning rate (times its ``lr_multiplier``) and return it."""
        lr = self.value()
        for group in optimizer.param_groups:
            group['lr'] = lr * group.get('lr_multiplier', 1.0)
        return {'lr': lr}


def save_weights(model: torch.nn.Module, path: Path, kind: str) -> Path:
    """Write ``model``'s state dict with its options (``kind`` names the network family)."""
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    metadata = {'format': WEIGHTS_FORMAT, 'kind': kind,
                'options': json.dumps(getattr(model, 'options', {}), sort_keys=True)}
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f'.{path.name}.tmp')
    try:
        save_file(state, str(temp), metadata=metadata)
        with open(temp, 'rb') as stream:
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path


def read_weights_metadata(path: Path) -> tuple[str, dict]:
    """Return ``(kind, options)`` stored by :func:`save_weights`."""
    try:
        with safe_open(str(path), framework='pt') as handle:
            metadata = dict(handle.metadata() or {})
    except (OSError, ValueError) as exc:
        raise CheckpointError(f'cannot read {path}: {exc}') from exc
    if metadata.get('format') != WEIGHTS_FORMAT:
        raise CheckpointError(f'{path} is not a {WEIGHTS_FORMAT} file')
    return metadata.get('kind', ''), json.loads(metadata.get('options', '{}'))


def load_weights(path: Path, build: Callable[..., torch.nn.Module]) -> torch.nn.Module:
    """Rebuild a network with ``build(**options)`` and load the weights from ``path`` strictly."""
    _, options = read_weights_metadata(Path(path))
    model = build(**options)
    model.load_state_dict(load_file(str(path), device='cpu'), strict=True)
    return model.eval()


def export_trained(model: torch.nn.Module, run_dir: Path, kind: str, results: dict,
                   config: Any) -> dict:
    """Write ``weights.safetensors``, a core checkpoint when possible, and ``export.json``."""
    save_weights(model, run_dir / WEIGHTS_FILE, kind)
    core = None
    if core_compatible(model):
        core = export_core_checkpoint(model, run_dir / CORE_FILE).name
    info = {'weights': WEIGHTS_FILE, 'kind': kind, 'options': getattr(model, 'options', {}),
            'core_checkpoint': core, 'evaluation': results, 'config': config,
            'core_gap': None if core else CORE_GAP}
    write_json_atomic(run_dir / 'export.json', info)
    LOGGER.info('exported %s (core checkpoint: %s)', run_dir / WEIGHTS_FILE, core)
    return info


def log_results(prefix: str, results: dict[str, float]) -> None:
    """Log evaluation numbers on one line."""
    LOGGER.info('%s: %s', prefix, ', '.join(f'{k} {v:.2f}' for k, v in results.items()
                                            if isinstance(v, float) and math.isfinite(v)))


def pick_better(best: Optional[dict], current: dict, metric: str) -> bool:
    """Return True when ``current[metric]`` beats ``best[metric]`` (or there is no best)."""
    return best is None or current.get(metric, -1.0) > best.get(metric, -1.0)


def evaluate_plain(model: torch.nn.Module, eval_set: Optional[EvalSet], batch_size: int,
                   device: torch.device,
                   transform: Optional[Transform] = None) -> dict[str, float]:
    """Return Recall@1/5/10 of ``model`` without its whitening (empty without a set)."""
    if eval_set is None:
        return {}
    whitening = getattr(model, 'whitening', None)
    model.whitening = None
    try:
        results = evaluate_recall(model, eval_set, batch_size, device, transform)
    finally:
        model.whitening = whitening
    log_results(f'eval {eval_set.name}', results)
    return results


def fit_whitening(model: torch.nn.Module, items: Optional[Sequence], batch_size: int,
                  device: torch.device, transform: Optional[Transform] = None) -> None:
    """Learn ``model.whitening`` (when it has one) from the descriptors of ``items``."""
    whitening = getattr(model, 'whitening', None)
    if whitening is None:
        return
    if not items:
        LOGGER.warning('whitening_dim is set but there are no images to learn it on')
        return
    model.whitening = None
    try:
        descriptors = describe_items(model, items, batch_size, device, transform)
    finally:
        model.whitening = whitening
    whitening.fit(descriptors)
    LOGGER.info('PCA-whitening %d -> %d learned on %d descriptors', descriptors.shape[1],
                whitening.out_dim, len(descriptors))


@dataclass
class Selection:
    """How a run evaluates, selects and exports its model."""

    eval_set: Optional[EvalSet]
    batch_size: int = 32
    keep_best: bool = True
    every: int = 1
    whitening_items: Optional[Sequence] = None
    kind: str = ''
    config: Optional[dict] = None
    transform: Optional[Transform] = None
    metric: str = 'r@5'


class BestKeeper:
    """Epoch-end hook: advance the schedule, evaluate, keep the best weights; export at the end."""

    def __init__(self, model: torch.nn.Module, trainer: Trainer, schedule: StepDecay,
                 context: DistContext, selection: Selection) -> None:
        """Store what the hook needs."""
        self.model, self.trainer, self.schedule = model, trainer, schedule
        self.context, self.selection = context, selection
        self.best: Optional[dict] = None
        self.best_state: Optional[dict] = None
        self.initial: dict = {}

    def evaluate(self) -> dict[str, float]:
        """Return the un-whitened recalls of the current weights (rank 0 only)."""
        s = self.selection
        return evaluate_plain(self.model, s.eval_set, s.batch_size, self.context.device,
                              s.transform)

    def evaluate_initial(self) -> None:
        """Record the untrained model's recalls (rank 0)."""
        if self.context.is_main:
            self.initial = self.evaluate()
        barrier(self.context)

    def on_epoch_end(self, epoch: int) -> None:
        """Advance the schedule; every ``every`` epochs evaluate and remember the best weights."""
        self.schedule.epoch = epoch + 1
        due = (epoch + 1) % self.selection.every == 0
        if self.context.is_main and self.selection.eval_set is not None and due:
            results = self.evaluate()
            self.trainer.scalars.log(self.trainer.position.step,
                                     {f'eval/{k}': v for k, v in results.items()})
            if self.selection.keep_best and pick_better(self.best, results,
                                                        self.selection.metric):
                self.best = dict(results, epoch=epoch + 1)
                self.best_state = {k: v.detach().cpu().clone()
                                   for k, v in self.model.state_dict().items()}
        barrier(self.context)

    def finish(self, run_dir: Path) -> dict:
        """Restore the best weights, learn the whitening, evaluate and export (rank 0)."""
        info: dict = {}
        if self.context.is_main:
            info = self.export(run_dir)
        barrier(self.context)
        return info

    def export(self, run_dir: Path) -> dict:
        """Do :meth:`finish`'s work on rank 0."""
        s, device = self.selection, self.context.device
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        final = self.evaluate()
        fit_whitening(self.model, s.whitening_items, s.batch_size, device, s.transform)
        if getattr(self.model, 'whitening', None) is not None and s.eval_set is not None:
            whitened = evaluate_recall(self.model, s.eval_set, s.batch_size, device, s.transform)
            final.update({f'whitened_{k}': v for k, v in whitened.items()})
        results = {'initial': self.initial, 'final': final,
                   'best_epoch': (self.best or {}).get('epoch')}
        return export_trained(self.model.cpu(), run_dir, s.kind, results, s.config)
