"""soap_kernels::jet_product: the Leibniz product of two jets by the C++ CPU kernel, with a first-order backward.

For the layout's product program (jets/plan.py, JetPlan.product_terms):

    D_k (x y) = sum over terms (coef, a, b) of slot k of coef x_a y_b,
    dL/dx_a = sum coef g_k y_b,      dL/dy_b = sum coef g_k x_a.

All three are bilinear term programs run by soap_kernels::jet_bilinear (csrc/cpu/jet_bilinear.cpp) in one pass
over blocks of every slot; the torch reference (and the path everywhere else) is jets/reference.product_jet_ref,
whose autograd graph holds a product and a sum per term.
"""

from __future__ import annotations

import functools

import torch

from soap_kernels._native import has_native_cpu
from soap_kernels.jets.plan import JetPlan


def native_product_supported(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether jet_product can multiply these stacks: same shape, CPU float32/float64, the C++ kernels built."""
    return (
        x.shape == y.shape
        and x.dtype == y.dtype
        and x.dtype in (torch.float32, torch.float64)
        and x.device.type == "cpu"
        and y.device.type == "cpu"
        and has_native_cpu()
    )


@functools.cache
def _programs(layout: str) -> dict[str, tuple[list[int], list[float]]]:
    """The forward program and the two backward ones, as (terms: (out, a, b) triples, coefs), sorted by out."""
    plan = JetPlan.from_key(layout)
    forward = [(k, a, b, coef) for k, terms in enumerate(plan.product_terms) for coef, a, b in terms]
    programs = {
        "forward": forward,
        "grad_x": sorted((a, k, b, coef) for k, a, b, coef in forward),  # sum_k,b coef g_k y_b into slot a
        "grad_y": sorted((b, k, a, coef) for k, a, b, coef in forward),  # sum_k,a coef g_k x_a into slot b
    }
    return {
        name: ([index for out, i, j, _ in terms for index in (out, i, j)], [coef for *_, coef in terms])
        for name, terms in programs.items()
    }


def _bilinear(a: torch.Tensor, b: torch.Tensor, layout: str, program: str) -> torch.Tensor:
    terms, coefs = _programs(layout)[program]
    return torch.ops.soap_kernels.jet_bilinear(a, b, JetPlan.from_key(layout).num_slots, terms, coefs)


@torch.library.custom_op("soap_kernels::jet_product", mutates_args=())
def jet_product(x: torch.Tensor, y: torch.Tensor, layout: str) -> torch.Tensor:
    """The jet of x * y for two stacks [K, N, F] laid out by `layout` (C++ kernel, CPU)."""
    return _bilinear(x.contiguous(), y.contiguous(), layout, "forward")


@jet_product.register_fake
def _(x, y, layout):
    return torch.empty_like(x)


def _setup_context(ctx, inputs, output):
    x, y, layout = inputs
    ctx.save_for_backward(x.contiguous(), y.contiguous())
    ctx.layout = layout


def _backward(ctx, grad):
    x, y = ctx.saved_tensors
    grad = grad.contiguous()
    grad_x = _bilinear(grad, y, ctx.layout, "grad_x") if ctx.needs_input_grad[0] else None
    grad_y = _bilinear(grad, x, ctx.layout, "grad_y") if ctx.needs_input_grad[1] else None
    return grad_x, grad_y, None


jet_product.register_autograd(_backward, setup_context=_setup_context)


def _register_fake() -> None:
    """The meta kernel of the C++ op (shapes only) for torch.compile and FakeTensor tracing."""
    if not has_native_cpu():
        return

    @torch.library.register_fake("soap_kernels::jet_bilinear")
    def _(a, b, num_slots, terms, coefs):
        return a.new_empty((num_slots, *a.shape[1:]))


_register_fake()
