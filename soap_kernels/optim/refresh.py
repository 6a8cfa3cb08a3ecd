"""Eigenbasis refresh of a stack of Kronecker factors L[b] given the current bases Q[b].

Both methods first order the current basis by its Rayleigh quotients, descending:
    est = diag(Q^T L Q),  order = argsort(est, descending)
(the caller permutes Adam's second moment along the factor's axis with `order`), then
- "qr"   (the reference): one power iteration, Q <- orthonormal factor of L Q[:, order] (torch.linalg.qr);
- "eigh" (exact):          Q <- eigenvectors of L, descending eigenvalues (torch.linalg.eigh, cold start);
- "exact" (exact, warm):   soap_kernels::refresh_eigenbasis(method="exact"): Jacobi sweeps on Q^T L Q from the
          current basis, in C++/CUDA without cuSOLVER or host syncs (graph-safe on CUDA), returning its own
          column order (new column j grew out of old column order[j]); at most EXACT_REFRESH_MAX_SWEEPS sweeps.
          Slow on CPU (a scalar solver); for GPUs.
- "qr_kernel" (internal, used by capturable steps and by "qr" on a CPU with the C++ kernel): the "qr" refresh
          computed by soap_kernels::refresh_eigenbasis(method="qr") (CholeskyQR on CUDA, no cuSOLVER or host
          syncs; Householder over threads on the CPU): the same nested subspaces as "qr", so the same trajectory
          up to column signs and rounding.
- "qr_kernel_batched" (internal, "qr" on CUDA with the native kernels): "qr_kernel" for a stack of at least
          CUDA_QR_KERNEL_MIN_BATCH factors, "qr" (cuSOLVER) for fewer, whichever an H100 ran faster.
The first basis comes from initial_basis: eigenvectors of (L + 1e-30 I), descending.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from soap_kernels._backend import native_kernels_for
from soap_kernels.ops.refresh_eigenbasis import refresh_eigenbasis

REFRESH_METHODS = ("qr", "eigh", "exact")
# Jacobi sweeps per "exact" refresh. SOAP's refreshes are warm (the last basis, a few steps old): they converge
# in 3-5 sweeps (tests/test_block_jacobi.py, bench/refresh.py), and a basis that needs more is still
# orthonormal and keeps converging at the next refresh. The cap bounds the work of a graph-safe refresh, which
# cannot stop early without a host read (the CUDA block-Jacobi path runs every sweep up to the cap).
EXACT_REFRESH_MAX_SWEEPS = 8
CAPTURABLE_REFRESH_METHODS = ("qr", "exact")
ALL_METHODS = REFRESH_METHODS + ("qr_kernel", "qr_kernel_batched")  # with the internal ones (module docstring)


# An eager CUDA "qr" refresh runs the CholeskyQR op for stacks of at least this many factors, torch.linalg.qr
# for fewer. On an H100 (refresh-*.json in bench/results/gpu-check-NVIDIA-H100-80GB-HBM3-2026-11-28/) the op took
# 0.5-2.8 ms at batch 1 and 8 for n = 64-384, cuSOLVER about 0.19-1.33 ms per matrix: the op is 0.47-0.86x at
# batch 1, 2.4-4.5x at batch 8 and 4.5-20x at batch 40; the crossover, interpolated from those, lies near 2-3.
CUDA_QR_KERNEL_MIN_BATCH = 3


def step_method(method: str, capturable: bool, impl: str, device: torch.device) -> str:
    """The refresh a step runs for the group's `method`: "qr" becomes the op ("qr_kernel") in a capturable step
    (no cuSOLVER, no host synchronisation) and on a CPU with the C++ kernel (Householder in the input dtype,
    matrices over threads: faster than torch.linalg.qr on a batch, bench/refresh.py). On CUDA with the native
    kernels an eager "qr" becomes "qr_kernel_batched": the op for stacks of CUDA_QR_KERNEL_MIN_BATCH factors or
    more, torch.linalg.qr below."""
    device = torch.device(device)
    native = impl != "torch" and native_kernels_for(device)
    if method != "qr" or not (capturable or native):
        return method
    if capturable or device.type == "cpu":
        return "qr_kernel"
    return "qr_kernel_batched"


def initial_basis(factor: torch.Tensor) -> torch.Tensor:
    """Q[b] = eigenvectors of L[b] + 1e-30 I with eigenvalues in descending order, [B, n, n]."""
    eye = torch.eye(factor.shape[-1], dtype=factor.dtype, device=factor.device)
    _, vectors = torch.linalg.eigh(factor + 1e-30 * eye)
    # LAPACK returns column-major eigenvectors; the stacked state is row-major, so that a basis rebuilt from a
    # checkpoint has the same layout (and the same matmul rounding) as one that never left memory.
    return vectors.flip(-1).contiguous()


def refresh_basis(factor: torch.Tensor, basis: torch.Tensor, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """New bases [B, n, n] and the column order [B, n] applied to the old basis (see module docstring).

    A 1 x 1 factor (a dim of size 1, e.g. of a 256 x 1 output layer) has the basis [1] by every method: LAPACK's
    QR of a 1 x 1 matrix is Q = 1 whatever its sign, the op's CholeskyQR returns sign(q) = 1 for the basis 1
    that eigh starts it from, and so does Jacobi; it is built directly instead of by the op's ~70 CUDA launches.
    """
    if method not in ALL_METHODS:
        raise ValueError(f"unknown refresh method {method!r}; expected one of {ALL_METHODS}")
    if factor.shape[-1] == 1:
        return torch.ones_like(basis), torch.zeros(basis.shape[:-1], dtype=torch.int64, device=basis.device)
    return _refresh_basis(factor, basis, method)


def _refresh_basis(factor: torch.Tensor, basis: torch.Tensor, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """refresh_basis by the method's algorithm, for any n."""
    if method == "exact":
        return refresh_eigenbasis(factor, basis, "exact", max_sweeps=EXACT_REFRESH_MAX_SWEEPS)
    if method == "qr_kernel_batched":
        method = "qr_kernel" if factor.shape[0] >= CUDA_QR_KERNEL_MIN_BATCH else "qr"
    if method == "qr_kernel":
        return refresh_eigenbasis(factor, basis, "qr")
    factor_times_basis = factor @ basis
    rayleigh = (basis * factor_times_basis).sum(dim=-2)  # diag(Q^T L Q) without forming Q^T L Q
    order = torch.argsort(rayleigh, dim=-1, descending=True, stable=True)
    if method == "qr":
        columns = order.unsqueeze(-2).expand_as(factor_times_basis)
        power_iterate = factor_times_basis.gather(-1, columns)  # L Q[:, order]
        return torch.linalg.qr(power_iterate).Q, order
    if method == "eigh":
        return initial_basis(factor), order
    raise AssertionError(f"unreachable: method {method!r} passed refresh_basis's check")


# (request key, factor stack [B, n, n], basis stack [B, n, n], method)
RefreshRequest = tuple[tuple, torch.Tensor, torch.Tensor, str]


def batched_refresh(requests: Sequence[RefreshRequest]) -> dict[tuple, tuple[torch.Tensor, torch.Tensor]]:
    """{key: (new_basis [B, n, n], order [B, n])} for every request, with one refresh_basis call per factor size,
    dtype, device and method: the factors (and bases) of all stacks of one size are concatenated first.

    Each matrix is refreshed on its own, so this changes no result (beyond qr_kernel_batched choosing by the
    joint batch); it changes how often the refresh launches its kernels: the CholeskyQR op issues about 70 per
    call on CUDA whatever the batch, and a PirateNet has factors of one size in four stacks.
    """
    sharing: dict[tuple, list[int]] = {}
    for i, (_, factor, _, method) in enumerate(requests):
        sharing.setdefault((factor.shape[-1], factor.dtype, factor.device, method), []).append(i)
    results: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
    for (_, _, _, method), members in sharing.items():
        if len(members) == 1:
            key, factor, basis, _ = requests[members[0]]
            results[key] = refresh_basis(factor, basis, method)
            continue
        factors = torch.cat([requests[i][1] for i in members])
        bases = torch.cat([requests[i][2] for i in members])
        new_bases, orders = refresh_basis(factors, bases, method)
        counts = [requests[i][1].shape[0] for i in members]
        for i, new_basis, order in zip(members, new_bases.split(counts), orders.split(counts)):
            results[requests[i][0]] = (new_basis, order)
    return results
