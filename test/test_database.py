"""Map database: FAISS search against numpy brute force, save/load, validation, threads."""

from dataclasses import replace
import hashlib
import json
from pathlib import Path
import threading

import numpy as np
import pytest

from vpr_ros.config import IndexConfig
from vpr_ros.errors import MapError, MapFormatError, MapMismatchError
from vpr_ros.geometry import pose_from_xy_yaw
from vpr_ros.map import database
from vpr_ros.map.database import MapDatabase
from vpr_ros.map.entries import MapEntry
from vpr_ros.map.index import ivfpq_train_size
from vpr_ros.models.spec import ModelSpec

DIM = 32
TOKENS = (6, 8)
SPEC = ModelSpec('toy_pair_vpr', (32, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), DIM,
                 token_dim=TOKENS[1], num_tokens=TOKENS[0], has_pair_classifier=True)
OTHER_SPEC = ModelSpec('toy_other_vpr', (32, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), DIM)
MAP_FILES = ['index.faiss', 'entries.jsonl', 'descriptors.npy', 'tokens.f16']


pytestmark = pytest.mark.usefixtures('single_faiss_thread')


def synthetic_descriptors(n: int, dim: int = DIM, seed: int = 0, clusters: int = 16,
                          spread: float = 0.35) -> np.ndarray:
    """Return ``[n, dim]`` unit vectors scattered around ``clusters`` random unit centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(clusters, size=n)] + spread * rng.normal(size=(n, dim)) / dim ** 0.5
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def synthetic_tokens(n: int, seed: int = 0) -> np.ndarray:
    """Return ``[n, T, C]`` float32 tokens (not exactly representable in float16)."""
    return np.random.default_rng(seed).normal(size=(n,) + TOKENS).astype(np.float32)


def make_entries(n: int, start: int = 0) -> list[dict]:
    """Return keyword dictionaries for ``n`` entries with every field used."""
    return [{'stamp_ns': 1_700_000_000_000_000_000 + i * 10 ** 8,
             'pose': pose_from_xy_yaw(0.5 * i, -0.25 * i, 0.01 * i) if i % 3 else None,
             'gps': (500000.0 + i, 4649776.0 - i) if i % 2 else None,
             'source': f'bag:run.db3#/camera/image@{i}' if i % 2 else f'images/{i:05d}.jpg',
             'slam_node_id': i if i % 4 else None} for i in range(start, start + n)]


def brute_force(db_vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple:
    """Return the exact top-k inner products and ids."""
    sims = queries @ db_vectors.T
    ids = np.argsort(-sims, axis=1, kind='stable')[:, :k]
    return np.take_along_axis(sims, ids, axis=1), ids


def build_map(n: int = 40, config: IndexConfig = IndexConfig(), seed: int = 0) -> MapDatabase:
    """Return a map of ``n`` synthetic entries with tokens."""
    db = MapDatabase(SPEC, config)
    db.add(synthetic_descriptors(n, seed=seed), make_entries(n), synthetic_tokens(n, seed))
    return db


@pytest.fixture
def saved_map(tmp_path: Path) -> tuple[MapDatabase, Path]:
    """Return a 40-entry map with tokens and its save directory ``tmp_path / 'map'``."""
    db = build_map()
    return db, db.save(tmp_path / 'map')


def read_manifest(root: Path) -> dict:
    """Return the parsed manifest of the map at ``root``."""
    return json.loads((root / 'manifest.json').read_text())


def write_manifest(root: Path, manifest: dict) -> None:
    """Overwrite the manifest of the map at ``root``."""
    (root / 'manifest.json').write_text(json.dumps(manifest))


def refresh_checksum(root: Path, name: str) -> None:
    """Record the current sha256 and size of ``name`` in the manifest (a consistent forgery)."""
    manifest = read_manifest(root)
    data = (root / name).read_bytes()
    manifest['files'][name] = {'sha256': hashlib.sha256(data).hexdigest(), 'bytes': len(data)}
    write_manifest(root, manifest)


def test_flat_search_matches_brute_force() -> None:
    """Exact search returns the brute-force neighbours and inner products."""
    vectors = synthetic_descriptors(600, seed=1)
    db = MapDatabase(SPEC, store_tokens=False)
    assert db.add(vectors[:250], make_entries(250)) == list(range(250))
    assert db.add(vectors[250:], make_entries(350, 250)) == list(range(250, 600))
    queries = synthetic_descriptors(25, seed=2)
    sims, ids = db.search(queries, 10)
    ref_sims, ref_ids = brute_force(vectors, queries, 10)
    assert sims.dtype == np.float32 and ids.dtype == np.int64 and ids.shape == (25, 10)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-5)


def test_hnsw_recall_against_brute_force() -> None:
    """HNSW finds at least 95 % of the exact top-10 on clustered data."""
    vectors = synthetic_descriptors(4100, seed=3, clusters=40)
    vectors, queries = vectors[:4000], vectors[4000:]
    db = MapDatabase(SPEC, IndexConfig(kind='hnsw'), store_tokens=False)
    db.add(vectors, make_entries(4000))
    sims, ids = db.search(queries, 10)
    _, ref_ids = brute_force(vectors, queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, ref_ids)])
    assert db.index_type == 'hnsw' and recall >= 0.95, recall
    np.testing.assert_allclose(sims, np.einsum('qd,qkd->qk', queries, vectors[ids]), atol=1e-5)


def test_ivfpq_exact_until_trained_then_approximate(tmp_path: Path) -> None:
    """IVF-PQ answers exactly before training, then finds most true neighbours; survives saving."""
    config = IndexConfig(kind='ivfpq', ivf_nlist=16, ivf_nprobe=16, pq_m=8, refine_k=0)
    train_size = ivfpq_train_size(config)
    vectors = synthetic_descriptors(train_size, seed=5, clusters=64, spread=1.0)
    queries = vectors[::97][:50] + 0.0
    db = MapDatabase(SPEC, config, store_tokens=False)
    db.add(vectors[:1000], make_entries(1000))
    assert db.index_type == 'flat'
    exact_ids = brute_force(vectors[:1000], queries, 5)[1]
    np.testing.assert_array_equal(db.search(queries, 5)[1], exact_ids)
    db.add(vectors[1000:], make_entries(train_size - 1000, 1000))
    sims, ids = db.search(queries, 10)
    _, ref_ids = brute_force(vectors, queries, 10)
    assert db.index_type == 'ivfpq'
    assert np.mean(ids[:, 0] == ref_ids[:, 0]) >= 0.9
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, ref_ids)]) >= 0.4
    np.testing.assert_allclose(sims, np.einsum('qd,qkd->qk', queries, vectors[ids]), atol=0.25)
    loaded = MapDatabase.load(db.save(tmp_path / 'ivfpq'), expected_spec=SPEC)
    assert loaded.index_type == 'ivfpq'
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], ids)


def test_ivfpq_refine_rescores_exactly() -> None:
    """With refine_k the IVF-PQ shortlist is re-scored exactly: similarities equal numpy's."""
    config = IndexConfig(kind='ivfpq', ivf_nlist=16, ivf_nprobe=4, pq_m=8, refine_k=200)
    train_size = ivfpq_train_size(config)
    vectors = synthetic_descriptors(train_size, seed=6, clusters=64, spread=1.0)
    queries = vectors[::89][:40] + 0.0
    db = MapDatabase(SPEC, config, store_tokens=False)
    db.add(vectors, make_entries(train_size))
    assert db.index_type == 'ivfpq'
    sims, ids = db.search(queries, 10)
    np.testing.assert_allclose(sims, np.einsum('qd,qkd->qk', queries, vectors[ids]), atol=1e-5)
    assert np.all(np.diff(sims, axis=1) <= 1e-6)
    plain = MapDatabase(SPEC, replace(config, refine_k=0), store_tokens=False)
    plain.add(vectors, make_entries(train_size))
    ref_ids = brute_force(vectors, queries, 10)[1]
    overlap = [np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, ref_ids)])
               for found in (ids, plain.search(queries, 10)[1])]
    assert overlap[0] >= overlap[1] and overlap[0] >= 0.9, overlap


def test_search_pads_with_minus_one() -> None:
    """Fewer entries than k gives id -1 and similarity -inf in the tail."""
    db = MapDatabase(SPEC, store_tokens=False)
    sims, ids = db.search(synthetic_descriptors(2), 4)
    assert (ids == -1).all() and np.isneginf(sims).all()
    vectors = synthetic_descriptors(3, seed=6)
    db.add(vectors, make_entries(3))
    sims, ids = db.search(vectors, 5)
    assert sorted(ids[0, :3]) == [0, 1, 2] and (ids[:, 3:] == -1).all()
    assert np.isneginf(sims[:, 3:]).all() and np.isfinite(sims[:, :3]).all()


def test_save_load_round_trip(saved_map: tuple) -> None:
    """Loaded entries, descriptors, search results and tokens equal the saved ones."""
    db, root = saved_map
    assert sorted(p.name for p in root.iterdir()) == sorted(MAP_FILES + ['manifest.json'])
    loaded = MapDatabase.load(root, expected_spec=SPEC)
    assert loaded.entries == db.entries and len(loaded) == 40 and loaded.spec == SPEC
    assert loaded.entries[1].pose == db.entries[1].pose and loaded.entries[1].gps is not None
    np.testing.assert_array_equal(loaded.descriptors, db.descriptors)
    queries = synthetic_descriptors(7, seed=9)
    for got, want in zip(loaded.search(queries, 12), db.search(queries, 12)):
        np.testing.assert_array_equal(got, want)
    ids = [39, 0, 17, 17]
    np.testing.assert_array_equal(loaded.tokens(ids), db.tokens(ids))


def test_tokens_are_memory_mapped_float16(saved_map: tuple) -> None:
    """Tokens come back as float16 equal to the input rounded to float16, from a memmap."""
    _, root = saved_map
    loaded = MapDatabase.load(root)
    assert isinstance(loaded._tokens._base, np.memmap)  # the storage contract: not in RAM
    tokens = loaded.tokens(np.arange(40)[::-1])
    original = synthetic_tokens(40)[::-1]
    assert tokens.dtype == np.float16 and tokens.shape == (40,) + TOKENS
    np.testing.assert_array_equal(tokens, original.astype(np.float16))
    np.testing.assert_allclose(tokens.astype(np.float32), original, rtol=1e-3, atol=1e-4)
    raw = np.fromfile(root / 'tokens.f16', dtype='<f2').reshape((40,) + TOKENS)
    np.testing.assert_array_equal(raw, synthetic_tokens(40).astype(np.float16))


def test_extend_after_load_and_save_again(saved_map: tuple) -> None:
    """Entries added to a loaded map are searchable, and saving over the same path keeps all."""
    _, root = saved_map
    loaded = MapDatabase.load(root)
    more = synthetic_descriptors(5, seed=11)
    assert loaded.add(more, make_entries(5, 40), synthetic_tokens(5, 12)) == [40, 41, 42, 43, 44]
    assert loaded.search(more[:1], 1)[1][0, 0] == 40
    loaded.save(root)
    again = MapDatabase.load(root)
    assert len(again) == 45 and again.entry(44).source == loaded.entry(44).source
    want = np.concatenate([synthetic_tokens(40), synthetic_tokens(5, 12)]).astype(np.float16)
    np.testing.assert_array_equal(again.tokens(range(45)), want)
    np.testing.assert_array_equal(loaded.tokens(range(45)), want)


def test_failed_save_leaves_existing_map_untouched(saved_map: tuple, monkeypatch) -> None:
    """A save that fails after writing some files leaves the old map and no temp directory."""
    _, root = saved_map
    before = {p.name: p.read_bytes() for p in root.iterdir()}
    calls = []
    real_write = database.write_file

    def failing_write(path: Path, fill) -> dict:
        calls.append(path.name)
        if len(calls) == 3:
            raise OSError(28, 'No space left on device (simulated)')
        return real_write(path, fill)

    monkeypatch.setattr(database, 'write_file', failing_write)
    with pytest.raises(OSError, match='simulated'):
        build_map(60, seed=13).save(root)
    assert {p.name: p.read_bytes() for p in root.iterdir()} == before
    assert sorted(p.name for p in root.parent.iterdir()) == ['map']
    assert len(MapDatabase.load(root)) == 40


def test_save_refuses_to_replace_other_directories(tmp_path: Path) -> None:
    """A non-map directory at the target is never renamed aside or removed."""
    (tmp_path / 'photos').mkdir()
    (tmp_path / 'photos' / 'keep.jpg').write_bytes(b'x')
    with pytest.raises(MapError, match='not a map directory'):
        build_map(3).save(tmp_path / 'photos')
    assert (tmp_path / 'photos' / 'keep.jpg').read_bytes() == b'x'


@pytest.mark.parametrize('name', MAP_FILES)
def test_flipped_byte_is_reported(saved_map: tuple, name: str) -> None:
    """One flipped byte in any data file fails the checksum, naming the file."""
    _, root = saved_map
    data = bytearray((root / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (root / name).write_bytes(bytes(data))
    with pytest.raises(MapFormatError, match=f'{name} is corrupt or modified'):
        MapDatabase.load(root)


def test_verify_tokens_flag_skips_only_the_tokens_hash(saved_map: tuple) -> None:
    """With verify_tokens=False a changed tokens.f16 is not hashed; its size still is."""
    _, root = saved_map
    data = bytearray((root / 'tokens.f16').read_bytes())
    data[0] ^= 0x40
    (root / 'tokens.f16').write_bytes(bytes(data))
    assert len(MapDatabase.load(root, verify_tokens=False)) == 40
    (root / 'tokens.f16').write_bytes(bytes(data[:-2]))
    with pytest.raises(MapFormatError, match='tokens.f16 is truncated'):
        MapDatabase.load(root, verify_tokens=False)


@pytest.mark.parametrize('name', MAP_FILES)
def test_truncated_file_is_reported(saved_map: tuple, name: str) -> None:
    """A file cut short is reported as truncated, with both sizes."""
    _, root = saved_map
    data = (root / name).read_bytes()
    (root / name).write_bytes(data[:len(data) - 10])
    with pytest.raises(MapFormatError, match=rf'{name} is truncated: {len(data) - 10} bytes, '
                                             rf'manifest records {len(data)}'):
        MapDatabase.load(root)


@pytest.mark.parametrize('name', MAP_FILES + ['manifest.json'])
def test_missing_file_is_reported(saved_map: tuple, name: str) -> None:
    """A missing file is named."""
    _, root = saved_map
    (root / name).unlink()
    with pytest.raises(MapFormatError, match=f'{name} is missing'):
        MapDatabase.load(root)


def test_missing_directory_names_interrupted_save(tmp_path: Path) -> None:
    """A map renamed aside by an interrupted save is pointed to."""
    root = build_map(3).save(tmp_path / 'map')
    root.rename(tmp_path / '.map.old-123')
    with pytest.raises(MapFormatError, match='interrupted save left the previous map at'):
        MapDatabase.load(root)


@pytest.mark.parametrize('edit, message', [
    (lambda m: m.update(format='other.map'), "unknown format 'other.map'"),
    (lambda m: m.update(format_version=2), 'format_version 2 is not supported'),
    (lambda m: m.update(count=41), 'tokens.f16 recorded as 3840 bytes, 3936 expected for 41'),
    (lambda m: m['index'].update(type='hnsw'), "index type 'hnsw' is not valid for kind 'flat'"),
])
def test_bad_manifest_fields_are_reported(saved_map: tuple, edit, message: str) -> None:
    """Unknown format or version and inconsistent counts or kinds raise MapFormatError."""
    _, root = saved_map
    manifest = read_manifest(root)
    edit(manifest)
    write_manifest(root, manifest)
    with pytest.raises(MapFormatError, match=message):
        MapDatabase.load(root)


def test_manifest_that_is_not_json(saved_map: tuple) -> None:
    """A manifest cut in half is invalid JSON."""
    _, root = saved_map
    text = (root / 'manifest.json').read_text()
    (root / 'manifest.json').write_text(text[:len(text) // 2])
    with pytest.raises(MapFormatError, match='manifest.json is not valid JSON'):
        MapDatabase.load(root)


def test_manifest_claiming_another_spec(saved_map: tuple) -> None:
    """An edited spec without its digest is caught; with its digest, expected_spec catches it."""
    _, root = saved_map
    manifest = read_manifest(root)
    manifest['model_spec'] = json.loads(OTHER_SPEC.to_json())
    write_manifest(root, manifest)
    with pytest.raises(MapFormatError, match='does not match the recorded spec_digest'):
        MapDatabase.load(root)
    manifest['spec_digest'] = OTHER_SPEC.digest()
    write_manifest(root, manifest)
    with pytest.raises(MapMismatchError, match='built by model toy_other_vpr'):
        MapDatabase.load(root, expected_spec=SPEC)
    with pytest.raises(MapFormatError, match='token_shape'):
        MapDatabase.load(root)


def test_forged_descriptors_with_consistent_checksum(saved_map: tuple) -> None:
    """Descriptors swapped behind the index are found by comparing with the index vectors."""
    _, root = saved_map
    vectors = np.load(root / 'descriptors.npy')
    np.save(root / 'descriptors.npy', vectors[[1, 0] + list(range(2, 40))])
    refresh_checksum(root, 'descriptors.npy')
    with pytest.raises(MapFormatError, match='index.faiss does not match descriptors.npy: row 0'):
        MapDatabase.load(root)


@pytest.mark.parametrize('drop, message', [
    (5, r'line 6: id 6, expected 5 \(ids must be consecutive'),
    (39, 'entries.jsonl has 39 entries, manifest count is 40'),
])
def test_forged_entries_with_consistent_checksum(saved_map: tuple, drop: int,
                                                 message: str) -> None:
    """A removed entry line is found by the id sequence or the entry count."""
    _, root = saved_map
    lines = (root / 'entries.jsonl').read_text().splitlines(keepends=True)
    (root / 'entries.jsonl').write_text(''.join(lines[:drop] + lines[drop + 1:]))
    refresh_checksum(root, 'entries.jsonl')
    with pytest.raises(MapFormatError, match=message):
        MapDatabase.load(root)


def test_map_of_another_model_is_rejected(saved_map: tuple) -> None:
    """expected_spec of another model names both architectures and digests."""
    _, root = saved_map
    with pytest.raises(MapMismatchError) as info:
        MapDatabase.load(root, expected_spec=OTHER_SPEC)
    for text in ('toy_pair_vpr', 'toy_other_vpr', SPEC.digest(), OTHER_SPEC.digest()):
        assert text in str(info.value)


def test_dimension_mismatches_are_rejected() -> None:
    """Wrong descriptor or token shapes and entry counts raise MapMismatchError."""
    db = build_map(5)
    wide = synthetic_descriptors(2, dim=DIM + 1)
    with pytest.raises(MapMismatchError, match=rf'shape \(2, 33\), expected \[N, {DIM}\]'):
        db.add(wide, make_entries(2), synthetic_tokens(2))
    with pytest.raises(MapMismatchError, match=r'query descriptors have shape \(2, 33\)'):
        db.search(wide, 3)
    with pytest.raises(MapMismatchError, match=r'tokens have shape \(2, 6, 9\)'):
        db.add(synthetic_descriptors(2), make_entries(2), np.zeros((2, 6, 9), np.float32))
    with pytest.raises(MapMismatchError, match='2 descriptors but 3 entries'):
        db.add(synthetic_descriptors(2), make_entries(3), synthetic_tokens(2))
    with pytest.raises(MapMismatchError, match='add\\(\\) got none'):
        db.add(synthetic_descriptors(2), make_entries(2))
    assert len(db) == 5 and len(db.descriptors) == 5


def test_invalid_values_are_rejected() -> None:
    """Unnormalised or non-finite descriptors, bad ids and bad entry fields raise MapError."""
    db = build_map(5)
    with pytest.raises(MapError, match='not L2-normalised: row 1 has norm 2.0000'):
        db.add(synthetic_descriptors(2) * np.array([[1.0], [2.0]], np.float32), make_entries(2),
               synthetic_tokens(2))
    nan = synthetic_descriptors(1)
    nan[0, 3] = np.nan
    with pytest.raises(MapError, match='NaN or infinite'):
        db.search(nan, 1)
    with pytest.raises(MapError, match=r'no entry -1 \(ids 0..4\)'):
        db.tokens([0, -1])
    with pytest.raises(MapError, match='no entry 5'):
        db.entry(5)
    with pytest.raises(MapFormatError, match='gps must be two'):
        db.add(synthetic_descriptors(1), [{'stamp_ns': 1, 'gps': (1.0,)}], synthetic_tokens(1))
    assert len(db) == 5


def test_map_without_tokens(tmp_path: Path) -> None:
    """A map of a model without pair classifier stores no tokens and writes no tokens.f16."""
    db = MapDatabase(OTHER_SPEC)
    db.add(synthetic_descriptors(4), make_entries(4), synthetic_tokens(4))
    assert not db.has_tokens and db.token_shape is None
    with pytest.raises(MapError, match='stores no tokens'):
        db.tokens([0])
    root = db.save(tmp_path / 'plain')
    assert not (root / 'tokens.f16').exists()
    assert MapDatabase.load(root, expected_spec=OTHER_SPEC).entries == db.entries


def test_load_with_other_index_config_rebuilds(saved_map: tuple) -> None:
    """A flat map loaded with an HNSW config answers through HNSW with the same neighbours."""
    db, root = saved_map
    loaded = MapDatabase.load(root, index_config=IndexConfig(kind='hnsw'))
    queries = synthetic_descriptors(5, seed=21)
    assert loaded.index_type == 'hnsw'
    np.testing.assert_array_equal(loaded.search(queries, 3)[1], db.search(queries, 3)[1])


def test_entry_dict_round_trip() -> None:
    """Round-trip MapEntry through to_dict/JSON/from_dict; malformed ones name the field."""
    for kwargs in make_entries(4):
        entry = MapEntry(id=7, **kwargs)
        assert MapEntry.from_dict(json.loads(json.dumps(entry.to_dict()))) == entry
    with pytest.raises(MapFormatError, match=r"lacks \['source'\]"):
        MapEntry.from_dict({'id': 1, 'stamp_ns': 2})
    with pytest.raises(MapFormatError, match='stamp_ns must be an integer'):
        MapEntry.from_dict({'id': 1, 'stamp_ns': 2.5, 'source': ''})


def test_concurrent_add_and_search() -> None:
    """Two writers and two readers: no errors, all rows kept, every result consistent."""
    db = MapDatabase(SPEC, store_tokens=False)
    pool = synthetic_descriptors(400, seed=31)
    queries = synthetic_descriptors(8, seed=32)
    errors, results = [], []
    writers_done, searched = threading.Event(), threading.Event()

    def write(worker: int) -> None:
        try:
            for b in range(25):
                searched.wait(timeout=5.0)  # a search between batches, even on a busy CPU
                searched.clear()
                rows = list(range(worker * 200 + b * 8, worker * 200 + b * 8 + 8))
                db.add(pool[rows], [{'stamp_ns': r, 'source': f'row{r}'} for r in rows])
        except Exception as exc:  # any error fails the test below
            errors.append(exc)

    def read() -> None:
        try:
            while not writers_done.is_set():
                results.append((db.search(queries, 6), len(db)))
                searched.set()
        except Exception as exc:  # any error fails the test below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in (0, 1)]
    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in threads + readers:
        t.start()
    for t in threads:
        t.join()
    writers_done.set()
    for t in readers:
        t.join()
    assert not errors and len(db) == 400
    assert any(0 < count < 400 for _, count in results), 'no search ran while entries were added'
    rows = [int(e.source[3:]) for e in db.entries]
    assert sorted(rows) == list(range(400)) and [e.id for e in db.entries] == list(range(400))
    np.testing.assert_array_equal(db.descriptors, pool[rows])
    for (sims, ids), count_after in results:
        valid = ids >= 0
        assert (ids[valid] < count_after).all() and (valid[:, :-1] >= valid[:, 1:]).all()
        expected = np.einsum('qd,qkd->qk', queries, db.descriptors[np.maximum(ids, 0)])
        np.testing.assert_allclose(sims[valid], expected[valid], atol=1e-5)
