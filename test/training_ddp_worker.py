"""Worker of test_training_ddp.py: one DDP forward/backward on a fixed global batch.

Run under torchrun: ``python -m torch.distributed.run --nproc_per_node N training_ddp_worker.py
STAGE GLOBAL_BATCH OUT``. Every rank takes its slice of the first global batch of the tiny recipe,
runs the stage's objective through the trainer's DDP wrapper and back-propagates; rank 0 writes
the reported loss and every parameter's (all-reduced) gradient to ``OUT`` (safetensors).
"""

import sys

from safetensors.torch import save_file
import torch
from training_fixtures import CONFIGS
from vpr_ros_training import stage_one, stage_two
from vpr_ros_training.config import load_config, StageOneConfig, StageTwoConfig
from vpr_ros_training.distributed import init_distributed, shutdown
from vpr_ros_training.run_folder import make_deterministic
from vpr_ros_training.trainer import Trainer

STAGES = {'one': (stage_one, StageOneConfig, 'tiny_stage_one.yaml'),
          'two': (stage_two, StageTwoConfig, 'tiny_stage_two.yaml')}


def main(stage: str, global_batch: int, out: str) -> None:
    """Write loss and gradients of one step of ``stage`` on the first global batch."""
    torch.set_num_threads(1)
    module, config_class, recipe = STAGES[stage]
    context = init_distributed('cpu')
    per_rank = global_batch // context.world_size
    config = load_config(config_class, CONFIGS / recipe,
                         [f'run.batch_size_per_gpu={per_rank}', 'data.num_workers=0'])
    make_deterministic(config.run.seed)
    model = module.prepare_model(config, context)
    loader, _ = module.build_loader(config, model, context)
    objective = (stage_one.StageOneObjective(model) if stage == 'one'
                 else stage_two.StageTwoObjective(model, config.optim))
    trainer = Trainer(model, objective, torch.optim.SGD(model.parameters(), lr=0.0),
                      stage_two.LinearSchedule(0.0, 1.0, 1.0, 1), context, config.run, None)
    loss, scalars = trainer.net(*next(iter(loader)))
    loss.backward()
    if context.is_main:
        tensors = {name: p.grad.contiguous() for name, p in model.named_parameters()
                   if p.grad is not None}
        tensors.update({f'scalar/{k}': torch.as_tensor(v).reshape(1).float()
                        for k, v in scalars.items()})
        save_file(tensors, out)
    shutdown(context)


if __name__ == '__main__':
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
