"""The backbone side of end-to-end training: the Accelerate-prepared model (DDP or DeepSpeed
ZeRO-2/3, optionally with CPU offload), its optimizer and schedule, the checkpointed run
state, and the check of a DeepSpeed JSON against the trainer's settings.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import torch

from .. import dist
from ..config import Config
from ..errors import SmecError
from .loop import Trainer


def adamw(params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """The backbone's AdamW: torch's fused kernel where the parameters' device and dtype have
    one (CPU and CUDA in fp32/bf16/fp16; 10% of a MiniLM step on CPU against the default
    per-tensor loop), else the default."""
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


class AccelerateEngine:
    """Backward and optimizer step of the Accelerate-prepared backbone (DDP or DeepSpeed).

    The backbone's LR schedule is stepped here, once per optimizer step, and is not
    prepared by Accelerate: a prepared scheduler steps once per process per step.
    """

    def __init__(self, accelerator, model, optimizer, scheduler, max_grad_norm: float):
        self.acc, self.model, self.opt, self.sched = accelerator, model, optimizer, scheduler
        self.accum = accelerator.gradient_accumulation_steps
        self.max_grad_norm = max_grad_norm
        self.deepspeed = accelerator.state.deepspeed_plugin is not None

    def accumulate(self):
        return self.acc.accumulate(self.model) if self.opt is not None else contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        if self.opt is None:  # frozen backbone: only the head learns
            (loss / self.accum).backward()
        else:
            self.acc.backward(loss)  # divides by the accumulation steps (DeepSpeed: its engine does)

    def sync_head(self, params) -> None:
        dist.average_grads(params)

    def mean(self, value: float) -> float:
        return dist.mean_over_ranks(value)

    def any(self, flag: bool) -> bool:
        return dist.any_rank(flag)

    def discard(self) -> None:
        if self.opt is not None:
            self.opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        if self.opt is None:
            return
        if not self.deepspeed and self.max_grad_norm:  # DeepSpeed clips by its config's gradient_clipping
            self.acc.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.sched.step()

    def state_dict(self) -> dict:
        return {"sched": self.sched.state_dict() if self.sched else None}

    def load_state_dict(self, state: dict) -> None:
        if self.sched is not None and state.get("sched") is not None:
            self.sched.load_state_dict(state["sched"])


class RunState:
    """What a checkpoint holds beyond the model and optimizer (registered with
    ``accelerator.register_for_checkpointing``): the trainer (stage, step, head, head
    optimizer, queue, data position) and the backbone's LR schedule."""

    def __init__(self, trainer: Trainer, engine: AccelerateEngine):
        self.trainer, self.engine = trainer, engine

    def state_dict(self) -> dict:
        return {"trainer": self.trainer.state_dict(), "engine": self.engine.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.trainer.load_state_dict(state["trainer"])
        self.engine.load_state_dict(state["engine"])


def rss_gib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**30


# ------------------------------------------------------------------------------- checks


def deepspeed_file(cfg: Config) -> str:
    """The DeepSpeed JSON this run uses: ``e2e.deepspeed`` or the launcher's; both naming
    different files is an error."""
    ours = cfg.e2e.deepspeed
    launcher = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "") \
        if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true" else ""
    if ours and launcher and Path(ours).resolve() != Path(launcher).resolve():
        raise SmecError(f"e2e.deepspeed: {ours} but the launcher gave --deepspeed_config_file {launcher}; name one")
    return ours or launcher


def precision(cfg: Config) -> str:
    p = cfg.e2e.precision
    if p == "auto":
        return "bf16" if torch.cuda.is_available() else "fp32"
    return p


def check_deepspeed(ds: dict, source: str, cfg: Config, world: int, prec: str) -> dict:
    """Fill the ``auto`` values from the trainer's settings; a value that contradicts them
    is a one-line error naming the key. Returns the completed config."""
    e2e = cfg.e2e
    ds = json.loads(json.dumps(ds))

    def settle(key: str, want, what: str):
        have = ds.get(key, "auto")
        if have == "auto":
            ds[key] = want
        elif have != want:
            raise SmecError(f"{source}: {key}={have} contradicts {what}={want}")

    for section in ("optimizer", "scheduler"):
        if section in ds:
            raise SmecError(f"{source}: remove the '{section}' section: the trainer builds its own (separate "
                            f"backbone and head learning rates; a JSON optimizer also JIT-builds FusedAdam)")
    if "fp16" in ds and ds["fp16"].get("enabled") not in (False, "auto"):
        raise SmecError(f"{source}: fp16 is not supported; use bf16 (e2e.precision)")
    bf16 = ds.setdefault("bf16", {}).get("enabled", "auto")
    want_bf16 = prec == "bf16"
    if bf16 == "auto":
        ds["bf16"]["enabled"] = want_bf16
    elif bool(bf16) != want_bf16:
        raise SmecError(f"{source}: bf16.enabled={bf16} contradicts e2e.precision={prec}")
    settle("train_micro_batch_size_per_gpu", e2e.per_device_batch, "e2e.per_device_batch")
    settle("gradient_accumulation_steps", e2e.grad_accum, "e2e.grad_accum")
    settle("train_batch_size", e2e.per_device_batch * e2e.grad_accum * world,
           f"e2e.per_device_batch x e2e.grad_accum x {world} ranks")
    settle("gradient_clipping", e2e.max_grad_norm, "e2e.max_grad_norm")
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise SmecError(f"{source}: zero_optimization.stage={stage} is not 0-3")
    if e2e.backbone == "frozen":
        raise SmecError(f"{source}: DeepSpeed with e2e.backbone=frozen has nothing to train or shard; "
                        f"drop the DeepSpeed config (or use adapter mode: smec run)")
    if e2e.backbone == "qlora" and stage == 3:
        raise SmecError(f"{source}: ZeRO-3 with QLoRA is not supported here; use ZeRO-2 for QLoRA")
    for key, value in ds.get("zero_optimization", {}).items():
        if value == "auto" and key not in ("reduce_bucket_size", "stage3_prefetch_bucket_size",
                                           "stage3_param_persistence_threshold"):
            raise SmecError(f"{source}: zero_optimization.{key}='auto' cannot be filled by the trainer")
    return ds
