"""Compression heads: the SMEC head (SMRL stages with ADS) and the baselines' heads.

Every head maps full-width teacher embeddings (n, D) to L2-normalised compressed
embeddings (n, d) through ``compress(x, d)``; saved heads are safetensors files with
their layout in the metadata, loadable with :func:`load_head`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .ads import ADSelector
from .errors import SmecError


def pca_basis(x: torch.Tensor, center: bool = False) -> torch.Tensor:
    """Principal directions of x (n, d) as rows (d, d), largest variance first.

    Uncentred by default: retrieval scores are raw inner products, so the directions that
    carry the most energy of the vectors themselves (not around their mean) matter.
    """
    x = x.double()
    if center:
        x = x - x.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)  # vh: (min(n, d), d)
    if vh.shape[0] < x.shape[1]:  # fewer samples than dims: complete the basis
        q, _ = torch.linalg.qr(torch.cat([vh.T, torch.eye(x.shape[1], dtype=x.dtype)], 1))
        vh = q[:, : x.shape[1]].T
    return vh.float()


class Transform(nn.Module):
    """A learned map R^d -> R^d: linear (PCA-initialised) plus an optional residual MLP.

    The MLP's output layer starts at zero, so training starts from the linear map.
    """

    def __init__(self, d: int, hidden: int = 0, basis: torch.Tensor | None = None):
        super().__init__()
        self.linear = nn.Linear(d, d, bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(basis if basis is not None else torch.eye(d))
        self.hidden = hidden
        if hidden:
            self.up = nn.Linear(d, hidden)
            self.down = nn.Linear(hidden, d)
            nn.init.zeros_(self.down.weight)
            nn.init.zeros_(self.down.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)  # (n, d)
        if self.hidden:
            y = y + self.down(F.gelu(self.up(x)))  # (n, d)
        return y


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


HEADS = {"smec": SMECHead, "prefix": PrefixHead, "multi": MultiHead, "single": SingleHead, "cmrl": CurriculumHead}


def save_head(head: nn.Module, path: str | Path, extra: dict | None = None) -> Path:
    """Save weights and layout to one safetensors file (written to a temp name, renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(head, SMECHead):
        for st in head.stages:  # the exported index list is the inference one
            if not st.ads.frozen_index.numel():
                st.ads.freeze()
    meta = {"layout": json.dumps(head.layout()), "extra": json.dumps(extra or {})}
    state = {k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def _check_against_manifest(path: Path) -> None:
    """A head inside a run folder (``<run>/models/<setting>/<method>.safetensors``) or a stage
    export is checked against the ``manifest.json`` written with it, when there is one."""
    from .cache import FILE_MANIFEST, file_table_problem, read_file_manifest

    for root in list(path.resolve().parents)[:3]:
        try:
            listed = read_file_manifest(root)
        except SmecError:
            continue  # some other manifest.json, not ours
        rel = str(path.resolve().relative_to(root))
        if listed is not None and rel in listed:
            problem = file_table_problem(root, {rel: listed[rel]})
            if problem:
                raise SmecError(f"{path}: does not match {root / FILE_MANIFEST}: {problem}")
            return


def load_head(path: str | Path) -> nn.Module:
    """Load a head saved by :func:`save_head` (no pickle: safetensors only)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise SmecError(f"{path}: no such head file")
    _check_against_manifest(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        layout = json.loads(meta["layout"])
        state = load_file(str(path))
    except Exception as exc:  # a damaged file must not look like a head
        raise SmecError(f"{path}: not a readable smec head ({type(exc).__name__}: {exc})") from exc
    kind = layout.pop("kind", None)
    if kind not in HEADS:
        raise SmecError(f"{path}: unknown head kind {kind!r} (known: {', '.join(HEADS)})")
    try:
        head = HEADS[kind](**layout)
        head.load_state_dict(state)
    except (KeyError, TypeError, RuntimeError) as exc:
        raise SmecError(f"{path}: weights do not match the head layout ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0]})") from exc
    head.eval()
    return head


class CompressedModel:
    """A trained compressor for users: ``compress(embeddings, dim)`` on numpy or torch input.

    Example:
        >>> model = CompressedModel.load("runs/scifact/smec.safetensors")
        >>> small = model.compress(full_embeddings, 96)   # (n, 96), L2-normalised
    """

    def __init__(self, head: nn.Module):
        self.head = head.eval()

    @classmethod
    def load(cls, path: str | Path) -> "CompressedModel":
        return cls(load_head(path))

    @property
    def dims(self) -> list[int]:
        return list(self.head.dims)

    @torch.no_grad()
    def compress(self, embeddings, dim: int, batch_size: int = 65536):
        is_np = isinstance(embeddings, np.ndarray)
        x = torch.as_tensor(np.asarray(embeddings, dtype=np.float32)) if is_np else embeddings.float()
        if x.ndim != 2 or x.shape[1] != self.head.full_dim:
            raise SmecError(f"embeddings have shape {tuple(x.shape)}, expected (n, {self.head.full_dim})")
        out = torch.cat([self.head.compress(x[i:i + batch_size], dim) for i in range(0, len(x), batch_size)]) \
            if len(x) else x.new_zeros(0, dim)
        return out.numpy() if is_np else out

