"""Tiny Pair-VPR training end to end on CPU: both stages, run folder, resume, export, guards."""

from dataclasses import replace
import importlib.util
import json
import logging
from pathlib import Path
import sys

import pytest
from safetensors.torch import load_file, save_file
import torch
from training_fixtures import CONFIGS, quiet
from training_fixtures import one_thread  # noqa: F401  (autouse fixture)
from vpr_ros.errors import CheckpointError
from vpr_ros.models.checkpoint import load_checkpoint
from vpr_ros.models.official_weights import to_official_state_dict
from vpr_ros.models.pair_decoder import interpolate_decoder_pos_embed
from vpr_ros_training.config import load_config, RunConfig, StageOneConfig, StageTwoConfig
from vpr_ros_training.distributed import DistContext
from vpr_ros_training.export import export_run
from vpr_ros_training.initialization import build_model, hand_over, load_initial_weights
from vpr_ros_training.run_folder import ScalarLog
from vpr_ros_training.stage_one import run_stage_one
from vpr_ros_training.stage_two import LinearSchedule, run_stage_two
from vpr_ros_training.trainer import Trainer, TrainingError

ROUTE = '{kind: route, seed: %d, frames: 40, image_size: [48, 64], spacing_m: 3.0}'


def stage_configs(tmp_path: Path, sources: str, eval_sources: str, steps: int,
                  extra: tuple = ()) -> tuple[StageOneConfig, StageTwoConfig]:
    """Return the tiny recipes on ``sources`` stopping after ``steps`` optimiser steps."""
    common = [f'run.output_root={tmp_path}', f'run.max_steps={steps}', 'run.log_every=1',
              f'data.sources={sources}', *extra]
    one = load_config(StageOneConfig, CONFIGS / 'tiny_stage_one.yaml',
                      common + ['run.batch_size_per_gpu=8'])
    two = load_config(StageTwoConfig, CONFIGS / 'tiny_stage_two.yaml',
                      common + ['run.batch_size_per_gpu=4', f'evaluation.sources={eval_sources}'])
    return one, two


def run_both(one: StageOneConfig, two: StageTwoConfig) -> tuple[Path, Path]:
    """Run stage one, then stage two from its checkpoint; return both run folders."""
    first = run_stage_one(one, progress=quiet)
    second = run_stage_two(_with_init(two, first / 'stage_one.safetensors'), progress=quiet)
    return first, second


def _with_init(config: StageTwoConfig, checkpoint: Path) -> StageTwoConfig:
    """Return ``config`` starting from ``checkpoint``."""
    return replace(config, model=replace(config.model, init_checkpoint=str(checkpoint)))


def scalars(run_dir: Path) -> list[dict]:
    """Return the logged scalar records of a run."""
    return [json.loads(line) for line in (run_dir / 'scalars.jsonl').read_text().splitlines()]


def test_tiny_two_stage_run_on_rendered_route(tmp_path: Path) -> None:
    """Stage one then stage two on the project's rendered route; the export loads in the core."""
    one, two = stage_configs(tmp_path, f'[{ROUTE % 1}]', f'[{ROUTE % 2}]', steps=3)
    first, second = run_both(one, two)
    for folder in (first, second):
        assert {'config.yaml', 'run.json', 'info.log', 'debug.log', 'scalars.jsonl',
                'state.pt'} <= {p.name for p in folder.iterdir()}
        info = json.loads((folder / 'run.json').read_text())
        assert info['seed'] == 0 and 'commit' in info and info['world_size'] == 1
    losses = [r['loss'] for r in scalars(first)]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert 'decoder positional table (16, 64) -> (25, 64)' in (second / 'info.log').read_text()
    model = load_checkpoint(second / 'model.safetensors')
    assert model.spec.input_size == (70, 70) and model.spec.descriptor_dim == 64
    global_desc, tokens = model.describe(torch.zeros(2, 3, 70, 70))
    assert global_desc.shape == (2, 64) and tokens.shape == (2, 25, 64)
    exported = json.loads((second / 'export.json').read_text())
    assert exported['localizer']['top_k'] == 100
    assert any(k.endswith('pair_auc') for k in exported['evaluation'])
    again = export_run(second, tmp_path / 'again.safetensors')
    reference = load_file(str(second / 'model.safetensors'))
    assert all(torch.equal(v, reference[k]) for k, v in load_file(str(again)).items())


def test_resume_reproduces_an_uninterrupted_run(tmp_path: Path) -> None:
    """Two steps + resume for two more equals four steps straight (weights and optimiser)."""
    sources = '[{kind: synthetic, num_places: 16, images_per_place: 4, image_size: 32}]'
    _, straight = stage_configs(tmp_path / 'a', sources, '[]', steps=4)
    _, half = stage_configs(tmp_path / 'b', sources, '[]', steps=2)
    full_dir = run_stage_two(straight, progress=quiet)
    half_dir = run_stage_two(half, progress=quiet)
    run_stage_two(straight, resume=str(half_dir), progress=quiet)
    full, resumed = (torch.load(d / 'state.pt', weights_only=True) for d in (full_dir, half_dir))
    assert resumed['step'] == full['step'] == 4
    for key, value in full['model'].items():
        assert torch.allclose(value, resumed['model'][key], atol=1e-6), key


def stage_one_state(tmp_path: Path) -> dict:
    """Return the state dict of a freshly built tiny stage-one model."""
    one, _ = stage_configs(tmp_path, '[]', '[]', steps=1)
    return {k: v.clone() for k, v in build_model(one.model).state_dict().items()}


def test_hand_over_interpolates_and_refuses_missing_weights(tmp_path: Path) -> None:
    """The 4x4 decoder table is resized to 5x5 + CLS; missing encoder/decoder weights fail."""
    state = stage_one_state(tmp_path)
    _, two = stage_configs(tmp_path, '[]', '[]', steps=1)
    model = build_model(two.model)
    fresh_head = model.decoder.classvprmodule[0].weight.clone()
    report = hand_over(model, state)
    table, with_cls = interpolate_decoder_pos_embed(state['decoder.dec_pos_embed'], (5, 5))
    assert torch.equal(model.decoder.dec_pos_embed, table)
    assert torch.equal(model.decoder.dec_pos_embed_cls, with_cls)
    assert torch.equal(model.encoder.blocks[1].attn.qkv.weight,
                       state['encoder.blocks.1.attn.qkv.weight'])
    assert torch.equal(model.decoder.classvprmodule[0].weight, fresh_head)
    assert 'globalizer.weight' in report.missing and not report.unexpected
    tuned = build_model(two.model)
    hand_over(tuned, dict(state, **{'globalizer.weight': model.globalizer.weight * 2}),
              keep_heads=True)
    assert torch.equal(tuned.globalizer.weight, model.globalizer.weight * 2)
    for prefix in ('encoder.blocks.0.', 'decoder.dec_blocks.1.'):
        broken = {k: v for k, v in state.items() if not k.startswith(prefix)}
        with pytest.raises(CheckpointError, match=prefix.replace('.', r'\.')):
            hand_over(build_model(two.model), broken)


def test_stage_one_checkpoint_file_round_trip(tmp_path: Path) -> None:
    """Stage two refuses a stage-one file whose encoder was cut short."""
    one, two = stage_configs(tmp_path, '[{kind: synthetic, num_places: 8, image_size: 32}]', '[]',
                             steps=1)
    first = run_stage_one(one, progress=quiet)
    state = load_file(str(first / 'stage_one.safetensors'))
    assert 'decoder.prediction_head.weight' in state
    broken = {k: v for k, v in state.items() if 'encoder.norm' not in k}
    save_file(broken, str(tmp_path / 'broken.safetensors'))
    with pytest.raises(CheckpointError, match='encoder.norm'):
        run_stage_two(_with_init(two, tmp_path / 'broken.safetensors'), progress=quiet)


class NanObjective(torch.nn.Module):
    """An objective whose loss is NaN on the steps listed in ``bad``."""

    def __init__(self, model: torch.nn.Module, bad: set) -> None:
        super().__init__()
        self.model, self.bad, self.calls = model, bad, 0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        self.calls += 1
        loss = self.model(x).pow(2).mean()
        if self.calls in self.bad:
            loss = loss * float('nan')
        return loss, {'loss': loss.detach()}


def test_non_finite_steps_are_skipped_and_repeated_ones_abort() -> None:
    """A NaN loss leaves the weights untouched; max_bad_steps NaNs in a row stop training."""
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = Trainer(model, NanObjective(model, bad={2, 3, 4}), optimizer,
                      LinearSchedule(0.1, 1.0, 1.0, 1), DistContext(),
                      RunConfig(max_bad_steps=3, clip_grad=1.0), None)
    batch = [torch.ones(4, 3)]
    assert trainer.step(batch) is not None
    before = [p.clone() for p in model.parameters()]
    assert trainer.step(batch) is None and trainer.step(batch) is None
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(TrainingError, match='3 consecutive'):
        trainer.step(batch)


def test_corridor_tiny_run_trains_on_some_places_and_tests_on_others(
        tmp_path: Path, corridor_dir: Path) -> None:
    """Frames 0-69 train both stages; frames 70-110 are evaluated (fast variant, few steps)."""
    train = ('[{kind: traversal, root: %s, frames_per_place: 2, first_frame: 0, '
             'stop_frame: 70}]' % corridor_dir)
    test = ('[{kind: traversal, root: %s, first_frame: 70, stop_frame: 111}]' % corridor_dir)
    one, two = stage_configs(tmp_path, train, test, steps=2)
    _, second = run_both(one, two)
    results = json.loads((second / 'export.json').read_text())['evaluation']
    name = f'eval/traversal:{corridor_dir.name}[70:111]'
    assert {f'{name}/global_r@1', f'{name}/pair_auc'} <= set(results)


def test_lite_model_runs_both_stages(tmp_path: Path) -> None:
    """pairvpr_lite (EfficientNet-Lite0 tokens, 32-px patches, 64x96 input) trains and exports."""
    lite = ('model.options={pretrained: false, input_size: [64, 96], token_dim: 32, '
            'decoder_dim: 32, decoder_depth: 1, decoder_heads: 2}')
    one, two = stage_configs(tmp_path, '[{kind: synthetic, num_places: 8, image_size: 48}]', '[]',
                             steps=2, extra=('model.name=pairvpr_lite', lite))
    first, second = run_both(one, two)
    assert all(torch.isfinite(torch.tensor([r['loss'] for r in scalars(first)])))
    model = load_checkpoint(second / 'model.safetensors')
    assert model.spec.architecture == 'pairvpr_lite' and model.spec.input_size == (64, 96)
    global_desc, tokens = model.describe(torch.zeros(1, 3, 64, 96))
    assert tokens.shape == (1, 6, 32)


def test_scalar_log_without_tensorboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scalars reach scalars.jsonl; TensorBoard is used only when it can be imported."""
    monkeypatch.setitem(sys.modules, 'torch.utils.tensorboard', None)
    log = ScalarLog(tmp_path)
    assert log.writer is None
    log.log(3, {'loss': 1.5})
    log.close()
    assert scalars(tmp_path) == [{'step': 3, 'loss': 1.5}]
    monkeypatch.undo()
    if importlib.util.find_spec('tensorboard') is not None:
        with_tb = ScalarLog(tmp_path / 'tb')
        with_tb.log(1, {'loss': 2.0})
        with_tb.close()
        assert any((tmp_path / 'tb' / 'tensorboard').iterdir())


def test_official_stage_one_file_initialises_stage_two(tmp_path: Path) -> None:
    """An official-layout stage-one .pth (no decoder CLS) hands over through the key map."""
    one, two = stage_configs(tmp_path, '[]', '[]', steps=1)
    source = build_model(one.model)
    official = {k: v for k, v in to_official_state_dict(source).items()
                if k not in ('decoder_clstoken', 'dec_pos_embed_cls')}
    torch.save({'model': official, 'epoch': 499}, tmp_path / 'stage_one.pth')
    model = build_model(two.model)
    report = load_initial_weights(model, tmp_path / 'stage_one.pth', stage=2)
    assert torch.equal(model.encoder.pos_embed, source.encoder.pos_embed)
    assert torch.equal(model.decoder.dec_blocks[0].cross_attn.projk.weight,
                       source.decoder.dec_blocks[0].cross_attn.projk.weight)
    assert model.decoder.dec_pos_embed.shape == (25, 64)
    assert 'decoder.decoder_clstoken' in report.missing


def test_recipe_command_line_sets_the_console_level_only(monkeypatch) -> None:
    """``parse_recipe_args`` reads the three options and sets --log-level on console handlers."""
    from vpr_ros_training.command_line import parse_recipe_args
    handler = logging.StreamHandler()
    monkeypatch.setattr(logging.getLogger(), 'handlers', [handler])
    args = parse_recipe_args('recipe', ['--set', 'a.b=1', '--set', 'c=2', '--log-level',
                                        'warning'], 'recipe.yaml', 'YAML recipe')
    assert (args.config, args.overrides) == ('recipe.yaml', ['a.b=1', 'c=2'])
    assert handler.level == logging.WARNING
    with pytest.raises(SystemExit):
        parse_recipe_args('recipe', ['--resume', 'x'], None, 'YAML recipe')
