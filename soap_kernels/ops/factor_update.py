"""soap_kernels::factor_update_: SOAP's Kronecker factor moving average for a stack of gradients, in place.

For a stack of B same-shape gradients G[b] (a matrix m x n, or a vector of length n seen as the 1 x n matrix)
and one factored dim d of the view shape:

    S[b] = G_(d) G_(d)^T        (G G^T for d = 0 of a matrix, G^T G for d = 1; the outer product g g^T of a vector)
    L[b] <- lerp(L[b], S[b], 1 - beta)     when ok,   L[b] unchanged otherwise

lerp as torch.lerp: L + w (S - L) for w < 0.5, else S - (S - L)(1 - w). One launch per factor stack; the
GEMM accumulates in the state dtype (float32 or float64) with exact fp32 products unless allow_tf32; only
the tiles on and above the diagonal are computed, an off-diagonal tile also writing its mirror (the result is
exactly symmetric when L is; TF32, opt-in, changed G G^T by 6e-5 relative in a CPU emulation against 1e-7
for exact float32, not yet measured on a GPU). `ok` is a one-element bool device tensor read inside the
kernel: a step with non-finite gradients leaves L bitwise unchanged without a host synchronisation.

The op runs the Triton kernel on CUDA tensors and, under TRITON_INTERPRET=1, on CPU tensors (float64 on a GPU
only where this Triton lowers a float64 tl.dot, see _triton_utils.fp64_dot_supported); elsewhere it runs
factor_update_ref. The op takes matrix (or vector) stacks; the Python entry point factor_update_ also takes
3-D/4-D gradient stacks, unfolding them along the factored dim (a free view for the first or last dim, one
copy for a middle dim) so every Kronecker factor of any rank is one launch.
"""

from __future__ import annotations

import torch
from torch.library import triton_op, wrap_triton

from soap_kernels.ops._triton_utils import (
    HAS_TRITON,
    cdiv,
    check_dtype,
    dot_precision,
    gemm_blocks,
    on_device_of,
    split_scalar,
    use_triton,
)

_OP = "factor_update_"

if HAS_TRITON:
    import triton
    import triton.language as tl

    from soap_kernels.ops._triton_utils import scalar3

    @triton.jit
    def _factor_update_kernel(
        l_ptr, g_ptr, ok_ptr, SIZE, INNER, stride_gb, stride_gi, stride_gk, w_hi, w_mid, w_lo,
        LERP_SMALL: tl.constexpr, IS_FP64: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        """L[b] <- ok ? lerp(L[b], A A^T, w) : L[b], A[i, k] = G[b] at offset i stride_gi + k stride_gk (SIZE x INNER).

        Program (tile, b): tile = ti * T + tj over a T x T grid of BLOCK tiles of L[b] ([B, SIZE, SIZE],
        contiguous); tiles with tj < ti do nothing, tj > ti also store the transposed tile at (tj, ti), a diagonal
        tile uses its upper triangle for both halves (so L stays exactly symmetric when it is).
        """
        pid = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)
        tiles = tl.cdiv(SIZE, BLOCK)
        ti = pid // tiles
        tj = pid % tiles
        if tj >= ti:
            # 64-bit offsets: a factor or gradient with 2^31 or more elements must not wrap around
            rows = (ti * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
            cols = (tj * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
            inner = tl.arange(0, BLOCK_K).to(tl.int64)
            g_base = g_ptr + b * stride_gb
            if IS_FP64:
                acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float64)
            else:
                acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
            for k0 in range(0, INNER, BLOCK_K):
                ks = k0 + inner
                a = tl.load(
                    g_base + rows[:, None] * stride_gi + ks[None, :] * stride_gk,
                    mask=(rows[:, None] < SIZE) & (ks[None, :] < INNER), other=0.0,
                )  # fmt: skip
                a_t = tl.load(
                    g_base + ks[:, None] * stride_gk + cols[None, :] * stride_gi,
                    mask=(ks[:, None] < INNER) & (cols[None, :] < SIZE), other=0.0,
                )  # fmt: skip
                acc += tl.dot(a, a_t, input_precision=PRECISION)
            if tj == ti:  # mirror the upper triangle so the diagonal tile is exactly symmetric too
                acc = tl.where(rows[:, None] <= cols[None, :], acc, tl.trans(acc))
            ok = tl.load(ok_ptr) != 0
            w = scalar3(w_hi, w_mid, w_lo, IS_FP64)
            l_base = l_ptr + b * SIZE * SIZE
            mask = (rows[:, None] < SIZE) & (cols[None, :] < SIZE)
            offs = rows[:, None] * SIZE + cols[None, :]
            old = tl.load(l_base + offs, mask=mask, other=0.0)
            if LERP_SMALL:
                new = old + w * (acc - old)
            else:
                new = acc - (acc - old) * (1.0 - w)
            tl.store(l_base + offs, new, mask=mask & ok)
            if tj > ti:
                acc_t = tl.trans(acc)
                mask_t = (cols[:, None] < SIZE) & (rows[None, :] < SIZE)
                offs_t = cols[:, None] * SIZE + rows[None, :]
                old_t = tl.load(l_base + offs_t, mask=mask_t, other=0.0)
                if LERP_SMALL:
                    new_t = old_t + w * (acc_t - old_t)
                else:
                    new_t = acc_t - (acc_t - old_t) * (1.0 - w)
                tl.store(l_base + offs_t, new_t, mask=mask_t & ok)


def _as_matrix_stack(grad: torch.Tensor, dim: int) -> tuple[torch.Tensor, int]:
    """A vector stack [B, n] becomes [B, 1, n] with its one factor on matrix dim 1."""
    if grad.dim() == 2:
        return grad.unsqueeze(1), 1
    return grad, dim


def _check(factor: torch.Tensor, grad: torch.Tensor, ok: torch.Tensor, beta: float, dim: int) -> None:
    """ValueError/TypeError naming the first bad argument of factor_update_."""
    check_dtype(_OP, "grad", grad)
    if factor.dtype != grad.dtype:
        raise TypeError(f"{_OP}: factor dtype {factor.dtype} differs from grad dtype {grad.dtype}")
    if grad.dim() not in (2, 3):
        raise ValueError(
            f"{_OP}: grad has shape {tuple(grad.shape)}; expected [B, n] (vectors) or [B, m, n] (matrices); "
            "higher-rank gradients are not implemented in the Triton op (use the torch path)"
        )
    rank = grad.dim() - 1
    if isinstance(dim, bool) or not isinstance(dim, (int, torch.SymInt)) or not 0 <= dim < rank:
        raise ValueError(f"{_OP}: dim={dim!r} must be an int in [0, {rank}) for grad of shape {tuple(grad.shape)}")
    size = grad.shape[1 + dim]
    expected = (grad.shape[0], size, size)
    if tuple(factor.shape) != expected:
        raise ValueError(f"{_OP}: factor has shape {tuple(factor.shape)}, expected {expected} for dim={dim}")
    if not factor.is_contiguous():
        raise ValueError(f"{_OP}: factor must be contiguous (it is updated in place)")
    if factor.device != grad.device or ok.device != grad.device:
        raise ValueError(f"{_OP}: factor ({factor.device}), grad ({grad.device}), ok ({ok.device}) must share a device")
    if ok.dtype != torch.bool or ok.numel() != 1:
        raise TypeError(f"{_OP}: ok must be a one-element bool tensor, got dtype {ok.dtype} shape {tuple(ok.shape)}")
    if isinstance(beta, bool) or not 0.0 <= float(beta) <= 1.0:
        raise ValueError(f"{_OP}: beta={beta!r} must be a number in [0, 1]")


def factor_update_ref(factor: torch.Tensor, grad: torch.Tensor, ok: torch.Tensor, beta: float, dim: int) -> None:
    """Torch reference (the specification): factor <- where(ok, lerp(factor, G_(d) G_(d)^T, 1 - beta), factor)."""
    grad, dim = _as_matrix_stack(grad, dim)
    gram = grad @ grad.mT if dim == 0 else grad.mT @ grad
    moved = torch.lerp(factor, gram, 1.0 - float(beta))
    factor.copy_(torch.where(ok.reshape(()), moved, factor))


def factor_update_triton(
    factor: torch.Tensor, grad: torch.Tensor, ok: torch.Tensor, beta: float, dim: int, allow_tf32: bool = False
) -> None:
    """Launch _factor_update_kernel: one launch for the whole factor stack (see the module docstring)."""
    grad, dim = _as_matrix_stack(grad, dim)
    batch, m, n = grad.shape
    size, inner = (m, n) if dim == 0 else (n, m)
    stride_i, stride_k = (grad.stride(1), grad.stride(2)) if dim == 0 else (grad.stride(2), grad.stride(1))
    if batch == 0 or size == 0:
        return
    if batch > 65535:
        raise ValueError(f"{_OP}: batch={batch} exceeds the grid limit 65535; split the stack")
    weight = 1.0 - float(beta)
    w_parts = split_scalar("1 - beta", weight)
    _, block, block_k, num_warps = gemm_blocks(grad.dtype, grad.device)  # square tiles of BLOCK_N
    tiles = cdiv(size, block)
    with on_device_of(grad):
        wrap_triton(_factor_update_kernel)[(tiles * tiles, batch)](
            factor, grad, ok, size, inner, grad.stride(0), stride_i, stride_k, *w_parts,
            LERP_SMALL=abs(weight) < 0.5, IS_FP64=grad.dtype == torch.float64,
            PRECISION=dot_precision(grad.dtype, allow_tf32), BLOCK=block, BLOCK_K=block_k, num_warps=num_warps,
        )  # fmt: skip


@triton_op("soap_kernels::factor_update_", mutates_args={"factor"})
def _factor_update_op(
    factor: torch.Tensor, grad: torch.Tensor, ok: torch.Tensor, beta: float, dim: int, allow_tf32: bool
) -> None:
    _check(factor, grad, ok, beta, dim)
    if use_triton(factor):
        factor_update_triton(factor, grad, ok, beta, dim, allow_tf32)
    else:
        factor_update_ref(factor, grad, ok, beta, dim)


@_factor_update_op.register_fake
def _(factor, grad, ok, beta, dim, allow_tf32):
    _check(factor, grad, ok, beta, dim)


def _unfold_for(grad: torch.Tensor, dim: int) -> tuple[torch.Tensor, int]:
    """A [B, n_0, ..., n_r] stack (r >= 2) as a matrix stack whose dim 0 or 1 has the same Gram matrix as `dim`.

    First dim: [B, n_0, rest] (a view); last: [B, rest, n_r] (a view); a middle dim d: its mode-d unfolding
    [B, n_d, rest] (movedim + reshape: one copy of the gradient stack).
    """
    rank = grad.dim() - 1
    if isinstance(dim, bool) or not isinstance(dim, int) or not 0 <= dim < rank:
        raise ValueError(f"{_OP}: dim={dim!r} must be an int in [0, {rank}) for grad of shape {tuple(grad.shape)}")
    batch = grad.shape[0]
    if dim == 0:
        return grad.reshape(batch, grad.shape[1], -1), 0
    if dim == rank - 1:
        return grad.reshape(batch, -1, grad.shape[-1]), 1
    return grad.movedim(dim + 1, 1).reshape(batch, grad.shape[dim + 1], -1), 0


def factor_update_(
    factor: torch.Tensor, grad: torch.Tensor, ok: torch.Tensor, beta: float, dim: int, allow_tf32: bool = False
) -> None:
    """L <- where(ok, lerp(L, G_(d) G_(d)^T, 1 - beta), L), in place, for a whole stack (one launch).

    factor: [B, s, s] contiguous, float32/float64 (the factor of dim `dim`, s = grad.shape[1 + dim]);
    grad: [B, *view_shape], same dtype and device: [B, n] (vectors: outer products), [B, m, n] (matrices), or a
        higher rank, unfolded to a matrix stack here (a view for the first and last dim, a copy for a middle one);
    ok: one-element bool device tensor (all gradients finite); beta: shampoo beta in [0, 1];
    dim: the factored dim of the view shape; allow_tf32: TF32 tl.dot for float32 (off by default).
    Runs soap_kernels::factor_update_ (Triton on CUDA or under TRITON_INTERPRET=1, else the torch reference).
    """
    if grad.dim() > 3:
        grad, dim = _unfold_for(grad, dim)
    torch.ops.soap_kernels.factor_update_(factor, grad, ok, float(beta), int(dim), bool(allow_tf32))
