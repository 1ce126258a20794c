"""Subprocess side of the map fault tests: saves killed at chosen steps, saves under OS limits.

Run as ``python test/map_fault_worker.py COMMAND ARGS``; the last line printed is a JSON result.
Commands:

* ``crash WORKDIR MODE``: forks one child per kill point; each child saves a new map over a copy
  of an old one and sends itself SIGKILL just before the chosen file-system step (a write, fsync,
  mkdir, rename, exchange or rmtree) of :meth:`MapDatabase.save`. ``MODE`` is ``exchange`` (the
  normal atomic directory exchange) or ``rename`` (the fallback without ``renameat2``).
* ``save MAP N SEED [FSIZE]``: saves ``build_map(N, SEED)`` to ``MAP``; with ``FSIZE`` the file
  size limit ``RLIMIT_FSIZE`` is set first (SIGXFSZ ignored, so writes fail with EFBIG).
* ``save-loop MAP``: saves two maps in turn, forever; prints ``ready`` after the first save (the
  test kills it with SIGKILL after a delay).
* ``save-twice MAP N0 N1``: saves ``build_map(N0, 0)``, then tries ``build_map(N1, 1)`` (run on a
  small tmpfs), and reports whether the first map still loads intact.
* ``load DIR ...``: loads each map, printing one JSON line per map before the next starts (run on
  forged maps, so that a crash inside faiss fails the test instead of killing pytest).
* ``fuzz-map WORKDIR EXAMPLES``: hypothesis loads mutated flat, HNSW and IVF-PQ maps (bytes of any
  file, with or without a recomputed checksum, or any manifest field replaced): each load must
  return a consistent map or raise MapError.
"""

import hashlib
import json
import os
from pathlib import Path
import resource
import shutil
import signal
import sys
import tempfile

import faiss
from fuzzing import fuzz, json_edited, mutated
from hypothesis import given, strategies as st
import numpy as np

from vpr_ros.config import IndexConfig
from vpr_ros.errors import MapError
from vpr_ros.map import database, storage, token_store
from vpr_ros.map.database import MapDatabase
from vpr_ros.map.manifest import MANIFEST_FILE
from vpr_ros.models.spec import ModelSpec

DIM = 16
TOKENS = (4, 8)
SPEC = ModelSpec('toy_fault_vpr', (32, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), DIM,
                 token_dim=TOKENS[1], num_tokens=TOKENS[0], has_pair_classifier=True)
OLD_N, NEW_N = 24, 400
CHUNK_BYTES = 8 << 10


def build_map(n: int, seed: int) -> MapDatabase:
    """Return a map of ``n`` random unit descriptors with tokens and entries (deterministic)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    entries = [{'stamp_ns': 1_000 * seed + i, 'source': f'img/{seed}/{i:05d}.jpg'}
               for i in range(n)]
    db = MapDatabase(SPEC)
    db.add(x, entries, rng.normal(size=(n,) + TOKENS).astype(np.float32))
    return db


def _emit(result: dict) -> None:
    print(json.dumps(result), flush=True)


class _Steps:
    """Counts file-system steps of a save; records them, or kills the process at one of them."""

    def __init__(self, stop_at: int) -> None:
        self.stop_at = stop_at
        self.labels = []
        self.file = ''

    def step(self, label: str) -> None:
        self.labels.append(label)
        if len(self.labels) == self.stop_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def wrap(self, owner: object, name: str, label: str) -> None:
        real = getattr(owner, name)

        def hooked(*args, **kwargs):
            self.step(label() if callable(label) else label)
            return real(*args, **kwargs)
        setattr(owner, name, hooked)


def _install(steps: _Steps, mode: str) -> None:
    """Route every file-system step of a save through ``steps`` (in a forked child only)."""
    real_write_file = database.write_file

    def write_file(path: Path, fill) -> dict:
        steps.file = path.name
        return real_write_file(path, fill)
    database.write_file = write_file
    token_store.CHUNK_BYTES = CHUNK_BYTES
    steps.wrap(storage.HashingWriter, 'write', lambda: f'write {steps.file}')
    for name in ('fsync', 'rename', 'replace', 'mkdir'):
        steps.wrap(os, name, name)
    steps.wrap(shutil, 'rmtree', 'rmtree')
    if mode == 'rename':
        storage._exchange = lambda a, b: False
    else:
        steps.wrap(storage, '_exchange', 'exchange')


def _run_child(new: MapDatabase, target: Path, stop_at: int, mode: str, log: Path) -> int:
    """Fork a child that saves ``new`` to ``target``; return its wait status."""
    pid = os.fork()
    if pid == 0:
        steps = _Steps(stop_at)
        _install(steps, mode)
        try:
            new.save(target)
            log.write_text(json.dumps(steps.labels))
        finally:
            os._exit(0)
    return os.waitpid(pid, 0)[1]


def _plan(labels: list) -> list:
    """Return the 1-based steps to kill at: first, middle and last of each run of equal steps."""
    points, start = set(), 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[start]:
            points.update({start + 1, (start + i + 1) // 2, i})
            start = i
    return sorted(points) + [len(labels) + 1]


def crash(workdir: str, mode: str) -> None:
    """Kill saves at every planned step; report the step of each run."""
    faiss.omp_set_num_threads(1)
    root = Path(workdir)
    template = build_map(OLD_N, 0).save(root / 'template' / 'map')
    new = build_map(NEW_N, 1)
    scratch = root / 'count'
    shutil.copytree(template.parent, scratch)
    _run_child(new, scratch / 'map', 0, mode, root / 'labels.json')
    labels = json.loads((root / 'labels.json').read_text())
    runs = []
    for n, point in enumerate(_plan(labels)):
        folder = root / f'run{n:03d}'
        shutil.copytree(template.parent, folder)
        status = _run_child(new, folder / 'map', point, mode, root / 'unused.json')
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        runs.append({'dir': str(folder), 'step': point, 'killed': killed,
                     'label': labels[point - 1] if point <= len(labels) else 'returned'})
    _emit({'labels': labels, 'runs': runs})


def _outcome(call) -> dict:
    """Run ``call``; return the error type, its bases and message (or no error)."""
    try:
        call()
    except Exception as exc:  # reported to the test, which checks the type
        return {'error': type(exc).__name__,
                'bases': [c.__name__ for c in type(exc).__mro__], 'message': str(exc)}
    return {'error': None, 'bases': [], 'message': ''}


def save(path: str, n: str, seed: str, fsize: str = '') -> None:
    """Save a map, optionally under a file size limit; report the outcome."""
    faiss.omp_set_num_threads(1)
    db = build_map(int(n), int(seed))
    if fsize:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(fsize), hard))
    _emit(_outcome(lambda: db.save(path)))


def save_loop(path: str) -> None:
    """Save ``build_map(OLD_N, 0)`` and ``build_map(NEW_N, 1)`` in turn until killed."""
    faiss.omp_set_num_threads(1)
    maps = [build_map(OLD_N, 0), build_map(NEW_N, 1)]
    maps[0].save(path)
    print('ready', flush=True)
    while True:
        for db in maps[::-1]:
            db.save(path)


def save_twice(path: str, n0: str, n1: str) -> None:
    """Save a small map, then a large one that does not fit; report whether the first survived."""
    faiss.omp_set_num_threads(1)
    first = build_map(int(n0), 0)
    first.save(path)
    result = _outcome(lambda: build_map(int(n1), 1).save(path))
    loaded = MapDatabase.load(path)
    result['old_intact'] = (np.array_equal(loaded.descriptors, first.descriptors)
                            and loaded.entries == first.entries)
    result['siblings'] = sorted(p.name for p in Path(path).parent.iterdir())
    _emit(result)


def load(*paths: str) -> None:
    """Load each map in turn, printing one outcome line per map."""
    faiss.omp_set_num_threads(1)
    for path in paths:
        print(json.dumps({'dir': path, 'started': True}), flush=True)
        _emit(dict(_outcome(lambda: MapDatabase.load(path)), dir=path))
    _emit({'done': len(paths)})


def _fuzz_bases(root: Path) -> dict:
    """Save the maps to mutate: flat and HNSW with tokens, trained IVF-PQ without."""
    configs = {'flat': (IndexConfig(), 6, True), 'hnsw': (IndexConfig(kind='hnsw', hnsw_m=4), 30,
                                                          True),
               'ivfpq': (IndexConfig(kind='ivfpq', ivf_nlist=2, pq_m=2), 39 * 256, False)}
    bases = {}
    for kind, (config, n, tokens) in configs.items():
        rng = np.random.default_rng(3)
        x = rng.normal(size=(n, DIM)).astype(np.float32)
        db = MapDatabase(SPEC, config, store_tokens=tokens)
        db.add(x / np.linalg.norm(x, axis=1, keepdims=True),
               [{'stamp_ns': i, 'source': ''} for i in range(n)],
               rng.normal(size=(n,) + TOKENS) if tokens else None)
        bases[kind] = db.save(root / kind)
    return bases


def _mutate(root: Path, data: st.DataObject) -> None:
    """Apply one drawn mutation to the map at ``root``."""
    manifest_path = root / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    name = data.draw(st.sampled_from(sorted(manifest['files']) + [MANIFEST_FILE]))
    if name == MANIFEST_FILE and data.draw(st.booleans()):
        manifest_path.write_text(json.dumps(data.draw(json_edited(manifest))))
        return
    raw = data.draw(mutated((root / name).read_bytes()))
    (root / name).write_bytes(raw)
    if name != MANIFEST_FILE and data.draw(st.booleans()):
        manifest['files'][name] = {'sha256': hashlib.sha256(raw).hexdigest(), 'bytes': len(raw)}
        manifest_path.write_text(json.dumps(manifest))


def _check_consistent(db: MapDatabase) -> None:
    """Assert the invariants of any map that loaded."""
    faiss.omp_set_num_threads(1)
    n, vectors = len(db), db.descriptors
    assert vectors.shape == (n, DIM) and np.isfinite(vectors).all()
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=2e-2)
    assert [e.id for e in db.entries] == list(range(n))
    if n:
        _, ids = db.search(vectors[:2], 3)
        assert ((ids >= -1) & (ids < n)).all()
    if db.has_tokens:
        assert db.tokens(range(n)).shape == (n,) + db.token_shape


def fuzz_map(workdir: str, examples: str) -> None:
    """Load mutated maps; count the ones that loaded and the ones refused with MapError."""
    faiss.omp_set_num_threads(1)
    bases = _fuzz_bases(Path(workdir))
    counts = {'loaded': 0, 'refused': 0}

    @fuzz(int(examples))
    @given(st.sampled_from(sorted(bases)), st.data())
    def check(kind: str, data: st.DataObject) -> None:
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            root = Path(shutil.copytree(bases[kind], Path(tmp) / 'map'))
            _mutate(root, data)
            try:
                db = MapDatabase.load(root)
            except MapError:
                counts['refused'] += 1
                return
            _check_consistent(db)
            counts['loaded'] += 1
    check()
    _emit(counts)


COMMANDS = {'crash': crash, 'save': save, 'save-loop': save_loop, 'save-twice': save_twice,
            'load': load, 'fuzz-map': fuzz_map}

if __name__ == '__main__':
    COMMANDS[sys.argv[1]](*sys.argv[2:])
