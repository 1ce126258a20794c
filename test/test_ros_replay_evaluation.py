"""Live replay evaluation: the localize node answers a played query bag as the offline mode does.

Bags are written in both storage formats from the procedural sample route (small images), the map
is built with the core and saved, and the live node (real rclpy, model and FAISS) loads it.
"""

from dataclasses import dataclass, replace
import json
from pathlib import Path

import numpy as np
import pytest
from ros_harness import domain_id, tiny_model
from vpr_ros.cli import vpr_eval
from vpr_ros.config import LocalizerConfig
from vpr_ros.data.bag import read_frames, write_frames
from vpr_ros.data.benchmarks.traversals import read_bag_pair
from vpr_ros.evaluation.report import REPORT_FILES, write_report
from vpr_ros.evaluation.runner import (build_map, evaluate, localize_queries, make_localizer,
                                       match_from_result)
from vpr_ros.localization.localizer import Localizer
from vpr_ros.localization.mapping import add_frames
from vpr_ros.map.database import MapDatabase
from vpr_ros.models.checkpoint import save_checkpoint
from vpr_ros.ros.tools import replay_evaluation
from vpr_ros.ros.tools.live_replay import NodeSetup, ReplayConfig
from vpr_ros.ros.tools.replay_evaluation import evaluate_live
from vpr_ros.sample.renderer import render_traversal
from vpr_ros.sample.route import RouteConfig

pytestmark = pytest.mark.ros

ROUTE = RouteConfig(length_m=100.0, frames_per_traversal=16, image_size=(48, 64))
TOPIC, POSE_TOPIC = 'camera/image_raw', 'odom'
RADIUS_M = 7.0
NS = (1, 2, 5)
TOP_K = 8
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


@dataclass(frozen=True)
class Bags:
    """The map and query bags of one storage format."""

    map_bag: Path
    query_bag: Path


@dataclass(frozen=True)
class Sample:
    """Bags in both storage formats, a checkpoint of the tiny model and the node config."""

    bags: dict
    checkpoint: Path
    config: LocalizerConfig


def _accept_threshold(frames: tuple) -> float:
    """Return the median best-match probability, so about half of the queries are accepted."""
    dataset = read_bag_pair(frames[0], frames[1], TOPIC, POSE_TOPIC, RADIUS_M)
    localizer = make_localizer(tiny_model(), TOP_K, False, LocalizerConfig(device='cpu'))
    build_map(localizer, dataset)
    best = [match_from_result(r).probability for r in localize_queries(localizer, dataset)]
    return float(np.median(best))


@pytest.fixture(scope='module')
def sample(tmp_path_factory) -> Sample:
    """Render both traversals once; write them as mcap and sqlite3 bags."""
    root = tmp_path_factory.mktemp('replay')
    traversals = [render_traversal(ROUTE, t) for t in (0, 1)]
    bags = {}
    for storage in ('mcap', 'sqlite3'):
        paths = [write_frames(root / storage / name, frames, TOPIC, POSE_TOPIC, storage=storage)
                 for name, frames in zip(('map', 'query'), traversals)]
        bags[storage] = Bags(*paths)
    threshold = _accept_threshold((bags['mcap'].map_bag, bags['mcap'].query_bag))
    config = LocalizerConfig(device='cpu', top_k=TOP_K, rerank=False,
                             accept_probability=threshold)
    return Sample(bags, save_checkpoint(tiny_model(), root / 'tiny.safetensors'), config)


def _dataset(bags: Bags):
    return read_bag_pair(bags.map_bag, bags.query_bag, TOPIC, POSE_TOPIC, RADIUS_M)


def _saved_map(bags: Bags, config: LocalizerConfig, path: Path) -> Path:
    """Build the map from the map bag with the core and save it."""
    model = tiny_model()
    localizer = Localizer(model, MapDatabase(model.spec), config)
    add_frames(localizer, read_frames(bags.map_bag, TOPIC, POSE_TOPIC))
    return localizer.database.save(path)


def _expected_outputs(offline, dataset, accepted: list) -> dict:
    """Loop closures and pose errors the node should publish, from the offline ranking."""
    best = offline.predictions[:, 0]
    hits = [acc and bool(np.isin(best[q], dataset.positives[q])) for q, acc in enumerate(accepted)]
    errors = [np.linalg.norm(np.subtract(dataset.database[best[q]].pose.position,
                                         dataset.queries[q].pose.position))
              for q, acc in enumerate(accepted) if acc]
    return {'loop_closure_messages': sum(accepted), 'loop_closures_correct': sum(hits),
            'pose_messages': sum(accepted), 'pose_error_m_median': float(np.median(errors))}


def _flat(values: dict, prefix: str = '') -> dict:
    """Flatten nested dictionaries (``pytest.approx`` compares flat ones only)."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f'{prefix}{key}.'))
        else:
            flat[prefix + key] = value
    return flat


def _check_report(result, out: Path) -> dict:
    """Write the report; every file exists, the plots are PNGs; return metrics.json."""
    paths = write_report(result, out)
    assert sorted(p.name for p in paths) == sorted(REPORT_FILES)
    for name in REPORT_FILES:
        if name.endswith('.png'):
            assert (out / name).read_bytes().startswith(PNG_MAGIC), name
    return json.loads((out / 'metrics.json').read_text())


@pytest.mark.parametrize('storage, offset', [('mcap', 40), ('sqlite3', 41)])
def test_lock_step_replay_equals_offline(sample: Sample, storage: str, offset: int,
                                         tmp_path: Path) -> None:
    """Lock-step replay ranks every query exactly as the offline mode; same Recall@N.

    mcap: the model object is injected into the node; sqlite3: the node loads the checkpoint
    and the map from its parameters, as ``ros2 run`` does.
    """
    bags, config = sample.bags[storage], sample.config
    dataset = _dataset(bags)
    map_dir = _saved_map(bags, config, tmp_path / 'map')
    offline = evaluate(tiny_model(), dataset, TOP_K, False, NS, config=config)
    setup = (NodeSetup(str(map_dir), config, model=tiny_model()) if storage == 'mcap'
             else NodeSetup(str(map_dir), config, checkpoint=str(sample.checkpoint)))
    live = evaluate_live(dataset, setup, ReplayConfig(), NS, domain_id=domain_id(offset))
    matches = live.recording.matches
    assert [m.query_stamp_ns for m in matches] == dataset.query_stamps_ns().tolist()
    assert [list(m.map_ids) for m in matches] == [[int(j) for j in row if j >= 0]
                                                  for row in offline.predictions]
    assert np.array_equal(live.result.predictions, offline.predictions)
    np.testing.assert_allclose(live.result.scores, offline.scores, atol=1e-4)
    assert live.result.recalls == offline.recalls
    assert 0 < offline.recalls[1] < 100
    assert _flat(live.result.loop_closure) == pytest.approx(_flat(offline.loop_closure))
    settings = live.result.settings
    assert (settings['frames_published'], settings['frames_dropped']) == (16, 0)
    assert settings['model_digest'] == tiny_model().spec.digest()
    accepted = [bool(m.accepted) for m in matches]
    assert 0 < sum(accepted) < len(accepted)
    assert {k: settings[k] for k in _expected_outputs(offline, dataset, accepted)} == \
        pytest.approx(_expected_outputs(offline, dataset, accepted))
    metrics = _check_report(live.result, tmp_path / 'report')
    assert metrics['recalls'] == {str(n): v for n, v in offline.recalls.items()}
    assert metrics['latency_ms']['end_to_end']['count'] == 16


@pytest.mark.parametrize('speed, offset', [(3.0, 42), (0.0, 43)])
def test_real_time_replay_counts_dropped_frames_as_misses(sample: Sample, speed: float,
                                                          offset: int, tmp_path: Path) -> None:
    """Real-time replay: answered frames rank as offline, dropped frames count as misses."""
    bags, config = sample.bags['mcap'], sample.config
    dataset = _dataset(bags)
    map_dir = _saved_map(bags, config, tmp_path / 'map')
    offline = evaluate(tiny_model(), dataset, TOP_K, False, NS, config=config)
    replay = ReplayConfig(lock_step=False, speed=speed)
    live = evaluate_live(dataset, NodeSetup(str(map_dir), config, model=tiny_model()), replay,
                         NS, domain_id=domain_id(offset))
    answered = np.isin(dataset.query_stamps_ns(), list(live.recording.answered_stamps))
    assert answered.any()
    expected = np.where(answered[:, None], offline.predictions, -1)
    assert np.array_equal(live.result.predictions, expected)
    hand = {n: 100.0 * np.mean([answered[q] and bool(set(offline.predictions[q, :n].tolist())
                                                     & set(dataset.positives[q].tolist()))
                                for q in range(dataset.num_queries)]) for n in NS}
    assert live.result.recalls == pytest.approx(hand)
    dropped = int((~answered).sum())
    settings = live.result.settings
    assert (settings['frames_published'], settings['frames_dropped']) == (16, dropped)
    assert settings['replay'].startswith('live, real time')
    assert settings['image_reliability'] == 'best_effort'
    metrics = _check_report(live.result, tmp_path / 'report')
    assert metrics['settings']['frames_dropped'] == dropped
    assert f'- frames_dropped: {dropped}' in (tmp_path / 'report' / 'summary.md').read_text()
    assert metrics['latency_ms']['end_to_end']['count'] == int(answered.sum())


def test_cli_live_equals_offline_cli(sample: Sample, tmp_path: Path, capsys,
                                     monkeypatch) -> None:
    """``vpr-eval-live`` prints the same Recall@N line as ``vpr-eval`` on the same bags."""
    monkeypatch.setenv('ROS_DOMAIN_ID', str(domain_id(44)))
    bags = sample.bags['sqlite3']
    common = ['--image-topic', TOPIC, '--pose-topic', POSE_TOPIC, '--radius', str(RADIUS_M),
              '--recall-values', *map(str, NS), '--top-k', str(TOP_K), '--device', 'cpu',
              '--accept-probability', str(sample.config.accept_probability),
              '--checkpoint', str(sample.checkpoint)]
    assert vpr_eval.main(['--dataset-format', 'bags', '--dataset', str(bags.map_bag),
                          '--query-bag', str(bags.query_bag), '--out', str(tmp_path / 'off'),
                          *common]) == 0
    offline_line = capsys.readouterr().out.strip().splitlines()[-1]
    out = tmp_path / 'live'
    assert replay_evaluation.main(['--map-bag', str(bags.map_bag), '--query-bag',
                                   str(bags.query_bag), '--out', str(out), *common]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == offline_line
    assert 'published 16 frames, 16 answered, 0 dropped' in lines[-2]
    offline = json.loads((tmp_path / 'off' / 'metrics.json').read_text())
    live = json.loads((out / 'metrics.json').read_text())
    assert live['recalls'] == offline['recalls']
    assert _flat(live['loop_closure']) == pytest.approx(_flat(offline['loop_closure']))
    assert all((out / name).is_file() for name in REPORT_FILES)
    assert MapDatabase.load(out / 'map').spec == tiny_model().spec


def test_cli_reports_missing_bag(tmp_path: Path, capsys) -> None:
    """A missing bag is an error message and exit status 1, before any ROS work."""
    rc = replay_evaluation.main(['--map-bag', str(tmp_path / 'none'), '--query-bag',
                                 str(tmp_path / 'none2'), '--out', str(tmp_path / 'out')])
    assert rc == 1
    assert 'does not exist' in capsys.readouterr().err


def test_replay_config_rejects_bad_values() -> None:
    """Speed and timeouts are range-checked like every config dataclass."""
    from vpr_ros.errors import ConfigError
    with pytest.raises(ConfigError, match='speed'):
        ReplayConfig(speed=-1.0)
    with pytest.raises(ConfigError, match='reliability'):
        ReplayConfig(reliability='sometimes')
    real_time = replace(ReplayConfig(), lock_step=False, speed=0)
    assert real_time.describe().startswith('live, real time as fast as possible')
    assert (ReplayConfig().node_reliability, real_time.node_reliability) == \
        ('reliable', 'best_effort')
