"""Official Pair-VPR / DINOv2 files -> vpr_ros checkpoints (``vpr-convert``, ``--checkpoint``).

Every official file here is made by the test: tiny random networks under the official key
layout (the layout the golden fixture checks against the official code), saved with
``torch.save`` and read back with ``weights_only=True`` only. Release-sized layouts are
built on the meta device (shapes without data) to check the variant inference.
"""

import csv
import json
import logging
from pathlib import Path

from conftest import official_random_tensor, write_index_list, write_utm_folder
import pytest
from safetensors import safe_open
from safetensors.torch import save_file
import torch

from vpr_ros.cli import vpr_convert, vpr_eval, vpr_localize, vpr_map
from vpr_ros.errors import CheckpointError
from vpr_ros.models.checkpoint import load_checkpoint, save_checkpoint
from vpr_ros.models.conversion import convert_official_file, inspect_official, load_any_checkpoint
from vpr_ros.models.dinov2 import to_official_keys
from vpr_ros.models.loader import load_model
from vpr_ros.models.official_weights import load_official_pairvpr, to_official_state_dict
from vpr_ros.models.registry import create_model

# Heads 64 wide, so the head counts are inferred from the widths.
SIZES = {'encoder_dim': 128, 'encoder_depth': 2, 'decoder_dim': 64, 'decoder_depth': 1,
         'descriptor_dim': 16, 'image_size': 56}
HEADS = {'encoder_heads': 2, 'decoder_heads': 1}
# The Pair-VPR model test's network: 32-wide heads, which no tensor shape shows.
NARROW = {'encoder_dim': 64, 'encoder_depth': 2, 'decoder_dim': 32, 'decoder_depth': 2,
          'descriptor_dim': 16, 'image_size': 56}
NARROW_HEADS = {'encoder_heads': 2, 'decoder_heads': 2}
TOLERANCE = 1e-6


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def official_state(variant: str = 'vitb14', seed: int = 0, sizes: dict = None,
                   heads: dict = None) -> dict:
    """Return a random state dict under the official Pair-VPR names for a tiny network."""
    model = create_model(f'pairvpr_{variant}', **(sizes or SIZES), **(heads or HEADS))
    gen = torch.Generator().manual_seed(seed)
    return {key: official_random_tensor(key, tuple(value.shape), gen)
            for key, value in to_official_state_dict(model).items()}


def dinov2_state(seed: int = 0) -> dict:
    """Return a random DINOv2 hub state dict (no prefix) of a tiny ViT-B-like encoder."""
    encoder = create_model('pairvpr_vitb14', **SIZES, **HEADS).encoder
    gen = torch.Generator().manual_seed(seed)
    return {key: official_random_tensor(key, tuple(value.shape), gen)
            for key, value in to_official_keys(encoder.state_dict(), False).items()}


def release_state(variant: str) -> dict:
    """Return the official layout of a released variant as meta tensors (shapes only)."""
    with torch.device('meta'):
        model = create_model(f'pairvpr_{variant}')
    return to_official_state_dict(model)


@pytest.fixture(scope='module')
def official_file(tmp_path_factory) -> Path:
    """A tiny Pair-VPR release file (.pth, raw state dict as the official stage two saves)."""
    path = tmp_path_factory.mktemp('official') / 'pairvpr-tiny.pth'
    torch.save(official_state(), path)
    return path


def images(count: int = 2, size: int = 56) -> torch.Tensor:
    """Return seeded normal images."""
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(1))


def assert_same_outputs(model, reference) -> None:
    """Global descriptors, tokens and pair scores agree to TOLERANCE."""
    x = images(3, model.spec.input_size[0])
    with torch.no_grad():
        got, want = model.describe(x), reference.describe(x)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=TOLERANCE, rtol=0)
        tokens = want[1]
        torch.testing.assert_close(model.pair_score(tokens, tokens.flip(0)),
                                   reference.pair_score(tokens, tokens.flip(0)),
                                   atol=TOLERANCE, rtol=0)


def metadata(path: Path) -> dict:
    """Return the safetensors metadata of ``path``."""
    with safe_open(str(path), framework='pt') as handle:
        return dict(handle.metadata())


# ---- conversion ---------------------------------------------------------------------------

@pytest.mark.parametrize('variant', ['vitb14', 'vitg14'])
def test_convert_then_load_equals_load_official_pairvpr(variant, tmp_path) -> None:
    source = tmp_path / f'pairvpr-{variant}.pth'
    torch.save(official_state(variant, seed=3), source)
    result = convert_official_file(source)
    assert result.path == tmp_path / f'pairvpr-{variant}.safetensors'
    assert result.layout.variant == variant and not result.layout.release
    assert dict(result.layout.sizes) == {**SIZES, **HEADS}
    loaded = load_checkpoint(result.path)
    reference = load_official_pairvpr(source, variant, **SIZES, **HEADS)
    assert loaded.spec == reference.spec and loaded.spec.digest() == reference.spec.digest()
    assert loaded.spec.architecture == f'pairvpr_{variant}'
    assert loaded.spec.input_size == (56, 56) and loaded.spec.preprocessing == 'official'
    assert loaded.rerank_scoring is None  # no calibration: the documented fallback applies
    assert_same_outputs(loaded, reference)
    info = metadata(result.path)
    assert 'rerank_scoring' not in info
    source_info = json.loads(info['source'])
    assert source_info['kind'] == 'pairvpr_release' and source_info['untrained'] == []
    assert source_info['file'] == source.name and source_info['sha256'] == result.source_sha256
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [source.name, result.path.name])  # no temporary file left behind


def test_non_release_heads_are_given_or_refused(tmp_path) -> None:
    """32-wide heads cannot be seen in the tensors: refused unless given, then exact."""
    source = tmp_path / 'narrow.pth'
    torch.save(official_state(sizes=NARROW, heads=NARROW_HEADS, seed=4), source)
    with pytest.raises(CheckpointError, match='decoder-heads'):
        convert_official_file(source, tmp_path / 'a.safetensors')
    result = convert_official_file(source, tmp_path / 'b.safetensors', **NARROW_HEADS)
    assert result.layout.inferred_heads == ()
    reference = load_official_pairvpr(source, 'vitb14', **NARROW, **NARROW_HEADS)
    assert_same_outputs(load_checkpoint(result.path), reference)


@pytest.mark.parametrize('variant,name', [('vitb14', 'ViT-B/14'), ('vitl14', 'ViT-L/14'),
                                          ('vitg14', 'ViT-G/14')])
def test_release_layouts_give_their_variant(variant, name) -> None:
    state = release_state(variant)
    layout = inspect_official(state, 'release.pth')
    assert (layout.variant, layout.overrides, layout.release) == (variant, (), True)
    assert layout.inferred_heads == ()
    sizes = dict(layout.sizes)
    assert (sizes['image_size'], sizes['descriptor_dim'], sizes['decoder_dim']) == (322, 512, 768)
    assert name in layout.describe()
    assert inspect_official(state, 'x', variant=f'pairvpr_{variant}').variant == variant
    other = 'vitl14' if variant != 'vitl14' else 'vitb14'
    with pytest.raises(CheckpointError, match=f'release.pth holds a Pair-VPR {name}.*{other}'):
        inspect_official(state, 'release.pth', variant=other)


def test_variant_mismatch_of_a_small_file_is_refused(tmp_path) -> None:
    source = tmp_path / 'g.pth'
    torch.save(official_state('vitg14'), source)
    with pytest.raises(CheckpointError, match='SwiGLU.*cannot be vitb14|cannot be vitb14'):
        convert_official_file(source, variant='vitb14')
    assert not (tmp_path / 'g.safetensors').exists()
    assert convert_official_file(source, variant='vitg14').layout.variant == 'vitg14'


def test_official_safetensors_converts_like_the_golden_fixture(tmp_path) -> None:
    state = official_state(seed=5)
    source = tmp_path / 'state_dict.safetensors'
    save_file(state, str(source))
    model = load_any_checkpoint(source)
    assert_same_outputs(model, load_official_pairvpr(source, 'vitb14', **SIZES, **HEADS))


def test_output_is_not_overwritten_without_force(official_file, tmp_path) -> None:
    out = tmp_path / 'out.safetensors'
    out.write_bytes(b'keep me')
    with pytest.raises(CheckpointError, match='exists.*--force'):
        convert_official_file(official_file, out)
    assert out.read_bytes() == b'keep me'
    convert_official_file(official_file, out, overwrite=True)
    assert load_checkpoint(out).spec.architecture == 'pairvpr_vitb14'


def test_dinov2_hub_file_converts_as_a_training_start(tmp_path, caplog) -> None:
    state = dinov2_state()
    source = tmp_path / 'dinov2_vitb14_reg4_pretrain.pth'
    torch.save(state, source)
    result = convert_official_file(source, tmp_path / 'start.safetensors', image_size=56)
    assert result.layout.kind == 'dinov2_hub'
    assert json.loads(metadata(result.path)['source'])['untrained'] == ['globalizer', 'decoder']
    with caplog.at_level(logging.WARNING):
        model = load_checkpoint(result.path)
    assert 'never trained' in caplog.text
    exported = to_official_keys(model.encoder.state_dict(), False)
    assert all(torch.equal(exported[key], state[key]) for key in state)
    with pytest.raises(CheckpointError, match='DINOv2 hub file.*cannot localize'):
        load_any_checkpoint(source)


# ---- bad files ----------------------------------------------------------------------------

def _stage_one(state: dict) -> dict:
    return {k: v for k, v in state.items() if k not in ('decoder_clstoken', 'dec_pos_embed_cls')}


def _without(key: str):
    return lambda state: {k: v for k, v in state.items() if k != key}


BAD_STATES = {
    'random_state_dict': (lambda state: {'fc.weight': torch.ones(4, 4), 'fc.bias': torch.ones(4)},
                          'not a Pair-VPR release or a DINOv2 hub file'),
    'stage_one': (_stage_one, 'stage-one'),
    'missing_tensor': (_without('dec_blocks.0.mlp.fc1.weight'), 'dec_blocks.0.mlp.fc1.weight'),
    'missing_block': (lambda state: {k: v for k, v in state.items()
                                     if not k.startswith('encoder.model.blocks.0.')},
                      'blocks.[0]'),
    'no_globalizer': (lambda state: {k: v for k, v in state.items()
                                     if not k.startswith('globalizer')}, 'globalizer.0.weight'),
    'dinov2_without_registers': (lambda state: _without('register_tokens')(dinov2_state()),
                                 'without register tokens'),
    'not_a_dict': (lambda state: [torch.ones(3)], 'holds no state dict'),
}


@pytest.mark.parametrize('case', sorted(BAD_STATES))
def test_bad_official_contents_are_refused(case, tmp_path) -> None:
    edit, words = BAD_STATES[case]
    source = tmp_path / f'{case}.pth'
    torch.save(edit(official_state()), source)
    with pytest.raises(CheckpointError) as info:
        convert_official_file(source, tmp_path / 'out.safetensors')
    assert str(source) in str(info.value) and words in str(info.value)
    with pytest.raises(CheckpointError):
        load_any_checkpoint(source)
    assert sorted(p.name for p in tmp_path.iterdir()) == [source.name]


def _truncated(official_file: Path) -> bytes:
    data = official_file.read_bytes()
    return data[:len(data) // 2]


BAD_FILES = {
    'text.pth': (lambda official: b'this is not a checkpoint\n', 'weights_only=True'),
    'empty.pth': (lambda official: b'', 'empty'),
    'truncated.pth': (_truncated, 'truncated'),
    'half.safetensors': (lambda official: b'\x10\x00\x00\x00\x00\x00\x00\x00{"a":', ''),
}


@pytest.mark.parametrize('name', sorted(BAD_FILES))
def test_unreadable_files_are_refused(name, official_file, tmp_path, capsys) -> None:
    content, words = BAD_FILES[name]
    source = tmp_path / name
    source.write_bytes(content(official_file))
    for load in (lambda: convert_official_file(source, tmp_path / 'out.safetensors'),
                 lambda: load_any_checkpoint(source)):
        with pytest.raises(CheckpointError) as info:
            load()
        assert str(source) in str(info.value) and words in str(info.value)
    assert vpr_convert.main([str(source), '--out', str(tmp_path / 'out.safetensors')]) == 1
    assert f'error: {source}' in capsys.readouterr().err
    assert not (tmp_path / 'out.safetensors').exists()


def test_missing_file_and_our_own_checkpoint(official_file, tmp_path) -> None:
    with pytest.raises(CheckpointError, match='not found'):
        convert_official_file(tmp_path / 'nope.pth')
    ours = save_checkpoint(load_official_pairvpr(official_file, 'vitb14', **SIZES, **HEADS),
                           tmp_path / 'ours.safetensors')
    with pytest.raises(CheckpointError, match='already a vpr_ros checkpoint'):
        convert_official_file(ours, tmp_path / 'again.safetensors')
    assert load_any_checkpoint(ours).spec.architecture == 'pairvpr_vitb14'


# ---- command-line tools -------------------------------------------------------------------

def test_vpr_convert_command(official_file, tmp_path, capsys) -> None:
    out = tmp_path / 'tiny.safetensors'
    assert vpr_convert.main([str(official_file), '--out', str(out), '--variant', 'vitb14']) == 0
    printed = capsys.readouterr().out
    assert 'ViT-B/14' in printed and str(out) in printed and 'vpr-calibrate' in printed
    assert vpr_convert.main([str(official_file), '--out', str(out)]) == 1  # exists
    assert '--force' in capsys.readouterr().err
    assert vpr_convert.main([str(official_file), '--out', str(out), '--force']) == 0
    assert vpr_convert.main([str(official_file), '--out', str(tmp_path / 'x.safetensors'),
                             '--variant', 'vitg14']) == 1
    assert 'cannot be vitg14' in capsys.readouterr().err


def test_load_model_converts_in_memory_with_one_info_line(official_file, caplog) -> None:
    with caplog.at_level(logging.INFO, logger='vpr_ros'):
        model = load_model(str(official_file))
    lines = [r for r in caplog.records if r.name == 'vpr_ros.models.conversion']
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert 'converted in memory' in lines[0].getMessage()
    assert 'vpr-convert' in lines[0].getMessage()
    assert_same_outputs(model, load_official_pairvpr(official_file, 'vitb14', **SIZES, **HEADS))


@pytest.fixture(scope='module')
def folder(tmp_path_factory) -> Path:
    """Four images named with UTM coordinates 10 m apart."""
    return write_utm_folder(tmp_path_factory.mktemp('images'), 4)


FAST = ['--backend', 'torch', '--device', 'cpu']


def test_map_localize_eval_accept_the_official_file(official_file, folder, tmp_path) -> None:
    """vpr-map, vpr-localize and vpr-eval take the .pth; its map serves the converted file."""
    map_dir = tmp_path / 'map'
    assert vpr_map.main(['build', str(folder), '--out', str(map_dir),
                         '--checkpoint', str(official_file)] + FAST) == 0
    converted = convert_official_file(official_file, tmp_path / 'tiny.safetensors').path
    results = []
    for checkpoint in (official_file, converted):
        out = tmp_path / f'{Path(checkpoint).suffix[1:]}.csv'
        assert vpr_localize.main([str(folder), '--map', str(map_dir), '--out', str(out),
                                  '--checkpoint', str(checkpoint), '--candidates', '2']
                                 + FAST) == 0
        rows = list(csv.DictReader(out.open()))
        assert len(rows) == 8 and all(r['pair_score'] not in ('', 'nan') for r in rows)
        results.append([(r['map_id'], r['global_similarity'], r['pair_score']) for r in rows])
    assert results[0] == results[1]  # the in-memory conversion is the converted file
    dataset = write_index_list(tmp_path / 'dataset', 3)
    assert vpr_eval.main(['--dataset-format', 'index-list', '--dataset', str(dataset),
                          '--out', str(tmp_path / 'report'), '--checkpoint', str(official_file),
                          '--top-k', '3'] + FAST) == 0
    report = json.loads((tmp_path / 'report' / 'metrics.json').read_text())
    assert report['settings']['model'] == 'pairvpr_vitb14'


DOC = Path(__file__).resolve().parents[1] / 'docs' / 'published_models.md'


def doc_commands(names: tuple) -> list[list[str]]:
    """Return the shell commands of docs/published_models.md that start with ``names``."""
    import re
    import shlex
    commands = []
    for block in re.findall(r'```bash\n(.*?)```', DOC.read_text(), flags=re.S):
        text = re.sub(r'\\\n\s*', ' ', block)
        for line in text.splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] in names:
                commands.append(words)
    return commands


def test_published_models_doc_commands_run(official_file, folder, tmp_path) -> None:
    """The convert, map and calibrate commands of the docs page run as written.

    Only the files are the test's own (the tiny official-layout file, a small image folder and
    validation set) and the GPU options become their CPU equivalents.
    """
    from vpr_ros.cli import vpr_calibrate
    validation = write_index_list(tmp_path / 'my_validation', 3)
    files = {'pairvpr-vitB.pth': str(official_file), 'path/to/mapping_run': str(folder),
             'my_validation': str(validation), 'cuda': 'cpu', 'fp16': 'fp32'}
    tools = {'vpr-convert': vpr_convert.main, 'vpr-map': vpr_map.main,
             'vpr-calibrate': vpr_calibrate.main}
    commands = doc_commands(tuple(tools))
    assert [c[0] for c in commands] == ['vpr-convert', 'vpr-map', 'vpr-calibrate']
    for words in commands:
        args = [files.get(w, str(tmp_path / w) if w.startswith(('models/', 'maps/')) else w)
                for w in words[1:]]
        if words[0] == 'vpr-calibrate':
            args = [a if a != '20' else '3' for a in args]
        assert tools[words[0]](args) == 0, words
    assert (tmp_path / 'models' / 'pairvpr_vitb14_calibrated.safetensors').is_file()
    assert (tmp_path / 'maps' / 'site_vitb' / 'manifest.json').is_file()
