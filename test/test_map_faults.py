"""Map store faults: saves killed at every step, full or read-only disks, corrupt and forged maps.

Kills, file size limits, full tmpfs and read-only mounts are real OS mechanisms applied to a
subprocess (``test/map_fault_worker.py``); a mechanism the machine does not offer is skipped with
the reason. The reference for "intact" is the map rebuilt from the same seed in this process.
Forged maps have their checksums recomputed (a careful forger), so that the structural checks,
not the sha256, must catch them; the riskiest ones are loaded in a subprocess, so that a crash
inside faiss fails the test instead of killing pytest.
"""

import hashlib
import json
import os
from pathlib import Path
import re
import shutil
import signal
import struct
import subprocess
import sys
import time

import faiss
from map_fault_worker import build_map, NEW_N, OLD_N, SPEC
import numpy as np
import pytest

from vpr_ros.config import IndexConfig
from vpr_ros.errors import MapError, MapFormatError, MapMismatchError, MapWriteError
from vpr_ros.map.database import MapDatabase
from vpr_ros.models.spec import ModelSpec

WORKER = Path(__file__).with_name('map_fault_worker.py')
DATA_FILES = ['index.faiss', 'entries.jsonl', 'descriptors.npy', 'tokens.f16']
ROOTLESS = os.geteuid() != 0


pytestmark = pytest.mark.usefixtures('single_faiss_thread')


@pytest.fixture(scope='module')
def references() -> dict:
    """Return the old and new maps of the worker, rebuilt here from the same seeds."""
    return {'old': build_map(OLD_N, 0), 'new': build_map(NEW_N, 1)}


def run_worker(*args: str, prefix: tuple = (), timeout: float = 120) -> dict:
    """Run the worker; fail on a crash; return its last JSON line."""
    proc = subprocess.run([*prefix, sys.executable, str(WORKER), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=WORKER.parent.parent)
    assert proc.returncode == 0, f'worker {args} exited {proc.returncode}:\n{proc.stderr}'
    return json.loads(proc.stdout.strip().splitlines()[-1])


def which_map(path: Path, references: dict) -> str:
    """Load ``path`` and return 'old' or 'new' after checking it equals that reference exactly."""
    loaded = MapDatabase.load(path)
    for name, ref in references.items():
        if len(loaded) == len(ref):
            np.testing.assert_array_equal(loaded.descriptors, ref.descriptors)
            assert loaded.entries == ref.entries
            np.testing.assert_array_equal(loaded.tokens(range(len(ref))),
                                          ref.tokens(range(len(ref))))
            return name
    raise AssertionError(f'{path} holds {len(loaded)} entries: neither map')


def disk_state(folder: Path) -> tuple:
    """Return the folder listing (pid/uuid tags removed) with the files and sizes in each dir."""
    state = []
    for item in sorted(folder.iterdir()):
        name = re.sub(r'-\d+-[0-9a-f]{12}$', '', item.name)
        state.append((name, tuple(sorted((f.name, f.stat().st_size) for f in item.iterdir()))))
    return tuple(state)


def siblings(root: Path) -> list[str]:
    """Return the names in ``root``'s parent directory."""
    return sorted(p.name for p in root.parent.iterdir())


def check_next_save(root: Path) -> None:
    """Extend the map at ``root`` and save it again: no temporary directory may remain."""
    db = MapDatabase.load(root)
    n = len(db)
    extra = build_map(3, 7)
    db.add(extra.descriptors, extra.entries, extra.tokens(range(3)))
    db.save(root)
    assert siblings(root) == ['map']
    assert len(MapDatabase.load(root)) == n + 3


# ---- processes killed in the middle of a save ------------------------------------------------

@pytest.mark.parametrize('mode, commit', [('exchange', 'exchange'), ('rename', 'rename')])
def test_killed_save_leaves_old_or_new_map(tmp_path: Path, references: dict, mode: str,
                                           commit: str) -> None:
    """SIGKILL before each file-system step: the old map loads until the commit, then the new.

    ``exchange`` is the atomic directory exchange; ``rename`` the fallback of two renames, whose
    window without a map is repaired by the next load (the map left aside is renamed back).
    """
    result = run_worker('crash', str(tmp_path), mode)
    commit_step = max(i + 1 for i, label in enumerate(result['labels']) if label == commit)
    runs = result['runs']
    assert len(runs) >= 10 and all(r['killed'] for r in runs[:-1]) and not runs[-1]['killed']
    states = set()
    for run in runs:
        folder = Path(run['dir'])
        states.add(disk_state(folder))
        if mode == 'exchange':
            assert (folder / 'map' / 'manifest.json').is_file(), run
        want = 'old' if run['step'] <= commit_step else 'new'
        assert which_map(folder / 'map', references) == want, run
        check_next_save(folder / 'map')
    names = {tuple((d, tuple(f for f, _ in files)) for d, files in s) for s in states}
    assert len(states) >= 10 and len(names) >= 5, sorted(states)


def test_kill_after_random_delays(tmp_path: Path, references: dict) -> None:
    """A process saving in a loop, killed after 6 delays: the map always loads whole."""
    root = tmp_path / 'map'
    seen = set()
    for delay in (0.0, 0.013, 0.031, 0.057, 0.089, 0.151):
        proc = subprocess.Popen([sys.executable, str(WORKER), 'save-loop', str(root)],
                                stdout=subprocess.PIPE, text=True, cwd=WORKER.parent.parent)
        assert proc.stdout.readline().strip() == 'ready'
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        proc.stdout.close()
        seen.add(which_map(root, references))
        check_next_save(root)
        shutil.rmtree(root)
    assert seen <= {'old', 'new'}


# ---- full disks and read-only directories ------------------------------------------------------

@pytest.mark.parametrize('limit', [1000, 30000])
def test_file_size_limit_gives_clear_error(tmp_path: Path, references: dict, limit: int) -> None:
    """RLIMIT_FSIZE makes a write fail (EFBIG): MapWriteError names the map and the cause."""
    root = references['old'].save(tmp_path / 'map')
    result = run_worker('save', str(root), str(NEW_N), '1', str(limit))
    assert result['error'] == 'MapWriteError' and 'OSError' in result['bases']
    assert str(root) in result['message'] and 'file size limit' in result['message']
    assert which_map(root, references) == 'old'
    assert siblings(root) == ['map']
    check_next_save(root)


def mount_prefix(script: str) -> tuple:
    """Return a command prefix that runs ``script`` (mounts) in a private mount namespace.

    The script is tried first with ``true`` as the command; skip with the reason if the machine
    does not allow it (no ``unshare``, no user namespaces, mounts forbidden).
    """
    prefix = ('unshare', '-m') if not ROOTLESS else ('unshare', '-Urm')
    command = (*prefix, 'sh', '-c', f'{script} && exec "$@"', 'sh')
    try:
        proc = subprocess.run([*command, 'true'], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f'cannot mount in a private namespace here ({exc})')
    if proc.returncode:
        pytest.skip(f'cannot mount in a private namespace here: {proc.stderr.strip()}')
    return command


def test_full_disk_gives_clear_error(tmp_path: Path) -> None:
    """On a 256 KiB tmpfs a second, larger save fails with ENOSPC; the first map survives."""
    disk = tmp_path / 'disk'
    disk.mkdir()
    prefix = mount_prefix(f'mount -t tmpfs -o size=256k tmpfs {disk}')
    result = run_worker('save-twice', str(disk / 'map'), str(OLD_N), '4000', prefix=prefix)
    assert result['error'] == 'MapWriteError' and 'the disk is full' in result['message']
    assert str(disk / 'map') in result['message']
    assert result['old_intact'] and result['siblings'] == ['map']


def make_read_only(folder: Path, how: str) -> tuple:
    """Make ``folder`` read-only for a save (chmod, or a read-only bind mount); return a prefix."""
    if how == 'chmod':
        folder.chmod(0o555)
        try:
            (folder / 'probe').mkdir()
        except PermissionError:
            return ()
        (folder / 'probe').rmdir()
        folder.chmod(0o755)
        pytest.skip('running as root: chmod 555 does not stop writes (CAP_DAC_OVERRIDE)')
    return mount_prefix(f'mount --bind {folder} {folder} && mount -o remount,bind,ro {folder}')


@pytest.mark.parametrize('how, cause', [('chmod', 'permission denied'),
                                        ('ro_mount', 'the file system is read-only')])
def test_read_only_directory_gives_clear_error(tmp_path: Path, references: dict, how: str,
                                               cause: str) -> None:
    """A save into a read-only directory raises MapWriteError naming it; the old map loads."""
    folder = tmp_path / 'maps'
    root = references['old'].save(folder / 'map')
    prefix = make_read_only(folder, how)
    try:
        result = run_worker('save', str(root), str(NEW_N), '1', prefix=prefix)
    finally:
        folder.chmod(0o755)
    assert result['error'] == 'MapWriteError', result
    assert str(root) in result['message'] and cause in result['message']
    assert which_map(root, references) == 'old' and siblings(root) == ['map']


# ---- truncated, bit-flipped and forged files ---------------------------------------------------

@pytest.fixture
def saved(tmp_path: Path, references: dict) -> Path:
    """Return a saved copy of the old map (24 entries with tokens, flat index)."""
    return references['old'].save(tmp_path / 'map')


def assert_refused(root: Path, name: str, error: type = MapFormatError) -> str:
    """Loading must raise ``error`` whose message names ``name`` in ``root``; return it."""
    with pytest.raises(error) as info:
        MapDatabase.load(root)
    assert str(root / name) in str(info.value) or (name == '' and str(root) in str(info.value))
    return str(info.value)


@pytest.mark.parametrize('name', DATA_FILES + ['manifest.json'])
def test_truncation_at_many_offsets(saved: Path, name: str) -> None:
    """Every file cut at 12 points (from empty to one byte short) is refused, naming it.

    The manifest's final newline is not part of the JSON, so its cuts end before it.
    """
    data = (saved / name).read_bytes()
    size = len(data.rstrip(b'\n'))
    for cut in sorted({0, 1, size - 1, *np.linspace(0, size - 1, 9).astype(int)}):
        (saved / name).write_bytes(data[:cut])
        message = assert_refused(saved, name)
        assert re.search('truncated|not valid JSON', message), message


@pytest.mark.parametrize('name', DATA_FILES)
def test_bit_flips_at_many_offsets(saved: Path, name: str) -> None:
    """One flipped bit at 16 offsets of a data file fails its sha256, naming the file."""
    data = (saved / name).read_bytes()
    for offset in np.linspace(0, len(data) - 1, 16).astype(int):
        flipped = bytearray(data)
        flipped[offset] ^= 1 << (offset % 8)
        (saved / name).write_bytes(bytes(flipped))
        assert 'is corrupt or modified' in assert_refused(saved, name)
    (saved / name).write_bytes(data)
    assert len(MapDatabase.load(saved)) == OLD_N


def test_manifest_bit_flips(saved: Path, references: dict) -> None:
    """A flipped manifest bit is refused naming the map, or changes nothing that matters."""
    data = (saved / 'manifest.json').read_bytes()
    refused = 0
    for offset in range(0, len(data), 7):
        flipped = bytearray(data)
        flipped[offset] ^= 1 << (offset % 8)
        (saved / 'manifest.json').write_bytes(bytes(flipped))
        try:
            assert which_map(saved, references) == 'old'
        except MapError as exc:
            assert str(saved) in str(exc)
            refused += 1
    assert refused > len(data) // 7 * 0.8


def read_manifest(root: Path) -> dict:
    """Return the parsed manifest."""
    return json.loads((root / 'manifest.json').read_text())


def forge(root: Path, name: str, data: bytes) -> None:
    """Replace file ``name`` and record its new size and sha256 in the manifest."""
    (root / name).write_bytes(data)
    manifest = read_manifest(root)
    manifest['files'][name] = {'sha256': hashlib.sha256(data).hexdigest(), 'bytes': len(data)}
    write_manifest(root, manifest)


def write_manifest(root: Path, manifest: dict) -> None:
    """Write ``manifest`` back."""
    (root / 'manifest.json').write_text(json.dumps(manifest))


OTHER_SPEC = ModelSpec('toy_other_vpr', (32, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 24)


@pytest.mark.parametrize('edit, words', [
    (lambda m: m.update(descriptor_dim=24), ['descriptor_dim 24', 'inconsistent']),
    (lambda m: m.update(count=OLD_N + 1), ['tokens.f16 recorded as']),
    (lambda m: m.update(count=-1), ['count -1']),
    (lambda m: m.update(count=True), ["field 'count' must be int"]),
    (lambda m: m['files']['index.faiss'].update(sha256='0' * 64), ['index.faiss is corrupt']),
    (lambda m: m['files']['entries.jsonl'].update(bytes='12'), ['bad record for entries.jsonl']),
    (lambda m: m['files']['entries.jsonl'].update(bytes=-5), ['bad record for entries.jsonl']),
    (lambda m: m['files'].pop('tokens.f16'), ['lists files']),
    (lambda m: m['index'].update(type='ivfpq'), ["index type 'ivfpq' is not valid"]),
    (lambda m: m['index']['config'].update(kind='hnsw'), ["index type 'flat' is not valid"]),
    (lambda m: m['index']['config'].update(pq_m=7, kind='ivfpq'), ['pq_m=7']),
    (lambda m: m.update(spec_digest='0123456789abcdef'), ['does not match the recorded']),
    (lambda m: m['model_spec'].update(descriptor_dim=10), ['spec_digest']),
    (lambda m: m['model_spec'].update(input_size=[1e400, 32]), ['bad model_spec']),
    (lambda m: m.update(model_spec=json.loads(OTHER_SPEC.to_json()),
                        spec_digest=OTHER_SPEC.digest()), ['descriptor_dim 16', '24']),
    (lambda m: m.update(token_shape=[4, 9]), ['token_shape [4, 9] differs']),
])
def test_forged_manifest_is_refused(saved: Path, edit, words: list) -> None:
    """Manifest fields that lie about dims, counts, hashes, kinds or the model are named."""
    manifest = read_manifest(saved)
    edit(manifest)
    write_manifest(saved, manifest)
    with pytest.raises(MapFormatError) as info:
        MapDatabase.load(saved)
    for word in words:
        assert word in str(info.value)


def test_map_of_another_model_is_a_mismatch(saved: Path) -> None:
    """A map built by a model whose spec differs in one option is refused by digest."""
    other = ModelSpec(**{**SPEC.__dict__, 'options': (('gem_p', 3.5),)})
    with pytest.raises(MapMismatchError) as info:
        MapDatabase.load(saved, expected_spec=other)
    assert str(saved) in str(info.value) and 'options' in str(info.value)


def npy_bytes(shape: tuple, descr: str = '<f4', fortran: bool = False, data: bytes = b'',
              text: str = '') -> bytes:
    """Return a ``.npy`` file whose header (``text``, or one declaring ``shape`` and ``descr``)."""
    header = (text or repr({'descr': descr, 'fortran_order': fortran, 'shape': shape})).encode()
    header += b' ' * (-(len(header) + 11) % 64) + b'\n'
    return b'\x93NUMPY\x01\x00' + struct.pack('<H', len(header)) + header + data


@pytest.mark.parametrize('forgery, words', [
    (lambda d: npy_bytes((10 ** 12, 16), data=d), ['[1000000000000, 16]', 'expected float32']),
    (lambda d: npy_bytes((OLD_N, 16), '<f8', data=d), ['float64']),
    (lambda d: npy_bytes((OLD_N, 16), fortran=True, data=d), ['Fortran']),
    (lambda d: npy_bytes((OLD_N, 16), data=d[:-4]), ['data bytes', 'header declares']),
    (lambda d: npy_bytes((OLD_N, 16), "{'a': 1}", data=d), ['not a valid .npy']),
    (lambda d: b'\x93NUMPY\x03\x00' + d, ['not a valid .npy']),
    (lambda d: npy_bytes((), text="{'descr': '<f4', 'shape': ((24, 16), }", data=d),
     ['not a valid .npy', 'EOF']),
    (lambda d: npy_bytes((OLD_N, 16), data=np.zeros(OLD_N * 16, '<f4').tobytes()),
     ['non-normalised']),
])
def test_forged_descriptor_header_is_refused(saved: Path, forgery, words: list) -> None:
    """A ``.npy`` header that lies about shape, dtype, order or size is refused before reading."""
    data = np.load(saved / 'descriptors.npy').tobytes()
    forge(saved, 'descriptors.npy', forgery(data))
    message = assert_refused(saved, 'descriptors.npy')
    for word in words:
        assert word in message


@pytest.mark.parametrize('line', ['[' * 100000 + ']' * 100000,
                                  '{"id": 0, "stamp_ns": 0, "source": "", "gps": [1e999, 0]}',
                                  '{"id": 0, "stamp_ns": 1e999, "source": ""}', '\udcff'])
def test_forged_entries_are_refused(saved: Path, line: str) -> None:
    """Deeply nested, overflowing or undecodable entry lines raise MapFormatError, line 1."""
    forge(saved, 'entries.jsonl', (line + '\n').encode('utf-8', 'surrogateescape'))
    assert 'line 1' in assert_refused(saved, 'entries.jsonl')


@pytest.mark.parametrize('text', ['[' * 100000, '{"a": "' + 'x' * (2 << 20) + '"}'])
def test_hostile_manifest_is_refused(saved: Path, text: str) -> None:
    """A deeply nested or oversized manifest is refused without a RecursionError or huge read."""
    (saved / 'manifest.json').write_text(text)
    assert_refused(saved, 'manifest.json')


# ---- faiss index files whose header or structure lies ----------------------------------------

def index_bytes(db: MapDatabase) -> bytes:
    """Return the serialized CPU index of ``db`` (what ``save`` writes to index.faiss)."""
    return faiss.serialize_index(db._cpu_index()).tobytes()


def patch(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    """Return ``data`` with a little-endian ``fmt`` value written at ``offset``."""
    out = bytearray(data)
    struct.pack_into('<' + fmt, out, offset, value)
    return bytes(out)


FLAT_FORGERIES = {
    'dimension': lambda d: patch(d, 4, 'i', 8),
    'ntotal': lambda d: patch(d, 8, 'q', 10 ** 6),
    'vector_count_huge': lambda d: patch(d, 37, 'Q', 2 ** 60),
    'vector_count_short': lambda d: patch(d, 37, 'Q', 16),
    'metric_l2': lambda d: patch(d, 33, 'i', 1),
    'type_tag_l2': lambda d: b'IxF2' + d[4:],
    'type_tag_unknown': lambda d: b'ZZZZ' + d[4:],
    'trailing_bytes': lambda d: d + b'\0' * 8,
    'truncated': lambda d: d[:-5],
    'empty': lambda d: b'',
}


def hnsw_forgeries(data: bytes, count: int) -> dict:
    """Return HNSW index files whose graph points outside its arrays."""
    probas = struct.unpack_from('<Q', data, 37)[0]
    cum_at = 45 + 8 * probas
    levels_at = cum_at + 8 + 4 * struct.unpack_from('<Q', data, cum_at)[0]
    offsets_at = levels_at + 8 + 4 * count
    neighbours_at = offsets_at + 8 + 8 * (count + 1)
    return {
        'levels_count': patch(data, levels_at, 'Q', 2 ** 40),
        'level_out_of_range': patch(data, levels_at + 8, 'i', 99),
        'offset_lies': patch(data, offsets_at + 16, 'Q', 2 ** 50),
        'neighbour_out_of_range': patch(data, neighbours_at + 8, 'i', 10 ** 6),
        'neighbour_count_huge': patch(data, neighbours_at, 'Q', 2 ** 61),
    }


def ivfpq_forgeries(data: bytes) -> dict:
    """Return IVF-PQ index files whose lists lie about sizes or ids."""
    ids_at = len(data) - 8
    lists_at = data.rindex(b'ilar')
    return {
        'nlist': patch(data, 37, 'Q', 2 ** 40),
        'nprobe': patch(data, 45, 'Q', 0),
        'duplicate_id': patch(data, ids_at, 'q', 0),
        'id_out_of_range': patch(data, ids_at, 'q', 10 ** 9),
        'list_layout': data[:lists_at + 20] + b'xxxx' + data[lists_at + 24:],
        'list_size': patch(data, lists_at + 32, 'Q', 2 ** 62),
    }


@pytest.fixture(scope='module')
def index_maps(tmp_path_factory) -> dict:
    """Return saved flat, HNSW and (trained) IVF-PQ maps without tokens."""
    root = tmp_path_factory.mktemp('index_maps')
    configs = {'flat': (IndexConfig(), 40), 'hnsw': (IndexConfig(kind='hnsw', hnsw_m=4), 40),
               'ivfpq': (IndexConfig(kind='ivfpq', ivf_nlist=4, pq_m=4), 39 * 256)}
    out = {}
    for kind, (config, n) in configs.items():
        rng = np.random.default_rng(5)
        x = rng.normal(size=(n, 16)).astype(np.float32)
        db = MapDatabase(SPEC, config, store_tokens=False)
        db.add(x / np.linalg.norm(x, axis=1, keepdims=True),
               [{'stamp_ns': i, 'source': ''} for i in range(n)])
        assert db.index_type == kind
        out[kind] = (db.save(root / kind), db)
    return out


def test_forged_index_files_are_refused_before_faiss(tmp_path: Path, index_maps: dict) -> None:
    """Index files that lie about dims, counts, lengths, graph or lists: MapFormatError each.

    Loaded in a subprocess: a faiss crash on one of them fails this test, naming the file.
    """
    cases = {}
    flat_root, _ = index_maps['flat']
    for name, forgery in FLAT_FORGERIES.items():
        cases[f'flat_{name}'] = (flat_root, forgery((flat_root / 'index.faiss').read_bytes()))
    hnsw_root, hnsw_db = index_maps['hnsw']
    for name, data in hnsw_forgeries(index_bytes(hnsw_db), len(hnsw_db)).items():
        cases[f'hnsw_{name}'] = (hnsw_root, data)
    ivf_root, ivf_db = index_maps['ivfpq']
    for name, data in ivfpq_forgeries((ivf_root / 'index.faiss').read_bytes()).items():
        cases[f'ivfpq_{name}'] = (ivf_root, data)
    dirs = []
    for name, (source, data) in cases.items():
        shutil.copytree(source, tmp_path / name)
        forge(tmp_path / name, 'index.faiss', data)
        dirs.append(str(tmp_path / name))
    proc = subprocess.run([sys.executable, str(WORKER), 'load', *dirs], capture_output=True,
                          text=True, timeout=120, cwd=WORKER.parent.parent)
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 0, f'crashed ({proc.returncode}) loading {lines[-1]}: {proc.stderr}'
    outcomes = [line for line in lines if 'error' in line]
    assert len(outcomes) == len(cases)
    for outcome in outcomes:
        assert outcome['error'] == 'MapFormatError', outcome
        assert outcome['dir'] + '/index.faiss' in outcome['message'], outcome


def test_index_layout_check_accepts_real_indexes(index_maps: dict) -> None:
    """The unforged flat, HNSW and IVF-PQ maps load and search like before saving."""
    for kind, (root, db) in index_maps.items():
        loaded = MapDatabase.load(root)
        assert loaded.index_type == kind
        queries = db.descriptors[:5]
        for got, want in zip(loaded.search(queries, 3), db.search(queries, 3)):
            np.testing.assert_array_equal(got, want)


def test_map_left_aside_by_killed_fallback_save_is_restored(saved: Path,
                                                            references: dict) -> None:
    """A map at ``.map.old-<dead pid>-<tag>`` with nothing at ``map`` loads again."""
    dead = subprocess.Popen(['true'])
    dead.wait()
    aside = saved.parent / f'.map.old-{dead.pid}-0123456789ab'
    saved.rename(aside)
    assert which_map(saved, references) == 'old' and siblings(saved) == ['map']


def test_write_error_is_a_map_error_and_an_os_error() -> None:
    """MapWriteError can be caught as MapError (the library's errors) or as OSError."""
    assert issubclass(MapWriteError, MapError) and issubclass(MapWriteError, OSError)
