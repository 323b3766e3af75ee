"""Head files: save and load any trained head, and :class:`CompressedModel` for users.

Every head maps full-width teacher embeddings (n, D) to L2-normalised compressed
embeddings (n, d) through ``compress(x, d)``. A saved head is one safetensors file (no pickle)
that describes itself in its metadata:

* ``layout``: the head's class and shape (what :func:`load_head` builds);
* ``about``: which embeddings it expects and how it was made: the base model (name, and its
  identity: a digest of its weights or a hub revision), pooling, max_length, normalisation,
  instructions, the method, the training setting, dims, seed, dataset;
* ``tensors_sha256``: a digest of every tensor, checked on every load wherever the file lies,
  so a copied-out or tampered head cannot load silently.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import SmecError
from ..io import atomic_path, check_listed
from .registry import HEAD_KINDS
from .smrl import SMECHead

log = logging.getLogger(__name__)

HEADS = HEAD_KINDS  # kind in a head file -> class (from the registry)


class PerDimHead(nn.Module):
    """A head per dim, each possibly of another method: what ``run.select`` exports (the best
    method and setting at each dim, chosen on validation). ``compress(x, d)`` uses dim d's head.

    Args:
        heads: dim -> head (each must give that dim).
    """

    kind = "perdim"

    def __init__(self, full_dim: int, dims: list[int], hidden: int = 0, parts: dict | None = None,
                 heads: dict[int, nn.Module] | None = None):
        super().__init__()
        self.full_dim, self.dims, self.hidden = full_dim, sorted(dims, reverse=True), 0
        if heads is None:  # being loaded: build each part from its layout
            heads = {int(d): HEADS[layout["kind"]](**{k: v for k, v in layout.items() if k != "kind"})
                     for d, layout in (parts or {}).items()}
        self.parts = nn.ModuleDict({str(d): h for d, h in heads.items()})

    def compress(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        if dim == self.full_dim:
            return torch.nn.functional.normalize(x, dim=-1)
        if str(dim) not in self.parts:
            raise SmecError(f"dim {dim} is not one of this head's dims {self.dims}")
        return self.parts[str(dim)].compress(x, dim)

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        for d, part in self.parts.items():  # SMEC parts take their index lists' sizes from the state
            if isinstance(part, SMECHead):
                prefix = f"parts.{d}."
                part.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        return super().load_state_dict(state, strict=strict, assign=assign)

    def layout(self) -> dict:
        return {"kind": self.kind, "full_dim": self.full_dim, "dims": self.dims, "hidden": 0,
                "parts": {d: h.layout() for d, h in self.parts.items()}}


HEADS[PerDimHead.kind] = PerDimHead


def tensors_sha256(state: dict[str, torch.Tensor]) -> str:
    """A digest of a state dict's tensors: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def save_head(head: nn.Module, path: str | Path, about: dict | None = None) -> Path:
    """Save a head to one safetensors file: weights, layout, what it is (``about``: see the
    module docstring) and the tensors' digest; written to a temporary name and renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for part in head.modules():
        if isinstance(part, SMECHead):
            part.freeze_selections()  # the exported index list is the inference one
    # cloned: a head that holds one part under several names (run.select) must not share storage
    state = {k: v.detach().cpu().clone().contiguous() for k, v in head.state_dict().items()}
    about = {"full_dim": head.full_dim, "dims": list(head.dims), **(about or {})}
    meta = {"layout": json.dumps(head.layout()), "about": json.dumps(about), "tensors_sha256": tensors_sha256(state)}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


def head_about(path: str | Path) -> dict:
    """What a head file says about itself (its ``about`` metadata; ``{}`` for a head written
    before heads described themselves)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {}).get("about", "{}"))
    except Exception as exc:  # a damaged file must not look like a head
        raise SmecError(f"{path}: not a readable smec head ({type(exc).__name__}: {exc})") from exc


def load_head(path: str | Path) -> nn.Module:
    """Load a head saved by :func:`save_head` (no pickle: safetensors only)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise SmecError(f"{path}: no such head file")
    # a head inside a run folder (<run>/models/<setting>/<method>.safetensors) or a stage
    # export is checked against the manifest.json written with it, when there is one
    check_listed(path, levels=3)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        layout = json.loads(meta["layout"])
        state = load_file(str(path))
    except Exception as exc:  # a damaged file must not look like a head
        raise SmecError(f"{path}: not a readable smec head ({type(exc).__name__}: {exc})") from exc
    want = meta.get("tensors_sha256")
    if want is None:
        log.warning("%s: written before heads carried a checksum: loaded unchecked", path)
    elif tensors_sha256(state) != want:
        raise SmecError(f"{path}: its tensors do not match the sha256 recorded in the file (altered or corrupt)")
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

    def __init__(self, head: nn.Module, about: dict | None = None):
        self.head = head.eval()
        self.about = dict(about or {})  # which embeddings it expects, how it was trained (save_head)

    @classmethod
    def load(cls, path: str | Path) -> "CompressedModel":
        return cls(load_head(path), head_about(path))

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

