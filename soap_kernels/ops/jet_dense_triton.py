"""Triton kernels of soap_kernels::jet_dense_activation: fused GEMM + activation-jet epilogue, and the
backward's activation-adjoint prologue fused with the transposed GEMM.

Forward (one launch): for a tile of points and output features, every slot k shares the weight tile:
    z_k = x_k W^T (+ b on k = 0),  h_k = sum_terms coef * s^(m)(z_0) * prod z_factors   (jets/plan.py).
Backward (one launch + one GEMM): g_z = (dh/dz)^T g computed in the prologue, dL/dx_k = g_z,k W in the
same kernel (g_z is also written once), then dL/dW = sum_k g_z,k^T x_k as one GEMM over all K*N rows and
dL/db = sum_n g_z,0.
Split (kernel_choice; the backward's default): torch.mm for each GEMM and an elementwise kernel for the
activation jet or its adjoint, each element once.

The slot count and the programs differ per layout, so the kernel source is generated per
(layout, activation, dtype) by ops/jet_triton_codegen.py from the same term lists as the torch reference.
"""

from __future__ import annotations

import contextlib
import functools
import os
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.library import wrap_triton

from soap_kernels.jets.plan import JetPlan
from soap_kernels.jets.reference import weight_gradient
from soap_kernels.ops._triton_utils import cdiv, on_device_of
from soap_kernels.ops.jet_triton_codegen import (
    adjoint_program_lines,
    forward_program_lines,
    load_generated,
    tower_lines,
)

_SUPPORTED_DTYPES = {torch.float32: "tl.float32", torch.float64: "tl.float64"}

_HEADER = '''
import triton
import triton.language as tl

# _tanh, _sigmoid: on a GPU float32 tl.exp and '/' are approximate (about 2 ulp each), unlike numpy under the
# interpreter; the division is made IEEE-rounded (div_rn), which halves the error the derivative towers amplify


@triton.jit
def _divide(a, b):
    """a / b correctly rounded (float32 '/' is approximate on a GPU; float64 '/' is IEEE)."""
    if a.dtype == tl.float32:
        return tl.div_rn(a, b)
    else:
        return a / b


@triton.jit
def _tanh(x):
    """tanh(x) = sign(x) (1 - e) / (1 + e), e = exp(-2|x|): no overflow for large |x|."""
    e = tl.exp(-2.0 * tl.abs(x))
    t = _divide(1.0 - e, 1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def _sigmoid(x):
    """1 / (1 + exp(-x)), via exp(-|x|) so it never overflows."""
    e = tl.exp(-tl.abs(x))
    return _divide(tl.where(x >= 0, 1.0, e), 1.0 + e)
'''


def _indent(lines: list[str], depth: int) -> str:
    return textwrap.indent("\n".join(lines), "    " * depth)


@functools.cache
def _forward_kernel(layout: str, activation: str, dtype: str):
    """The generated `_jet_dense_activation_kernel` for a layout, activation and accumulator dtype."""
    plan = JetPlan.from_key(layout)
    slots = range(plan.num_slots)
    body = f'''
@triton.jit
def _jet_dense_activation_kernel(
    x_ptr, w_ptr, b_ptr, h_ptr, z_ptr, N, F_IN, F_OUT,
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """z_k = x_k W^T (+ b on slot 0); h = activation jet of z (layout {layout}, {activation})."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    # 64-bit offsets: a slot of N * F elements, or k slots of them, may pass 2^31
    rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    inner = tl.arange(0, BLOCK_K).to(tl.int64)
    x_slot = tl.cast(N, tl.int64) * F_IN  # tl.cast, not .to: an int argument equal to 1 arrives as a constexpr
    out_slot = tl.cast(N, tl.int64) * F_OUT
{_indent([f"acc{k} = tl.zeros((BLOCK_M, BLOCK_N), dtype={dtype})" for k in slots], 1)}
    for k0 in range(0, F_IN, BLOCK_K):
        ks = k0 + inner
        # W^T tile [BLOCK_K, BLOCK_N], loaded once and shared by every slot
        w = tl.load(w_ptr + cols[None, :] * F_IN + ks[:, None],
                    mask=(ks[:, None] < F_IN) & (cols[None, :] < F_OUT), other=0.0)
        x_offsets = rows[:, None] * F_IN + ks[None, :]
        x_mask = (rows[:, None] < N) & (ks[None, :] < F_IN)
{_indent([f"acc{k} += tl.dot(tl.load(x_ptr + {k} * x_slot + x_offsets, mask=x_mask, other=0.0), w, "
          "input_precision=PRECISION)" for k in slots], 2)}
    if HAS_BIAS:
        acc0 += tl.load(b_ptr + cols, mask=cols < F_OUT, other=0.0)[None, :]
{_indent(tower_lines(activation, "acc0", plan.max_activation_order, dtype), 1)}
{_indent(forward_program_lines(plan, "acc", "h"), 1)}
    out_offsets = rows[:, None] * F_OUT + cols[None, :]
    out_mask = (rows[:, None] < N) & (cols[None, :] < F_OUT)
{_indent([f"tl.store(z_ptr + {k} * out_slot + out_offsets, acc{k}, mask=out_mask)" for k in slots], 1)}
{_indent([f"tl.store(h_ptr + {k} * out_slot + out_offsets, h{k}, mask=out_mask)" for k in slots], 1)}
'''
    return load_generated(_HEADER + body, "jet-forward")["_jet_dense_activation_kernel"]


def _slotwise_source(name: str, pointers: str, doc: str, lines: list[str]) -> str:
    """A generated elementwise kernel `name(pointers, SLOT, BLOCK)`: `lines` run on BLOCK elements of every slot
    per program (offs, slot and mask are defined for them)."""
    return f'''
@triton.jit
def {name}({pointers}, SLOT, BLOCK: tl.constexpr):
    """{doc}, BLOCK elements of every slot per program."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    slot = tl.cast(SLOT, tl.int64)
    mask = offs < slot
{_indent(lines, 1)}
'''


@functools.cache
def _activation_kernel(layout: str, activation: str, dtype: str):
    """The generated `_jet_activation_kernel`: the forward kernel's epilogue alone, h = activation jet of a
    stored z, over blocks of every slot. The same statements on the same values as the fused forward, so the
    backward can remake a layer's h from its z (jets/recompute.py) instead of keeping it."""
    plan = JetPlan.from_key(layout)
    slots = range(plan.num_slots)
    lines = [f"acc{k} = tl.load(z_ptr + {k} * slot + offs, mask=mask, other=0.0)" for k in slots]
    lines += tower_lines(activation, "acc0", plan.max_activation_order, dtype)
    lines += forward_program_lines(plan, "acc", "h")
    lines += [f"tl.store(h_ptr + {k} * slot + offs, h{k}, mask=mask)" for k in slots]
    doc = f"h = activation jet of z (layout {layout}, {activation})"
    body = _slotwise_source("_jet_activation_kernel", "z_ptr, h_ptr", doc, lines)
    return load_generated(_HEADER + body, "jet-activation")["_jet_activation_kernel"]


@functools.cache
def _backward_kernel(layout: str, activation: str, dtype: str):
    """The generated `_jet_dense_activation_backward_kernel` (adjoint prologue + g_z W GEMM)."""
    plan = JetPlan.from_key(layout)
    slots = range(plan.num_slots)
    body = f'''
@triton.jit
def _jet_dense_activation_backward_kernel(
    g_ptr, z_ptr, w_ptr, gz_ptr, gx_ptr, N, F_IN, F_OUT,
    COMPUTE_GRAD_X: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """g_z = (dh/dz)^T g (written by the first column of programs); dL/dx_k = g_z,k W (layout {layout})."""
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    # 64-bit offsets: a slot of N * F elements, or k slots of them, may pass 2^31
    rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    ks = (pid_k * BLOCK_K + tl.arange(0, BLOCK_K)).to(tl.int64)
    outer = tl.arange(0, BLOCK_N).to(tl.int64)
    in_slot = tl.cast(N, tl.int64) * F_IN  # tl.cast, not .to: an int argument equal to 1 arrives as a constexpr
    out_slot = tl.cast(N, tl.int64) * F_OUT
{_indent([f"acc{k} = tl.zeros((BLOCK_M, BLOCK_K), dtype={dtype})" for k in slots], 1)}
    for n0 in range(0, F_OUT, BLOCK_N):
        cols = n0 + outer
        offsets = rows[:, None] * F_OUT + cols[None, :]
        mask = (rows[:, None] < N) & (cols[None, :] < F_OUT)
{_indent([f"z{k} = tl.load(z_ptr + {k} * out_slot + offsets, mask=mask, other=0.0)" for k in slots], 2)}
{_indent([f"g{k} = tl.load(g_ptr + {k} * out_slot + offsets, mask=mask, other=0.0)" for k in slots], 2)}
{_indent(tower_lines(activation, "z0", plan.max_activation_order + 1, dtype), 2)}
{_indent(adjoint_program_lines(plan, "z", "g", "gz"), 2)}
        # g_z is the same for every column of programs: the first one writes it for the weight GEMM
        store_mask = mask & (pid_k == 0)
{_indent([f"tl.store(gz_ptr + {k} * out_slot + offsets, gz{k}, mask=store_mask)" for k in slots], 2)}
        if COMPUTE_GRAD_X:
            w = tl.load(w_ptr + cols[:, None] * F_IN + ks[None, :],
                        mask=(cols[:, None] < F_OUT) & (ks[None, :] < F_IN), other=0.0)
{_indent([f"acc{k} += tl.dot(gz{k}, w, input_precision=PRECISION)" for k in slots], 3)}
    if COMPUTE_GRAD_X:
        x_offsets = rows[:, None] * F_IN + ks[None, :]
        x_mask = (rows[:, None] < N) & (ks[None, :] < F_IN)
{_indent([f"tl.store(gx_ptr + {k} * in_slot + x_offsets, acc{k}, mask=x_mask)" for k in slots], 2)}
'''
    return load_generated(_HEADER + body, "jet-backward")["_jet_dense_activation_backward_kernel"]


@functools.cache
def _adjoint_kernel(layout: str, activation: str, dtype: str):
    """The generated `_jet_activation_adjoint_kernel`: g_z = (dh/dz)^T g over blocks of every slot, each element
    once (the split backward: this, then dL/dx = g_z W as one GEMM)."""
    plan = JetPlan.from_key(layout)
    slots = range(plan.num_slots)
    lines = [f"z{k} = tl.load(z_ptr + {k} * slot + offs, mask=mask, other=0.0)" for k in slots]
    lines += [f"g{k} = tl.load(g_ptr + {k} * slot + offs, mask=mask, other=0.0)" for k in slots]
    lines += tower_lines(activation, "z0", plan.max_activation_order + 1, dtype)
    lines += adjoint_program_lines(plan, "z", "g", "gz")
    lines += [f"tl.store(gz_ptr + {k} * slot + offs, gz{k}, mask=mask)" for k in slots]
    doc = f"g_z = (dh/dz)^T g (layout {layout}, {activation})"
    body = _slotwise_source("_jet_activation_adjoint_kernel", "g_ptr, z_ptr, gz_ptr", doc, lines)
    return load_generated(_HEADER + body, "jet-adjoint")["_jet_activation_adjoint_kernel"]


def _dtype_name(tensor: torch.Tensor) -> str:
    if tensor.dtype not in _SUPPORTED_DTYPES:
        raise NotImplementedError(
            f"the jet Triton kernels support float32 and float64, not {tensor.dtype}; use backend='torch'"
        )
    return _SUPPORTED_DTYPES[tensor.dtype]


def _precision(tensor: torch.Tensor) -> str:
    """tf32 only where torch itself allows it for float32 matmuls; exact fp32/fp64 otherwise."""
    return "tf32" if tensor.is_cuda and tensor.dtype == torch.float32 and _cuda_matmul_allows_tf32() else "ieee"


def _cuda_matmul_allows_tf32() -> bool:
    """torch's float32 matmul precision for CUDA, however it was set: matmul.fp32_precision answers for the new API,
    torch.set_float32_matmul_precision and the legacy allow_tf32 flag alike, whereas reading allow_tf32 raises once
    the new API was used."""
    return torch.backends.cuda.matmul.fp32_precision == "tf32"


KERNEL_CHOICES = ("fused", "split")
# Measured on an H100 (bench/results/gpu-check-NVIDIA-H100-80GB-HBM3-2026-11-28/: jet-backward-fused-vs-split.txt
# and jet_kernels-*.json; one 4-slot float32 layer, N = 8192, 256 -> 256): the backward launcher took 0.52 ms
# fused and 0.254 ms split, twice, side by side. The fused forward took 0.32-0.57 ms depending on its launch
# settings, against 0.10 ms for cuBLAS's GEMM of the same shape alone; the split forward (that GEMM plus an
# elementwise pass) is not timed yet, so it is not the default yet.
DEFAULT_KERNELS = {"forward": "fused", "backward": "split"}


def kernel_choice(direction: str) -> str:
    """How the Triton forward or backward of a dense jet layer runs (SOAP_KERNELS_JET_FORWARD,
    SOAP_KERNELS_JET_BACKWARD; defaults in DEFAULT_KERNELS):
    "fused": one kernel: the forward's GEMM with the activation jet in its epilogue; the backward's g_z in the
        prologue of dL/dx = g_z W, each column block of programs recomputing g_z for its rows (the F_in /
        BLOCK_K blocks each read g and z again);
    "split": torch.mm (cuBLAS) for the GEMM and an elementwise kernel for the activation jet (forward: z then
        h) or its adjoint (backward: g_z, then dL/dx).
    Read at each call; under torch.compile when tracing, so a compiled graph keeps the choice it was traced with.
    """
    variable = f"SOAP_KERNELS_JET_{direction.upper()}"
    default = DEFAULT_KERNELS[direction]
    choice = os.environ.get(variable, default).strip().lower() or default
    if choice not in KERNEL_CHOICES:
        raise ValueError(f"{variable}={choice!r}; expected one of {KERNEL_CHOICES}")
    return choice


@contextlib.contextmanager
def using_kernels(way: str) -> Iterator[None]:
    """Inside: forward and backward run `way` ("fused" or "split"), as the two environment variables would say;
    their previous values are restored after (benchmarks and the compile check compare the two ways)."""
    if way not in KERNEL_CHOICES:
        raise ValueError(f"way={way!r}; expected one of {KERNEL_CHOICES}")
    names = ("SOAP_KERNELS_JET_FORWARD", "SOAP_KERNELS_JET_BACKWARD")
    previous = {name: os.environ.get(name) for name in names}
    os.environ.update(dict.fromkeys(names, way))
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass(frozen=True)
class LaunchConfig:
    """Tile sizes and launch settings of the fused dense-layer kernels (BLOCK_K is the reduction tile)."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


def launch_config(kind: str, num_slots: int, device: torch.device) -> LaunchConfig:
    """The forward's ("forward") or backward's ("backward") launch settings for a stack of num_slots slots.

    Interpreter: small tiles keep the CPU emulation quick. GPU: software-pipelining stages hold a copy of
    every slot's tiles in shared memory, so Triton's default (3 on Hopper) overflows the 227 KiB per block:
    compiled for sm_90 (bench/triton_gpu_compile.py), the Allen-Cahn backward (4 slots, 64 x 64 float32
    tiles) needs 336 KiB at 3 stages, 72 KiB at 1; the Kuramoto-Sivashinsky forward (6 slots) in float64
    224 KiB at 3, 112 KiB at 2. Not tuned on a GPU yet (bench/jet_kernels.py sweeps the choices there).
    """
    if device.type != "cuda":
        return LaunchConfig(16, 32, 32, 4, 1)
    block_m = 32 if num_slots > 6 else 64
    return LaunchConfig(block_m, 64, 32, 4, 2 if kind == "forward" else 1)


def jet_dense_activation_triton(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str, layout: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward launcher: (h, z), each [K, N, F_out]."""
    dtype = _dtype_name(x)
    x, weight = x.contiguous(), weight.contiguous().to(x.dtype)
    bias = bias.contiguous().to(x.dtype) if bias is not None else None
    num_slots, n, f_in = x.shape
    f_out = weight.shape[0]
    h = x.new_empty((num_slots, n, f_out))
    z = torch.empty_like(h)
    if h.numel() == 0:  # nothing to write (and no launch with an empty grid)
        return h, z
    if kernel_choice("forward") == "split":
        torch.mm(x.view(num_slots * n, f_in), weight.t(), out=z.view(num_slots * n, f_out))
        if bias is not None:
            z[0].add_(bias)
        _launch_slotwise(_activation_kernel(layout, activation, dtype), n * f_out, z, h)
        return h, z
    config = launch_config("forward", num_slots, x.device)
    grid = (cdiv(n, config.block_m), cdiv(f_out, config.block_n))
    kernel = _forward_kernel(layout, activation, dtype)
    with on_device_of(x):
        wrap_triton(kernel)[grid](
            x, weight, bias if bias is not None else weight, h, z, n, f_in, f_out,
            HAS_BIAS=bias is not None, PRECISION=_precision(x), BLOCK_M=config.block_m, BLOCK_N=config.block_n,
            BLOCK_K=config.block_k, num_warps=config.num_warps, num_stages=config.num_stages,
        )
    return h, z


_ACTIVATION_BLOCK = 1024  # elements of every slot per program of the elementwise (slotwise) kernels


def _launch_slotwise(kernel, slot: int, *tensors: torch.Tensor) -> None:
    """Launch a _slotwise_source kernel on stacks whose slots hold `slot` elements, on the first tensor's device."""
    with on_device_of(tensors[0]):
        wrap_triton(kernel)[(cdiv(slot, _ACTIVATION_BLOCK),)](*tensors, slot, BLOCK=_ACTIVATION_BLOCK)


def jet_activation_triton(z: torch.Tensor, activation: str, layout: str) -> torch.Tensor:
    """h = activation jet of a stack z [K, N, F] (float32 or float64): what jet_dense_activation_triton
    returns as h for that z. Not an op: the backward's recomputation calls it (eager only)."""
    z = z.contiguous()
    dtype = _dtype_name(z)
    h = torch.empty_like(z)
    slot = z.shape[1] * z.shape[2]
    if slot == 0:
        return h
    _launch_slotwise(_activation_kernel(layout, activation, dtype), slot, z, h)
    return h


def jet_dense_activation_backward_triton(
    grad_h: torch.Tensor,
    z: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    activation: str,
    layout: str,
    compute_grad_x: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward launcher: (dL/dx or empty, dL/dW, dL/db); dL/dW and dL/db in weight's dtype, as the fake says."""
    dtype = _dtype_name(z)
    grad_h, z, x = grad_h.contiguous(), z.contiguous(), x.contiguous()
    weight_in_z_dtype = weight.contiguous().to(z.dtype)  # as the forward: tl.dot needs one dtype
    num_slots, n, f_out = z.shape
    f_in = weight.shape[1]
    grad_z = torch.empty_like(z)
    grad_x = torch.empty_like(x) if compute_grad_x else x.new_empty(0)
    if z.numel() > 0 and kernel_choice("backward") == "split":
        _launch_slotwise(_adjoint_kernel(layout, activation, dtype), n * f_out, grad_h, z, grad_z)
        if compute_grad_x:  # one GEMM over every slot's rows: [K N, F_out] x [F_out, F_in]
            torch.mm(grad_z.view(num_slots * n, f_out), weight_in_z_dtype, out=grad_x.view(num_slots * n, f_in))
    elif z.numel() > 0:
        config = launch_config("backward", num_slots, z.device)
        # the programs with pid_k == 0 write g_z, so there is one column of them even when F_in == 0
        grid = (cdiv(n, config.block_m), max(cdiv(f_in, config.block_k), 1) if compute_grad_x else 1)
        kernel = _backward_kernel(layout, activation, dtype)
        with on_device_of(z):
            wrap_triton(kernel)[grid](
                grad_h, z, weight_in_z_dtype, grad_z, grad_x if compute_grad_x else grad_z, n, f_in, f_out,
                COMPUTE_GRAD_X=compute_grad_x, PRECISION=_precision(z), BLOCK_M=config.block_m,
                BLOCK_N=config.block_n, BLOCK_K=config.block_k, num_warps=config.num_warps,
                num_stages=config.num_stages,
            )
    elif compute_grad_x:
        grad_x.zero_()  # F_out == 0 (g_z is empty): dL/dx = g_z W is a sum of nothing; N == 0: grad_x is empty
    if grad_z.numel() == 0 or x.numel() == 0:  # a sum of nothing (weight_gradient cannot view [-1, 0])
        grad_weight = weight.new_zeros(weight.shape)
    else:
        grad_weight = weight_gradient(grad_z, x).to(weight.dtype)
    return grad_x, grad_weight, grad_z[0].sum(0).to(weight.dtype)
