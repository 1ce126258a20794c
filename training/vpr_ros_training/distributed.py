"""torchrun / DDP plumbing: process-group setup and a differentiable all-gather.

Ranks come from the torchrun environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); a process
started without torchrun is rank 0 of 1 and never touches ``torch.distributed``. The backend is
NCCL on CUDA and gloo on CPU.

:func:`gather_with_grad` concatenates every rank's tensor along dim 0. Its backward sums the
incoming gradients of all ranks and hands each rank the slice of its own tensor, so a loss term
computed on one rank reaches the encoder of the rank that produced its inputs (the gradient of the
*local part*; remote parts cannot be differentiated locally).
"""

from dataclasses import dataclass
import datetime
import logging
import os

import torch
import torch.distributed as dist

LOGGER = logging.getLogger(__name__)

TIMEOUT_MIN = 30


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device('cpu')

    @property
    def enabled(self) -> bool:
        """Return True when several processes take part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Return True on rank 0 (the rank that writes files)."""
        return self.rank == 0


def pick_device(preference: str, local_rank: int) -> torch.device:
    """Return ``cuda:<local_rank>`` for 'cuda' (or 'auto' with CUDA present), else the CPU."""
    if preference == 'cuda' or (preference == 'auto' and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError('device cuda requested but CUDA is not available')
        torch.cuda.set_device(local_rank)
        return torch.device('cuda', local_rank)
    return torch.device('cpu')


def init_distributed(preference: str = 'auto') -> DistContext:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 and return this rank's context."""
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    device = pick_device(preference, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = 'nccl' if device.type == 'cuda' else 'gloo'
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=TIMEOUT_MIN),
                                **({'device_id': device} if device.type == 'cuda' else {}))
        LOGGER.info('rank %d/%d joined the %s process group', rank, world_size, backend)
    return DistContext(rank, world_size, local_rank, device)


def shutdown(context: DistContext) -> None:
    """Leave the process group (no-op for a single process)."""
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward returns this rank's slice of the summed gradient."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.world, ctx.rows = dist.get_rank(), dist.get_world_size(), tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(ctx.world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        if dist.get_backend() == dist.Backend.NCCL:
            local = torch.empty_like(grad[:ctx.rows])
            dist.reduce_scatter_tensor(local, grad)
            return local
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Return all ranks' ``tensor`` concatenated along dim 0 (identity for one process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


def gather_labels(labels: torch.Tensor) -> torch.Tensor:
    """Return all ranks' ``labels`` concatenated along dim 0 (no gradient)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return labels
    parts = [torch.empty_like(labels) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, labels.contiguous())
    return torch.cat(parts, dim=0)


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Return the sum of ``value`` over ranks (a detached copy; identity for one process)."""
    value = value.detach().clone()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(value)
    return value


def all_ranks_true(flag: bool, device: torch.device) -> bool:
    """Return True only when ``flag`` is True on every rank."""
    value = torch.tensor(1.0 if flag else 0.0, device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item() > 0.5)


def barrier(context: DistContext) -> None:
    """Wait for every rank (no-op for a single process)."""
    if context.enabled:
        dist.barrier()


def broadcast_text(text: str, context: DistContext, max_bytes: int = 4096) -> str:
    """Return rank 0's ``text`` on every rank (UTF-8, at most ``max_bytes``)."""
    if not context.enabled:
        return text
    buffer = torch.zeros(max_bytes + 1, dtype=torch.uint8, device=context.device)
    if context.is_main:
        data = text.encode()
        if len(data) > max_bytes:
            raise ValueError(f'text of {len(data)} bytes exceeds {max_bytes}')
        buffer[0] = 1
        buffer[1:len(data) + 1] = torch.tensor(list(data), dtype=torch.uint8)
    dist.broadcast(buffer, src=0)
    return bytes(buffer[1:].cpu().tolist()).rstrip(b'\0').decode()
