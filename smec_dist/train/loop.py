"""The one training loop: phases (SMRL stages, or a baseline's maps) x optimizer steps.

Adapter mode and end-to-end mode both train through :class:`Trainer`; they differ in the
:class:`Task` (where a step's loss comes from: cached teacher vectors, or the backbone) and
the engine (backward and step of the backbone side: none here, or Accelerate/DeepSpeed in
:mod:`smec_dist.train.engine`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..config import TrainConfig
from ..errors import SmecError
from ..method.phase import Phase

log = logging.getLogger(__name__)


def preview(items: list, n: int = 5) -> str:
    """The first ``n`` items for a message (``a, b, c, ... (12 in all)``)."""
    return ", ".join(map(str, items[:n])) + (f", ... ({len(items)} in all)" if len(items) > n else "")


def lr_factor(step: int, steps: int, schedule: str, warmup: int = 0) -> float:
    """The learning-rate multiplier at ``step`` of ``steps``: linear warmup over ``warmup`` steps,
    then ``cosine`` (to 0 at the end) or ``constant``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        span = max(1, steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))
    return 1.0



class Task:
    """Where a step's loss comes from; the :class:`Trainer` owns everything else.

    Adapter mode (:class:`CachedTask`) reads teacher vectors from the embedding cache;
    end-to-end mode (:class:`smec_dist.train.pairs.PairTask`) runs the backbone. State a resumed run
    needs (sampler position, queue) goes in ``state_dict``.
    """

    steps: int  # optimizer steps per phase

    def begin_phase(self, phase: Phase, index: int) -> None:
        """Called at a phase's first step (not again when a run resumes mid-phase)."""

    def loss(self, phase: Phase, step: int) -> torch.Tensor:
        raise NotImplementedError

    def after_micro_step(self) -> None:
        """After each backward pass (the memory is fed here)."""

    def describe_batch(self) -> str:
        """The batch of the last ``loss`` call, for error messages."""
        return "(unknown batch)"

    def discard_micro_step(self) -> None:
        """The last ``loss`` is dropped (non-finite, skipped): forget what it left pending."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class LocalEngine:
    """Backward and step for a head alone on one process (adapter mode)."""

    accum = 1

    def accumulate(self):
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def sync_head(self, params) -> None:
        pass

    def step(self) -> None:
        pass

    def discard(self) -> None:
        pass

    def any(self, flag: bool) -> bool:
        return flag

    def mean(self, value: float) -> float:
        return value


class Trainer:
    """Phases (SMRL stages, or a baseline's maps) x optimizer steps: the one training loop.

    The head is replicated (it is small): each phase gets its own Adam over the phase's
    parameters with a per-phase schedule, and its gradients are averaged over ranks by the
    engine. The engine owns everything about the backbone (none in adapter mode; the
    Accelerate-prepared, possibly ZeRO-sharded model in end-to-end mode). Resumable:
    ``state_dict`` holds the phase index, the step within it, the head, its optimizer and
    schedule, and the task's state.

    Args:
        head: the head being trained.
        phases: what each phase trains (see :func:`smec_dist.method.registry.phases_for`).
        task: where each step's loss comes from.
        cfg: learning rates and schedule of the head.
        engine: backward/step of the backbone side (default: none).
        on_step_end: called after every optimizer step with the trainer (checkpointing).
        on_phase_end: called after a phase ends (stage export), with its index.
        should_stop: asked after every step (but a phase's last); true ends ``fit`` early,
            with ``stopped`` set and the position (phase, step) ready to checkpoint.
    """

    def __init__(self, head, phases: list[Phase], task: Task, cfg: TrainConfig, engine=None,
                 progress: bool = True, log_fn: Callable[[dict], None] | None = None,
                 on_step_end: Callable[["Trainer"], None] | None = None,
                 on_phase_end: Callable[["Trainer", int], None] | None = None,
                 should_stop: Callable[[], bool] | None = None):
        self.head, self.phases, self.task, self.cfg = head, phases, task, cfg
        self.engine = engine or LocalEngine()
        self.progress, self.log_fn = progress, log_fn
        self.on_step_end, self.on_phase_end, self.should_stop = on_step_end, on_phase_end, should_stop
        self.stopped = False
        self.skipped = 0  # steps dropped for a non-finite loss (train.nonfinite=skip)
        self.phase_index, self.step = 0, 0
        self.opt = self.sched = None
        self.stats: dict = {}
        self.losses: list[float] = []  # every step's loss (mean over micro-steps), all phases
        self._resume: dict | None = None

    def state_dict(self) -> dict:
        return {"phase": self.phase_index, "step": self.step, "head": self.head.state_dict(),
                "opt": self.opt.state_dict() if self.opt else None,
                "sched": self.sched.state_dict() if self.sched else None,
                "task": self.task.state_dict(), "stats": self.stats, "losses": list(self.losses),
                "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.phase_index, self.step = int(state["phase"]), int(state["step"])
        self.head.load_state_dict(state["head"])
        self.task.load_state_dict(state["task"])
        self.stats, self.losses = dict(state["stats"]), list(state["losses"])
        self.skipped = int(state.get("skipped", 0))
        self._resume = state  # the optimizer is rebuilt when its phase starts

    def _optimizer(self, phase: Phase, steps: int) -> None:
        self.opt = torch.optim.Adam(phase.params, weight_decay=self.cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda i: lr_factor(i, steps, self.cfg.lr_schedule))

    def fit(self) -> dict:
        """Train every phase not finished yet; returns per-phase stats."""
        steps = self.task.steps
        for index, phase in enumerate(self.phases):
            if index < self.phase_index:
                phase.on_end()  # finished before a resume: re-apply its freezing
                continue
            resumed = self._resume is not None and self.step > 0
            if not resumed:
                self.step = 0
                phase.start()
                self.task.begin_phase(phase, index)
            self._optimizer(phase, steps)
            if resumed and self._resume.get("opt") is not None:
                phase.progress(self.step / steps)  # a fixed ADS selection stops learning, as before the kill
                self.opt.load_state_dict(self._resume["opt"])
                self.sched.load_state_dict(self._resume["sched"])
            self._resume = None
            self._run_phase(phase, steps)
            if self.stopped:
                return self.stats
            phase.on_end()
            self.phase_index, self.step = index + 1, 0
            self.opt = self.sched = None
            if self.on_phase_end:
                self.on_phase_end(self, index)
        self.head.eval()
        return self.stats

    def _non_finite(self, phase: Phase, steps: int, loss: torch.Tensor) -> None:
        where = (f"{phase.name} (stage {self.phase_index + 1}) at step {self.step + 1} of {steps}, "
                 f"{self.task.describe_batch()}")
        if self.cfg.nonfinite != "skip":
            raise SmecError(f"non-finite loss ({loss.item()}) in {where}; nothing of this step was applied and "
                            f"the newest complete checkpoint is kept (--resume auto continues from it); "
                            f"train.nonfinite=skip drops such steps instead")
        self.skipped += 1
        if self.skipped > self.cfg.max_skipped:
            raise SmecError(f"non-finite loss in {where}: {self.skipped} steps skipped, more than "
                            f"train.max_skipped={self.cfg.max_skipped}; the newest complete checkpoint is kept")
        log.warning("non-finite loss in %s: step skipped (%d so far)", where, self.skipped)

    def _run_phase(self, phase: Phase, steps: int) -> None:
        t0 = time.perf_counter()
        params = [p for group in phase.params for p in group["params"]]
        bar = tqdm(total=steps, initial=self.step, desc=phase.name, disable=not self.progress,
                   mininterval=2.0, leave=False)
        ema = self.stats.get(phase.name, {}).get("loss")
        while self.step < steps:
            phase.progress(self.step / steps)
            value, bad = 0.0, False
            for _ in range(self.engine.accum):
                with self.engine.accumulate():
                    loss = self.task.loss(phase, self.step)
                    if self.engine.any(not bool(torch.isfinite(loss.detach()))):  # every rank decides alike
                        self._non_finite(phase, steps, loss)  # raises unless train.nonfinite=skip
                        self.task.discard_micro_step()
                        bad = True
                        continue
                    self.engine.backward(loss)
                    self.task.after_micro_step()
                value += loss.item() / self.engine.accum
            if bad:  # the step is dropped; the same step index is retried on the next batch
                self.opt.zero_grad(set_to_none=True)
                self.engine.discard()
                continue
            self.engine.sync_head(params)
            self.opt.step()
            self.sched.step()
            self.opt.zero_grad(set_to_none=True)
            self.engine.step()
            value = self.engine.mean(value)  # every rank logs the loss of the whole global batch
            self.losses.append(value)
            ema = value if ema is None else 0.95 * ema + 0.05 * value
            bar.update(1)
            if self.step % 20 == 0:
                bar.set_postfix(loss=f"{ema:.4f}")
            if self.log_fn:
                self.log_fn({"phase": phase.name, "phase_index": self.phase_index, "step": self.step,
                             "loss": value, "lr": self.sched.get_last_lr()[0]})
            self.step += 1
            self.stats[phase.name] = {"loss": ema, "steps": steps,
                                      "seconds": round(time.perf_counter() - t0, 2)}
            if self.on_step_end:
                self.on_step_end(self)
            if self.should_stop is not None and self.step < steps and self.should_stop():
                self.stopped = True
                break
        bar.close()
        if self.stopped:
            log.info("%s: stopped on request after step %d of %d", phase.name, self.step, steps)
            return
        log.info("%s: %d steps, loss %.4f, %.1fs", phase.name, steps, ema, self.stats[phase.name]["seconds"])
