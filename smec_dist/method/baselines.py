"""The baselines' heads and how each is trained (its phases), on the SMEC objective.

- :class:`PrefixHead` (``mrl``): one full-width map, every dim's loss at once on its prefixes;
- :class:`MultiHead` (``linear``): one separately trained map per dim (the single linear
  adapter);
- :class:`SingleHead` (``single``): one map trained at full width only, evaluated truncated;
- :class:`CurriculumHead` (``cmrl``): curriculum MRL from DEMRL++.

They share SMEC's loss, optimizer and schedule, so a comparison isolates SMEC's parts.

References:
    Kusupati et al., "Matryoshka Representation Learning", NeurIPS 2022.
    Yoon et al., "Matryoshka-Adaptor", EMNLP 2024 (the single linear adapter).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SmecError
from .losses import Penalty
from .phase import Basis, Phase
from .transform import Transform, pca_basis


class PrefixHead(nn.Module):
    """A full-width map followed by prefix truncation: the MRL-style head.

    With ``dims`` of one element and ``hidden=0`` it is the single linear adapter."""

    kind = "prefix"

    def __init__(self, full_dim: int, dims: list[int], hidden: int = 0, basis: torch.Tensor | None = None):
        super().__init__()
        self.full_dim, self.dims, self.hidden = full_dim, list(dims), hidden
        self.transform = Transform(full_dim, hidden, basis)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform(x)

    def compress(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        if dim not in self.dims and dim != self.full_dim:
            raise SmecError(f"dim {dim} is not one of this head's dims {self.dims}")
        return F.normalize(self.transform(x)[:, :dim], dim=-1)

    def layout(self) -> dict:
        return {"kind": self.kind, "full_dim": self.full_dim, "dims": self.dims, "hidden": self.hidden}


class MultiHead(nn.Module):
    """One separately trained head per dim (the single-linear-adapter baseline, all dims)."""

    kind = "multi"

    def __init__(self, full_dim: int, dims: list[int], hidden: int = 0):
        super().__init__()
        self.full_dim, self.dims, self.hidden = full_dim, list(dims), hidden
        self.heads = nn.ModuleDict({str(d): PrefixHead(full_dim, [d], hidden) for d in self.dims})

    def compress(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        if dim == self.full_dim:
            return F.normalize(x, dim=-1)
        if str(dim) not in self.heads:
            raise SmecError(f"dim {dim} is not one of this head's dims {self.dims}")
        return self.heads[str(dim)].compress(x, dim)

    def layout(self) -> dict:
        return {"kind": self.kind, "full_dim": self.full_dim, "dims": self.dims, "hidden": self.hidden}


class FixedHead(nn.Module):
    """An untrained compression as a head: a fixed map (the PCA basis; the identity for
    truncation), its first d outputs, L2-normalised. It lets PCA and truncation be exported,
    chosen (``run.select``) and served like any trained head.

    Args:
        basis: (D, D) rows, the directions kept in order (default: the identity).
    """

    kind = "fixed"

    def __init__(self, full_dim: int, dims: list[int], hidden: int = 0, basis: torch.Tensor | None = None):
        super().__init__()
        self.full_dim, self.dims, self.hidden = full_dim, list(dims), 0
        self.register_buffer("basis", basis.clone().float() if basis is not None else torch.eye(full_dim))

    def compress(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        if dim not in self.dims and dim != self.full_dim:
            raise SmecError(f"dim {dim} is not one of this head's dims {self.dims}")
        return F.normalize(x @ self.basis[:dim].T, dim=-1)

    def layout(self) -> dict:
        return {"kind": self.kind, "full_dim": self.full_dim, "dims": self.dims, "hidden": 0}


class SingleHead(PrefixHead):
    """The single-resolution ablation: one map trained at full width only, then truncated.

    It starts from the backbone's own coordinates (identity), as a model fine-tuned without
    any Matryoshka loss would, so its truncations show what a single-resolution model gives
    when cut short."""

    kind = "single"

    def compress(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        if dim != self.full_dim and dim not in self.dims:
            raise SmecError(f"dim {dim} is not one of this head's dims {self.dims}")
        return F.normalize(self.transform(x)[:, :dim], dim=-1)


class CurriculumHead(nn.Module):
    """Curriculum MRL (DEMRL++): a shared full-width map, then for each dim d a learnable
    projection and LayerNorm of its first d outputs.

    ``z_d = normalize(LayerNorm_d(P_d · T(x)[:d]))``; ``P_d`` starts at the identity, so
    training starts from the prefixes of ``T`` (PCA-initialised, like the MRL-style head).

    References:
        DEMRL++ plan (curriculum MRL, per-dim projection + LayerNorm);
        Kusupati et al., "Matryoshka Representation Learning", NeurIPS 2022.
    """

    kind = "cmrl"

    def __init__(self, full_dim: int, dims: list[int], hidden: int = 0):
        super().__init__()
        self.full_dim, self.dims, self.hidden = full_dim, list(dims), hidden
        self.transform = Transform(full_dim, hidden)
        self.proj = nn.ModuleDict({str(d): nn.Linear(d, d, bias=False) for d in self.dims})
        self.norm = nn.ModuleDict({str(d): nn.LayerNorm(d) for d in self.dims})
        with torch.no_grad():
            for d in self.dims:
                self.proj[str(d)].weight.copy_(torch.eye(d))

    def full(self, x: torch.Tensor) -> torch.Tensor:
        """The shared map's full-width output (n, D), before normalisation."""
        return self.transform(x)

    def view(self, z: torch.Tensor, dim: int) -> torch.Tensor:
        """The normalised dim-``dim`` embedding (n, dim) of the shared output ``z`` (n, D)."""
        key = str(dim)
        return F.normalize(self.norm[key](self.proj[key](z[:, :dim])), dim=-1)

    def compress(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        if dim == self.full_dim:
            return F.normalize(x, dim=-1)
        if dim not in self.dims:
            raise SmecError(f"dim {dim} is not one of this head's dims {self.dims}")
        return self.view(self.transform(x), dim)

    def layout(self) -> dict:
        return {"kind": self.kind, "full_dim": self.full_dim, "dims": self.dims, "hidden": self.hidden}


# ------------------------------------------------------------------------------- phases


def prefix_phases(head: PrefixHead, basis: Basis, cfg) -> list[Phase]:
    """MRL-style: one phase, every dim's loss at once on prefixes of one map."""
    def student(x):
        y = head(x)  # (m, D)
        return [(1.0, F.normalize(y[:, :d], dim=-1)) for d in head.dims]

    return [Phase("mrl:" + "/".join(map(str, head.dims)), [{"params": list(head.parameters()), "lr": cfg.lr}],
                  student, start=lambda: head.transform.start_from(pca_basis(basis())))]


def multi_phases(head: MultiHead, basis: Basis, cfg) -> list[Phase]:
    """Single linear adapter: each dim's map trained on its own."""
    return [Phase(f"linear:{d}", [{"params": list(sub.parameters()), "lr": cfg.lr}],
                  lambda x, sub=sub, d=d: [(1.0, F.normalize(sub(x)[:, :d], dim=-1))],
                  start=lambda sub=sub: sub.transform.start_from(pca_basis(basis())))
            for d, sub in ((d, head.heads[str(d)]) for d in head.dims)]


def single_phases(head: SingleHead, basis: Basis, cfg) -> list[Phase]:
    """Single resolution: one map trained at full width only (evaluated truncated).

    It starts from the backbone's coordinates (the identity), not from PCA: the ablation is
    a model trained without any Matryoshka loss."""
    return [Phase(f"single:{head.full_dim}", [{"params": list(head.parameters()), "lr": cfg.lr}],
                  lambda x: [(1.0, F.normalize(head(x), dim=-1))])]


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


def curriculum_phases(head: CurriculumHead, basis: Basis, cfg) -> list[Phase]:
    """Curriculum MRL (DEMRL++): one phase; every batch trains the task loss at ONE target dim
    drawn from :func:`curriculum_probs`, plus the cross-dimension consistency loss

        L_cons = Σ_d λ_d (1 - cos(pad(z_d), stop_grad(z_D)))

    of every dim's embedding against the (stop-gradient) full-width output of the shared map.
    The draws come from a generator seeded with ``cfg.seed`` (reproducible).
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

    return [Phase("cmrl:" + "/".join(map(str, head.dims)), [{"params": list(head.parameters()), "lr": cfg.lr}],
                  student, start=lambda: head.transform.start_from(pca_basis(basis())),
                  progress=lambda frac: state.update(frac=frac))]
