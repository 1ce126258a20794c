"""``vpr-calibrate``: fusion beta and match probability fitted on a user's validation set.

The fast tests use hand-made shortlists and a small procedural route (the project's own
renderer) written as an index-list dataset; the last one runs the shipped ``pairvpr_lite`` on
the validation split of ``shared/data/real_vpr`` (Gardens Point places 140-199, night_right
queries against the day_left map) and skips when that data is absent.
"""

import hashlib
import json
from pathlib import Path
import shutil

from conftest import shared_dataset
import cv2
import numpy as np
import pytest
from safetensors import safe_open
import torch

from vpr_ros.cli import vpr_calibrate, vpr_convert
from vpr_ros.cli.vpr_calibrate import write_scoring
from vpr_ros.config import IndexConfig, LocalizerConfig
from vpr_ros.data.benchmarks.dataset import EvalDataset
from vpr_ros.errors import CheckpointError, DatasetError
from vpr_ros.evaluation.calibration_fit import (BETAS, CalibrationSet, choose_beta,
                                                collect_shortlists, fit_scoring, Shortlists)
from vpr_ros.localization.localizer import Localizer
from vpr_ros.map.database import MapDatabase
from vpr_ros.models.calibration import Calibration
from vpr_ros.models.checkpoint import load_checkpoint, load_pretrained, shipped_weights_path
from vpr_ros.models.fusion import RerankScoring
from vpr_ros.models.official_weights import to_official_state_dict
from vpr_ros.models.registry import create_model
from vpr_ros.sample.renderer import render_traversal
from vpr_ros.sample.route import RouteConfig

FAST = ['--backend', 'torch', '--device', 'cpu']
ROUTE = RouteConfig(length_m=120.0, frames_per_traversal=24)
RADIUS_M = 5.0
GARDENS_POINT_VALIDATION = range(140, 200)
GARDENS_POINT_TOLERANCE = 2  # frames within +-2 show the same place (real_vpr README)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def sha256(path: Path) -> str:
    """Return the SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def metadata(path: Path) -> dict:
    """Return the safetensors metadata of ``path``."""
    with safe_open(str(path), framework='pt') as handle:
        return dict(handle.metadata())


def node_reports_calibrated(checkpoint: Path) -> bool:
    """Return what the localize node publishes as ``probability_calibrated`` (defaults).

    The node reports ``localizer.scoring.calibrated`` when the localizer re-ranks, with the
    default ``rerank_fusion`` (fused) and ``fusion_beta`` (-1: the checkpoint's).
    """
    model = load_checkpoint(checkpoint)
    database = MapDatabase(model.spec, IndexConfig(kind='flat'), store_tokens=True)
    localizer = Localizer(model, database, LocalizerConfig(device='cpu', backend='torch'))
    return localizer.scoring.calibrated if localizer.can_rerank else False


# ---- the fitting on hand-made shortlists ----------------------------------------------------

def hand_made() -> CalibrationSet:
    """Return eight revisits and eight new places (whose best match is always wrong).

    The revisits' right match ranks first only with a large enough beta, and the pair scores
    of right and wrong best matches overlap.
    """
    rng = np.random.default_rng(0)
    count, k = 8, 3
    similarity = np.tile([0.80, 0.75, 0.70], (count, 1))
    pair = rng.normal(0.0, 0.3, (count, k))
    correct = np.zeros((count, k), bool)
    correct[:, 0] = True                # the global best is right ...
    pair[:4, 1] += 1.0                  # ... but half of the queries' pair scores prefer a wrong
    pair[:, 0] += 0.5
    revisit = Shortlists(np.arange(count), similarity, pair, correct)
    novel_pair = rng.normal(-0.5, 0.8, (count, k))
    novel = Shortlists(np.arange(count), similarity - 0.1, novel_pair, np.zeros((count, k), bool))
    return CalibrationSet(revisit, novel, 'hand-made', k, count)


@pytest.mark.parametrize('module', [vpr_calibrate, vpr_convert])
def test_every_option_has_help(module) -> None:
    for action in module.build_parser()._actions:
        if action.dest != 'help':
            assert action.help and len(action.help) > 8, f'{action.dest} lacks help'


def test_beta_is_chosen_by_recall_at_1_with_ties_to_the_smaller() -> None:
    sets = hand_made()
    beta, table = choose_beta(sets.revisit, (0.0, 40.0, 80.0, 2.0))
    assert list(table) == [0.0, 2.0, 40.0, 80.0]
    assert table[0.0] < 100.0 and table[40.0] == table[80.0] == 100.0
    assert beta == 40.0


def test_fit_scoring_fits_both_calibrations_and_measures_before_and_after() -> None:
    sets = hand_made()
    stored = RerankScoring('fused', 0.0, Calibration(5.0, 0.0), 'elsewhere')
    fit = fit_scoring(sets, stored, (0.0, 40.0), 'hand-made set')
    scoring = fit.scoring
    assert (scoring.fusion, scoring.beta, scoring.fitted_on) == ('fused', 40.0, 'hand-made set')
    assert scoring.calibration.scale > 0 and scoring.global_calibration.scale > 0
    assert fit.before['beta'] == 0.0 and fit.before['calibrated']
    assert fit.after['fused']['ece'] < fit.before['fused']['ece']
    assert fit.after['fused']['decisions'] == 16
    assert scoring.applies_to('fused', 40.0)
    summary = fit.summary()
    json.dumps(summary)
    assert summary['counts'] == {'queries': 8, 'revisit': 8, 'novel': 8,
                                 'right_best_matches': 8, 'top_k': 3}


def test_a_score_that_does_not_separate_is_refused() -> None:
    sets = hand_made()
    wrong = Shortlists(sets.revisit.query, sets.revisit.similarity, sets.revisit.pair,
                       np.zeros_like(sets.revisit.correct))
    with pytest.raises(DatasetError, match='every best match is wrong'):
        fit_scoring(CalibrationSet(wrong, sets.novel, 'x', 3, 8), None)


# ---- the command on a small procedural route ------------------------------------------------

@pytest.fixture(scope='module')
def route() -> tuple:
    """Return two traversals of a procedural route and the true places of the second's frames.

    The true places of a frame are the first traversal's frames within ``RADIUS_M``.
    """
    traversals = [render_traversal(ROUTE, t) for t in (0, 1)]
    xy = [np.array([f.pose.position[:2] for f in frames]) for frames in traversals]
    distance = np.linalg.norm(xy[1][:, None] - xy[0][None], axis=-1)
    return traversals, [np.flatnonzero(row <= RADIUS_M) for row in distance]


@pytest.fixture(scope='module')
def route_dataset(route, tmp_path_factory) -> Path:
    """An index-list dataset: the route's second traversal against its first."""
    traversals, positives = route
    root = tmp_path_factory.mktemp('route')
    for part, frames in zip(('ref', 'query'), traversals):
        (root / part).mkdir()
        for i, frame in enumerate(frames):
            cv2.imwrite(str(root / part / f'{i:03d}.png'), frame.image[..., ::-1])
    truth = [{'query': q, 'positives': ids.tolist()} for q, ids in enumerate(positives)]
    (root / 'ground_truth.json').write_text(json.dumps(truth))
    return root


def test_a_loop_closure_sequence_searches_only_the_earlier_frames(route) -> None:
    """Both traversals as one sequence: frame i is matched against frames 0 .. i - gap."""
    traversals, positives = route
    frames = tuple(traversals[0]) + tuple(traversals[1])
    count, gap = len(traversals[0]), 10
    truth = tuple([np.empty(0, np.int64)] * count + list(positives))
    dataset = EvalDataset('loop', frames, frames, truth, sequence_gap=gap)
    config = LocalizerConfig(top_k=5, device='cpu', backend='torch')
    sets = collect_shortlists(load_pretrained('pairvpr_lite'), dataset, config)
    assert len(sets.revisit) == count                  # the second traversal revisits
    assert len(sets.novel) == 2 * count - gap          # every frame with a non-empty map
    assert sets.novel.query.min() == gap
    first = sets.novel.query == gap                    # its map holds frame 0 only
    assert np.isfinite(sets.novel.similarity[first]).sum() == 1
    assert not sets.novel.correct.any()
    assert sets.revisit.recall('fused', 0.0, 5) > 50.0


def calibrate(args: list) -> int:
    """Run vpr-calibrate on the CPU with the torch backend."""
    return vpr_calibrate.main(args + FAST)


def test_calibrate_the_shipped_model_on_a_small_dataset(route_dataset, tmp_path,
                                                        capsys) -> None:
    shipped = shipped_weights_path('pairvpr_lite')
    before = sha256(shipped)
    out, report = tmp_path / 'calibrated.safetensors', tmp_path / 'report.json'
    assert calibrate(['--model', 'pairvpr_lite', '--dataset-format', 'index-list',
                      '--dataset', str(route_dataset), '--out', str(out),
                      '--report', str(report), '--top-k', '10']) == 0
    printed = capsys.readouterr().out
    for words in ('Recall@1 of the revisits by beta', 'chosen beta', 'calibration of the fused',
                  'calibration of the global similarity', 'ECE', 'probability_calibrated: True'):
        assert words in printed
    assert sha256(shipped) == before                   # the installed weights stay as they are
    scoring = load_checkpoint(out).rerank_scoring
    assert scoring.fusion == 'fused' and scoring.beta in BETAS
    assert scoring.calibration.scale > 0 and scoring.global_calibration is not None
    assert 'vpr-calibrate on' in scoring.fitted_on and 'top-10' in scoring.fitted_on
    info, shipped_info = metadata(out), metadata(shipped)
    assert info['base_weights'] == shipped_info['base_weights']  # still a partial checkpoint
    assert info['spec'] == shipped_info['spec']
    numbers = json.loads(report.read_text())
    assert numbers['beta'] == scoring.beta
    counts = numbers['counts']
    assert counts['revisit'] == counts['queries'] == ROUTE.frames_per_traversal
    assert numbers['after']['fused']['ece'] <= numbers['before']['fused']['ece'] + 0.05
    assert node_reports_calibrated(out)


def test_in_place_and_output_rules(route_dataset, tmp_path, capsys) -> None:
    data = ['--dataset-format', 'index-list', '--dataset', str(route_dataset), '--top-k', '5']
    copy = tmp_path / 'model.safetensors'
    shutil.copyfile(shipped_weights_path('pairvpr_lite'), copy)
    for args, words in (([], 'give --out'),
                        (['--out', str(tmp_path / 'x'), '--in-place'], 'not both'),
                        (['--out', str(copy)], 'use --in-place'),
                        (['--model', 'pairvpr_lite', '--in-place'], 'give --out')):
        model = [] if '--model' in args else ['--checkpoint', str(copy)]
        assert calibrate(model + data + args) == 1
        assert words in capsys.readouterr().err
    before = sha256(copy)
    assert calibrate(['--checkpoint', str(copy), '--in-place'] + data) == 0
    assert sha256(copy) != before
    assert load_checkpoint(copy).rerank_scoring.fitted_on.startswith('vpr-calibrate')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['model.safetensors']


def test_an_official_file_becomes_a_calibrated_checkpoint(tmp_path) -> None:
    """write_scoring turns an official .pth into a new vpr_ros checkpoint with the scoring."""
    sizes = {'encoder_dim': 64, 'encoder_depth': 1, 'decoder_dim': 64, 'decoder_depth': 1,
             'descriptor_dim': 8, 'image_size': 28, 'encoder_heads': 1, 'decoder_heads': 1}
    model = create_model('pairvpr_vitb14', **sizes)
    source = tmp_path / 'pairvpr-tiny.pth'
    torch.save(to_official_state_dict(model), source)
    scoring = RerankScoring('fused', 5.0, Calibration(0.3, -1.0), 'test',
                            Calibration(10.0, -7.0))
    with pytest.raises(CheckpointError, match='not rewritten in place'):
        vpr_calibrate.output_plan(str(source), None, None, True)
    out = write_scoring(model, scoring, source, tmp_path / 'calibrated.safetensors')
    loaded = load_checkpoint(out)
    assert loaded.rerank_scoring == scoring and loaded.spec.preprocessing == 'official'
    assert json.loads(metadata(out)['source'])['file'] == source.name
    assert node_reports_calibrated(out)


# ---- the shipped model on real validation data ----------------------------------------------

@pytest.fixture(scope='module')
def gardens_point(tmp_path_factory) -> Path:
    """Gardens Point validation places as an index-list dataset (paths listed, not copied)."""
    root = shared_dataset('real_vpr') / 'gardens_point'
    for condition in ('night_right', 'day_left'):
        missing = [p for p in GARDENS_POINT_VALIDATION
                   if not (root / condition / f'{p:03d}.jpg').is_file()]
        if missing:
            pytest.skip(f'real_vpr gardens_point/{condition} lacks places {missing[:3]}...')
    dataset = tmp_path_factory.mktemp('gardens_point_val')
    for part, condition in (('query', 'night_right'), ('ref', 'day_left')):
        (dataset / part).mkdir()
        (dataset / f'{part}_images_paths.txt').write_text(''.join(
            f'{root / condition / f"{p:03d}.jpg"}\n' for p in GARDENS_POINT_VALIDATION))
    count = len(GARDENS_POINT_VALIDATION)
    truth = [{'query': q, 'positives': [j for j in range(count)
                                        if abs(q - j) <= GARDENS_POINT_TOLERANCE]}
             for q in range(count)]
    (dataset / 'ground_truth.json').write_text(json.dumps(truth))
    return dataset


def test_calibrate_shipped_model_on_gardens_point_validation(gardens_point, tmp_path,
                                                             capsys) -> None:
    """night_right queries vs the day_left map, places 140-199 (the validation split)."""
    out, report = tmp_path / 'lite_gp.safetensors', tmp_path / 'report.json'
    assert calibrate(['--model', 'pairvpr_lite', '--dataset-format', 'index-list',
                      '--dataset', str(gardens_point), '--out', str(out),
                      '--report', str(report)]) == 0
    print(capsys.readouterr().out)
    numbers = json.loads(report.read_text())
    assert numbers['counts']['queries'] == 60 and numbers['counts']['revisit'] == 60
    assert numbers['after']['recall_at_1'] >= numbers['before']['recall_at_1']
    assert numbers['after']['fused']['ece'] < numbers['before']['fused']['ece']
    assert numbers['calibration']['scale'] > 0
    assert node_reports_calibrated(out)
