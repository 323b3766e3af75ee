"""End-to-end mode: the backbone trains jointly with the SMEC head.

The backbone (frozen, full fine-tuning, LoRA or QLoRA) is prepared by Accelerate: plain DDP,
or DeepSpeed ZeRO-2/3 (optionally with CPU offload), under ``accelerate launch`` or
``torchrun``. The SMEC head is small and replicated on every rank. Training runs through
the same :class:`~smec_dist.trainer.Trainer` as adapter mode: one phase per SMRL stage,
earlier stages frozen, with a :class:`PairTask` that encodes (query, positive) pairs with
the backbone instead of reading a cache.

Per step, on each rank: encode the rank's queries and positives in one forward pass;
gather the positives from all ranks with gradients (in-batch negatives across ranks, labels
offset by rank); take each query's top-k hard samples from the S-XBM queue (full-width,
detached embeddings of earlier batches, identical on every rank because they are gathered
before being enqueued); loss = InfoNCE + listwise KL (compressed vs full-width similarity)
at every width of the current stage, plus InfoNCE on the full-width embedding. See
:mod:`smec_dist.dist` for the one place the loss scale is decided.

References:
    Zhang et al., "SMEC", EMNLP 2025.
    Wang et al., "Cross-Batch Memory for Embedding Learning", CVPR 2020.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from . import dist
from .backbone import Encoder, check_backbone_mode, load_trainable, model_width
from .cache import write_file_manifest
from .checkpoint import Checkpoints, StopRequest
from .config import Config, dump_config
from .data import load_beir
from .data.download import ensure_dataset
from .errors import SmecError
from .head import SMECHead, save_head
from .memory import XBMQueue
from .tracking import Tracker, flatten
from .trainer import Phase, Positives, Samples, Task, Trainer, _lr_factor, _some, objective, smec_phases

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------- data


@dataclass
class PairSet:
    """Judged (query, document) pairs of one qrels split.

    Attributes:
        query_texts: the split's queries with at least one positive.
        positives: per query, the corpus rows judged relevant (score > 0).
        doc_texts / doc_ids: the corpus, by row.
    """

    query_ids: list[str]
    query_texts: list[str]
    positives: list[list[int]]
    doc_ids: list[str]
    doc_texts: list[str]


def load_pairs(ds, split: str) -> PairSet:
    if split not in ds.qrels:
        raise SmecError(f"e2e.split: '{split}' is not a split of {ds.root} (present: {', '.join(ds.splits)})")
    doc_ids = ds.doc_ids()
    row = {d: i for i, d in enumerate(doc_ids)}
    qids, texts, pos = [], [], []
    for qid, judged in ds.qrels[split].items():
        rows = sorted(row[d] for d, score in judged.items() if score > 0 and d in row)
        if rows and qid in ds.queries:
            qids.append(qid)
            texts.append(ds.queries[qid])
            pos.append(rows)
    if not qids:
        raise SmecError(f"e2e.split: '{split}' of {ds.root} has no query with a positive judgment")
    return PairSet(qids, texts, pos, doc_ids, ds.doc_texts())


# ---------------------------------------------------------------------------------- task


class PairTask(Task):
    """Batches of (query, positive) pairs encoded by the backbone (see module docstring).

    Every rank draws the same global batch (one seeded permutation per epoch, the same
    positive picked for each query) and encodes its own slice, so two ranks see exactly
    what one process would see over the concatenated batch.

    Args:
        pairs: the training pairs.
        encoder: the (prepared) backbone with its tokenizer and pooling.
        cfg: the config (``e2e`` for batches and instructions, ``train`` for the head).
        head_cfg: ``cfg.train`` with the end-to-end loss weights.
    """

    def __init__(self, pairs: PairSet, encoder: Encoder, head: SMECHead, cfg: Config, head_cfg, device):
        self.pairs, self.encoder, self.head, self.cfg, self.head_cfg = pairs, encoder, head, cfg, head_cfg
        self.device = device
        self.probes: dict[str, dict[str, float]] = {}  # stage -> probe loss at its start and end
        self.steps = cfg.e2e.steps_per_stage
        self.local = cfg.e2e.per_device_batch
        self.world, self.rank = dist.world_size(), dist.rank()
        self.global_batch = self.local * self.world
        if self.global_batch > len(pairs.query_ids):
            raise SmecError(f"e2e.per_device_batch: {self.local} x {self.world} ranks = {self.global_batch} queries "
                            f"per step, but split '{cfg.e2e.split}' has only {len(pairs.query_ids)}")
        self.queue = XBMQueue(cfg.train.queue_size, encoder.dim, device=device)
        self.epoch, self.cursor = 0, 0
        self._perm_epoch, self._perm_cache = -1, torch.empty(0, dtype=torch.long)
        self.picker = torch.Generator().manual_seed(cfg.train.seed + 1)
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self.last_top1: float | None = None  # mean similarity of each query's hardest memory sample

    # -- data position --------------------------------------------------------------------
    def _perm(self) -> torch.Tensor:
        """This epoch's query order (a function of seed and epoch, so a resumed run gets it back)."""
        if self._perm_epoch != self.epoch:
            self._perm_cache = torch.randperm(len(self.pairs.query_ids), generator=torch.Generator().manual_seed(
                self.cfg.train.seed * 100003 + self.epoch))
            self._perm_epoch = self.epoch
        return self._perm_cache

    def next_global_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(global batch,) query indices and the positive row picked for each; the same on
        every rank. A partial batch at an epoch's end is dropped (ranks need equal shapes)."""
        if self.cursor + self.global_batch > len(self.pairs.query_ids):
            self.epoch, self.cursor = self.epoch + 1, 0
        idx = self._perm()[self.cursor:self.cursor + self.global_batch]  # (W * b,)
        self.cursor += self.global_batch
        picks = torch.tensor([r[int(torch.randint(len(r), (1,), generator=self.picker))]
                              for r in (self.pairs.positives[i] for i in idx.tolist())])  # (W * b,)
        return idx, picks

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "picker": self.picker.get_state(),
                "queue": self.queue.state_dict(), "probes": self.probes}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self.picker.set_state(state["picker"])
        self.queue.load_state_dict(state["queue"])
        self.probes = {k: dict(v) for k, v in state["probes"].items()}

    # -- the loss -------------------------------------------------------------------------
    def embed(self, texts: list[str]) -> torch.Tensor:
        return self.encoder.forward(self.encoder.tokenize(texts))  # (n, D) fp32, L2-normalised

    def embed_pairs(self, queries: torch.Tensor, docs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of the queries and of the documents (with their instructions).

        Two forward passes, each batch padded to its own longest text: queries are short, and
        one pass over both would pad them to the documents' length (on SciFact at 64 tokens,
        14% of a step's CPU time went to that padding)."""
        e2e = self.cfg.e2e
        q = self.embed([e2e.query_instruction + self.pairs.query_texts[i] for i in queries.tolist()])
        d = self.embed([e2e.doc_instruction + self.pairs.doc_texts[j] for j in docs.tolist()])
        return q, d  # (b, D), (b, D)

    @contextlib.contextmanager
    def eval_mode(self):
        model = self.encoder.model
        was_training = model.training
        model.eval()
        try:
            yield
        finally:
            model.train(was_training)

    def loss(self, phase: Phase, step: int) -> torch.Tensor:
        e2e, b, r = self.cfg.e2e, self.local, self.rank
        idx, picks = self.next_global_batch()
        mine, my_picks = idx[r * b:(r + 1) * b], picks[r * b:(r + 1) * b]  # (b,), (b,)
        q, d = self.embed_pairs(mine, my_picks)  # (b, D), (b, D)
        d_all = dist.gather(d)  # (W * b, D) every rank's positives, with gradients
        slots, sims = self.queue.topk(q.detach(), self.head_cfg.topk)  # (b, k), (b, k)
        self.last_top1 = float(sims[:, 0].mean()) if sims.shape[1] else None
        uniq, inverse = torch.unique(slots, return_inverse=True)  # (u,), (b, k)
        samples = Samples(self.queue.emb[uniq], self.queue.ids[uniq], inverse, sims)
        pos = Positives(d_all, picks.to(self.device), torch.arange(b, device=self.device) + r * b,
                        [self.pairs.positives[i] for i in mine.tolist()])
        self._pending = (d_all.detach(), picks)  # gathered already: every rank enqueues the same
        self._last_batch = idx

        def student(x):  # the backbone's own full-width embedding, then the stage's widths
            return [(e2e.full_weight, F.normalize(x, dim=-1))] + phase.student(x)

        return objective(student, q, samples, pos, self.head_cfg)

    def describe_batch(self) -> str:
        idx = getattr(self, "_last_batch", None)
        if idx is None:
            return "(no batch yet)"
        return f"split '{self.cfg.e2e.split}' queries " + _some([self.pairs.query_ids[i] for i in idx.tolist()])

    def discard_micro_step(self) -> None:
        self._pending = None  # non-finite embeddings never enter the memory

    @torch.no_grad()
    def probe_loss(self, phase: Phase) -> float:
        """The loss of a fixed batch (the first queries, their first positive, no memory):
        comparable across steps, unlike the training loss, whose memory fills and changes."""
        b, r = self.local, self.rank
        idx = torch.arange(self.global_batch)
        picks = torch.tensor([self.pairs.positives[i][0] for i in idx.tolist()])
        mine, my_picks = idx[r * b:(r + 1) * b], picks[r * b:(r + 1) * b]  # (b,), (b,)
        with self.eval_mode():
            q, d = self.embed_pairs(mine, my_picks)  # (b, D), (b, D)
        d_all = dist.gather_detached(d)  # (W * b, D)
        none = Samples(q.new_zeros(0, q.shape[1]), torch.zeros(0, dtype=torch.long, device=q.device),
                       torch.zeros(b, 0, dtype=torch.long, device=q.device), q.new_zeros(b, 0))
        pos = Positives(d_all, picks.to(self.device), torch.arange(b, device=self.device) + r * b,
                        [self.pairs.positives[i] for i in mine.tolist()])
        stages = list(self.head.stages)
        noise = [st.ads.noise for st in stages]
        for st in stages:
            st.ads.noise = 0.0  # the probe must not depend on (or consume) a Gumbel draw
        value = objective(lambda x: [(1.0, F.normalize(x, dim=-1))] + phase.student(x), q, none, pos,
                          self.head_cfg).item()
        for st, n in zip(stages, noise):
            st.ads.noise = n
        return dist.mean_over_ranks(value)

    def begin_phase(self, phase: Phase, index: int) -> None:
        self.probes[str(index + 1)] = {"start": self.probe_loss(phase)}

    def end_phase(self, phase: Phase, index: int) -> None:
        self.probes[str(index + 1)]["end"] = self.probe_loss(phase)
        log.info("stage %d: probe loss %.4f -> %.4f", index + 1, self.probes[str(index + 1)]["start"],
                 self.probes[str(index + 1)]["end"])

    def after_micro_step(self) -> None:
        emb, rows = self._pending
        self.queue.enqueue(emb, rows)
        self._pending = None

    @torch.no_grad()
    def basis(self) -> torch.Tensor:
        """Current full-width embeddings of the first documents and training queries (for a
        stage's PCA init): each rank encodes an equal share, then all are gathered."""
        n_docs = min(self.cfg.e2e.basis_docs, len(self.pairs.doc_texts))
        texts = self.pairs.doc_texts[:n_docs] + self.pairs.query_texts[:n_docs]
        share = math.ceil(len(texts) / self.world)
        texts = (texts + texts[-1:] * (share * self.world - len(texts)))[self.rank * share:(self.rank + 1) * share]
        with self.eval_mode():
            parts = [self.embed(texts[i:i + 2 * self.local]) for i in range(0, share, 2 * self.local)]
        return dist.gather_detached(torch.cat(parts)).float()  # (W * share, D)


# -------------------------------------------------------------------------------- engine


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


def _rss_gib() -> float:
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


def fingerprint(cfg: Config) -> dict:
    """The settings a checkpoint must share with the run resuming it."""
    # not in it: how the run is kept and watched, which does not change what it computes
    e2e = {k: v for k, v in asdict(cfg.e2e).items()
           if k not in ("resume", "checkpoint_every", "keep_checkpoints", "collective_timeout_s")}
    model = {k: v for k, v in asdict(cfg.model).items() if k != "device"}
    train = {k: v for k, v in asdict(cfg.train).items() if k not in ("nonfinite", "max_skipped")}
    return {"data": asdict(cfg.data), "model": model, "dims": list(cfg.run.dims), "train": train, "e2e": e2e}


# ---------------------------------------------------------------------------------- job


class E2EJob:
    """One end-to-end training run: setup -> run -> save (see :func:`train_e2e`)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.out = Path(cfg.run.output_dir)

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
        self.pairs = load_pairs(self.ds, e2e.split)

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
                opt, lambda i: _lr_factor(i, total_steps, "cosine", e2e.warmup_steps))
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
        self.head_cfg = replace(cfg.train, infonce_weight=e2e.infonce_weight)
        self.task = PairTask(self.pairs, self.encoder, self.head, cfg, self.head_cfg, self.device)
        phases = smec_phases(self.head, self.task.basis, self.head_cfg)
        self.engine = AccelerateEngine(self.acc, model, opt, sched, e2e.max_grad_norm)
        self.trainer = Trainer(self.head, phases, self.task, self.head_cfg, engine=self.engine,
                               progress=cfg.run.progress and dist.is_main(), log_fn=self._log,
                               on_step_end=self._on_step_end, on_phase_end=self._on_phase_end,
                               should_stop=self.stop.requested)
        self.state = RunState(self.trainer, self.engine)
        self.acc.register_for_checkpointing(self.state)
        if self.resume_from is not None:
            log.info("resuming from %s", self.resume_from)
            self.acc.load_state(str(self.resume_from))
        if dist.is_main():
            self.out.mkdir(parents=True, exist_ok=True)
            dump_config(cfg, self.out / "config.yaml")
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
                   "memory/rss_gib": _rss_gib(), "queue/fill": len(self.task.queue),
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
        return self.ckpts.save(self.acc, step, self._position(trainer))

    # -- exports --------------------------------------------------------------------------
    def export(self, index: int) -> Path:
        """Stage ``index + 1``'s model, loadable without DeepSpeed: ``head.safetensors`` (the
        trained stages and their index lists), the backbone (a PEFT adapter, full weights,
        or a reference to the frozen one), the tokenizer, ``smec.json`` and ``manifest.json``
        (every file's size and sha256, checked when the export is loaded). Written to
        ``stage<s>.tmp`` and renamed."""
        e2e = self.cfg.e2e
        final = self.out / "stages" / f"stage{index + 1}"
        tmp = final.with_name(final.name + ".tmp")
        state = self.acc.get_state_dict(self.model) if e2e.backbone != "frozen" else None  # a collective
        if dist.is_main():
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_head(self.head.first_stages(index + 1), tmp / "head.safetensors")
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
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            log.info("stage %d exported to %s", index + 1, final)
        dist.barrier()
        return final

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
            tmp = self.out / "train_log.json.tmp"
            tmp.write_text(json.dumps(summary, indent=1), encoding="utf-8")
            os.replace(tmp, self.out / "train_log.json")
        dist.barrier()
        return summary

    def cleanup(self) -> None:
        if hasattr(self, "tracker"):
            self.tracker.finish()

        self.acc.end_training()


def train_e2e(cfg: Config) -> dict:
    """Run end-to-end training (``smec train``) and return its summary."""
    job = E2EJob(cfg)
    job.setup()
    try:
        return job.save(job.run())
    finally:
        job.cleanup()
