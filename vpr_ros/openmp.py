"""One OpenMP runtime per process, sized to the CPUs the process may use, waiting passively.

PyTorch and faiss-cpu each ship a copy of GNU OpenMP (``torch/lib/libgomp.so.1`` and
``faiss_cpu.libs/libgomp-<hash>.so``). PyTorch loads its copy into the global symbol scope; a
Python extension module (faiss) loads its dependencies locally. So when faiss is imported
first, the process ends up with two OpenMP runtimes, each with a thread pool as large as the
machine that spin-waits between parallel regions: on a 2-core machine with one other busy
process, ``Localizer.describe`` ran 3x slower, and 17x slower on a loaded machine. When
PyTorch's copy is loaded first, faiss binds to it and the process has one runtime.

:func:`configure_process` (called when ``vpr_ros`` is imported, before any of our modules can
load faiss) does three things, each only where the user has not decided otherwise:

- ``OMP_WAIT_POLICY=PASSIVE``: idle OpenMP threads sleep instead of spinning, so a robot computer
  shared with SLAM, drivers and planners is not slowed by our idle workers (nor they by us);
- ``OMP_NUM_THREADS``: the number of CPUs this process may use (affinity mask and cgroup quota),
  not the number the machine has;
- PyTorch's OpenMP library is loaded into the global scope, so faiss binds to the same runtime.

These settings are read by the runtime when it loads, so they take effect only when ``vpr_ros``
is imported before torch and faiss (every console script and node of the package is). A process
that loaded two runtimes anyway is reported by :func:`loaded_runtimes`.
"""

from contextlib import contextmanager
import ctypes
import importlib.util
import logging
import math
import os
from pathlib import Path
import sys
from typing import Iterator, Optional

LOG = logging.getLogger(__name__)

RUNTIME_NAMES = ('libgomp', 'libiomp', 'libomp')
"""File-name prefixes of the OpenMP runtime libraries (GNU, Intel, LLVM)."""
_CGROUP_CPU_MAX = Path('/sys/fs/cgroup/cpu.max')


def available_cpus() -> int:
    """Return how many CPUs this process may use: its affinity mask, capped by a cgroup quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def _cgroup_quota() -> Optional[float]:
    """Return the cgroup v2 CPU quota in CPUs, or None when there is none."""
    try:
        quota, period = _CGROUP_CPU_MAX.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == 'max':
        return None
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def configure_process() -> None:
    """Set passive waiting and the thread count, and load PyTorch's OpenMP runtime globally."""
    if 'faiss' in sys.modules and 'torch' not in sys.modules:
        LOG.warning('faiss was imported before vpr_ros and torch: the process may run two '
                    'OpenMP runtimes (slow on a busy CPU); import vpr_ros or torch first')
    os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
    os.environ.setdefault('OMP_NUM_THREADS', str(available_cpus()))
    library = _torch_openmp_library()
    if library is None:
        return
    try:
        ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        LOG.debug('could not preload %s: %s', library, exc)


def _torch_openmp_library() -> Optional[Path]:
    """Return the OpenMP library shipped in PyTorch's ``lib`` folder, without importing torch."""
    try:
        spec = importlib.util.find_spec('torch')
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    lib = Path(list(spec.submodule_search_locations)[0]) / 'lib'
    for name in ('libgomp.so.1', 'libiomp5.so', 'libomp.so'):
        if (lib / name).is_file():
            return lib / name
    return None


def loaded_runtimes(maps: Path = Path('/proc/self/maps')) -> list[str]:
    """Return the OpenMP runtime libraries mapped into this process (Linux), sorted.

    A library that is mapped but unused (faiss' own copy after it bound to PyTorch's) is listed
    too; :func:`shares_one_runtime` tells whether the libraries actually in use are one.
    """
    try:
        lines = maps.read_text().splitlines()
    except OSError:
        return []
    paths = {line.split()[-1] for line in lines if '/' in line}
    return sorted(p for p in paths if Path(p).name.startswith(RUNTIME_NAMES))


def shares_one_runtime() -> bool:
    """Return True when faiss and PyTorch use the same OpenMP thread-count setting.

    Sets faiss' thread count to an unusual value and reads PyTorch's: with one runtime the
    setting is shared (per calling thread). Both values are restored.
    """
    import faiss
    import torch

    before_faiss, before_torch = faiss.omp_get_max_threads(), torch.get_num_threads()
    probe = before_torch + 7
    try:
        faiss.omp_set_num_threads(probe)
        return torch.get_num_threads() == probe
    finally:
        faiss.omp_set_num_threads(before_faiss)
        torch.set_num_threads(before_torch)


@contextmanager
def faiss_threads(count: int) -> Iterator[None]:
    """Run FAISS calls in this block on ``count`` OpenMP threads (0 = leave as it is).

    The OpenMP thread count is a per-thread setting shared by faiss and PyTorch (one runtime),
    so it is restored on exit: a process-wide ``faiss.omp_set_num_threads(1)`` would also make
    PyTorch run single-threaded in that thread.
    """
    if count <= 0:
        yield
        return
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)
