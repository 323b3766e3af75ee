"""Adapter mode's training data: teacher vectors from the embedding cache, and where each
anchor's hard samples come from (the S-XBM queue, or an exact search of the whole corpus).

:func:`train_head` trains any head of the registry on a :class:`TrainSet` through the one
loop (:class:`~smec_dist.train.loop.Trainer`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..config import LossConfig, TrainConfig, train_loss
from ..method.losses import Positives, objective
from ..method.memory import QueueSampler, Samples
from ..method.phase import Phase
from ..method.registry import phases_for
from .loop import Task, Trainer, preview


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

    def sample_rows(self, idx: torch.Tensor) -> Samples:
        uniq, inverse = torch.unique(self.rows[idx], return_inverse=True)  # (u,), (n, k)
        return Samples(self.data.corpus[uniq], uniq, inverse, self.sims[idx])


class CachedTask(Task):
    """Adapter mode: batches of anchors' teacher vectors from the embedding cache, with hard
    samples from the S-XBM queue (``"xbm"``) or an exact corpus search (``"exact"``).

    Args:
        data: the anchors, the corpus and (supervised) the judgments.
        cfg: batches, epochs, top-k, queue.
        loss: the setting's loss (temperature, InfoNCE weight, ...).
        sampler: ``"xbm"`` or ``"exact"``.
        gen: draws the anchor order, the queue's document stream and the positives.
    """

    def __init__(self, data: TrainSet, cfg: TrainConfig, loss: LossConfig, sampler: str, gen: torch.Generator):
        self.data, self.cfg, self.loss_cfg, self.gen = data, cfg, loss, gen
        self.exact = ExactSampler(data, cfg.topk) if sampler == "exact" else None
        self.xbm = sampler == "xbm"
        self.queue: QueueSampler | None = None
        n_a = len(data.anchors)
        steps_per_epoch = math.ceil(n_a / cfg.batch_size)
        self.steps = max(1, min(cfg.epochs * steps_per_epoch, cfg.max_steps_per_phase or 1 << 62))

    def begin_phase(self, phase: Phase, index: int) -> None:
        if self.xbm:  # a fresh memory per phase, streamed from the corpus
            self.queue = QueueSampler(self.data.corpus, self.cfg.queue_size, self.cfg.prefill, self.gen)
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
        if data.positives is not None and self.loss_cfg.infonce_weight:
            judged = [data.positives[i] for i in idx.tolist()]
            pick = torch.tensor([r[int(torch.randint(len(r), (1,), generator=self.gen))] for r in judged])
            pos = Positives(data.corpus[pick], pick, torch.arange(len(idx)), judged)  # (n, D)
        return objective(phase.student, anchors, samples, pos, self.loss_cfg)

    def describe_batch(self) -> str:
        rows = getattr(self, "_last_rows", None)
        return "anchor rows " + preview(rows.tolist()) if rows is not None else "(no batch yet)"

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
               log_fn: Callable[[dict], None] | None = None, loss: LossConfig | None = None) -> dict:
    """Train ``head`` phase by phase on cached embeddings; returns per-phase stats (final
    loss, steps, seconds).

    Args:
        cfg: batches, epochs, learning rates, seed.
        sampler: ``"xbm"`` (hard samples from the S-XBM queue) or ``"exact"``.
        loss: the setting's loss (:func:`smec_dist.config.setting_loss`); default
            :func:`smec_dist.config.train_loss` of ``cfg`` (listwise KL at ``cfg.temperature``,
            no InfoNCE).
    """
    loss = loss or train_loss(cfg)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    basis = lambda: torch.cat([data.corpus, data.anchors]) if cfg.pca_on_anchors else data.corpus  # noqa: E731
    phases = phases_for(head, basis, cfg)  # the PCA start: real anchors only, never their noisy copies
    task = CachedTask(noisy_anchors(data, cfg.anchor_copies, cfg.anchor_noise, cfg.seed), cfg, loss, sampler, gen)
    return Trainer(head, phases, task, cfg, progress=progress, log_fn=log_fn).fit()
