"""Real-image training pieces: real_vpr pairings, the global calibration, the whole recipe.

The fast tests check the pairing reader and its distances against the data's own layout, and
that the global similarity calibration travels with the checkpoint into the localizer. The
slow test runs the whole recipe on a few places and checks that its record and checkpoint are
complete.
"""

import json
from pathlib import Path

from conftest import shared_dataset
import numpy as np
import pytest
from vpr_ros.config import LocalizerConfig
from vpr_ros.errors import ConfigError, DatasetError
from vpr_ros.localization.localizer import Localizer
from vpr_ros.map.database import MapDatabase
from vpr_ros.map.entries import MapEntry
from vpr_ros.models.calibration import Calibration
from vpr_ros.models.checkpoint import load_checkpoint
from vpr_ros.models.fusion import RerankScoring
from vpr_ros.models.registry import create_model
from vpr_ros_training.config import load_config
from vpr_ros_training.real_vpr import FAR, parse_pairing
from vpr_ros_training.real_weights import RealWeightsConfig, run_real_weights


@pytest.fixture(scope='module')
def real_vpr() -> Path:
    """The real_vpr folder of ../shared/data (skips when absent)."""
    return shared_dataset('real_vpr')


def test_pairings_follow_the_data_layout(real_vpr: Path) -> None:
    gp = parse_pairing(real_vpr, 'gardens_point:night_right->day_left[140-199]')
    assert len(gp.reference) == len(gp.query) == 60
    assert gp.reference.paths[0].name == '140.jpg'
    assert gp.query.paths[0].parent.name == 'night_right'
    distance = gp.distance()
    assert distance[0, 0] == 0 and distance[0, 2] == 2 and distance[5, 3] == 2
    nordland = parse_pairing(real_vpr, 'nordland:winter->summer[0-99:10]')
    assert list(nordland.reference.places) == list(range(0, 100, 10))
    assert nordland.distance()[0, 1] == 10 * FAR
    sped = parse_pairing(real_vpr, 'sped:query->reference')
    assert len(sped.reference) == len(sped.query) > 500
    assert np.array_equal(np.diag(sped.distance()), np.zeros(len(sped.reference)))


@pytest.mark.parametrize('text', ['gardens_point:night_right->dusk[0-9]',
                                  'gardens_point:night_right', 'mars:a->b',
                                  'gardens_point:night_right->day_left[190-210]'])
def test_bad_pairings_are_named(real_vpr: Path, text: str) -> None:
    with pytest.raises(DatasetError):
        parse_pairing(real_vpr, text)


def test_global_calibration_round_trips_and_serves_the_global_ranking() -> None:
    scoring = RerankScoring('fused', 2.0, Calibration(0.5, -3.0), 'test',
                            global_calibration=Calibration(17.0, -14.0))
    assert RerankScoring.from_json(scoring.to_json()) == scoring
    with pytest.raises(ConfigError):
        RerankScoring('fused', 2.0, None, '', global_calibration=Calibration(-1.0, 0.0))
    model = create_model('efficientnet_lite0_gem', input_size=(64, 96)).eval()
    model.rerank_scoring = scoring
    database = MapDatabase(model.spec)
    rows = np.eye(model.spec.descriptor_dim, dtype=np.float32)[:3]
    database.add(rows, [MapEntry(-1, i) for i in range(3)])
    localizer = Localizer(model, database, LocalizerConfig(device='cpu', backend='torch'))
    sims = np.array([0.9, 0.8])
    want = 1 / (1 + np.exp(-(17.0 * sims - 14.0)))
    np.testing.assert_allclose(localizer._global_probability(sims), want)


@pytest.mark.slow
def test_short_real_run_writes_a_complete_record(real_vpr: Path, tmp_path: Path) -> None:
    """A few places and steps: the record names the split and the checkpoint loads."""
    config = load_config(RealWeightsConfig, None, [
        f'data_root={real_vpr}', f'output_root={tmp_path}', "output=''",
        "train_pairings=['gardens_point:night_right->day_left[0-29]']",
        "val_pairings=['gardens_point:night_right->day_left[140-169]']",
        'descriptor.steps=6', 'descriptor.eval_every=3', 'descriptor.places_per_batch=8',
        'train.steps=20'])
    record = run_real_weights(config)
    assert record['split']['validation'] == ['gardens_point:night_right->day_left[140-169]']
    saved = json.loads((Path(record['run_dir']) / 'record.json').read_text())
    best = saved['descriptor']['best']['mean']
    assert best >= saved['descriptor']['history']['0']['mean']
    loaded = load_checkpoint(Path(record['run_dir']) / 'model.safetensors')
    assert loaded.rerank_scoring.global_calibration is not None
    assert saved['command'].startswith('python -m vpr_ros_training.real_weights')
