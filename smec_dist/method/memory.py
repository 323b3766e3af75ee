"""S-XBM: a selectable cross-batch memory of teacher embeddings.

References:
    Wang et al., "Cross-Batch Memory for Embedding Learning", CVPR 2020.
    Zhang et al., "SMEC", EMNLP 2025, section "Selectable Cross-Batch Memory".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Samples:
    """Each anchor's hard samples, stored once per distinct item.

    Neighbourhoods of a batch overlap heavily (64 SciFact queries x 200 samples touch about
    4,300 distinct documents), so the head runs on the distinct ones and gathers.

    Attributes:
        emb: (u, D) teacher vectors of the distinct samples.
        rows: (u,) their item ids (corpus rows).
        inverse: (n, k) index into ``emb`` of each anchor's j-th sample.
        sims: (n, k) teacher similarities.
    """

    emb: torch.Tensor
    rows: torch.Tensor
    inverse: torch.Tensor
    sims: torch.Tensor

    @classmethod
    def none(cls, anchors: torch.Tensor) -> "Samples":
        """No samples for the (n, D) anchors (a loss of judged pairs only)."""
        n, dim, dev = anchors.shape[0], anchors.shape[1], anchors.device
        return cls(anchors.new_zeros(0, dim), torch.zeros(0, dtype=torch.long, device=dev),
                   torch.zeros(n, 0, dtype=torch.long, device=dev), anchors.new_zeros(n, 0))


class XBMQueue:
    """A FIFO ring buffer of (teacher embedding, item id) with top-k selection.

    With a frozen backbone the queued teacher vectors never go stale, so the queue can be
    as large as memory allows; the student view of a selected entry is recomputed by the
    head each step (cheap: only the selected entries).

    Args:
        size: capacity (entries).
        dim: teacher embedding width.
    """

    def __init__(self, size: int, dim: int, dtype: torch.dtype = torch.float32, device=None):
        if size <= 0:
            raise ValueError(f"queue size must be positive, got {size}")
        self.size, self.dim = size, dim
        self.emb = torch.zeros(size, dim, dtype=dtype, device=device)  # (size, dim)
        self.ids = torch.full((size,), -1, dtype=torch.long, device=device)  # (size,) -1 = empty slot
        self.ptr = 0  # next slot to write
        self.count = 0  # valid entries

    def __len__(self) -> int:
        return self.count

    def enqueue(self, emb: torch.Tensor, ids: torch.Tensor) -> None:
        """Append a batch (n, dim); the oldest entries are overwritten once full."""
        emb = emb.detach().to(self.emb.dtype)
        n = emb.shape[0]
        if n >= self.size:  # only the newest `size` survive
            emb, ids, n = emb[-self.size:], ids[-self.size:], self.size
        slots = (self.ptr + torch.arange(n, device=self.emb.device)) % self.size  # (n,)
        self.emb[slots] = emb.to(self.emb.device)
        self.ids[slots] = ids.long().to(self.ids.device)
        self.ptr = (self.ptr + n) % self.size
        self.count = min(self.count + n, self.size)

    def contents(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Valid entries oldest first: (count, dim) embeddings and (count,) ids."""
        if self.count < self.size:
            return self.emb[: self.count], self.ids[: self.count]
        order = (self.ptr + torch.arange(self.size, device=self.emb.device)) % self.size  # oldest slot first
        return self.emb[order], self.ids[order]

    def topk(self, query: torch.Tensor, k: int, exclude: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """The k most similar valid entries for each query (inner product).

        Args:
            query: (n, dim) teacher embeddings of the anchors.
            k: samples per anchor (clipped to the entries held).
            exclude: (n,) item id per anchor never to select (the anchor itself).

        Returns:
            slots (n, k) into ``self.emb`` / ``self.ids`` and teacher similarities (n, k).
        """
        valid = self.emb[: self.count] if self.count < self.size else self.emb  # (m, dim)
        sims = query.to(valid.dtype) @ valid.T  # (n, m)
        held = self.count
        if exclude is not None:
            hit = self.ids[: valid.shape[0]].unsqueeze(0) == exclude.view(-1, 1)  # (n, m)
            sims = sims.masked_fill(hit, float("-inf"))
            # an excluded entry must never fill a slot (the memory may hold one item several
            # times), so never ask for more than remain
            held -= max(1, int(hit.sum(1).max()) if hit.numel() else 0)
        vals, slots = torch.topk(sims, min(k, held), dim=1)  # (n, k)
        return slots, vals

    def sample(self, query: torch.Tensor, k: int, exclude: torch.Tensor | None = None) -> Samples:
        """The top-k entries of :meth:`topk` as :class:`Samples` (each distinct entry once)."""
        slots, sims = self.topk(query, k, exclude=exclude)  # (n, k), (n, k)
        uniq, inverse = torch.unique(slots, return_inverse=True)  # (u,), (n, k)
        return Samples(self.emb[uniq], self.ids[uniq], inverse, sims)

    def state_dict(self) -> dict:
        return {"emb": self.emb.clone(), "ids": self.ids.clone(), "ptr": self.ptr, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["emb"].shape) != (self.size, self.dim):
            raise ValueError(f"queue state has shape {tuple(state['emb'].shape)}, expected {(self.size, self.dim)}")
        self.emb.copy_(state["emb"])
        self.ids.copy_(state["ids"])
        self.ptr, self.count = int(state["ptr"]), int(state["count"])


class QueueSampler:
    """Hard samples from the S-XBM queue in adapter mode: a FIFO of corpus teacher vectors, fed
    as training streams through the corpus; each anchor takes its top-k most similar entries.

    Args:
        corpus: (n_c, D) teacher vectors of the documents.
        size: queue capacity; with ``prefill`` at most the corpus size.
        prefill: start with a full memory (the teacher is frozen: entries never go stale).
        generator: orders the document stream.
    """

    def __init__(self, corpus: torch.Tensor, size: int, prefill: bool, generator: torch.Generator):
        self.corpus = corpus
        self.queue = XBMQueue(min(size, len(corpus)) if prefill else size, corpus.shape[1])
        self.order = torch.randperm(len(corpus), generator=generator)  # the doc stream
        self.cursor = 0
        if prefill:
            self.feed(self.queue.size)

    def feed(self, n: int) -> None:
        rows = self.order.roll(-self.cursor)[:n]  # (n,) next docs of the stream
        self.cursor = (self.cursor + n) % len(self.order)
        self.queue.enqueue(self.corpus[rows], rows)

    def sample(self, anchors: torch.Tensor, anchor_doc: torch.Tensor, k: int) -> Samples:
        """(n, D) anchors -> their top-k queue entries; an anchor never samples its own document
        (``anchor_doc``, -1 for none)."""
        return self.queue.sample(anchors, k, exclude=anchor_doc)
