"""The learned map every head is built from, and its PCA start."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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

    def start_from(self, basis: torch.Tensor) -> None:
        """Set the linear map to ``basis`` (d, d) rows: where a phase starts training."""
        with torch.no_grad():
            self.linear.weight.copy_(basis)
