"""Report plots of an :class:`~vpr_ros.evaluation.result.EvalResult` (matplotlib figures).

Recall@N, the loop-closure precision-recall curve, the reliability diagram of the best match's
probability, per-stage latency histograms and a grid of example matches. Each ``plot_*``
returns an unsaved :class:`matplotlib.figure.Figure`; matplotlib is imported only when a plot
is drawn.
"""

from typing import Any

import numpy as np

from vpr_ros.evaluation.result import EvalResult

LATENCY_STAGES = ('describe', 'search', 'rerank', 'total', 'map_describe')

GRID_QUERIES = 6
GRID_MATCHES = 3


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), layout='constrained')


def plot_recall_curve(result: EvalResult) -> Any:
    """Return a figure of Recall@N for N = 1..K (before re-ranking too when it ran)."""
    figure = _figure(6, 4)
    axes = figure.add_subplot()
    ns = np.arange(1, result.predictions.shape[1] + 1)
    axes.plot(ns, result.recall_curve(), marker='.', label='final ranking')
    if result.recalls_before_rerank is not None:
        axes.plot(ns, result.recall_curve(before_rerank=True), marker='.', linestyle='--',
                  label='before re-ranking')
    for n, value in result.recalls.items():
        axes.annotate(f'{value:.1f}', (n, value), textcoords='offset points', xytext=(0, 6),
                      ha='center', fontsize=8)
    axes.set(xlabel='N', ylabel='Recall@N (%)', ylim=(0, 105), xscale='log')
    axes.set_title(f'{result.dataset.name}\n{result.summary_line()}', fontsize=9)
    axes.grid(True, alpha=0.3)
    axes.legend(loc='lower right')
    return figure


def plot_pr_curve(result: EvalResult) -> Any:
    """Return a figure of the loop-closure precision-recall curve with its summary numbers."""
    figure = _figure(6, 4)
    axes = figure.add_subplot()
    precision, recall, _ = result.pr_curve
    loop = result.loop_closure
    if len(recall):
        axes.step(np.concatenate([[0.0], recall]), np.concatenate([[precision[0]], precision]),
                  where='pre')
    axes.set(xlabel='recall', ylabel='precision', xlim=(0, 1.02), ylim=(0, 1.05))
    axes.set_title(f'loop closure, best match by {loop["score"]}\n'
                   f'AUC {loop["auc"]:.3f}, max recall at 100% precision '
                   f'{loop["max_recall_at_100_precision"]:.3f}, best F1 {loop["best_f1"]:.3f}',
                   fontsize=9)
    axes.grid(True, alpha=0.3)
    return figure


def plot_latency(result: EvalResult) -> Any:
    """Return one latency histogram per stage (per-query milliseconds, p50 and p99 marked)."""
    stages = [s for s in LATENCY_STAGES if s in result.latency_samples]
    stages += [s for s in result.latency_samples if s not in stages]
    figure = _figure(7, 1.8 * max(len(stages), 1))
    if not stages:
        return figure
    grid = figure.subplots(len(stages), 1, squeeze=False)
    for axes, stage in zip(grid[:, 0], stages):
        values = result.latency_samples[stage]
        axes.hist(values[np.isfinite(values)], bins=30, color='tab:blue')
        stats = result.latency_ms.get(stage, {})
        for key, color in (('p50', 'tab:green'), ('p99', 'tab:red')):
            if np.isfinite(stats.get(key, np.nan)):
                axes.axvline(stats[key], color=color, linestyle='--',
                             label=f'{key} {stats[key]:.2f} ms')
        axes.set_title(f'{stage} ({len(values)} images)', fontsize=9)
        axes.set_ylabel('count', fontsize=8)
        axes.legend(fontsize=8, loc='upper right')
    grid[-1, 0].set_xlabel('milliseconds per image')
    return figure


def plot_reliability(result: EvalResult) -> Any:
    """Return the reliability diagram of the best match's probability (with bin counts)."""
    figure = _figure(6, 4.5)
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], linestyle=':', color='0.5', label='perfect calibration')
    table = result.calibration.get('reliability')
    if table is None:
        axes.set_title('reliability: no probabilities recorded')
        return figure
    edges = np.asarray(table['edges'])
    centres = (edges[:-1] + edges[1:]) / 2
    accuracy = np.asarray(table['accuracy'], dtype=float)
    filled = np.asarray(table['count']) > 0
    axes.bar(centres[filled], accuracy[filled], width=np.diff(edges)[filled] * 0.9,
             alpha=0.6, label='fraction correct')
    axes.plot(np.asarray(table['mean_probability'], dtype=float)[filled], accuracy[filled],
              'o-', color='tab:red', label='mean probability vs correct')
    for x, y, count in zip(centres[filled], accuracy[filled], np.asarray(table['count'])[filled]):
        axes.annotate(str(count), (x, y), textcoords='offset points', xytext=(0, 4),
                      ha='center', fontsize=7)
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.05)
    axes.set_xlabel('probability of the best match')
    axes.set_ylabel('fraction of best matches that are correct')
    axes.set_title(f'reliability ({table["decisions"]} best matches), ECE {table["ece"]:.3f}')
    axes.legend(fontsize=8, loc='upper left')
    return figure


def _grid_queries(result: EvalResult) -> list:
    count = min(GRID_QUERIES, result.dataset.num_queries)
    return sorted({int(round(v)) for v in np.linspace(0, result.dataset.num_queries - 1, count)})


def plot_match_grid(result: EvalResult) -> Any:
    """Return a grid: one row per sampled query, its top-3 matches framed green/red."""
    queries = _grid_queries(result)
    figure = _figure(2.4 * (GRID_MATCHES + 1), 2.0 * max(len(queries), 1))
    if not queries:
        return figure
    grid = figure.subplots(len(queries), GRID_MATCHES + 1, squeeze=False)
    for row, q in enumerate(queries):
        _show(grid[row][0], result.dataset.query_image(q), f'query {q}', 'black')
        for k in range(GRID_MATCHES):
            _show_match(grid[row][k + 1], result, q, k)
    return figure


def _show_match(axes: Any, result: EvalResult, q: int, k: int) -> None:
    j = int(result.predictions[q, k]) if k < result.predictions.shape[1] else -1
    if j < 0:
        axes.axis('off')
        return
    correct = bool(np.isin(j, result.dataset.positives[q]))
    score = result.scores[q, k]
    _show(axes, result.dataset.database_image(j), f'#{k + 1} db {j} ({score:.3f})',
          'tab:green' if correct else 'tab:red')


def _show(axes: Any, image: np.ndarray, title: str, color: str) -> None:
    axes.imshow(image)
    axes.set_title(title, fontsize=8, color=color)
    axes.set_xticks([])
    axes.set_yticks([])
    for spine in axes.spines.values():
        spine.set_edgecolor(color)
        spine.set_linewidth(4)
