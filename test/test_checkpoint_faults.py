"""Checkpoint faults: truncated, bit-flipped, forged and foreign files raise CheckpointError.

Files are real safetensors checkpoints of a randomly initialised ``efficientnet_lite0_gem``
(13 MB), damaged byte by byte or rebuilt by hand (8-byte header length, JSON header, data) the
way a careful forger would, with the tensor sha256 recomputed. Official ``.pth`` files are
only ever read with ``torch.load(weights_only=True)``: a file whose pickle would run code is
refused and the code does not run.
"""

import json
from pathlib import Path
import struct
import zipfile

import numpy as np
import pytest
from safetensors.torch import load_file, save_file
import torch

from vpr_ros.errors import CheckpointError
from vpr_ros.models.checkpoint import (checkpoint_digest, load_checkpoint, read_checkpoint_spec,
                                       save_checkpoint, tensor_digest)
from vpr_ros.models.official_weights import read_official_state_dict
from vpr_ros.models.registry import create_model

ARCH = 'efficientnet_lite0_gem'


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope='module')
def original(tmp_path_factory) -> Path:
    """Return a saved checkpoint of a randomly initialised model."""
    torch.manual_seed(0)
    model = create_model(ARCH, pretrained=False)
    return save_checkpoint(model, tmp_path_factory.mktemp('ckpt') / 'model.safetensors')


def split(path: Path) -> tuple[dict, bytes]:
    """Return the JSON header and the data bytes of a safetensors file."""
    data = path.read_bytes()
    length = struct.unpack('<Q', data[:8])[0]
    return json.loads(data[8:8 + length]), data[8 + length:]


def join(header: object, data: bytes, length: int = -1) -> bytes:
    """Return a safetensors file from a header (dict or raw bytes) and data bytes."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack('<Q', len(raw) if length < 0 else length) + raw + data


def refused(path: Path, *words: str) -> str:
    """Loading ``path`` must raise CheckpointError naming it (and ``words``); return the text."""
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message
    return message


def test_truncated_checkpoint_is_refused(original: Path, tmp_path: Path) -> None:
    """Cut inside the length, the header and the data (12 points): CheckpointError each."""
    data = original.read_bytes()
    header_end = 8 + struct.unpack('<Q', data[:8])[0]
    cuts = {0, 4, 8, 9, header_end // 2, header_end - 1, header_end, len(data) - 1,
            *np.linspace(header_end, len(data) - 1, 4).astype(int)}
    path = tmp_path / 'cut.safetensors'
    for cut in sorted(cuts):
        path.write_bytes(data[:cut])
        refused(path)


def test_bit_flips_are_refused(original: Path, tmp_path: Path) -> None:
    """One flipped bit at 48 header offsets and 16 data offsets: CheckpointError each."""
    data = original.read_bytes()
    header_end = 8 + struct.unpack('<Q', data[:8])[0]
    offsets = [*np.linspace(0, header_end - 1, 48).astype(int),
               *np.linspace(header_end, len(data) - 1, 16).astype(int)]
    path = tmp_path / 'flipped.safetensors'
    for offset in offsets:
        flipped = bytearray(data)
        flipped[offset] ^= 1 << (offset % 8)
        path.write_bytes(bytes(flipped))
        refused(path)


def test_version_one_files_still_load(original: Path, tmp_path: Path) -> None:
    """A version-1 file (digest over the tensors only) loads; with a v2 digest it is refused."""
    header, _ = split(original)
    state = load_file(str(original))
    metadata = dict(header['__metadata__'], version='1')
    metadata['sha256'] = tensor_digest(state)
    path = tmp_path / 'v1.safetensors'
    save_file(state, str(path), metadata=metadata)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded.state_dict()['pool.p'], state['pool.p'])
    metadata['sha256'] = checkpoint_digest(state, metadata)
    save_file(state, str(path), metadata=metadata)
    refused(path, 'does not match the stored sha256')


def test_flipped_spec_option_is_refused(original: Path, tmp_path: Path) -> None:
    """A bit flip that turns ``gem_p`` 3.0 into 2.0 in the stored spec must be refused."""
    data = original.read_bytes()
    at = data.index(b'gem_p\\": 3.0') + len(b'gem_p\\": ')
    path = tmp_path / 'gem.safetensors'
    path.write_bytes(data[:at] + b'2' + data[at + 1:])
    refused(path)


@pytest.mark.parametrize('length, words', [(2 ** 63, []), (0, []), (10 ** 9, [])])
def test_forged_header_length_is_refused(original: Path, tmp_path: Path, length: int,
                                         words: list) -> None:
    """A header length that is huge, zero or beyond the file is refused before any allocation."""
    header, data = split(original)
    path = tmp_path / 'length.safetensors'
    path.write_bytes(join(header, data, length))
    refused(path, 'not a readable safetensors file')


def forged(original: Path, tmp_path: Path, edit) -> Path:
    """Write ``original`` with ``edit(header)`` applied to its parsed header."""
    header, data = split(original)
    edit(header)
    path = tmp_path / 'forged.safetensors'
    path.write_bytes(join(header, data))
    return path


def first_tensor(header: dict) -> dict:
    """Return the header record of the first tensor."""
    return header[next(k for k in header if k != '__metadata__')]


@pytest.mark.parametrize('edit, words', [
    (lambda h: first_tensor(h).update(data_offsets=[0, 2 ** 62]), []),
    (lambda h: first_tensor(h).update(shape=[2 ** 40, 2 ** 40]), []),
    (lambda h: first_tensor(h).update(dtype='F99'), []),
    (lambda h: h['__metadata__'].update(format=5), []),
    (lambda h: h.update(__metadata__=['not', 'a', 'map']), []),
])
def test_forged_tensor_table_is_refused(original: Path, tmp_path: Path, edit,
                                        words: list) -> None:
    """Offsets beyond the data, huge shapes, unknown dtypes, non-string metadata: refused."""
    refused(forged(original, tmp_path, edit), 'not a readable safetensors file', *words)


@pytest.mark.parametrize('edit, words', [
    (lambda m: m.update(spec='{not json'), ['model spec is not valid JSON']),
    (lambda m: m.update(spec='[1, 2]'), ['model spec must be a JSON object']),
    (lambda m: m.update(spec=m['spec'].replace('"input_size": [240, 320]',
                                               '"input_size": [1e400, 320]')),
     ['malformed model spec', 'OverflowError']),
    (lambda m: m.update(spec=m['spec'].replace('"descriptor_dim": 1280', '"descriptor_dim": 7')),
     ['descriptor_dim']),
    (lambda m: m.update(spec='[' * 100000 + ']' * 100000), ['model spec']),
    (lambda m: m.update(spec=m['spec'].replace(ARCH, 'pairvpr_lite')),
     ['does not match the rebuilt model']),
    (lambda m: m.update(spec=m['spec'].replace(ARCH, 'no_such_model')), ['no_such_model']),
    (lambda m: m.update(format='other'), ['not a vpr_ros checkpoint']),
    (lambda m: m.update(version='3'), ["version '3' is not supported"]),
    (lambda m: m.pop('sha256'), ['does not match the stored sha256']),
    (lambda m: m.update(sha256='0' * 64), ['does not match the stored sha256']),
    (lambda m: m.update(rerank_scoring='{"fusion": '), ['rerank_scoring']),
    (lambda m: m.update(base_weights='imagenet_of_mars'), ['imagenet_of_mars']),
])
def test_forged_metadata_is_refused(original: Path, tmp_path: Path, edit, words: list) -> None:
    """Metadata that is not JSON, names another model, format or version, or lies: refused."""
    refused(forged(original, tmp_path, lambda h: edit(h['__metadata__'])), *words)


def rewrite(original: Path, tmp_path: Path, change) -> Path:
    """Save ``change(tensors)`` with the original metadata and a recomputed sha256."""
    header, _ = split(original)
    state = change(load_file(str(original)))
    metadata = dict(header['__metadata__'])
    metadata['sha256'] = checkpoint_digest(state, metadata)
    path = tmp_path / 'rewritten.safetensors'
    save_file(state, str(path), metadata=metadata)
    return path


def test_wrong_dtype_is_refused(original: Path, tmp_path: Path) -> None:
    """float64 tensors under a matching sha256 are refused (not silently cast)."""
    path = rewrite(original, tmp_path,
                   lambda s: {k: v.double() if v.is_floating_point() else v for k, v in s.items()})
    refused(path, 'dtype', 'float64', 'float32')


def test_wrong_shape_is_refused(original: Path, tmp_path: Path) -> None:
    """A tensor reshaped (same element count) under a matching sha256 is refused by name."""
    def reshape(state: dict) -> dict:
        key = next(k for k, v in state.items() if v.dim() == 4)
        return dict(state, **{key: state[key].reshape(-1)})
    refused(rewrite(original, tmp_path, reshape), 'shape mismatches')


def test_tensors_of_another_model_are_refused(original: Path, tmp_path: Path) -> None:
    """Weights of another network under this spec: missing and unexpected keys are named."""
    other = create_model('pairvpr_lite', pretrained=False, input_size=(64, 96), token_dim=32,
                         decoder_dim=32, decoder_depth=1, decoder_heads=2)
    path = rewrite(original, tmp_path, lambda _: {k: v.contiguous()
                                                  for k, v in other.state_dict().items()})
    refused(path, 'does not match the model', 'unexpected keys')


def test_spec_reader_refuses_non_checkpoints(tmp_path: Path) -> None:
    """read_checkpoint_spec on random bytes, an empty file or a folder: CheckpointError."""
    for name, content in (('random.safetensors', np.random.default_rng(0).bytes(4096)),
                          ('empty.safetensors', b'')):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=name):
            read_checkpoint_spec(tmp_path / name)
    with pytest.raises(CheckpointError, match='not found'):
        read_checkpoint_spec(tmp_path)


def code_running_pickle(marker: Path) -> bytes:
    """Return protocol-0 pickle bytes that call os.system('touch MARKER') when unpickled."""
    return b'cos\nsystem\n(V' + f'touch {marker}'.encode() + b'\ntR.'


@pytest.mark.parametrize('container', ['raw', 'zip'])
def test_official_file_that_runs_code_is_refused(tmp_path: Path, container: str) -> None:
    """A .pth whose pickle calls os.system is refused by weights_only; the command never runs."""
    marker = tmp_path / 'pwned'
    payload = code_running_pickle(marker)
    path = tmp_path / 'evil.pth'
    if container == 'raw':
        path.write_bytes(payload)
    else:
        with zipfile.ZipFile(path, 'w') as archive:
            archive.writestr('evil/data.pkl', payload)
            archive.writestr('evil/byteorder', 'little')
            archive.writestr('evil/version', '3\n')
    with pytest.raises(CheckpointError, match='weights_only=True'):
        read_official_state_dict(path)
    assert not marker.exists()


def test_truncated_official_file_is_refused(tmp_path: Path) -> None:
    """A torch.save file cut in half raises CheckpointError naming it."""
    path = tmp_path / 'official.pth'
    torch.save({'w': torch.ones(64, 64)}, path)
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match='official.pth'):
        read_official_state_dict(path)
