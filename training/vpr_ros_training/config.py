"""Typed training configuration: frozen dataclasses built from YAML files and CLI overrides.

Every option is a dataclass field with ``metadata['help']`` (and optional ``range`` and
``choices``, checked by :func:`vpr_ros.config.validate`). YAML sections map onto nested
dataclasses; unknown keys are rejected by name. ``data.sources`` is a list of typed source configs
selected by ``kind``.
"""

from dataclasses import dataclass, fields, is_dataclass
import math
import os
from pathlib import Path
import tempfile
import typing
from typing import Any, ClassVar, Sequence, Type, TypeVar

from vpr_ros.config import option, validate
from vpr_ros.errors import ConfigError
import yaml

T = TypeVar('T')

PRECISIONS = ('fp32', 'bf16')
DEVICES = ('auto', 'cpu', 'cuda')


class SourceConfig:
    """Base class of the per-dataset source configs in :mod:`vpr_ros_training.sources`."""

    kind: ClassVar[str] = ''

    def load(self):
        """Return the :class:`~vpr_ros_training.places.PlaceSet` this source describes."""
        raise NotImplementedError


SOURCE_KINDS: dict[str, type] = {}


def register_source(kind: str):
    """Class decorator registering a source config dataclass under ``kind``."""
    def decorate(cls: type) -> type:
        cls.kind = kind
        SOURCE_KINDS[kind] = cls
        return cls
    return decorate


def source_class(kind: str) -> type:
    """Return the source config class registered as ``kind``."""
    from vpr_ros_training import sources  # noqa: F401  (fills SOURCE_KINDS)
    if kind not in SOURCE_KINDS:
        raise ConfigError(f'unknown data source kind {kind!r}; valid: {sorted(SOURCE_KINDS)}')
    return SOURCE_KINDS[kind]


@dataclass(frozen=True)
class ModelConfig:
    """Which network is trained and how it is initialised."""

    name: str = option('pairvpr_vitb14', 'vpr_ros.models registry name of the model')
    options: dict = option({}, 'keyword overrides passed to the registry factory (tiny models)')
    num_trainable_blocks: int = option(6, 'last encoder blocks that are trained', (0, 1000))
    init_checkpoint: str = option('', 'weights to start from (stage two: the stage-one '
                                  'checkpoint, ours .safetensors or official .pth)')
    init_mode: str = option('stage_one', 'stage two: stage_one (fresh globalizer, pair head and '
                            'decoder CLS) or full (fine-tune a complete Pair-VPR checkpoint)',
                            choices=('stage_one', 'full'))
    encoder_weights: str = option('', 'official DINOv2 hub file (dinov2_vit*14_reg4_pretrain.pth) '
                                  'loaded into the encoder before training (stage one)')

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)


@dataclass(frozen=True)
class DataConfig:
    """Where training places come from and how they are batched."""

    sources: tuple = option((), 'list of data sources, each with a kind (see sources.py)')
    num_workers: int = option(8, 'DataLoader worker processes per rank', (0, 256))
    shuffle: bool = option(True, 'shuffle places every epoch (False keeps the dataset order)')
    randaugment_ops: int = option(3, 'stage two RandAugment operations per image (published 3, '
                                  '0 = off)', (0, 14))
    randaugment_magnitude: int = option(9, 'stage two RandAugment magnitude (torchvision '
                                        'default 9)', (0, 30))

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)
        for source in self.sources:
            if not isinstance(source, SourceConfig):
                raise ConfigError(f'data.sources entries must be source configs, got {source!r}')


@dataclass(frozen=True)
class RunConfig:
    """Batching, precision, checkpoints and logging shared by both stages."""

    batch_size_per_gpu: int = option(256, 'samples (stage 1 pairs, stage 2 places) per rank',
                                     (1, 100000))
    num_gpus: int = option(1, 'ranks the recipe was designed for (torchrun --nproc_per_node)',
                           (1, 4096))
    seed: int = option(0, 'seed of every random choice (data order, augmentation, masks)')
    device: str = option('auto', 'auto (cuda when available), cpu or cuda', choices=DEVICES)
    precision: str = option('bf16', 'autocast precision on CUDA: fp32 or bf16', choices=PRECISIONS)
    clip_grad: float = option(3.0, 'gradient-norm clipping threshold (0 = off)', (0.0, 1e9))
    max_bad_steps: int = option(20, 'abort after this many consecutive non-finite steps',
                                (1, 100000))
    max_steps: int = option(0, 'stop after this many optimiser steps (0 = full schedule)',
                            (0, 10 ** 12))
    save_every_epochs: int = option(1, 'rolling checkpoint period in epochs', (1, 100000))
    keep_every_epochs: int = option(10, 'keep a numbered checkpoint this often', (1, 100000))
    output_root: str = option('runs', 'folder under which each run creates its own folder')
    log_every: int = option(20, 'log scalars every N steps', (1, 100000))

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)


@dataclass(frozen=True)
class StageOneOptim:
    """Stage-one optimiser and schedules (AdamW, sqrt LR scaling, cosine with warm-up)."""

    epochs: int = option(500, 'training epochs (one epoch visits every place once)', (1, 100000))
    base_lr: float = option(3e-4, 'learning rate for a global batch of base_batch_size',
                            (0.0, 1.0))
    base_batch_size: int = option(1024, 'reference batch of the square-root LR scaling',
                                  (1, 10 ** 7))
    min_lr: float = option(1e-6, 'final learning rate of the cosine schedule', (0.0, 1.0))
    warmup_epochs: float = option(10.0, 'linear warm-up from 0 over this many epochs',
                                  (0.0, 100000.0))
    weight_decay: float = option(0.04, 'initial weight decay (cosine schedule)', (0.0, 10.0))
    weight_decay_end: float = option(0.4, 'final weight decay', (0.0, 10.0))
    layer_decay: float = option(0.9, 'layer-wise LR decay over encoder+decoder depth',
                                (0.0, 1.0))
    patch_embed_lr_mult: float = option(0.2, 'extra LR factor of the patch embedding',
                                        (0.0, 10.0))
    beta1: float = option(0.9, 'AdamW beta1', (0.0, 1.0))
    beta2: float = option(0.999, 'AdamW beta2', (0.0, 1.0))
    mask_ratio: float = option(0.9, 'fraction of image-1 patches replaced by the mask token',
                               (0.0, 0.99))

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)

    def scaled_lr(self, global_batch: int) -> float:
        """Return ``base_lr * sqrt(global_batch / base_batch_size)`` (the square-root rule)."""
        return self.base_lr * math.sqrt(global_batch / self.base_batch_size)


@dataclass(frozen=True)
class StageTwoOptim:
    """Stage-two optimiser and joint loss (MS loss + weighted pair BCE)."""

    epochs: int = option(10, 'training epochs', (1, 100000))
    lr: float = option(8e-5, 'AdamW learning rate', (0.0, 1.0))
    weight_decay: float = option(0.05, 'AdamW weight decay', (0.0, 10.0))
    end_factor: float = option(0.2, 'LinearLR end factor (start factor 1)', (0.0, 1.0))
    schedule_iters: int = option(6225, 'LinearLR total iterations (stepped per iteration)',
                                 (1, 10 ** 9))
    images_per_place: int = option(4, 'images of each place in a batch', (2, 64))
    pair_loss_weight: float = option(2.0, 'weight of the pair-classifier BCE', (0.0, 1000.0))
    ms_alpha: float = option(1.0, 'multi-similarity loss alpha', (0.0, 1000.0))
    ms_beta: float = option(50.0, 'multi-similarity loss beta', (0.0, 1000.0))
    ms_base: float = option(0.0, 'multi-similarity loss base', (-1.0, 1.0))
    miner_epsilon: float = option(0.1, 'multi-similarity miner epsilon', (0.0, 2.0))

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)


@dataclass(frozen=True)
class EvalConfig:
    """Held-out evaluation after each stage-two epoch and recommended inference settings."""

    sources: tuple = option((), 'held-out place sources evaluated after each epoch')
    top_k: int = option(100, 'shortlist re-ranked by the pair classifier (B: 100, G: 500)',
                        (1, 100000))
    batch_size: int = option(32, 'images per descriptor batch during evaluation', (1, 4096))

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)


@dataclass(frozen=True)
class StageOneConfig:
    """Complete stage-one recipe (Siamese masked image modelling)."""

    model: ModelConfig = option(ModelConfig(), 'network')
    data: DataConfig = option(DataConfig(), 'training places')
    optim: StageOneOptim = option(StageOneOptim(), 'optimiser and schedules')
    run: RunConfig = option(RunConfig(), 'batching, precision, checkpoints')


@dataclass(frozen=True)
class StageTwoConfig:
    """Complete stage-two recipe (joint global-descriptor and pair-classifier training)."""

    model: ModelConfig = option(ModelConfig(), 'network')
    data: DataConfig = option(DataConfig(shuffle=False), 'training places')
    optim: StageTwoOptim = option(StageTwoOptim(), 'optimiser and loss')
    run: RunConfig = option(RunConfig(batch_size_per_gpu=20, num_gpus=5), 'batching etc.')
    evaluation: EvalConfig = option(EvalConfig(), 'held-out evaluation')


def parse_config(cls: Type[T], data: Any, where: str = '') -> T:
    """Build dataclass ``cls`` from a (YAML) mapping, naming unknown keys and bad values."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f'{where or cls.__name__} must be a mapping, got {data!r}')
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f'unknown option(s) {unknown} in {where or cls.__name__}; '
                          f'valid: {sorted(names)}')
    hints = typing.get_type_hints(cls)
    values = {k: _convert(hints[k], v, f'{where}{k}') for k, v in data.items()}
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f'{where or cls.__name__}: {exc}') from exc


def _convert(hint: Any, value: Any, where: str) -> Any:
    if isinstance(hint, type) and is_dataclass(hint):
        return parse_config(hint, value, where + '.')
    if hint is tuple or typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f'{where} must be a list, got {value!r}')
        if where.endswith('sources'):
            return tuple(_parse_source(v, f'{where}[{i}]') for i, v in enumerate(value))
        return tuple(value)
    if hint is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError as exc:
            raise ConfigError(f'{where} must be a number, got {value!r}') from exc
    return value


def _parse_source(value: Any, where: str) -> SourceConfig:
    if isinstance(value, SourceConfig):
        return value
    if not isinstance(value, dict) or 'kind' not in value:
        raise ConfigError(f'{where} must be a mapping with a kind, got {value!r}')
    rest = {k: v for k, v in value.items() if k != 'kind'}
    return parse_config(source_class(value['kind']), rest, where + '.')


def config_as_dict(obj: Any) -> Any:
    """Return a config as plain YAML-ready data (sources carry their ``kind``)."""
    if is_dataclass(obj):
        data = {f.name: config_as_dict(getattr(obj, f.name)) for f in fields(obj)}
        if isinstance(obj, SourceConfig):
            data = {'kind': obj.kind, **data}
        return data
    if isinstance(obj, (tuple, list)):
        return [config_as_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: config_as_dict(v) for k, v in obj.items()}
    return obj


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to nested config data."""
    for text in overrides:
        if '=' not in text:
            raise ConfigError(f'override {text!r} must look like section.key=value')
        dotted, raw = text.split('=', 1)
        node = data
        *parents, leaf = dotted.split('.')
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f'override {dotted!r}: {part!r} is not a section')
        node[leaf] = yaml.safe_load(raw)
    return data


def load_config(cls: Type[T], path: str | Path | None = None,
                overrides: Sequence[str] = ()) -> T:
    """Read a YAML recipe into ``cls``, applying ``overrides`` such as ``run.max_steps=10``."""
    data: dict = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f'cannot read config file {path}: {exc}') from exc
    return parse_config(cls, apply_overrides(data, overrides))


def save_config(obj: Any, path: Path) -> None:
    """Write the resolved config as YAML (temporary file, fsync, rename)."""
    handle, temp = tempfile.mkstemp(prefix=f'.{path.name}.', dir=path.parent)
    with os.fdopen(handle, 'w') as stream:
        stream.write(yaml.safe_dump(config_as_dict(obj), sort_keys=False))
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temp, path)
