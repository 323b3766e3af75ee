"""Losses for training a compression head against a teacher.

Unsupervised losses compare the student's (compressed) similarities with the teacher's
(full-width) ones; the supervised loss is InfoNCE over labelled (query, document) pairs.
:func:`objective` combines them into the loss of one batch: the SMEC objective, shared by the
SMEC head and the trained baselines in adapter mode and by end-to-end training.

References:
    Yoon et al., "Matryoshka-Adaptor: Unsupervised and Supervised Tuning for Smaller
    Embedding Dimensions", EMNLP 2024 (top-k and pairwise similarity losses).
    Zhang et al., "SMEC", EMNLP 2025.
    van den Oord et al., "Representation Learning with Contrastive Predictive Coding", 2018.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .ads import Masked
from .memory import Samples


def listwise_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(teacher || student) between softmax distributions over each row's candidates.

    Preserves the ranking at the top of each anchor's list, which is what nDCG@10 reads.

    Args:
        student: (n, m) student similarities.
        teacher: (n, m) teacher similarities.
        temperature: softmax temperature for both.
        mask: (n, m) bool, True where a candidate takes part.
    """
    if mask is not None:
        student = student.masked_fill(~mask, float("-inf"))
        teacher = teacher.masked_fill(~mask, float("-inf"))
    p = F.softmax(teacher / temperature, dim=-1)  # (n, m)
    log_q = F.log_softmax(student / temperature, dim=-1)  # (n, m)
    log_p = F.log_softmax(teacher / temperature, dim=-1)
    terms = p * (log_p - log_q)
    terms = torch.where(p > 0, terms, torch.zeros_like(terms))  # masked entries: 0 * (-inf)
    return terms.sum(-1).mean()


def pairwise_mse(student: torch.Tensor, teacher: torch.Tensor,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared difference of similarities (Matryoshka-Adaptor's pairwise loss)."""
    diff = (student - teacher) ** 2
    if mask is None:
        return diff.mean()
    return (diff * mask).sum() / mask.sum().clamp(min=1)


def info_nce(query: torch.Tensor, docs: torch.Tensor, labels: torch.Tensor, temperature: float,
             mask: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE of each query against all docs (in-batch and memory negatives).

    Args:
        query: (n, d) normalised query embeddings.
        docs: (m, d) normalised candidates; ``docs[labels[i]]`` is query i's positive.
        labels: (n,) long.
        mask: (n, m) bool, False for candidates to ignore (other positives of the query).
    """
    logits = query @ docs.T / temperature  # (n, m)
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return F.cross_entropy(logits, labels)


@dataclass
class Penalty:
    """A student output that is already a loss (a regulariser), added as is with its weight."""

    value: torch.Tensor


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


def objective(student, anchors: torch.Tensor, samples: Samples, pos: Positives | None, loss) -> torch.Tensor:
    """The loss of one batch (mean over its anchors), summed over the student's weighted
    outputs (dims).

    Args:
        student: maps teacher vectors (m, D) to a list of (weight, output) where output is
            a normalised (m, d) tensor, a :class:`~smec_dist.method.ads.Masked` selection or
            a :class:`Penalty` (see :data:`smec_dist.method.phase.Student`).
        anchors: (n, D) teacher vectors of the anchors.
        samples: their hard samples (teacher similarities included; may hold none yet when
            an end-to-end queue is still empty).
        pos: judged positives (supervised), or None.
        loss: the setting's loss settings: ``temperature``, ``kl_weight``,
            ``pairwise_weight``, ``infonce_weight`` and ``infonce_temperature`` (a
            :class:`smec_dist.config.LossConfig`, as resolved for the setting).
    """
    n, u = len(anchors), len(samples.emb)
    use_pos = pos is not None and loss.infonce_weight > 0
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
        term = anchors.new_zeros(())
        if samples.inverse.shape[1]:
            s = (qw @ su.T).gather(1, samples.inverse)  # (n, u) -> (n, k)
            term = term + loss.kl_weight * listwise_kl(s, samples.sims, loss.temperature)
            if loss.pairwise_weight:
                term = term + loss.pairwise_weight * pairwise_mse(s, samples.sims)
        if use_pos:
            docs = torch.cat([sp, su])  # (m + u, d)
            term = term + loss.infonce_weight * info_nce(qw, docs, pos.labels, loss.infonce_temperature, allowed)
        total = total + weight * term
    return total
