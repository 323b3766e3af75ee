"""Training compression heads on cached (frozen-backbone) embeddings: adapter mode.

One loop serves the SMEC head (SMRL stages, ADS, S-XBM) and the baselines trained with the
same objective (the MRL-style prefix head and the single linear adapter); they differ only
in which parameters a phase trains, which dims its loss reads, and where each anchor's
hard samples come from (the S-XBM queue, or an exact search of the whole corpus).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .errors import SmecError

from .config import TrainConfig
from .head import CurriculumHead, MultiHead, PrefixHead, SingleHead, SMECHead, pca_basis
from .losses import info_nce, listwise_kl, pairwise_mse
from .ads import Masked
from .memory import XBMQueue

log = logging.getLogger(__name__)


@dataclass
class TrainSet:
    """Teacher embeddings the head learns from.

    Attributes:
        anchors: (n_a, D) the items whose neighbourhoods are preserved (query texts, or
            documents in the corpus-only setting).
        corpus: (n_c, D) the documents the hard samples come from.
        anchor_doc: (n_a,) corpus row of each anchor when anchors are documents, else -1;
            an anchor never counts itself as a sample.
        positives: per anchor, the corpus rows judged relevant (supervised setting), or None.
    """

    anchors: torch.Tensor
    corpus: torch.Tensor
    anchor_doc: torch.Tensor
    positives: list[list[int]] | None = None

    @property
    def dim(self) -> int:
        return int(self.corpus.shape[1])


@dataclass
class Samples:
    """Each anchor's hard samples, stored once per distinct document.

    Neighbourhoods of a batch overlap heavily (64 SciFact queries x 200 samples touch about
    4,300 distinct documents), so the head runs on the distinct ones and gathers.

    Attributes:
        emb: (u, D) teacher vectors of the distinct samples.
        rows: (u,) their corpus rows.
        inverse: (n, k) index into ``emb`` of each anchor's j-th sample.
        sims: (n, k) teacher similarities.
    """

    emb: torch.Tensor
    rows: torch.Tensor
    inverse: torch.Tensor
    sims: torch.Tensor


class QueueSampler:
    """Hard samples from the S-XBM queue: a FIFO of corpus teacher vectors, fed as training
    streams through the corpus; each anchor takes its top-k most similar entries."""

    def __init__(self, data: TrainSet, size: int, prefill: bool, generator: torch.Generator):
        self.data, self.gen = data, generator
        self.queue = XBMQueue(min(size, len(data.corpus)) if prefill else size, data.dim)
        self.order = torch.randperm(len(data.corpus), generator=generator)  # the doc stream
        self.cursor = 0
        if prefill:  # frozen teacher: entries never go stale, so start with a full memory
            self.feed(self.queue.size)

    def feed(self, n: int) -> None:
        rows = self.order.roll(-self.cursor)[:n]  # (n,) next docs of the stream
        self.cursor = (self.cursor + n) % len(self.order)
        self.queue.enqueue(self.data.corpus[rows], rows)

    def sample(self, anchors: torch.Tensor, anchor_doc: torch.Tensor, k: int) -> "Samples":
        slots, sims = self.queue.topk(anchors, k, exclude=anchor_doc)  # (n, k), (n, k)
        uniq, inverse = torch.unique(slots, return_inverse=True)  # (u,), (n, k)
        return Samples(self.queue.emb[uniq], self.queue.ids[uniq], inverse, sims)


class ExactSampler:
    """Hard samples from an exact search of the whole corpus (the baselines: no memory)."""

    def __init__(self, data: TrainSet, k: int, chunk: int = 1024):
        self.data = data
        corpus_t = data.corpus.T  # (D, n_c)
        vals, rows = [], []
        for i in range(0, len(data.anchors), chunk):
            s = data.anchors[i:i + chunk] @ corpus_t  # (chunk, n_c)
            own = data.anchor_doc[i:i + chunk]
            hit = own >= 0
            s[hit.nonzero().squeeze(1), own[hit]] = float("-inf")
            v, r = s.topk(min(k, s.shape[1] - 1), dim=1)  # (chunk, k)
            vals.append(v)
            rows.append(r)
        self.sims, self.rows = torch.cat(vals), torch.cat(rows)  # (n_a, k) each

    def sample_rows(self, idx: torch.Tensor) -> "Samples":
        uniq, inverse = torch.unique(self.rows[idx], return_inverse=True)  # (u,), (n, k)
        return Samples(self.data.corpus[uniq], uniq, inverse, self.sims[idx])


@dataclass
class Penalty:
    """A student output that is already a loss (a regulariser), added as is with its weight."""

    value: torch.Tensor


Student = Callable[[torch.Tensor], list[tuple[float, "torch.Tensor | Masked | Penalty"]]]


@dataclass
class Positives:
    """Judged positives for the InfoNCE term.

    Attributes:
        emb: (m, D) positive documents: one per anchor of this process, or, in end-to-end
            mode, gathered from every rank (so the in-batch negatives span all ranks).
        rows: (m,) their corpus rows.
        labels: (n,) index into ``emb`` of each anchor's positive (offset by rank when
            gathered).
        judged: per anchor, every corpus row judged relevant: never used as a negative.
    """

    emb: torch.Tensor
    rows: torch.Tensor
    labels: torch.Tensor
    judged: list[list[int]]


def objective(student: Student, anchors: torch.Tensor, samples: Samples, pos: Positives | None,
              cfg: TrainConfig) -> torch.Tensor:
    """The loss of one batch (mean over its anchors), summed over the student's weighted
    outputs (dims).

    Args:
        student: maps teacher vectors (m, D) to a list of (weight, output) where output is
            a normalised (m, d) tensor or a :class:`Masked` selection.
        anchors: (n, D) teacher vectors of the anchors.
        samples: their hard samples (teacher similarities included; may hold none yet when
            an end-to-end queue is still empty).
        pos: judged positives (supervised), or None.
    """
    n, u = len(anchors), len(samples.emb)
    use_pos = pos is not None and cfg.infonce_weight > 0
    stacked = torch.cat([anchors, samples.emb] + ([pos.emb] if use_pos else []))  # (n + u [+ m], D)
    if use_pos:
        docs_rows = torch.cat([pos.rows, samples.rows])  # (m + u,) in-batch positives, then every distinct sample
        allowed = torch.ones(n, len(docs_rows), dtype=torch.bool, device=anchors.device)
        for i, mine in enumerate(pos.judged):  # other positives of the same query are not negatives
            allowed[i] = ~torch.isin(docs_rows, torch.tensor(mine, dtype=torch.long, device=docs_rows.device))
        allowed[torch.arange(n), pos.labels] = True
    total = anchors.new_zeros(())
    for weight, out in student(stacked):
        if isinstance(out, Penalty):
            total = total + weight * out.value
            continue
        emb, w = (out.normalized(), out.mask) if isinstance(out, Masked) else (out, None)
        qa, su, sp = emb[:n], emb[n:n + u], emb[n + u:]  # (n, d), (u, d), (m or 0, d)
        qw = qa if w is None else qa * w  # the mask enters each similarity once
        loss = anchors.new_zeros(())
        if samples.inverse.shape[1]:
            s = (qw @ su.T).gather(1, samples.inverse)  # (n, u) -> (n, k)
            loss = loss + cfg.kl_weight * listwise_kl(s, samples.sims, cfg.temperature)
            if cfg.pairwise_weight:
                loss = loss + cfg.pairwise_weight * pairwise_mse(s, samples.sims)
        if use_pos:
            docs = torch.cat([sp, su])  # (m + u, d)
            loss = loss + cfg.infonce_weight * info_nce(qw, docs, pos.labels, cfg.infonce_temperature, allowed)
        total = total + weight * loss
    return total


Basis = Callable[[], torch.Tensor]


class Phase:
    """A unit of training: which parameters learn and what the student returns."""

    def __init__(self, name: str, params: list[dict], student: Student, on_end: Callable[[], None] = lambda: None):
        self.name, self.params, self.student, self.on_end = name, params, student, on_end
        self.start: Callable[[], None] = lambda: None
        self.progress: Callable[[float], None] = lambda frac: None


def smec_phases(head: SMECHead, basis: Basis, cfg: TrainConfig) -> list[Phase]:
    """One phase per SMRL stage: stage s trains L(d_s), earlier stages frozen.

    The paper's stage loss is L(d_{s-1}) + L(d_s); here the d_{s-1} embedding is the frozen
    output of stage s-1 (of the backbone, for stage 1), so L(d_{s-1}) is constant and only
    L(d_s) has a gradient. ``train.high_weight`` adds a loss at d_{s-1} on the stage's
    transformed input instead (a regulariser), and ``train.lookahead`` the later dims on this
    stage's leading dims.

    ``basis()`` returns teacher vectors (m, D) whose principal directions initialise each
    stage (called once, when the stage starts)."""
    phases = []
    for s, stage in enumerate(head.stages):
        def start(s=s, stage=stage):
            with torch.no_grad():  # PCA of this stage's (frozen) input: its first dims carry most energy
                stage.transform.linear.weight.copy_(pca_basis(head.stage_input(basis(), s)))

        def student(x, s=s, stage=stage):
            with torch.no_grad():
                x = head.stage_input(x, s)  # (m, d_{s-1}) frozen earlier stages
            z = stage.transform(x)  # (m, d_{s-1})
            out = [(1.0, Masked(z, stage.ads.mask()))]
            ahead = len(head.dims) if cfg.lookahead < 0 else cfg.lookahead
            for j in range(s + 1, min(len(head.dims), s + 1 + ahead)):
                # later stages will carve d_j dims out of this stage's output: keep such a
                # subspace good now (the leading dims by current importance stand in for it)
                keep = torch.zeros(z.shape[1])
                keep[torch.topk(stage.ads.scores.detach(), head.dims[j]).indices] = 1.0
                out.append((cfg.lookahead_weight, Masked(z, keep)))
            if cfg.high_weight:
                out.append((cfg.high_weight, F.normalize(z, dim=-1)))
            return out

        def end(stage=stage):
            stage.ads.freeze()
            stage.requires_grad_(False)  # frozen: no gradient, no optimizer state from here on

        params = [{"params": list(stage.transform.parameters()), "lr": cfg.lr},
                  {"params": [stage.ads.scores], "lr": cfg.ads_lr}]
        def progress(frac, stage=stage):
            # Gumbel noise explores selections early; for the last part of the stage the
            # selection is fixed (no noise, scores no longer learn) and only the transform
            # trains, so the frozen index list is the one the transform was last trained with.
            stage.ads.noise = cfg.ads_noise * max(0.0, 1.0 - frac / cfg.ads_anneal)
            if frac >= cfg.ads_anneal and stage.ads.scores.requires_grad:
                stage.ads.scores.requires_grad_(False)
                stage.ads.scores.grad = None  # Adam skips a parameter without a gradient

        phase = Phase(f"stage{s + 1}:{stage.d_in}->{stage.d_out}", params, student, end)
        phase.start, phase.progress = start, progress
        phases.append(phase)
    return phases


def prefix_phases(head: PrefixHead, basis: Basis, cfg: TrainConfig) -> list[Phase]:
    """MRL-style: one phase, every dim's loss at once on prefixes of one map."""
    def student(x):
        y = head(x)  # (m, D)
        return [(1.0, F.normalize(y[:, :d], dim=-1)) for d in head.dims]

    phase = Phase("mrl:" + "/".join(map(str, head.dims)), [{"params": list(head.parameters()), "lr": cfg.lr}], student)
    phase.start = lambda: head.transform.linear.weight.data.copy_(pca_basis(basis()))
    return [phase]


def multi_phases(head: MultiHead, basis: Basis, cfg: TrainConfig) -> list[Phase]:
    """Single linear adapter: each dim's map trained on its own."""
    phases = []
    for d in head.dims:
        sub = head.heads[str(d)]
        phase = Phase(f"linear:{d}", [{"params": list(sub.parameters()), "lr": cfg.lr}],
                      lambda x, sub=sub, d=d: [(1.0, F.normalize(sub(x)[:, :d], dim=-1))])
        phase.start = lambda sub=sub: sub.transform.linear.weight.data.copy_(pca_basis(basis()))
        phases.append(phase)
    return phases


def single_phases(head: SingleHead, basis: Basis, cfg: TrainConfig) -> list[Phase]:
    """Single resolution: one map trained at full width only (evaluated truncated).

    It starts from the backbone's coordinates (the identity), not from PCA: the ablation is
    a model trained without any Matryoshka loss."""
    phase = Phase(f"single:{head.full_dim}", [{"params": list(head.parameters()), "lr": cfg.lr}],
                  lambda x: [(1.0, F.normalize(head(x), dim=-1))])
    return [phase]


def curriculum_probs(dims: list[int], frac: float, gamma: float) -> torch.Tensor:
    """Curriculum MRL's target-dim distribution at training progress ``frac`` in [0, 1].

    ``p(d) ∝ (d / max(dims)) ** (gamma * (2 frac - 1))``: biased towards the small dims early,
    uniform at mid-training, biased towards the large dims late (``gamma = 0``: uniform
    throughout).
    """
    d = torch.tensor(dims, dtype=torch.float64)
    w = (d / d.max()) ** (gamma * (2.0 * min(max(frac, 0.0), 1.0) - 1.0))
    return (w / w.sum()).float()


def consistency_weights(dims: list[int], weight: float) -> dict[int, float]:
    """λ_d of the cross-dimension consistency loss: ``weight * min(dims) / d``, decaying with d."""
    return {d: weight * min(dims) / d for d in dims}


def curriculum_phases(head: CurriculumHead, basis: Basis, cfg: TrainConfig) -> list[Phase]:
    """Curriculum MRL (DEMRL++): one phase; every batch trains the task loss at ONE target dim
    drawn from :func:`curriculum_probs`, plus the cross-dimension consistency loss

        L_cons = Σ_d λ_d (1 - cos(pad(z_d), stop_grad(z_D)))

    of every dim's embedding against the (stop-gradient) full-width output of the shared map.
    The draws come from a generator seeded with ``train.seed`` (reproducible).
    """
    gen = torch.Generator().manual_seed(cfg.seed + 7919)
    state = {"frac": 0.0}
    lambdas = consistency_weights(head.dims, cfg.consistency_weight)

    def student(x):
        z = head.full(x)  # (m, D)
        probs = curriculum_probs(head.dims, state["frac"], cfg.curriculum_gamma)
        d = head.dims[int(torch.multinomial(probs, 1, generator=gen))]
        out = [(1.0, head.view(z, d))]
        if cfg.consistency_weight:
            target = F.normalize(z.detach(), dim=-1)  # (m, D) stop-gradient full embedding
            cons = sum(lam * (1.0 - (head.view(z, dd) * target[:, :dd]).sum(-1)).mean()
                       for dd, lam in lambdas.items())
            out.append((1.0, Penalty(cons)))
        return out

    phase = Phase("cmrl:" + "/".join(map(str, head.dims)), [{"params": list(head.parameters()), "lr": cfg.lr}],
                  student)
    phase.start = lambda: head.transform.linear.weight.data.copy_(pca_basis(basis()))
    phase.progress = lambda frac: state.update(frac=frac)
    return [phase]


def _lr_factor(step: int, steps: int, schedule: str, warmup: int = 0) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        span = max(1, steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))
    return 1.0


PHASES = {SMECHead: smec_phases, PrefixHead: prefix_phases, MultiHead: multi_phases, SingleHead: single_phases,
          CurriculumHead: curriculum_phases}


class Task:
    """Where a step's loss comes from; the :class:`Trainer` owns everything else.

    Adapter mode (:class:`CachedTask`) reads teacher vectors from the embedding cache;
    end-to-end mode (``smec_dist.e2e.PairTask``) runs the backbone. State a resumed run
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
        phases: what each phase trains (see :data:`PHASES`).
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
            self.opt, lambda i: _lr_factor(i, steps, self.cfg.lr_schedule))

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


def _some(items: list, n: int = 5) -> str:
    return ", ".join(map(str, items[:n])) + (f", ... ({len(items)} in all)" if len(items) > n else "")


class CachedTask(Task):
    """Adapter mode: batches of anchors' teacher vectors from the embedding cache, with hard
    samples from the S-XBM queue (``"xbm"``) or an exact corpus search (``"exact"``)."""

    def __init__(self, data: TrainSet, cfg: TrainConfig, sampler: str, gen: torch.Generator):
        self.data, self.cfg, self.gen = data, cfg, gen
        self.exact = ExactSampler(data, cfg.topk) if sampler == "exact" else None
        self.xbm = sampler == "xbm"
        self.queue: QueueSampler | None = None
        n_a = len(data.anchors)
        steps_per_epoch = math.ceil(n_a / cfg.batch_size)
        self.steps = max(1, min(cfg.epochs * steps_per_epoch, cfg.max_steps_per_phase or 1 << 62))

    def begin_phase(self, phase: Phase, index: int) -> None:
        if self.xbm:  # a fresh memory per phase, streamed from the corpus
            self.queue = QueueSampler(self.data, self.cfg.queue_size, self.cfg.prefill, self.gen)
        self.perm, self.pos_in_perm = torch.randperm(len(self.data.anchors), generator=self.gen), 0

    def loss(self, phase: Phase, step: int) -> torch.Tensor:
        data, cfg = self.data, self.cfg
        if self.pos_in_perm >= len(data.anchors):
            self.perm, self.pos_in_perm = torch.randperm(len(data.anchors), generator=self.gen), 0
        idx = self.perm[self.pos_in_perm:self.pos_in_perm + cfg.batch_size]
        self.pos_in_perm += cfg.batch_size
        self._last_rows = idx
        anchors = data.anchors[idx]  # (n, D)
        samples = self.queue.sample(anchors, data.anchor_doc[idx], cfg.topk) if self.queue is not None \
            else self.exact.sample_rows(idx)
        pos = None
        if data.positives is not None and cfg.infonce_weight:
            judged = [data.positives[i] for i in idx.tolist()]
            pick = torch.tensor([r[int(torch.randint(len(r), (1,), generator=self.gen))] for r in judged])
            pos = Positives(data.corpus[pick], pick, torch.arange(len(idx)), judged)  # (n, D)
        return objective(phase.student, anchors, samples, pos, cfg)

    def describe_batch(self) -> str:
        rows = getattr(self, "_last_rows", None)
        return "anchor rows " + _some(rows.tolist()) if rows is not None else "(no batch yet)"

    def after_micro_step(self) -> None:
        if self.queue is not None:
            self.queue.feed(self.cfg.batch_size)


def noisy_anchors(data: TrainSet, copies: int, noise: float, seed: int) -> TrainSet:
    """``data`` with ``copies`` noisy copies of every anchor appended (anchor augmentation).

    A copy is the anchor's teacher vector plus Gaussian noise of norm about ``noise``
    (``N(0, noise^2 / D)`` per coordinate), L2-normalised; its hard samples and teacher
    similarities come from the copy itself, so it adds a nearby neighbourhood to preserve.
    A copy of a document anchor still never counts that document as a sample, and a copy of
    a judged query keeps its judgments. Drawn from a generator of its own (``seed``), so the
    copies are reproducible and the rest of training draws the same numbers as without them.
    """
    if not copies:
        return data
    gen = torch.Generator().manual_seed(seed + 104729)
    a = data.anchors  # (n_a, D)
    scale = noise / math.sqrt(a.shape[1])
    extra = [F.normalize(a + scale * torch.randn(a.shape, generator=gen, dtype=a.dtype).to(a.device), dim=-1)
             for _ in range(copies)]  # copies x (n_a, D)
    return TrainSet(torch.cat([a] + extra), data.corpus, data.anchor_doc.repeat(1 + copies),
                    None if data.positives is None else list(data.positives) * (1 + copies))


def train_head(head, data: TrainSet, cfg: TrainConfig, sampler: str, progress: bool = True,
               log_fn: Callable[[dict], None] | None = None) -> dict:
    """Train ``head`` phase by phase on cached embeddings; returns per-phase stats (final
    loss, steps, seconds).

    Args:
        sampler: ``"xbm"`` (hard samples from the S-XBM queue) or ``"exact"``.
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    basis = lambda: torch.cat([data.corpus, data.anchors]) if cfg.pca_on_anchors else data.corpus  # noqa: E731
    phases = PHASES[type(head)](head, basis, cfg)  # the PCA start: real anchors only, never their noisy copies
    task = CachedTask(noisy_anchors(data, cfg.anchor_copies, cfg.anchor_noise, cfg.seed), cfg, sampler, gen)
    return Trainer(head, phases, task, cfg, progress=progress, log_fn=log_fn).fit()
