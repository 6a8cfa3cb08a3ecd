"""The frame of refresh_eigenbasis's float64 torch paths (the reference, the block-Jacobi driver), around the
diagonaliser or orthonormaliser each brings (the algorithm: refresh_eigenbasis.py's module docstring):

    sanitised:            l0 = L (0 where L holds NaN/Inf), q0 = Q (I where Q does), in float64
    warm_exact_basis:     Q~ = q0 (3 I - q0^T q0) / 2,  B = Q~^T l0 Q~ symmetrised = V diag(lambda) V^T,
                          order = stable argsort(lambda, descending),  new basis = Q~ V[:, order]
    keep_old_where_failed: the sanitised old basis and order 0..n-1 where the step failed or the result's
                          columns are not unit vectors (NaN and Inf fail that too); back to the input dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def sanitised(factor: torch.Tensor, basis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(l0, q0, factor_finite [batch] bool) in float64; finiteness judged by each matrix's sum."""
    batch, n, _ = factor.shape
    l, q = factor.double(), basis.double()
    identity = torch.eye(n, dtype=l.dtype, device=l.device).expand(batch, n, n)
    factor_finite = torch.isfinite(l.sum((-2, -1)))  # NaN/Inf anywhere (or an overflowing sum)
    basis_finite = torch.isfinite(q.sum((-2, -1)))
    q0 = torch.where(basis_finite.view(batch, 1, 1), q, identity)
    l0 = torch.where(factor_finite.view(batch, 1, 1), l, torch.zeros((), dtype=l.dtype, device=l.device))
    return l0, q0, factor_finite


def warm_exact_basis(
    l0: torch.Tensor,
    q0: torch.Tensor,
    diagonalise: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, object]],
) -> tuple[torch.Tensor, torch.Tensor, object]:
    """(new basis, order, what diagonalise reported besides); diagonalise(B) -> (lambda, V^T, extra)."""
    batch, n, _ = q0.shape
    polished = 1.5 * q0 - 0.5 * (q0 @ (q0.mT @ q0))
    rotated = polished.mT @ (l0 @ polished)
    rotated = (rotated + rotated.mT) * 0.5
    eigenvalues, v_t, extra = diagonalise(rotated)
    order = torch.sort(eigenvalues, dim=-1, descending=True, stable=True).indices
    result = polished @ torch.gather(v_t, 1, order.unsqueeze(-1).expand(batch, n, n)).mT
    return result, order, extra


def keep_old_where_failed(
    result: torch.Tensor, order: torch.Tensor, q0: torch.Tensor, solved: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Result and order where `solved` and the columns are unit vectors, else q0 and 0..n-1; in `dtype`."""
    batch, n, _ = q0.shape
    orthonormal = ((result.square().sum(-2) - 1.0).abs() < 1e-3).all(-1)
    ok = solved & orthonormal  # NaN/Inf fail the column-norm test too
    result = torch.where(ok.view(batch, 1, 1), result, q0)
    order = torch.where(ok.view(batch, 1), order, torch.arange(n, device=q0.device).expand(batch, n))
    return result.to(dtype), order
