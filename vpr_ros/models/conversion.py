"""Conversion of official Pair-VPR releases and DINOv2 hub files into vpr_ros checkpoints.

The published Pair-VPR weights (``pairvpr-vitB.pth``, ``-vitL``, ``-vitG``: the authors'
release) are PyTorch state dicts under the official ``PairVPRNet`` names. They are read with
``torch.load(weights_only=True)`` only, never unpickled otherwise. :func:`inspect_official`
recognises what a state dict holds from its key names and tensor shapes alone:

- the variant: ``vitg14`` when the encoder has DINOv2's SwiGLU feed-forward (``mlp.w12``), else
  ``vitb14`` / ``vitl14`` by the released widths and depths (768 / 12 and 1024 / 24). Other
  sizes (test-made files, the golden fixture) are recorded as size overrides of ``vitb14`` (or
  ``vitg14`` with SwiGLU);
- encoder and decoder widths and depths, the descriptor width and the input size (the decoder's
  positional table covers ``(size / 14)^2`` patches; 322 px for the releases);
- head counts, which no tensor shape shows: 64-wide heads, as every DINOv2 and Pair-VPR model
  has, unless given.

A converted model has the ``'official'`` preprocessing (the official evaluation transform) and
no ``rerank_scoring``: its probabilities use the documented fallback ``sigmoid(pair_score / 2)``
until ``vpr-calibrate`` fits a calibration. A DINOv2 hub file (``dinov2_vit*14_reg4_pretrain.pth``)
converts to the Pair-VPR model of its variant with that encoder and a freshly initialised (seed 0)
globalizer and pair decoder: a starting point for training, recorded as ``untrained`` in the
``source`` metadata, and refused by :func:`load_any_checkpoint`.

:func:`load_any_checkpoint` is what ``--checkpoint`` and the nodes' ``checkpoint`` parameter
call: a vpr_ros checkpoint loads as usual, an official Pair-VPR file is converted in memory.
"""

import dataclasses
from dataclasses import dataclass
import hashlib
import json
import logging
import math
import os
from pathlib import Path
import re
import struct
from typing import Optional, Union

from safetensors import safe_open, SafetensorError
import torch

from vpr_ros.errors import CheckpointError
from vpr_ros.models.checkpoint import FORMAT_NAME, load_checkpoint, save_checkpoint
from vpr_ros.models.dinov2 import from_official_keys, PATCH_SIZE, to_official_keys
from vpr_ros.models.official_weights import load_official_state_dict, read_official_state_dict
from vpr_ros.models.pairvpr import DEFAULT_OPTIONS, PairVpr
from vpr_ros.models.registry import create_model
from vpr_ros.models.spec import PREPROCESSING_OFFICIAL
from vpr_ros.models.state_dict_keys import check_state_dict
from vpr_ros.models.vpr_model import VprModel

LOGGER = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

HEAD_WIDTH = 64
"""Attention head width of every DINOv2 and Pair-VPR model (used to infer head counts)."""
RELEASES = {
    'vitb14': {'swiglu': False, 'encoder_dim': 768, 'encoder_depth': 12, 'encoder_heads': 12},
    'vitl14': {'swiglu': False, 'encoder_dim': 1024, 'encoder_depth': 24, 'encoder_heads': 16},
    'vitg14': {'swiglu': True, 'encoder_dim': 1536, 'encoder_depth': 40, 'encoder_heads': 24},
}
"""Encoder of each released variant (the registry defaults of ``pairvpr_<variant>``)."""
VARIANTS = tuple(RELEASES)
VARIANT_NAMES = {'vitb14': 'ViT-B/14', 'vitl14': 'ViT-L/14', 'vitg14': 'ViT-G/14'}
KIND_PAIRVPR = 'pairvpr_release'
KIND_DINOV2 = 'dinov2_hub'
DINOV2_UNTRAINED = ('globalizer', 'decoder')
OFFICIAL_ENCODER = 'encoder.model.'
# Keys a complete (stage-two) Pair-VPR state dict has, besides the encoder.
PAIRVPR_REQUIRED = ('decoder_embed.weight', 'dec_pos_embed', 'classvprmodule.0.weight',
                    'globalizer.0.weight')
DINOV2_REQUIRED = ('cls_token', 'pos_embed', 'patch_embed.proj.weight', 'blocks.0.attn.qkv.weight')
SAFETENSORS_MAX_HEADER = 100 * 2 ** 20
SHOWN_KEYS = 6
INIT_SEED = 0


@dataclass(frozen=True)
class OfficialLayout:
    """What an official state dict holds, read from its key names and tensor shapes.

    Attributes:
        kind: :data:`KIND_PAIRVPR` or :data:`KIND_DINOV2`.
        variant: one of :data:`VARIANTS`; the model is the registry's ``pairvpr_<variant>``.
        overrides: registry size options where the file differs from the variant's defaults.
        sizes: every size (``encoder_dim``, ``encoder_depth``, ``encoder_heads``,
            ``decoder_dim``, ``decoder_depth``, ``decoder_heads``, ``descriptor_dim``,
            ``image_size``), for reports.
        release: True when the encoder has exactly a released variant's width and depth.
        inferred_heads: the head counts that were inferred (not given), by name.
    """

    kind: str
    variant: str
    overrides: tuple
    sizes: tuple
    release: bool
    inferred_heads: tuple = ()

    @property
    def architecture(self) -> str:
        """Return the registry name of the model."""
        return f'pairvpr_{self.variant}'

    def describe(self) -> str:
        """Return a one-line description (variant and sizes)."""
        sizes = dict(self.sizes)
        what = 'Pair-VPR' if self.kind == KIND_PAIRVPR else 'DINOv2 encoder for Pair-VPR'
        shape = 'released sizes' if self.release else 'non-release sizes'
        text = (f'{what} {VARIANT_NAMES[self.variant]} ({shape}: encoder {sizes["encoder_dim"]} '
                f'wide, {sizes["encoder_depth"]} blocks, {sizes["encoder_heads"]} heads; ')
        if self.kind == KIND_PAIRVPR:
            text += (f'decoder {sizes["decoder_dim"]} wide, {sizes["decoder_depth"]} blocks, '
                     f'{sizes["decoder_heads"]} heads; {sizes["descriptor_dim"]}-D descriptor; ')
        text += f'{sizes["image_size"]}x{sizes["image_size"]} input)'
        return text


@dataclass(frozen=True)
class Conversion:
    """The result of :func:`convert_official_file`."""

    path: Path
    layout: OfficialLayout
    source_sha256: str


# ---- recognising a file ---------------------------------------------------------------------

def is_safetensors(path: PathLike) -> bool:
    """Return True when ``path`` starts like a safetensors file (header length, then ``{``)."""
    path = Path(path)
    with open(path, 'rb') as handle:
        head = handle.read(9)
    if len(head) < 9:
        return False
    length = struct.unpack('<Q', head[:8])[0]
    return head[8:9] == b'{' and length <= min(SAFETENSORS_MAX_HEADER, path.stat().st_size - 8)


def is_vpr_ros_checkpoint(path: PathLike) -> bool:
    """Return True when ``path`` is a safetensors file whose metadata says vpr_ros checkpoint."""
    if not is_safetensors(path):
        return False
    try:
        with safe_open(str(path), framework='pt') as handle:
            return (handle.metadata() or {}).get('format') == FORMAT_NAME
    except (SafetensorError, OSError, ValueError):
        return False


def _require_file(path: Path) -> None:
    """Raise a :class:`CheckpointError` when ``path`` is not an existing, non-empty file."""
    if not path.is_file():
        raise CheckpointError(f'checkpoint file {path} not found')
    if path.stat().st_size == 0:
        raise CheckpointError(f'{path} is empty (0 bytes): an interrupted download or copy?')


def _show_keys(state: dict) -> str:
    """Return a few of ``state``'s keys for an error message."""
    keys = sorted(state)
    more = f' (+{len(keys) - SHOWN_KEYS} more)' if len(keys) > SHOWN_KEYS else ''
    return ', '.join(keys[:SHOWN_KEYS]) + more


def official_kind(state: dict, source: str) -> str:
    """Return :data:`KIND_PAIRVPR` or :data:`KIND_DINOV2` for an official state dict.

    Raises:
        CheckpointError: for anything else (naming what was expected and found), and for a
            stage-one Pair-VPR file, which has no trained pair classifier.
    """
    if not state:
        raise CheckpointError(f'{source} holds an empty state dict')
    if any(key.startswith(OFFICIAL_ENCODER) for key in state):
        missing = [key for key in PAIRVPR_REQUIRED if key not in state]
        if 'decoder_clstoken' not in state and 'decoder_embed.weight' in state:
            raise CheckpointError(
                f'{source} is a stage-one (pre-training) Pair-VPR file: it has no decoder CLS '
                'token, so no trained pair classifier or global descriptor head; use it to '
                'initialise stage-two training (model.init_checkpoint), or convert a released '
                'stage-two file (pairvpr-vitB/L/G.pth)')
        if missing:
            raise CheckpointError(f'{source} has Pair-VPR encoder keys but lacks {missing}: not '
                                  'a complete Pair-VPR release (truncated or edited?)')
        return KIND_PAIRVPR
    if all(key in state for key in DINOV2_REQUIRED):
        if 'register_tokens' not in state:
            raise CheckpointError(f'{source} is a DINOv2 model without register tokens; '
                                  'Pair-VPR uses the DINOv2 models with registers '
                                  '(dinov2_vit*14_reg4_pretrain.pth)')
        return KIND_DINOV2
    raise CheckpointError(
        f'{source} is not a Pair-VPR release or a DINOv2 hub file: expected the official '
        f"Pair-VPR keys ('{OFFICIAL_ENCODER}*', 'decoder_embed.*', 'dec_blocks.*', "
        "'classvprmodule.*', 'globalizer.0.*') or the DINOv2 keys ('cls_token', 'pos_embed', "
        f"'patch_embed.proj.weight', 'blocks.*'); found {len(state)} tensors: "
        f'{_show_keys(state)}')


# ---- reading the sizes ----------------------------------------------------------------------

def _shape(state: dict, key: str, source: str) -> tuple:
    """Return the shape of ``state[key]`` or raise naming the missing key."""
    if key not in state:
        raise CheckpointError(f'{source} lacks the tensor {key!r}')
    return tuple(state[key].shape)


def _depth(state: dict, prefix: str, source: str) -> int:
    """Return how many numbered blocks ``<prefix><n>.`` the state dict has (0 .. n-1)."""
    pattern = re.compile(re.escape(prefix) + r'(\d+)\.')
    indices = {int(match.group(1)) for match in map(pattern.match, state) if match}
    if not indices:
        raise CheckpointError(f'{source} has no {prefix}N.* blocks')
    if indices != set(range(len(indices))):
        gaps = sorted(set(range(max(indices) + 1)) - indices)
        raise CheckpointError(f'{source}: blocks {prefix}{gaps} are missing (truncated or '
                              'edited file?)')
    return len(indices)


def _heads(width: int, given: Optional[int], what: str, source: str) -> tuple[int, bool]:
    """Return ``(heads, inferred)``: ``given`` or ``width / 64``."""
    if given is not None:
        if given < 1 or width % given:
            raise CheckpointError(f'{source}: {what} width {width} is not divisible by the '
                                  f'{given} heads given')
        return int(given), False
    if width % HEAD_WIDTH:
        raise CheckpointError(f'{source}: the {what} is {width} wide, not a multiple of '
                              f'{HEAD_WIDTH}, so its head count cannot be inferred; give it '
                              f'(--{what}-heads)')
    return width // HEAD_WIDTH, True


def _encoder_sizes(state: dict, prefix: str, source: str) -> dict:
    """Return the encoder's width, depth and feed-forward type from its tensors."""
    shape = _shape(state, f'{prefix}patch_embed.proj.weight', source)
    if len(shape) != 4 or shape[1:] != (3, PATCH_SIZE, PATCH_SIZE):
        raise CheckpointError(f'{source}: patch embedding of shape {list(shape)}, expected '
                              f'[width, 3, {PATCH_SIZE}, {PATCH_SIZE}] (a DINOv2 /14 encoder)')
    return {'encoder_dim': shape[0], 'encoder_depth': _depth(state, f'{prefix}blocks.', source),
            'swiglu': f'{prefix}blocks.0.mlp.w12.weight' in state}


def _image_size(state: dict, source: str) -> int:
    """Return the input size that the decoder's positional table covers."""
    key = 'dec_pos_embed_cls' if 'dec_pos_embed_cls' in state else 'dec_pos_embed'
    rows = _shape(state, key, source)[0] - (key == 'dec_pos_embed_cls')
    side = math.isqrt(rows)
    if side * side != rows:
        raise CheckpointError(f'{source}: {key} has {rows} patch rows, not a square grid')
    return side * PATCH_SIZE


def _resolve_variant(found: dict, variant: Optional[str], source: str) -> tuple[str, bool]:
    """Return ``(variant, is_release)``; a named variant must agree with the tensors."""
    release = next((name for name, sizes in RELEASES.items()
                    if (sizes['swiglu'], sizes['encoder_dim'], sizes['encoder_depth'])
                    == (found['swiglu'], found['encoder_dim'], found['encoder_depth'])), None)
    found_text = (f'encoder {found["encoder_dim"]} wide, {found["encoder_depth"]} blocks, '
                  f'{"SwiGLU" if found["swiglu"] else "GELU MLP"} feed-forward')
    if variant is None:
        return release or ('vitg14' if found['swiglu'] else 'vitb14'), release is not None
    if release is not None and release != variant:
        raise CheckpointError(f'{source} holds a Pair-VPR {VARIANT_NAMES[release]} '
                              f'({found_text}), not the {variant} that was named: use '
                              f'--variant {release} or leave the variant out')
    if release is None and RELEASES[variant]['swiglu'] != found['swiglu']:
        raise CheckpointError(f'{source} ({found_text}) cannot be {variant}: that variant has '
                              f'a {"SwiGLU" if RELEASES[variant]["swiglu"] else "GELU MLP"} '
                              'feed-forward')
    return variant, release is not None


def normalise_variant(variant: Optional[str]) -> Optional[str]:
    """Return ``variant`` as one of :data:`VARIANTS` (``pairvpr_`` prefix and case allowed)."""
    if variant is None:
        return None
    name = str(variant).lower()
    name = name[len('pairvpr_'):] if name.startswith('pairvpr_') else name
    if name not in RELEASES:
        raise CheckpointError(f'unknown Pair-VPR variant {variant!r}; valid: '
                              f'{", ".join(VARIANTS)}')
    return name


def inspect_official(state: dict, source: str = 'official state dict',
                     variant: Optional[str] = None, encoder_heads: Optional[int] = None,
                     decoder_heads: Optional[int] = None,
                     image_size: Optional[int] = None) -> OfficialLayout:
    """Return the :class:`OfficialLayout` of an official Pair-VPR or DINOv2 state dict.

    Args:
        state: the state dict under the official names (see :func:`read_official_state_dict`).
        source: how errors name it (the file path).
        variant: the variant the caller expects (refused when the tensors say otherwise).
        encoder_heads: encoder head count (default: width / 64).
        decoder_heads: decoder head count (default: width / 64).
        image_size: input size; for a Pair-VPR file it must equal the one its decoder table
            covers; for a DINOv2 file it chooses the size (default 322).

    Raises:
        CheckpointError: naming the problem (not an official file, stage one, variant mismatch,
            missing blocks, sizes that cannot be read).
    """
    variant = normalise_variant(variant)
    kind = official_kind(state, source)
    prefix = OFFICIAL_ENCODER if kind == KIND_PAIRVPR else ''
    found = _encoder_sizes(state, prefix, source)
    variant, release = _resolve_variant(found, variant, source)
    heads, inferred_encoder = _heads(found['encoder_dim'], encoder_heads, 'encoder', source)
    sizes = {'encoder_dim': found['encoder_dim'], 'encoder_depth': found['encoder_depth'],
             'encoder_heads': heads}
    inferred = ['encoder_heads'] if inferred_encoder and not release else []
    if kind == KIND_PAIRVPR:
        decoder_dim = _shape(state, 'decoder_embed.weight', source)[0]
        decoder, inferred_decoder = _heads(decoder_dim, decoder_heads, 'decoder', source)
        found_size = _image_size(state, source)
        if image_size is not None and image_size != found_size:
            raise CheckpointError(f'{source}: its decoder positional table is for '
                                  f'{found_size} px input, not the {image_size} px given')
        sizes.update(decoder_dim=decoder_dim, decoder_depth=_depth(state, 'dec_blocks.', source),
                     decoder_heads=decoder,
                     descriptor_dim=_shape(state, 'globalizer.0.weight', source)[0],
                     image_size=found_size)
        if inferred_decoder and decoder_dim != DEFAULT_OPTIONS['decoder_dim']:
            inferred.append('decoder_heads')
    else:
        sizes.update({key: DEFAULT_OPTIONS[key] for key in
                      ('decoder_dim', 'decoder_depth', 'decoder_heads', 'descriptor_dim')})
        sizes['image_size'] = image_size or DEFAULT_OPTIONS['image_size']
        if sizes['image_size'] % PATCH_SIZE:
            raise CheckpointError(f'image size {sizes["image_size"]} is not a multiple of '
                                  f'{PATCH_SIZE}')
    defaults = {**DEFAULT_OPTIONS, **{key: value for key, value in RELEASES[variant].items()
                                      if key != 'swiglu'}}
    overrides = {key: value for key, value in sizes.items() if defaults[key] != value}
    return OfficialLayout(kind, variant, tuple(sorted(overrides.items())),
                          tuple(sorted(sizes.items())), release, tuple(inferred))


# ---- building the model ---------------------------------------------------------------------

def model_from_official(state: dict, layout: OfficialLayout,
                        source: str = 'official state dict') -> PairVpr:
    """Build ``layout``'s model and load ``state`` into it (eval mode, no rerank_scoring).

    Every key must match (names and shapes). A DINOv2 state dict fills the encoder; the
    globalizer and pair decoder keep a fresh initialisation drawn with seed 0.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        try:
            model = create_model(layout.architecture, **dict(layout.overrides))
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f'{source}: cannot build {layout.architecture} with '
                                  f'{dict(layout.overrides)}: {exc}') from exc
    model.spec = dataclasses.replace(model.spec, preprocessing=PREPROCESSING_OFFICIAL)
    if layout.kind == KIND_PAIRVPR:
        load_official_state_dict(model, state, strict=True, source=source)
    else:
        expected = to_official_keys(model.encoder.state_dict(), model.encoder.swiglu)
        check_state_dict(expected, state, f'DINOv2 weights {source}')
        model.encoder.load_state_dict(from_official_keys(state), strict=True)
    model.rerank_scoring = None
    return model.eval()


def read_official(path: PathLike, variant: Optional[str] = None,
                  **hints: Optional[int]) -> tuple[PairVpr, OfficialLayout]:
    """Read an official Pair-VPR or DINOv2 file and return ``(model, layout)``.

    ``hints`` are ``encoder_heads``, ``decoder_heads`` and ``image_size`` (see
    :func:`inspect_official`).
    """
    path = Path(path)
    _require_file(path)
    if is_vpr_ros_checkpoint(path):
        raise CheckpointError(f'{path} is already a vpr_ros checkpoint: nothing to convert '
                              '(load it with --checkpoint)')
    state = read_official_state_dict(path)
    layout = inspect_official(state, str(path), variant, **hints)
    return model_from_official(state, layout, str(path)), layout


def file_sha256(path: PathLike) -> str:
    """Return the SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for block in iter(lambda: handle.read(1 << 22), b''):
            digest.update(block)
    return digest.hexdigest()


def source_metadata(path: Path, layout: OfficialLayout, sha256: str) -> str:
    """Return the ``source`` metadata JSON of a converted file."""
    untrained = list(DINOV2_UNTRAINED) if layout.kind == KIND_DINOV2 else []
    return json.dumps({'kind': layout.kind, 'file': path.name, 'sha256': sha256,
                       'untrained': untrained}, sort_keys=True)


def default_output(source: PathLike) -> Path:
    """Return the default output path: ``source`` with the suffix ``.safetensors``."""
    source = Path(source)
    return source.with_name(source.stem + '.safetensors')


def convert_official_file(source: PathLike, out: Optional[PathLike] = None,
                          variant: Optional[str] = None, overwrite: bool = False,
                          **hints: Optional[int]) -> Conversion:
    """Convert an official Pair-VPR release or DINOv2 hub file into a vpr_ros checkpoint.

    The checkpoint (safetensors, written atomically: a temporary file renamed into place) holds
    the model, its spec (variant, sizes, input size, ``'official'`` preprocessing), no
    calibration, and the ``source`` metadata (file name, SHA-256, untrained parts).

    Args:
        source: the official file (``.pth``, or ``.safetensors`` with an official state dict).
        out: the checkpoint to write (default: ``source`` with the suffix ``.safetensors``).
        variant: the expected variant (refused when the tensors say otherwise).
        overwrite: replace an existing ``out``.
        hints: ``encoder_heads``, ``decoder_heads``, ``image_size`` (see
            :func:`inspect_official`).
    """
    source = Path(source)
    out = Path(out) if out is not None else default_output(source)
    if out.exists() and not overwrite:
        raise CheckpointError(f'{out} exists; choose another output or allow overwriting it '
                              '(--force)')
    _require_file(source)
    if out.resolve() == source.resolve():
        raise CheckpointError(f'{out}: the output would replace the official file it is '
                              'converted from')
    model, layout = read_official(source, variant, **hints)
    if layout.kind == KIND_DINOV2:
        LOGGER.warning('%s: DINOv2 encoder only; the globalizer and pair decoder of %s are '
                       'untrained (seed %d): a starting point for training, not for '
                       'localization', source, out, INIT_SEED)
    sha256 = file_sha256(source)
    save_checkpoint(model, out, extra_metadata={'source': source_metadata(source, layout,
                                                                          sha256)})
    LOGGER.info('converted %s to %s: %s', source, out, layout.describe())
    return Conversion(out, layout, sha256)


# ---- loading whatever --checkpoint names ----------------------------------------------------

def load_any_checkpoint(path: PathLike, device: Union[str, torch.device] = 'cpu') -> VprModel:
    """Load a vpr_ros checkpoint, or convert an official Pair-VPR release in memory.

    A vpr_ros checkpoint goes to :func:`~vpr_ros.models.checkpoint.load_checkpoint`. Any
    other file is read as an official Pair-VPR state dict (``.pth`` with
    ``torch.load(weights_only=True)``, or ``.safetensors``), its variant and sizes inferred
    from the tensors, and one INFO line says so. A DINOv2 hub file is refused: it has no
    trained global descriptor head or pair classifier.
    """
    path = Path(path)
    _require_file(path)
    if is_vpr_ros_checkpoint(path):
        return load_checkpoint(path, device)
    if is_safetensors(path) and not _has_official_tensors(path):
        return load_checkpoint(path, device)  # names the problem (format, corrupt file)
    state = read_official_state_dict(path)
    layout = inspect_official(state, str(path))
    if layout.kind == KIND_DINOV2:
        raise CheckpointError(f'{path} is a DINOv2 hub file: it holds the encoder only (no '
                              'trained global descriptor head or pair classifier), so it cannot '
                              'localize; give a Pair-VPR release or a vpr_ros checkpoint')
    model = model_from_official(state, layout, str(path))
    LOGGER.info('%s is an official Pair-VPR file, converted in memory to %s: %s; convert it '
                'once with `vpr-convert %s` for a faster start', path, layout.architecture,
                layout.describe(), path)
    return model.to(device).eval()


def _has_official_tensors(path: Path) -> bool:
    """Return True when a safetensors file (not ours) names official Pair-VPR/DINOv2 tensors."""
    try:
        with safe_open(str(path), framework='pt') as handle:
            keys = set(handle.keys())
    except (SafetensorError, OSError, ValueError):
        return False
    return any(key.startswith(OFFICIAL_ENCODER) for key in keys) or 'cls_token' in keys
