"""A phase: the unit of training every head is trained in (an SMRL stage, or a baseline's map)."""

from __future__ import annotations

from typing import Callable

import torch

from .ads import Masked
from .losses import Penalty

Student = Callable[[torch.Tensor], list[tuple[float, "torch.Tensor | Masked | Penalty"]]]
"""Maps teacher vectors (m, D) to weighted outputs: normalised (m, d) tensors, :class:`Masked`
selections, or :class:`Penalty` regularisers (see :func:`~smec_dist.method.losses.objective`)."""

Basis = Callable[[], torch.Tensor]
"""Returns teacher vectors (m, D) whose principal directions initialise a phase's map."""


class Phase:
    """A unit of training: which parameters learn and what the student returns.

    Attributes:
        name: shown in logs and stats (``stage1:384->192``, ``mrl:192/96``).
        params: optimizer parameter groups (each with its own ``lr``).
        student: what the loss reads (see :data:`Student`).
        on_end: called when the phase ends, and again for a finished phase when a run
            resumes (freezing is re-applied).
        start: called at the phase's first step (not again on a resume mid-phase).
        progress: called before every step with the fraction of the phase done.
    """

    def __init__(self, name: str, params: list[dict], student: Student, on_end: Callable[[], None] = lambda: None,
                 start: Callable[[], None] = lambda: None,
                 progress: Callable[[float], None] = lambda frac: None):
        self.name, self.params, self.student, self.on_end = name, params, student, on_end
        self.start, self.progress = start, progress
