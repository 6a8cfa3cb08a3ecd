"""The one place where the trainer evaluates a network with its input derivatives.

evaluate(model, x, derivatives) returns {(): u, (i,): du/dx_i, (i, j): d2u/dx_i dx_j, ...}, each [N, out],
exactly the contract of soap_kernels.jet (DESIGN.md section 5). When soap_kernels.jet is importable it
is used; otherwise the same dict is computed by nested reverse-mode autograd (create_graph=True), with a
one-time warning, and `backend_name()` says which path runs (recorded in each run's run_info.json).
method="autograd" forces nested autograd (the baseline the jets are measured against).
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Sequence

import torch

__all__ = ["evaluate", "backend_name", "nested_autograd"]

_JET = None
_CHECKED = False


def _find_jet():
    """soap_kernels.jet if its module exists, else None (checked once)."""
    global _JET, _CHECKED
    if not _CHECKED:
        _CHECKED = True
        try:
            _JET = importlib.import_module("soap_kernels.jets").jet
        except (ImportError, AttributeError):
            _JET = None
            warnings.warn(
                "soap_kernels.jet is not available in this build: soap_pinn computes input derivatives "
                "by nested torch.autograd instead (same values, slower)",
                RuntimeWarning,
                stacklevel=3,
            )
    return _JET


METHODS = ("jet", "autograd")


def backend_name(method: str = "jet") -> str:
    """Which path `evaluate(..., method)` takes: 'soap_kernels.jet', 'nested autograd' or '... (fallback)'."""
    if method == "autograd":
        return "nested autograd"
    return "soap_kernels.jet" if _find_jet() is not None else "nested autograd (fallback: no soap_kernels.jet)"


def nested_autograd(model: torch.nn.Module, x: torch.Tensor, derivatives: Sequence[tuple[int, ...]]):
    """The jet dict by nested reverse mode: each derivative is the gradient of its prefix, per output.

    Prefixes are shared (u_x is computed once for u_xx and u_xxx). The graph is kept (create_graph) so
    the result can be differentiated with respect to the parameters.
    """
    x = x.detach().requires_grad_(True)
    u = model(x)
    out = {(): u}
    # prefixes shortest first, in a plain loop: a memoising closure that calls itself would be a reference cycle
    # holding every create_graph gradient until the cyclic GC runs (memory grew by up to 1 GB per step)
    for index in derivatives:
        index = tuple(index)
        for depth in range(1, len(index) + 1):
            if index[:depth] in out:
                continue
            parent = out[index[: depth - 1]]
            columns = []
            for k in range(parent.shape[1]):
                (grad,) = torch.autograd.grad(parent[:, k].sum(), x, create_graph=True)
                columns.append(grad[:, index[depth - 1]])
            out[index[:depth]] = torch.stack(columns, dim=1)
    return {key: value for key, value in out.items() if key == () or key in {tuple(d) for d in derivatives}}


def evaluate(model: torch.nn.Module, x: torch.Tensor, derivatives: Sequence[tuple[int, ...]], method: str = "jet"):
    """u and the requested input derivatives of model at the points x [N, d] (see module docstring)."""
    if method not in METHODS:
        raise ValueError(f"unknown derivative method {method!r}; choose from {', '.join(METHODS)}")
    if method == "autograd":
        return nested_autograd(model, x, derivatives)
    jet = _find_jet()
    if jet is not None:
        return jet(model, x, list(derivatives))
    return nested_autograd(model, x, derivatives)
