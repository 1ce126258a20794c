"""``vpr-convert``: an official Pair-VPR release or DINOv2 hub file -> a vpr_ros checkpoint.

Examples::

    vpr-convert pairvpr-vitB.pth                       # writes pairvpr-vitB.safetensors
    vpr-convert pairvpr-vitG.pth --out models/pairvpr_vitg14.safetensors --variant vitg14
    vpr-convert dinov2_vitb14_reg4_pretrain.pth        # encoder only: a training start point

The variant, sizes and input size are read from the tensors (``--variant`` only checks them);
the file is read with ``torch.load(weights_only=True)`` and written atomically. The checkpoint
has the official preprocessing and no calibration: fit one with ``vpr-calibrate``.
"""

import argparse
import sys
from typing import Optional, Sequence

from vpr_ros.cli.arguments import run_command
from vpr_ros.models.conversion import convert_official_file, KIND_DINOV2, VARIANTS


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``vpr-convert``."""
    parser = argparse.ArgumentParser(prog='vpr-convert', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('source', help='official file: pairvpr-vit{B,L,G}.pth, a DINOv2 hub '
                                       'dinov2_vit*14_reg4_pretrain.pth, or a .safetensors '
                                       'file holding an official state dict')
    parser.add_argument('--out', default=None,
                        help='vpr_ros checkpoint to write (default: SOURCE with the suffix '
                             '.safetensors)')
    parser.add_argument('--variant', default=None, choices=VARIANTS,
                        help='the variant you expect; conversion stops when the tensors are '
                             'another one (default: read from the tensors)')
    parser.add_argument('--encoder-heads', type=int, default=None,
                        help='encoder attention heads, for non-release sizes whose heads are '
                             'not 64 wide (default: width / 64)')
    parser.add_argument('--decoder-heads', type=int, default=None,
                        help='pair decoder attention heads, for non-release sizes (default: '
                             'width / 64)')
    parser.add_argument('--image-size', type=int, default=None,
                        help='input size in pixels: a check for Pair-VPR files (their decoder '
                             'table fixes it), the size for a DINOv2 file (default: 322)')
    parser.add_argument('--force', action='store_true',
                        help='replace an existing output file')
    parser.add_argument('--verbose', action='store_true', help='log progress details')
    return parser


def run(args: argparse.Namespace) -> int:
    """Convert the file and print what was written."""
    result = convert_official_file(args.source, args.out, args.variant, args.force,
                                   encoder_heads=args.encoder_heads,
                                   decoder_heads=args.decoder_heads,
                                   image_size=args.image_size)
    layout = result.layout
    print(f'{args.source}: {layout.describe()}')
    if layout.inferred_heads:
        print(f'note: {" and ".join(layout.inferred_heads)} assumed 64 wide per head '
              '(no tensor shows the head count; give --encoder-heads / --decoder-heads '
              'otherwise)')
    options = f' with {dict(layout.overrides)}' if layout.overrides else ''
    print(f'wrote {result.path}: {layout.architecture}{options}, preprocessing official, '
          f'source sha256 {result.source_sha256[:16]}...')
    if layout.kind == KIND_DINOV2:
        print('warning: DINOv2 encoder only: the globalizer and pair decoder are untrained; '
              'use the checkpoint to start training, not to localize')
    else:
        print('no calibration stored: match probabilities fall back to the uncalibrated '
              'sigmoid(pair_score / 2) until you run vpr-calibrate --checkpoint '
              f'{result.path} --dataset ...')
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``vpr-convert``; returns the process exit status."""
    return run_command(build_parser(), run, argv)


if __name__ == '__main__':
    sys.exit(main())
