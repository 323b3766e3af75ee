"""The only module that talks to torch.distributed.

Everything here works unchanged on a single process (a gather returns its input, a
barrier returns at once, an average of gradients leaves them as they are), so callers
never branch on the launcher.

Loss scaling rule (one place, here): every rank computes the mean loss over its own
queries against the documents of all ranks (:func:`gather` keeps their gradients), and
gradients are then averaged over ranks (DDP and DeepSpeed do it for the backbone,
:func:`average_grads` for the replicated head). Since :func:`gather`'s backward sums the
gradients every rank sends back to a rank's slice, the average of the per-rank means is
exactly the mean loss of one process over the concatenated batch: no other rescaling.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Iterable

import torch


def launched_distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@lru_cache(maxsize=1)
def state():
    """Accelerate's process state, with gloo when there is no GPU.

    Without the explicit gloo backend on CPU, ranks started by ``accelerate launch`` can
    each believe they are rank 0 of 1 (see ENVIRONMENT.md); gloo avoids that. When an
    ``Accelerator`` exists already, this is its (shared) state.
    """
    from accelerate import PartialState

    if launched_distributed() and not torch.cuda.is_available():
        return PartialState(backend="gloo")
    return PartialState()


def process_group_kwargs(timeout_s: int = 0) -> list:
    """Kwargs handlers every ``Accelerator`` is built with: gloo when there is no GPU, and the
    collective timeout (``timeout_s`` > 0): when a rank dies or hangs, the others fail with a
    timeout error after that long instead of waiting for ever."""
    from datetime import timedelta

    from accelerate.utils import InitProcessGroupKwargs

    if not launched_distributed():
        return []
    kwargs: dict = {} if torch.cuda.is_available() else {"backend": "gloo"}
    if timeout_s > 0:
        kwargs["timeout"] = timedelta(seconds=timeout_s)
    return [InitProcessGroupKwargs(**kwargs)] if kwargs else []


def _active() -> bool:
    return launched_distributed() and torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    return state().process_index if launched_distributed() else 0


def world_size() -> int:
    return state().num_processes if launched_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    """Wait until every rank gets here.

    Calls ``torch.distributed.barrier`` itself: Accelerate's ``wait_for_everyone`` does
    nothing when its state says ``DistributedType.NO``, which is what ``accelerate launch
    --multi_gpu`` on CPU gives a ``PartialState(backend="gloo")`` even though the process
    group is up (found when rank 0 sealed an embedding cache before rank 1 had written its
    last shard)."""
    if not launched_distributed():
        return
    state()  # sets up the process group
    if not _active():
        state().wait_for_everyone()
    elif torch.cuda.is_available() and torch.distributed.get_backend() == "nccl":
        torch.distributed.barrier(device_ids=[torch.cuda.current_device()])
    else:
        torch.distributed.barrier()


def all_gather_object(obj) -> list:
    """Every rank's ``obj``, in rank order (``[obj]`` on one process)."""
    if not launched_distributed():
        return [obj]
    out = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank."""
    if not _active():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``x`` (n, ...) in rank order, keeping gradients.

    The backward pass returns to each rank the sum of the gradients all ranks computed for
    its slice (see the module docstring for why that is the right scale). Every rank must
    pass the same shape.
    """
    if not _active():
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)  # (world * n, ...)


@torch.no_grad()
def gather_detached(x: torch.Tensor) -> torch.Tensor:
    """Like :func:`gather` but without gradients (queue entries, ids)."""
    if not _active():
        return x.detach()
    parts = [torch.empty_like(x) for _ in range(world_size())]
    torch.distributed.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts, dim=0)  # (world * n, ...)


@torch.no_grad()
def average_grads(params: Iterable[torch.nn.Parameter]) -> None:
    """Average the gradients of replicated parameters over ranks (one flat all-reduce).

    Parameters without a gradient on this rank count as zeros, so every rank takes part
    in the same collective.
    """
    params = [p for p in params if p.requires_grad]
    if not _active() or not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    torch.distributed.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def _scalar(value: float, dtype=torch.float64) -> torch.Tensor:
    """A one-element tensor on the device the process group's backend reduces on (NCCL: GPU)."""
    device = "cpu"
    if torch.distributed.get_backend() == "nccl":
        device = f"cuda:{torch.cuda.current_device()}"
    return torch.tensor([value], dtype=dtype, device=device)


def mean_over_ranks(value: float) -> float:
    """The mean of a per-rank number (a loss to log) over ranks."""
    if not _active():
        return value
    t = _scalar(float(value))
    torch.distributed.all_reduce(t)
    return float(t.item()) / world_size()


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any rank (all ranks must call it together)."""
    if not _active():
        return bool(flag)
    t = _scalar(1.0 if flag else 0.0, dtype=torch.float32)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)
