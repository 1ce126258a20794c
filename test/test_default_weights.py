"""The shipped pairvpr_lite weights and the command that trains them (default_weights.py).

The fast tests check the pieces against brute-force references (pair mining, principal
components, the export rule, route randomisation) and the shipped weights: they load from
safetensors with their fusion and calibration, reproduce the recorded fingerprint, and the fused
ranking beats the global ranking on a held-out render through the real localizer. The slow test
re-runs a short training and compares the held-out pair ROC-AUC of the trained classifier with
the untrained one, both measured in the same run.
"""

import json

from pathlib import Path

from conftest import REPO_ROOT
import numpy as np
import pytest
import torch
from training_fixtures import one_thread  # noqa: F401  (autouse fixture)
from vpr_ros.config import LocalizerConfig
from vpr_ros.data.frame_source import frame_positions
from vpr_ros.data.ground_truth import positives_within_radius
from vpr_ros.errors import ConfigError
from vpr_ros.evaluation.metrics import recall_at_n
from vpr_ros.localization.localizer import Localizer
from vpr_ros.localization.mapping import add_frames
from vpr_ros.map.database import MapDatabase
from vpr_ros.models.checkpoint import load_checkpoint
from vpr_ros.models.fingerprint import fingerprint_differences, model_fingerprint
from vpr_ros.models.loader import load_model
from vpr_ros.models.registry import create_model
from vpr_ros.sample.renderer import render_traversal
from vpr_ros.sample.route import RouteConfig
from vpr_ros_training.config import load_config
from vpr_ros_training.default_weights import (DEFAULT_CONFIG, DefaultWeightsConfig,
                                              init_projection_pca, mine_pairs, passes_holdout,
                                              RouteFeatures, RoutesConfig, run_default_weights)
from vpr_ros_training.route_features import RANDOM_RANGES, render_route, route_config

WEIGHTS = REPO_ROOT / 'vpr_ros' / 'weights' / 'pairvpr_lite.safetensors'


def random_route(seed: int, queries: int = 7, frames: int = 9) -> RouteFeatures:
    """Return a route with random similarities and distances (features are not used)."""
    rng = np.random.default_rng(seed)
    empty = torch.zeros(0)
    return RouteFeatures(seed, empty, empty, rng.standard_normal((queries, frames)),
                         rng.uniform(0.0, 12.0, (queries, frames)))


def test_config_refuses_overlapping_seeds() -> None:
    """The held-out demo route can be neither a training nor a validation route."""
    assert load_config(DefaultWeightsConfig, DEFAULT_CONFIG).routes.holdout_seed == \
        RouteConfig().seed
    with pytest.raises(ConfigError, match='overlap'):
        load_config(DefaultWeightsConfig, DEFAULT_CONFIG, ['routes.val_seeds=[7]'])
    with pytest.raises(ConfigError, match='overlap'):
        RoutesConfig(train_seeds=(1, 2), val_seeds=(2,), holdout_seed=3)


def test_mined_pairs_match_brute_force() -> None:
    """Positives: every frame within positive_m; negatives: far frames of the global top-K."""
    routes = [random_route(1), random_route(2)]
    config = RoutesConfig(train_seeds=(1, 2), val_seeds=(), holdout_seed=7, positive_m=4.0,
                          negative_m=6.0, shortlist=4)
    positives, negatives = mine_pairs(routes, config)
    want_pos, want_neg = set(), set()
    for r, route in enumerate(routes):
        for q in range(route.distance.shape[0]):
            top = sorted(range(route.distance.shape[1]), key=lambda m: -route.similarity[q, m])
            want_neg |= {(r, q, m) for m in top[:4] if route.distance[q, m] > 6.0}
            want_pos |= {(r, q, m) for m in range(route.distance.shape[1])
                         if route.distance[q, m] <= 4.0}
    assert set(map(tuple, positives.tolist())) == want_pos and len(positives) == len(want_pos)
    assert set(map(tuple, negatives.tolist())) == want_neg and len(negatives) == len(want_neg)


def test_projection_starts_at_the_principal_components() -> None:
    """The projected tokens are the centred tokens on the top singular vectors (numpy SVD)."""
    model = create_model('pairvpr_lite', pretrained=False, input_size=(64, 96), token_dim=8,
                         decoder_dim=16, decoder_depth=1, decoder_heads=2)
    torch.manual_seed(3)
    routes = [RouteFeatures(3, torch.randn(6, 1280, 2, 3).half(),
                            torch.randn(5, 1280, 2, 3).half(), np.zeros((5, 6)), np.zeros((5, 6)))]
    explained = init_projection_pca(model, routes, stride=1)
    tokens = torch.cat([routes[0].map_features, routes[0].query_features]).float()
    tokens = tokens.flatten(2).transpose(1, 2).reshape(-1, 1280).double().numpy()
    centred = tokens - tokens.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    linear = model.token_projection[0]
    weight, bias = linear.weight.detach().double().numpy(), linear.bias.detach().double().numpy()
    projected = tokens @ weight.T + bias
    reference = centred @ vt[:8].T
    np.testing.assert_allclose(np.abs(projected), np.abs(reference), atol=1e-3)
    assert explained == pytest.approx((singular[:8] ** 2).sum() / (singular ** 2).sum(), 1e-3)


def test_export_rule() -> None:
    """Weights ship only when the fused ranking raises R@1 and keeps R@5 within tolerance."""
    metrics = {'global_r@1': 80.0, 'global_r@5': 90.0, 'fused_r@1': 85.0, 'fused_r@5': 88.5}
    assert passes_holdout(metrics, 2.0)
    assert not passes_holdout(metrics, 1.0)
    assert not passes_holdout({**metrics, 'fused_r@1': 80.0}, 2.0)


def test_randomised_routes_are_seeded_and_spare_the_demo_route() -> None:
    """A seed always draws the same camera; the held-out route keeps the demo configuration."""
    routes = RoutesConfig(train_seeds=(101,), holdout_seed=7, randomize=True, degrade=True,
                          frames_per_traversal=3)
    first, again = route_config(101, routes), route_config(101, routes)
    assert first == again and first != route_config(102, routes)
    for name, (low, high) in RANDOM_RANGES.items():
        assert low <= getattr(first, name) <= high
    assert route_config(7, routes) == RouteConfig(frames_per_traversal=3)
    degraded = render_route(101, routes)[1]
    plain = render_route(101, RoutesConfig(train_seeds=(101,), randomize=True,
                                           frames_per_traversal=3))[1]
    assert np.array_equal(degraded[0].image, render_route(101, routes)[1][0].image)
    assert degraded[0].image.shape == plain[0].image.shape
    assert not np.array_equal(degraded[0].image, plain[0].image)
    demo = render_route(7, routes)[1]
    assert np.array_equal(demo[0].image, render_traversal(RouteConfig(frames_per_traversal=3),
                                                          1)[0].image)


needs_weights = pytest.mark.skipif(not WEIGHTS.is_file(), reason='no shipped pairvpr_lite weights')


@needs_weights
def test_shipped_weights_load_safely_with_scoring_and_fingerprint() -> None:
    """Safetensors only; fusion and calibration stored; the recorded fingerprint reproduces."""
    from safetensors import safe_open
    with safe_open(str(WEIGHTS), framework='pt') as handle:
        metadata = handle.metadata()
    assert metadata['format'] == 'vpr_ros.checkpoint' and 'rerank_scoring' in metadata
    model = load_model()  # the registry default: the shipped pairvpr_lite weights
    assert model.spec == create_model('pairvpr_lite', pretrained=False,
                                      pair_head='correspondence').spec
    scoring = model.rerank_scoring
    assert scoring.fusion == 'fused' and scoring.calibration.scale > 0
    record = json.loads(WEIGHTS.with_suffix('.json').read_text())
    assert record['fusion']['beta'] == scoring.beta
    assert fingerprint_differences(record['fingerprint'], model_fingerprint(model)) == []


@needs_weights
def test_shipped_weights_rerank_a_held_out_render_better_than_global() -> None:
    """Demo route (held out from training), 2 m frame spacing: fused R@1 > global R@1."""
    model = load_checkpoint(WEIGHTS)
    route = RouteConfig(frames_per_traversal=60)
    map_frames, queries = render_traversal(route, 0), render_traversal(route, 1)
    localizer = Localizer(model, MapDatabase(model.spec), LocalizerConfig(top_k=20))
    add_frames(localizer, map_frames)
    results = localizer.localize_batch([f.image for f in queries], [f.stamp_ns for f in queries])
    assert all(result.reranked for result in results)
    reranked = np.array([[c.map_id for c in r.candidates] for r in results])
    by_similarity = np.array([[c.map_id for c in sorted(r.candidates,
                                                        key=lambda c: -c.global_similarity)]
                              for r in results])
    positives = positives_within_radius(frame_positions(queries), frame_positions(map_frames),
                                        5.0)
    assert recall_at_n(reranked, positives, (1,))[1] > recall_at_n(by_similarity, positives,
                                                                   (1,))[1]


@pytest.mark.slow
def test_short_training_raises_the_held_out_pair_auc(tmp_path: Path) -> None:
    """A short run (2 small routes) lifts the pair ROC-AUC on a held-out route above untrained."""
    config = load_config(DefaultWeightsConfig, DEFAULT_CONFIG, [
        'model_options={input_size: [120, 160], pair_head: correspondence}',
        'routes.train_seeds=[101, 102]', 'routes.val_seeds=[201]', 'routes.test_seeds=[]',
        'routes.holdout_seed=203', 'routes.frames_per_traversal=60', 'train.steps=300',
        'train.pairs_per_step=16', 'train.warmup_steps=20', 'train.eval_every=0',
        f'output_root={tmp_path}', 'output=""'])
    record = run_default_weights(config)
    before, after = record['holdout']['untrained'], record['holdout']['trained']
    assert after['pair_auc'] > before['pair_auc'] + 0.05, (before, after)
    assert (Path(record['run_dir']) / 'model.safetensors').is_file()
    assert record['published'] == ''


@needs_weights
def test_shipped_weights_beat_global_retrieval_on_the_corridor(corridor_dir: Path) -> None:
    """Real, held-out data: the re-ranked R@1 is above the global R@1 of the same run."""
    from vpr_ros.data.benchmarks.index_list import read_index_list_dataset
    from vpr_ros.evaluation.runner import evaluate
    result = evaluate(load_model(), read_index_list_dataset(corridor_dir), top_k=20,
                      recall_values=(1, 5), config=LocalizerConfig(device='cpu'))
    assert result.settings['calibrated'] and result.settings['rerank']
    assert result.recalls[1] > result.recalls_before_rerank[1] + 10.0, result.recalls


@needs_weights
def test_default_decision_makes_no_false_loop_closure_on_rtabmap(rtabmap_dir: Path) -> None:
    """Loop closure with the default threshold and temporal gate: some accepted, none wrong."""
    from vpr_ros.data.benchmarks.sequence import read_sequence_dataset
    from vpr_ros.evaluation.runner import evaluate
    result = evaluate(load_model(), read_sequence_dataset(rtabmap_dir), top_k=20,
                      recall_values=(1,), config=LocalizerConfig(device='cpu'))
    decision = result.loop_closure['at_threshold']
    assert decision['source'] == 'localizer decision'
    assert decision['accepted'] > 0 and decision['precision'] == 1.0, decision
