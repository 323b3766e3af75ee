"""Checkpoints of end-to-end runs: complete or ignored, and never from another config.

A checkpoint is an ``accelerator.save_state`` folder (model or ZeRO partitions, optimizer,
every rank's RNG states) plus our run state (SMRL stage, step within it, head, head optimizer,
S-XBM queue, data position, LR schedule) in ``run_state.safetensors`` + ``run_state.json``
(:func:`smec_dist.io.save_tree`: no pickle). It is written under
``<name>.partial``; only when every rank has finished writing does the main process add
``complete.json`` (the config fingerprint and the position) and rename the folder to its
final name. A kill at any moment therefore leaves either a complete checkpoint or a
``.partial`` folder, which resume never takes (and the next save clears).

``complete.json`` also lists every file of the checkpoint with its size and sha256 (hashed by
all ranks, each a share of the files). ``--resume auto`` verifies the newest checkpoint and,
when a file is missing, truncated or altered, warns and falls back to the previous complete
one; older checkpoints are pruned only after a newer one was written and hashed.

Trust boundary: Accelerate and DeepSpeed keep some of a checkpoint in pickles (RNG states,
optimizer and ZeRO partition files; Accelerate loads its files with ``weights_only=True``,
DeepSpeed its partitions with ``weights_only=False``). A checkpoint is resumed only when
every file matches the sha256 table of its ``complete.json``, and one without a table is
refused: that proves the files are the ones the run wrote, not who wrote them. Resume only
from checkpoints you (or people you trust) wrote.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import shutil
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

from .. import dist
from ..config import Config, setting_loss
from ..errors import SmecError
from ..io import atomic_dir, atomic_write_json, file_table, file_table_problem, load_tree, replace_dir, save_tree

log = logging.getLogger(__name__)

MARKER = "complete.json"
RUN_STATE = "run_state"  # run_state.safetensors + run_state.json
_NAME = re.compile(r"^step-(\d+)$")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_difference(saved: dict, current: dict) -> list[str]:
    """Keys whose values differ between two fingerprints, as ``key: saved -> current``."""
    a, b = _flatten(saved), _flatten(current)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


class Checkpoints:
    """The checkpoints of one run folder.

    Args:
        root: ``<run.output_dir>/checkpoints``.
        fingerprint: the settings a checkpoint must match to be resumed (model, data,
            dims, head and backbone training settings; not the logging or resume keys).
        keep: complete checkpoints kept; older ones are deleted after each save.
    """

    def __init__(self, root: str | Path, fingerprint: dict, keep: int = 2, topology: dict | None = None):
        self.root, self.fingerprint, self.keep = Path(root), fingerprint, keep
        # how the run is laid out over processes: {"world_size": W, "zero_stage": Z or None (no DeepSpeed)}
        self.topology = topology or {}

    def complete(self) -> list[tuple[int, Path]]:
        """Complete checkpoints as (global step, folder), oldest first."""
        found = []
        if self.root.is_dir():
            for p in self.root.iterdir():
                m = _NAME.match(p.name)
                if m and (p / MARKER).is_file():
                    found.append((int(m.group(1)), p))
        return sorted(found)

    def _hash_files(self, folder: Path) -> dict:
        """:func:`file_table` of every file under ``folder``, hashed by all ranks together
        (rank r takes every world-th file); the same result on every rank."""
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MARKER)
        out: dict = {}
        for part in dist.all_gather_object(file_table(folder, files[dist.rank()::dist.world_size()])):
            out.update(part)
        return dict(sorted(out.items()))

    def damage(self, folder: Path, info: dict) -> str | None:
        """What is wrong with the files of a complete checkpoint (``None``: all intact). One
        without a sha256 table (written before checksums) is never trusted: its pickles would be
        loaded unchecked."""
        listed = info.get("files")
        if listed is None:
            return f"{folder / MARKER} has no sha256 table of its files: not resumed (its pickles would be unchecked)"
        return file_table_problem(folder, listed, lambda: self._hash_files(folder))

    def check(self, folder: Path) -> dict:
        """The marker of a complete checkpoint written by this config, else a SmecError."""
        marker = folder / MARKER
        if not marker.is_file():
            raise SmecError(f"{folder}: not a complete checkpoint (no {MARKER}; a kill during its write?)")
        try:
            info = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise SmecError(f"{marker}: unreadable checkpoint marker ({exc})") from exc
        diff = config_difference(info.get("fingerprint", {}), self.fingerprint)
        if diff:
            more = f" (+{len(diff) - 3} more)" if len(diff) > 3 else ""
            raise SmecError(f"{folder}: checkpoint of another config ({'; '.join(diff[:3])}{more}); "
                            f"use another run.output_dir or e2e.resume=''")
        self._check_topology(folder, info.get("topology", {}))
        return info

    def _check_topology(self, folder: Path, saved: dict) -> None:
        """Resuming on another number of processes: fine without DeepSpeed (weights and optimizer
        are whole in every checkpoint; the data order from then on follows the new global
        batch); under ZeRO-1/2 through DeepSpeed's universal checkpoint (:meth:`universal`);
        ZeRO-3 is refused with the reason."""
        now = self.topology
        if not saved or not now:
            return
        was, then = saved.get("world_size"), now.get("world_size")
        zero_then, zero_now = saved.get("zero_stage"), now.get("zero_stage")
        if zero_then != zero_now:
            raise SmecError(f"{folder}: written under {_zero_name(zero_then)}, this run is under "
                            f"{_zero_name(zero_now)}: resume with the same e2e.deepspeed")
        if was == then:
            return
        if zero_then is not None and zero_then >= 3:
            raise SmecError(f"{folder}: written by {was} process(es) under DeepSpeed ZeRO-3, this run has {then}: "
                            f"ZeRO-3 partitions weights and optimizer states per rank; resume with {was} processes, "
                            f"or convert it with python -m deepspeed.checkpoint.ds_to_universal and load that")
        log.warning("%s was written by %s process(es), this run has %s: resuming%s; the global batch and from "
                    "there on the data order differ from an uninterrupted run", folder, was, then,
                    " through a DeepSpeed universal checkpoint" if zero_then is not None else "")

    def needs_universal(self, folder: Path) -> bool:
        """Whether ``folder`` (a complete checkpoint) is ZeRO-partitioned for another world size."""
        saved = json.loads((folder / MARKER).read_text(encoding="utf-8")).get("topology", {})
        return (bool(saved) and saved.get("zero_stage") is not None
                and saved.get("world_size") != self.topology.get("world_size"))

    def universal(self, folder: Path) -> Path:
        """``folder`` converted to DeepSpeed's universal layout (ZeRO-1/2 optimizer states
        merged per parameter, loadable on any number of ranks), as ``<folder>/universal``: the
        model states under ``pytorch_model/``, the trainer state and the RNG states copied
        beside them. Converted once (rank 0, atomically); load it with the DeepSpeed config's
        ``checkpoint.load_universal: true``."""
        out = folder / "universal"
        if dist.is_main() and not (out / MARKER).is_file():
            from deepspeed.checkpoint.ds_to_universal import main as to_universal

            with atomic_dir(out) as tmp:
                args = SimpleNamespace(input_folder=str(folder / "pytorch_model"),
                                       output_folder=str(tmp / "pytorch_model"), num_extract_workers=1,
                                       num_merge_workers=1, keep_temp_folder=False, strict=True,
                                       inject_missing_state=True)
                log.info("converting %s to a DeepSpeed universal checkpoint", folder)
                with contextlib.redirect_stdout(io.StringIO()):  # its progress prints, per parameter
                    to_universal(args)
                for p in folder.iterdir():
                    if p.is_file() and p.name not in (MARKER, "latest") and not p.name.startswith("zero_to_"):
                        shutil.copy2(p, tmp / p.name)
                shutil.copy2(folder / MARKER, tmp / MARKER)
        dist.barrier()
        return out

    def resolve(self, resume: str) -> Path | None:
        """The checkpoint ``e2e.resume`` names: ``""`` none, ``auto`` the newest complete one
        (none yet: a fresh start), else a folder, which must be complete and match."""
        if not resume:
            return None
        if resume == "auto":
            found = self.complete()
            if not found:
                log.info("resume=auto: no complete checkpoint under %s, starting fresh", self.root)
                return None
            for _, folder in reversed(found):
                problem = self.damage(folder, self.check(folder))
                if problem is None:
                    return folder
                log.warning("checkpoint %s is damaged (%s): falling back to the previous one", folder, problem)
            raise SmecError(f"{self.root}: every complete checkpoint is damaged (newest: {found[-1][1]}); "
                            f"start over with e2e.resume='' or another run.output_dir")
        folder = Path(resume)
        if not folder.is_dir():
            raise SmecError(f"e2e.resume: {folder} is not a folder")
        problem = self.damage(folder, self.check(folder))
        if problem:
            raise SmecError(f"e2e.resume: checkpoint {folder} is damaged: {problem}")
        return folder

    def load_run_state(self, folder: Path) -> dict:
        """The run state a verified checkpoint holds (safetensors + JSON, no pickle)."""
        try:
            return load_tree(Path(folder) / RUN_STATE)
        except (OSError, ValueError, KeyError) as exc:
            raise SmecError(f"{folder}: its run state ({RUN_STATE}.safetensors/.json) cannot be read "
                            f"({type(exc).__name__}: {exc})") from exc

    def save(self, accelerator, global_step: int, position: dict, run_state: dict) -> Path:
        """Write a checkpoint from every rank (``run_state``: the trainer's, the same on every
        rank, written by rank 0); complete only once all ranks have written."""
        final = self.root / f"step-{global_step:08d}"
        partial = final.with_name(final.name + ".partial")
        if dist.is_main():
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(partial, ignore_errors=True)  # a leftover of a killed save
        dist.barrier()
        accelerator.save_state(str(partial))
        if dist.is_main():
            save_tree(partial / RUN_STATE, run_state)
        dist.barrier()  # every rank's shards are on disk
        files = self._hash_files(partial)
        if dist.is_main():
            atomic_write_json(partial / MARKER, {"fingerprint": self.fingerprint, "global_step": global_step,
                                                 **position, "topology": self.topology, "files": files}, indent=1)
            replace_dir(partial, final)  # the same step may be saved again (a stage end after a periodic save)
            for _, old in self.complete()[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        dist.barrier()
        log.info("checkpoint %s (%s)", final, ", ".join(f"{k} {v}" for k, v in position.items()))
        return final


def fingerprint(cfg: Config) -> dict:
    """The settings a checkpoint must share with the run resuming it (the supervised loss as
    resolved, so a change of its keys is caught whichever key changed)."""
    # not in it: how the run is kept and watched, which does not change what it computes
    e2e = {k: v for k, v in asdict(cfg.e2e).items()
           if k not in ("resume", "checkpoint_every", "keep_checkpoints", "collective_timeout_s")}
    model = {k: v for k, v in asdict(cfg.model).items() if k != "device"}
    train = {k: v for k, v in asdict(cfg.train).items() if k not in ("nonfinite", "max_skipped")}
    return {"data": asdict(cfg.data), "model": model, "dims": list(cfg.run.dims), "train": train, "e2e": e2e,
            "loss": asdict(setting_loss(cfg, "supervised"))}


def _zero_name(stage) -> str:
    return "DDP / one process (no DeepSpeed)" if stage is None else f"DeepSpeed ZeRO-{stage}"


class StopRequest:
    """A request to stop training at the next step boundary, with a checkpoint.

    Two ways to ask, both safe at any moment:

    * a signal to the training processes: ``SIGUSR1`` (what ``#SBATCH --signal=USR1@120``
      sends to the job steps) or ``SIGTERM`` (preemption, ``scancel``, torchrun stopping its
      workers);
    * a file: ``<run.output_dir>/STOP`` (what ``slurm/smrl.sh`` writes when the batch shell
      gets the pre-timeout signal; ``touch`` it by hand for the same effect). Every rank sees
      it on a shared file system; one process writing it is enough. A file older than this
      process is a leftover of an earlier stop and is ignored, so resuming needs no clean-up.

    :meth:`requested` is asked on every rank after every optimizer step, and the ranks agree
    (any rank asked means all stop), so they stop at the same step.
    """

    SIGNALS = ("SIGUSR1", "SIGTERM")

    def __init__(self, stop_file: str | Path):
        import time

        self.stop_file = Path(stop_file)
        self.since = time.time()
        self.signal: str | None = None
        self._previous: dict = {}

    def install(self) -> "StopRequest":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                if hasattr(signal, name):
                    sig = getattr(signal, name)
                    self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def uninstall(self) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        import signal

        if self.signal is None:
            self.signal = signal.Signals(signum).name
            log.warning("%s received: stopping after this step with a checkpoint", self.signal)

    def requested(self) -> bool:
        """Whether any rank was asked to stop (a collective: every rank calls it at the same step)."""
        return dist.any_rank(self.signal is not None or self._file_is_new())

    def _file_is_new(self) -> bool:
        try:
            return self.stop_file.stat().st_mtime >= self.since
        except OSError:
            return False

    def reason(self) -> str:
        return f"signal {self.signal}" if self.signal else f"{self.stop_file} exists"
