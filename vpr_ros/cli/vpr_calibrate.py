"""``vpr-calibrate``: fit a checkpoint's fusion beta and match probability on your own data.

Examples::

    vpr-calibrate --checkpoint pairvpr-vitB.safetensors --dataset-format index-list
                  --dataset my_val --out pairvpr-vitB-calibrated.safetensors
    vpr-calibrate --checkpoint model.safetensors --dataset-format folder --dataset val/
                  --in-place
    vpr-calibrate --model pairvpr_lite --dataset-format bags --dataset map_bag
                  --query-bag query_bag --pose-topic /odom --out lite_calibrated.safetensors

The dataset is any that ``vpr-eval`` reads (a validation set: never the data you report
results on). Every query is described and searched as the localizer does, and scored twice
against its global top-K shortlist: once as a *revisit* (the whole map) and once as a *new
place* (its true places removed from the map, so its best match is always wrong, as on a
first visit during SLAM). The beta of the fused score ``pair + beta * similarity`` is chosen by
Recall@1 of the revisits (ties go to the smaller beta); a logistic calibration of the best
candidate's fused score is fitted on both settings together (P(the best match is right) for a
query that is as likely a revisit as a new place), and one of the global similarity alone
(for maps without re-ranking). They are written into the checkpoint's ``rerank_scoring``
metadata: ``--out`` writes a new file, ``--in-place`` replaces the checkpoint atomically.
Printed: the Recall@1 of each beta, the chosen beta, both calibrations and their reliability
(expected calibration error, ECE) before and after, in-sample and cross-validated on two
halves of the queries.
"""

import argparse
import json
import logging
from pathlib import Path
import sys
from typing import Iterable, Optional, Sequence

from tqdm import tqdm

from vpr_ros.cli.arguments import (add_config_arguments, add_dataset_options,
                                   add_model_arguments, config_from_args, run_command)
from vpr_ros.cli.vpr_eval import dataset_options
from vpr_ros.config import DEFAULT_MODEL, LocalizerConfig
from vpr_ros.data.benchmarks.dataset import DEFAULT_RADIUS_M
from vpr_ros.data.benchmarks.formats import FORMATS, load_dataset
from vpr_ros.errors import CheckpointError
from vpr_ros.evaluation.calibration_fit import (BETAS, CalibrationFit, collect_shortlists,
                                                describe_fit, fit_scoring)
from vpr_ros.models.checkpoint import (load_pretrained, save_checkpoint, shipped_weights_path,
                                       write_rerank_scoring)
from vpr_ros.models.conversion import (file_sha256, is_vpr_ros_checkpoint, load_any_checkpoint,
                                       read_official, source_metadata)
from vpr_ros.models.fusion import RerankScoring
from vpr_ros.models.vpr_model import VprModel

LOGGER = logging.getLogger(__name__)

CONFIG_FIELDS = ('top_k', 'batch_size', 'rerank_batch_size', 'device', 'precision', 'backend',
                 'backend_cache_dir')
"""The :class:`LocalizerConfig` options that matter here (the rest keep their defaults)."""


# ---- the checkpoint -------------------------------------------------------------------------

def load_calibration_model(checkpoint: Optional[str], model: Optional[str]) -> VprModel:
    """Return the model to calibrate: a checkpoint file (ours or official) or a registry name."""
    if checkpoint:
        return load_any_checkpoint(checkpoint)
    return load_pretrained(model or DEFAULT_MODEL)


def output_plan(checkpoint: Optional[str], model: Optional[str], out: Optional[str],
                in_place: bool) -> tuple[Optional[Path], Path]:
    """Return ``(source file or None, file to write)``, refusing unclear or unsafe requests.

    The source is the ``checkpoint`` file, else the registry ``model``'s shipped weights
    (None when it has none). ``in_place`` rewrites only a vpr_ros ``checkpoint`` file.
    """
    source = Path(checkpoint) if checkpoint else shipped_weights_path(model or DEFAULT_MODEL)
    if in_place and out:
        raise CheckpointError('give either --out or --in-place, not both')
    if in_place:
        if not checkpoint:
            raise CheckpointError("--in-place rewrites a --checkpoint file; a registry model's "
                                  'shipped weights are not rewritten: give --out')
        if not is_vpr_ros_checkpoint(source):
            raise CheckpointError(f'{source} is not a vpr_ros checkpoint and is not rewritten '
                                  'in place: give --out NEW.safetensors')
        return source, source
    if not out:
        raise CheckpointError('give --out NEW.safetensors (or --in-place to replace the '
                              'checkpoint)')
    target = Path(out)
    if source is not None and target.exists() and target.resolve() == source.resolve():
        raise CheckpointError(f'--out {target} is the checkpoint itself: use --in-place to '
                              'replace it')
    return source, target


def write_scoring(model: VprModel, scoring: RerankScoring, source: Optional[Path],
                  target: Path) -> Path:
    """Write ``scoring`` into a copy of checkpoint ``source`` at ``target`` (atomically).

    A vpr_ros checkpoint is copied with only its ``rerank_scoring`` replaced; an official file
    becomes a new vpr_ros checkpoint; without a source, ``model`` is saved.
    """
    if source is None:
        return save_checkpoint(model, target, rerank_scoring=scoring)
    if is_vpr_ros_checkpoint(source):
        return write_rerank_scoring(source, scoring, target)
    official, layout = read_official(source)
    metadata = {'source': source_metadata(source, layout, file_sha256(source))}
    return save_checkpoint(official, target, rerank_scoring=scoring, extra_metadata=metadata)


# ---- command line ---------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``vpr-calibrate``."""
    parser = argparse.ArgumentParser(prog='vpr-calibrate', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument('--dataset-format', required=True, choices=FORMATS,
                        help='dataset layout, as vpr-eval (see vpr_ros.data.benchmarks)')
    parser.add_argument('--dataset', required=True,
                        help='validation dataset root folder (bags: the map bag)')
    parser.add_argument('--out', default=None,
                        help='calibrated checkpoint to write (a new file)')
    parser.add_argument('--in-place', action='store_true',
                        help='replace the --checkpoint file atomically instead of --out')
    parser.add_argument('--betas', type=float, nargs='+', default=list(BETAS),
                        help='fusion betas to choose from (default: %(default)s)')
    parser.add_argument('--report', default=None,
                        help='also write the numbers as JSON to this file')
    group = parser.add_argument_group('ground truth')
    group.add_argument('--image-topic', default='camera/image_raw',
                       help='bags: image topic of the map and query bags (default: %(default)s)')
    group.add_argument('--pose-topic', default='camera/pose',
                       help='bags: pose / odometry topic (default: %(default)s)')
    group.add_argument('--radius', type=float, default=DEFAULT_RADIUS_M,
                       help='positive radius in metres (folder, msls-val, pitts, tokyo, bags, '
                            'kitti-poses) (default: %(default)s)')
    group.add_argument('--max-yaw-deg', type=float, default=None,
                       help='bags: also require headings within this many degrees')
    add_dataset_options(parser)
    add_config_arguments(parser, LocalizerConfig, only=CONFIG_FIELDS)
    parser.add_argument('--verbose', action='store_true', help='log progress details')
    return parser


def progress_bar(items: Iterable, description: str, total: int) -> Iterable:
    """Wrap ``items`` in a tqdm progress bar."""
    return tqdm(items, desc=description, total=total, unit='img')


def _ece_line(name: str, before: dict, after: dict, cross: dict) -> str:
    """Return one printed reliability line."""
    text = (f'{name}: ECE {before["ece"]:.3f} -> {after["ece"]:.3f} (in-sample), Brier '
            f'{before["brier"]:.3f} -> {after["brier"]:.3f}')
    if 'ece' in cross:
        text += f'; cross-validated on two halves of the queries: ECE {cross["ece"]:.3f}'
    return text


def print_fit(fit: CalibrationFit, path: Path) -> None:
    """Print the beta table, the chosen scoring and the reliability before and after."""
    scoring, before, after = fit.scoring, fit.before, fit.after
    counts = fit.counts
    print(f'{counts["revisit"]} revisit and {counts["novel"]} new-place queries '
          f'(top-{counts["top_k"]} shortlists)')
    print('Recall@1 of the revisits by beta: '
          + ', '.join(f'{beta:g}: {r1:.1f}' for beta, r1 in fit.beta_table.items()))
    print(f'chosen beta {scoring.beta:g} (R@1 {after["recall_at_1"]:.1f}; before: beta '
          f'{before["beta"]:g}, R@1 {before["recall_at_1"]:.1f})')
    print(f'calibration of the fused score: P = sigmoid({scoring.calibration.scale:.4g} * score '
          f'{scoring.calibration.offset:+.4g})')
    print(f'calibration of the global similarity: P = sigmoid('
          f'{scoring.global_calibration.scale:.4g} * similarity '
          f'{scoring.global_calibration.offset:+.4g})')
    cross = fit.cross_validated
    if 'skipped' in cross:
        print(f'cross-validation skipped: {cross["skipped"]}')
    state = 'stored calibration' if before['calibrated'] else 'uncalibrated fallback'
    print(_ece_line(f'best-match probability (before: {state})', before['fused'],
                    after['fused'], cross.get('fused', {})))
    print(_ece_line('global-similarity probability', before['global'], after['global'],
                    cross.get('global', {})))
    print(f'wrote {path}: rerank_scoring fused, beta {scoring.beta:g}, calibrated (the nodes '
          'report probability_calibrated: True with rerank_fusion fused and fusion_beta -1)')


def run(args: argparse.Namespace) -> int:
    """Load the model and dataset, fit, write the checkpoint and print the numbers."""
    source, target = output_plan(args.checkpoint, args.model, args.out, args.in_place)
    dataset = load_dataset(args.dataset_format, args.dataset, **dataset_options(args))
    print(f'{dataset.name}: {dataset.num_queries} queries, {dataset.num_database} map images, '
          f'{dataset.queries_without_positives} queries without a true match')
    model = load_calibration_model(args.checkpoint, args.model)
    config = config_from_args(LocalizerConfig, args, only=CONFIG_FIELDS)
    sets = collect_shortlists(model, dataset, config, progress_bar)
    fit = fit_scoring(sets, getattr(model, 'rerank_scoring', None), args.betas,
                      describe_fit(dataset, config.top_k))
    path = write_scoring(model, fit.scoring, source, target)
    if args.report:
        Path(args.report).write_text(json.dumps(fit.summary(), indent=2) + '\n',
                                     encoding='utf-8')
    print_fit(fit, path)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``vpr-calibrate``; returns the process exit status."""
    return run_command(build_parser(), run, argv)


if __name__ == '__main__':
    sys.exit(main())
