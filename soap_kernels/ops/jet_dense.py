"""soap_kernels::jet_dense_activation: one network layer applied to a jet, with a first-order backward.

Forward, for a jet stack x [K, N, F_in] laid out by a JetPlan (slot 0 the value):

    z_k = x_k W^T (+ b on k = 0),        h = s(z) as a jet (Faa di Bruno, see jets/plan.py),

returning (h, z); z is kept for the backward and marked non-differentiable. Backward, given g = dL/dh:

    g_z = (dh/dz)^T g       (activation-adjoint rule, plan.activation_adjoint_terms)
    dL/dx = g_z W,  dL/dW = sum_k g_z,k^T x_k  (one GEMM over all K*N rows),  dL/db = sum_n g_z,0.

Both are torch.library.triton_op ops; `kernels` picks the implementation: "triton" launches the Triton kernels
of ops/jet_dense_triton.py (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1), "native" runs the
elementwise rules in the C++ CPU kernel of ops/jet_dense_native.py (where it supports the dtype and activation;
otherwise the reference), "torch" the torch reference of jets/reference.py. Neither needs double backward, so
the jet is torch.compile friendly.
"""

from __future__ import annotations

import functools

import torch
from torch.library import triton_op

from soap_kernels.jets.plan import JetPlan
from soap_kernels.jets.recompute import attach, keeping_recipes_active, remaking_layers_active
from soap_kernels.jets.reference import (
    activation_jet_adjoint_ref,
    activation_jet_ref,
    linear_jet_backward,
    linear_jet_into,
)
from soap_kernels.ops.jet_dense_native import (
    NATIVE_BASE_ACTIVATIONS,
    activation_jet_native,
    dense_z_native,
    jet_dense_activation_backward_native,
    jet_dense_activation_native,
    native_jet_supported,
    new_stack,
)

KERNELS = ("torch", "triton", "native")


def jet_dense_activation_ref(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str, layout: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch reference of the forward: (h, z)."""
    z = linear_jet_into(x, weight, bias)
    return jet_activation_values(z, activation, layout, "torch"), z


def jet_dense_activation_backward_ref(
    grad_h: torch.Tensor,
    z: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    activation: str,
    layout: str,
    compute_grad_x: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Torch reference of the backward: (dL/dx, dL/dW, dL/db); dL/dx is empty when not asked for."""
    grad_z = activation_jet_adjoint_ref(grad_h, z, activation, JetPlan.from_key(layout), out=torch.empty_like(z))
    return linear_jet_backward(grad_z, x, weight, compute_grad_x)


def jet_activation_values(z: torch.Tensor, activation: str, layout: str, kernels: str) -> torch.Tensor:
    """h = activation jet of z by the elementwise rule jet_dense_activation(..., kernels) applies to its z: the
    same kernel (torch, C++) or the same statements (Triton), so a remade h equals the layer's."""
    if kernels == "triton":
        from soap_kernels.ops.jet_dense_triton import jet_activation_triton

        return jet_activation_triton(z, activation, layout)
    if kernels == "native" and native_jet_supported(z, activation):
        return activation_jet_native(z, activation, layout)
    return activation_jet_ref(z, activation, JetPlan.from_key(layout), out=torch.empty_like(z))


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, layout: str, kernels: str) -> None:
    if kernels not in KERNELS:
        raise ValueError(f"jet_dense_activation: unknown kernels {kernels!r}; expected one of {KERNELS}")
    plan = JetPlan.from_key(layout)
    if x.dim() != 3 or x.shape[0] != plan.num_slots:
        raise ValueError(f"jet_dense_activation: x has shape {tuple(x.shape)}, expected [{plan.num_slots}, N, F]")
    if weight.dim() != 2 or weight.shape[1] != x.shape[2]:
        raise ValueError(
            f"jet_dense_activation: weight shape {tuple(weight.shape)} does not match x features {x.shape[2]}"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"jet_dense_activation: bias shape {tuple(bias.shape)}, expected ({weight.shape[0]},)")


@triton_op("soap_kernels::jet_dense_activation", mutates_args=())
def jet_dense_activation(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str,
    layout: str,
    kernels: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, z): z = x W^T + b (bias on the value slot), h = activation jet of z. See the module docstring."""
    _check(x, weight, bias, layout, kernels)
    if kernels == "triton":
        from soap_kernels.ops.jet_dense_triton import jet_dense_activation_triton

        return jet_dense_activation_triton(x, weight, bias, activation, layout)
    if kernels == "native" and native_jet_supported(x, activation):
        return jet_dense_activation_native(x, weight, bias, activation, layout)
    return jet_dense_activation_ref(x, weight, bias, activation, layout)


@jet_dense_activation.register_fake
def _(x, weight, bias, activation, layout, kernels):
    shape = (x.shape[0], x.shape[1], weight.shape[0])
    return x.new_empty(shape), x.new_empty(shape)


@triton_op("soap_kernels::jet_dense_activation_backward", mutates_args=())
def jet_dense_activation_backward(
    grad_h: torch.Tensor,
    z: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    activation: str,
    layout: str,
    kernels: str,
    compute_grad_x: bool,
    value: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dL/dx, dL/dW, dL/db) of jet_dense_activation given dL/dh (dL/dx empty unless compute_grad_x).

    value: the forward's h[0] = s(z_0), optional; the C++ kernels reuse it instead of evaluating tanh/sigmoid again.
    """
    if kernels == "triton":
        from soap_kernels.ops.jet_dense_triton import jet_dense_activation_backward_triton

        return jet_dense_activation_backward_triton(grad_h, z, x, weight, activation, layout, compute_grad_x)
    if kernels == "native" and native_jet_supported(z, activation):
        return jet_dense_activation_backward_native(grad_h, z, x, weight, activation, layout, compute_grad_x, value)
    return jet_dense_activation_backward_ref(grad_h, z, x, weight, activation, layout, compute_grad_x)


@jet_dense_activation_backward.register_fake
def _(grad_h, z, x, weight, activation, layout, kernels, compute_grad_x, value=None):
    grad_x = x.new_empty(x.shape) if compute_grad_x else x.new_empty(0)
    return grad_x, weight.new_empty(weight.shape), weight.new_empty(weight.shape[0])


# Inputs at most this wide (a PINN's coordinates, d = 1 to 4) make a layer whose z the jets' recompute remakes at each
# use: its GEMM does 2 d flops per output element, about what the activation rule does.
NARROW_INPUT = 4


def _setup_context(ctx, inputs, output):
    x, weight, bias, activation, layout, kernels = inputs
    h, z = output
    ctx.mark_non_differentiable(z)
    ctx.set_materialize_grads(False)  # z never receives a gradient: don't allocate a [K, N, F] of zeros for it
    # the C++ backward reuses s(z_0) = h[0] as the tanh/sigmoid tower's base (h is alive anyway: the next layer
    # saves it as its input). h itself is saved, not the view h[0]: a view made here would hold the graph in a
    # reference cycle (pytorch/pytorch#94990) while saved outputs are not. Not while jets keep recipes: h would
    # be remade whole for its value slot (jets/recompute.py); the kernel evaluates the tower from z instead.
    reuses_value = kernels == "native" and activation in NATIVE_BASE_ACTIVATIONS and not keeping_recipes_active()
    narrow = weight.shape[1] <= NARROW_INPUT
    if remaking_layers_active() or (narrow and keeping_recipes_active()):
        # before z is saved, so the save stores the recipe (jets/recompute.py); a narrow layer's GEMM costs about
        # an elementwise pass, so its z is remade at each use rather than held (and so even with recompute=True)
        remake = functools.partial(_remade_z, activation, layout, kernels)
        attach(z, remake, x, weight, *(() if bias is None else (bias,)), cached=not narrow)
    ctx.save_for_backward(x, weight, z, h if reuses_value else None)
    ctx.options = (activation, layout, kernels, bias is not None)


def _remade_z(activation, layout, kernels, x, weight, bias=None) -> torch.Tensor:
    """A dense layer's z made again from its input and weights by the forward's own GEMMs: bitwise its z. The
    Triton kernel computes z only with h (discarded here); the C++ and torch layers compute z alone first."""
    if kernels == "triton":
        return jet_dense_activation(x, weight, bias, activation, layout, kernels)[1]
    if kernels == "native" and native_jet_supported(x, activation):
        return dense_z_native(x, weight, bias)
    return linear_jet_into(x, weight, bias)  # jet_dense_activation_ref's z


def _backward(ctx, grad_h, grad_z_unused):
    x, weight, z, h = ctx.saved_tensors
    activation, layout, kernels, has_bias = ctx.options
    if grad_h is None:
        return None, None, None, None, None, None
    grad_x, grad_weight, grad_bias = jet_dense_activation_backward(
        grad_h.contiguous(),
        z,
        x,
        weight,
        activation,
        layout,
        kernels,
        ctx.needs_input_grad[0],
        None if h is None else h[0],
    )
    return (
        grad_x if ctx.needs_input_grad[0] else None,
        grad_weight if ctx.needs_input_grad[1] else None,
        grad_bias if has_bias and ctx.needs_input_grad[2] else None,
        None,
        None,
        None,
    )


jet_dense_activation.register_autograd(_backward, setup_context=_setup_context)


@triton_op("soap_kernels::jet_linear", mutates_args=())
def jet_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """z_k = x_k W^T (+ b on the value slot) for a jet stack x [K, N, F_in]: a layer without activation, as one
    op whose output (and whose backward's dL/dx) CPU stacks take from the C++ buffer cache.

    Backward, given g = dL/dz: dL/dx = g W, dL/dW = sum_k g_k^T x_k (one GEMM over all K*N rows),
    dL/db = sum_n g_0. The networks' output layer on the "native" kernels (the others use linear_jet_ref).
    """
    if weight.dim() != 2 or x.dim() != 3 or weight.shape[1] != x.shape[2]:
        raise ValueError(
            f"jet_linear: x {tuple(x.shape)} must be a [K, N, F] stack and weight {tuple(weight.shape)} [F_out, F]"
        )
    return linear_jet_into(x, weight, bias, out=new_stack(x, (x.shape[0], x.shape[1], weight.shape[0])))


@jet_linear.register_fake
def _(x, weight, bias):
    return x.new_empty((x.shape[0], x.shape[1], weight.shape[0]))


def _setup_linear_context(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _linear_backward(ctx, grad_z):
    x, weight = ctx.saved_tensors
    needs_x, needs_weight, needs_bias = ctx.needs_input_grad
    grad_z = grad_z.contiguous()
    # out= has no autograd formula: when this backward is itself recorded (create_graph), plain matmul instead
    grad_x_out = new_stack(x, x.shape) if needs_x and not torch.is_grad_enabled() else None
    grad_x, grad_weight, grad_bias = linear_jet_backward(grad_z, x, weight, needs_x, grad_x_out)
    return (
        grad_x if needs_x else None,
        grad_weight if needs_weight else None,
        grad_bias if ctx.has_bias and needs_bias else None,
    )


jet_linear.register_autograd(_linear_backward, setup_context=_setup_linear_context)
