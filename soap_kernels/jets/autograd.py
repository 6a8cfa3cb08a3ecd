"""Nested reverse-mode autograd: the fallback for models the jets do not understand, and a test oracle.

D_{a_1..a_r} u_o is the a_r-th column of grad_x sum_n D_{a_1..a_{r-1}} u_o, each level built with
create_graph=True so parameters (and x) stay differentiable. Summing over points is exact only for
pointwise models (each row of u depends on the same row of x alone), which PINN networks are.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from soap_kernels.jets.plan import normalise_derivative


def jet_autograd(
    model: torch.nn.Module,
    x: torch.Tensor,
    derivatives: Iterable[Sequence[int]] = (),
    laplacian_axes: Iterable[int] | None = None,
) -> dict:
    """Same result layout as `soap_kernels.jet`, computed by nested autograd."""
    derivatives = list(derivatives)
    d = x.shape[1]
    indices = [normalise_derivative(request, d) for request in derivatives]
    lap = None if laplacian_axes is None else sorted({normalise_derivative((a,), d)[0] for a in laplacian_axes})
    inputs = x if x.requires_grad else x.detach().requires_grad_(True)
    u = model(inputs)
    # gradients[(prefix, o)] = grad_x of sum_n D_prefix u_o, all columns at once
    gradients: dict[tuple[tuple[int, ...], int], torch.Tensor] = {}

    def partial(index: tuple[int, ...], o: int) -> torch.Tensor:
        return _partial(u, inputs, gradients, index, o)

    result: dict = {(): u}
    for request, index in zip(derivatives, indices, strict=True):
        result[tuple(request)] = torch.stack([partial(index, o) for o in range(u.shape[1])], dim=1)
    if lap is not None:
        result["laplacian"] = sum(
            torch.stack([partial((a, a), o) for o in range(u.shape[1])], dim=1) for a in lap
        )
    return result


def _partial(
    u: torch.Tensor,
    inputs: torch.Tensor,
    gradients: dict[tuple[tuple[int, ...], int], torch.Tensor],
    index: tuple[int, ...],
    o: int,
) -> torch.Tensor:
    """D_index u_o, memoising the input gradients in `gradients`. A module-level function, not a closure that
    calls itself: such a closure is a reference cycle holding u, x and every create_graph gradient, which only
    the cyclic GC frees, so a training loop grew by up to 1 GB per step before it ran."""
    if not index:
        return u[:, o]
    prefix = index[:-1]
    if (prefix, o) not in gradients:
        (grad,) = torch.autograd.grad(_partial(u, inputs, gradients, prefix, o).sum(), inputs, create_graph=True)
        gradients[(prefix, o)] = grad
    return gradients[(prefix, o)][:, index[-1]]
