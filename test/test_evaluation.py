"""Evaluation pipeline, scoring of recorded matches, reports and the ``vpr-eval`` CLI."""

import csv
from dataclasses import replace
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from vpr_ros.cli import vpr_eval
from vpr_ros.data.benchmarks.dataset import EvalDataset
from vpr_ros.data.benchmarks.image_folders import read_folder_dataset
from vpr_ros.data.benchmarks.index_list import read_index_list_dataset
from vpr_ros.data.benchmarks.traversals import pairs_from_traversals, read_bag_pair
from vpr_ros.data.frame import Frame
from vpr_ros.errors import DatasetError
from vpr_ros.evaluation.report import REPORT_FILES, write_report
from vpr_ros.evaluation.result import Match
from vpr_ros.evaluation.runner import (build_map, evaluate, localize_queries, make_localizer,
                                       match_from_result, score_matches)
from vpr_ros.geometry import pose_from_xy_yaw

SMALL_INPUT = [96, 128]
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope='module')
def small_model():
    """Build the default architecture with its ImageNet weights at a reduced input size."""
    from vpr_ros.models.registry import create_model
    return create_model('efficientnet_lite0_gem', input_size=SMALL_INPUT).eval()


def _toy_traversals(count: int = 8, seed: int = 0) -> tuple[list, list]:
    """Database blocks images at x = 10 i; queries are noisy copies 1 m further along."""
    rng = np.random.default_rng(seed)
    database, queries = [], []
    for i in range(count):
        blocks = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        image = np.kron(blocks, np.ones((8, 8, 1), dtype=np.uint8))
        noisy = np.clip(image.astype(int) + rng.integers(-20, 21, image.shape), 0, 255)
        database.append(Frame(10**9 + i * 10**8, image, pose_from_xy_yaw(10 * i, 0, 0), f'd{i}'))
        queries.append(Frame(5 * 10**9 + i * 10**8, noisy.astype(np.uint8),
                             pose_from_xy_yaw(10 * i + 1, 0, 0), f'q{i}'))
    return database, queries


def _tiny_dataset() -> EvalDataset:
    images = [np.full((4, 4, 3), v, np.uint8) for v in range(7)]
    database = tuple(Frame(i, images[i]) for i in range(4))
    queries = tuple(Frame(100 * (q + 1), images[4 + q]) for q in range(3))
    return EvalDataset('tiny', database, queries, (np.array([1]), np.array([2, 3]),
                                                   np.array([], np.int64)))


# ------------------------------------------------------------------- scoring, hand-worked

def test_score_matches_hand_worked() -> None:
    """Map ids translate to database indices; missing and unknown queries are handled."""
    matches = [(100, [11, 10], [0.9, 0.5], 0.8), (200, [10, 12], [0.7, 0.6], 0.3),
               (999, [10], [0.1])]
    result = score_matches(matches, _tiny_dataset(), map_ids=[10, 11, 12, 13],
                           recall_values=(1, 5), accept_threshold=0.5)
    assert result.predictions.shape == (3, 5)
    assert result.predictions[:, :2].tolist() == [[1, 0], [0, 2], [-1, -1]]
    assert result.recalls == pytest.approx({1: 100 / 3, 5: 200 / 3})
    assert result.recalls_before_rerank is None
    assert result.first_positive_rank.tolist() == [0, 1, -1]
    loop = result.loop_closure
    assert (loop['score'], loop['decisions'], loop['queries_with_true_match']) == (
        'probability', 2, 2)
    assert loop['auc'] == pytest.approx(0.5)
    assert loop['max_recall_at_100_precision'] == pytest.approx(0.5)
    assert (loop['best_f1'], loop['best_f1_threshold']) == pytest.approx((2 / 3, 0.8))
    assert loop['at_threshold'] == {'threshold': 0.5, 'source': 'score >= threshold',
                                    'accepted': 1, 'correct_accepted': 1, 'wrong_accepted': 0,
                                    'precision': 1.0, 'recall': 0.5}
    assert result.summary_line() == 'R@1: 33.3, R@5: 66.7'


def test_score_matches_before_rerank_and_latency() -> None:
    """Matches with a global ranking give Recall before re-ranking; timings are summarised."""
    matches = [Match(100, (0, 1), (3.0, 1.0), global_map_ids=(1, 0),
                     timings_ms={'describe': 10.0, 'total': 12.0}, accepted=True),
               Match(200, (3,), (2.0,), global_map_ids=(0,),
                     timings_ms={'describe': 20.0, 'total': 22.0}, accepted=False)]
    result = score_matches(matches, _tiny_dataset(), recall_values=(1, 2),
                           accept_threshold=0.5)
    assert result.recalls == pytest.approx({1: 100 / 3, 2: 200 / 3})
    assert result.recalls_before_rerank == pytest.approx({1: 100 / 3, 2: 100 / 3})
    assert result.loop_closure['score'] == 'best_score'
    assert result.loop_closure['at_threshold']['source'] == 'localizer decision'
    assert result.latency_ms['describe']['p50'] == pytest.approx(15.0)
    assert result.latency_ms['total']['count'] == 2
    assert list(result.recall_curve(before_rerank=True)) == pytest.approx([100 / 3, 100 / 3])


def _decision_dataset() -> EvalDataset:
    images = [np.full((4, 4, 3), v, np.uint8) for v in range(10)]
    database = tuple(Frame(i, images[i]) for i in range(4))
    queries = tuple(Frame(100 * (q + 1), images[4 + q]) for q in range(6))
    positives = tuple(np.array(p, np.int64) for p in ([1], [2, 3], [], [0], [1], []))
    return EvalDataset('decisions', database, queries, positives)


DECISION_MATCHES = [
    Match(100, (1, 0), (0.9, 0.5), 0.95, accepted=True, reason='accepted'),      # correct
    Match(200, (0, 2), (0.8, 0.7), 0.97, accepted=True, reason='accepted'),      # wrong place
    Match(300, (3,), (0.7,), 0.92, accepted=True, reason='accepted'),            # no true match
    Match(400, (0,), (0.9,), 0.99, accepted=False, reason='temporal'),           # right, held
    Match(500, (), (), accepted=False, reason='empty map')]                       # 600: no answer


def test_accept_decisions_count_wrong_accepts_in_metrics_csv_and_summary(tmp_path: Path) -> None:
    """The localizer's decisions are counted (3 accepted, 2 wrong) and listed per query."""
    result = score_matches(DECISION_MATCHES, _decision_dataset(), recall_values=(1,),
                           accept_threshold=0.9)
    decision = result.loop_closure['at_threshold']
    assert decision == pytest.approx({
        'threshold': 0.9, 'source': 'localizer decision', 'accepted': 3, 'correct_accepted': 1,
        'wrong_accepted': 2, 'precision': 1 / 3, 'recall': 1 / 4})
    assert result.accepted == (True, True, True, False, False, None)
    write_report(result, tmp_path / 'report')
    with (tmp_path / 'report' / 'predictions.csv').open(newline='') as handle:
        rows = list(csv.DictReader(handle))
    assert [(r['probability'], r['accepted'], r['correct'], r['reason']) for r in rows] == [
        ('0.950000', '1', '1', 'accepted'), ('0.970000', '1', '0', 'accepted'),
        ('0.920000', '1', '0', 'accepted'), ('0.990000', '0', '1', 'temporal'),
        ('', '0', '', 'empty map'), ('', '', '', '')]
    wrong_in_csv = sum(r['accepted'] == '1' and r['correct'] == '0' for r in rows)
    metrics = json.loads((tmp_path / 'report' / 'metrics.json').read_text())
    assert wrong_in_csv == metrics['loop_closure']['at_threshold']['wrong_accepted'] == 2
    summary = (tmp_path / 'report' / 'summary.md').read_text()
    assert '### Accept decision (localizer decision, threshold 0.9)' in summary
    assert '| 3 | 1 | 2 | 0.3333 | 0.2500 |' in summary
    # Without recorded decisions the threshold decides: the held-back correct match counts.
    plain = [replace(m, accepted=None) for m in DECISION_MATCHES]
    fallback = score_matches(plain, _decision_dataset(), recall_values=(1,),
                             accept_threshold=0.9).loop_closure['at_threshold']
    assert (fallback['source'], fallback['accepted'], fallback['correct_accepted'],
            fallback['wrong_accepted']) == ('score >= threshold', 4, 2, 2)


def test_score_matches_rejects_malformed_records() -> None:
    """A record needs 3 or 4 fields; duplicate query stamps cannot be matched."""
    with pytest.raises(DatasetError, match='fields'):
        score_matches([(100, [1])], _tiny_dataset())
    twice = EvalDataset('dup', (Frame(0, np.zeros((2, 2, 3), np.uint8)),),
                        (Frame(5, np.zeros((2, 2, 3), np.uint8)),) * 2, ([0], [0]))
    with pytest.raises(DatasetError, match='not unique'):
        score_matches([], twice)


def test_write_report_holds_every_file(tmp_path: Path) -> None:
    """metrics.json, summary.md, predictions.csv and the four PNG plots are written."""
    matches = [Match(100, (1, 0, 2), (0.9, 0.5, 0.1), 0.8, (0, 1, 2), {'describe': 5.0}, True),
               Match(200, (0, 2), (0.7, 0.6), 0.3, (2, 0), {'describe': 7.0}, False)]
    result = score_matches(matches, _tiny_dataset(), recall_values=(1, 5))
    paths = write_report(result, tmp_path / 'report')
    assert sorted(p.name for p in paths) == sorted(REPORT_FILES)
    for name in REPORT_FILES:
        assert (tmp_path / 'report' / name).stat().st_size > 0
        if name.endswith('.png'):
            assert (tmp_path / 'report' / name).read_bytes()[:8] == PNG_MAGIC
    metrics = json.loads((tmp_path / 'report' / 'metrics.json').read_text())
    assert metrics['recalls']['1'] == pytest.approx(100 / 3)
    assert metrics['summary'] == result.summary_line()
    assert metrics['dataset']['num_queries'] == 3
    assert result.summary_line() in (tmp_path / 'report' / 'summary.md').read_text()
    rows = (tmp_path / 'report' / 'predictions.csv').read_text().splitlines()
    assert len(rows) == 4 and rows[1].split(',')[4] == '1 0 2'
    assert list(tmp_path.glob('report/.*')) == []


# ---------------------------------------------------------------------- pipeline, real model

def _brute_force_recalls(model, dataset: EvalDataset, ns: tuple) -> dict:
    """Describe everything directly with the model and rank by inner product with numpy."""
    from vpr_ros.models.preprocessing import preprocess
    with torch.inference_mode():
        db = model.global_descriptor(preprocess(
            [dataset.database_image(j) for j in range(dataset.num_database)], model.spec))
        q = model.global_descriptor(preprocess(
            [dataset.query_image(i) for i in range(dataset.num_queries)], model.spec))
    order = np.argsort(-(q.numpy() @ db.numpy().T), axis=1)
    return {n: 100.0 * np.mean([bool(set(order[i, :n]) & set(dataset.positives[i].tolist()))
                                for i in range(dataset.num_queries)]) for n in ns}


def test_evaluate_equals_brute_force_and_recorded_replay(small_model) -> None:
    """The pipeline's Recall@N equals a direct numpy ranking; recorded tuples score the same."""
    database, queries = _toy_traversals()
    dataset = pairs_from_traversals(database, queries, radius_m=5.0)
    ns = (1, 2, 4)
    result = evaluate(small_model, dataset, top_k=8, recall_values=ns)
    assert result.recalls == pytest.approx(_brute_force_recalls(small_model, dataset, ns))
    assert result.settings['model'] == 'efficientnet_lite0_gem'
    assert {'describe', 'search', 'total', 'map_describe'} <= set(result.latency_ms)
    localizer = make_localizer(small_model, top_k=8, rerank=False)
    map_ids, _ = build_map(localizer, dataset)
    matches = [match_from_result(r) for r in localize_queries(localizer, dataset)]
    records = [(m.query_stamp_ns, list(m.map_ids), list(m.scores)) for m in matches]
    replayed = score_matches(records, dataset, map_ids, ns)
    assert replayed.recalls == result.recalls
    assert np.array_equal(replayed.predictions, result.predictions)


def test_evaluate_with_rerank_reports_both_rankings() -> None:
    """With a pair classifier, Recall before re-ranking equals the run without re-ranking."""
    from vpr_ros.models.registry import create_model
    model = create_model('pairvpr_lite', pretrained=False, input_size=[96, 96])
    database, queries = _toy_traversals(6, seed=3)
    dataset = pairs_from_traversals(database, queries, radius_m=5.0)
    ns = (1, 3)
    reranked = evaluate(model, dataset, top_k=6, rerank=True, recall_values=ns)
    plain = evaluate(model, dataset, top_k=6, rerank=False, recall_values=ns)
    assert reranked.settings['rerank'] is True and plain.settings['rerank'] is False
    assert reranked.recalls_before_rerank == plain.recalls
    assert plain.recalls_before_rerank is None
    assert np.all(np.diff(reranked.scores, axis=1) <= 1e-6)
    assert sorted(reranked.predictions[0].tolist()) == sorted(plain.predictions[0].tolist())


def _corridor_modes(corridor_dir: Path, tmp_path: Path) -> dict:
    """Return the corridor as an index list, an @UTM folder pair and two bags (10 m apart)."""
    from vpr_ros.data.bag import write_frames
    from vpr_ros.data.image_folder import read_folder
    folder = tmp_path / 'utm'
    for side, target in (('ref', 'database'), ('query', 'queries')):
        (folder / target).mkdir(parents=True)
        for i, image in enumerate(sorted((corridor_dir / side).glob('*.jpg'))):
            name = f'@0@{10 * i:07.1f}@@@@@@@@@@@@@.jpg'
            (folder / target / name).symlink_to(image)
    for side in ('ref', 'query'):
        frames = [Frame(f.stamp_ns, f.image, pose_from_xy_yaw(10 * i, 0, 0), f.source)
                  for i, f in enumerate(read_folder(corridor_dir / side))]
        write_frames(tmp_path / f'{side}_bag', frames, 'cam', 'odom', storage='mcap')
    return {'index-list': read_index_list_dataset(corridor_dir),
            'folder': read_folder_dataset(folder),
            'bags': read_bag_pair(tmp_path / 'ref_bag', tmp_path / 'query_bag', 'cam', 'odom')}


def _check_modes_identical(model, corridor_dir: Path, tmp_path: Path) -> dict:
    datasets = _corridor_modes(corridor_dir, tmp_path)
    expected = [list(p) for p in datasets['index-list'].positives]
    results = {}
    for mode, dataset in datasets.items():
        assert (dataset.num_queries, dataset.num_database) == (111, 111)
        assert [list(p) for p in dataset.positives] == expected, mode
        results[mode] = evaluate(model, dataset, top_k=20)
    reference = results['index-list']
    for mode, result in results.items():
        assert result.recalls == reference.recalls, mode
        assert np.array_equal(result.predictions, reference.predictions), mode
    assert reference.recalls == pytest.approx(
        _brute_force_recalls(model, datasets['index-list'], reference.recall_values))
    paths = write_report(reference, tmp_path / 'report')
    assert sorted(p.name for p in paths) == sorted(REPORT_FILES)
    return results


def test_corridor_folder_index_list_and_bag_modes_agree(small_model, corridor_dir: Path,
                                                        tmp_path: Path) -> None:
    """Folder, index-list and bag mode give identical rankings and Recall@N on the corridor."""
    _check_modes_identical(small_model, corridor_dir, tmp_path)


@pytest.mark.slow
def test_corridor_default_model_all_modes(corridor_dir: Path, tmp_path: Path) -> None:
    """The default model at its full input size: three modes agree, R@1 beats chance clearly."""
    from vpr_ros.models.registry import create_model
    results = _check_modes_identical(create_model('efficientnet_lite0_gem'), corridor_dir,
                                     tmp_path)
    print('corridor default model:', results['index-list'].summary_line())
    assert results['index-list'].recalls[1] > 50.0


# --------------------------------------------------------------------------------------- CLI

def _utm_folder(root: Path) -> Path:
    database, queries = _toy_traversals(6, seed=5)
    from vpr_ros.data.image_codec import encode_compressed
    for target, frames in (('database', database), ('queries', queries)):
        (root / target).mkdir(parents=True)
        for frame in frames:
            east = frame.pose.position[0]
            (root / target / f'@{east:06.1f}@0@@@@@@@@@@@@.png').write_bytes(
                encode_compressed(frame.image, 'png'))
    return root


def test_cli_folder_mode(tmp_path: Path, capsys) -> None:
    """``vpr-eval`` prints the recall line, which equals metrics.json and a library run."""
    root = _utm_folder(tmp_path / 'set')
    out = tmp_path / 'report'
    rc = vpr_eval.main(['--dataset-format', 'folder', '--dataset', str(root), '--out', str(out),
                        '--radius', '5', '--recall-values', '1', '3', '--device', 'cpu'])
    assert rc == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    metrics = json.loads((out / 'metrics.json').read_text())
    assert line == metrics['summary']
    assert line.startswith('R@1: ') and ', R@3: ' in line
    assert all((out / name).is_file() for name in REPORT_FILES)


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_cli_bag_mode(tmp_path: Path, capsys, storage: str) -> None:
    """Bag mode pairs a map bag and a query bag by pose, with the heading limit applied."""
    from vpr_ros.data.bag import write_frames
    database, queries = _toy_traversals(5, seed=9)
    turned = queries[0].pose.position
    queries[0] = Frame(queries[0].stamp_ns, queries[0].image,
                       pose_from_xy_yaw(turned[0], turned[1], math.pi), 'q0 turned')
    write_frames(tmp_path / 'map', database, 'cam', 'odom', storage=storage)
    write_frames(tmp_path / 'query', queries, 'cam', 'odom', storage=storage)
    out = tmp_path / 'report'
    rc = vpr_eval.main(['--dataset-format', 'bags', '--dataset', str(tmp_path / 'map'),
                        '--query-bag', str(tmp_path / 'query'), '--image-topic', 'cam',
                        '--pose-topic', 'odom', '--radius', '5', '--max-yaw-deg', '30',
                        '--out', str(out), '--device', 'cpu'])
    assert rc == 0
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['dataset']['num_queries'] == 5
    assert metrics['dataset']['max_yaw_diff_deg'] == pytest.approx(30)
    assert metrics['dataset']['queries_without_positives'] == 1
    assert metrics['recalls']['20'] == pytest.approx(80.0)
    assert capsys.readouterr().out.strip().endswith(metrics['summary'])


def test_cli_reports_dataset_errors(tmp_path: Path, capsys) -> None:
    """A missing dataset folder is an error message and exit status 1, not a traceback."""
    rc = vpr_eval.main(['--dataset-format', 'folder', '--dataset', str(tmp_path / 'none'),
                        '--out', str(tmp_path / 'out')])
    assert rc == 1
    assert 'does not exist' in capsys.readouterr().err


# ----------------------------------------------------------------- loop-closure sequences

def _sequence_folder(root: Path, count: int = 14, revisit_from: int = 9) -> Path:
    """Write frames 1..count; frames from ``revisit_from`` on revisit frames 1, 2, ...."""
    import cv2
    rng = np.random.default_rng(4)
    (root / 'images').mkdir(parents=True)
    blocks = [rng.integers(0, 256, (6, 8, 3), dtype=np.uint8) for _ in range(count)]
    loops = []
    for i in range(count):
        frame = i + 1
        source = blocks[i]
        if frame >= revisit_from:
            source = blocks[frame - revisit_from]
            loops.append({'frame': frame, 'revisits': [frame - revisit_from + 1]})
        image = np.kron(source, np.ones((8, 8, 1), dtype=np.uint8))
        noisy = np.clip(image.astype(int) + rng.integers(-15, 16, image.shape), 0, 255)
        cv2.imwrite(str(root / 'images' / f'{frame}.png'), noisy.astype(np.uint8)[..., ::-1])
    names = [f'{i + 1}.png' for i in range(count)]
    (root / 'ground_truth.json').write_text(json.dumps({'frames': names, 'loops': loops}))
    return root


def _check_sequence_brute_force(model, dataset: EvalDataset, allowed: list) -> Any:
    """Evaluate ``dataset``; frame i must be ranked among the frames ``allowed[i]`` only."""
    result = evaluate(model, dataset, top_k=3, rerank=False, recall_values=(1, 2))
    from vpr_ros.models.preprocessing import preprocess
    with torch.inference_mode():
        d = model.global_descriptor(preprocess(
            [dataset.query_image(i) for i in range(dataset.num_queries)], model.spec)).numpy()
    hits = {1: 0, 2: 0}
    for i in range(dataset.num_queries):
        frames = np.asarray(allowed[i], dtype=np.int64)
        expected = frames[np.argsort(-(d[frames] @ d[i]), kind='stable')][:3]
        found = result.predictions[i][result.predictions[i] >= 0]
        assert list(found) == list(expected), i
        for n in hits:
            hits[n] += bool(set(expected[:n]) & set(dataset.positives[i].tolist()))
    revisiting = dataset.num_queries - dataset.queries_without_positives
    assert result.recalls == pytest.approx({n: 100.0 * h / revisiting for n, h in hits.items()})
    return result


def test_sequence_protocol_equals_brute_force(small_model, tmp_path: Path) -> None:
    """Frame i is ranked among frames <= i - gap only; Recall@N counts revisiting frames."""
    from vpr_ros.data.benchmarks.sequence import read_sequence_dataset
    dataset = read_sequence_dataset(_sequence_folder(tmp_path / 'seq'), min_gap=5)
    assert dataset.sequence_gap == 5 and dataset.queries_without_positives == 8
    result = _check_sequence_brute_force(small_model, dataset,
                                         [range(max(i - 4, 0)) for i in range(14)])
    # Inclusive gap: frame 5 is matched against frame 0, exactly 5 frames back.
    assert result.predictions[5].tolist()[:2] == [0, -1]
    assert result.loop_closure['queries_with_true_match'] == 6
    assert result.loop_closure['decisions'] == 14 - 5


def test_sequence_exclusion_by_time_equals_brute_force(small_model, tmp_path: Path) -> None:
    """--exclude-recent-s 0.5 at 10 Hz keeps frames >= 0.5 s old: the rankings of gap 5."""
    from vpr_ros.data.benchmarks.sequence import read_sequence_dataset
    root = _sequence_folder(tmp_path / 'seq')
    timed = read_sequence_dataset(root, min_gap=1, frame_rate=10.0, exclude_recent_s=0.5)
    stamps = timed.query_stamps_ns()
    assert stamps.tolist() == [i * 100_000_000 for i in range(14)]
    allowed = [[j for j in range(i) if stamps[i] - stamps[j] >= 500_000_000] for i in range(14)]
    result = _check_sequence_brute_force(small_model, timed, allowed)
    by_gap = evaluate(small_model, read_sequence_dataset(root, min_gap=5), top_k=3,
                      rerank=False, recall_values=(1, 2))
    assert np.array_equal(result.predictions, by_gap.predictions)
    assert result.recalls == by_gap.recalls
    assert result.dataset.summary()['exclude_recent_s'] == 0.5


def test_sequence_reader_names_problems(tmp_path: Path) -> None:
    """A missing frame file or a malformed loop entry is a DatasetError naming it."""
    from vpr_ros.data.benchmarks.sequence import read_sequence_dataset
    root = _sequence_folder(tmp_path / 'seq')
    (root / 'images' / '3.png').unlink()
    with pytest.raises(DatasetError, match='missing'):
        read_sequence_dataset(root)
    root = _sequence_folder(tmp_path / 'seq2')
    (root / 'ground_truth.json').write_text(json.dumps(
        {'frames': ['1.png'], 'loops': [{'frame': 'x', 'revisits': []}]}))
    with pytest.raises(DatasetError, match='loop entry 0'):
        read_sequence_dataset(root)


def test_cli_sequence_report_has_reliability(tmp_path: Path, capsys) -> None:
    """vpr-eval on a sequence writes the reliability diagram and its numbers."""
    root = _sequence_folder(tmp_path / 'seq')
    out = tmp_path / 'report'
    rc = vpr_eval.main(['--dataset-format', 'sequence', '--dataset', str(root), '--min-gap', '5',
                        '--model', 'efficientnet_lite0_gem', '--out', str(out), '--top-k', '3',
                        '--recall-values', '1', '2', '--device', 'cpu'])
    assert rc == 0
    metrics = json.loads((out / 'metrics.json').read_text())
    table = metrics['calibration']['reliability']
    assert sum(table['count']) == 9 and 0.0 <= table['ece'] <= 1.0
    assert (out / 'reliability.png').read_bytes().startswith(PNG_MAGIC)
    assert metrics['dataset']['format'] == 'sequence'


def _kitti_from_sequence(root: Path) -> Path:
    """Give the sequence folder a KITTI pose file: frames 9..14 at the places of 1..6."""
    lines = []
    for i in range(14):
        place = i - 8 if i >= 8 else i
        lines.append(f'1 0 0 {10.0 * place} 0 1 0 0 0 0 1 {0.1 * i}')
    (root / 'poses.txt').write_text('\n'.join(lines) + '\n')
    return root


def test_cli_kitti_poses_with_time_exclusion(tmp_path: Path, capsys) -> None:
    """kitti-poses + --exclude-recent-s: positives from poses, decision counted, CSV agrees."""
    root = _kitti_from_sequence(_sequence_folder(tmp_path / 'seq'))
    out = tmp_path / 'report'
    rc = vpr_eval.main(['--dataset-format', 'kitti-poses', '--dataset', str(root),
                        '--ground-truth', 'poses.txt', '--radius', '2', '--min-gap', '1',
                        '--frame-rate', '10', '--exclude-recent-s', '0.5',
                        '--model', 'efficientnet_lite0_gem', '--out', str(out), '--top-k', '3',
                        '--recall-values', '1', '2', '--device', 'cpu'])
    assert rc == 0
    metrics = json.loads((out / 'metrics.json').read_text())
    info = metrics['dataset']
    assert (info['format'], info['exclude_recent_s'], info['stamps']) == (
        'kitti-poses', 0.5, 'frame rate 10 Hz')
    assert info['queries_without_positives'] == 8 and info['frames_with_revisits'] == 6
    decision = metrics['loop_closure']['at_threshold']
    assert decision['source'] == 'localizer decision'
    with (out / 'predictions.csv').open(newline='') as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r['stamp_ns']) for r in rows] == [i * 100_000_000 for i in range(14)]
    assert all(r['reason'] == 'empty map' for r in rows[:5])
    assert all(max(map(int, r['database_ids'].split())) <= i - 5 for i, r in enumerate(rows)
               if r['database_ids'])
    assert sum(r['accepted'] == '1' for r in rows) == decision['accepted']
    assert sum(r['accepted'] == '1' and r['correct'] == '0' for r in rows) == \
        decision['wrong_accepted']
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == metrics['summary']
    assert lines[-2].startswith('accept decision (localizer decision, threshold ')
    assert f'{decision["wrong_accepted"]} of them wrong' in lines[-2]


def test_cli_sequence_options_are_checked(tmp_path: Path, capsys) -> None:
    """Sequence-only flags elsewhere, a missing matrix or missing stamps are named errors."""
    root = _sequence_folder(tmp_path / 'seq')
    runs = {('--dataset-format', 'folder', '--exclude-recent-s', '1'):
            '--exclude-recent-s apply to the sequence formats',
            ('--dataset-format', 'loop-matrix'): 'loop-matrix needs --ground-truth',
            ('--dataset-format', 'kitti-poses', '--gt-key', 'x', '--ground-truth', 'p.txt'):
            '--gt-key applies to dataset format loop-matrix only',
            ('--dataset-format', 'sequence', '--exclude-recent-s', '1'): 'needs frame stamps'}
    for flags, message in runs.items():
        rc = vpr_eval.main([*flags, '--dataset', str(root), '--out', str(tmp_path / 'out')])
        assert rc == 1, flags
        assert message in capsys.readouterr().err, flags
    help_text = ' '.join(vpr_eval.build_parser().format_help().split())
    assert 'inclusive: a revisit exactly MIN_GAP frames back counts' in help_text
