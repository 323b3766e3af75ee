"""The only module that talks to torch.distributed.

Everything here works unchanged on a single process (a gather returns its input, a
barrier returns at once), so callers never branch on the launcher.
"""

from __future__ import annotations

import os
from functools import lru_cache

import torch


def launched_distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@lru_cache(maxsize=1)
def state():
    """Accelerate's process state, with gloo when there is no GPU.

    Without the explicit gloo backend on CPU, ranks started by ``accelerate launch`` can
    each believe they are rank 0 of 1 (see ENVIRONMENT.md); gloo avoids that.
    """
    from accelerate import PartialState

    if launched_distributed() and not torch.cuda.is_available():
        return PartialState(backend="gloo")
    return PartialState()


def rank() -> int:
    return state().process_index if launched_distributed() else 0


def world_size() -> int:
    return state().num_processes if launched_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if launched_distributed():
        state().wait_for_everyone()


def all_gather_object(obj) -> list:
    """Every rank's ``obj``, in rank order (``[obj]`` on one process)."""
    if not launched_distributed():
        return [obj]
    out = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out
