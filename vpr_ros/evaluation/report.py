"""The evaluation report: ``metrics.json``, ``summary.md``, ``predictions.csv`` and plots.

:func:`write_report` writes :data:`REPORT_FILES` for an
:class:`~vpr_ros.evaluation.result.EvalResult`, every file atomically; the plots are
:mod:`vpr_ros.evaluation.plots`'.
"""

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from vpr_ros.atomic_file import write_bytes_atomic, write_text_atomic
from vpr_ros.evaluation.plots import (plot_latency, plot_match_grid, plot_pr_curve,
                                      plot_recall_curve, plot_reliability)
from vpr_ros.evaluation.result import EvalResult

REPORT_FILES = ('metrics.json', 'summary.md', 'predictions.csv', 'recall_at_n.png',
                'precision_recall.png', 'reliability.png', 'latency.png', 'matches.png')


def write_report(result: EvalResult, out_dir: Union[str, Path]) -> list:
    """Write :data:`REPORT_FILES` into ``out_dir`` (created if needed); return their paths.

    ``metrics.json`` holds :meth:`EvalResult.to_dict`; ``summary.md`` the tables and the
    plots; ``predictions.csv`` one row per query; the PNGs are the Recall@N curve, the
    loop-closure precision-recall curve, per-stage latency histograms and a grid of queries
    with their top-3 matches framed green (correct) or red (wrong). Every file is written
    atomically.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result.to_dict(), indent=2, sort_keys=False) + '\n'
    paths = [write_text_atomic(out / 'metrics.json', text),
             write_text_atomic(out / 'summary.md', summary_markdown(result)),
             write_text_atomic(out / 'predictions.csv', predictions_csv(result))]
    plots = {'recall_at_n.png': plot_recall_curve, 'precision_recall.png': plot_pr_curve,
             'reliability.png': plot_reliability, 'latency.png': plot_latency,
             'matches.png': plot_match_grid}
    for name, plot in plots.items():
        paths.append(_save_figure(plot(result), out / name))
    return paths


def _save_figure(figure: Any, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format='png', dpi=100)
    return write_bytes_atomic(path, buffer.getvalue())


def summary_markdown(result: EvalResult) -> str:
    """Return the Markdown summary (dataset, Recall@N, loop closure, latency, plots)."""
    info = result.dataset.summary()
    lines = [f'# VPR evaluation: {result.dataset.name}', '',
             f'`{result.summary_line()}`', '',
             f'- queries: {info["num_queries"]} ({info["queries_without_positives"]} without a '
             f'positive, counted as misses); database: {info["num_database"]}',
             *[f'- {k}: {v}' for k, v in result.settings.items()], '',
             '| | ' + ' | '.join(f'R@{n}' for n in result.recalls) + ' |',
             '|---|' + '---|' * len(result.recalls),
             '| final | ' + ' | '.join(f'{v:.2f}' for v in result.recalls.values()) + ' |']
    if result.recalls_before_rerank is not None:
        lines.append('| before re-ranking | ' + ' | '.join(
            f'{v:.2f}' for v in result.recalls_before_rerank.values()) + ' |')
    lines += ['', '## Loop closure', '']
    lines += [f'- {k}: {_fmt(v)}' for k, v in result.loop_closure.items()
              if k != 'at_threshold']
    lines += _decision_lines(result.loop_closure.get('at_threshold'))
    if result.calibration:
        table = result.calibration['reliability']
        lines += ['', '## Calibration of the best match probability', '',
                  f'- expected calibration error: {table["ece"]:.4f}, Brier score: '
                  f'{table["brier"]:.4f} ({table["decisions"]} best matches)']
        lines += [f'- accepted at p >= {k}: {v["accepted"]}, of which correct '
                  f'{_fmt(v["precision"])}' for k, v in result.calibration['precision_at'].items()]
    lines += ['', '## Latency (ms)', '', '| stage | count | mean | p50 | p90 | p99 | max |',
              '|---|---|---|---|---|---|---|']
    for stage, stats in result.latency_ms.items():
        values = [stats.get(k, float('nan')) for k in ('mean', 'p50', 'p90', 'p99', 'max')]
        lines.append(f'| {stage} | {stats["count"]} | ' + ' | '.join(f'{v:.2f}' for v in values)
                     + ' |')
    lines += ['', '## Plots', ''] + [f'![{name}]({name})' for name in REPORT_FILES
                                     if name.endswith('.png')]
    return '\n'.join(lines) + '\n'


def _decision_lines(decision: Optional[dict]) -> list:
    """Return the Markdown table of the accept decision (accepted, correct, wrong)."""
    if not decision:
        return []
    return ['', f'### Accept decision ({decision["source"]}, threshold '
                f'{decision["threshold"]:g})', '',
            '| accepted | correct | wrong | precision | recall |', '|---|---|---|---|---|',
            f'| {decision["accepted"]} | {decision["correct_accepted"]} | '
            f'{decision["wrong_accepted"]} | {_fmt(decision["precision"])} | '
            f'{_fmt(decision["recall"])} |', '',
            'Wrong accepts are accepted best matches that are no true match (false loop '
            'closures); `predictions.csv` lists them (`accepted` 1, `correct` 0).']


def _fmt(value: Any) -> str:
    if isinstance(value, dict):
        return ', '.join(f'{k}={_fmt(v)}' for k, v in value.items())
    if isinstance(value, float):
        return f'{value:.4f}'
    return str(value)


PREDICTION_COLUMNS = ('query', 'key', 'stamp_ns', 'first_positive_rank', 'database_ids',
                      'scores', 'probability', 'accepted', 'correct', 'reason')
"""``predictions.csv`` columns; ``accepted``/``correct`` are 1/0, empty when unknown."""


def predictions_csv(result: EvalResult) -> str:
    """Return one CSV row per query (:data:`PREDICTION_COLUMNS`).

    ``first_positive_rank`` is 0-based (-1: no correct match in the ranking);
    ``database_ids`` and ``scores`` are space-separated, best first; ``probability`` is the
    best match's calibrated probability (empty when unknown); ``accepted`` the accept
    decision (``result.accept_source``: the localizer's, or probability >= threshold);
    ``correct`` whether the best match is a true match (empty without a match), so the wrong
    accepts are the rows with ``accepted`` 1 and ``correct`` 0; ``reason`` the localizer's
    reason (``accepted``, ``below threshold``, ``temporal``, ``empty map``).
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator='\n')
    writer.writerow(PREDICTION_COLUMNS)
    stamps = result.dataset.query_stamps_ns()
    count = result.dataset.num_queries
    probability = (result.best_probability if result.best_probability is not None
                   else np.full(count, np.nan))
    accepted = result.accepted or (None,) * count
    reasons = result.reasons or ('',) * count
    for q in range(count):
        ids = [int(j) for j in result.predictions[q] if j >= 0]
        scores = [f'{s:.6f}' for s in result.scores[q, :len(ids)]]
        correct = '' if not ids else int(result.first_positive_rank[q] == 0)
        writer.writerow([q, result.dataset.query_key(q), int(stamps[q]),
                         int(result.first_positive_rank[q]), ' '.join(map(str, ids)),
                         ' '.join(scores),
                         '' if math.isnan(probability[q]) else f'{probability[q]:.6f}',
                         '' if accepted[q] is None else int(accepted[q]), correct, reasons[q]])
    return buffer.getvalue()
