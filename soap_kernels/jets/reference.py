"""Torch reference of the jet rules: the specification, the CPU path and the test oracle.

A jet is a stack [K, N, F] laid out by a `JetPlan` (slot 0 the value, then derivative slots). Every
function here is plain differentiable torch, so autograd through it is a first-order backward.
"""

from __future__ import annotations

import torch

from soap_kernels.jets.activations import activation_tower
from soap_kernels.jets.plan import JetPlan


def seed_jet_ref(x: torch.Tensor, plan: JetPlan) -> torch.Tensor:
    """The jet of the input itself: value x, D_i x = e_i, every higher derivative 0. Shape [K, N, d]."""
    stack = x.new_zeros((plan.num_slots, *x.shape))
    stack[0] = x
    for axis in range(plan.num_inputs):
        if (axis,) in plan.indices:
            stack[plan.slot((axis,)), :, axis].fill_(1.0)  # a fill kernel: no host scalar copied (graph capture)
    return stack


def linear_jet_ref(stack: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """z_k = J_k W^T for every slot k, plus the bias on the value slot only (it has no derivative)."""
    z = torch.matmul(stack, weight.t())
    if bias is None:
        return z
    return torch.cat([(z[0] + bias).unsqueeze(0), z[1:]], dim=0)


def linear_jet_into(
    stack: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor | None = None
) -> torch.Tensor:
    """linear_jet_ref with the bias fused into the value slot's GEMM (addmm), into `out` (a contiguous
    [K, N, F_out] tensor) or a new tensor; not differentiable."""
    num_slots, n, f_in = stack.shape
    z = stack.new_empty((num_slots, n, weight.shape[0])) if out is None else out
    weight_t = weight.t()
    if bias is None:
        torch.mm(stack.reshape(-1, f_in), weight_t, out=z.view(-1, weight.shape[0]))
        return z
    torch.addmm(bias, stack[0], weight_t, out=z[0])
    if num_slots > 1:
        torch.mm(stack[1:].reshape(-1, f_in), weight_t, out=z[1:].view(-1, weight.shape[0]))
    return z


def weight_gradient(grad_z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """dL/dW = sum_k grad_z_k^T x_k as one GEMM over all K*N rows, [F_out, F_in].

    Oriented so the narrower operand is the transposed one: a skinny g^T x (the first layer, F_in = d)
    is several times slower on CPU BLAS than (x^T g)^T.
    """
    g2d, x2d = grad_z.reshape(-1, grad_z.shape[-1]), x.reshape(-1, x.shape[-1])
    if x2d.shape[1] < g2d.shape[1]:
        return x2d.t().mm(g2d).t().contiguous()  # [F_out, F_in] row-major, as the fake promises
    return g2d.t().mm(x2d)


def linear_jet_backward(
    grad_z: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    compute_grad_x: bool,
    grad_x_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dL/dx, dL/dW, dL/db) of z = x W^T + b (bias on the value slot) given dL/dz; dL/dx empty unless asked,
    written into grad_x_out (a contiguous tensor shaped like x) when one is given."""
    grad_weight = weight_gradient(grad_z, x)
    grad_bias = grad_z[0].sum(0)
    if not compute_grad_x:
        return x.new_empty(0), grad_weight, grad_bias
    if grad_x_out is None:
        return torch.matmul(grad_z, weight), grad_weight, grad_bias
    torch.mm(grad_z.reshape(-1, grad_z.shape[-1]), weight, out=grad_x_out.view(-1, weight.shape[1]))
    return grad_x_out, grad_weight, grad_bias


def _term_factors(tower, stack, term, weights):
    """(coef, the tensors whose product the term is) for a forward or adjoint term."""
    if weights is None:
        coef, m, factors = term
        return coef, [tower[m]] + [stack[f] for f in factors]
    coef, m, k, factors = term
    return coef, [tower[m], weights[k]] + [stack[f] for f in factors]


def _evaluate(tower, stack, terms, weights=None) -> torch.Tensor:
    """sum over terms of coef * tower[m] * (weights[k] for adjoint terms) * prod stack[factors]."""
    total = None
    for term in terms:
        coef, tensors = _term_factors(tower, stack, term, weights)
        piece = tensors[0]
        for tensor in tensors[1:]:
            piece = piece * tensor
        if coef != 1.0:
            piece = piece * coef
        total = piece if total is None else total + piece
    return total if total is not None else torch.zeros_like(stack[0])


def _evaluate_into(out: torch.Tensor, tower, stack, terms, weights=None) -> None:
    """_evaluate written into `out` in place, one pass per multiplication (addcmul fuses the last
    multiply with the accumulation); not differentiable, for the custom ops' no-grad bodies."""
    if not terms:
        out.zero_()
        return
    for index, term in enumerate(terms):
        coef, tensors = _term_factors(tower, stack, term, weights)
        if index == 0:
            if len(tensors) == 1:
                out.copy_(tensors[0])
            else:
                torch.mul(tensors[0], tensors[1], out=out)
                for tensor in tensors[2:]:
                    out.mul_(tensor)
            if coef != 1.0:
                out.mul_(coef)
            continue
        if len(tensors) == 1:
            out.add_(tensors[0], alpha=coef)
            continue
        head = tensors[0]
        for tensor in tensors[1:-1]:
            head = head * tensor
        out.addcmul_(head, tensors[-1], value=coef)


def activation_jet_ref(
    z: torch.Tensor, activation: str, plan: JetPlan, out: torch.Tensor | None = None
) -> torch.Tensor:
    """h = s(z) as a jet: D_k h = sum_terms coef * s^(m)(z_0) * prod z_factors (Faa di Bruno).

    With `out`, h is written there in place (not differentiable).
    """
    tower = activation_tower(activation, z[0], plan.max_activation_order)
    if out is None:
        return torch.stack([_evaluate(tower, z, terms) for terms in plan.activation_terms])
    for k, terms in enumerate(plan.activation_terms):
        _evaluate_into(out[k], tower, z, terms)
    return out


def activation_jet_adjoint_ref(
    grad_h: torch.Tensor, z: torch.Tensor, activation: str, plan: JetPlan, out: torch.Tensor | None = None
) -> torch.Tensor:
    """grad_z = (dh/dz)^T grad_h for h = activation_jet_ref(z): the backward's activation-adjoint rule.

    With `out`, grad_z is written there in place (not differentiable).
    """
    tower = activation_tower(activation, z[0], plan.max_activation_order + 1)
    if out is None:
        return torch.stack([_evaluate(tower, z, terms, grad_h) for terms in plan.activation_adjoint_terms])
    for j, terms in enumerate(plan.activation_adjoint_terms):
        _evaluate_into(out[j], tower, z, terms, grad_h)
    return out


def product_jet_ref(x: torch.Tensor, y: torch.Tensor, plan: JetPlan) -> torch.Tensor:
    """The jet of the elementwise product x * y (Leibniz rule)."""
    # one unbind per operand, not an indexing per use: each x[a]'s backward would allocate a zero [K, N, F]
    # stack to put its slot gradient in (select_backward), here once per term
    x_slots, y_slots = x.unbind(0), y.unbind(0)
    slots = []
    for terms in plan.product_terms:
        total = None
        for coef, a, b in terms:
            piece = x_slots[a] * y_slots[b]
            if coef != 1.0:
                piece = piece * coef
            total = piece if total is None else total + piece
        slots.append(total)
    return torch.stack(slots)
