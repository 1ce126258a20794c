"""A deliberately slow VPR model for soak and load tests, and a ``localize`` launcher using it.

:class:`SlowPoolingModel` is a real :class:`~vpr_ros.models.vpr_model.VprModel`: its global
descriptor is the centred, L2-normalised colour layout of the image (average-pooled on a coarse
grid), which tells the synthetic places of :mod:`vpr_ros.ros.tools.soak_scenario` apart. Every
``describe`` call first sleeps ``delay_s``, so the node's inference time is known and does not
load the CPU. The delay is not part of the spec: maps built without it load into a node running
with it.

``python -m vpr_ros.ros.tools.slow_model --delay-ms 50 --ros-args -p model:=slow_pooling_50ms ...``
registers the model as ``slow_pooling_<delay>ms`` and runs the real ``localize`` node.
"""

import argparse
from functools import partial
import sys
import time
from typing import Optional, Sequence

import torch
from torch.nn import functional as F

from vpr_ros.models.registry import list_models, register_model
from vpr_ros.models.spec import ModelSpec
from vpr_ros.models.vpr_model import VprModel

ARCHITECTURE = 'slow_pooling'
INPUT_SIZE = (48, 64)
POOL_GRID = (6, 8)


class SlowPoolingModel(VprModel):
    """Colour-layout descriptor that sleeps ``delay_s`` seconds in every ``describe`` call."""

    onnx_exportable = False
    """An exported graph would drop the sleep, which is the point of this model."""

    def __init__(self, delay_s: float = 0.0) -> None:
        """Create the model; ``delay_s`` is the sleep per ``describe`` call (per batch)."""
        super().__init__()
        self.delay_s = float(delay_s)
        self.spec = ModelSpec(ARCHITECTURE, INPUT_SIZE, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25),
                              3 * POOL_GRID[0] * POOL_GRID[1])

    def describe(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        """Sleep, then return the L2-normalised, centred pooled colours ``[B, 144]``."""
        if self.delay_s > 0:
            time.sleep(self.delay_s)
        pooled = F.adaptive_avg_pool2d(images, POOL_GRID).flatten(1)
        return F.normalize(pooled - pooled.mean(dim=1, keepdim=True), dim=-1), None


def slow_model_name(delay_s: float) -> str:
    """Return the registry name of the slow model with ``delay_s`` (``slow_pooling_50ms``)."""
    return f'{ARCHITECTURE}_{delay_s * 1e3:g}ms'


def register_slow_model(delay_s: float) -> str:
    """Register the slow model with ``delay_s`` (once per process) and return its name."""
    name = slow_model_name(delay_s)
    if name not in list_models():
        register_model(name)(partial(SlowPoolingModel, delay_s))
    return name


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Register the slow model, then run the ``localize`` node with the remaining arguments."""
    from vpr_ros.ros.localize_node import main as localize_main
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index('--ros-args') if '--ros-args' in argv else len(argv)
    parser = argparse.ArgumentParser(prog='python -m vpr_ros.ros.tools.slow_model',
                                     description=__doc__.split('\n')[0])
    parser.add_argument('--delay-ms', type=float, default=50.0,
                        help='sleep per describe call in milliseconds (default: %(default)s)')
    args = parser.parse_args(argv[:split])
    register_slow_model(args.delay_ms / 1e3)
    torch.set_num_threads(1)
    return localize_main(['localize'] + argv[split:])


if __name__ == '__main__':
    sys.exit(main())
