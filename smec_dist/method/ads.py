"""ADS: adaptive dimension selection.

References:
    Zhang et al., "SMEC: Rethinking Matryoshka Representation Learning for Retrieval
    Embedding Compression", EMNLP 2025, section "Adaptive Dimension Selection".
    Jang et al., "Categorical Reparameterization with Gumbel-Softmax", ICLR 2017.
"""

from __future__ import annotations

import torch
from torch import nn


def relaxed_topk(logits: torch.Tensor, k: int, tau: float) -> torch.Tensor:
    """A soft k-hot vector: sigmoid of the distance to the top-k threshold.

    The threshold sits halfway between the k-th and (k+1)-th largest logits, so the soft
    mask crosses 0.5 exactly at the hard top-k boundary and sums to about k. Cheaper than
    k rounds of softmax (O(d log d) instead of O(k d)), which matters for 3584-dim LLMs.
    """
    d = logits.shape[-1]
    if k >= d:
        return torch.ones_like(logits)
    top = torch.topk(logits.detach(), k + 1).values  # (k + 1,)
    threshold = 0.5 * (top[k - 1] + top[k])
    return torch.sigmoid((logits - threshold) / tau)  # (d,)


class ADSelector(nn.Module):
    """Learn which ``k`` of ``d`` dimensions to keep.

    Training: Gumbel noise perturbs learnable importance scores, the hard top-k of the
    perturbed scores masks the input (forward), and the gradient flows through the
    relaxed top-k mask (straight-through), reaching the score of every dimension, kept or
    not: a dropped dimension's gradient says whether keeping it would lower the loss.
    Inference: a fixed index list (the top-k scores), so compression is a gather.

    Args:
        d: input width.
        k: dimensions kept.
        tau: temperature of the relaxed top-k.
        noise: scale of the Gumbel noise (0 turns sampling off).
        init_scores: initial importance (default: decreasing with index, which keeps the
            first ``k`` dims, i.e. the leading principal directions after a PCA init).
    """

    def __init__(self, d: int, k: int, tau: float = 0.1, noise: float = 1.0,
                 init_scores: torch.Tensor | None = None):
        super().__init__()
        if not 0 < k <= d:
            raise ValueError(f"ADS keeps k={k} of d={d} dims: need 0 < k <= d")
        self.d, self.k, self.tau, self.noise = d, k, tau, noise
        if init_scores is None:
            init_scores = torch.linspace(1.0, -1.0, d)
        self.scores = nn.Parameter(init_scores.clone().float())  # (d,)
        self.register_buffer("frozen_index", torch.empty(0, dtype=torch.long), persistent=True)

    def index(self) -> torch.Tensor:
        """The kept dimensions, in ascending position order (k,)."""
        if self.frozen_index.numel():
            return self.frozen_index
        return torch.sort(torch.topk(self.scores.detach(), self.k).indices).values

    def freeze(self) -> None:
        """Fix the index list (end of the stage): inference never looks at scores again."""
        self.frozen_index = self.index().clone()

    def mask(self) -> torch.Tensor:
        """Straight-through mask (d,): hard top-k forward, relaxed top-k gradient."""
        logits = self.scores
        if self.noise > 0:
            u = torch.rand_like(logits).clamp_(1e-9, 1 - 1e-9)
            logits = logits + self.noise * -torch.log(-torch.log(u))  # Gumbel(0, 1)
        soft = relaxed_topk(logits, self.k, self.tau)
        hard = torch.zeros_like(soft)
        hard[torch.topk(logits.detach(), self.k).indices] = 1.0
        return hard + soft - soft.detach()

    def forward(self, x: torch.Tensor, masked: bool) -> torch.Tensor:
        """``masked=True``: (n, d) with dropped dims zeroed; ``masked=False``: (n, k) gather of
        the fixed index list (inference).

        For training losses on similarities use :class:`Masked` (as the trainer does): two
        vectors both masked here give dropped dims no gradient (m_i squared at m_i = 0)."""
        if masked:
            return x * self.mask()  # (n, d)
        return x.index_select(-1, self.index().to(x.device))  # (n, k)


class Masked:
    """A training view of a selection: raw values (m, d) and a straight-through mask (d,).

    Similarities weight each dim by the mask once (``sum_i m_i a_i c_i`` over mask-weighted
    norms), which equals the cosine of the gathered vectors in the forward pass, while a
    dropped dim (m_i = 0) still gets a gradient saying whether keeping it would help. Masking
    both vectors instead would put m_i squared in the product, whose gradient vanishes at 0.
    """

    def __init__(self, raw: torch.Tensor, mask: torch.Tensor):
        self.raw, self.mask = raw, mask

    def normalized(self) -> torch.Tensor:
        norm = (self.raw.pow(2) * self.mask).sum(-1, keepdim=True).clamp(min=1e-12).sqrt()  # (m, 1)
        return self.raw / norm  # (m, d); sims below multiply by the mask once
