"""Inference backends behind one :class:`VprModel` API: PyTorch, onnxruntime, TensorRT.

:func:`apply_backend` turns a loaded model into the model the localizer should run:

- ``auto`` (the default): ``onnx`` where onnxruntime is installed, the model can be exported
  and the exported graphs pass a parity check against PyTorch (run once per export and
  provider, cached next to the graphs); ``torch`` otherwise, with the reason logged;

- ``torch``: :class:`TorchVprModel`, the same PyTorch modules with the shared-query re-ranking
  of :class:`~vpr_ros.models.pair_scorer.PairScorer`, CPU micro-batching and optional CPU
  bfloat16;
- ``onnx``: the exported graphs in onnxruntime (CUDA provider when the device is CUDA and
  onnxruntime-gpu is installed, else CPU), see :mod:`vpr_ros.models.onnx_backend`;
- ``tensorrt``: the same graphs through onnxruntime's TensorRT provider, fp16 engines built on
  first use and cached next to the graphs (on a Jetson, ``trtexec`` engines are the alternative:
  ``docs/deployment.md``).

Every backend returns the same spec, so maps built with one are used with any other.
"""

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Optional

import torch

from vpr_ros.config import ACCELERATIONS, BACKENDS
from vpr_ros.errors import BackendError, ConfigError
from vpr_ros.models.onnx_backend import (ENGINE_DIR, export_model, has_shared_scorer,
                                         onnxruntime_version, OnnxVprModel, select_providers)
from vpr_ros.models.pair_scorer import is_broadcast, PairScorer
from vpr_ros.models.parity import compare, ParityReport
from vpr_ros.models.vpr_model import VprModel

LOG = logging.getLogger(__name__)

GRAPH_BATCH = 16
"""Batch captured by the CUDA-graph encoder (``LocalizerConfig.batch_size``'s default)."""
PRECISIONS = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}
CACHE_ENV = 'VPR_ROS_CACHE'
CPU_MICRO_BATCH = {'torch': 1, 'onnx': 2}
"""Images per encoder call on a CPU, per backend: measured fastest for EfficientNet-Lite0 in
``Localizer.describe`` (benchmarks/benchmark_extraction.py): eager PyTorch is about 25 % slower
per image at 2 than at 1, onnxruntime a little faster at 2."""
AUTO_MIN_COSINE = 0.9999
"""``auto`` takes the exported graphs only when every global descriptor of the parity images
has at least this cosine with PyTorch's, and every parity query keeps its best candidate."""
AUTO_MAX_TOKEN_DIFF = 1e-3
PARITY_IMAGES = 2


def default_cache_dir() -> Path:
    """Return ``$VPR_ROS_CACHE/onnx`` or ``~/.cache/vpr_ros/onnx`` (exported graphs, engines)."""
    root = os.environ.get(CACHE_ENV) or Path.home() / '.cache' / 'vpr_ros'
    return Path(root) / 'onnx'


def resolve_device(device: str) -> str:
    """Return ``cuda`` or ``cpu`` for ``auto``/``cpu``/``cuda`` (``auto`` prefers CUDA)."""
    if device == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    return device


class TorchVprModel(VprModel):
    """A PyTorch :class:`VprModel` with shared-query re-ranking and CPU micro-batching.

    Args:
        model: the wrapped model (not copied; moves with :meth:`to`).
        micro_batch: images per encoder call (0 = the whole batch).
        cpu_dtype: ``torch.bfloat16`` runs matrix products in bfloat16 on a CPU (AVX-512 BF16 or
            AMX); None keeps float32. On CUDA the localizer's ``precision`` autocast applies.
        accelerate: on CUDA, ``compile`` (``torch.compile`` of ``describe``) or
            ``cuda_graphs`` (``describe`` replayed from a CUDA graph of ``GRAPH_BATCH`` images),
            prepared on the first CUDA call; ``none`` or a CPU input runs eagerly.
    """

    def __init__(self, model: VprModel, micro_batch: int = 0,
                 cpu_dtype: Optional[torch.dtype] = None, accelerate: str = 'none') -> None:
        """Wrap ``model`` and build the shared-query scorer when its decoder allows."""
        super().__init__()
        if accelerate not in ACCELERATIONS:
            raise ConfigError(f'unknown acceleration {accelerate!r}; valid: {ACCELERATIONS}')
        self.inner = model
        self.spec = model.spec
        self.micro_batch = int(micro_batch)
        self.cpu_dtype = cpu_dtype
        self.accelerate = accelerate
        self._fast_describe = None
        self._scorer = PairScorer(model.decoder) if has_shared_scorer(model) else None

    @property
    def rerank_scoring(self):
        """Return the wrapped model's fusion and calibration (kept in one place)."""
        return getattr(self.inner, 'rerank_scoring', None)

    @property
    def backend(self) -> str:
        """Return the backend name, ``torch``."""
        return 'torch'

    def describe(self, images: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Return ``(global [B, D], tokens [B, N, C] or None)``, in micro-batches."""
        if self.accelerate != 'none' and images.device.type == 'cuda':
            return self._accelerated()(images)
        step = self.micro_batch or max(len(images), 1)
        if len(images) <= step:
            with self._cpu_autocast(images.device):
                return self.inner.describe(images)
        parts = [self.describe(chunk) for chunk in images.split(step)]
        tokens = None if parts[0][1] is None else torch.cat([p[1] for p in parts])
        return torch.cat([p[0] for p in parts]), tokens

    def _accelerated(self):
        """Return the compiled or CUDA-graph ``describe``, building it on first use."""
        if self._fast_describe is None:
            from vpr_ros.models import gpu_runtime
            if self.accelerate == 'cuda_graphs':
                self._fast_describe = gpu_runtime.CudaGraphDescribe(self.inner, GRAPH_BATCH)
            else:
                self._fast_describe = gpu_runtime.compile_describe(self.inner)
        return self._fast_describe

    def pair_logit(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Return the wrapped model's logit ``[B]`` (``first`` is the updated stream)."""
        with self._cpu_autocast(first.device):
            return self.inner.pair_logit(first, second)

    def pair_score(self, query: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        """Return both orders' logits summed ``[B]``; shared-query path for a broadcast query."""
        if is_broadcast(query):
            return self.score_candidates(query[0], candidate)
        with self._cpu_autocast(query.device):
            return self.inner.pair_score(query, candidate)

    def score_candidates(self, query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Return ``[K]`` symmetric scores of one query ``[N, C]`` against ``[K, N, C]``.

        A Pair-VPR decoder runs through :class:`PairScorer`; other models through their own
        ``score_candidates`` (the correspondence classifier shares one matrix product).
        """
        with self._cpu_autocast(candidates.device):
            if self._scorer is None:
                return self.inner.score_candidates(query, candidates)
            return self._scorer.score(query, candidates)

    def _cpu_autocast(self, device: torch.device):
        """Return a bfloat16 autocast context on a CPU when configured, else a no-op."""
        if self.cpu_dtype is None or device.type != 'cpu':
            return contextlib.nullcontext()
        return torch.autocast('cpu', dtype=self.cpu_dtype)


def apply_backend(model: VprModel, backend: str = 'auto', cache_dir: Optional[Path] = None,
                  device: str = 'auto', precision: str = 'fp32', threads: int = 0,
                  micro_batch: Optional[int] = None, accelerate: str = 'none') -> VprModel:
    """Return ``model`` prepared for ``backend`` (``auto``, ``torch``, ``onnx`` or ``tensorrt``).

    Args:
        model: a loaded model (checkpoint or registry); it is exported, not changed.
        backend: ``auto`` (``onnx`` when it is installed, exports and passes the parity check,
            else ``torch``), ``torch`` (PyTorch), ``onnx`` (onnxruntime, CUDA or CPU
            provider) or ``tensorrt`` (onnxruntime TensorRT provider, fp16 engines).
        cache_dir: where exported graphs and engines are kept (default
            :func:`default_cache_dir`); keyed by the spec and a digest of the weights.
        device: ``auto``, ``cpu`` or ``cuda``, as ``LocalizerConfig.device``.
        precision: ``fp32``, ``fp16`` or ``bf16``; on a CPU only the torch backend uses it
            (``bf16``: bfloat16 matrix products). On CUDA the localizer's autocast applies to
            the torch backend; TensorRT engines are always fp16.
        threads: onnxruntime intra-op threads (0 = ``torch.get_num_threads()``).
        micro_batch: images per encoder call; None = :data:`CPU_MICRO_BATCH` on a CPU, the
            whole batch on a GPU.
        accelerate: torch backend on CUDA: ``none``, ``compile`` or ``cuda_graphs``
            (see :class:`TorchVprModel`).

    Returns:
        A :class:`VprModel` with the same spec (maps stay compatible) and a ``backend``
        property naming the backend that runs. A model that is already a backend model
        (:class:`TorchVprModel`, :class:`OnnxVprModel`) is returned unchanged.
    """
    if isinstance(model, (TorchVprModel, OnnxVprModel)):
        return model
    if backend not in BACKENDS:
        raise ConfigError(f'unknown inference backend {backend!r}; valid: {list(BACKENDS)}')
    if precision not in PRECISIONS:
        raise ConfigError(f'unknown precision {precision!r}; valid: {sorted(PRECISIONS)}')
    if backend == 'auto':
        return _auto_backend(model, cache_dir, device, precision, threads, micro_batch,
                             accelerate)
    if backend == 'torch':
        return _torch_backend(model, device, precision, micro_batch, accelerate)
    if precision != 'fp32' and backend == 'onnx':
        LOG.warning('backend onnx runs float32 graphs; precision %s is ignored', precision)
    directory = export_model(model, cache_dir or default_cache_dir())
    result = _onnx_backend(model, directory, backend, device, threads, micro_batch)
    LOG.info('%s: backend %s, providers %s', model.spec.architecture, backend, result.providers)
    return result


def _torch_backend(model: VprModel, device: str, precision: str, micro_batch: Optional[int],
                   accelerate: str) -> TorchVprModel:
    on_cpu = resolve_device(device) == 'cpu'
    cpu_dtype = PRECISIONS[precision] if on_cpu and precision == 'bf16' else None
    default_batch = CPU_MICRO_BATCH['torch'] if on_cpu else 0
    return TorchVprModel(model, default_batch if micro_batch is None else micro_batch,
                         cpu_dtype, accelerate)


def _onnx_backend(model: VprModel, directory: Path, backend: str, device: str, threads: int,
                  micro_batch: Optional[int]) -> OnnxVprModel:
    providers = select_providers(backend, device, directory / ENGINE_DIR)
    if micro_batch is None:
        micro_batch = CPU_MICRO_BATCH['onnx'] if providers[0] == 'CPUExecutionProvider' else 0
    result = OnnxVprModel(directory, providers, threads, micro_batch)
    result.follow_scoring(model)
    return result


def _auto_backend(model: VprModel, cache_dir: Optional[Path], device: str, precision: str,
                  threads: int, micro_batch: Optional[int], accelerate: str) -> VprModel:
    """Return the onnx model when it is available and equal to PyTorch, else the torch one."""
    name = model.spec.architecture
    reason = _onnx_unsuitable(model, device, precision, accelerate)
    if reason is None:
        try:
            directory = export_model(model, cache_dir or default_cache_dir())
            candidate = _onnx_backend(model, directory, 'onnx', device, threads, micro_batch)
            report = cached_parity(model, candidate, directory)
        except BackendError as exc:
            reason = f'the ONNX export failed ({exc})'
        else:
            if _parity_holds(report):
                LOG.info('%s: backend auto -> onnx (providers %s; parity: cosine %.6f, tokens '
                         '%.1e, logits %.1e)', name, candidate.providers, report.min_cosine,
                         report.max_token_diff, report.max_logit_diff)
                return candidate
            reason = f'the exported graphs differ from PyTorch ({report})'
    LOG.info('%s: backend auto -> torch (%s)', name, reason)
    return _torch_backend(model, device, precision, micro_batch, accelerate)


def _onnx_unsuitable(model: VprModel, device: str, precision: str, accelerate: str
                     ) -> Optional[str]:
    """Return why ``auto`` should not try onnx for this model and settings, or None."""
    if onnxruntime_version() is None:
        return 'onnxruntime is not installed; pip install "vpr_ros[onnx]" for the faster backend'
    if not getattr(model, 'onnx_exportable', True):
        return f'{type(model).__name__} is not exportable'
    if precision != 'fp32' or accelerate != 'none':
        return f'precision {precision} / accelerate {accelerate} run in PyTorch'
    if resolve_device(device) == 'cuda':
        try:
            select_providers('onnx', 'cuda')
        except BackendError:
            return 'onnxruntime has no CUDA provider'
    return None


def _parity_holds(report: ParityReport) -> bool:
    return (report.passes(AUTO_MIN_COSINE, 0.0)
            and report.max_token_diff <= AUTO_MAX_TOKEN_DIFF)


def cached_parity(reference: VprModel, candidate: OnnxVprModel, directory: Path
                  ) -> ParityReport:
    """Return the parity report of ``candidate`` against ``reference``, computed once.

    The report is stored in the export directory, one file per provider and onnxruntime
    version (the graphs are already keyed by the weights and the spec).
    """
    provider = candidate.providers[0].replace('ExecutionProvider', '').lower()
    path = Path(directory) / f'parity-{provider}-ort{onnxruntime_version()}.json'
    try:
        return ParityReport(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        pass
    height, width = reference.spec.input_size
    images = torch.randn(PARITY_IMAGES, 3, height, width,
                         generator=torch.Generator().manual_seed(0))
    pair_logit = candidate.pair_logit if reference.spec.has_pair_classifier else None
    report = compare(reference.eval(), candidate.describe, pair_logit, images)
    staging = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    try:
        staging.write_text(json.dumps(report.__dict__))
        os.replace(staging, path)
    except OSError as exc:
        LOG.debug('could not cache the parity report at %s: %s', path, exc)
    return report
