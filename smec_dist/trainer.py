"""Training compression heads on cached (frozen-backbone) embeddings: adapter mode.

One loop serves the SMEC head (SMRL stages, ADS, S-XBM) and the baselines trained with the
same objective (the MRL-style prefix head and the single linear adapter); they differ only
in which parameters a phase trains, which dims its loss reads, and where each anchor's
hard samples come from (the S-XBM queue, or an exact search of the whole corpus).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .config import TrainConfig
from .head import MultiHead, PrefixHead, SMECHead, pca_basis
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


Student = Callable[[torch.Tensor], list[tuple[float, torch.Tensor]]]


def objective(student: Student, anchors: torch.Tensor, samples: Samples, pos: torch.Tensor | None,
              pos_rows: list[list[int]] | None, cfg: TrainConfig) -> torch.Tensor:
    """The loss of one batch, summed over the student's weighted outputs (dims).

    Args:
        student: maps teacher vectors (m, D) to a list of (weight, output) where output is
            a normalised (m, d) tensor or a :class:`Masked` selection.
        anchors: (n, D) teacher vectors of the anchors.
        samples: their hard samples (teacher similarities included).
        pos: (n, D) one positive per anchor (supervised), with ``pos_rows`` listing each
            anchor's positive rows, the chosen one first.
    """
    n, u = len(anchors), len(samples.emb)
    stacked = torch.cat([anchors, samples.emb] + ([pos] if pos is not None else []))  # (n + u [+ n], D)
    total = anchors.new_zeros(())
    for weight, out in student(stacked):
        emb, w = (out.normalized(), out.mask) if isinstance(out, Masked) else (out, None)
        qa, su, sp = emb[:n], emb[n:n + u], emb[n + u:]  # (n, d), (u, d), (n or 0, d)
        qw = qa if w is None else qa * w  # the mask enters each similarity once
        s = (qw @ su.T).gather(1, samples.inverse)  # (n, u) -> (n, k)
        loss = cfg.kl_weight * listwise_kl(s, samples.sims, cfg.temperature)
        if cfg.pairwise_weight:
            loss = loss + cfg.pairwise_weight * pairwise_mse(s, samples.sims)
        if cfg.infonce_weight and pos is not None:
            docs = torch.cat([sp, su])  # (n + u, d) in-batch positives, then every distinct sample
            rows = torch.cat([torch.tensor([r[0] for r in pos_rows]), samples.rows])  # (n + u,)
            allowed = torch.ones(n, len(rows), dtype=torch.bool)
            for i, mine in enumerate(pos_rows):  # other positives of the same query are not negatives
                allowed[i] = ~torch.isin(rows, torch.tensor(mine))
            allowed[torch.arange(n), torch.arange(n)] = True
            loss = loss + cfg.infonce_weight * info_nce(qw, docs, torch.arange(n), cfg.infonce_temperature, allowed)
        total = total + weight * loss
    return total


class Phase:
    """A unit of training: which parameters learn and what the student returns."""

    def __init__(self, name: str, params: list[dict], student: Student, on_end: Callable[[], None] = lambda: None):
        self.name, self.params, self.student, self.on_end = name, params, student, on_end
        self.start: Callable[[], None] = lambda: None
        self.progress: Callable[[float], None] = lambda frac: None


def smec_phases(head: SMECHead, data: TrainSet, cfg: TrainConfig) -> list[Phase]:
    """One phase per SMRL stage: stage s trains L(d_{s-1}) + L(d_s), earlier stages frozen."""
    phases = []
    for s, stage in enumerate(head.stages):
        def start(s=s, stage=stage):
            with torch.no_grad():  # PCA of this stage's (frozen) input: its first dims carry most energy
                stage.transform.linear.weight.copy_(pca_basis(head.stage_input(_basis_src(data, cfg), s)))

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


def prefix_phases(head: PrefixHead, data: TrainSet, cfg: TrainConfig) -> list[Phase]:
    """MRL-style: one phase, every dim's loss at once on prefixes of one map."""
    def student(x):
        y = head(x)  # (m, D)
        return [(1.0, F.normalize(y[:, :d], dim=-1)) for d in head.dims]

    phase = Phase("mrl:" + "/".join(map(str, head.dims)), [{"params": list(head.parameters()), "lr": cfg.lr}], student)
    phase.start = lambda: head.transform.linear.weight.data.copy_(pca_basis(_basis_src(data, cfg)))
    return [phase]


def multi_phases(head: MultiHead, data: TrainSet, cfg: TrainConfig) -> list[Phase]:
    """Single linear adapter: each dim's map trained on its own."""
    phases = []
    for d in head.dims:
        sub = head.heads[str(d)]
        phase = Phase(f"linear:{d}", [{"params": list(sub.parameters()), "lr": cfg.lr}],
                      lambda x, sub=sub, d=d: [(1.0, F.normalize(sub(x)[:, :d], dim=-1))])
        phase.start = lambda sub=sub: sub.transform.linear.weight.data.copy_(pca_basis(_basis_src(data, cfg)))
        phases.append(phase)
    return phases


def _basis_src(data: TrainSet, cfg: TrainConfig) -> torch.Tensor:
    return torch.cat([data.corpus, data.anchors]) if cfg.pca_on_anchors else data.corpus


def _lr_factor(step: int, steps: int, schedule: str) -> float:
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))
    return 1.0


PHASES = {SMECHead: smec_phases, PrefixHead: prefix_phases, MultiHead: multi_phases}


def train_head(head, data: TrainSet, cfg: TrainConfig, sampler: str, progress: bool = True,
               log_fn: Callable[[dict], None] | None = None) -> dict:
    """Train ``head`` phase by phase; returns per-phase stats (final loss, steps, seconds).

    Args:
        sampler: ``"xbm"`` (hard samples from the S-XBM queue) or ``"exact"``.
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    phases = PHASES[type(head)](head, data, cfg)
    stats = {}
    exact = ExactSampler(data, cfg.topk) if sampler == "exact" else None
    n_a = len(data.anchors)
    steps_per_epoch = math.ceil(n_a / cfg.batch_size)
    steps = max(1, min(cfg.epochs * steps_per_epoch, cfg.max_steps_per_phase or 1 << 62))
    for phase in phases:
        t0 = time.perf_counter()
        phase.start()  # may set phase.params (a stage's live rows exist only once it starts)
        queue = QueueSampler(data, cfg.queue_size, cfg.prefill, gen) if sampler == "xbm" else None
        opt = torch.optim.Adam(phase.params, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: _lr_factor(i, steps, cfg.lr_schedule))
        bar = tqdm(total=steps, desc=phase.name, disable=not progress, mininterval=2.0, leave=False)
        perm, pos_in_perm, ema = torch.randperm(n_a, generator=gen), 0, None
        for step in range(steps):
            if pos_in_perm >= n_a:
                perm, pos_in_perm = torch.randperm(n_a, generator=gen), 0
            idx = perm[pos_in_perm:pos_in_perm + cfg.batch_size]
            pos_in_perm += cfg.batch_size
            anchors = data.anchors[idx]  # (n, D)
            phase.progress(step / steps)
            samples = queue.sample(anchors, data.anchor_doc[idx], cfg.topk) if queue is not None \
                else exact.sample_rows(idx)
            pos = pos_rows = None
            if data.positives is not None and cfg.infonce_weight:
                pos_rows = [data.positives[i] for i in idx.tolist()]
                pick = [r[int(torch.randint(len(r), (1,), generator=gen))] for r in pos_rows]
                pos = data.corpus[torch.tensor(pick)]  # (n, D)
                pos_rows = [[p] + [r for r in rs if r != p] for p, rs in zip(pick, pos_rows)]
            loss = objective(phase.student, anchors, samples, pos, pos_rows, cfg)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss in {phase.name} at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if queue is not None:
                queue.feed(cfg.batch_size)
            ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{ema:.4f}")
                if log_fn:
                    log_fn({"phase": phase.name, "step": step, "loss": loss.item()})
        bar.close()
        phase.on_end()
        stats[phase.name] = {"loss": ema, "steps": steps, "seconds": round(time.perf_counter() - t0, 2)}
        log.info("%s: %d steps, loss %.4f, %.1fs", phase.name, steps, ema, stats[phase.name]["seconds"])
    head.eval()
    return stats
