"""Export a run's ``state.pt`` to the checkpoint format the vpr_ros nodes load.

Both stages export at the end of training; this command converts any saved training state (an
interrupted run, an intermediate epoch) without training: ``python -m vpr_ros_training.export
RUN_DIR [--out FILE]``.
"""

import argparse
from pathlib import Path
from typing import Optional, Sequence

import torch
from vpr_ros.errors import ConfigError
from vpr_ros.models.checkpoint import save_checkpoint
from vpr_ros.models.registry import create_model
from vpr_ros_training.config import load_config, StageOneConfig, StageTwoConfig
from vpr_ros_training.trainer import STATE_FILE


def read_run_config(run_dir: Path):
    """Return the stage-two or stage-one config saved in ``run_dir/config.yaml``."""
    errors = []
    for config_class in (StageTwoConfig, StageOneConfig):
        try:
            return load_config(config_class, run_dir / 'config.yaml')
        except ConfigError as exc:
            errors.append(str(exc))
    raise ConfigError(f'{run_dir}/config.yaml is not a stage config: {"; ".join(errors)}')


def export_run(run_dir: str | Path, out: Optional[str | Path] = None) -> Path:
    """Write the weights of ``run_dir/state.pt`` as a vpr_ros checkpoint; return its path."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    model = create_model(config.model.name, **config.model.options)
    state = torch.load(run_dir / STATE_FILE, map_location='cpu', weights_only=True)
    model.load_state_dict(state['model'], strict=True)
    return save_checkpoint(model, Path(out) if out else run_dir / 'model.safetensors')


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description='Export a training run to a vpr_ros checkpoint')
    parser.add_argument('run_dir', help='run folder holding config.yaml and state.pt')
    parser.add_argument('--out', default=None,
                        help='checkpoint to write; default: RUN_DIR/model.safetensors')
    args = parser.parse_args(argv)
    print(f'wrote {export_run(args.run_dir, args.out)}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
