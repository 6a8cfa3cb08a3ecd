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
            stack[plan.slot((axis,)), :, axis] = 1.0
    return stack


def linear_jet_ref(stack: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """z_k = J_k W^T for every slot k, plus the bias on the value slot only (it has no derivative)."""
    z = torch.matmul(stack, weight.t())
    if bias is None:
        return z
    return torch.cat([(z[0] + bias).unsqueeze(0), z[1:]], dim=0)


def _evaluate(tower: list[torch.Tensor], stack: torch.Tensor, terms, weights=None) -> torch.Tensor:
    """sum over terms of coef * tower[m] * (weights[k] if given) * prod stack[factors]."""
    total = None
    for term in terms:
        if weights is None:
            coef, m, factors = term
            piece = tower[m]
        else:
            coef, m, k, factors = term
            piece = tower[m] * weights[k]
        for f in factors:
            piece = piece * stack[f]
        if coef != 1.0:
            piece = piece * coef
        total = piece if total is None else total + piece
    return total if total is not None else torch.zeros_like(stack[0])


def activation_jet_ref(z: torch.Tensor, activation: str, plan: JetPlan) -> torch.Tensor:
    """h = s(z) as a jet: D_k h = sum_terms coef * s^(m)(z_0) * prod z_factors (Faa di Bruno)."""
    tower = activation_tower(activation, z[0], plan.max_activation_order)
    return torch.stack([_evaluate(tower, z, terms) for terms in plan.activation_terms])


def activation_jet_adjoint_ref(
    grad_h: torch.Tensor, z: torch.Tensor, activation: str, plan: JetPlan
) -> torch.Tensor:
    """grad_z = (dh/dz)^T grad_h for h = activation_jet_ref(z): the backward's activation-adjoint rule."""
    tower = activation_tower(activation, z[0], plan.max_activation_order + 1)
    return torch.stack([_evaluate(tower, z, terms, grad_h) for terms in plan.activation_adjoint_terms])


def product_jet_ref(x: torch.Tensor, y: torch.Tensor, plan: JetPlan) -> torch.Tensor:
    """The jet of the elementwise product x * y (Leibniz rule)."""
    slots = []
    for terms in plan.product_terms:
        total = None
        for coef, a, b in terms:
            piece = x[a] * y[b]
            if coef != 1.0:
                piece = piece * coef
            total = piece if total is None else total + piece
        slots.append(total)
    return torch.stack(slots)
