"""Eigenbasis refresh of a stack of Kronecker factors L[b] given the current bases Q[b].

Both methods first order the current basis by its Rayleigh quotients, descending:
    est = diag(Q^T L Q),  order = argsort(est, descending)
(the caller permutes Adam's second moment along the factor's axis with `order`), then
- "qr"   (the reference): one power iteration, Q <- orthonormal factor of L Q[:, order] (Householder QR,
          the same reflectors as torch.linalg.qr; on CPU Q is formed from geqrf's reflectors with one
          triangular solve and one matmul, about twice as fast as LAPACK's orgqr here);
- "eigh" (exact):          Q <- eigenvectors of L, descending eigenvalues.
The first basis comes from initial_basis: eigenvectors of (L + 1e-30 I), descending.
"""

from __future__ import annotations

import torch

REFRESH_METHODS = ("qr", "eigh")


def _descending_eigenvectors(factor: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(factor.shape[-1], dtype=factor.dtype, device=factor.device)
    _, vectors = torch.linalg.eigh(factor + 1e-30 * eye)
    return vectors.flip(-1)


def initial_basis(factor: torch.Tensor) -> torch.Tensor:
    """Q[b] = eigenvectors of L[b] + 1e-30 I with eigenvalues in descending order, [B, n, n]."""
    return _descending_eigenvectors(factor)


def householder_q(a: torch.Tensor) -> torch.Tensor:
    """Q of the Householder QR a = Q R ([B, n, n]), formed in compact WY form from torch.geqrf's reflectors.

    With unit-lower-triangular reflectors V and scalars tau, Q = H_1 ... H_n = I - V T V^T where
    T^{-1} = striu(V^T V) + diag(1 / tau) (the "UT transform"), so Q = I - V (T^{-1} \\ V^T).
    A reflector with tau = 0 is the identity and is dropped.
    """
    reflectors, tau = torch.geqrf(a)
    active = tau != 0
    v = reflectors.tril(-1)
    v.diagonal(dim1=-2, dim2=-1).fill_(1.0)
    v = v * active.unsqueeze(-2)
    t_inverse = (v.mT @ v).triu(1)
    t_inverse.diagonal(dim1=-2, dim2=-1).copy_(torch.where(active, 1.0 / torch.where(active, tau, 1.0), 1.0))
    q = -(v @ torch.linalg.solve_triangular(t_inverse, v.mT, upper=True))
    q.diagonal(dim1=-2, dim2=-1).add_(1.0)
    return q


def orthonormal_factor(a: torch.Tensor) -> torch.Tensor:
    """Q of the Householder QR of each a[b] (column signs as LAPACK's: R has the reflectors' signs)."""
    if a.device.type == "cpu":
        return householder_q(a)
    return torch.linalg.qr(a).Q


def refresh_basis(factor: torch.Tensor, basis: torch.Tensor, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """New bases [B, n, n] and the column order [B, n] applied to the old basis (see module docstring)."""
    factor_times_basis = factor @ basis
    rayleigh = (basis * factor_times_basis).sum(dim=-2)  # diag(Q^T L Q) without forming Q^T L Q
    order = torch.argsort(rayleigh, dim=-1, descending=True, stable=True)
    if method == "qr":
        columns = order.unsqueeze(-2).expand_as(factor_times_basis)
        power_iterate = factor_times_basis.gather(-1, columns)  # L Q[:, order]
        return orthonormal_factor(power_iterate), order
    if method == "eigh":
        return _descending_eigenvectors(factor), order
    raise ValueError(f"unknown refresh method {method!r}; expected one of {REFRESH_METHODS}")
