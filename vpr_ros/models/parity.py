r"""Check an exported model (onnxruntime, TensorRT engine) against PyTorch before using it.

Run on the target (Jetson or GPU machine), after building engines (``docs/deployment.md``)::

    python -m vpr_ros.models.parity --checkpoint model.safetensors \\
        --backend tensorrt                      # onnxruntime TensorRT provider, or
    python -m vpr_ros.models.parity --checkpoint model.safetensors \\
        --encoder-plan encoder.plan --pair-plan pair_logit.plan   # trtexec engines

It feeds the same random images and token pairs to PyTorch (float32) and to the candidate and
prints: the worst cosine similarity of global descriptors, the largest token difference, the
largest pair-logit difference and the share of queries whose best candidate is unchanged. It
exits 1 when the descriptor cosine is below ``--min-cosine`` (default 0.999) or the best
candidates disagree on more than ``--max-rank-changes`` of the queries: TensorRT has
miscompiled ViTs before (NVIDIA/TensorRT#4742), so an engine is trusted only after this check.
"""

import argparse
from dataclasses import dataclass
from pathlib import Path
import sys
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from vpr_ros.models.vpr_model import VprModel

Describe = Callable[[torch.Tensor], tuple]
PairLogit = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ParityReport:
    """How far a candidate implementation is from the PyTorch float32 reference."""

    min_cosine: float
    max_token_diff: float
    max_logit_diff: float
    same_best: float

    def passes(self, min_cosine: float, max_rank_changes: float) -> bool:
        """Return True when descriptors are close enough and rankings mostly unchanged."""
        return self.min_cosine >= min_cosine and 1.0 - self.same_best <= max_rank_changes


def compare(reference: VprModel, describe: Describe, pair_logit: Optional[PairLogit],
            images: torch.Tensor, queries: int = 4, candidates: int = 20) -> ParityReport:
    """Return the :class:`ParityReport` of ``describe``/``pair_logit`` against ``reference``.

    The pair check scores ``queries`` queries against ``candidates`` random token sets each,
    in both orders, and compares the best candidate of each query.
    """
    with torch.inference_mode():
        want_g, want_t = reference.describe(images)
        got_g, got_t = describe(images)
        cosine = F.cosine_similarity(got_g.float().cpu(), want_g.float().cpu(), dim=-1)
        token_diff = _max_diff(got_t, want_t)
        logit_diff, same = 0.0, 1.0
        if pair_logit is not None and reference.spec.has_pair_classifier:
            logit_diff, same = _compare_pairs(reference, pair_logit, queries, candidates)
    return ParityReport(float(cosine.min()), token_diff, logit_diff, same)


def _max_diff(a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> float:
    if a is None or b is None:
        return 0.0
    return float((a.float().cpu() - b.float().cpu()).abs().max())


def _compare_pairs(reference: VprModel, pair_logit: PairLogit, queries: int,
                   candidates: int) -> tuple[float, float]:
    """Return (largest logit difference, share of queries with the same best candidate)."""
    spec = reference.spec
    device = next(reference.parameters()).device
    generator = torch.Generator().manual_seed(0)
    diffs, same = [], []
    for _ in range(queries):
        query = torch.randn(1, spec.num_tokens, spec.token_dim, generator=generator)
        cands = torch.randn(candidates, spec.num_tokens, spec.token_dim, generator=generator)
        first = query.expand(candidates, -1, -1).to(device)
        cands = cands.to(device)
        want = reference.pair_logit(first, cands) + reference.pair_logit(cands, first)
        got = pair_logit(first, cands).float() + pair_logit(cands, first).float()
        diffs.append(_max_diff(got, want))
        same.append(int(got.argmax()) == int(want.argmax()))
    return max(diffs), float(np.mean(same))


class PlanEngine:
    """A serialized TensorRT engine (``trtexec --saveEngine``) run on torch CUDA tensors."""

    def __init__(self, path: Path) -> None:
        """Deserialize the engine (needs the ``tensorrt`` Python package and CUDA)."""
        import tensorrt as trt
        self._trt = trt
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f'{path}: TensorRT cannot deserialize this engine (built with '
                               'another TensorRT version or GPU?)')
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = [self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names]
        self.inputs = [n for n, i in zip(names, is_input) if i]
        self.outputs = [n for n, i in zip(names, is_input) if not i]

    def __call__(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """Run the engine on ``tensors`` (in input order); return the outputs on the GPU."""
        feeds = [t.detach().float().cuda().contiguous() for t in tensors]
        for name, tensor in zip(self.inputs, feeds):
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = []
        for name in self.outputs:
            dtype = torch.from_numpy(np.empty(0, self._trt.nptype(
                self.engine.get_tensor_dtype(name)))).dtype
            out = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=dtype,
                              device='cuda')
            self.context.set_tensor_address(name, out.data_ptr())
            outputs.append(out)
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError('TensorRT execution failed')
        stream.synchronize()
        return outputs


def candidate_functions(model: VprModel, args: argparse.Namespace
                        ) -> tuple[Describe, Optional[PairLogit]]:
    """Return the candidate's describe and pair-logit functions for the command line."""
    if args.encoder_plan:
        encoder = PlanEngine(args.encoder_plan)
        pair = PlanEngine(args.pair_plan) if args.pair_plan else None
        return (lambda x: tuple(encoder(x)),
                None if pair is None else (lambda a, b: pair(a, b)[0]))
    from vpr_ros.models.backend import apply_backend
    prepared = apply_backend(model, args.backend, cache_dir=args.cache_dir, device=args.device)
    return prepared.describe, prepared.pair_logit if model.spec.has_pair_classifier else None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print the parity report; return 0 when the candidate passes, 1 otherwise."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--checkpoint', help='safetensors checkpoint (default: --model)')
    parser.add_argument('--model', default='pairvpr_lite', help='registry model name')
    parser.add_argument('--backend', default='onnx', choices=('onnx', 'tensorrt'),
                        help='onnxruntime backend to check (default: %(default)s)')
    parser.add_argument('--encoder-plan', help='trtexec engine of encoder.onnx (instead)')
    parser.add_argument('--pair-plan', help='trtexec engine of pair_logit.onnx')
    parser.add_argument('--cache-dir', type=Path, default=None, help='ONNX export cache')
    parser.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'))
    parser.add_argument('--images', type=int, default=8, help='random test images')
    parser.add_argument('--min-cosine', type=float, default=0.999)
    parser.add_argument('--max-rank-changes', type=float, default=0.0,
                        help='allowed share of queries whose best candidate changes')
    args = parser.parse_args(argv)
    from vpr_ros.models.loader import load_model
    model = load_model(args.checkpoint, args.model).eval()
    device = 'cuda' if args.encoder_plan or (args.device != 'cpu'
                                             and torch.cuda.is_available()) else 'cpu'
    model = model.to(device)
    describe, pair_logit = candidate_functions(model, args)
    height, width = model.spec.input_size
    images = torch.randn(args.images, 3, height, width,
                         generator=torch.Generator().manual_seed(1)).to(device)
    report = compare(model, describe, pair_logit, images)
    print(f'min descriptor cosine {report.min_cosine:.6f}, max token diff '
          f'{report.max_token_diff:.3e}, max pair-logit diff {report.max_logit_diff:.3e}, '
          f'same best candidate {100 * report.same_best:.0f} %')
    ok = report.passes(args.min_cosine, args.max_rank_changes)
    print('PASS' if ok else 'FAIL: do not deploy this engine')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
