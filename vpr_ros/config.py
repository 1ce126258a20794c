"""Typed, frozen configuration dataclasses: the single source of truth for every option.

ROS parameters, ``config/*.yaml`` and CLI flags are derived from these classes. Each field carries
``metadata['help']`` (a description) and, for numbers, optional ``metadata['range']`` (min, max).
"""

from dataclasses import dataclass, field, fields, is_dataclass
import typing
from typing import Any, Type, TypeVar

from vpr_ros.errors import ConfigError

T = TypeVar('T')

INDEX_KINDS = ('flat', 'hnsw', 'ivfpq')
DEFAULT_MODEL = 'pairvpr_lite'
"""Registry model used when none is named (with its shipped trained pair classifier)."""
DEVICES = ('auto', 'cpu', 'cuda')
BACKENDS = ('auto', 'torch', 'onnx', 'tensorrt')
ACCELERATIONS = ('none', 'compile', 'cuda_graphs')
PRECISIONS = ('fp32', 'fp16', 'bf16')
FUSIONS = ('fused', 'pair', 'global')
BETA_FROM_CHECKPOINT = -1.0
"""``LocalizerConfig.fusion_beta`` value that means: the beta stored with the checkpoint."""
VERIFY_MODELS = ('affine', 'homography', 'fundamental')


def option(default: Any, help_text: str, value_range: tuple | None = None,
           choices: tuple | None = None, runtime: bool = False) -> Any:
    """Return a config dataclass field carrying its help text and optional constraints.

    Args:
        default: the default value; a ``dict`` or ``list`` default is copied for each instance.
        help_text: description stored as ``metadata['help']``.
        value_range: ``(min, max)`` checked by :func:`validate` (``metadata['range']``).
        choices: allowed values checked by :func:`validate` (``metadata['choices']``).
        runtime: mark a ROS parameter that may change while the node runs
            (``metadata['runtime']``, stored only when true).
    """
    metadata: dict = {'help': help_text}
    if value_range is not None:
        metadata['range'] = value_range
    if choices is not None:
        metadata['choices'] = choices
    if runtime:
        metadata['runtime'] = True
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class IndexConfig:
    """How the map's FAISS index is built."""

    kind: str = option('flat', 'index kind: flat (exact inner product), hnsw or ivfpq',
                       choices=INDEX_KINDS)
    hnsw_m: int = option(32, 'HNSW neighbours per node', (4, 256))
    hnsw_ef_search: int = option(128, 'HNSW search breadth', (1, 4096))
    ivf_nlist: int = option(64, 'IVF-PQ coarse cells', (1, 65536))
    ivf_nprobe: int = option(8, 'IVF-PQ cells visited per query', (1, 65536))
    pq_m: int = option(16, 'IVF-PQ sub-quantizers (must divide the descriptor dimension)',
                       (1, 512))
    refine_k: int = option(100, 'IVF-PQ: re-score this many approximate candidates exactly '
                           'from the stored descriptors (0 = off)', (0, 100000))
    use_gpu: bool = option(True, 'use faiss GPU when it is installed and CUDA is present')
    search_threads: int = option(1, 'OpenMP threads for one FAISS search on the CPU (0 keeps '
                                 'the FAISS default of one per core)', (0, 1024))

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)


@dataclass(frozen=True)
class LocalizerConfig:
    """Localization pipeline: shortlist, re-ranking and acceptance."""

    top_k: int = option(20, 'candidates shortlisted by global search and re-ranked (the shipped '
                        'pair classifier was trained and calibrated on 20)', (1, 10000))
    rerank: bool = option(True, 're-rank the shortlist with the pair classifier '
                          '(when the model has one)')
    rerank_fusion: str = option('fused', 'ranking score of a re-ranked shortlist: fused (pair '
                                'score + fusion_beta * global similarity), pair (pair score '
                                'alone) or global (global similarity; pair scores still '
                                'reported)', choices=FUSIONS)
    fusion_beta: float = option(BETA_FROM_CHECKPOINT, 'weight of the global similarity in the '
                                'fused score; -1 = the value stored with the checkpoint',
                                (BETA_FROM_CHECKPOINT, 1e6))
    rerank_batch_size: int = option(50, 'candidate pairs scored per pair-classifier batch',
                                    (1, 4096))
    accept_probability: float = option(0.99, 'accept a match whose calibrated probability '
                                       'reaches it (a false loop closure corrupts a SLAM map: '
                                       'the default favours precision)', (0.0, 1.0))
    temporal_window: int = option(1, 'accept only if the best matches of the last N queries '
                                  'that passed the threshold agree with this one (0 = off)',
                                  (0, 100))
    temporal_max_distance_m: float = option(10.0, 'distance within which consecutive matches '
                                            'agree', (0.0, 1e6))
    temporal_max_id_gap: int = option(3, 'for map places without a pose: consecutive matches '
                                      'agree when their map ids (insertion order, i.e. recording '
                                      'order) are at most this far apart', (0, 10 ** 9))
    verify_top_n: int = option(0, 'geometric verification of the best N ranked candidates: '
                               'RANSAC on the mutual nearest neighbours of the query and map '
                               'token grids; Candidate.inliers reports the count (0 = off)',
                               (0, 10000))
    min_inliers: int = option(0, 'with verification on, a best match with fewer geometric '
                              'inliers is not accepted (reason "few inliers")', (0, 100000))
    verify_model: str = option('affine', 'geometric model of the verification: affine, '
                               'homography or fundamental (USAC MAGSAC)', choices=VERIFY_MODELS)
    verify_threshold: float = option(1.0, 'RANSAC inlier distance of the verification, in token '
                                     'grid cells', (0.01, 100.0))
    batch_size: int = option(16, 'images per descriptor-extraction batch', (1, 1024))
    device: str = option('auto', 'inference device: auto, cpu or cuda', choices=DEVICES)
    precision: str = option('fp32', 'autocast precision on CUDA: fp32, fp16 or bf16 (bf16 also '
                            'runs the torch backend in bfloat16 on a CPU)', choices=PRECISIONS)
    backend: str = option('auto', 'inference backend: auto (onnx when onnxruntime is installed '
                          'and the exported graphs match PyTorch, else torch), torch '
                          '(PyTorch), onnx (onnxruntime; CUDA provider on GPUs, else CPU) or '
                          'tensorrt (onnxruntime TensorRT provider, fp16 engines cached)',
                          choices=BACKENDS)
    backend_cache_dir: str = option('', 'exported ONNX graphs and TensorRT engines ("" = '
                                    '$VPR_ROS_CACHE/onnx or ~/.cache/vpr_ros/onnx)')
    accelerate: str = option('none', 'torch backend on CUDA: none, compile (torch.compile) or '
                             'cuda_graphs', choices=ACCELERATIONS)

    def __post_init__(self) -> None:
        """Validate values; ``fusion_beta`` is -1 (the checkpoint's) or at least 0."""
        validate(self)
        if self.fusion_beta != BETA_FROM_CHECKPOINT and self.fusion_beta < 0.0:
            raise ConfigError(f'LocalizerConfig.fusion_beta={self.fusion_beta!r} must be -1 '
                              '(the checkpoint value) or at least 0')


def validate(obj: Any) -> None:
    """Check every field of a config dataclass against its declared type, range and choices."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        value = getattr(obj, f.name)
        _check_type(type(obj).__name__, f.name, value, hints[f.name])
        lo_hi = f.metadata.get('range')
        if lo_hi is not None and not lo_hi[0] <= value <= lo_hi[1]:
            raise ConfigError(f'{type(obj).__name__}.{f.name}={value!r} is outside '
                              f'[{lo_hi[0]}, {lo_hi[1]}]')
        choices = f.metadata.get('choices')
        if choices is not None and value not in choices:
            raise ConfigError(f'{type(obj).__name__}.{f.name}={value!r} is not one of {choices}')


def _check_type(owner: str, name: str, value: Any, hint: Any) -> None:
    expected = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}.get(hint)
    if expected is None:
        return
    if isinstance(value, bool) and hint is not bool:
        expected = ()
    if not isinstance(value, expected):
        raise ConfigError(f'{owner}.{name} must be {hint.__name__}, got {value!r}')


def config_to_dict(obj: Any) -> dict:
    """Return the fields of a config dataclass as a plain dictionary."""
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def config_from_dict(cls: Type[T], data: dict) -> T:
    """Build ``cls`` from ``data``, rejecting unknown keys by name; missing keys take defaults."""
    if not is_dataclass(cls):
        raise TypeError(f'{cls!r} is not a dataclass')
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f'unknown {cls.__name__} option(s) {unknown}; valid: {sorted(names)}')
    hints = typing.get_type_hints(cls)
    values = {k: (float(v) if hints[k] is float and isinstance(v, int)
                  and not isinstance(v, bool) else v) for k, v in data.items()}
    return cls(**values)
