"""The C++ CPU path of soap_kernels::jet_dense_activation: ATen GEMMs plus the fused activation-jet kernel.

The GEMMs are ATen's (the forward's are the reference's linear_jet_into; the backward runs them per chunk of
rows); the elementwise rules run in soap_kernels::jet_activation (csrc/cpu/jet_activation.cpp): the forward rule
h_k = sum coef * s^(m)(z_0) * prod z_factors, or the adjoint g_z,j = sum coef * s^(m)(z_0) * g_k * prod z_factors,
in one pass over blocks of every slot instead of one pass (and one fresh [N, F] tensor) per multiplication.
The term programs are the JetPlan's, encoded as rows (out_slot, m, grad_slot or -1, #factors, f_0..f_3).
Every large stack here (z, h, g_z, dL/dx) takes its memory from the C++ buffer cache (cached_empty), so the same
stacks every step reuse freed memory instead of page-faulting fresh pages in.
"""

from __future__ import annotations

import functools

import torch

from soap_kernels._native import has_native_cpu
from soap_kernels.jets.activations import logistic_polynomials
from soap_kernels.jets.plan import JetPlan
from soap_kernels.jets.reference import linear_jet_into

NATIVE_ACTIVATIONS = ("tanh", "sigmoid", "silu", "sin", "cos", "gelu")
# activations whose derivative tower is a polynomial in s(z_0) itself: the backward reuses the forward's h[0]
NATIVE_BASE_ACTIVATIONS = ("tanh", "sigmoid")
_OP_NAME = "soap_kernels::jet_activation"
_MAX_FACTORS = 4


def native_stack_supported(stack: torch.Tensor) -> bool:
    """Whether the C++ jet kernels take this stack: a CPU float32/float64 tensor, with soap_kernels._C built."""
    return stack.device.type == "cpu" and stack.dtype in (torch.float32, torch.float64) and has_native_cpu()


def native_jet_supported(x: torch.Tensor, activation: str) -> bool:
    """Whether the C++ jet kernel can run this layer: a stack it takes and an activation it knows."""
    return activation in NATIVE_ACTIVATIONS and native_stack_supported(x)


@functools.cache
def _tower_coefficients(activation: str, orders: int) -> list[float]:
    """`orders` rows, flattened, of equal length: row m holds P_m with s^(m) = P_m(tanh or sigmoid of z_0)
    (silu: the sigmoid's; gelu: tanh's, of its inner cubic), lowest degree first; sin and cos need none."""
    if activation in ("sin", "cos"):
        return []
    polys = logistic_polynomials("tanh" if activation in ("tanh", "gelu") else "sigmoid", orders - 1)
    width = max(len(p) for p in polys)
    return [c for poly in polys for c in (*poly, *(0.0,) * (width - len(poly)))]


@functools.cache
def _program(layout: str, adjoint: bool) -> tuple[list[int], list[float], int]:
    """(terms, 8 integers per term, coefs, tower orders needed) of the forward or adjoint rule."""
    plan = JetPlan.from_key(layout)
    rows: list[int] = []
    coefs: list[float] = []
    if adjoint:
        programs = plan.activation_adjoint_terms
        flat = [(slot, coef, m, k, factors) for slot, terms in enumerate(programs) for coef, m, k, factors in terms]
    else:
        programs = plan.activation_terms
        flat = [(slot, coef, m, -1, factors) for slot, terms in enumerate(programs) for coef, m, factors in terms]
    for slot, coef, m, grad_slot, factors in flat:
        if len(factors) > _MAX_FACTORS:
            raise ValueError(f"jet layout {layout!r} has a term with {len(factors)} factors; at most {_MAX_FACTORS}")
        padded = list(factors) + [-1] * (_MAX_FACTORS - len(factors))
        rows.extend([slot, m, grad_slot, len(factors), *padded])
        coefs.append(coef)
    return rows, coefs, 1 + max(m for _, _, m, _, _ in flat)


def _kernel_arguments(z, activation, layout, grad, value):
    """(z, grad, base, activation, tower coefficients, tower orders, terms, coefs): the C++ kernels' arguments for
    the forward rule (grad None) or its adjoint."""
    terms, coefs, orders = _program(layout, grad is not None)
    base = value.contiguous() if value is not None and activation in NATIVE_BASE_ACTIVATIONS else None
    grad = _with_contiguous_slots(grad) if grad is not None else None
    tower = _tower_coefficients(activation, orders)
    return _with_contiguous_slots(z), grad, base, activation, tower, orders, terms, coefs


def activation_jet_native(
    z: torch.Tensor,
    activation: str,
    layout: str,
    grad: torch.Tensor | None = None,
    value: torch.Tensor | None = None,
) -> torch.Tensor:
    """The activation's jet of z (grad None), or its adjoint (dh/dz)^T grad, by the C++ kernel.

    value: s(z_0) from the forward (the output's value slot); for tanh and sigmoid it is the base of the
    derivative tower, which then need not be evaluated again.
    """
    return torch.ops.soap_kernels.jet_activation(*_kernel_arguments(z, activation, layout, grad, value))


def _with_contiguous_slots(stack: torch.Tensor) -> torch.Tensor:
    """The stack itself when each slot [N, F] is one contiguous run, as the kernel needs (a row range
    stack[:, r0:r1] of a contiguous stack is), else a contiguous copy."""
    k, n, f = stack.shape
    slots_contiguous = (f <= 1 or stack.stride(2) == 1) and (n <= 1 or stack.stride(1) == f)
    return stack if slots_contiguous and (k <= 1 or stack.stride(0) >= n * f) else stack.contiguous()


def cached_empty(like: torch.Tensor, shape) -> torch.Tensor:
    """An uninitialised CPU tensor of `like`'s dtype whose storage comes from the C++ buffer cache
    (csrc/include/soap_kernels/cpu_buffer_cache.h): the same big stacks every step reuse freed memory instead of
    page-faulting fresh pages."""
    return torch.ops.soap_kernels.cached_empty(like, list(shape))


def new_stack(like: torch.Tensor, shape) -> torch.Tensor:
    """An uninitialised contiguous tensor of `shape` like `like`: from the buffer cache where the C++ kernels take
    the stack (native_stack_supported), else a plain new_empty."""
    return cached_empty(like, shape) if native_stack_supported(like) else like.new_empty(shape)


def dense_z_native(x, weight, bias):
    """z = x W^T + b (bias on the value slot) of the native layer, into a stack from the CPU buffer cache."""
    return linear_jet_into(x, weight, bias, out=cached_empty(x, (x.shape[0], x.shape[1], weight.shape[0])))


def jet_dense_activation_native(x, weight, bias, activation, layout):
    """(h, z) of jet_dense_activation with the elementwise rule in C++."""
    z = dense_z_native(x, weight, bias)
    return activation_jet_native(z, activation, layout), z


# Rows per chunk of the backward: BACKWARD_CHUNK_ELEMENTS / F_out per slot (1024 rows of 256 features, 4 MB for
# four slots in float32).
BACKWARD_CHUNK_ELEMENTS = 1 << 18


def jet_dense_activation_backward_native(grad_h, z, x, weight, activation, layout, compute_grad_x, value):
    """(dL/dx, dL/dW, dL/db) by soap_kernels::jet_dense_backward (csrc/cpu/jet_dense_backward.cpp): g_z in C++,
    computed and consumed one chunk of rows at a time, so each chunk's g_z feeds its GEMMs while it is in cache
    and the [K, N, F_out] g_z of the whole batch, a fresh allocation that page-faults on a CPU, never exists."""
    rows = max(1, BACKWARD_CHUNK_ELEMENTS // max(z.shape[2], 1))
    z, grad_h, base, *program = _kernel_arguments(z, activation, layout, grad_h, value)
    return torch.ops.soap_kernels.jet_dense_backward(grad_h, z, x, weight, base, *program, compute_grad_x, rows)


def _register_fake() -> None:
    """The meta kernel (shapes only) so the op works under torch.compile and FakeTensor tracing."""
    if not has_native_cpu():
        return

    @torch.library.register_fake(_OP_NAME)
    def _(z, grad, base, activation, tower_coefs, tower_orders, terms, coefs):
        return torch.empty_like(z)

    @torch.library.register_fake("soap_kernels::jet_dense_backward")
    def _(grad_h, z, x, weight, base, activation, tower_coefs, tower_orders, terms, coefs, compute_grad_x, rows):
        grad_x = x.new_empty(x.shape) if compute_grad_x else x.new_empty(0)
        return grad_x, weight.new_empty(weight.shape), weight.new_empty(weight.shape[0])

    @torch.library.register_fake("soap_kernels::cached_empty")
    def _(like, size):
        return like.new_empty(size)


_register_fake()
