"""Self-describing run folders: resolved config, git commit, seed, logs and scalar logs.

``<output_root>/<stage>-<YYYYmmdd-HHMMSS>/`` holds ``config.yaml`` (the resolved recipe),
``run.json`` (git commit, dirty flag, seed, world size, command line), ``info.log`` and
``debug.log``, ``scalars.jsonl`` (always) and TensorBoard event files under ``tensorboard/`` when
the optional ``tensorboard`` package is importable. Only rank 0 writes.
"""

import datetime
import json
import logging
import os
from pathlib import Path
import random
import subprocess
import sys
import tempfile
from typing import Any, Callable, Optional

import numpy as np
import torch

from vpr_ros_training.config import save_config

LOGGER = logging.getLogger(__name__)

LOGGER_NAMES = ('vpr_ros_training', 'vpr_ros')
LOG_FORMAT = '%(asctime)s %(levelname)s %(name)s: %(message)s'
REPO_ROOT = Path(__file__).resolve().parents[2]


def make_deterministic(seed: int, deterministic_cudnn: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices); optionally force deterministic cuDNN."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    if deterministic_cudnn:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def git_state(cwd: Path = REPO_ROOT) -> dict:
    """Return ``{'commit': sha or 'unknown', 'dirty': bool or None}`` of the source tree."""
    def run(*args: str) -> Optional[str]:
        try:
            done = subprocess.run(['git', *args], cwd=cwd, capture_output=True, text=True,
                                  timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()
    commit = run('rev-parse', 'HEAD')
    status = run('status', '--porcelain')
    return {'commit': commit or 'unknown', 'dirty': None if status is None else bool(status)}


def new_run_folder(output_root: str, stage: str) -> Path:
    """Create and return ``<output_root>/<stage>-<timestamp>`` (a suffix keeps names unique)."""
    stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
    root = Path(output_root)
    root.mkdir(parents=True, exist_ok=True)
    for suffix in range(1000):
        path = root / (f'{stage}-{stamp}' + (f'-{suffix}' if suffix else ''))
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f'cannot create a new run folder under {root}')


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file, fsync and rename."""
    handle, temp = tempfile.mkstemp(prefix=f'.{path.name}.', dir=path.parent)
    with os.fdopen(handle, 'w') as stream:
        json.dump(data, stream, indent=2, sort_keys=True)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temp, path)


def describe_run(run_dir: Path, config: Any, seed: int, world_size: int) -> None:
    """Write ``config.yaml`` and ``run.json`` (git commit, seed, world size, command line)."""
    save_config(config, run_dir / 'config.yaml')
    info = dict(git_state(), seed=seed, world_size=world_size, argv=sys.argv,
                started=datetime.datetime.now().isoformat(timespec='seconds'),
                torch=torch.__version__)
    write_json_atomic(run_dir / 'run.json', info)


def attach_log_files(run_dir: Path) -> list[logging.Handler]:
    """Send INFO records to ``info.log`` and DEBUG records to ``debug.log``; return handlers."""
    handlers = []
    for name, level in (('info.log', logging.INFO), ('debug.log', logging.DEBUG)):
        handler = logging.FileHandler(run_dir / name)
        handler.setLevel(level)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handlers.append(handler)
    for logger_name in LOGGER_NAMES:
        logger = logging.getLogger(logger_name)
        logger.setLevel(logging.DEBUG)
        for handler in handlers:
            logger.addHandler(handler)
    return handlers


def detach_log_files(handlers: list[logging.Handler]) -> None:
    """Remove and close handlers added by :func:`attach_log_files`."""
    for logger_name in LOGGER_NAMES:
        for handler in handlers:
            logging.getLogger(logger_name).removeHandler(handler)
    for handler in handlers:
        handler.close()


class ScalarLog:
    """Scalar sink: ``scalars.jsonl`` always, TensorBoard too when it is installed."""

    def __init__(self, run_dir: Optional[Path]) -> None:
        """Open the sinks under ``run_dir`` (``None`` = discard, as on ranks other than 0)."""
        self.path = None if run_dir is None else run_dir / 'scalars.jsonl'
        self.writer = None
        if run_dir is not None:
            self.writer = self._tensorboard(run_dir / 'tensorboard')

    @staticmethod
    def _tensorboard(folder: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            LOGGER.info('tensorboard is not installed: scalars go to scalars.jsonl only')
            return None
        return SummaryWriter(str(folder))

    def log(self, step: int, scalars: dict[str, float]) -> None:
        """Record ``scalars`` at optimiser step ``step``."""
        if self.path is None:
            return
        with self.path.open('a') as stream:
            stream.write(json.dumps({'step': step, **scalars}) + '\n')
        if self.writer is not None:
            for key, value in scalars.items():
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        """Flush and close TensorBoard."""
        if self.writer is not None:
            self.writer.close()


def run_in_new_folder(config: Any, stage: str,
                      body: Callable[[Path, Callable[[int, dict], None]], dict]) -> dict:
    """Run a single-process recipe ``body(run_dir, log)`` in a new run folder.

    ``config`` needs ``output_root``, ``seed`` and ``threads`` (0 = torch default). The folder
    gets the config, the log files and the scalars; the returned record gains ``run_dir``.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    make_deterministic(config.seed)
    run_dir = new_run_folder(config.output_root, stage)
    handlers = attach_log_files(run_dir)
    scalars = ScalarLog(run_dir)
    try:
        describe_run(run_dir, config, config.seed, 1)
        record = body(run_dir, scalars.log)
    finally:
        scalars.close()
        detach_log_files(handlers)
    return dict(record, run_dir=str(run_dir))


def resolve_run_folder(output_root: str, stage: str, resume: str, is_main: bool) -> Path:
    """Return the folder of this run: ``resume`` when given, else a new one (made by rank 0)."""
    if resume:
        path = Path(resume)
        if not path.is_dir():
            raise FileNotFoundError(f'run folder to resume {path} does not exist')
        return path
    return new_run_folder(output_root, stage) if is_main else Path()
