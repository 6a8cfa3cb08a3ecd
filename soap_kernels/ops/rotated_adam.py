"""soap_kernels::rotated_adam_ and soap_kernels::rotate_momentum_: SOAP's rotated Adam update and the carry of
the first moment across a change of eigenbasis, for a stack of B same-shape matrices, in place.

rotated_adam_ (everything masked by the device flag ok: when it is false no in-place output changes):

    g~ = Q_L^T G Q_R                                   (GEMM 1; Q_L or Q_R may be absent = identity)
    m~ <- b1 m~ + (1 - b1) g~,   v <- b2 v + (1 - b2) g~^2            (epilogue of GEMM 1)
    D  = m~ / (sqrt(v) + eps)                                          (epilogue of GEMM 1, to a scratch buffer)
    U  = Q_L D Q_R^T                                                   (GEMM 2)
    U <- U / (1e-30 + sqrt(mean(U^2)))   per parameter, when normalize
    p_new = p - step_size[b] U;  p_new <- p_new - decay p_new  if decay > 0;  p <- ok ? p_new : p
                                                                      (epilogue of GEMM 2)

rotate_momentum_:   m~ <- ok ? Q_Lnew^T (Q_Lold m~ Q_Rold^T) Q_Rnew : m~   (two launches through a scratch buffer).

Each "GEMM" is a two-sided product A^T X B computed by one kernel: a program owns an output tile and, per
block of X's rows, first forms (X B)[rows block, tile cols] and then accumulates A^T times it ("chained").
The chain recomputes X B once per row tile, so when a matrix has more than _CHAIN_MAX_ROW_TILES row tiles the
launcher first forms X B with one extra launch of the same kernel and the main kernel applies A^T only.
Accumulation is in the state dtype (float32 or float64); float32 products are exact (input_precision="ieee")
unless allow_tf32. sqrt and division are IEEE-rounded, so the result matches the torch reference to rounding.

TF32 (allow_tf32=True, float32 only) is opt-in and not recommended here: emulated on CPU (inputs rounded to TF32
as cvt.rna does; 3 x 256 x 256 gradients with a decaying spectrum, bases from their factors) g~ moves by 4e-4
relative, but D = m~ / (sqrt(v) + eps) is scale-free per entry, so the small rotated components flip sign and U
changes by 27% relative (exact float32: 1.5e-3 against float64). Not yet measured on a GPU.

With normalize, GEMM 2 writes U and per-tile partial sums of U^2, and a third (elementwise) launch applies the
update: the mean is over the whole parameter, so it is known only after every tile is done.

The ops run the Triton kernels on CUDA tensors and, under TRITON_INTERPRET=1, on CPU tensors (float64 on a GPU
only where this Triton lowers a float64 tl.dot, see _triton_utils.fp64_dot_supported); elsewhere the torch
references rotated_adam_ref / rotate_momentum_ref. Parameters of rank >= 3 are not handled: use the torch path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.library import triton_op, wrap_triton

from soap_kernels.ops._triton_utils import (
    HAS_TRITON,
    cdiv,
    check_dtype,
    dot_precision,
    gemm_blocks,
    next_power_of_2,
    on_device_of,
    split_scalar,
    use_triton,
)

# A chained two-sided product recomputes X B once per row tile of the output; beyond this many row tiles the
# launcher forms X B first (one more launch, no recomputation).
_CHAIN_MAX_ROW_TILES = 2
_APPLY_BLOCK = 1024
# The normalising launch reads a stack member's per-tile sums of U^2 as one tl.arange; Triton caps a block at
# 2^20 elements (a compile error on a GPU), so beyond this many tiles torch sums them first.
_MAX_PARTIALS = 1024

if HAS_TRITON:
    import triton
    import triton.language as tl

    from soap_kernels.ops._triton_utils import div_ieee, scalar3, sqrt_ieee

    @triton.jit
    def _tile_indices(pid, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """(rows, cols) of output tile pid = ti * cdiv(N, BLOCK_N) + tj, as int64.

        64-bit so offsets like rows * N stay exact when a matrix has 2^31 or more elements.
        """
        tiles_n = tl.cdiv(N, BLOCK_N)
        rows = ((pid // tiles_n) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        cols = ((pid % tiles_n) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
        return rows, cols

    @triton.jit
    def _sandwich_tile(
        x_base, a_base, b_base, rows, cols, M, N, stride_ak, stride_ai, stride_bl, stride_bj,
        HAS_A: tl.constexpr, HAS_B: tl.constexpr, IS_FP64: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        """acc[i, j] = sum_k A[k, i] sum_l X[k, l] B[l, j] for i in rows, j in cols (0 outside M x N).

        X: M x N row-major at x_base; A[k, i] at a_base + k stride_ak + i stride_ai (M x M); B[l, j] at
        b_base + l stride_bl + j stride_bj (N x N); A (B) is the identity when HAS_A (HAS_B) is false.
        rows and cols are int64 (see _tile_indices), and so is every offset formed here.
        """
        inner = tl.arange(0, BLOCK_K).to(tl.int64)
        if IS_FP64:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float64)
        else:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        if HAS_A:
            for k0 in range(0, M, BLOCK_K):
                ks = k0 + inner
                if HAS_B:
                    if IS_FP64:
                        xb = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float64)
                    else:
                        xb = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
                    for l0 in range(0, N, BLOCK_K):
                        ls = l0 + inner
                        x = tl.load(
                            x_base + ks[:, None] * N + ls[None, :],
                            mask=(ks[:, None] < M) & (ls[None, :] < N), other=0.0,
                        )  # fmt: skip
                        b = tl.load(
                            b_base + ls[:, None] * stride_bl + cols[None, :] * stride_bj,
                            mask=(ls[:, None] < N) & (cols[None, :] < N), other=0.0,
                        )  # fmt: skip
                        xb += tl.dot(x, b, input_precision=PRECISION)
                else:
                    xb = tl.load(
                        x_base + ks[:, None] * N + cols[None, :],
                        mask=(ks[:, None] < M) & (cols[None, :] < N), other=0.0,
                    )  # fmt: skip
                a_t = tl.load(
                    a_base + rows[:, None] * stride_ai + ks[None, :] * stride_ak,
                    mask=(rows[:, None] < M) & (ks[None, :] < M), other=0.0,
                )  # fmt: skip
                acc += tl.dot(a_t, xb, input_precision=PRECISION)
        else:
            if HAS_B:
                for l0 in range(0, N, BLOCK_K):
                    ls = l0 + inner
                    x = tl.load(
                        x_base + rows[:, None] * N + ls[None, :],
                        mask=(rows[:, None] < M) & (ls[None, :] < N), other=0.0,
                    )  # fmt: skip
                    b = tl.load(
                        b_base + ls[:, None] * stride_bl + cols[None, :] * stride_bj,
                        mask=(ls[:, None] < N) & (cols[None, :] < N), other=0.0,
                    )  # fmt: skip
                    acc += tl.dot(x, b, input_precision=PRECISION)
            else:
                acc += tl.load(
                    x_base + rows[:, None] * N + cols[None, :],
                    mask=(rows[:, None] < M) & (cols[None, :] < N), other=0.0,
                )  # fmt: skip
        return acc

    @triton.jit
    def _sandwich_kernel(
        x_ptr, a_ptr, b_ptr, out_ptr, ok_ptr, M, N, stride_ak, stride_ai, stride_bl, stride_bj,
        HAS_A: tl.constexpr, HAS_B: tl.constexpr, MASKED: tl.constexpr, IS_FP64: tl.constexpr,
        PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        """out[b] = A[b]^T X[b] B[b] (see _sandwich_tile; [B, M, N] contiguous); stored only where ok if MASKED.

        Program (tile, b), tile = ti * cdiv(N, BLOCK_N) + tj. out must not alias X (tiles read all of X).
        """
        pid = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)
        rows, cols = _tile_indices(pid, N, BLOCK_M, BLOCK_N)
        acc = _sandwich_tile(
            x_ptr + b * M * N, a_ptr + b * M * M, b_ptr + b * N * N, rows, cols, M, N,
            stride_ak, stride_ai, stride_bl, stride_bj, HAS_A, HAS_B, IS_FP64, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K,
        )  # fmt: skip
        mask = (rows[:, None] < M) & (cols[None, :] < N)
        if MASKED:
            mask = mask & (tl.load(ok_ptr) != 0)
        tl.store(out_ptr + b * M * N + rows[:, None] * N + cols[None, :], acc, mask=mask)

    @triton.jit
    def _rotated_adam_moments_kernel(
        g_ptr, ql_ptr, qr_ptr, m_ptr, v_ptr, d_ptr, ok_ptr, M, N,
        b1_hi, b1_mid, b1_lo, c1_hi, c1_mid, c1_lo, b2_hi, b2_mid, b2_lo, c2_hi, c2_mid, c2_lo,
        eps_hi, eps_mid, eps_lo,
        HAS_A: tl.constexpr, HAS_B: tl.constexpr, IS_FP64: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        """g~ = Q_L^T G Q_R;  if ok: m~ <- b1 m~ + c1 g~,  v <- b2 v + c2 g~ g~;  D = m~ / (sqrt(v) + eps).

        c1 = 1 - b1 and c2 = 1 - b2 (passed, formed in float64 on the host as the reference does). G, m~, v, D
        are [B, M, N] contiguous; Q_L [B, M, M], Q_R [B, N, N]; D is written even when not ok (then unused).
        """
        pid = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)
        rows, cols = _tile_indices(pid, N, BLOCK_M, BLOCK_N)
        g = _sandwich_tile(
            g_ptr + b * M * N, ql_ptr + b * M * M, qr_ptr + b * N * N, rows, cols, M, N, M, 1, N, 1,
            HAS_A, HAS_B, IS_FP64, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K,
        )  # fmt: skip
        ok = tl.load(ok_ptr) != 0
        beta1 = scalar3(b1_hi, b1_mid, b1_lo, IS_FP64)
        one_minus_beta1 = scalar3(c1_hi, c1_mid, c1_lo, IS_FP64)
        beta2 = scalar3(b2_hi, b2_mid, b2_lo, IS_FP64)
        one_minus_beta2 = scalar3(c2_hi, c2_mid, c2_lo, IS_FP64)
        eps = scalar3(eps_hi, eps_mid, eps_lo, IS_FP64)
        mask = (rows[:, None] < M) & (cols[None, :] < N)
        offs = b * M * N + rows[:, None] * N + cols[None, :]
        m_old = tl.load(m_ptr + offs, mask=mask, other=0.0)
        v_old = tl.load(v_ptr + offs, mask=mask, other=0.0)
        m_new = m_old * beta1 + one_minus_beta1 * g
        v_new = v_old * beta2 + one_minus_beta2 * g * g
        tl.store(m_ptr + offs, m_new, mask=mask & ok)
        tl.store(v_ptr + offs, v_new, mask=mask & ok)
        tl.store(d_ptr + offs, div_ieee(m_new, sqrt_ieee(v_new, IS_FP64) + eps, IS_FP64), mask=mask)

    @triton.jit
    def _rotated_adam_update_kernel(
        d_ptr, ql_ptr, qr_ptr, p_ptr, step_ptr, ok_ptr, u_ptr, part_ptr, M, N, NUM_TILES,
        dk_hi, dk_mid, dk_lo,
        HAS_A: tl.constexpr, HAS_B: tl.constexpr, HAS_DECAY: tl.constexpr, NORMALIZE: tl.constexpr,
        IS_FP64: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        """U = Q_L D Q_R^T;  p_new = p - step[b] U;  p_new -= decay p_new if HAS_DECAY;  p <- ok ? p_new : p.

        With NORMALIZE the parameter is not touched: U goes to u_ptr and sum(U^2) of this tile to
        part_ptr[b, tile] for _rotated_adam_normalized_update_kernel. D, p, U are [B, M, N] contiguous.
        """
        pid = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)
        rows, cols = _tile_indices(pid, N, BLOCK_M, BLOCK_N)
        u = _sandwich_tile(
            d_ptr + b * M * N, ql_ptr + b * M * M, qr_ptr + b * N * N, rows, cols, M, N, 1, M, 1, N,
            HAS_A, HAS_B, IS_FP64, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K,
        )  # fmt: skip
        mask = (rows[:, None] < M) & (cols[None, :] < N)
        offs = b * M * N + rows[:, None] * N + cols[None, :]
        if NORMALIZE:
            u = tl.where(mask, u, 0.0)
            tl.store(u_ptr + offs, u, mask=mask)
            tl.store(part_ptr + b * NUM_TILES + pid, tl.sum(tl.sum(u * u, axis=1), axis=0))
        else:
            ok = tl.load(ok_ptr) != 0
            step = tl.load(step_ptr + b)
            p_old = tl.load(p_ptr + offs, mask=mask, other=0.0)
            p_new = p_old - step * u
            if HAS_DECAY:
                p_new = p_new - scalar3(dk_hi, dk_mid, dk_lo, IS_FP64) * p_new
            tl.store(p_ptr + offs, p_new, mask=mask & ok)

    @triton.jit
    def _rotated_adam_normalized_update_kernel(
        u_ptr, part_ptr, p_ptr, step_ptr, ok_ptr, NUMEL, NUM_TILES, dk_hi, dk_mid, dk_lo,
        HAS_DECAY: tl.constexpr, IS_FP64: tl.constexpr, TILES_P2: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        """rms = sqrt(sum_tiles part[b] / NUMEL);  p_new = p - step[b] U / (1e-30 + rms);  decay;  p <- ok ? p_new : p.

        (1e-30 enters as the float32 constant nearest to it, as in float32 state; for float64 state it differs
        from the double 1e-30 by about 1e-38, which changes nothing unless U is itself ~1e-30.)
        """
        pid = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)
        t = tl.arange(0, TILES_P2)
        parts = tl.load(part_ptr + b * NUM_TILES + t, mask=t < NUM_TILES, other=0.0)
        total = tl.sum(parts, axis=0)
        if IS_FP64:  # tl.cast, not .to: an int argument equal to 1 arrives as a constexpr
            count = tl.cast(NUMEL, tl.float64)
        else:
            count = tl.cast(NUMEL, tl.float32)
        rms = sqrt_ieee(div_ieee(total, count, IS_FP64), IS_FP64)
        idx = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # 64-bit: NUMEL may pass 2^31
        mask = idx < NUMEL
        offs = b * NUMEL + idx
        u = tl.load(u_ptr + offs, mask=mask, other=0.0)
        u = div_ieee(u, tl.broadcast_to(1e-30 + rms, (BLOCK,)), IS_FP64)
        ok = tl.load(ok_ptr) != 0
        step = tl.load(step_ptr + b)
        p_old = tl.load(p_ptr + offs, mask=mask, other=0.0)
        p_new = p_old - step * u
        if HAS_DECAY:
            p_new = p_new - scalar3(dk_hi, dk_mid, dk_lo, IS_FP64) * p_new
        tl.store(p_ptr + offs, p_new, mask=mask & ok)


# ---- validation ------------------------------------------------------------------------------------------


def _check_stack(op: str, name: str, tensor: torch.Tensor, like: torch.Tensor, inplace: bool) -> None:
    if tensor.dtype != like.dtype:
        raise TypeError(f"{op}: {name} has dtype {tensor.dtype}, expected {like.dtype}")
    if tensor.shape != like.shape:
        raise ValueError(f"{op}: {name} has shape {tuple(tensor.shape)}, expected {tuple(like.shape)}")
    if tensor.device != like.device:
        raise ValueError(f"{op}: {name} is on {tensor.device}, expected {like.device}")
    if inplace and not tensor.is_contiguous():
        raise ValueError(f"{op}: {name} must be contiguous (it is updated in place)")


def _check_basis(op: str, name: str, basis: torch.Tensor | None, like: torch.Tensor, size: int) -> None:
    if basis is None:
        return
    expected = (like.shape[0], size, size)
    if tuple(basis.shape) != expected:
        raise ValueError(f"{op}: {name} has shape {tuple(basis.shape)}, expected {expected}")
    if basis.dtype != like.dtype:
        raise TypeError(f"{op}: {name} has dtype {basis.dtype}, expected {like.dtype}")
    if basis.device != like.device:
        raise ValueError(f"{op}: {name} is on {basis.device}, expected {like.device}")


def _check_ok(op: str, ok: torch.Tensor, like: torch.Tensor) -> None:
    if ok.dtype != torch.bool or ok.numel() != 1:
        raise TypeError(f"{op}: ok must be a one-element bool tensor, got dtype {ok.dtype} shape {tuple(ok.shape)}")
    if ok.device != like.device:
        raise ValueError(f"{op}: ok is on {ok.device}, expected {like.device}")


def _check_matrix_stack(op: str, name: str, tensor: torch.Tensor) -> None:
    check_dtype(op, name, tensor)
    if tensor.dim() != 3:
        raise ValueError(
            f"{op}: {name} has shape {tuple(tensor.shape)}; expected a matrix stack [B, m, n] "
            "(vectors as [B, 1, n]; higher ranks are not implemented in the Triton op, use the torch path)"
        )


def _check_rotated_adam(
    param, exp_avg, exp_avg_sq, grad, q_left, q_right, ok, step_size, beta1, beta2, eps, decay
) -> None:  # fmt: skip
    op = "rotated_adam_"
    _check_matrix_stack(op, "grad", grad)
    for name, tensor in (("param", param), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        _check_stack(op, name, tensor, grad, inplace=True)
    _check_basis(op, "q_left", q_left, grad, grad.shape[1])
    _check_basis(op, "q_right", q_right, grad, grad.shape[2])
    _check_ok(op, ok, grad)
    if step_size.shape != (grad.shape[0],) or not step_size.is_floating_point():
        raise ValueError(
            f"{op}: step_size must be a floating [B] tensor with B={grad.shape[0]}, got {step_size.dtype} "
            f"shape {tuple(step_size.shape)}"
        )
    if step_size.device != grad.device:
        raise ValueError(f"{op}: step_size is on {step_size.device}, expected {grad.device}")
    for name, value, low, high in (("beta1", beta1, 0.0, 1.0), ("beta2", beta2, 0.0, 1.0), ("eps", eps, 0.0, None)):
        if not (value >= low and (high is None or value <= high)):
            raise ValueError(f"{op}: {name}={value!r} must be in [{low}, {high if high is not None else 'inf'})")
    if not decay >= 0.0:
        raise ValueError(f"{op}: decay={decay!r} (lr * weight_decay) must be >= 0")


def _check_rotate_momentum(exp_avg, old_q_left, old_q_right, new_q_left, new_q_right, ok) -> None:
    op = "rotate_momentum_"
    _check_matrix_stack(op, "exp_avg", exp_avg)
    if not exp_avg.is_contiguous():
        raise ValueError(f"{op}: exp_avg must be contiguous (it is updated in place)")
    for side, old, new, size in (("left", old_q_left, new_q_left, 1), ("right", old_q_right, new_q_right, 2)):
        if (old is None) != (new is None):
            raise ValueError(f"{op}: old_q_{side} and new_q_{side} must both be given or both be None")
        _check_basis(op, f"old_q_{side}", old, exp_avg, exp_avg.shape[size])
        _check_basis(op, f"new_q_{side}", new, exp_avg, exp_avg.shape[size])
    _check_ok(op, ok, exp_avg)


# ---- torch references ------------------------------------------------------------------------------------


def _two_sided(x: torch.Tensor, left: torch.Tensor | None, right: torch.Tensor | None) -> torch.Tensor:
    """left^T x right for a matrix stack (a None side is the identity)."""
    if left is not None:
        x = left.mT @ x
    if right is not None:
        x = x @ right
    return x


def rotated_adam_ref(
    param: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    grad: torch.Tensor,
    q_left: torch.Tensor | None,
    q_right: torch.Tensor | None,
    ok: torch.Tensor,
    step_size: torch.Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    decay: float,
    normalize: bool,
) -> None:
    """Torch reference of rotated_adam_ (the specification; see the module docstring). Mutates param and moments."""
    ok = ok.reshape(())
    rotated = _two_sided(grad, q_left, q_right)
    new_avg = exp_avg * beta1 + (1.0 - beta1) * rotated
    new_avg_sq = exp_avg_sq * beta2 + (1.0 - beta2) * rotated * rotated
    direction = new_avg / (new_avg_sq.sqrt() + eps)
    update = _two_sided(direction, None if q_left is None else q_left.mT, None if q_right is None else q_right.mT)
    if normalize:
        update = update / (1e-30 + update.square().mean(dim=(1, 2), keepdim=True).sqrt())
    new = param - step_size.to(param.dtype).reshape(-1, 1, 1) * update
    if decay > 0.0:
        new = new - decay * new
    exp_avg.copy_(torch.where(ok, new_avg, exp_avg))
    exp_avg_sq.copy_(torch.where(ok, new_avg_sq, exp_avg_sq))
    param.copy_(torch.where(ok, new, param))


def rotate_momentum_ref(
    exp_avg: torch.Tensor,
    old_q_left: torch.Tensor | None,
    old_q_right: torch.Tensor | None,
    new_q_left: torch.Tensor | None,
    new_q_right: torch.Tensor | None,
    ok: torch.Tensor,
) -> None:
    """Torch reference of rotate_momentum_: m~ <- where(ok, Q_Lnew^T (Q_Lold m~ Q_Rold^T) Q_Rnew, m~)."""
    plain = _two_sided(
        exp_avg, None if old_q_left is None else old_q_left.mT, None if old_q_right is None else old_q_right.mT
    )
    exp_avg.copy_(torch.where(ok.reshape(()), _two_sided(plain, new_q_left, new_q_right), exp_avg))


# ---- Triton launchers ------------------------------------------------------------------------------------


def _launch_sandwich(
    x: torch.Tensor,
    a: torch.Tensor | None,
    b: torch.Tensor | None,
    transpose_a: bool,
    transpose_b: bool,
    out: torch.Tensor,
    ok: torch.Tensor,
    masked: bool,
    allow_tf32: bool,
) -> None:
    """out = op(A)^T X op(B) with op(M) = M^T when transpose_*: one launch of _sandwich_kernel."""
    batch, m, n = x.shape
    block_m, block_n, block_k, num_warps = gemm_blocks(x.dtype, x.device)
    stride_ak, stride_ai = (1, m) if transpose_a else (m, 1)
    stride_bl, stride_bj = (1, n) if transpose_b else (n, 1)
    wrap_triton(_sandwich_kernel)[(cdiv(m, block_m) * cdiv(n, block_n), batch)](
        x, a if a is not None else x, b if b is not None else x, out, ok, m, n,
        stride_ak, stride_ai, stride_bl, stride_bj,
        HAS_A=a is not None, HAS_B=b is not None, MASKED=masked, IS_FP64=x.dtype == torch.float64,
        PRECISION=dot_precision(x.dtype, allow_tf32), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=num_warps,
    )  # fmt: skip


def _split_chain(
    x: torch.Tensor, a: torch.Tensor | None, b: torch.Tensor | None, transpose_b: bool, ok: torch.Tensor, tf32: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(X, B) for the main kernel: X op(B) formed first when the chain would recompute it too often."""
    block_m = gemm_blocks(x.dtype, x.device)[0]
    if a is None or b is None or cdiv(x.shape[1], block_m) <= _CHAIN_MAX_ROW_TILES:
        return x, b
    xb = torch.empty_like(x)
    _launch_sandwich(x, None, b, False, transpose_b, xb, ok, False, tf32)
    return xb, None


def _check_grid(op: str, batch: int) -> None:
    if batch > 65535:
        raise ValueError(f"{op}: batch={batch} exceeds the grid limit 65535; split the stack")


def rotated_adam_triton(
    param: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    grad: torch.Tensor,
    q_left: torch.Tensor | None,
    q_right: torch.Tensor | None,
    ok: torch.Tensor,
    step_size: torch.Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    decay: float,
    normalize: bool,
    allow_tf32: bool = False,
) -> None:
    """Launch the rotated-Adam kernels: 2 launches (+1 with normalize, +1 per long chain split)."""
    batch, m, n = grad.shape
    if batch == 0 or m == 0 or n == 0:
        return
    _check_grid("rotated_adam_", batch)
    dtype = grad.dtype
    is_fp64 = dtype == torch.float64
    precision = dot_precision(dtype, allow_tf32)
    block_m, block_n, block_k, num_warps = gemm_blocks(dtype, grad.device)
    tiles = cdiv(m, block_m) * cdiv(n, block_n)
    grid = (tiles, batch)
    q_left = q_left.contiguous() if q_left is not None else None
    q_right = q_right.contiguous() if q_right is not None else None
    step_size = step_size.to(dtype).contiguous()
    scalars = [
        *split_scalar("beta1", beta1), *split_scalar("1 - beta1", 1.0 - beta1),
        *split_scalar("beta2", beta2), *split_scalar("1 - beta2", 1.0 - beta2), *split_scalar("eps", eps),
    ]  # fmt: skip
    decay_parts = split_scalar("decay", decay)
    blocks = dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=num_warps)

    with on_device_of(grad):  # every launch below runs on the stack's GPU and its current stream
        x, right = _split_chain(grad.contiguous(), q_left, q_right, False, ok, allow_tf32)
        direction = torch.empty_like(grad, memory_format=torch.contiguous_format)
        wrap_triton(_rotated_adam_moments_kernel)[grid](
            x, q_left if q_left is not None else x, right if right is not None else x,
            exp_avg, exp_avg_sq, direction, ok, m, n, *scalars,
            HAS_A=q_left is not None, HAS_B=right is not None, IS_FP64=is_fp64, PRECISION=precision, **blocks,
        )  # fmt: skip

        x, right = _split_chain(direction, q_left, q_right, True, ok, allow_tf32)
        update = torch.empty_like(direction) if normalize else direction
        partials = grad.new_empty((batch, tiles)) if normalize else direction
        wrap_triton(_rotated_adam_update_kernel)[grid](
            x, q_left if q_left is not None else x, right if right is not None else x,
            param, step_size, ok, update, partials, m, n, tiles, *decay_parts,
            HAS_A=q_left is not None, HAS_B=right is not None, HAS_DECAY=decay > 0.0, NORMALIZE=bool(normalize),
            IS_FP64=is_fp64, PRECISION=precision, **blocks,
        )  # fmt: skip
        if normalize:
            numel = m * n
            num_partials = tiles
            if num_partials > _MAX_PARTIALS:
                partials, num_partials = partials.sum(dim=1, keepdim=True), 1
            wrap_triton(_rotated_adam_normalized_update_kernel)[(cdiv(numel, _APPLY_BLOCK), batch)](
                update, partials, param, step_size, ok, numel, num_partials, *decay_parts,
                HAS_DECAY=decay > 0.0, IS_FP64=is_fp64, TILES_P2=max(next_power_of_2(num_partials), 2),
                BLOCK=_APPLY_BLOCK,
            )  # fmt: skip


def rotate_momentum_triton(
    exp_avg: torch.Tensor,
    old_q_left: torch.Tensor | None,
    old_q_right: torch.Tensor | None,
    new_q_left: torch.Tensor | None,
    new_q_right: torch.Tensor | None,
    ok: torch.Tensor,
    allow_tf32: bool = False,
) -> None:
    """P = Q_Lold m~ Q_Rold^T into a scratch buffer, then m~ <- ok ? Q_Lnew^T P Q_Rnew : m~ (2 launches, or more
    when a chain is split)."""
    batch, m, n = exp_avg.shape
    if batch == 0 or m == 0 or n == 0 or (old_q_left is None and old_q_right is None):
        return
    _check_grid("rotate_momentum_", batch)
    bases = [None if q is None else q.contiguous() for q in (old_q_left, old_q_right, new_q_left, new_q_right)]
    old_left, old_right, new_left, new_right = bases
    with on_device_of(exp_avg):  # every launch below runs on the stack's GPU and its current stream
        x, right = _split_chain(exp_avg, old_left, old_right, True, ok, allow_tf32)
        plain = torch.empty_like(exp_avg)
        _launch_sandwich(x, old_left, right, True, True, plain, ok, False, allow_tf32)
        x, right = _split_chain(plain, new_left, new_right, False, ok, allow_tf32)
        _launch_sandwich(x, new_left, right, False, False, exp_avg, ok, True, allow_tf32)


# ---- registered ops --------------------------------------------------------------------------------------


@triton_op("soap_kernels::rotated_adam_", mutates_args={"param", "exp_avg", "exp_avg_sq"})
def _rotated_adam_op(
    param: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    grad: torch.Tensor,
    q_left: torch.Tensor | None,
    q_right: torch.Tensor | None,
    ok: torch.Tensor,
    step_size: torch.Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    decay: float,
    normalize: bool,
    allow_tf32: bool,
) -> None:
    _check_rotated_adam(param, exp_avg, exp_avg_sq, grad, q_left, q_right, ok, step_size, beta1, beta2, eps, decay)
    if use_triton(grad):
        rotated_adam_triton(
            param, exp_avg, exp_avg_sq, grad, q_left, q_right, ok, step_size,
            beta1, beta2, eps, decay, normalize, allow_tf32,
        )  # fmt: skip
    else:
        rotated_adam_ref(
            param, exp_avg, exp_avg_sq, grad, q_left, q_right, ok, step_size, beta1, beta2, eps, decay, normalize
        )


@_rotated_adam_op.register_fake
def _(
    param, exp_avg, exp_avg_sq, grad, q_left, q_right, ok, step_size, beta1, beta2, eps, decay, normalize, allow_tf32
):
    _check_rotated_adam(param, exp_avg, exp_avg_sq, grad, q_left, q_right, ok, step_size, beta1, beta2, eps, decay)


@triton_op("soap_kernels::rotate_momentum_", mutates_args={"exp_avg"})
def _rotate_momentum_op(
    exp_avg: torch.Tensor,
    old_q_left: torch.Tensor | None,
    old_q_right: torch.Tensor | None,
    new_q_left: torch.Tensor | None,
    new_q_right: torch.Tensor | None,
    ok: torch.Tensor,
    allow_tf32: bool,
) -> None:
    _check_rotate_momentum(exp_avg, old_q_left, old_q_right, new_q_left, new_q_right, ok)
    if use_triton(exp_avg):
        rotate_momentum_triton(exp_avg, old_q_left, old_q_right, new_q_left, new_q_right, ok, allow_tf32)
    else:
        rotate_momentum_ref(exp_avg, old_q_left, old_q_right, new_q_left, new_q_right, ok)


@_rotate_momentum_op.register_fake
def _(exp_avg, old_q_left, old_q_right, new_q_left, new_q_right, ok, allow_tf32):
    _check_rotate_momentum(exp_avg, old_q_left, old_q_right, new_q_left, new_q_right, ok)


# ---- entry points for the optimizer (stack layout: [B, *view_shape], bases as in ParamStack.bases) -------------


def _matrix_view(
    op: str, tensors: Sequence[torch.Tensor], bases: Sequence[torch.Tensor | None]
) -> tuple[list[torch.Tensor], torch.Tensor | None, torch.Tensor | None]:
    """Matrix-stack views [B, m, n] of [B, *view_shape] tensors and (Q_L, Q_R) from a per-dim bases list."""
    rank = tensors[0].dim() - 1
    if rank not in (1, 2):
        raise ValueError(
            f"{op}: view rank {rank} (shape {tuple(tensors[0].shape)}) is not implemented in the Triton op; "
            "only vectors and matrices are (use the torch path)"
        )
    if len(bases) != rank:
        raise ValueError(f"{op}: got {len(bases)} bases for a view of rank {rank}")
    if rank == 1:
        return [t.unsqueeze(1) for t in tensors], None, bases[0]
    return list(tensors), bases[0], bases[1]


def rotated_adam_(
    param: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    grad: torch.Tensor,
    bases: Sequence[torch.Tensor | None],
    ok: torch.Tensor,
    step_size: torch.Tensor,
    *,
    beta1: float,
    beta2: float,
    eps: float,
    decay: float = 0.0,
    normalize: bool = False,
    allow_tf32: bool = False,
) -> None:
    """One rotated-Adam step of a stack, in place (see the module docstring for the formulas).

    param, exp_avg, exp_avg_sq: [B, *view_shape] contiguous, state dtype (float32/float64), updated in place:
        param is a stacked copy of the parameters (the caller stacks them and copies them back);
    grad: [B, *view_shape], same dtype; view_shape (m, n) or (n,) (a vector is the 1 x n matrix);
    bases: one entry per view dim, [B, n_d, n_d] or None (not preconditioned), e.g. ParamStack.bases;
    ok: one-element bool device tensor; when false nothing changes;
    step_size: [B] device tensor, lr * sqrt(1 - b2^t) / (1 - b1^t) (or lr), any float dtype;
    decay: lr * weight_decay (applied after the step when > 0); normalize: RMS-normalise U per parameter.
    """
    (param, exp_avg, exp_avg_sq, grad), q_left, q_right = _matrix_view(
        "rotated_adam_", (param, exp_avg, exp_avg_sq, grad), bases
    )
    torch.ops.soap_kernels.rotated_adam_(
        param, exp_avg, exp_avg_sq, grad, q_left, q_right, ok, step_size,
        float(beta1), float(beta2), float(eps), float(decay), bool(normalize), bool(allow_tf32),
    )  # fmt: skip


def rotate_momentum_(
    exp_avg: torch.Tensor,
    old_bases: Sequence[torch.Tensor | None],
    new_bases: Sequence[torch.Tensor | None],
    ok: torch.Tensor,
    allow_tf32: bool = False,
) -> None:
    """m~ <- where(ok, project(project_back(m~, old_bases), new_bases), m~), in place, for a stack.

    exp_avg: [B, *view_shape] contiguous with view_shape (m, n) or (n,); old_bases / new_bases: one entry per
    view dim, [B, n_d, n_d] or None (None in both for a dim that is not preconditioned).
    """
    if len(old_bases) != len(new_bases):
        raise ValueError(f"rotate_momentum_: {len(old_bases)} old bases but {len(new_bases)} new bases")
    (matrix,), old_left, old_right = _matrix_view("rotate_momentum_", (exp_avg,), old_bases)
    _, new_left, new_right = _matrix_view("rotate_momentum_", (exp_avg,), new_bases)
    torch.ops.soap_kernels.rotate_momentum_(matrix, old_left, old_right, new_left, new_right, ok, bool(allow_tf32))
