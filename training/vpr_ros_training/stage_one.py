"""Stage one: place-aware Siamese masked image modelling (``python -m ...stage_one``).

Each sample is two images of one place. 90 % of the first image's patches are replaced by the
encoder's mask token; the decoder (no CLS token) sees the masked first image's tokens and, through
cross-attention, the unmasked second image's tokens, and regresses the per-patch-normalised pixels
of the first image; the loss is the MSE over masked patches. AdamW, learning rate
``base_lr * sqrt(global_batch / 1024)``, per-iteration cosine schedule with warm-up, weight decay
cosine 0.04 -> 0.4, layer-wise LR decay, patch-embedding LR x0.2; only the last
``num_trainable_blocks`` encoder blocks (and the decoder) train. The run folder receives
``stage_one.safetensors`` (vpr_ros checkpoint format) that stage two starts from.
"""

import logging
import math
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from vpr_ros.models.checkpoint import save_checkpoint
from vpr_ros.models.dinov2 import PATCH_SIZE
from vpr_ros_training.augmentation import PairAugmentation
from vpr_ros_training.command_line import run_stage_command, tqdm_progress
from vpr_ros_training.config import StageOneConfig, StageOneOptim
from vpr_ros_training.datasets import GlobalBatchSampler, make_loader, PairDataset
from vpr_ros_training.distributed import all_reduce_sum, barrier, DistContext
from vpr_ros_training.initialization import build_model, load_initial_weights
from vpr_ros_training.losses import reconstruction_loss
from vpr_ros_training.schedules import (apply_schedule, cosine_schedule, layer_decay_groups,
                                        schedule_value)
from vpr_ros_training.session import open_session
from vpr_ros_training.sources import load_places
from vpr_ros_training.trainer import freeze_unreached, no_progress, Progress, Trainer

LOGGER = logging.getLogger(__name__)

STAGE = 'stage_one'
CHECKPOINT = 'stage_one.safetensors'


class StageOneObjective(nn.Module):
    """Masked reconstruction loss of a Pair-VPR model on a batch of pairs."""

    def __init__(self, model: nn.Module) -> None:
        """Wrap ``model`` (it must implement ``reconstruct``)."""
        super().__init__()
        self.model, self.patch_size = model, reconstruction_patch(model)

    def forward(self, first: torch.Tensor, second: torch.Tensor, mask: torch.Tensor,
                source: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Return ``(loss, {'loss': mean over ranks})`` for one batch of pairs."""
        prediction = self.model.reconstruct(first, mask, second)
        loss = reconstruction_loss(prediction, first, mask, self.patch_size)
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        return loss, {'loss': all_reduce_sum(loss) / world}


def reconstruction_patch(model: nn.Module) -> int:
    """Return the pixel patch side the model's reconstruction head predicts (14 for ViTs)."""
    head = getattr(getattr(model, 'decoder', None), 'prediction_head', None)
    if head is None:
        return PATCH_SIZE
    return int(round(math.sqrt(head.out_features // 3)))


def reconstruction_probe(model: nn.Module) -> torch.Tensor:
    """Return a scalar that depends on every parameter stage one trains."""
    device = next(model.parameters()).device
    images = torch.zeros(2, 3, *model.spec.input_size, device=device)
    mask = torch.zeros(2, model.spec.num_tokens, dtype=torch.bool, device=device)
    mask[:, ::2] = True
    return model.reconstruct(images, mask, images).float().sum()


class CosineSchedules:
    """Per-iteration cosine learning rate (with warm-up) and weight decay of stage one."""

    def __init__(self, optim: StageOneOptim, global_batch: int, epoch_length: int) -> None:
        """Build both schedules over ``optim.epochs * epoch_length`` iterations."""
        total = optim.epochs * epoch_length
        self.base_lr = optim.scaled_lr(global_batch)
        self.lr = cosine_schedule(self.base_lr, optim.min_lr, total,
                                  int(optim.warmup_epochs * epoch_length))
        self.wd = cosine_schedule(optim.weight_decay, optim.weight_decay_end, total)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> dict[str, float]:
        """Set the scheduled values for ``step``."""
        lr, wd = schedule_value(self.lr, step), schedule_value(self.wd, step)
        apply_schedule(optimizer, lr, wd)
        return {'lr': lr, 'weight_decay': wd}


def build_loader(config: StageOneConfig, model: nn.Module, context: DistContext):
    """Return ``(loader, sampler)`` of augmented, masked pairs for this rank."""
    places = load_places(config.data.sources)
    spec = model.spec
    dataset = PairDataset(places, PairAugmentation(spec.input_size, spec.mean, spec.std),
                          spec.num_tokens, config.optim.mask_ratio)
    sampler = GlobalBatchSampler(len(places), config.run.batch_size_per_gpu, context.world_size,
                                 context.rank, config.data.shuffle, config.run.seed)
    LOGGER.info('%d places (%s); %d global batches of %d pairs per epoch', len(places),
                places.name, len(sampler), sampler.global_batch)
    loader = make_loader(dataset, sampler, config.data.num_workers,
                         context.device.type == 'cuda')
    return loader, sampler


def build_optimizer(model: nn.Module, optim: StageOneOptim) -> torch.optim.AdamW:
    """Return AdamW over layer-decay parameter groups (LR/WD set per step by the schedule)."""
    groups = layer_decay_groups(model, optim.layer_decay, optim.patch_embed_lr_mult)
    return torch.optim.AdamW(groups, lr=optim.base_lr, betas=(optim.beta1, optim.beta2))


def prepare_model(config: StageOneConfig, context: DistContext) -> nn.Module:
    """Build the model, load initial weights and freeze what stage one does not train."""
    model = build_model(config.model)
    if config.model.init_checkpoint:
        load_initial_weights(model, config.model.init_checkpoint, stage=1)
    model.to(context.device)
    freeze_unreached(model, reconstruction_probe)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    LOGGER.info('%s: %.2f M trainable parameters', config.model.name, trainable / 1e6)
    return model


def train_stage_one(config: StageOneConfig, context: DistContext, run_dir: Path,
                    resume_state: Optional[Path] = None,
                    progress: Progress = no_progress) -> Path:
    """Train stage one in ``run_dir``; return the path of the exported checkpoint."""
    model = prepare_model(config, context)
    loader, sampler = build_loader(config, model, context)
    schedule = CosineSchedules(config.optim, sampler.global_batch, len(sampler))
    LOGGER.info('peak learning rate %.3g (sqrt-scaled for a global batch of %d)',
                schedule.base_lr, sampler.global_batch)
    trainer = Trainer(model, StageOneObjective(model), build_optimizer(model, config.optim),
                      schedule, context, config.run, run_dir)
    if resume_state is not None:
        trainer.load_state(resume_state)

    def on_epoch_end(epoch: int) -> None:
        if context.is_main and (epoch + 1) % config.run.keep_every_epochs == 0:
            save_checkpoint(model, run_dir / f'stage_one_epoch{epoch + 1:04d}.safetensors')

    trainer.fit(loader, sampler, config.optim.epochs, on_epoch_end, progress)
    trainer.close()
    if context.is_main:
        save_checkpoint(model, run_dir / CHECKPOINT)
    barrier(context)
    return run_dir / CHECKPOINT


def run_stage_one(config: StageOneConfig, resume: str = '',
                  progress: Progress = no_progress) -> Path:
    """Run stage one in a new (or resumed) run folder; return the folder."""
    with open_session(config, STAGE, resume) as session:
        train_stage_one(config, session.context, session.run_dir, session.resume_state,
                        progress)
        return session.run_dir


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point: ``python -m vpr_ros_training.stage_one --config FILE``."""
    run_dir = run_stage_command('Pair-VPR stage one: Siamese masked image modelling',
                                StageOneConfig, lambda config, resume: run_stage_one(
                                    config, resume, tqdm_progress()), argv)
    print(f'stage one finished: {run_dir / CHECKPOINT}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
