"""``smec train``: the backbone trains jointly with the SMEC head (end-to-end mode).

The backbone (frozen, full fine-tuning, LoRA or QLoRA) is prepared by Accelerate: plain DDP,
or DeepSpeed ZeRO-2/3 (optionally with CPU offload), under ``accelerate launch`` or
``torchrun`` (:mod:`smec_dist.train.engine`). The SMEC head is small and replicated on every
rank. Training runs through the same :class:`~smec_dist.train.loop.Trainer` as adapter mode:
one phase per SMRL stage, earlier stages frozen, with a
:class:`~smec_dist.train.pairs.PairTask` that encodes (query, positive) pairs with the backbone
instead of reading a cache. The loss is the supervised setting's
(:func:`smec_dist.config.setting_loss`).

Lifecycle: setup (checks, Accelerate, backbone, resume) -> run (stages, checkpoints, stage
exports) -> save (train_log.json) -> cleanup.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch

from .. import dist
from ..backbone import Encoder, check_backbone_mode, load_trainable, model_identity, model_width
from ..config import Config, dump_config, resolved_losses, setting_loss
from ..data import ensure_dataset, identical_ids, load_beir
from ..errors import SmecError
from ..io import atomic_dir, atomic_write_json, write_file_manifest
from ..method.export import save_head
from ..method.smrl import SMECHead, smec_phases
from ..tracking import Tracker, flatten
from ..train.checkpoint import Checkpoints, StopRequest, fingerprint
from ..train.engine import AccelerateEngine, RunState, adamw, check_deepspeed, deepspeed_file, precision, rss_gib
from ..train.loop import Trainer, lr_factor
from ..train.pairs import PairTask, load_pairs
from .base import Recipe, execute, held_results

log = logging.getLogger(__name__)


class E2EJob(Recipe):
    """One end-to-end training run: setup -> run -> save -> cleanup (see :func:`train_e2e`)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.out = Path(cfg.run.output_dir)
        self.tracker: Tracker | None = None
        self.acc = None

    # -- setup ----------------------------------------------------------------------------
    def setup(self) -> None:
        """Every check that can fail comes before the backbone is loaded or a step runs."""
        import torch._dynamo  # noqa: F401  (deepspeed.zero.Init needs it imported first)
        from accelerate import Accelerator
        from accelerate.utils import DeepSpeedPlugin, set_seed

        cfg, e2e = self.cfg, self.cfg.e2e
        prec = precision(cfg)
        check_backbone_mode(e2e.backbone)
        width = model_width(cfg.model.name)
        if cfg.run.dims[0] >= width:
            raise SmecError(f"run.dims: {cfg.run.dims[0]} is not below the backbone width {width}")
        world = int(os.environ.get("WORLD_SIZE", "1"))
        ds_path = deepspeed_file(cfg)
        plugin = None
        if ds_path:
            try:
                raw = json.loads(Path(ds_path).read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise SmecError(f"e2e.deepspeed: {ds_path} not found") from None
            except json.JSONDecodeError as exc:
                raise SmecError(f"{ds_path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc
            self.ds_config = check_deepspeed(raw, ds_path, cfg, world, prec)
            if cfg.train.nonfinite == "skip":
                raise SmecError("train.nonfinite=skip: not under DeepSpeed (its engine counts the micro-steps a "
                                "skipped step leaves out); use train.nonfinite=stop, or DDP (e2e.deepspeed='')")
            plugin = DeepSpeedPlugin(hf_ds_config=self.ds_config)
        zero = self.ds_config.get("zero_optimization", {}).get("stage", 0) if plugin is not None else None
        self.ckpts = Checkpoints(self.out / "checkpoints", fingerprint(cfg), e2e.keep_checkpoints,
                                 topology={"world_size": world, "zero_stage": zero})
        self.stop = StopRequest(self.out / "STOP")
        self._saved_step = -1
        self.ds = load_beir(ensure_dataset(cfg.data.dataset, cfg.data.data_dir))
        self.identical = identical_ids(self.ds, cfg.data.ignore_identical_ids)
        self.pairs = load_pairs(self.ds, e2e.split, self.identical.ignore)
        if self.out.exists() and not self.out.is_dir():
            raise SmecError(f"run.output_dir: {self.out} is a file, not a folder")
        held = held_results(self.out)
        if held and not e2e.resume and not cfg.run.overwrite:
            raise SmecError(f"run.output_dir: {self.out} holds another run ({', '.join(held)}); continue it with "
                            f"--resume auto, start over with --overwrite, or name another run.output_dir")

        if not torch.cuda.is_available() and world > 1:
            # Accelerate on CPU: without ACCELERATE_USE_CPU, ranks started by torchrun are not
            # wrapped in DDP at all (each would train alone); with it, DeepSpeed is switched
            # off (DeepSpeed picks the CPU by itself). Set it exactly when it is right.
            if plugin is None:
                os.environ["ACCELERATE_USE_CPU"] = "1"
            else:
                os.environ.pop("ACCELERATE_USE_CPU", None)
        self.acc = Accelerator(mixed_precision="bf16" if prec == "bf16" else "no",
                               gradient_accumulation_steps=e2e.grad_accum, deepspeed_plugin=plugin,
                               kwargs_handlers=dist.process_group_kwargs(e2e.collective_timeout_s))
        if ds_path and self.acc.state.deepspeed_plugin is None:
            raise SmecError(f"e2e.deepspeed: {ds_path} was given but Accelerate runs without DeepSpeed")
        if world > 1 and self.acc.num_processes != world:
            raise SmecError(f"Accelerate sees {self.acc.num_processes} process(es) but the launcher started "
                            f"{world}: gradients would not be synchronised")
        if world > 1 and self.acc.distributed_type.name == "NO":
            raise SmecError(f"{world} ranks but Accelerate prepared no distributed wrapper; "
                            f"launch with accelerate launch --multi_gpu or torchrun")
        if held and cfg.run.overwrite and not e2e.resume:  # start over: the old run's files go first
            if dist.is_main():
                for name in held:
                    path = self.out / name
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
            dist.barrier()
        # after Accelerate set up the process group: the ranks verify the checkpoint's files together
        self.resume_from = self.ckpts.resolve(e2e.resume)
        if self.resume_from is not None and self.ckpts.needs_universal(self.resume_from):
            # ZeRO-1/2 on another number of ranks: DeepSpeed re-partitions a universal checkpoint
            self.resume_from = self.ckpts.universal(self.resume_from)
            self.acc.state.deepspeed_plugin.deepspeed_config["checkpoint"] = {"load_universal": True}
        set_seed(cfg.train.seed)
        self.device = self.acc.device
        model, tok, pooling, append_eos = load_trainable(
            cfg.model.name, e2e.backbone, pooling=cfg.model.pooling, lora_r=e2e.lora_r,
            lora_alpha=e2e.lora_alpha, lora_dropout=e2e.lora_dropout, lora_targets=e2e.lora_targets,
            gradient_checkpointing=e2e.gradient_checkpointing,
            dtype="bfloat16" if prec == "bf16" and e2e.backbone != "full" else "float32",
            local_rank=self.acc.local_process_index)
        self.tokenizer, self.pooling, self.append_eos = tok, pooling, append_eos
        trainable = [p for p in model.parameters() if p.requires_grad]
        # under ZeRO-3 the weights are already partitioned here: ds_numel is the full size
        self.n_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
        self.n_trainable = sum(getattr(p, "ds_numel", p.numel()) for p in trainable)
        log.info("backbone %s (%s): %.1fM parameters, %.2fM trainable; %s, %s, %d rank(s)", cfg.model.name,
                 e2e.backbone, self.n_params / 1e6, self.n_trainable / 1e6, prec,
                 f"DeepSpeed {ds_path}" if ds_path else "DDP" if world > 1 else "one process", world)

        total_steps = e2e.steps_per_stage * len(cfg.run.dims)
        opt = sched = None
        if trainable:
            opt = adamw(trainable, lr=e2e.backbone_lr)
            # not prepared: stepped once per optimizer step by the engine (see AccelerateEngine);
            # DeepSpeed and Accelerate keep this optimizer's param_groups, so its lr is the one used
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda i: lr_factor(i, total_steps, "cosine", e2e.warmup_steps))
            model, opt = self.acc.prepare(model, opt)
            # from_pretrained returns eval mode: dropout off and, in transformers, gradient
            # checkpointing inactive (it only recomputes in training mode)
            model.train()
        else:
            model = model.to(self.device).eval()
            for p in model.parameters():
                p.requires_grad_(False)
        self.model = model
        self.encoder = Encoder(model, tok, pooling=pooling, normalize=True, max_length=cfg.model.max_length,
                               append_eos=append_eos, device=self.device, width=width)
        self.head = SMECHead(self.encoder.dim, cfg.run.dims, cfg.train.hidden, tau=cfg.train.ads_tau,
                             noise=cfg.train.ads_noise).to(self.device)
        self.loss = setting_loss(cfg, "supervised")  # trained on judged pairs: the supervised setting's loss
        self.task = PairTask(self.pairs, self.encoder, self.head, cfg, self.loss, self.device)
        phases = smec_phases(self.head, self.task.basis, cfg.train)
        self.engine = AccelerateEngine(self.acc, model, opt, sched, e2e.max_grad_norm)
        self.trainer = Trainer(self.head, phases, self.task, cfg.train, engine=self.engine,
                               progress=cfg.run.show_progress() and dist.is_main(), log_fn=self._log,
                               on_step_end=self._on_step_end, on_phase_end=self._on_phase_end,
                               should_stop=self.stop.requested)
        # the run state (stage, step, head, its optimizer, queue, data position, LR schedule) is
        # saved by Checkpoints as safetensors + JSON, not registered with Accelerate (which
        # would pickle it and unpickle it with weights_only=False)
        self.state = RunState(self.trainer, self.engine)
        if self.resume_from is not None:
            log.info("resuming from %s", self.resume_from)
            self.acc.load_state(str(self.resume_from), load_kwargs={"weights_only": True})
            self.state.load_state_dict(self.ckpts.load_run_state(self.resume_from))
        if dist.is_main():
            self.out.mkdir(parents=True, exist_ok=True)
            dump_config(cfg, self.out / "config.yaml", resolved={"loss": resolved_losses(cfg, ["supervised"])})
        t = cfg.track
        self.tracker = Tracker(t.backend, self.out, cfg.to_dict(), t.project, t.name, t.mode, enabled=dist.is_main())
        self.t0 = self._t_last = time.perf_counter()

    # -- hooks ----------------------------------------------------------------------------
    def _global_step(self, trainer: Trainer) -> int:
        return trainer.phase_index * self.cfg.e2e.steps_per_stage + trainer.step

    def _position(self, trainer: Trainer) -> dict:
        return {"stage": trainer.phase_index + 1, "step_in_stage": trainer.step}

    def _log(self, row: dict) -> None:
        """Per-step tracking: loss (mean over ranks), learning rates, throughput, memory, memory
        queue fill and the mean similarity of each query's hardest memory sample."""
        now = time.perf_counter()
        pairs = self.task.global_batch * self.cfg.e2e.grad_accum
        metrics = {"train/loss": row["loss"], "train/stage": row["phase_index"] + 1, "lr/head": row["lr"],
                   "throughput/pairs_per_s": pairs / max(now - self._t_last, 1e-9),
                   "memory/rss_gib": rss_gib(), "queue/fill": len(self.task.queue),
                   f"stage{row['phase_index'] + 1}/loss": row["loss"]}
        self._t_last = now
        if self.engine.sched is not None:
            metrics["lr/backbone"] = self.engine.sched.get_last_lr()[0]
        if self.task.last_top1 is not None:
            metrics["queue/top1_sim"] = self.task.last_top1
        if torch.cuda.is_available():
            metrics["memory/cuda_max_gib"] = torch.cuda.max_memory_allocated() / 2**30
        self.tracker.log(metrics, step=self._global_step(self.trainer) + 1)

    def _on_step_end(self, trainer: Trainer) -> None:
        every = self.cfg.e2e.checkpoint_every
        if every and trainer.step % every == 0 and trainer.step < trainer.task.steps:
            self._checkpoint(trainer)

    def _on_phase_end(self, trainer: Trainer, index: int) -> None:
        self.task.end_phase(trainer.phases[index], index)
        probe, stats = self.task.probes[str(index + 1)], trainer.stats[trainer.phases[index].name]
        self.tracker.log({f"stage{index + 1}/probe_loss_start": probe["start"],
                          f"stage{index + 1}/probe_loss_end": probe["end"],
                          f"stage{index + 1}/seconds": stats["seconds"]}, step=self._global_step(trainer))
        self.export(index)
        self._checkpoint(trainer)

    def _checkpoint(self, trainer: Trainer) -> Path | None:
        step = self._global_step(trainer)
        if step == self._saved_step:  # e.g. a stop request right after a periodic save
            return None
        self._saved_step = step
        return self.ckpts.save(self.acc, step, self._position(trainer), self.state.state_dict())

    # -- exports --------------------------------------------------------------------------
    def export(self, index: int) -> Path:
        """Stage ``index + 1``'s model, loadable without DeepSpeed: ``head.safetensors`` (the
        trained stages and their index lists), the backbone (a PEFT adapter, full weights,
        or a reference to the frozen one), the tokenizer, ``smec.json`` and ``manifest.json``
        (every file's size and sha256, checked when the export is loaded). Built in a
        temporary folder and renamed into place (:func:`smec_dist.io.atomic_dir`)."""
        e2e = self.cfg.e2e
        final = self.out / "stages" / f"stage{index + 1}"
        state = self.acc.get_state_dict(self.model) if e2e.backbone != "frozen" else None  # a collective
        if dist.is_main():
            with atomic_dir(final) as tmp:
                self._write_export(tmp, index, state)
            log.info("stage %d exported to %s", index + 1, final)
        dist.barrier()
        return final

    def _write_export(self, tmp: Path, index: int, state: dict | None) -> None:
        """The files of a stage export (see :meth:`export`), written into ``tmp``."""
        e2e = self.cfg.e2e
        save_head(self.head.first_stages(index + 1), tmp / "head.safetensors", about={
            "base_model": model_identity(self.cfg.model.name), "backbone": e2e.backbone, "pooling": self.pooling,
            "append_eos": self.append_eos, "max_length": self.cfg.model.max_length, "normalize": True,
            "instructions": {"query": e2e.query_instruction, "doc": e2e.doc_instruction}, "method": "smec",
            "setting": "supervised", "trained_by": "smec train", "stage": index + 1,
            "note": "the backbone in this export's backbone/ folder makes the embeddings this head expects"})
        if state is not None:
            self.acc.unwrap_model(self.model).save_pretrained(tmp / "backbone", state_dict=state,
                                                              safe_serialization=True)
        self.tokenizer.save_pretrained(tmp / "backbone")
        (tmp / "smec.json").write_text(json.dumps({
            "base_model": self.cfg.model.name, "backbone": e2e.backbone, "pooling": self.pooling,
            "append_eos": self.append_eos, "max_length": self.cfg.model.max_length,
            "query_instruction": e2e.query_instruction, "doc_instruction": e2e.doc_instruction,
            "dims": self.cfg.run.dims[:index + 1], "full_dim": self.encoder.dim}, indent=1), encoding="utf-8")
        write_file_manifest(tmp, sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file()))

    # -- run / save -----------------------------------------------------------------------
    def run(self) -> dict:
        self.stop.install()  # SIGUSR1 / SIGTERM: stop after the current step, with a checkpoint
        try:
            stats = self.trainer.fit()
        finally:
            self.stop.uninstall()
        result = {"stages": stats, "probe_loss": self.task.probes, "losses": self.trainer.losses,
                  "skipped_steps": self.trainer.skipped}
        if self.trainer.stopped:
            self._checkpoint(self.trainer)
            pos = self._position(self.trainer)
            log.warning("stopped (%s) at stage %d step %d of %d with a checkpoint; continue with --resume auto",
                        self.stop.reason(), pos["stage"], pos["step_in_stage"], self.cfg.e2e.steps_per_stage)
            result["stopped"] = pos
        return result

    def save(self, result: dict) -> dict:
        summary = {"model": self.cfg.model.name, "backbone": self.cfg.e2e.backbone, "world_size": dist.world_size(),
                   "deepspeed": bool(self.acc.state.deepspeed_plugin), "parameters": self.n_params,
                   "trainable_parameters": self.n_trainable, "dims": self.cfg.run.dims,
                   "seconds": round(time.perf_counter() - self.t0, 2), **result}
        self.tracker.summary(flatten("", {k: summary[k] for k in ("parameters", "trainable_parameters", "seconds",
                                                                  "probe_loss")}))
        if dist.is_main() and "stopped" not in summary:  # train_log.json: a finished run's
            atomic_write_json(self.out / "train_log.json", summary, indent=1)
        dist.barrier()
        return summary

    def cleanup(self) -> None:
        if self.tracker is not None:
            self.tracker.finish()
        if self.acc is not None:
            # Drop the prepared model (its DDP reducer holds the process group and gloo's work
            # objects) and collect it while the interpreter is whole: freed during interpreter
            # shutdown instead, gloo's threads can abort the process (SIGABRT, "terminate called
            # without an active exception") after a successful run.
            self.model = self.engine = self.trainer = self.task = self.encoder = self.state = None
            self.acc.free_memory()
            gc.collect()
            self.acc.end_training()


def train_e2e(cfg: Config) -> dict:
    """Run end-to-end training (``smec train``) and return its summary."""
    return execute(E2EJob(cfg))
