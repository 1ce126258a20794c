"""Extraction throughput: Localizer.describe vs a naive per-image loop, and FLOP efficiency.

Run: ``.venv/bin/python benchmarks/benchmark_extraction.py [--images 16 --image-size 480 640]``.

Baseline: for each image, ``preprocess([image])`` and ``model.describe`` of the PyTorch model,
one at a time. Ours: :meth:`Localizer.describe` on the whole list with the model prepared by
:func:`apply_backend` (``torch`` and ``onnx``; both run the encoder on CPU micro-batches of 2)
and ``LocalizerConfig.batch_size`` 2 and 16 (the batch that ``preprocess`` resizes at once).
Also shown: the plain model under the default ``LocalizerConfig`` (what a user gets without
flags: ``backend: auto``, batches of 16), and the onnx encoder alone on preprocessed input (the
model's own efficiency, without the resize).

Efficiency: the model's FLOPs per image (``torch.utils.flop_counter.FlopCounterMode``, a
multiply-add = 2 FLOPs) times images/s, over the float32 matrix-multiply rate of this machine on
the same threads: the fastest of torch/MKL, numpy/OpenBLAS and onnxruntime/MLAS at 1024x1024,
each timed as one more method in the same alternated rounds (same machine load, medians).
"""

import argparse
import sys
import time
from typing import Callable, Optional, Sequence

from harness import (add_common_arguments, export_cache, interleaved, load_lite,
                     random_images, set_threads)
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from vpr_ros.config import LocalizerConfig
from vpr_ros.localization.localizer import Localizer
from vpr_ros.map.database import MapDatabase
from vpr_ros.models.backend import apply_backend
from vpr_ros.models.preprocessing import preprocess

MATMUL_SIZE = 1024
MATMUL_REPEATS = 20
MATMUL = 'float32 matmul'
"""The machine's matmul rate is one more method of the interleaved rounds (same load)."""
BACKENDS = ('torch', 'onnx')


def naive_loop(model, images: Sequence[np.ndarray]) -> list:
    """Describe the images one at a time with the PyTorch model (preprocessing included)."""
    out = []
    with torch.inference_mode():
        for image in images:
            descriptor, tokens = model.describe(preprocess([image], model.spec))
            out.append((descriptor.numpy(), tokens.numpy()))
    return out


def model_gflop(model) -> float:
    """Return the model's GFLOP for one image (describe only, FLOP counter)."""
    height, width = model.spec.input_size
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.describe(torch.zeros(1, 3, height, width))
    return counter.get_total_flops() / 1e9


def matmul_methods(threads: int, size: int) -> dict[str, Callable[[], object]]:
    """Return timed workloads of ``MATMUL_REPEATS`` float32 ``size``-square matmuls per library."""
    a = np.random.default_rng(size).standard_normal((size, size), dtype=np.float32)
    runs = {'torch/MKL': _torch_mm(torch.from_numpy(a)), 'numpy/OpenBLAS': lambda: a @ a,
            'onnxruntime/MLAS': _ort_mm(a, threads)}
    return {f'{MATMUL} {name}': _repeat(fn) for name, fn in runs.items()}


def _repeat(fn: Callable[[], object]) -> Callable[[], object]:
    return lambda: [fn() for _ in range(MATMUL_REPEATS)]


def _torch_mm(a: torch.Tensor):
    return lambda: a @ a


def _ort_mm(a: np.ndarray, threads: int):
    """Return a callable running ``a @ a`` as a one-node onnxruntime graph."""
    import onnx
    from onnx import helper, TensorProto
    import onnxruntime as ort
    size = a.shape[0]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [size, size]) for n in 'AB']
    output = helper.make_tensor_value_info('C', TensorProto.FLOAT, [size, size])
    graph = helper.make_graph([helper.make_node('MatMul', ['A', 'B'], ['C'])], 'mm', inputs,
                              [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=['CPUExecutionProvider'])
    return lambda: session.run(None, {'A': a, 'B': a})


def _best_of(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print images/s of the naive loop and of our describe paths, ratios and efficiency."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument('--images', type=int, default=16,
                        help='images per round (default: %(default)s)')
    parser.add_argument('--batch-size', type=int, default=2,
                        help='LocalizerConfig.batch_size of our path, also run with 16 '
                        '(default: %(default)s, the CPU optimum measured here)')
    parser.add_argument('--image-size', type=int, nargs=2, default=(480, 640),
                        metavar=('H', 'W'), help='camera image size (default: 480 640)')
    parser.add_argument('--matmul-size', type=int, default=MATMUL_SIZE,
                        help='square matmul size for the machine rate (default: %(default)s)')
    args = parser.parse_args(argv)
    set_threads(args.threads)
    model, weights = load_lite(args.checkpoint)
    images = random_images(args.images, args.image_size)
    gflop = model_gflop(model)
    print(f'pairvpr_lite ({weights}); input {model.spec.input_size}, {gflop:.3f} GFLOP/image; '
          f'{args.images} images of {args.image_size[0]}x{args.image_size[1]}; '
          f'{args.threads} thread(s)')
    methods = {'baseline': lambda: naive_loop(model, images),
               **matmul_methods(args.threads, args.matmul_size)}
    with export_cache(args.cache_dir) as cache:
        prepared = {backend: apply_backend(model, backend, cache_dir=cache, device='cpu',
                                           threads=args.threads) for backend in BACKENDS}
        for backend, batch in ((b, s) for b in BACKENDS for s in (args.batch_size, 16)):
            localizer = Localizer(prepared[backend], MapDatabase(model.spec),
                                  LocalizerConfig(device='cpu', batch_size=batch))
            label = f'Localizer.describe, {backend} backend, batch {batch}'
            methods[label] = (lambda loc=localizer: loc.describe(images))
        default = Localizer(model, MapDatabase(model.spec),
                            LocalizerConfig(device='cpu', backend_cache_dir=cache))
        label = f'Localizer.describe, default settings ({default.backend})'
        methods[label] = lambda: default.describe(images)
        inputs = preprocess(images, model.spec)
        methods['onnx encoder only (preprocessed input)'] = \
            lambda: prepared['onnx'].describe(inputs)
        seconds = interleaved(methods, args.rounds)
    report(seconds, args.images, gflop, args.matmul_size)
    return 0


def report(seconds: dict, count: int, gflop: float, size: int) -> None:
    """Print the rates, the ratios over the naive loop and the FLOP efficiency."""
    work = 2 * size ** 3 * MATMUL_REPEATS / 1e9
    rates = {name[len(MATMUL) + 1:]: work / seconds.pop(name)
             for name in [n for n in seconds if n.startswith(MATMUL)]}
    where, peak = max(rates.items(), key=lambda item: item[1])
    print(f'  float32 matmul {size}x{size}, timed in the same rounds: '
          + ', '.join(f'{name} {rate:.1f}' for name, rate in rates.items())
          + f' GFLOP/s; peak = {where}')
    base = seconds['baseline']
    for label, value in seconds.items():
        rate = count / value
        name = 'naive per-image loop (baseline)' if label == 'baseline' else label
        print(f'  {name:<44s} {rate:8.1f} images/s   x{base / value:5.2f} vs baseline   '
              f'{rate * gflop:6.1f} GFLOP/s = {rate * gflop / peak:.2f} of matmul')


if __name__ == '__main__':
    sys.exit(main())
