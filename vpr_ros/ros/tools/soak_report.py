"""The figures and verdict of a soak run (:mod:`vpr_ros.ros.tools.soak`), and its report folder.

A :class:`SoakRecording` holds what the soak driver saw: the publish time of every frame, every
``~/matches`` message with its arrival time, the node's ``/diagnostics`` over time, its resident
memory over time, and the parameter changes and map reloads made during the run.
:func:`summarise` turns it into the report dictionary (``report.json``):

- **accounting**: frames sent, and the node's counters, ``received == processed + dropped_stale
  + skipped_* + rejected`` (``unaccounted`` is the difference: silent loss inside the node);
  ``transport_lost`` frames never reached the node; every processed frame must be answered.
- **latency**: from publishing a frame to the node publishing its ``~/matches`` (the DDS source
  timestamp) and to its arrival at the driver, percentiles in ms; the first is compared with
  ``node_frame_ms``, the time the node itself reports per processed frame in this run.
- **memory**: resident memory of the node process after warm-up and at the end (medians over a
  window, so one sample's noise does not decide), growth in percent, peak.
- **parameters**: every change acknowledged, and every answer whose configuration is certain
  (no change in flight between its publication and its arrival) shows it: the number of
  candidates equals ``localizer.top_k``, ``accepted`` equals ``probability >=
  localizer.accept_probability``.
- **reloads**: ``~/reload_map`` calls and map-folder rewrites, and whether the node showed each
  rewritten map (``map_size`` in ``/diagnostics``) before the next one.

:func:`write_soak_report` writes ``report.json``, ``summary.md`` and ``soak.png``.
"""

from dataclasses import dataclass, field
import io
import json
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from vpr_ros.atomic_file import write_bytes_atomic

LATENCY_BOUND = 4.0
"""Answers after warm-up, p99 at most this many node frame times.

A processed frame waits in the slot at most while the node finishes the frame before it, then
takes its own frame time: about two frame times, plus the transport both ways."""
MEMORY_GROWTH_LIMIT_PCT = 5.0
MEMORY_WINDOW = 0.1
"""Fraction of the post-warm-up run whose RSS samples give the 'warm' and the 'end' figure."""
SKIPPED = ('skipped_paused', 'skipped_keyframe_gate')
COUNTERS = ('received', 'processed', 'dropped_stale', 'rejected', 'map_reloads',
            'map_reload_failures')
# The temporal gate is off so that every answer's accept flag is exactly probability >= threshold.
INITIAL_PARAMETERS = {'localizer.top_k': 5, 'localizer.accept_probability': 0.5,
                      'localizer.temporal_window': 0}


@dataclass
class ParameterChange:
    """One run-time parameter change: requested and acknowledged at driver times (s)."""

    name: str
    value: object
    requested: float
    confirmed: float = math.nan
    successful: bool = False
    reason: str = ''


@dataclass
class ReloadEvent:
    """One map reload: ``kind`` 'service' (``~/reload_map``) or 'rewrite' (map folder saved)."""

    kind: str
    time: float
    done: float = math.nan
    successful: bool = False
    message: str = ''
    map_size: int = 0


@dataclass
class SoakRecording:
    """What the soak driver recorded (times are ``time.perf_counter()`` seconds).

    ``matches`` rows are ``(frame index or -1, arrival, candidates, accepted, best
    probability, published by the node)``; ``diagnostics`` rows ``(time, {key: value})``;
    ``rss`` rows ``(time, bytes)``.
    """

    config: dict
    send_times: np.ndarray
    start: float = 0.0
    end: float = 0.0
    matches: list = field(default_factory=list)
    diagnostics: list = field(default_factory=list)
    rss: list = field(default_factory=list)
    changes: list = field(default_factory=list)
    reloads: list = field(default_factory=list)
    node_exit_code: Optional[int] = None
    node_errors: list = field(default_factory=list)
    driver_errors: list = field(default_factory=list)


# ------------------------------------------------------------------------------ figures

def percentiles(values: Sequence[float]) -> dict:
    """Return ``count, mean, p50, p90, p99, max`` of ``values`` (NaN when empty)."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return {'count': 0, **dict.fromkeys(('mean', 'p50', 'p90', 'p99', 'max'), math.nan)}
    p50, p90, p99 = np.percentile(array, [50, 90, 99])
    return {'count': int(array.size), 'mean': float(array.mean()), 'p50': float(p50),
            'p90': float(p90), 'p99': float(p99), 'max': float(array.max())}


def latencies(recording: SoakRecording) -> np.ndarray:
    """Return ``[M, 3]`` per answer: frame send time, and latency (ms) to publish and arrival.

    Column 1 runs from publishing the frame to the node publishing its ``~/matches`` (the DDS
    source timestamp); column 2 to the message's arrival at the driver.
    """
    rows = [(recording.send_times[i], (published - recording.send_times[i]) * 1e3,
             (arrived - recording.send_times[i]) * 1e3)
            for i, arrived, *_, published in recording.matches if i >= 0]
    return np.array(rows, dtype=np.float64).reshape(-1, 3)


def final_counters(recording: SoakRecording) -> dict:
    """Return the node's counters from its last ``/diagnostics`` (integers)."""
    values = recording.diagnostics[-1][1] if recording.diagnostics else {}
    return {key: int(value) for key, value in values.items()
            if key in COUNTERS or key.startswith(('skipped_', 'rejected.', 'result.'))}


def accounting(recording: SoakRecording) -> dict:
    """Return frames sent, the node's counters and what is unaccounted for."""
    counters = final_counters(recording)
    sent = int(np.isfinite(recording.send_times).sum())
    received = counters.get('received', 0)
    handled = (counters.get('processed', 0) + counters.get('dropped_stale', 0)
               + sum(counters.get(k, 0) for k in SKIPPED) + counters.get('rejected', 0))
    answered = [i for i, *_ in recording.matches if i >= 0]
    return {'frames_sent': sent, 'received': received,
            'processed': counters.get('processed', 0),
            'dropped_stale': counters.get('dropped_stale', 0),
            **{k: counters.get(k, 0) for k in SKIPPED},
            'rejected': counters.get('rejected', 0),
            'rejections': {k[9:]: v for k, v in counters.items() if k.startswith('rejected.')},
            'unaccounted': received - handled, 'transport_lost': sent - received,
            'matches_received': len(recording.matches),
            'matches_unknown_stamp': len(recording.matches) - len(answered),
            'matches_duplicate': len(answered) - len(set(answered)),
            'last_answered_frame': max(answered, default=-1)}


def node_frame_ms(recording: SoakRecording, warm: float) -> float:
    """Return the node's own time per processed frame (ms): image decoding plus inference.

    It is measured in the same run, not configured: the median, over the ``/diagnostics`` after
    warm-up, of the node's ``latency_ms.decode.mean + latency_ms.total.mean`` (the model's
    ``describe``, the search and the re-ranking; means over its last 100 frames).
    """
    values = [float(v['latency_ms.decode.mean']) + float(v['latency_ms.total.mean'])
              for t, v in recording.diagnostics
              if t >= warm and 'latency_ms.total.mean' in v and 'latency_ms.decode.mean' in v]
    return float(np.median(values)) if values else math.nan


def driver_lag_ms(recording: SoakRecording) -> np.ndarray:
    """Return how late (ms) the driver published each frame against its fixed schedule."""
    period = 1.0 / (float(recording.config['camera_hz']) * float(recording.config['speedup']))
    due = recording.start + np.arange(len(recording.send_times)) * period
    return (recording.send_times - due) * 1e3


def latency_summary(recording: SoakRecording, warm: float) -> dict:
    """Return latency percentiles after warm-up, and the node's own frame time.

    ``latency_ms`` runs from publishing a frame to the node publishing its answer: the latency
    of the published matches, checked against ``LATENCY_BOUND`` node frame times.
    ``latency_received_ms`` runs to the answer's arrival at the driver; it adds the way back
    and the driver's own delays (the driver shares the CPU and runs the map rewrites).
    ``early_p50_ms`` and ``late_p50_ms`` are the medians of the first and the last quarter of
    the answers after warm-up: a queue building up would show as growth between them.
    """
    rows = latencies(recording)
    after = rows[rows[:, 0] >= warm]
    quarter = max(1, len(after) // 4)
    frame_ms = node_frame_ms(recording, warm)
    published = percentiles(after[:, 1])
    lag = driver_lag_ms(recording)
    return {'latency_ms': published, 'latency_received_ms': percentiles(after[:, 2]),
            'latency_ms_all_answers': percentiles(rows[:, 1]),
            'node_frame_ms': frame_ms,
            'p99_over_frame_time': published['p99'] / frame_ms if frame_ms > 0 else math.nan,
            'driver_lag_ms': percentiles(lag[np.isfinite(lag)]),
            'early_p50_ms': percentiles(after[:quarter, 1])['p50'],
            'late_p50_ms': percentiles(after[-quarter:, 1])['p50']}


def memory_summary(recording: SoakRecording, warm: float) -> dict:
    """Return the node's resident memory after warm-up and at the end (MB) and the growth."""
    samples = np.array(recording.rss, dtype=np.float64).reshape(-1, 2)
    samples = samples[(samples[:, 0] >= warm) & (samples[:, 0] <= recording.end)]
    if len(samples) < 2:
        return {'rss_warm_mb': math.nan, 'rss_end_mb': math.nan, 'rss_peak_mb': math.nan,
                'rss_growth_pct': math.nan, 'rss_samples': int(len(samples))}
    span = max(2, int(round(len(samples) * MEMORY_WINDOW)))
    warm_mb = float(np.median(samples[:span, 1])) / 2**20
    end_mb = float(np.median(samples[-span:, 1])) / 2**20
    return {'rss_warm_mb': warm_mb, 'rss_end_mb': end_mb,
            'rss_peak_mb': float(samples[:, 1].max()) / 2**20,
            'rss_growth_pct': 100.0 * (end_mb - warm_mb) / warm_mb,
            'rss_samples': int(len(samples))}


def parameters_in_force(changes: Sequence[ParameterChange], sent: float,
                        arrived: float) -> Optional[dict]:
    """Return the parameters that processed a frame, or None while a change was in flight.

    The frame was processed between ``sent`` and ``arrived``; a change took effect between its
    request and its acknowledgement. The configuration is certain when every change was either
    acknowledged before ``sent`` or requested after ``arrived``.
    """
    values = dict(INITIAL_PARAMETERS)
    for change in changes:
        if change.successful and change.confirmed <= sent:
            values[change.name] = change.value
        elif change.requested < arrived:
            return None
    return values


def parameter_summary(recording: SoakRecording) -> dict:
    """Return how many changes were acknowledged and how many answers show them (or not)."""
    verified = mismatched = 0
    for index, arrived, count, accepted, probability, _ in recording.matches:
        values = None if index < 0 else parameters_in_force(
            recording.changes, recording.send_times[index], arrived)
        if values is None or count == 0:
            continue
        expected_accept = probability >= values['localizer.accept_probability']
        good = count == values['localizer.top_k'] and bool(accepted) == expected_accept
        verified += int(good)
        mismatched += int(not good)
    return {'parameter_changes': len(recording.changes),
            'parameter_changes_ok': sum(c.successful for c in recording.changes),
            'answers_checked_against_parameters': verified + mismatched,
            'answers_with_wrong_parameters': mismatched}


def rewrites_seen(recording: SoakRecording) -> int:
    """Return how many map rewrites showed up as the node's ``map_size`` before the next one."""
    rewrites = [r for r in recording.reloads if r.kind == 'rewrite' and r.successful]
    seen = 0
    for k, rewrite in enumerate(rewrites):
        until = rewrites[k + 1].time if k + 1 < len(rewrites) else math.inf
        seen += int(any(rewrite.done <= t < until and int(v.get('map_size', -1)) ==
                        rewrite.map_size for t, v in recording.diagnostics))
    return seen


def reload_summary(recording: SoakRecording) -> dict:
    """Return the reloads asked for and what the node reports about them."""
    counters = final_counters(recording)
    service = [r for r in recording.reloads if r.kind == 'service']
    return {'service_reloads': len(service),
            'service_reloads_ok': sum(r.successful for r in service),
            'map_rewrites': sum(r.kind == 'rewrite' for r in recording.reloads),
            'map_rewrites_seen': rewrites_seen(recording),
            'node_map_reloads': counters.get('map_reloads', 0),
            'node_map_reload_failures': counters.get('map_reload_failures', 0)}


def warm_up_time(recording: SoakRecording) -> float:
    """Return the driver time at which the warm-up part of the frames had been published."""
    sent = recording.send_times[np.isfinite(recording.send_times)]
    if sent.size == 0:
        return recording.start
    fraction = float(recording.config.get('warmup_fraction', 0.2))
    return float(sent[min(len(sent) - 1, int(len(sent) * fraction))])


def summarise(recording: SoakRecording) -> dict:
    """Return the report: settings, accounting, latency, memory, parameters, reloads, checks."""
    warm = warm_up_time(recording)
    wall = recording.end - recording.start
    report = {'settings': recording.config,
              'publish_wall_s': wall,
              'publish_rate_hz': accounting(recording)['frames_sent'] / wall if wall > 0 else 0.0,
              'accounting': accounting(recording),
              'latency': latency_summary(recording, warm),
              'memory': memory_summary(recording, warm),
              'parameters': parameter_summary(recording),
              'reloads': reload_summary(recording),
              'errors': recording.driver_errors + recording.node_errors,
              'node_exit_code': recording.node_exit_code}
    report['checks'] = soak_checks(report)
    report['passed'] = all(report['checks'].values())
    return report


def soak_checks(report: dict) -> dict:
    """Return the pass/fail of each soak criterion."""
    acc, lat, mem = report['accounting'], report['latency'], report['memory']
    params, reloads = report['parameters'], report['reloads']
    reliable = report['settings'].get('reliability') == 'reliable'
    return {
        'answers_to_the_end': acc['last_answered_frame'] == acc['frames_sent'] - 1,
        'every_frame_accounted': acc['unaccounted'] == 0 and acc['received'] > 0
        and (acc['transport_lost'] == 0 or not reliable),
        'every_processed_frame_answered': acc['matches_received'] == acc['processed']
        and acc['matches_unknown_stamp'] == 0 and acc['matches_duplicate'] == 0,
        'latency_bounded': lat['p99_over_frame_time'] <= LATENCY_BOUND,
        'memory_growth_below_limit': mem['rss_growth_pct'] < MEMORY_GROWTH_LIMIT_PCT,
        'parameter_changes_applied': params['parameter_changes_ok'] == params['parameter_changes']
        and params['answers_with_wrong_parameters'] == 0,
        'map_reloads_applied': reloads['service_reloads_ok'] == reloads['service_reloads']
        and reloads['map_rewrites_seen'] == reloads['map_rewrites']
        and reloads['node_map_reload_failures'] == 0,
        'no_errors': not report['errors'] and report['node_exit_code'] == 0
        and acc['rejected'] == 0,
    }


# ------------------------------------------------------------------------------ writing

def _round(value: object) -> object:
    if isinstance(value, float):
        return round(value, 3) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_round(v) for v in value]
    return value


def summary_lines(report: dict) -> list[str]:
    """Return the headline figures as short text lines (CLI output, ``summary.md``)."""
    acc, lat, mem = report['accounting'], report['latency'], report['memory']
    ms, received = lat['latency_ms'], lat['latency_received_ms']
    params, reloads = report['parameters'], report['reloads']
    return [
        f'frames sent {acc["frames_sent"]} in {report["publish_wall_s"]:.1f} s '
        f'({report["publish_rate_hz"]:.1f} Hz); node received {acc["received"]}, processed '
        f'{acc["processed"]}, dropped_stale {acc["dropped_stale"]}, skipped_keyframe_gate '
        f'{acc["skipped_keyframe_gate"]}, rejected {acc["rejected"]}, unaccounted '
        f'{acc["unaccounted"]}, lost in transport {acc["transport_lost"]}',
        f'answers {acc["matches_received"]}; frame to published answer after warm-up, ms: p50 '
        f'{ms["p50"]:.1f}, p90 {ms["p90"]:.1f}, p99 {ms["p99"]:.1f}, max {ms["max"]:.1f}; '
        f'node time per frame {lat["node_frame_ms"]:.1f} ms (p99 = '
        f'{lat["p99_over_frame_time"]:.2f} x)',
        f'frame to answer received: p50 {received["p50"]:.1f}, p90 {received["p90"]:.1f}, p99 '
        f'{received["p99"]:.1f}, max {received["max"]:.1f} ms; driver late by up to '
        f'{lat["driver_lag_ms"]["max"]:.0f} ms',
        f'node RSS {mem["rss_warm_mb"]:.1f} MB after warm-up, {mem["rss_end_mb"]:.1f} MB at the '
        f'end ({mem["rss_growth_pct"]:+.2f} %), peak {mem["rss_peak_mb"]:.1f} MB',
        f'parameter changes {params["parameter_changes_ok"]}/{params["parameter_changes"]} '
        f'acknowledged, {params["answers_checked_against_parameters"]} answers checked, '
        f'{params["answers_with_wrong_parameters"]} wrong',
        f'reloads: ~/reload_map {reloads["service_reloads_ok"]}/{reloads["service_reloads"]}, '
        f'map rewrites seen {reloads["map_rewrites_seen"]}/{reloads["map_rewrites"]}, node '
        f'map_reloads {reloads["node_map_reloads"]}, failures '
        f'{reloads["node_map_reload_failures"]}; errors {len(report["errors"])}',
    ]


def _markdown(report: dict) -> str:
    settings = '\n'.join(f'| `{k}` | {v} |' for k, v in report['settings'].items())
    checks = '\n'.join(f'| {k} | {"pass" if v else "FAIL"} |' for k, v in report['checks'].items())
    errors = '\n'.join(f'- `{e}`' for e in report['errors']) or 'none'
    lines = '\n'.join(f'- {line}' for line in summary_lines(report))
    return (f'# Soak test of the localize node: {"passed" if report["passed"] else "FAILED"}\n\n'
            f'{lines}\n\n![latency and memory](soak.png)\n\n## Checks\n\n| check | result |\n'
            f'|---|---|\n{checks}\n\n## Settings\n\n| setting | value |\n|---|---|\n'
            f'{settings}\n\n## Errors\n\n{errors}\n')


def _plot(recording: SoakRecording, report: dict) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(9, 6), layout='constrained')
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, sharex=True)
    rows, t0 = latencies(recording), recording.start
    top.plot(rows[:, 0] - t0, rows[:, 2], '.', markersize=1, color='orange',
             label='frame to answer received')
    top.plot(rows[:, 0] - t0, rows[:, 1], '.', markersize=2, label='frame to answer published')
    top.axhline(report['latency']['node_frame_ms'] * LATENCY_BOUND, color='red', linestyle='--',
                label=f'{LATENCY_BOUND:g} x node time per frame')
    for change in recording.changes:
        top.axvline(change.requested - t0, color='grey', linewidth=0.5)
    for reload in recording.reloads:
        top.axvline(reload.time - t0, color='green', linewidth=0.5, linestyle=':')
    top.set_ylabel('latency (ms)')
    top.legend(loc='upper right')
    rss = np.array(recording.rss, dtype=np.float64).reshape(-1, 2)
    bottom.plot(rss[:, 0] - t0, rss[:, 1] / 2**20)
    bottom.axvspan(0, warm_up_time(recording) - t0, color='grey', alpha=0.2, label='warm-up')
    bottom.set_ylabel('node RSS (MB)')
    bottom.set_xlabel('time since the first frame (s); grey: parameter change, green: reload')
    bottom.legend(loc='lower right')
    buffer = io.BytesIO()
    figure.savefig(buffer, format='png', dpi=100)
    return buffer.getvalue()


def write_soak_report(recording: SoakRecording, report: dict, out_dir: Path) -> Path:
    """Write ``report.json``, ``summary.md`` and ``soak.png`` into ``out_dir``; return it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out / 'report.json', (json.dumps(_round(report), indent=2) + '\n').encode())
    write_bytes_atomic(out / 'summary.md', _markdown(report).encode())
    write_bytes_atomic(out / 'soak.png', _plot(recording, report))
    return out
