"""S-XBM: a selectable cross-batch memory of teacher embeddings.

References:
    Wang et al., "Cross-Batch Memory for Embedding Learning", CVPR 2020.
    Zhang et al., "SMEC", EMNLP 2025, section "Selectable Cross-Batch Memory".
"""

from __future__ import annotations

import torch


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
        # an excluded entry must never fill a slot, so never ask for more than remain
        k = min(k, self.count - (1 if exclude is not None else 0))
        valid = self.emb[: self.count] if self.count < self.size else self.emb  # (m, dim)
        sims = query.to(valid.dtype) @ valid.T  # (n, m)
        if exclude is not None:
            ids = self.ids[: valid.shape[0]]
            sims = sims.masked_fill(ids.unsqueeze(0) == exclude.view(-1, 1), float("-inf"))
        vals, slots = torch.topk(sims, k, dim=1)  # (n, k)
        return slots, vals

    def state_dict(self) -> dict:
        return {"emb": self.emb.clone(), "ids": self.ids.clone(), "ptr": self.ptr, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["emb"].shape) != (self.size, self.dim):
            raise ValueError(f"queue state has shape {tuple(state['emb'].shape)}, expected {(self.size, self.dim)}")
        self.emb.copy_(state["emb"])
        self.ids.copy_(state["ids"])
        self.ptr, self.count = int(state["ptr"]), int(state["count"])
