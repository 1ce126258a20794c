"""Geometric verification on token grids: closed-form cases, the localizer hook, real pairs."""

import dataclasses
import importlib
import logging
import re
import sys

from conftest import REPO_ROOT, shared_dataset
import numpy as np
import pytest
import torch

from vpr_ros.config import LocalizerConfig, VERIFY_MODELS
from vpr_ros.errors import ConfigError
from vpr_ros.geometry import pose_from_xy_yaw
from vpr_ros.localization.localizer import Localizer
from vpr_ros.localization.verification import (cell_centres, count_inliers, fit_transform,
                                               grid_from_spec, mutual_matches, NOT_VERIFIED,
                                               token_grid, VerificationError, verify)
from vpr_ros.map.database import MapDatabase
from vpr_ros.models.registry import create_model

GRID = (15, 20)
CHANNELS = 112
INPUT = (96, 128)


def shifted_pair(rng: np.random.Generator, dy: int, dx: int) -> tuple[np.ndarray, np.ndarray]:
    """Return a random token grid and a copy moved by ``(dy, dx)`` cells, fresh cells elsewhere.

    Candidate cell ``(r, c)`` shows query cell ``(r - dy, c - dx)``, so the transform from query
    to candidate cell coordinates is the translation ``(dx, dy)``.
    """
    rows, cols = GRID
    query = rng.standard_normal((rows, cols, CHANNELS)).astype(np.float32)
    candidate = rng.standard_normal((rows, cols, CHANNELS)).astype(np.float32)
    candidate[max(dy, 0):rows + min(dy, 0), max(dx, 0):cols + min(dx, 0)] = \
        query[max(-dy, 0):rows - max(dy, 0), max(-dx, 0):cols - max(dx, 0)]
    return query.reshape(-1, CHANNELS), candidate.reshape(-1, CHANNELS)


@pytest.mark.parametrize('dy, dx', [(2, 3), (-1, -4), (0, 5), (0, 0)])
@pytest.mark.parametrize('model', ['affine', 'homography'])
def test_shifted_grid_recovers_the_shift(dy: int, dx: int, model: str) -> None:
    """Every overlapping cell is a mutual match and an inlier of the recovered translation."""
    query, candidate = shifted_pair(np.random.default_rng(abs(dy * 10 + dx)), dy, dx)
    result = verify(query, candidate.astype(np.float16)[None], GRID, model)[0]
    rows, cols = GRID
    overlap = (rows - abs(dy)) * (cols - abs(dx))
    centres = cell_centres(GRID)
    moved = centres[result.query_cells] + (dx, dy)
    same_place = np.all(np.abs(centres[result.candidate_cells] - moved) < 1e-6, axis=1)
    assert same_place.sum() == overlap
    assert np.all(result.inlier_mask[same_place])
    assert result.inliers >= overlap
    transform = result.transform
    if model == 'homography':
        transform = transform[:2] / transform[2, 2]
    np.testing.assert_allclose(transform, [[1.0, 0.0, dx], [0.0, 1.0, dy]], atol=1e-3)


def test_fundamental_counts_the_overlap_too() -> None:
    """The fundamental matrix also explains every overlapping cell (and a few random ones)."""
    query, candidate = shifted_pair(np.random.default_rng(7), 2, 3)
    result = verify(query, candidate[None], GRID, 'fundamental')[0]
    assert result.inliers >= (GRID[0] - 2) * (GRID[1] - 3)
    assert result.transform.shape == (3, 3)


def test_random_grids_have_few_inliers() -> None:
    """Unrelated grids find many chance mutual matches but few geometric inliers."""
    rng = np.random.default_rng(3)
    query, candidate = shifted_pair(rng, 1, 1)
    others = rng.standard_normal((6, GRID[0] * GRID[1], CHANNELS)).astype(np.float32)
    results = verify(query, np.concatenate([candidate[None], others]), GRID, 'affine')
    true_inliers, random = results[0].inliers, results[1:]
    assert true_inliers >= 14 * 19
    assert all(r.matches > 50 for r in random)  # chance mutual matches are common...
    assert max(r.inliers for r in random) < 25  # ...but they do not move together
    assert max(r.inliers for r in random) < true_inliers / 10


def test_counts_are_deterministic_and_batched() -> None:
    """count_inliers repeats exactly, and a batch equals one candidate at a time."""
    rng = np.random.default_rng(5)
    query, candidate = shifted_pair(rng, -2, 1)
    batch = np.stack([candidate, *rng.standard_normal((3, 300, CHANNELS)).astype(np.float32)])
    for model in VERIFY_MODELS:
        first = count_inliers(query, batch, GRID, model)
        again = count_inliers(query, batch, GRID, model)
        single = [count_inliers(query, b[None], GRID, model)[0] for b in batch]
        assert first.tolist() == again.tolist() == single
        assert first.dtype == np.int64


def test_mutual_matches_against_brute_force() -> None:
    """Mutual nearest neighbours equal a plain double loop over the cosine matrix."""
    rng = np.random.default_rng(11)
    query = rng.standard_normal((12, 8)).astype(np.float32)
    candidates = rng.standard_normal((2, 12, 8)).astype(np.float32) * 3.0
    for (qi, ci), candidate in zip(mutual_matches(query, candidates), candidates):
        a = query / np.linalg.norm(query, axis=1, keepdims=True)
        b = candidate / np.linalg.norm(candidate, axis=1, keepdims=True)
        s = a @ b.T
        expected = [(i, int(s[i].argmax())) for i in range(12)
                    if int(s[:, s[i].argmax()].argmax()) == i]
        assert list(zip(qi.tolist(), ci.tolist())) == expected


def test_too_few_matches_and_bad_input() -> None:
    """Fewer points than a model's sample give no transform; bad shapes and names raise."""
    points = cell_centres(GRID)[:2]
    transform, mask = fit_transform(points, points + 1, 'affine')
    assert transform is None and mask.tolist() == [False, False]
    assert fit_transform(points[:0], points[:0], 'homography')[1].size == 0
    with pytest.raises(VerificationError, match='unknown geometric model'):
        fit_transform(points, points, 'similarity')
    with pytest.raises(VerificationError, match=r'expects query \[300, C\]'):
        verify(np.zeros((299, 4), np.float32), np.zeros((1, 299, 4), np.float32), GRID)
    assert verify(np.ones((300, 4), np.float32), np.zeros((0, 300, 4), np.float32), GRID) == []
    with pytest.raises(ConfigError):
        LocalizerConfig(verify_model='similarity')
    with pytest.raises(ConfigError):
        LocalizerConfig(verify_top_n=-1)


def test_token_grid_from_model_and_spec(model) -> None:
    """The grid comes from the model, or from the spec's token count and input aspect."""
    assert token_grid(model) == model.token_grid == (6, 8)
    assert grid_from_spec(model.spec) == (6, 8)
    shipped = dataclasses.replace(model.spec, input_size=(240, 320), num_tokens=300)
    assert grid_from_spec(shipped) == (15, 20)
    vit = dataclasses.replace(model.spec, input_size=(322, 322), num_tokens=529)
    assert grid_from_spec(vit) == (23, 23)


@pytest.fixture(scope='module')
def model():
    """A small pair-classifier model with seeded random weights (6 x 8 token grid)."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    return create_model('pairvpr_lite', pretrained=False, input_size=INPUT,
                        pair_head='correspondence').eval()


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (n, 24, 32, 3)).astype(np.uint8)
    return [np.kron(b, np.ones((4, 4, 1), np.uint8)) for b in base]


@pytest.fixture(scope='module')
def filled(model) -> Localizer:
    """A localizer whose map (with tokens) holds 8 images along a line, 2 m apart."""
    localizer = Localizer(model, MapDatabase(model.spec), LocalizerConfig(top_k=5))
    for i, image in enumerate(_images(8)):
        localizer.add_to_map(image, stamp_ns=i, pose=pose_from_xy_yaw(2.0 * i, 0.0, 0.0))
    return localizer


def _config(**overrides) -> LocalizerConfig:
    base = {'top_k': 5, 'rerank': False, 'accept_probability': 0.0, 'temporal_window': 0}
    return LocalizerConfig(**{**base, **overrides})


def test_localizer_exposes_inliers_and_applies_min_inliers(filled: Localizer) -> None:
    """The verified candidates carry inlier counts; min_inliers gates the acceptance."""
    query = _images(8)[2]  # the map's own image: every one of the 48 cells is an inlier
    filled.update_config(_config(verify_top_n=3, min_inliers=48))
    result = filled.localize(query)
    assert result.best.map_id == 2
    assert result.best.inliers == 48
    assert all(c.inliers >= 0 for c in result.candidates[:3])
    assert all(c.inliers == NOT_VERIFIED for c in result.candidates[3:])
    assert (result.accepted, result.reason) == (True, 'accepted')
    assert 'verify' in result.timings_ms
    filled.update_config(_config(verify_top_n=3, min_inliers=49))
    refused = filled.localize(query)
    assert (refused.accepted, refused.reason) == (False, 'few inliers')
    filled.update_config(_config(verify_top_n=3, min_inliers=49, accept_probability=1.0))
    assert filled.localize(query).reason == 'below threshold'  # the probability comes first


def test_verification_with_reranking_keeps_the_order(filled: Localizer) -> None:
    """Verification adds inlier counts to a re-ranked shortlist without changing anything else."""
    query = _images(1, seed=9)[0]
    filled.update_config(_config(rerank=True))
    plain = filled.localize(query)
    filled.update_config(_config(rerank=True, verify_top_n=2, verify_model='homography'))
    verified = filled.localize(query)
    assert plain.reranked and verified.reranked
    assert all(c.inliers == NOT_VERIFIED for c in plain.candidates)
    assert 'verify' not in plain.timings_ms
    assert [dataclasses.replace(c, inliers=NOT_VERIFIED) for c in verified.candidates] == \
        list(plain.candidates)
    assert [c.inliers >= 0 for c in verified.candidates] == [True, True, False, False, False]
    assert (verified.accepted, verified.reason) == (plain.accepted, plain.reason)


def test_verification_off_is_unchanged(filled: Localizer) -> None:
    """verify_top_n 0 ignores min_inliers and leaves every candidate unverified."""
    query = _images(8)[5]
    filled.update_config(_config(min_inliers=10 ** 4))
    result = filled.localize(query)
    assert result.accepted and result.best.map_id == 5
    assert all(c.inliers == NOT_VERIFIED for c in result.candidates)
    assert set(result.timings_ms) == {'describe', 'search', 'rerank', 'total'}


def test_map_without_tokens_cannot_verify(model, caplog) -> None:
    """Without map tokens nothing is verified: a warning, and min_inliers refuses the match."""
    database = MapDatabase(model.spec, store_tokens=False)
    with caplog.at_level(logging.WARNING, logger='vpr_ros.localization.localizer'):
        localizer = Localizer(model, database, _config(verify_top_n=2, min_inliers=1))
    assert 'no candidate can be verified' in caplog.text
    assert not localizer.can_verify
    image = _images(1)[0]
    localizer.add_to_map(image, 0, None)
    result = localizer.localize(image)
    assert result.best.inliers == NOT_VERIFIED
    assert (result.accepted, result.reason) == (False, 'few inliers')


def test_real_pairs_have_more_inliers_than_wrong_ones() -> None:
    """On 24 SPED query/reference pairs, true pairs have clearly more inliers than wrong ones.

    Validation data (real_vpr/sped) with the shipped model; the held-out sets are not used.
    """
    root = shared_dataset('real_vpr') / 'sped'
    from vpr_ros.data.image_codec import read_image_file
    from vpr_ros.models.checkpoint import load_pretrained
    shipped = load_pretrained('pairvpr_lite')
    localizer = Localizer(shipped, MapDatabase(shipped.spec),
                          LocalizerConfig(device='cpu', backend='torch'))
    names = [path.name for path in sorted((root / 'query').glob('*.png'))[::24]]
    _, queries = localizer.describe([read_image_file(root / 'query' / n) for n in names])
    _, references = localizer.describe([read_image_file(root / 'reference' / n) for n in names])
    grid = token_grid(shipped)
    right = [count_inliers(q, r[None], grid)[0] for q, r in zip(queries, references)]
    wrong = [count_inliers(q, r[None], grid)[0]
             for q, r in zip(queries, np.roll(references, 7, axis=0))]
    assert np.median(right) > 2 * np.median(wrong), (right, wrong)


def test_benchmark_script_prints_ratios(capsys) -> None:
    """benchmarks/benchmark_verification.py runs at tiny sizes and prints one ratio per model."""
    benchmarks = str(REPO_ROOT / 'benchmarks')
    if benchmarks not in sys.path:
        sys.path.insert(0, benchmarks)
    module = importlib.import_module('benchmark_verification')
    assert module.main(['--queries', '1', '--top-k', '4', '--verify-top-n', '2',
                        '--map-size', '20', '--rounds', '1']) == 0
    out = capsys.readouterr().out
    assert len(re.findall(r'cost x\s*\d+\.\d+ of baseline', out)) == len(VERIFY_MODELS), out
