"""Soak of the live localize node: frames at 10x the camera rate into a slow model (vpr-soak).

The node is the real ``localize`` node in its own process
(``python -m vpr_ros.ros.tools.slow_model``);
frames come from a real rclpy publisher; parameters change and the map is reloaded (service and
map-folder rewrites) during the run. The figures are recomputed here from the raw recording.
"""

import json

import numpy as np
import pytest
from ros_harness import domain_id
from vpr_ros.ros.tools.soak import run_soak
from vpr_ros.ros.tools.soak_report import latencies, node_frame_ms, warm_up_time
from vpr_ros.ros.tools.soak_scenario import frame_stamp_ns, SoakConfig


pytestmark = pytest.mark.ros

FAST = SoakConfig(frames=1500, camera_hz=20.0, speedup=10.0, describe_ms=20.0, places=50,
                  parameter_changes=6, service_reloads=3, map_rewrites=3,
                  map_watch_period_s=0.1, diagnostics_period_s=0.1, rss_period_s=0.05)


def _counters(recording) -> dict:
    return {k: int(v) for k, v in recording.diagnostics[-1][1].items()
            if k in ('received', 'processed', 'dropped_stale', 'rejected', 'map_reloads',
                     'map_reload_failures') or k.startswith('skipped_')}


def _check_accounting(recording, config: SoakConfig) -> None:
    """Every frame reached the node and is processed, dropped or skipped; each answer once."""
    counters = _counters(recording)
    assert np.isfinite(recording.send_times).all()
    assert counters['received'] == config.frames
    handled = counters['processed'] + counters['dropped_stale'] + counters['rejected'] + sum(
        v for k, v in counters.items() if k.startswith('skipped_'))
    assert handled == counters['received'] and counters['rejected'] == 0
    indices = [m[0] for m in recording.matches]
    assert len(indices) == counters['processed'] == len(set(indices)) and min(indices) >= 0
    assert max(indices) == config.frames - 1                  # the last frame was answered
    # The node cannot process more frames than the model's sleeps fit into the run.
    run_s = max(m[1] for m in recording.matches) - recording.start
    assert counters['processed'] <= run_s * 1e3 / config.describe_ms + 1
    assert counters['dropped_stale'] > counters['processed'] > 0    # overloaded: drops
    for k in range(10):                                       # answers all along the run
        lo, hi = np.quantile(recording.send_times, [k / 10, (k + 1) / 10])
        assert any(lo <= recording.send_times[i] <= hi for i in indices), k


def _check_latency(recording, config: SoakConfig) -> None:
    """Answers are published within a few of the node's own frame times (no queue builds up).

    The latency runs from publishing a frame to the node publishing its answer (DDS source
    timestamp); every answer is published after its frame and received after it is published.
    """
    warm = warm_up_time(recording)
    frame_ms = node_frame_ms(recording, warm)
    assert frame_ms >= config.describe_ms                     # the model's sleep is in it
    rows = latencies(recording)
    assert (rows[:, 1] > -1.0).all() and (rows[:, 2] >= rows[:, 1] - 1.0).all()   # clocks agree
    rows = rows[rows[:, 0] >= warm]
    assert np.percentile(rows[:, 1], 90) <= 3 * frame_ms
    assert np.percentile(rows[:, 1], 99) <= 4 * frame_ms
    quarter = len(rows) // 4
    assert np.median(rows[-quarter:, 1]) <= np.median(rows[:quarter, 1]) + frame_ms


def _check_memory(recording) -> None:
    """Resident memory after warm-up grows less than 5 % (medians of the first/last 10 %)."""
    warm = warm_up_time(recording)
    rss = np.array([r for t, r in recording.rss if warm <= t <= recording.end], dtype=float)
    assert len(rss) >= 20
    window = len(rss) // 10
    assert np.median(rss[-window:]) < 1.05 * np.median(rss[:window])


def _check_changes(recording, report: dict, config: SoakConfig) -> None:
    """Parameter changes and reloads were acknowledged and visible in the answers."""
    assert len(recording.changes) == config.parameter_changes
    assert all(c.successful for c in recording.changes)
    params = report['parameters']
    assert params['answers_with_wrong_parameters'] == 0
    assert params['answers_checked_against_parameters'] >= len(recording.matches) / 2
    assert {m[2] for m in recording.matches} == {3, 5}        # top_k 5, then 3, then 5 again
    service = [r for r in recording.reloads if r.kind == 'service']
    assert len(service) == config.service_reloads and all(r.successful for r in service)
    assert report['reloads']['map_rewrites_seen'] == config.map_rewrites
    counters = _counters(recording)
    assert counters['map_reload_failures'] == 0 and counters['map_reloads'] >= 3
    sizes = {int(v['map_size']) for _, v in recording.diagnostics}
    assert sizes == {config.places, config.places + 1}


def _run(config: SoakConfig, tmp_path, offset: int):
    report, recording = run_soak(config, tmp_path / 'soak', domain_id=domain_id(offset))
    saved = json.loads((tmp_path / 'soak' / 'report.json').read_text())
    assert saved['accounting']['frames_sent'] == config.frames
    assert (tmp_path / 'soak' / 'soak.png').stat().st_size > 10_000
    assert 'Soak test' in (tmp_path / 'soak' / 'summary.md').read_text()
    failed = [k for k, ok in report['checks'].items() if not ok]
    details = {k: report[k] for k in ('reloads', 'parameters', 'accounting', 'errors')
               if k in report}
    assert not failed, (failed, details)
    assert recording.node_exit_code == 0 and not recording.node_errors
    return report, recording


def test_soak_fast(tmp_path) -> None:
    """1,500 frames at 200 Hz into a 20 ms model with changes and reloads on the way."""
    report, recording = _run(FAST, tmp_path, 61)
    assert frame_stamp_ns(1, FAST.camera_hz) - frame_stamp_ns(0, FAST.camera_hz) == 50_000_000
    _check_accounting(recording, FAST)
    _check_latency(recording, FAST)
    _check_memory(recording)
    _check_changes(recording, report, FAST)


@pytest.mark.slow
def test_soak_full(tmp_path) -> None:
    """The documented soak: 10,000 frames at 10x a 10 Hz camera into a 50 ms model."""
    config = SoakConfig()
    report, recording = _run(config, tmp_path, 62)
    _check_accounting(recording, config)
    _check_latency(recording, config)
    _check_memory(recording)
    _check_changes(recording, report, config)
