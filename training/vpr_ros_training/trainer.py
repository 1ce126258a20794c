"""The training loop shared by both stages: DDP, bf16 autocast, guarded steps, checkpoints.

A stage supplies an *objective* module whose ``forward(*batch)`` returns ``(objective, scalars)``:
the per-rank tensor to back-propagate and a dict of detached, already rank-reduced values to log.
The :class:`Trainer` wraps it in ``DistributedDataParallel`` when several ranks run, applies the
stage's learning-rate schedule, skips (on every rank) any step whose loss or gradient norm is not
finite, clips the gradient norm, and saves/restores ``state.pt`` for resuming.
"""

import contextlib
from dataclasses import dataclass
import logging
import math
import os
from pathlib import Path
import tempfile
from typing import Callable, Iterable, Optional, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vpr_ros.errors import VprError
from vpr_ros_training.config import RunConfig
from vpr_ros_training.datasets import GlobalBatchSampler
from vpr_ros_training.distributed import all_ranks_true, DistContext
from vpr_ros_training.run_folder import ScalarLog

LOGGER = logging.getLogger(__name__)

STATE_FILE = 'state.pt'

Progress = Callable[[Iterable, int], Iterable]


class TrainingError(VprError):
    """Training cannot continue (repeated non-finite steps, unusable state file)."""


class StepSchedule(Protocol):
    """Sets the optimiser's learning rate (and weight decay) for a given step."""

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> dict[str, float]:
        """Update the optimiser for ``step`` and return the values set (for logging)."""


@dataclass
class Position:
    """Where training stands: epoch, batches done in it, optimiser steps taken."""

    epoch: int = 0
    batch: int = 0
    step: int = 0


def no_progress(iterable: Iterable, total: int) -> Iterable:
    """Return ``iterable`` unchanged (library default; CLIs pass a tqdm wrapper)."""
    return iterable


def freeze_unreached(model: nn.Module, probe: Callable[[nn.Module], torch.Tensor]) -> list[str]:
    """Turn off ``requires_grad`` for parameters that ``probe(model)``'s gradient never reaches.

    Frozen encoder blocks (run under ``no_grad``), the embeddings in front of them and the heads
    a stage does not use get no gradient; freezing them keeps them out of the optimiser and lets
    DDP run without ``find_unused_parameters``. Returns the names that were frozen.
    """
    model.zero_grad(set_to_none=True)
    probe(model).backward()
    frozen = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    for name, param in model.named_parameters():
        if name in frozen:
            param.requires_grad_(False)
    model.zero_grad(set_to_none=True)
    LOGGER.info('frozen %d parameter tensors that receive no gradient in this stage', len(frozen))
    LOGGER.debug('frozen: %s', frozen)
    return frozen


def save_state_atomic(state: dict, path: Path) -> None:
    """``torch.save`` ``state`` to ``path`` through a temporary file, fsync and rename."""
    handle, temp = tempfile.mkstemp(prefix=f'.{path.name}.', dir=path.parent)
    os.close(handle)
    try:
        torch.save(state, temp)
        with open(temp, 'rb') as stream:
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


class Trainer:
    """Runs guarded optimiser steps over a stage's batches and keeps the run's state."""

    def __init__(self, model: nn.Module, objective: nn.Module, optimizer: torch.optim.Optimizer,
                 schedule: StepSchedule, context: DistContext, run: RunConfig,
                 run_dir: Optional[Path]) -> None:
        """Wrap ``objective`` (holding ``model``) in DDP when several ranks take part."""
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.context, self.run, self.run_dir = context, run, run_dir
        objective.to(context.device)
        self.net = objective
        if context.enabled:
            device_ids = [context.device.index] if context.device.type == 'cuda' else None
            self.net = DistributedDataParallel(objective, device_ids=device_ids)
        self.position = Position()
        self.saved_at: Optional[Position] = None
        self.bad_steps = 0
        self.scalars = ScalarLog(run_dir if context.is_main else None)
        self.params = [p for p in model.parameters() if p.requires_grad]

    def autocast(self):
        """Return the bf16 autocast context on CUDA when requested, else a no-op context."""
        if self.run.precision == 'bf16' and self.context.device.type == 'cuda':
            return torch.autocast('cuda', dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def to_device(self, batch: Iterable) -> list:
        """Move every tensor of ``batch`` to this rank's device."""
        pin = self.context.device.type == 'cuda'
        return [t.to(self.context.device, non_blocking=pin) for t in batch]

    def step(self, batch: Iterable) -> Optional[dict[str, float]]:
        """Run one guarded optimiser step; return the logged scalars, or None when skipped."""
        values = self.schedule.apply(self.optimizer, self.position.step)
        self.net.train()
        with self.autocast():
            objective, scalars = self.net(*self.to_device(batch))
        if not all_ranks_true(bool(torch.isfinite(objective).item()), self.context.device):
            return self.skip('loss', float(objective.detach()))
        objective.backward()
        limit = self.run.clip_grad if self.run.clip_grad > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.params, limit)
        if not math.isfinite(float(norm)):
            return self.skip('gradient norm', float(norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.bad_steps = 0
        return {**{k: float(v) for k, v in scalars.items()}, **values, 'grad_norm': float(norm)}

    def skip(self, what: str, value: float) -> None:
        """Drop this step's gradients; raise after ``max_bad_steps`` consecutive skips."""
        self.optimizer.zero_grad(set_to_none=True)
        self.bad_steps += 1
        LOGGER.warning('step %d skipped: non-finite %s (%s), %d in a row', self.position.step,
                       what, value, self.bad_steps)
        if self.bad_steps >= self.run.max_bad_steps:
            raise TrainingError(f'{self.bad_steps} consecutive steps had a non-finite {what}; '
                                f'stopping at step {self.position.step}')
        return None

    def fit(self, loader: Iterable, sampler: GlobalBatchSampler, epochs: int,
            on_epoch_end: Callable[[int], None] = lambda epoch: None,
            progress: Progress = no_progress) -> Position:
        """Train until ``epochs`` are done or ``run.max_steps`` steps were taken."""
        while self.position.epoch < epochs and not self.reached_max_steps():
            sampler.set_epoch(self.position.epoch, skip=self.position.batch)
            for batch in progress(loader, len(sampler) - self.position.batch):
                self.after_step(self.step(batch))
                if self.reached_max_steps():
                    break
            if self.position.batch >= len(sampler):
                self.end_epoch(on_epoch_end)
        self.save_state()
        return self.position

    def after_step(self, scalars: Optional[dict[str, float]]) -> None:
        """Advance the position and log scalars every ``run.log_every`` steps."""
        self.position.batch += 1
        if scalars is None:
            return
        self.position.step += 1
        if self.position.step % self.run.log_every == 0 or self.position.step == 1:
            self.scalars.log(self.position.step, scalars)
            LOGGER.info('epoch %d step %d: %s', self.position.epoch, self.position.step,
                        ', '.join(f'{k} {v:.4g}' for k, v in scalars.items()))

    def end_epoch(self, on_epoch_end: Callable[[int], None]) -> None:
        """Finish an epoch: the stage's hook, then the rolling training state."""
        epoch = self.position.epoch
        self.position.epoch, self.position.batch = epoch + 1, 0
        on_epoch_end(epoch)
        if (epoch + 1) % self.run.save_every_epochs == 0:
            self.save_state()

    def reached_max_steps(self) -> bool:
        """Return True once ``run.max_steps`` (when set) optimiser steps were taken."""
        return 0 < self.run.max_steps <= self.position.step

    def save_state(self) -> None:
        """Write ``state.pt`` (weights, optimiser, position) on rank 0."""
        if self.run_dir is None or not self.context.is_main or self.saved_at == self.position:
            return
        self.saved_at = Position(**vars(self.position))
        state = {'model': self.model.state_dict(), 'optimizer': self.optimizer.state_dict(),
                 'epoch': self.position.epoch, 'batch': self.position.batch,
                 'step': self.position.step}
        save_state_atomic(state, self.run_dir / STATE_FILE)
        LOGGER.info('saved training state at epoch %d, step %d', self.position.epoch,
                    self.position.step)

    def load_state(self, path: Path) -> None:
        """Resume from a ``state.pt`` written by :meth:`save_state` (``weights_only`` load)."""
        try:
            state = torch.load(path, map_location='cpu', weights_only=True)
            self.model.load_state_dict(state['model'])
            self.optimizer.load_state_dict(state['optimizer'])
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            raise TrainingError(f'cannot resume from {path}: {exc}') from exc
        self.position = Position(int(state['epoch']), int(state['batch']), int(state['step']))
        LOGGER.info('resumed from %s at epoch %d, step %d', path, self.position.epoch,
                    self.position.step)

    def close(self) -> None:
        """Close the scalar log."""
        self.scalars.close()
