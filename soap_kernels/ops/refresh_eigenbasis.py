"""soap_kernels::refresh_eigenbasis: SOAP's periodic eigenbasis refresh, batched, exact or one power step.

Given stacks of Kronecker factors L[b] (n x n, symmetric positive semi-definite) and the previous bases
Q[b] (orthonormal columns), returns new bases and the column permutation `order` [batch, n] that the
caller applies to Adam's second moment along the same axis (``v.index_select(axis, order[b])``).
Everything is computed in float64 and returned in the input dtype (float32 or float64), except the CPU
kernel's "qr" (see Implementations).

method="qr" (SOAP's reference refresh: sort, one power step, orthonormalise)::

    d = diag(Q^T L Q);  order = stable argsort(d, descending);  Q_s = Q[:, order]
    X = L Q_s / ||L||_F + delta Q_s              (delta = 1e-12 for float64, 2^-24 for float32)
    CholeskyQR passes, 3 for float64 and 2 for float32, the first shifted by s = 11 (n^2 + n (n + 1)) u ||X||_F^2:
        G = X^T X (+ s I) = R^T R,  X <- X R^{-1}
    new basis = X

  R has a positive diagonal, so X[:, :k+1] spans the same nested subspaces as ``torch.linalg.qr(L @ Q_s)[0]``:
  equal columns up to sign and rounding. The delta ||L||_F shift (a backward perturbation of L at or below
  the input dtype's rounding) keeps X full rank, so a rank-deficient factor's null space is filled with the
  old basis's directions instead of rounding noise.

method="exact" (warm-started parallel-order Jacobi)::

    Q~ = Q (3 I - Q^T Q) / 2                         (one Newton-Schulz step against orthogonality drift)
    B = Q~^T L Q~ = V diag(lambda) V^T               (round-robin cyclic Jacobi, <= max_sweeps sweeps)
    order = stable argsort(lambda, descending);  new basis = Q~ V[:, order]

  Column j of the new basis is an eigenvector of L (eigenvalue lambda[order[j]], descending in j). It is
  the vector that the Jacobi rotations carried out of old column order[j]: V is the product of the
  rotations and is close to the identity from a warm start, so new column j is close to old column
  order[j], which is why v is permuted with `order` exactly as in the "qr" method. Converged matrices stop
  early (decided on the device); an unconverged one (more than max_sweeps sweeps needed, e.g. a cold
  start of a large matrix with a small cap) still returns an orthonormal basis, only less diagonalising.

Non-finite input never yields NaN: a matrix whose basis holds NaN/Inf is treated as if its basis were the
identity; a matrix whose factor holds NaN/Inf keeps its (so sanitised) basis with order = 0..n-1, and so
does one whose computed basis would not be orthonormal (a Cholesky breakdown). Finiteness is judged by the
float64 sum of each matrix, so finite entries near 1e300 whose sum overflows count as non-finite. Nothing
raises on data, and nothing is read back to the host on CUDA.

Implementations: refresh_eigenbasis_ref (torch ops, the same algorithm: the specification and oracle; its
Jacobi loop reads a convergence flag on the host once per sweep), the C++ CPU kernel and the CUDA kernel
(csrc/include/soap_kernels/{eigen_refresh_core.h, refresh_eigenbasis_driver.h}). The CUDA path has no host
synchronisation and no cuSOLVER call (cuBLAS GEMMs; the Cholesky of 64 x 64 diagonal blocks and the Jacobi
solver are the shared core run by one thread block each), so it is meant to be captured in a CUDA graph.
The CPU kernel computes "qr" with LAPACK's Householder QR (geqrf + orgqr, as torch.linalg.qr) in the input
dtype, as the SOAP reference does: Householder is orthonormal to rounding in any precision, so it needs neither
float64 nor CholeskyQR's passes, and it does the reference's work (float32 columns agree with the float64
CholeskyQR ones to about u32 cond(L Q_s), as torch.linalg.qr's do); SOAP_KERNELS_REFRESH_QR_CPU=cholesky
selects the CUDA algorithm (float64 CholeskyQR) there. For "exact" on CUDA with n above
block_jacobi.MIN_N["cuda"] (128), the native path runs the block-Jacobi driver of block_jacobi.py instead:
torch ops around one batched call of this Jacobi solver (soap_kernels::jacobi_eigen_) per round on 2b x 2b
sub-problems (2b <= 64, solved in shared memory), same result and guarantees, still free of host
synchronisation; on CUDA it issues all max_sweeps sweeps (converged matrices get identity rotations), so
warm-started callers should pass a small cap (warm starts took 3-5 sweeps at n = 200-384).
On the CPU the scalar kernel stays (it measured faster there). On CUDA the op ran (tests and bench/refresh.py) on
an H100 (bench/results/gpu-check-NVIDIA-H100-80GB-HBM3-2026-11-28/).
"""

from __future__ import annotations

import functools

import torch

from soap_kernels._backend import native_kernels_for, requested_backend, resolve_backend
from soap_kernels.ops import block_jacobi
from soap_kernels.ops.warm_exact import keep_old_where_failed, sanitised, warm_exact_basis

_OP_NAME = "soap_kernels::refresh_eigenbasis"
METHODS = ("qr", "exact")
# Warm starts converge in 3-6 sweeps and stop there; a cold start (basis = I) of a random 300 x 300 factor
# needs about 10. The cap only bounds the worst case: sweeps after convergence are skipped.
DEFAULT_MAX_SWEEPS = 30

# Constants shared with csrc/include/soap_kernels/eigen_refresh_core.h.
_UNIT_ROUNDOFF = 2.0**-53
_EPSILON = 2.0**-52
_QR_REGULARISATION = {torch.float64: 1e-12, torch.float32: 2.0**-24}
_QR_PASSES = {torch.float64: 3, torch.float32: 2}  # one shifted pass, then plain ones


def _cholesky_qr_shift(n: int) -> float:
    """Shifted CholeskyQR's s / ||X||_F^2 = 11 (n^2 + n (n + 1)) u for an n x n X."""
    return 11.0 * (n * n + n * (n + 1.0)) * _UNIT_ROUNDOFF


@functools.cache
def _round_robin_pairs(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per round of the circle-method tournament, the disjoint pairs (p < q) as two index tensors."""
    m = n + (n & 1)
    rounds = []
    for round_index in range(m - 1):

        def player(position: int, r: int = round_index) -> int:
            return 0 if position == 0 else 1 + (position - 1 + r) % (m - 1)

        pairs = [sorted((player(k), player(m - 1 - k))) for k in range(m // 2)]
        pairs = [(p, q) for p, q in pairs if q < n]
        rounds.append((torch.tensor([p for p, _ in pairs]), torch.tensor([q for _, q in pairs])))
    return rounds


def jacobi_eigen_ref(b: torch.Tensor, max_sweeps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (unsorted) and V of symmetric float64 B[batch, n, n] by round-robin cyclic Jacobi.

    The rotation of pair (p, q): tau = (b_qq - b_pp) / (2 b_pq), t = sign(tau) / (|tau| + sqrt(1 + tau^2)),
    c = 1 / sqrt(1 + t^2), s = t c; B <- J^T B J, V <- V J. A pair rotates only where
    |b_pq| > eps ||B||_F and |b_pq| > eps sqrt(|b_pp b_qq|); a matrix stops after a sweep without rotation.
    """
    batch, n, _ = b.shape
    b = b.clone()
    v_t = torch.eye(n, dtype=b.dtype, device=b.device).expand(batch, n, n).clone()
    floor = (_EPSILON * torch.linalg.vector_norm(b, dim=(-2, -1))).unsqueeze(-1)
    active = torch.ones(batch, dtype=torch.bool, device=b.device)
    rounds = [(p.to(b.device), q.to(b.device)) for p, q in _round_robin_pairs(n)]
    for _ in range(max_sweeps):
        rotated_in_sweep = torch.zeros_like(active)
        for p, q in rounds:
            if p.numel() == 0:
                continue
            b_pp, b_qq, b_pq = b[:, p, p], b[:, q, q], b[:, p, q]
            magnitude = b_pq.abs()
            rotate = (magnitude > floor) & (magnitude > _EPSILON * (b_pp * b_qq).abs().sqrt()) & active[:, None]
            safe_pq = torch.where(rotate, b_pq, torch.ones_like(b_pq))
            tau = (b_qq - b_pp) / (2.0 * safe_pq)
            sign = torch.where(tau >= 0, 1.0, -1.0).to(b.dtype)
            t = torch.where(tau.abs() > 1e150, 0.5 / tau, sign / (tau.abs() + (1.0 + tau * tau).sqrt()))
            t = torch.where(rotate, t, torch.zeros_like(t))
            c = 1.0 / (1.0 + t * t).sqrt()
            s = t * c
            rotated_in_sweep |= rotate.any(-1)
            c_rows, s_rows = c.unsqueeze(-1), s.unsqueeze(-1)
            b_p, b_q = b[:, p, :], b[:, q, :]
            b[:, p, :], b[:, q, :] = c_rows * b_p - s_rows * b_q, s_rows * b_p + c_rows * b_q
            v_p, v_q = v_t[:, p, :], v_t[:, q, :]
            v_t[:, p, :], v_t[:, q, :] = c_rows * v_p - s_rows * v_q, s_rows * v_p + c_rows * v_q
            c_cols, s_cols = c.unsqueeze(-2), s.unsqueeze(-2)
            b_p, b_q = b[:, :, p], b[:, :, q]
            b[:, :, p], b[:, :, q] = c_cols * b_p - s_cols * b_q, s_cols * b_p + c_cols * b_q
            zero = torch.zeros_like(b_pq)
            b[:, p, p] = torch.where(rotate, b_pp - t * b_pq, b[:, p, p])
            b[:, q, q] = torch.where(rotate, b_qq + t * b_pq, b[:, q, q])
            b[:, p, q] = torch.where(rotate, zero, b[:, p, q])
            b[:, q, p] = torch.where(rotate, zero, b[:, q, p])
        active &= rotated_in_sweep
        if not bool(active.any()):  # the reference may synchronise; the kernels decide per matrix
            break
    return b.diagonal(0, -2, -1), v_t.mT


def refresh_eigenbasis_ref(
    factor: torch.Tensor, basis: torch.Tensor, method: str = "qr", max_sweeps: int = DEFAULT_MAX_SWEEPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch reference of refresh_eigenbasis on [batch, n, n] stacks (the algorithm in the module docstring)."""
    _check_arguments(factor, basis, method, max_sweeps)
    batch, n, _ = factor.shape
    if batch == 0 or n == 0:
        return basis.clone(), torch.empty(batch, n, dtype=torch.long, device=factor.device)
    l0, q0, solved = sanitised(factor, basis)
    if method == "qr":
        identity = torch.eye(n, dtype=l0.dtype, device=l0.device).expand(batch, n, n)
        power = l0 @ q0
        order = torch.sort((q0 * power).sum(-2), dim=-1, descending=True, stable=True).indices
        norm = torch.linalg.vector_norm(l0, dim=(-2, -1), keepdim=True)
        inverse_norm = torch.where(norm > 0, norm.reciprocal(), torch.ones_like(norm))
        regularised = power * inverse_norm + _QR_REGULARISATION[factor.dtype] * q0
        x = torch.gather(regularised, 2, order.unsqueeze(1).expand(-1, n, n))
        for pass_index in range(_QR_PASSES[factor.dtype]):
            gram = x.mT @ x  # cholesky_ex reads only its upper triangle, as the kernels do
            if pass_index == 0:
                shift = _cholesky_qr_shift(n) * x.square().sum((-2, -1))
                gram = gram + shift.view(batch, 1, 1) * identity
            upper, info = torch.linalg.cholesky_ex(gram, upper=True)
            x = torch.linalg.solve_triangular(upper, x, upper=True, left=False)
            solved = solved & (info == 0)
        result = x
    else:

        def diagonalise(rotated):
            eigenvalues, v = jacobi_eigen_ref(rotated, max_sweeps)
            return eigenvalues, v.mT, None

        result, order, _ = warm_exact_basis(l0, q0, diagonalise)
    return keep_old_where_failed(result, order, q0, solved, basis.dtype)


def _check_arguments(factor: object, basis: object, method: object, max_sweeps: object) -> None:
    """TypeError/ValueError naming the offending value (the kernels check the same, as a backstop)."""
    for name, value in (("factor", factor), ("basis", basis)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"refresh_eigenbasis: {name} must be a torch.Tensor, got {type(value).__name__}")
        if value.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"refresh_eigenbasis: {name} dtype must be float32 or float64, got {value.dtype}")
    if factor.dim() != 3 or factor.shape[-1] != factor.shape[-2]:
        raise ValueError(f"refresh_eigenbasis: factor must have shape [batch, n, n], got {tuple(factor.shape)}")
    if basis.shape != factor.shape:
        raise ValueError(
            f"refresh_eigenbasis: basis has shape {tuple(basis.shape)}, expected the factor's {tuple(factor.shape)}"
        )
    if basis.dtype != factor.dtype:
        raise TypeError(f"refresh_eigenbasis: basis dtype {basis.dtype} differs from the factor's {factor.dtype}")
    if basis.device != factor.device:
        raise ValueError(f"refresh_eigenbasis: basis is on {basis.device}, factor on {factor.device}")
    if method not in METHODS:
        raise ValueError(f"refresh_eigenbasis: method must be one of {METHODS}, got {method!r}")
    if isinstance(max_sweeps, bool) or not isinstance(max_sweeps, int) or max_sweeps < 1:
        raise ValueError(f"refresh_eigenbasis: max_sweeps must be an int >= 1, got {max_sweeps!r}")


def refresh_eigenbasis(
    factor: torch.Tensor,
    basis: torch.Tensor,
    method: str = "qr",
    *,
    max_sweeps: int = DEFAULT_MAX_SWEEPS,
    use_native: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """New eigenbases of the factors and the column permutation applied: (new_basis, order).

    factor, basis: [batch, n, n] (or [n, n], then the outputs drop the batch dimension), float32/float64,
    same device. method: "qr" (the SOAP reference: one power step, same nested subspaces as
    torch.linalg.qr) or "exact" (eigenvectors of L by warm-started Jacobi, descending eigenvalues).
    Returns new_basis (input dtype) and order (int64, [batch, n]): new column j derives from old column
    order[j], so the caller permutes Adam's second moment with ``v.index_select(axis, order)``.
    use_native: None follows SOAP_KERNELS_BACKEND ("torch": the reference; "cuda": the native kernel, a
    RuntimeError off CUDA or without it; "auto" or "triton", which has no kernel for this op: the C++/CUDA
    kernel where it is built for the device, else the reference); True forces the kernel, False the reference.
    See the module docstring for the math.
    """
    unbatched = isinstance(factor, torch.Tensor) and factor.dim() == 2
    if unbatched and isinstance(basis, torch.Tensor):
        factor, basis = factor.unsqueeze(0), basis.unsqueeze(0)
    _check_arguments(factor, basis, method, max_sweeps)
    if use_native is None:
        backend = requested_backend()
        resolve_backend(factor.device)  # a forced backend that cannot run on this device raises here
        use_native = backend == "cuda" or (backend != "torch" and native_kernels_for(factor.device))
    if use_native:
        if not native_kernels_for(factor.device):
            raise RuntimeError(f"soap_kernels: no native refresh_eigenbasis kernel for device {factor.device}")
        if method == "exact" and block_jacobi.uses_block_jacobi(factor.shape[-1], factor.device):
            new_basis, order = block_jacobi.block_jacobi_refresh(factor, basis, max_sweeps)
        else:
            new_basis, order = torch.ops.soap_kernels.refresh_eigenbasis(factor, basis, method, max_sweeps)
    else:
        new_basis, order = refresh_eigenbasis_ref(factor, basis, method, max_sweeps)
    if unbatched:
        return new_basis[0], order[0]
    return new_basis, order


def _register_fake() -> None:
    """The meta kernel (shapes only) so the op works under torch.compile and FakeTensor tracing."""
    if not native_kernels_for(torch.device("cpu")):
        return

    @torch.library.register_fake(_OP_NAME)
    def _(factor, basis, method, max_sweeps):
        batch, n = factor.shape[0], factor.shape[1]
        return torch.empty_like(basis), factor.new_empty((batch, n), dtype=torch.long)


_register_fake()
