"""A real learning signal: two-stage training beats the untrained model on held-out places.

The tiny recipes train on one set of places and are evaluated on places never seen in training;
the untrained model (same architecture and seed, random weights) is measured in the same test.
"""

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from training_fixtures import CONFIGS, quiet
from training_fixtures import one_thread  # noqa: F401  (autouse fixture)
from vpr_ros.models.checkpoint import load_checkpoint
from vpr_ros_training.config import load_config, StageOneConfig, StageTwoConfig
from vpr_ros_training.evaluation import evaluate
from vpr_ros_training.initialization import build_model
from vpr_ros_training.sources import load_eval_sets
from vpr_ros_training.stage_one import run_stage_one
from vpr_ros_training.stage_two import run_stage_two


def train_two_stages(tmp_path: Path, overrides: list[str], one_overrides: list[str],
                     two_overrides: list[str]) -> tuple[StageTwoConfig, Path]:
    """Run both tiny stages; return the stage-two config and the exported checkpoint."""
    common = [f'run.output_root={tmp_path}', 'run.log_every=50', *overrides]
    one = load_config(StageOneConfig, CONFIGS / 'tiny_stage_one.yaml', common + one_overrides)
    first = run_stage_one(one, progress=quiet)
    two = load_config(StageTwoConfig, CONFIGS / 'tiny_stage_two.yaml',
                      common + two_overrides + ['evaluation.sources=[]',
                                                f'model.init_checkpoint={first}/'
                                                'stage_one.safetensors'])
    second = run_stage_two(two, progress=quiet)
    return two, second / 'model.safetensors'


def before_and_after(two: StageTwoConfig, checkpoint: Path, eval_sources: str) -> tuple:
    """Evaluate the untrained and the trained model on the held-out set."""
    eval_set = load_eval_sets(load_config(StageTwoConfig, None, [
        f'evaluation.sources={eval_sources}']).evaluation.sources)[0]
    torch.manual_seed(two.run.seed)
    untrained = build_model(replace(two.model, init_checkpoint=''))
    before = evaluate(untrained, eval_set, top_k=1000)
    after = evaluate(load_checkpoint(checkpoint), eval_set, top_k=1000)
    return before, after


def test_training_beats_the_untrained_model_on_held_out_places(tmp_path: Path) -> None:
    """Procedural places: held-out Recall@1 and pair ROC-AUC rise well above the untrained."""
    two, checkpoint = train_two_stages(tmp_path, [], [], [])
    held_out = '[{kind: synthetic, num_places: 24, images_per_place: 3, image_size: 64, seed: 2}]'
    before, after = before_and_after(two, checkpoint, held_out)
    print(f'untrained {before}\ntrained {after}')
    assert after['global_r@1'] >= before['global_r@1'] + 10.0
    assert after['pair_auc'] >= before['pair_auc'] + 0.1
    assert after['reranked_r@1'] > before['reranked_r@1']


@pytest.mark.slow
def test_corridor_training_beats_the_untrained_model(tmp_path: Path, corridor_dir: Path) -> None:
    """Corridor: train on frames 0-69 of both traversals, evaluate frames 70-110."""
    train = ('[{kind: traversal, root: %s, frames_per_place: 2, first_frame: 0, '
             'stop_frame: 70}]' % corridor_dir)
    held_out = '[{kind: traversal, root: %s, first_frame: 70, stop_frame: 111}]' % corridor_dir
    two, checkpoint = train_two_stages(
        tmp_path, [f'data.sources={train}'], ['optim.epochs=60'],
        ['optim.epochs=30', 'optim.schedule_iters=270', 'run.batch_size_per_gpu=4'])
    before, after = before_and_after(two, checkpoint, held_out)
    print(f'untrained {before}\ntrained {after}')
    assert after['global_r@1'] > before['global_r@1']
    assert after['pair_auc'] > before['pair_auc']
