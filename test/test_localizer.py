"""Localization pipeline against brute-force references, on a real (random-weight) model."""

import threading

import numpy as np
import pytest
import torch

from vpr_ros.config import LocalizerConfig
from vpr_ros.errors import MapMismatchError
from vpr_ros.geometry import pose_from_xy_yaw
from vpr_ros.localization.localizer import Localizer
from vpr_ros.map.database import MapDatabase
from vpr_ros.models.registry import create_model

INPUT = (96, 128)


@pytest.fixture(scope='module')
def model():
    """A small pair-classifier model with seeded random weights (no download)."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    return create_model('pairvpr_lite', pretrained=False, input_size=INPUT).eval()


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (n, 24, 32, 3)).astype(np.uint8)
    return [np.kron(b, np.ones((4, 4, 1), np.uint8)) for b in base]


@pytest.fixture(scope='module')
def filled(model) -> Localizer:
    """A localizer whose map holds 12 images along a line, 2 m apart."""
    localizer = Localizer(model, MapDatabase(model.spec), LocalizerConfig(top_k=8, batch_size=5))
    for i, image in enumerate(_images(12)):
        localizer.add_to_map(image, stamp_ns=i * 100, pose=pose_from_xy_yaw(2.0 * i, 0.0, 0.0))
    return localizer


def test_global_order_matches_brute_force(model, filled: Localizer) -> None:
    """Without re-ranking the order is the numpy inner-product order over all map entries."""
    filled.update_config(LocalizerConfig(top_k=8, rerank=False))
    query = _images(1, seed=5)[0]
    result = filled.localize(query, stamp_ns=7)
    descriptor, _ = filled.describe([query])
    sims = filled.database.descriptors @ descriptor[0]
    expected = np.argsort(-sims, kind='stable')[:8]
    assert [c.map_id for c in result.candidates] == list(expected)
    np.testing.assert_allclose([c.global_similarity for c in result.candidates], sims[expected],
                               atol=1e-5)
    assert result.stamp_ns == 7 and not result.reranked


def test_rerank_order_matches_one_pair_at_a_time(model, filled: Localizer) -> None:
    """Batched re-ranking equals a naive loop of single-pair scores, sorted descending."""
    filled.update_config(LocalizerConfig(top_k=8, rerank=True, rerank_batch_size=3))
    query = _images(1, seed=9)[0]
    result = filled.localize(query)
    _, tokens = filled.describe([query])
    q = torch.from_numpy(tokens[:1].astype(np.float32))
    ids = [c.map_id for c in result.candidates]
    with torch.inference_mode():
        naive = [float(model.pair_score(q, torch.from_numpy(
            filled.database.tokens([i]).astype(np.float32)))) for i in ids]
    assert result.reranked
    np.testing.assert_allclose([c.pair_score for c in result.candidates], naive, atol=1e-4)
    assert naive == sorted(naive, reverse=True)
    sims = filled.database.descriptors @ filled.describe([query])[0][0]
    shortlist = set(np.argsort(-sims)[:8])
    assert set(ids) == shortlist


def test_batch_equals_single(filled: Localizer) -> None:
    """localize_batch gives the same ranking as one-by-one localize."""
    filled.update_config(LocalizerConfig(top_k=5, batch_size=4))
    queries = _images(5, seed=3)
    batch = filled.localize_batch(queries, list(range(5)))
    for image, stamp, res in zip(queries, range(5), batch):
        single = filled.localize(image, stamp)
        assert [c.map_id for c in single.candidates] == [c.map_id for c in res.candidates]
        np.testing.assert_allclose([c.pair_score for c in single.candidates],
                                   [c.pair_score for c in res.candidates], atol=1e-4)


def test_temporal_consistency(filled: Localizer) -> None:
    """With a window of 2, a match is accepted only after 2 earlier nearby matches."""
    filled.update_config(LocalizerConfig(top_k=3, rerank=False, accept_probability=0.5,
                                         temporal_window=2, temporal_max_distance_m=5.0))
    filled.reset_temporal()
    images = _images(12)
    reasons = [filled.localize(images[i]).reason for i in (4, 5, 6)]
    assert reasons == ['temporal', 'temporal', 'accepted']
    jump = filled.localize(images[11])  # 10+ m away from the recent matches
    assert (jump.accepted, jump.reason) == (False, 'temporal')
    assert jump.best.map_id == 11


def test_temporal_consistency_by_map_ids_without_poses(model) -> None:
    """Map places without poses agree when their map ids are within temporal_max_id_gap."""
    localizer = Localizer(model, MapDatabase(model.spec),
                          LocalizerConfig(top_k=3, rerank=False, accept_probability=0.0,
                                          temporal_window=1, temporal_max_id_gap=2))
    images = _images(12)
    for i, image in enumerate(images):
        localizer.add_to_map(image, stamp_ns=i * 10 ** 8, pose=None)
    reasons = [localizer.localize(images[i]).reason for i in (4, 5, 7, 9)]
    # 5 follows 4 (1 id), 7 is 2 ids after 5, 9 follows 7 by 2 ids: all within 2.
    assert reasons == ['temporal', 'accepted', 'accepted', 'accepted']
    jump = localizer.localize(images[1])  # 8 ids before the last match
    assert (jump.best.map_id, jump.reason) == (1, 'temporal')


def test_threshold_rejects(filled: Localizer) -> None:
    """A probability threshold of 1 rejects even a perfect global match."""
    filled.update_config(LocalizerConfig(top_k=3, rerank=False, accept_probability=1.0))
    result = filled.localize(_images(12)[2])
    assert result.best.map_id == 2
    assert (result.accepted, result.reason) == (False, 'below threshold')


def test_empty_map_and_mismatch(model) -> None:
    """An empty map answers 'empty map'; a map of another model is refused."""
    empty = Localizer(model, MapDatabase(model.spec))
    result = empty.localize(_images(1)[0])
    assert (result.candidates, result.reason) == ((), 'empty map')
    other = create_model('pairvpr_lite', pretrained=False, input_size=(64, 64))
    with pytest.raises(MapMismatchError, match='map built by'):
        Localizer(other, MapDatabase(model.spec))


def test_add_while_localizing(model) -> None:
    """Entries can be added from one thread while another localizes."""
    localizer = Localizer(model, MapDatabase(model.spec), LocalizerConfig(top_k=4))
    images = _images(8, seed=11)
    localizer.add_to_map(images[0], 0, None)
    errors = []

    def query() -> None:
        try:
            for image in images:
                assert localizer.localize(image).best is not None
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=query)
    thread.start()
    for i, image in enumerate(images[1:], start=1):
        localizer.add_to_map(image, i, None)
    thread.join()
    assert not errors
    assert len(localizer.database) == 8
