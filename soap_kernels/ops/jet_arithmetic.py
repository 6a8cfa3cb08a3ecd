"""Slot-wise jet arithmetic on the C++ path: x + alpha y and x * factor, with outputs from the CPU buffer cache.

A jet's sum and its product with a constant act on every slot alike, so they are the tensor operations
themselves; PirateNet's blocks run several per block on [K, N, F] stacks (v + gate, u - v, alpha h +
(1 - alpha) x). As plain torch ops their results, and their backward's, are fresh allocations that page-fault
in every step (about 21,000 faults a step for PirateNet 3x256 at N = 4096); as these ops they take cached memory.

    jet_add(x, y, alpha) = x + alpha y        backward: (g, alpha g)
    jet_scale(x, factor) = factor x           backward: (factor g, <g, x> summed to factor's shape)

factor is a tensor of one element (a trainable mixing weight, say). Jet uses these on the "native" kernels;
elsewhere the torch operators do the same arithmetic.
"""

from __future__ import annotations

import torch
from torch.library import triton_op

from soap_kernels.ops.jet_dense_native import new_stack


@triton_op("soap_kernels::jet_add", mutates_args=())
def jet_add(x: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    """x + alpha y for two stacks of one shape and dtype."""
    if x.shape != y.shape or x.dtype != y.dtype:
        raise ValueError(f"jet_add: stacks {tuple(x.shape)} {x.dtype} and {tuple(y.shape)} {y.dtype} differ")
    return torch.add(x.contiguous(), y.contiguous(), alpha=alpha, out=new_stack(x, x.shape))


@jet_add.register_fake
def _(x, y, alpha):
    return x.new_empty(x.shape)  # contiguous, as the kernel's output


def _setup_add(ctx, inputs, output):
    ctx.alpha = inputs[2]


def _add_backward(ctx, grad):
    if ctx.alpha == 1.0:
        return grad, grad, None
    return grad, _scaled(grad, ctx.alpha), None


jet_add.register_autograd(_add_backward, setup_context=_setup_add)


@triton_op("soap_kernels::jet_scale", mutates_args=())
def jet_scale(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor x for a stack x and a one-element tensor factor."""
    if factor.numel() != 1:
        raise ValueError(f"jet_scale: factor must have one element, got shape {tuple(factor.shape)}")
    return torch.mul(x.contiguous(), factor.reshape(()).to(x.dtype), out=new_stack(x, x.shape))


@jet_scale.register_fake
def _(x, factor):
    return x.new_empty(x.shape)


def _setup_scale(ctx, inputs, output):
    x, factor = inputs
    ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, factor)


def _scale_backward(ctx, grad):
    x, factor = ctx.saved_tensors
    grad_x = _scaled(grad, factor.reshape(()).to(grad.dtype)) if ctx.needs_input_grad[0] else None
    grad_factor = None
    if ctx.needs_input_grad[1]:
        grad_factor = torch.dot(grad.reshape(-1), x.reshape(-1)).to(factor.dtype).reshape(factor.shape)
    return grad_x, grad_factor


def _scaled(grad: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """factor * grad, into cached memory unless this backward is itself recorded (create_graph: out= has no
    autograd formula)."""
    if torch.is_grad_enabled():
        return grad * factor
    grad = grad.contiguous()
    return torch.mul(grad, factor, out=new_stack(grad, grad.shape))


jet_scale.register_autograd(_scale_backward, setup_context=_setup_scale)
