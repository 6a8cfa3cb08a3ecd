"""Batched rotations into and out of SOAP's eigenbases, and the Kronecker factor statistics.

X has shape [B, *view_shape]; bases[d] is None or a stack [B, n_d, n_d] for dim d.
    project(X)      = X x_d Q_d   for every factored d   (Q_L^T X Q_R for a matrix)
    project_back(X) = X x_d Q_d^T for every factored d   (Q_L X Q_R^T for a matrix)
    gram(X, d)      = X_(d) X_(d)^T, the mode-d unfolding times its transpose (G G^T, G^T G for a matrix)
Each contraction is one batched matmul over the whole stack of same-shape parameters.
"""

from __future__ import annotations

import torch


def _contract(x: torch.Tensor, dim: int, matrix: torch.Tensor) -> torch.Tensor:
    """Y[b, ..., a, ...] = sum_i X[b, ..., i, ...] M[b, i, a], contracting tensor dim `dim` (>= 1)."""
    batch, size = x.shape[0], x.shape[dim]
    if dim == x.dim() - 1:  # last dim: X[B, R, n] @ M
        return (x.reshape(batch, -1, size) @ matrix).reshape(x.shape)
    if dim == 1:  # first dim: M^T @ X[B, n, R]
        return (matrix.mT @ x.reshape(batch, size, -1)).reshape(x.shape)
    moved = x.movedim(dim, -1)
    out = moved.reshape(batch, -1, size) @ matrix
    return out.reshape(moved.shape).movedim(-1, dim)


def project(x: torch.Tensor, bases: list[torch.Tensor | None]) -> torch.Tensor:
    """Rotate x into the eigenbases: contract each factored dim d with Q_d."""
    for d, basis in enumerate(bases):
        if basis is not None:
            x = _contract(x, d + 1, basis)
    return x


def project_back(x: torch.Tensor, bases: list[torch.Tensor | None]) -> torch.Tensor:
    """Rotate x back to parameter coordinates: contract each factored dim d with Q_d^T."""
    for d, basis in enumerate(bases):
        if basis is not None:
            x = _contract(x, d + 1, basis.mT)
    return x


def gram(x: torch.Tensor, dim: int) -> torch.Tensor:
    """X_(d) X_(d)^T for tensor dim `dim` (>= 1): contracts every other non-batch dim, [B, n, n]."""
    batch, size = x.shape[0], x.shape[dim]
    if dim == x.dim() - 1:
        unfolded = x.reshape(batch, -1, size)
        return unfolded.mT @ unfolded
    unfolded = x.movedim(dim, 1).reshape(batch, size, -1)
    return unfolded @ unfolded.mT
