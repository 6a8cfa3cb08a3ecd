"""Block-Jacobi driver of refresh_eigenbasis(method="exact") for n too large for one shared-memory Jacobi solve.

Same result and guarantees as the "exact" method (module docstring of refresh_eigenbasis.py)::

    Q~ = Q (3 I - Q^T Q) / 2;  B = Q~^T L Q~ = V diag(lambda) V^T;  order = stable argsort(lambda, descending)
    new basis = Q~ V[:, order]

but B is diagonalised by block-Jacobi instead of the scalar kernel working on the whole n x n matrix:

- Padding: n is padded to N = 2 k b (k = ceil(n / (2 b_max)) pairs of blocks, b = ceil(n / 2k) <= b_max, so
  fewer than 2k padded indices) with zero rows and columns. Their coupling to real indices is exactly zero
  and stays zero: the sub-solver never rotates a pair whose off-diagonal entry is 0, so every rotation J
  keeps J[real, pad] = 0 exactly, and the GEMMs below add only exact zeros there.
- Round: the 2k blocks are paired by the circle method (k disjoint pairs (I, J)); after a fixed symmetric
  permutation that puts each pair's blocks next to each other, J is block diagonal with 2b x 2b blocks W,
  where S = [[B_II, B_IJ], [B_JI, B_JJ]] = W diag(mu) W^T. All batch * k sub-problems are diagonalised in
  ONE batched call of the scalar Jacobi solver (soap_kernels::jacobi_eigen_, the solver of the "exact"
  kernel alone: one thread block per sub-problem, B and V^T in shared memory on CUDA for 2b <= 64; at most
  INNER_SWEEPS = 4 sweeps each, a partial solve that later rounds finish). Column i of W is the vector
  Jacobi rotated out of coordinate i, near e_i from a warm start. (Extensions built
  before jacobi_eigen_ existed go through refresh_eigenbasis(S, I, "exact"), whose eigenvalue-sorted
  columns are put back in place: W[:, order[j]] = returned column j.) Then B <- J^T B J and V^T <- J^T V^T
  as batched GEMMs on [batch * k] panels of 2b rows (2 (2b) N^2 flops per side).
  Entries of S below eps ||B||_F are zeroed first: the solver's own threshold is relative to ||S||_F and
  would otherwise chase the GEMMs' rounding noise in sub-problems made of small entries.
- Sweep: 2k - 1 rounds (every pair of blocks meets once). A matrix is converged after a sweep in which every
  W was exactly the identity (the sub-solver found no entry above its threshold; that is the scalar
  kernel's own stopping rule, one level up; seen as V^T unchanged by the sweep). Converged matrices get
  sub-problems reduced to their diagonal, hence W = I exactly and B, V unchanged, so the loop needs no host
  synchronisation: on CUDA all max_sweeps sweeps are issued (graph-capturable), on the CPU the loop stops
  when every matrix has converged.

Finish: one Newton-Schulz step V <- V (3 I - V^T V) / 2 on the accumulated rotations (their orthogonality
drifts by a few ulps per round: 1e-12 after 20 cold sweeps at n = 300, 2e-15 after the step; residual
||L Q - Q Lambda|| / ||L|| 1.4e-12 -> 1.5e-14), then the sort and new basis = Q~ V[:, order] as above.

Non-finite handling is the driver's: NaN/Inf bases are replaced by the identity, a NaN/Inf factor (or a
result that is not orthonormal) keeps its sanitised basis with order = 0..n-1, and the output is finite.
"""

from __future__ import annotations

import torch

from soap_kernels._backend import native_kernels_for
from soap_kernels.ops.warm_exact import keep_old_where_failed, sanitised, warm_exact_basis

# Sub-problems of at most 2 * MAX_BLOCK = 64: the CUDA kernel keeps B and V^T of a 64 x 64 problem in shared
# memory (it stages both up to n = 118 on an H100, the matrix alone up to 166).
MAX_BLOCK = 32
# refresh_eigenbasis(method="exact") runs block-Jacobi above these sizes (native kernels only). CUDA: the
# scalar kernel keeps B and V^T in shared memory up to n = 118 on an H100 (B alone up to 166, less on an
# A100) and works in global memory above; 128 is a first guess until GPU timings (bench/refresh.py rows
# soap_kernels_exact against soap_kernels_exact_scalar) place it. CPU: never; 1 thread, the scalar kernel
# measured 1.75x faster at n = 128, 1.2-1.3x at 256 and 1.0-1.2x at 384 over three runs on a shared machine
# (bench/results/refresh-block-jacobi-cpu-2cores-2026-11-27.json).
MIN_N = {"cuda": 128, "cpu": 10**9}
# Off-diagonal entries below FLOOR_FACTOR ||B||_F are not rotated (eps, the scalar kernel's threshold).
FLOOR_FACTOR = 2.0**-52
# Cap on the sweeps of each 2b x 2b sub-problem. A round waits for its slowest sub-problem on the GPU; with a
# cap of 4 the outer sweeps needed were the same as with complete solves (30) on warm and cold, gram,
# cond 1e8, clustered and rank-deficient factors (n = 200, 256), a cap of 1 needed up to 2.4x more.
INNER_SWEEPS = 4


def uses_block_jacobi(n: int, device: torch.device) -> bool:
    """True when refresh_eigenbasis(method="exact") on the native kernels takes the block-Jacobi path."""
    return n > MIN_N.get(torch.device(device).type, 10**9)


def block_layout(n: int, max_block: int = MAX_BLOCK) -> tuple[int, int]:
    """(k, b): k pairs of blocks of size b, 2 k b >= n with fewer than 2 k padded indices."""
    if max_block < 1:
        raise ValueError(f"block_jacobi: max_block must be >= 1, got {max_block}")
    k = max(1, -(-n // (2 * max_block)))
    return k, -(-n // (2 * k))


_PERMUTATIONS: dict[tuple[int, int, torch.device], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _round_permutations(k: int, b: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """_build_round_permutations, kept per (k, b, device) once built eagerly. Inside a CUDA graph capture a
    tensor not yet kept is built and not kept: its kernels are only recorded (the graph's replays compute it),
    so an eager call after the capture must not find it (it would read memory no kernel has written yet)."""
    key = (k, b, torch.device(device))
    if key in _PERMUTATIONS:
        return _PERMUTATIONS[key]
    built = _build_round_permutations(k, b, key[2])
    if not (key[2].type == "cuda" and torch.cuda.is_current_stream_capturing()):
        _PERMUTATIONS[key] = built
    return built


def _build_round_permutations(k: int, b: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(first, steps, natural): index maps between the rounds' orderings of the N = 2 k b indices.

    Round r orders the indices as block p_0, block q_0, block p_1, ... where (p_t, q_t) are the circle-method
    pairs of round r (p_t < q_t). B is stored in the current round's ordering: `first` takes the natural
    order to round 0, steps[r] takes round r to round r + 1 (cyclically: steps[-1] goes from the last round
    back to round 0 of the next sweep), `natural` takes round 0 back to the natural order. Built by arithmetic
    on the device: no host-to-device copy, which a CUDA graph capture would refuse.
    """
    m = 2 * k
    position = torch.arange(k, device=device)
    rounds = torch.arange(m - 1, device=device).unsqueeze(-1)

    def player(pos: torch.Tensor) -> torch.Tensor:
        return torch.where(pos == 0, torch.zeros_like(pos + rounds), 1 + (pos - 1 + rounds) % (m - 1))

    first_player, second_player = player(position), player(m - 1 - position)
    low, high = torch.minimum(first_player, second_player), torch.maximum(first_player, second_player)
    block_sequence = torch.stack((low, high), dim=-1).reshape(m - 1, m)  # [rounds, 2k]
    orderings = (block_sequence.unsqueeze(-1) * b + torch.arange(b, device=device)).reshape(m - 1, m * b)
    inverses = torch.argsort(orderings, dim=-1)
    following = torch.roll(orderings, -1, dims=0)
    steps = torch.gather(inverses, 1, following)  # stored[steps[r]] is the next round's ordering
    return orderings[0].contiguous(), steps.contiguous(), inverses[0].contiguous()


def _permute(b: torch.Tensor, v_t: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric reordering of B (one gather) and the row reordering of V^T."""
    return b[:, index.unsqueeze(-1), index], v_t.index_select(1, index)


def _apply_left(rotation_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """J^T X for J block diagonal: rotation_t [batch, k, 2b, 2b] holds the W^T, x is [batch, N, cols]."""
    batch, k, width, _ = rotation_t.shape
    return (rotation_t @ x.reshape(batch, k, width, x.shape[-1])).reshape(x.shape)


def has_jacobi_op() -> bool:
    """True when the native extension has soap_kernels::jacobi_eigen_ (builds before it have only the full op)."""
    return hasattr(torch.ops.soap_kernels, "jacobi_eigen_")


def _solve_sub_problems(sub: torch.Tensor, use_native: bool, direct: bool) -> torch.Tensor:
    """W for a stack of symmetric S [count, 2b, 2b]: S = W diag(mu) W^T, column i of W rotated out of e_i.

    direct: the bare Jacobi op (one launch: the solver fills W^T itself); otherwise the whole refresh op with
    the identity as basis, whose eigenvalue-sorted columns are put back in place.
    """
    count, width, _ = sub.shape
    if direct:  # B is symmetrised once per sweep; the solver reads the upper triangle
        matrices = sub.contiguous()
        vectors_t = torch.empty_like(matrices)
        torch.ops.soap_kernels.jacobi_eigen_(matrices, vectors_t, INNER_SWEEPS)
        return vectors_t.mT
    identity = torch.eye(width, dtype=sub.dtype, device=sub.device).expand(count, width, width)
    if use_native:
        sorted_vectors, order = torch.ops.soap_kernels.refresh_eigenbasis(sub, identity, "exact", INNER_SWEEPS)
    else:
        from soap_kernels.ops.refresh_eigenbasis import refresh_eigenbasis_ref

        sorted_vectors, order = refresh_eigenbasis_ref(sub, identity, "exact", INNER_SWEEPS)
    # Column j of the kernel's result is W[:, order[j]]: undo the sort.
    return torch.empty_like(sorted_vectors).scatter_(2, order.unsqueeze(1).expand(count, width, width), sorted_vectors)


def block_jacobi_eigen(
    b: torch.Tensor,
    max_sweeps: int,
    max_block: int = MAX_BLOCK,
    use_native: bool = True,
    stop_early: bool | None = None,
    direct: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eigenvalues (unsorted), V^T and the sweeps each matrix rotated in, for symmetric finite float64 B.

    b: [batch, n, n]. Returns (lambda [batch, n], v_t [batch, n, n] with row i the eigenvector that grew out
    of coordinate i, sweeps [batch] int64: the sweeps in which some rotation was not the identity).
    stop_early: leave the sweep loop once every matrix has converged, which reads a flag on the host once
    per sweep (None: on the CPU only; on CUDA all max_sweeps sweeps are issued and nothing is read back).
    use_native: sub-problems by the C++/CUDA kernel (else by the torch reference, for devices without it);
    direct: through soap_kernels::jacobi_eigen_ (None: when use_native and the extension has it) rather than
    the whole refresh op (about 30 launches per round more on CUDA).
    """
    batch, n, _ = b.shape
    if use_native and not native_kernels_for(b.device):  # also loads soap_kernels._C, which registers the op
        raise RuntimeError(f"soap_kernels: no native refresh_eigenbasis kernel for device {b.device}")
    direct = use_native and has_jacobi_op() if direct is None else direct
    k, size = block_layout(n, max_block)
    padded, width = 2 * k * size, 2 * size
    device, dtype = b.device, b.dtype
    if padded > n:
        b = torch.nn.functional.pad(b, (0, padded - n, 0, padded - n))
    first, steps, natural = _round_permutations(k, size, device)
    zero = torch.zeros((), dtype=dtype, device=device)
    on_diagonal = torch.eye(width, dtype=torch.bool, device=device)
    v_t = torch.eye(padded, dtype=dtype, device=device).expand(batch, padded, padded)
    b, v_t = _permute(b, v_t, first)
    # Entries at or below eps ||B||_F are not worth a rotation (the scalar kernel's absolute threshold); they
    # are zeroed in the sub-solver's input (module docstring).
    floor = FLOOR_FACTOR * torch.linalg.vector_norm(b, dim=(-2, -1))
    infinite = torch.full((), float("inf"), dtype=dtype, device=device)
    active = torch.ones(batch, dtype=torch.bool, device=device)
    sweeps = torch.zeros(batch, dtype=torch.long, device=device)
    if stop_early is None:
        stop_early = device.type == "cpu"
    for _ in range(max_sweeps):
        # Converged matrices: an infinite threshold leaves only the diagonal, so the solver returns W = I exactly.
        threshold = torch.where(active, floor, infinite).view(batch, 1, 1, 1)
        v_t_at_start = v_t
        for round_index in range(2 * k - 1):
            blocks = b.reshape(batch, k, width, k, width).diagonal(0, 1, 3).permute(0, 3, 1, 2)
            sub = torch.where((blocks.abs() > threshold) | on_diagonal, blocks, zero)
            w = _solve_sub_problems(sub.reshape(batch * k, width, width), use_native, direct)
            w_t = w.mT.reshape(batch, k, width, width)
            b = _apply_left(w_t, _apply_left(w_t, b).mT)  # J^T (J^T B)^T = J^T B J (B symmetric)
            v_t = _apply_left(w_t, v_t)
            b, v_t = _permute(b, v_t, steps[round_index])
        b = (b + b.mT) * 0.5  # the GEMMs' rounding leaves B asymmetric by a few ulps per round
        # A sweep rotated a matrix iff its V^T changed: W = I multiplies exactly, and the rounds' orderings
        # come back to round 0's at the end of a sweep.
        rotated = (v_t != v_t_at_start).flatten(1).any(-1)
        sweeps += rotated.long()
        active &= rotated
        if stop_early and not bool(active.any()):  # a host read: the CPU default only
            break
    # After the loop B is in round 0's ordering (the last step wraps to it): back to the natural one.
    b, v_t = _permute(b, v_t, natural)
    v_t = v_t[:, :n, :n]
    # V (3 I - V^T V) / 2: one Newton-Schulz step against the drift from orthogonality that the rounds' GEMMs
    # accumulate (each W is orthogonal to a few ulps only): 1e-12 after 20+ cold sweeps at n = 300, 1e-15 after.
    v_t = 1.5 * v_t - 0.5 * ((v_t @ v_t.mT) @ v_t)
    return b.diagonal(0, -2, -1)[:, :n], v_t, sweeps


def block_jacobi_refresh(
    factor: torch.Tensor,
    basis: torch.Tensor,
    max_sweeps: int,
    max_block: int = MAX_BLOCK,
    use_native: bool = True,
    stop_early: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """refresh_eigenbasis(factor, basis, "exact") with block-Jacobi: (new_basis, order); see the module docstring.

    factor, basis: [batch, n, n], checked by the caller. Computes in float64, returns the input dtype.
    max_block: the largest block size b (sub-problems are at most 2 max_block wide); use_native, stop_early:
    as in block_jacobi_eigen.
    """
    result, order, _ = block_jacobi_refresh_with_sweeps(factor, basis, max_sweeps, max_block, use_native, stop_early)
    return result, order


def block_jacobi_refresh_with_sweeps(
    factor: torch.Tensor,
    basis: torch.Tensor,
    max_sweeps: int,
    max_block: int = MAX_BLOCK,
    use_native: bool = True,
    stop_early: bool | None = None,
    direct: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """block_jacobi_refresh plus the number of sweeps that rotated, per matrix ([batch] int64)."""
    batch, n, _ = factor.shape
    if batch == 0 or n == 0:
        empty = torch.zeros(batch, dtype=torch.long, device=factor.device)
        return basis.clone(), torch.empty(batch, n, dtype=torch.long, device=factor.device), empty
    l0, q0, factor_finite = sanitised(factor, basis)
    result, order, sweeps = warm_exact_basis(
        l0, q0, lambda rotated: block_jacobi_eigen(rotated, max_sweeps, max_block, use_native, stop_early, direct)
    )
    result, order = keep_old_where_failed(result, order, q0, factor_finite, basis.dtype)
    return result, order, sweeps


def _register_fake() -> None:
    """The meta kernel of soap_kernels::jacobi_eigen_ (in place, returns nothing) for FakeTensor tracing."""
    if not native_kernels_for(torch.device("cpu")) or not has_jacobi_op():
        return

    @torch.library.register_fake("soap_kernels::jacobi_eigen_")
    def _(matrices, vectors_t, max_sweeps):
        return None


_register_fake()
