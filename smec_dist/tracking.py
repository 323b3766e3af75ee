"""Experiment tracking: Weights & Biases (offline unless told otherwise), TensorBoard, or off.

Only the main process logs. W&B with ``track.mode: auto`` runs online when ``WANDB_API_KEY``
is set, respects ``WANDB_MODE`` when that is set, and otherwise writes an offline run under
``<run.output_dir>/wandb`` (``wandb sync`` uploads it later): a missing key never fails a run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .errors import SmecError

log = logging.getLogger(__name__)


class Tracker:
    """``log`` per-step scalars, ``summary`` final figures, ``finish`` at the end.

    Args:
        backend: ``wandb``, ``tensorboard`` or ``none``.
        run_dir: the run's output folder (W&B and TensorBoard files go under it).
        config: the resolved config, recorded with the run.
        project / name / mode: W&B project, run name, and ``auto|offline|online|disabled``.
        enabled: False on every process but the main one.
    """

    def __init__(self, backend: str, run_dir: str | Path, config: dict, project: str = "smec-dist",
                 name: str = "", mode: str = "auto", enabled: bool = True):
        self.backend = backend if enabled else "none"
        self.run = self.writer = None
        run_dir = Path(run_dir)
        if self.backend == "wandb":
            try:
                import wandb
            except ImportError as exc:
                raise SmecError("track.backend=wandb needs wandb: pip install wandb==0.31.0 "
                                "(or track.backend=none)") from exc
            if mode == "auto":
                mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
            run_dir.mkdir(parents=True, exist_ok=True)
            try:
                self.run = wandb.init(project=project, name=name or run_dir.name, dir=str(run_dir), mode=mode,
                                      config=config, reinit="finish_previous")
            except Exception as exc:  # a bad key, no network: one line, not wandb's traceback
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                why = "WANDB_API_KEY is set, so track.mode=auto went online" if os.environ.get("WANDB_API_KEY") \
                    and not os.environ.get("WANDB_MODE") else f"track.mode resolved to {mode}"
                raise SmecError(f"track: W&B could not start a run ({type(exc).__name__}: {first}); {why}: set "
                                f"WANDB_MODE=offline or track.mode=offline, or track.backend=none") from None
            log.info("W&B run %s (%s)%s", self.run.name, mode,
                     f": {self.run.dir}" if mode == "offline" else "")
        elif self.backend == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise SmecError("track.backend=tensorboard needs tensorboard: pip install tensorboard") from exc
            self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        elif self.backend != "none":
            raise SmecError(f"track.backend: '{backend}' is not one of wandb, tensorboard, none")

    def log(self, metrics: dict, step: int) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)
        elif self.writer is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, step)

    def summary(self, metrics: dict) -> None:
        if self.run is not None:
            self.run.summary.update(metrics)
        else:  # TensorBoard has no summary: final figures go in as step-0 scalars
            self.log(metrics, step=0)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def flatten(prefix: str, value) -> dict:
    """``{"a": {"b": 1}}`` -> ``{"prefix/a/b": 1}`` (scalars only), for summaries."""
    out = {}
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(flatten(f"{prefix}/{k}" if prefix else str(k), v))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out[prefix] = value
    return out
