"""SMRL: sequential Matryoshka learning, one halving at a time.

The SMEC head is a chain of stages D -> d_1 -> d_2 -> ...; stage s owns a learned map on the
d_{s-1}-dim output of stage s-1 and an ADS selector that keeps d_s of its dims. Training runs
one :class:`~smec_dist.method.phase.Phase` per stage (:func:`smec_phases`): stage s trains while
every earlier stage is frozen (no gradient, no optimizer state, bit-identical afterwards).

References:
    Zhang et al., "SMEC: Rethinking Matryoshka Representation Learning for Retrieval
    Embedding Compression", EMNLP 2025 (SMRL, ADS).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SmecError
from .ads import ADSelector, Masked
from .phase import Basis, Phase
from .transform import Transform, pca_basis


class SMECStage(nn.Module):
    """One SMRL stage: transform the previous stage's output, then keep d_out dims by ADS."""

    def __init__(self, d_in: int, d_out: int, hidden: int = 0, basis: torch.Tensor | None = None,
                 tau: float = 0.1, noise: float = 1.0, score_scale: float = 1.0):
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        self.transform = Transform(d_in, hidden, basis)
        self.ads = ADSelector(d_in, d_out, tau=tau, noise=noise,
                              init_scores=torch.linspace(score_scale, -score_scale, d_in))

    def forward(self, x: torch.Tensor, masked: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the transformed input (n, d_in) and the selection: (n, d_in) masked when
        ``masked`` (training), else (n, d_out) gathered."""
        z = self.transform(x)  # (n, d_in)
        return z, self.ads(z, masked)


class SMECHead(nn.Module):
    """The SMEC compression head: a chain of SMRL stages D -> d_1 -> d_2 -> ...

    The d_s embedding is computed from the d_{s-1} one, so a stored d_{s-1} index can be
    compressed further without the original vectors, and training stage s never changes
    what stages < s produce (they are frozen).

    References:
        Zhang et al., "SMEC", EMNLP 2025 (SMRL, ADS).
    """

    kind = "smec"

    def __init__(self, full_dim: int, dims: list[int], hidden: int = 0, tau: float = 0.1,
                 noise: float = 1.0, score_scale: float = 1.0):
        super().__init__()
        self.full_dim, self.dims, self.hidden = full_dim, list(dims), hidden
        widths = [full_dim] + self.dims
        self.stages = nn.ModuleList(
            SMECStage(widths[i], widths[i + 1], hidden, tau=tau, noise=noise, score_scale=score_scale)
            for i in range(len(self.dims))
        )

    def stage_input(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        """The (frozen) output of stages < ``stage``: the input of stage ``stage`` (n, d)."""
        for s in range(stage):
            x = self.stages[s](x, masked=False)[1]
        return x

    def compress(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        if dim == self.full_dim:
            return F.normalize(x, dim=-1)
        if dim not in self.dims:
            raise SmecError(f"dim {dim} is not one of this head's dims {self.dims}")
        return F.normalize(self.stage_input(x, self.dims.index(dim) + 1), dim=-1)

    def layout(self) -> dict:
        return {"kind": self.kind, "full_dim": self.full_dim, "dims": self.dims, "hidden": self.hidden}

    def freeze_selections(self) -> None:
        """Fix every stage's ADS index list (what inference and an exported head use)."""
        for st in self.stages:
            if not st.ads.frozen_index.numel():
                st.ads.freeze()

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        # a fixed ADS index list is an empty buffer until its stage ends: take its size from the state
        for i, st in enumerate(self.stages):
            key = f"stages.{i}.ads.frozen_index"
            if key in state:
                st.ads.frozen_index = state[key].clone().to(st.ads.scores.device)
        return super().load_state_dict(state, strict=strict, assign=assign)

    def first_stages(self, n: int) -> "SMECHead":
        """A copy holding stages ``< n`` only: the model exported when stage ``n`` ends."""
        part = SMECHead(self.full_dim, self.dims[:n], self.hidden)
        prefix = tuple(f"stages.{i}." for i in range(n))
        part.load_state_dict({k: v.detach().clone().cpu() for k, v in self.state_dict().items() if k.startswith(prefix)})
        return part


def smec_phases(head: SMECHead, basis: Basis, cfg) -> list[Phase]:
    """One phase per SMRL stage: stage s trains L(d_s), earlier stages frozen.

    The paper's stage loss is L(d_{s-1}) + L(d_s); here the d_{s-1} embedding is the frozen
    output of stage s-1 (of the backbone, for stage 1), so L(d_{s-1}) is constant and only
    L(d_s) has a gradient. ``cfg.high_weight`` adds a loss at d_{s-1} on the stage's
    transformed input instead (a regulariser), and ``cfg.lookahead`` the later dims on this
    stage's leading dims.

    Args:
        head: the head whose stages are trained.
        basis: returns teacher vectors (m, D) whose principal directions initialise each
            stage (called once, when the stage starts).
        cfg: the head's training settings (``lr``, ``ads_lr``, ``ads_noise``, ``ads_anneal``,
            ``lookahead``, ``lookahead_weight``, ``high_weight``; a ``TrainConfig``).
    """
    phases = []
    for s, stage in enumerate(head.stages):
        def start(s=s, stage=stage):
            # PCA of this stage's (frozen) input: its first dims carry most energy
            with torch.no_grad():
                stage.transform.start_from(pca_basis(head.stage_input(basis(), s)))

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

        def progress(frac, stage=stage):
            # Gumbel noise explores selections early; for the last part of the stage the
            # selection is fixed (no noise, scores no longer learn) and only the transform
            # trains, so the frozen index list is the one the transform was last trained with.
            stage.ads.noise = cfg.ads_noise * max(0.0, 1.0 - frac / cfg.ads_anneal)
            if frac >= cfg.ads_anneal and stage.ads.scores.requires_grad:
                stage.ads.scores.requires_grad_(False)
                stage.ads.scores.grad = None  # Adam skips a parameter without a gradient

        params = [{"params": list(stage.transform.parameters()), "lr": cfg.lr},
                  {"params": [stage.ads.scores], "lr": cfg.ads_lr}]
        phases.append(Phase(f"stage{s + 1}:{stage.d_in}->{stage.d_out}", params, student, end,
                            start=start, progress=progress))
    return phases
