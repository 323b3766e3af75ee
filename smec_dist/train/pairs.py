"""End-to-end mode's training data: judged (query, document) pairs encoded by the backbone.

Per step, on each rank: encode the rank's queries and positives; gather the positives from all
ranks with gradients (in-batch negatives across ranks, labels offset by rank); take each
query's top-k hard samples from the S-XBM queue (full-width, detached embeddings of earlier
batches, identical on every rank because they are gathered before being enqueued); loss =
InfoNCE + listwise KL (compressed vs full-width similarity) at every width of the current
stage, plus InfoNCE on the full-width embedding. See :mod:`smec_dist.dist` for the one place
the loss scale is decided.

References:
    Zhang et al., "SMEC", EMNLP 2025.
    Wang et al., "Cross-Batch Memory for Embedding Learning", CVPR 2020.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import dist
from ..backbone import Encoder
from ..config import Config, LossConfig
from ..data import own_rows
from ..errors import SmecError
from ..method.losses import Positives, objective
from ..method.memory import Samples, XBMQueue
from ..method.phase import Phase
from ..method.smrl import SMECHead
from .loop import Task, preview

log = logging.getLogger(__name__)


@dataclass
class PairSet:
    """Judged (query, document) pairs of one qrels split.

    Attributes:
        query_texts: the split's queries with at least one positive.
        positives: per query, the corpus rows judged relevant (score > 0).
        doc_ids / doc_texts: the corpus, by row.
        own: per query, the corpus row of the document under its own id where identical ids
            are ignored (never one of its memory samples), else -1.
    """

    query_ids: list[str]
    query_texts: list[str]
    positives: list[list[int]]
    doc_ids: list[str]
    doc_texts: list[str]
    own: list[int]


def load_pairs(ds, split: str, ignore_identical_ids: bool = False) -> PairSet:
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
    return PairSet(qids, texts, pos, doc_ids, ds.doc_texts(), own_rows(qids, row, ignore_identical_ids))


class PairTask(Task):
    """Batches of (query, positive) pairs encoded by the backbone (see module docstring).

    Every rank draws the same global batch (one seeded permutation per epoch, the same
    positive picked for each query) and encodes its own slice, so two ranks see exactly
    what one process would see over the concatenated batch.

    Args:
        pairs: the training pairs.
        encoder: the (prepared) backbone with its tokenizer and pooling.
        cfg: the config (``e2e`` for batches and instructions, ``train`` for the head).
        loss: the supervised setting's loss (:func:`smec_dist.config.setting_loss`).
    """

    def __init__(self, pairs: PairSet, encoder: Encoder, head: SMECHead, cfg: Config, loss: LossConfig, device):
        self.pairs, self.encoder, self.head, self.cfg, self.loss_cfg = pairs, encoder, head, cfg, loss
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
        own = torch.tensor([self.pairs.own[i] for i in mine.tolist()], device=q.device)  # (b,) -1: none
        exclude = own if bool((own >= 0).any()) else None  # a query's own document (identical ids)
        samples = self.queue.sample(q.detach(), self.cfg.train.topk, exclude=exclude)  # (b, k) hard samples
        self.last_top1 = float(samples.sims[:, 0].mean()) if samples.sims.shape[1] else None
        pos = Positives(d_all, picks.to(self.device), torch.arange(b, device=self.device) + r * b,
                        [self.pairs.positives[i] for i in mine.tolist()])
        self._pending = (d_all.detach(), picks)  # gathered already: every rank enqueues the same
        self._last_batch = idx

        def student(x):  # the backbone's own full-width embedding, then the stage's widths
            return [(e2e.full_weight, F.normalize(x, dim=-1))] + phase.student(x)

        return objective(student, q, samples, pos, self.loss_cfg)

    def describe_batch(self) -> str:
        idx = getattr(self, "_last_batch", None)
        if idx is None:
            return "(no batch yet)"
        return f"split '{self.cfg.e2e.split}' queries " + preview([self.pairs.query_ids[i] for i in idx.tolist()])

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
        none = Samples.none(q)
        pos = Positives(d_all, picks.to(self.device), torch.arange(b, device=self.device) + r * b,
                        [self.pairs.positives[i] for i in mine.tolist()])
        stages = list(self.head.stages)
        noise = [st.ads.noise for st in stages]
        for st in stages:
            st.ads.noise = 0.0  # the probe must not depend on (or consume) a Gumbel draw
        value = objective(lambda x: [(1.0, F.normalize(x, dim=-1))] + phase.student(x), q, none, pos,
                          self.loss_cfg).item()
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
