"""ONNX export of a VPR model, and an onnxruntime model behind the same :class:`VprModel` API.

Three graphs are exported, each at the model's fixed input resolution (``spec.input_size``; the
batch dimension stays dynamic):

- ``encoder.onnx``: ``images [B, 3, H, W] -> (global [B, D], tokens [B, N, C])``;
- ``pair_logit.onnx``: ``(first [B, N, C], second [B, N, C]) -> logit [B]`` (one input order);
- ``pair_score.onnx``: ``(query [1, N, C], candidates [K, N, C]) -> score [K]``, both orders
  summed with the query's share of the work done once (:class:`PairScorer`).

:func:`export_model` writes them with ``export.json`` (spec, weights digest, versions) into one
directory per model and weights, atomically, and reuses a complete directory.
:class:`OnnxVprModel` runs them with onnxruntime: the CPU execution provider here, CUDA or
TensorRT (fp16 engines cached next to the graphs) where onnxruntime-gpu provides them. Inputs and
outputs are torch tensors, so :class:`~vpr_ros.localization.localizer.Localizer` uses it unchanged.
"""

import contextlib
import hashlib
import io
import json
import logging
import os
from pathlib import Path
import shutil
from typing import Optional, Sequence
import uuid
import warnings
import weakref

import numpy as np
import torch
from torch import nn

from vpr_ros.errors import BackendError
from vpr_ros.models.fusion import RerankScoring
from vpr_ros.models.pair_scorer import is_broadcast, PairScorer
from vpr_ros.models.spec import ModelSpec
from vpr_ros.models.vpr_model import VprModel

LOG = logging.getLogger(__name__)

ENCODER_FILE = 'encoder.onnx'
PAIR_LOGIT_FILE = 'pair_logit.onnx'
PAIR_SCORE_FILE = 'pair_score.onnx'
MANIFEST_FILE = 'export.json'
ENGINE_DIR = 'trt_engines'
EXPORT_FORMAT_VERSION = 2
MAX_BATCH = 4096
EXPORT_BATCH = 2
TRT_MAX_IMAGES = 16
TRT_MAX_PAIRS = 256


class EncoderGraph(nn.Module):
    """``images -> (global, tokens)`` of a model, the module that is exported."""

    def __init__(self, model: VprModel) -> None:
        """Wrap ``model`` (not copied)."""
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(global [B, D], tokens [B, N, C])``."""
        return self.model.describe(images)


class PairLogitGraph(nn.Module):
    """``(first, second) -> logit`` of a model's pair classifier (one input order)."""

    def __init__(self, model: VprModel) -> None:
        """Wrap ``model`` (not copied)."""
        super().__init__()
        self.model = model

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Return the logit ``[B]``."""
        return self.model.pair_logit(first, second)


class PairScoreGraph(nn.Module):
    """``(query [1, N, C], candidates [K, N, C]) -> score [K]``, both input orders summed.

    A Pair-VPR decoder runs through :class:`PairScorer`; other models through their own
    ``score_candidates`` (see :func:`has_candidate_scorer`).
    """

    def __init__(self, model: VprModel) -> None:
        """Wrap the model's decoder (with a CLS token) or the model itself."""
        super().__init__()
        if has_shared_scorer(model):
            self.decoder = model.decoder
            self.scorer = PairScorer(self.decoder)
        else:
            self.model, self.scorer = model, None

    def forward(self, query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Return both input orders' logits summed, ``[K]``."""
        if self.scorer is None:
            return self.model.score_candidates(query[0], candidates)
        return self.scorer.score(query[0], candidates)


def weights_digest(model: nn.Module) -> str:
    """Return a SHA-256 (16 hex digits) over the model's state dict names, shapes and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f'{name}:{data.dtype}:{tuple(data.shape)};'.encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def export_graph(module: nn.Module, inputs: tuple, path: Path, input_names: Sequence[str],
                 output_names: Sequence[str], dynamic: Sequence[Optional[dict]]) -> Path:
    """Export ``module`` with the torch.export-based ONNX exporter and return ``path``.

    ``dynamic`` gives, per input, ``{axis: torch.export.Dim}`` or None (static). The exporter's
    progress output goes to the debug log; its warnings (about shared dynamic axes) are muted.
    """
    output = io.StringIO()
    try:
        with torch.no_grad(), contextlib.redirect_stdout(output), warnings.catch_warnings():
            warnings.simplefilter('ignore')
            torch.onnx.export(module.eval(), inputs, str(path), dynamo=True,
                              input_names=list(input_names), output_names=list(output_names),
                              dynamic_shapes=tuple(dynamic), external_data=True, verbose=False)
    except Exception as exc:  # the exporter raises many unrelated types
        raise BackendError(f'ONNX export of {type(module).__name__} to {path} failed: '
                           f'{type(exc).__name__}: {exc}') from exc
    LOG.debug('exported %s: %s', path, output.getvalue())
    return path


def export_encoder(model: VprModel, path: Path) -> Path:
    """Export the encoder at ``spec.input_size`` (dynamic batch) to ``path``."""
    height, width = model.spec.input_size
    param = next(model.parameters())
    images = torch.randn(EXPORT_BATCH, 3, height, width, dtype=param.dtype, device=param.device)
    batch = torch.export.Dim('batch', min=1, max=MAX_BATCH)
    return export_graph(EncoderGraph(model), (images,), path, ['images'],
                        ['global', 'tokens'], [{0: batch}])


def export_pair_decoder(model: VprModel, path: Path) -> Path:
    """Export the pair classifier (one input order, dynamic batch) to ``path``."""
    first, second = _example_tokens(model, EXPORT_BATCH), _example_tokens(model, EXPORT_BATCH)
    batch = torch.export.Dim('pairs', min=1, max=MAX_BATCH)
    return export_graph(PairLogitGraph(model), (first, second), path, ['first', 'second'],
                        ['logit'], [{0: batch}, {0: batch}])


def export_pair_scorer(model: VprModel, path: Path) -> Path:
    """Export the one-query symmetric scorer (dynamic candidate count) to ``path``."""
    query, candidates = _example_tokens(model, 1), _example_tokens(model, EXPORT_BATCH)
    count = torch.export.Dim('candidates', min=1, max=MAX_BATCH)
    return export_graph(PairScoreGraph(model), (query, candidates), path,
                        ['query', 'candidates'], ['score'], [None, {0: count}])


def _example_tokens(model: VprModel, batch: int) -> torch.Tensor:
    """Return random tokens ``[batch, N, C]`` of the model's token shape."""
    param = next(model.parameters())
    spec = model.spec
    return torch.randn(batch, spec.num_tokens, spec.token_dim, dtype=param.dtype,
                       device=param.device)


def has_shared_scorer(model: VprModel) -> bool:
    """Return True when the model's pair classifier is a :class:`PairDecoder` with a CLS token."""
    decoder = getattr(model, 'decoder', None)
    return (model.spec.has_pair_classifier and decoder is not None
            and getattr(decoder, 'decoder_clstoken', None) is not None)


def has_candidate_scorer(model: VprModel) -> bool:
    """Return True when ``model`` scores one query against K candidates with shared work.

    That is a Pair-VPR decoder (:func:`has_shared_scorer`) or a model that overrides
    :meth:`VprModel.score_candidates` (the correspondence classifier).
    """
    overrides = type(model).score_candidates is not VprModel.score_candidates
    return has_shared_scorer(model) or (model.spec.has_pair_classifier and overrides)


def export_directory(model: VprModel, cache_dir: Path, digest: Optional[str] = None) -> Path:
    """Return ``cache_dir/<architecture>-<spec digest>-<weights digest>-v<format>``.

    The export format is part of the name, so a newer package never reuses older graphs.
    """
    digest = digest or weights_digest(model)
    name = f'{model.spec.architecture}-{model.spec.digest()}-{digest}-v{EXPORT_FORMAT_VERSION}'
    return Path(cache_dir) / name


def export_model(model: VprModel, cache_dir: Path) -> Path:
    """Export every graph of ``model`` under ``cache_dir`` (reused when present); return its dir.

    The graphs are written to a temporary sibling and renamed into place, so a reader never sees
    a partial export; a concurrent export of the same model keeps whichever finished first.
    """
    digest = weights_digest(model)
    target = export_directory(model, cache_dir, digest)
    if (target / MANIFEST_FILE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f'.{target.name}.{uuid.uuid4().hex[:8]}.tmp'
    staging.mkdir()
    try:
        _write_graphs(model.eval(), staging, digest)
        _fsync_tree(staging)
        os.replace(staging, target)
    except OSError:
        if not (target / MANIFEST_FILE).is_file():
            raise
        LOG.info('%s was exported concurrently; using that copy', target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    LOG.info('exported %s to ONNX in %s', model.spec.architecture, target)
    return target


def _write_graphs(model: VprModel, directory: Path, digest: str) -> None:
    """Export the graphs of ``model`` into ``directory`` and write the manifest last."""
    files = [ENCODER_FILE]
    export_encoder(model, directory / ENCODER_FILE)
    if model.spec.has_pair_classifier:
        export_pair_decoder(model, directory / PAIR_LOGIT_FILE)
        files.append(PAIR_LOGIT_FILE)
    if has_candidate_scorer(model):
        export_pair_scorer(model, directory / PAIR_SCORE_FILE)
        files.append(PAIR_SCORE_FILE)
    manifest = {'format_version': EXPORT_FORMAT_VERSION, 'spec': json.loads(model.spec.to_json()),
                'weights_digest': digest, 'graphs': files,
                'torch': torch.__version__}
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, sort_keys=True))


def _fsync_tree(directory: Path) -> None:
    """Flush every file of ``directory`` and the directory itself to disk."""
    for path in directory.iterdir():
        with open(path, 'rb') as handle:
            os.fsync(handle.fileno())
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_export_spec(directory: Path) -> ModelSpec:
    """Return the :class:`ModelSpec` recorded in an export directory's manifest."""
    path = Path(directory) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BackendError(f'{path}: cannot read the ONNX export manifest: {exc}') from exc
    if manifest.get('format_version') != EXPORT_FORMAT_VERSION:
        raise BackendError(f'{path}: export format_version {manifest.get("format_version")!r} '
                           f'is not {EXPORT_FORMAT_VERSION}')
    return ModelSpec.from_json(json.dumps(manifest['spec']))


def onnxruntime_version() -> Optional[str]:
    """Return the installed onnxruntime version, or None when it is not installed."""
    try:
        return _onnxruntime().__version__
    except BackendError:
        return None


def _onnxruntime():
    """Import onnxruntime or raise :class:`BackendError` saying how to install it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendError('the onnx and tensorrt backends need onnxruntime (CPU) or '
                           'onnxruntime-gpu: pip install "vpr_ros[onnx]"') from exc
    return onnxruntime


def select_providers(backend: str, device: str, engine_dir: Optional[Path] = None) -> list:
    """Return the onnxruntime execution providers for ``backend`` on ``device``.

    ``onnx``: CUDA when ``device`` is ``cuda`` (required) or ``auto`` (when available), else
    CPU. ``tensorrt``: the TensorRT provider with fp16 engines cached in ``engine_dir``, then
    CUDA and CPU for unsupported nodes; raises :class:`BackendError` when it is missing.
    """
    available = _onnxruntime().get_available_providers()
    if backend == 'tensorrt':
        if 'TensorrtExecutionProvider' not in available:
            raise BackendError(f'backend tensorrt: onnxruntime has no TensorrtExecutionProvider '
                               f'(available: {available}); install onnxruntime-gpu with '
                               'TensorRT, or build engines with trtexec (docs/deployment.md)')
        return [('TensorrtExecutionProvider', tensorrt_options(engine_dir)),
                'CUDAExecutionProvider', 'CPUExecutionProvider']
    if backend != 'onnx':
        raise BackendError(f'unknown ONNX backend {backend!r}; valid: onnx, tensorrt')
    cuda = 'CUDAExecutionProvider' in available
    if device == 'cuda' and not cuda:
        raise BackendError(f'device cuda requested but onnxruntime has no CUDAExecutionProvider '
                           f'(available: {available}); install onnxruntime-gpu')
    if cuda and device in ('cuda', 'auto'):
        return ['CUDAExecutionProvider', 'CPUExecutionProvider']
    return ['CPUExecutionProvider']


def tensorrt_options(engine_dir: Optional[Path]) -> dict:
    """Return TensorRT provider options: fp16, engine and timing caches in ``engine_dir``."""
    options = {'trt_fp16_enable': True, 'trt_builder_optimization_level': 3}
    if engine_dir is not None:
        Path(engine_dir).mkdir(parents=True, exist_ok=True)
        options.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(engine_dir),
                       trt_timing_cache_enable=True, trt_timing_cache_path=str(engine_dir))
    return options


def trt_profile_options(spec: ModelSpec, graph: str) -> dict:
    """Return TensorRT optimisation-profile shapes (min/opt/max) for one exported graph."""
    height, width = spec.input_size
    tokens = f'{spec.num_tokens}x{spec.token_dim}'
    if graph == ENCODER_FILE:
        shapes = [f'images:{b}x3x{height}x{width}' for b in (1, 4, TRT_MAX_IMAGES)]
    elif graph == PAIR_LOGIT_FILE:
        shapes = [f'first:{b}x{tokens},second:{b}x{tokens}' for b in (1, 100, TRT_MAX_PAIRS)]
    else:
        shapes = [f'query:1x{tokens},candidates:{b}x{tokens}' for b in (1, 100, TRT_MAX_PAIRS)]
    return dict(zip(('trt_profile_min_shapes', 'trt_profile_opt_shapes',
                     'trt_profile_max_shapes'), shapes))


class OnnxVprModel(VprModel):
    """A :class:`VprModel` whose computations run exported ONNX graphs in onnxruntime.

    Args:
        directory: an :func:`export_model` directory.
        providers: onnxruntime execution providers (see :func:`select_providers`).
        threads: intra-op threads for the CPU provider; 0 = ``torch.get_num_threads()``.
        micro_batch: images per encoder run (0 = the whole batch). Small batches are faster
            on a CPU (cache-resident activations); GPUs want the whole batch.
    """

    def __init__(self, directory: Path, providers: Sequence, threads: int = 0,
                 micro_batch: int = 0) -> None:
        """Open one onnxruntime session per exported graph."""
        super().__init__()
        self._rerank_scoring: Optional[RerankScoring] = None
        self._scoring_source: Optional[weakref.ref] = None
        self.directory = Path(directory)
        self.spec = read_export_spec(self.directory)
        self.micro_batch = int(micro_batch)
        self._threads = int(threads) or torch.get_num_threads()
        self._encoder = self._session(ENCODER_FILE, providers)
        self._pair = self._session(PAIR_LOGIT_FILE, providers)
        self._scorer = self._session(PAIR_SCORE_FILE, providers)

    @property
    def providers(self) -> list[str]:
        """Return the execution providers the encoder session actually uses."""
        return self._encoder.get_providers()

    @property
    def rerank_scoring(self) -> Optional[RerankScoring]:
        """Return the fusion and calibration of the model the graphs came from.

        Read from that model while it lives (so a calibration set on it later applies), else
        the value given when the graphs were opened.
        """
        source = self._scoring_source() if self._scoring_source is not None else None
        if source is not None:
            return getattr(source, 'rerank_scoring', None)
        return self._rerank_scoring

    @rerank_scoring.setter
    def rerank_scoring(self, value: Optional[RerankScoring]) -> None:
        self._rerank_scoring, self._scoring_source = value, None

    def follow_scoring(self, model: nn.Module) -> None:
        """Take ``rerank_scoring`` from ``model`` (held weakly) from now on."""
        self._rerank_scoring = getattr(model, 'rerank_scoring', None)
        self._scoring_source = weakref.ref(model)

    @property
    def backend(self) -> str:
        """Return the backend name: ``tensorrt`` or ``onnx``."""
        return 'tensorrt' if self.providers[0] == 'TensorrtExecutionProvider' else 'onnx'

    def _session(self, name: str, providers: Sequence):
        """Return an onnxruntime session for graph ``name``, or None when it was not exported."""
        path = self.directory / name
        if not path.is_file():
            return None
        ort = _onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        # Idle intra-op threads sleep rather than spin: the CPU is shared with the robot's stack.
        options.add_session_config_entry('session.intra_op.allow_spinning', '0')
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        resolved = [(p[0], {**p[1], **trt_profile_options(self.spec, name)})
                    if isinstance(p, tuple) and p[0] == 'TensorrtExecutionProvider' else p
                    for p in providers]
        try:
            return ort.InferenceSession(str(path), options, providers=resolved)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise BackendError(f'{path}: onnxruntime cannot load the graph: {exc}') from exc

    def describe(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(global [B, D], tokens [B, N, C])`` from the encoder graph."""
        if len(images) == 0:
            spec = self.spec
            return (images.new_zeros(0, spec.descriptor_dim),
                    images.new_zeros(0, spec.num_tokens, spec.token_dim))
        step = self.micro_batch or len(images)
        outputs = [self._run(self._encoder, images=chunk) for chunk in images.split(step)]
        return torch.cat([o[0] for o in outputs]), torch.cat([o[1] for o in outputs])

    def pair_logit(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Return the same-place logit ``[B]`` with ``first`` as the decoder's updated stream."""
        if self._pair is None:
            raise NotImplementedError(f'{self.spec.architecture} has no pair classifier')
        return self._run(self._pair, first=first, second=second)[0]

    def pair_score(self, query: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        """Return both input orders' logits summed ``[B]`` (shared-query graph when possible)."""
        if self._scorer is not None and is_broadcast(query):
            return self.score_candidates(query[0], candidate)
        count = len(query)
        logits = self.pair_logit(torch.cat([query, candidate]), torch.cat([candidate, query]))
        return logits[:count] + logits[count:]

    def score_candidates(self, query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Return ``[K]`` symmetric scores of one query ``[N, C]`` against ``[K, N, C]``."""
        if self._scorer is None:
            return self.pair_score(query[None].expand(len(candidates), -1, -1), candidates)
        return self._run(self._scorer, query=query[None], candidates=candidates)[0]

    def _run(self, session, **inputs: torch.Tensor) -> list[torch.Tensor]:
        """Run ``session`` on float32 copies of ``inputs``; outputs on the inputs' device."""
        device = next(iter(inputs.values())).device
        feed = {name: np.ascontiguousarray(t.detach().to('cpu', torch.float32).numpy())
                for name, t in inputs.items()}
        return [torch.from_numpy(out).to(device) for out in session.run(None, feed)]
