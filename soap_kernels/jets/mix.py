"""mix(x, h, alpha) = x + alpha (h - x) for two stacks and a trainable scalar (PirateNet's residual mix
alpha h + (1 - alpha) x), with a lean backward.

Forward: one torch.lerp pass. Backward, for the incoming gradient g:

    dL/dh = alpha g,    dL/dx = g - alpha g,    dL/dalpha = <g, h> - <g, x>

two elementwise passes that write the gradients and two reductions that write nothing. torch.lerp's own backward
forms g (1 - alpha), g alpha, h - x and g (h - x): four full stacks alive at once, one more than here (the
backward's peak of a recompute="all" PirateNet rose by that stack, bench/residual_memory.py). The backward is
built of torch ops, so it can itself be differentiated.
"""

from __future__ import annotations

import torch


class _Mix(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, h: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        weight = alpha.to(x.dtype)  # lerp takes its weight in the stacks' dtype (a float32 alpha, float64 stacks)
        # x and h only for dL/dalpha: a frozen alpha keeps no stack alive
        ctx.save_for_backward(weight, *((x, h) if ctx.needs_input_grad[2] else ()))
        ctx.alpha_dtype = alpha.dtype
        return torch.lerp(x, h, weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight, *stacks = ctx.saved_tensors
        needs_x, needs_h, needs_alpha = ctx.needs_input_grad
        grad_x = grad_h = grad_alpha = None
        if needs_x or needs_h:
            scaled = grad * weight
            grad_h = scaled if needs_h else None
            grad_x = grad - scaled if needs_x else None
        if needs_alpha:
            x, h = stacks
            flat = grad.reshape(-1)
            grad_alpha = torch.dot(flat, h.reshape(-1)) - torch.dot(flat, x.reshape(-1))
            grad_alpha = grad_alpha.reshape(weight.shape).to(ctx.alpha_dtype)
        return grad_x, grad_h, grad_alpha


def mix(x: torch.Tensor, h: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """x + alpha (h - x) for same-shape x and h and a one-element alpha (used in their dtype; its gradient comes
    back in its own). See the module docstring."""
    if x.shape != h.shape or alpha.numel() != 1:
        raise ValueError(
            f"mix: x {tuple(x.shape)} and h {tuple(h.shape)} must have one shape and alpha one element, "
            f"got alpha of shape {tuple(alpha.shape)}"
        )
    return _Mix.apply(x, h, alpha)
