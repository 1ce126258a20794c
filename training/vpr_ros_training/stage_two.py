"""Stage two: joint global-descriptor and pair-classifier training (``python -m ...stage_two``).

Batches are ``P`` places x ``K`` (4) images per rank. Every rank gathers the descriptors, patch
tokens and labels of the whole global batch, so mining sees exactly the batch one process would
see. ``L = L_MS + 2 * L_pair`` (see :mod:`vpr_ros_training.losses`): the multi-similarity loss is
computed on the gathered descriptors by every rank; each rank scores the pair classifier for the
batch-hard triplets whose anchor it owns (positives and negatives may live on other ranks; their
tokens come through the differentiable gather, so the gradient reaches the rank that encoded
them). The per-rank objective ``L_MS + 2 * W * L_pair(rank)`` makes DDP's gradient average equal
the gradient of ``L`` on the global batch. AdamW (lr 8e-5, weight decay 0.05), LinearLR 1 -> 0.2
per iteration, bf16 autocast on CUDA, non-finite guards and clipping in the trainer. Writes
``model.safetensors`` (the checkpoint format the vpr_ros nodes load) and ``export.json``.
"""

import json
import logging
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from vpr_ros.models.checkpoint import save_checkpoint
from vpr_ros_training.augmentation import PlaceAugmentation
from vpr_ros_training.command_line import run_stage_command, tqdm_progress
from vpr_ros_training.config import config_as_dict, StageTwoConfig, StageTwoOptim
from vpr_ros_training.datasets import GlobalBatchSampler, make_loader, PlaceDataset
from vpr_ros_training.distributed import (all_reduce_sum, barrier, DistContext, gather_labels,
                                          gather_with_grad)
from vpr_ros_training.evaluation import evaluate
from vpr_ros_training.initialization import build_model, load_initial_weights
from vpr_ros_training.losses import batch_hard_triplets, GlobalLoss, pair_bce
from vpr_ros_training.run_folder import write_json_atomic
from vpr_ros_training.session import open_session
from vpr_ros_training.sources import load_eval_sets, load_places
from vpr_ros_training.trainer import freeze_unreached, no_progress, Progress, Trainer

LOGGER = logging.getLogger(__name__)

STAGE = 'stage_two'
CHECKPOINT = 'model.safetensors'


def world_and_rank() -> tuple[int, int]:
    """Return ``(world size, rank)`` of the running process group, ``(1, 0)`` without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


class StageTwoObjective(nn.Module):
    """Joint multi-similarity + pair-BCE objective over the global batch."""

    def __init__(self, model: nn.Module, optim: StageTwoOptim) -> None:
        """Wrap ``model`` (``describe`` and ``pair_logit``) with the configured losses."""
        super().__init__()
        self.model, self.pair_weight = model, optim.pair_loss_weight
        self.global_loss = GlobalLoss(optim.ms_alpha, optim.ms_beta, optim.ms_base,
                                      optim.miner_epsilon)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Return ``(per-rank objective, scalars)`` for ``images`` ``[P, K, 3, H, W]``."""
        images, labels = images.flatten(0, 1), labels.flatten()
        descriptors, tokens = self.model.describe(images)
        world, rank = world_and_rank()
        all_desc = gather_with_grad(descriptors.float())
        all_tokens, all_labels = gather_with_grad(tokens), gather_labels(labels)
        ms_loss, inactive = self.global_loss(all_desc, all_labels)
        triplets = batch_hard_triplets(all_desc, all_labels)
        local = triplets.restricted(rank * len(labels), (rank + 1) * len(labels))
        anchors = all_tokens[local.anchors]
        logits = self.model.pair_logit(torch.cat([anchors, anchors]),
                                       all_tokens[torch.cat([local.positives, local.negatives])])
        positive, negative = logits.float().split(len(local))
        pair_loss = pair_bce(positive, negative, normaliser=2 * len(triplets))
        objective = ms_loss + self.pair_weight * world * pair_loss
        pair_total = all_reduce_sum(pair_loss)
        correct = all_reduce_sum((positive > 0).sum() + (negative < 0).sum()).float()
        return objective, {'loss': ms_loss.detach() + self.pair_weight * pair_total,
                           'loss/global': ms_loss.detach(), 'loss/pair': pair_total,
                           'pair/accuracy': correct / (2 * len(triplets)),
                           'mining/inactive_anchors': torch.tensor(inactive)}


def joint_probe(model: nn.Module) -> torch.Tensor:
    """Return a scalar that depends on every parameter stage two trains."""
    device = next(model.parameters()).device
    descriptors, tokens = model.describe(torch.zeros(2, 3, *model.spec.input_size,
                                                     device=device))
    return descriptors.float().sum() + model.pair_logit(tokens, tokens.flip(0)).float().sum()


class LinearSchedule:
    """``LinearLR``: the learning rate goes linearly from ``start`` to ``end`` times ``lr``."""

    def __init__(self, lr: float, start: float, end: float, total_iters: int) -> None:
        """Store the schedule (identical to ``torch.optim.lr_scheduler.LinearLR``)."""
        self.base, self.start, self.end, self.total = lr, start, end, total_iters

    def factor(self, step: int) -> float:
        """Return the LR factor after ``step`` scheduler steps."""
        return self.start + (self.end - self.start) * min(step, self.total) / self.total

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> dict[str, float]:
        """Set every group's learning rate for ``step``."""
        lr = self.base * self.factor(step)
        for group in optimizer.param_groups:
            group['lr'] = lr
        return {'lr': lr}


def prepare_model(config: StageTwoConfig, context: DistContext) -> nn.Module:
    """Build the model, hand over the stage-one weights and freeze what stage two ignores."""
    model = build_model(config.model)
    if config.model.init_checkpoint:
        load_initial_weights(model, config.model.init_checkpoint, stage=2,
                             mode=config.model.init_mode)
    else:
        LOGGER.warning('model.init_checkpoint is empty: stage two starts without stage one')
    model.to(context.device)
    freeze_unreached(model, joint_probe)
    return model


def build_loader(config: StageTwoConfig, model: nn.Module, context: DistContext):
    """Return ``(loader, sampler)`` yielding ``P`` places x ``K`` images for this rank."""
    places = load_places(config.data.sources)
    spec = model.spec
    augmentation = PlaceAugmentation(spec.input_size, spec.mean, spec.std,
                                     config.data.randaugment_ops,
                                     config.data.randaugment_magnitude)
    dataset = PlaceDataset(places, augmentation, config.optim.images_per_place)
    sampler = GlobalBatchSampler(len(places), config.run.batch_size_per_gpu, context.world_size,
                                 context.rank, config.data.shuffle, config.run.seed)
    if sampler.global_batch < 2:
        raise ValueError('stage two needs at least 2 places per global batch for negatives')
    LOGGER.info('%d places (%s); %d global batches of %d places x %d images', len(places),
                places.name, len(sampler), sampler.global_batch, config.optim.images_per_place)
    loader = make_loader(dataset, sampler, config.data.num_workers,
                         context.device.type == 'cuda')
    return loader, sampler


def evaluate_all(model: nn.Module, config: StageTwoConfig,
                 device: torch.device) -> dict[str, float]:
    """Evaluate ``model`` on every held-out source; keys are prefixed by the set's name."""
    results = {}
    for eval_set in load_eval_sets(config.evaluation.sources):
        metrics = evaluate(model, eval_set, config.evaluation.top_k,
                           config.evaluation.batch_size, device)
        results.update({f'eval/{eval_set.name}/{k}': v for k, v in metrics.items()})
        LOGGER.info('%s: %s', eval_set.name, ', '.join(f'{k} {v:.2f}' for k, v in
                                                       metrics.items()))
    return results


def train_stage_two(config: StageTwoConfig, context: DistContext, run_dir: Path,
                    resume_state: Optional[Path] = None,
                    progress: Progress = no_progress) -> Path:
    """Train stage two in ``run_dir``; return the exported checkpoint path."""
    model = prepare_model(config, context)
    loader, sampler = build_loader(config, model, context)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    schedule = LinearSchedule(config.optim.lr, 1.0, config.optim.end_factor,
                              config.optim.schedule_iters)
    trainer = Trainer(model, StageTwoObjective(model, config.optim), optimizer, schedule,
                      context, config.run, run_dir)
    if resume_state is not None:
        trainer.load_state(resume_state)
    results: dict[str, float] = {}

    def evaluate_now() -> None:
        if not config.evaluation.sources:
            return
        results.clear()
        results.update(evaluate_all(model, config, context.device))
        results['step'] = trainer.position.step
        trainer.scalars.log(trainer.position.step, results)

    def on_epoch_end(epoch: int) -> None:
        if context.is_main:
            evaluate_now()
            save_checkpoint(model, run_dir / f'model_epoch{epoch + 1:03d}.safetensors')
        barrier(context)

    trainer.fit(loader, sampler, config.optim.epochs, on_epoch_end, progress)
    if context.is_main:
        if results.get('step', -1) != trainer.position.step:
            evaluate_now()
        export(model, config, run_dir, results)
    trainer.close()
    barrier(context)
    return run_dir / CHECKPOINT


def export(model: nn.Module, config: StageTwoConfig, run_dir: Path,
           results: dict[str, float]) -> Path:
    """Write ``model.safetensors`` for the nodes and ``export.json`` (settings, last metrics)."""
    path = save_checkpoint(model, run_dir / CHECKPOINT)
    write_json_atomic(run_dir / 'export.json', {
        'checkpoint': path.name, 'architecture': model.spec.architecture,
        'spec': json.loads(model.spec.to_json()),
        'localizer': {'top_k': config.evaluation.top_k, 'rerank': True},
        'evaluation': results, 'model_config': config_as_dict(config.model)})
    LOGGER.info('exported %s', path)
    return path


def run_stage_two(config: StageTwoConfig, resume: str = '',
                  progress: Progress = no_progress) -> Path:
    """Run stage two in a new (or resumed) run folder; return the folder."""
    with open_session(config, STAGE, resume) as session:
        train_stage_two(config, session.context, session.run_dir, session.resume_state,
                        progress)
        return session.run_dir


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point: ``python -m vpr_ros_training.stage_two --config FILE``."""
    run_dir = run_stage_command('Pair-VPR stage two: joint global and pair-classifier training',
                                StageTwoConfig, lambda config, resume: run_stage_two(
                                    config, resume, tqdm_progress()), argv)
    print(f'stage two finished: {run_dir / CHECKPOINT}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
