"""One training run's environment: process group, seed, run folder and log files."""

import contextlib
from dataclasses import dataclass
import logging
from pathlib import Path
from typing import Any, Iterator, Optional

from vpr_ros_training.distributed import broadcast_text, DistContext, init_distributed, shutdown
from vpr_ros_training.run_folder import (attach_log_files, describe_run, detach_log_files,
                                         make_deterministic, resolve_run_folder)
from vpr_ros_training.trainer import STATE_FILE

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class Session:
    """Where a run executes and writes."""

    context: DistContext
    run_dir: Path
    resume_state: Optional[Path]


@contextlib.contextmanager
def open_session(config: Any, stage: str, resume: str = '') -> Iterator[Session]:
    """Join the process group, seed everything, create or reopen the run folder, attach logs."""
    context = init_distributed(config.run.device)
    handlers = []
    try:
        make_deterministic(config.run.seed)
        folder = resolve_run_folder(config.run.output_root, stage, resume, context.is_main)
        folder = Path(broadcast_text(str(folder), context))
        if context.is_main:
            handlers = attach_log_files(folder)
            if not resume:
                describe_run(folder, config, config.run.seed, context.world_size)
        if context.world_size != config.run.num_gpus:
            LOGGER.warning('running on %d rank(s); the recipe was designed for %d',
                           context.world_size, config.run.num_gpus)
        LOGGER.info('%s run folder %s (rank %d of %d, %s)', stage, folder, context.rank,
                    context.world_size, context.device)
        yield Session(context, folder, folder / STATE_FILE if resume else None)
    finally:
        detach_log_files(handlers)
        shutdown(context)
