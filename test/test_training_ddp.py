"""DDP on CPU (gloo, 2 processes under torchrun) equals one process on the same global batch."""

import json
import os
from pathlib import Path
import subprocess
import sys

from conftest import REPO_ROOT
import pytest
from safetensors.torch import load_file
import torch
from training_fixtures import CONFIGS

WORKER = Path(__file__).with_name('training_ddp_worker.py')
TIMEOUT_S = 300


def torchrun(nproc: int, args: list[str], cwd: Path) -> None:
    """Run ``args`` under ``torchrun --standalone`` with ``nproc`` CPU processes."""
    path = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / 'training'), str(REPO_ROOT / 'test'),
                            os.environ.get('PYTHONPATH', '')])
    env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone',
               f'--nproc_per_node={nproc}', *args]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.parametrize('stage, global_batch', [('two', 8), ('one', 16)])
def test_ddp_loss_and_gradients_equal_one_process(tmp_path: Path, stage: str,
                                                  global_batch: int) -> None:
    """Two gloo ranks with half the batch each: same loss and same averaged gradients."""
    outputs = {}
    for nproc in (1, 2):
        out = tmp_path / f'{nproc}.safetensors'
        torchrun(nproc, [str(WORKER), stage, str(global_batch), str(out)], tmp_path)
        outputs[nproc] = load_file(str(out))
    single, double = outputs[1], outputs[2]
    assert set(single) == set(double)
    assert double['scalar/loss'].item() == pytest.approx(single['scalar/loss'].item(), rel=1e-5)
    gradients = [k for k in single if not k.startswith('scalar/')]
    assert len(gradients) > 20
    scale = max(single[key].abs().max().item() for key in gradients)
    for key in gradients:
        assert torch.allclose(double[key], single[key], rtol=1e-3, atol=1e-6 * scale), key


def test_torchrun_stage_two_cli_matches_one_process(tmp_path: Path) -> None:
    """The stage-two CLI under torchrun logs the same losses as one process for 2 steps."""
    logs = {}
    for nproc in (1, 2):
        root = tmp_path / f'ranks{nproc}'
        torchrun(nproc, ['-m', 'vpr_ros_training.stage_two', '--config',
                         str(CONFIGS / 'tiny_stage_two.yaml'), '--set', f'run.output_root={root}',
                         '--set', f'run.batch_size_per_gpu={8 // nproc}', '--set',
                         'run.max_steps=2', '--set', 'run.log_every=1', '--set',
                         'evaluation.sources=[]'], tmp_path)
        (run_dir,) = root.iterdir()
        logs[nproc] = [json.loads(line) for line in (run_dir / 'scalars.jsonl').open()]
        assert json.loads((run_dir / 'run.json').read_text())['world_size'] == nproc
    assert [r['step'] for r in logs[2]] == [1, 2]
    for one, two in zip(logs[1], logs[2]):
        for key in ('loss', 'loss/global', 'loss/pair', 'pair/accuracy'):
            assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), key
