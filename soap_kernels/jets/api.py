"""`jet(model, x, derivatives)`: a network's values with its input derivatives, in forward mode."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Sequence

import torch

from soap_kernels._backend import requested_backend, triton_available, triton_interpreted
from soap_kernels._native import has_native_cpu
from soap_kernels.jets.autograd import jet_autograd
from soap_kernels.jets.jet import Jet
from soap_kernels.jets.module import JetModule
from soap_kernels.jets.plan import JetPlan
from soap_kernels.jets.recompute import forget, keeping_recipes

_WARNED_FALLBACK: set[str] = set()


def _layer_kernels(x: torch.Tensor, backend: str) -> str:
    """Which kernels the fused layers run: "auto" takes Triton on float32/float64 CUDA tensors (float64 where this
    Triton lowers a float64 tl.dot, probed once per device) and the C++ kernels on CPU tensors when they are
    built, else the torch reference ("torch")."""
    chosen = requested_backend(backend)
    if chosen == "auto":
        if x.is_cuda and triton_available() and x.dtype in (torch.float32, torch.float64):
            from soap_kernels.ops._triton_utils import fp64_dot_supported  # imports Triton

            return "triton" if x.dtype == torch.float32 or fp64_dot_supported(x.device) else "torch"
        return "native" if x.device.type == "cpu" and has_native_cpu() else "torch"
    if chosen == "torch":
        return "torch"
    if chosen == "triton":
        if not (triton_available() and (x.is_cuda or triton_interpreted())):
            raise RuntimeError(
                f"jet backend 'triton' cannot run on {x.device}: it needs Triton and a CUDA tensor, "
                "or TRITON_INTERPRET=1 with CPU tensors"
            )
        return "triton"
    raise NotImplementedError("jets have no CUDA C++ kernels; use backend 'triton' or 'torch' for jet()")


def _check_input(model: torch.nn.Module, x: object) -> None:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape [N, d], got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D [N, d], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    parameter = next(iter(model.parameters()), None)
    if parameter is not None and (parameter.dtype != x.dtype or parameter.device != x.device):
        raise TypeError(
            f"x is {x.dtype} on {x.device} but the model's parameters are {parameter.dtype} on {parameter.device}"
        )
    in_features = getattr(model, "in_features", None)
    if isinstance(in_features, int) and x.shape[1] != in_features:
        raise ValueError(f"x has {x.shape[1]} features but the model expects in_features={in_features}")


def jet(
    model: torch.nn.Module,
    x: torch.Tensor,
    derivatives: Iterable[Sequence[int]] = (),
    *,
    laplacian_axes: Iterable[int] | None = None,
    backend: str = "auto",
    recompute: bool | str = False,
) -> dict:
    """u and its input derivatives at the points x [N, d], each [N, out_features].

    Returns {(): u, request: D_request u for each request in derivatives}, plus "laplacian" ->
    sum_{i in laplacian_axes} d^2u/dx_i^2 when laplacian_axes is given (propagated as one collapsed slot,
    cheaper than separate second derivatives). A request is a tuple of input axes of order 1 to 4, e.g.
    (i,), (i, j), (1, 1, 1) for u_xxx, (0, 1, 1) for u_txx (mixed orders allowed). soap_kernels.nn networks
    are propagated in forward mode; any other model falls back to nested autograd with a one-time warning.
    Gradients with respect to parameters (and x when it requires grad) need only a first-order backward.
    backend: "auto" (Triton on CUDA tensors, the C++ kernels on CPU tensors), "torch" or "triton";
    SOAP_KERNELS_BACKEND wins.
    recompute (soap_kernels.nn networks; jets/recompute.py): False keeps every stack the backward needs. True
    keeps only the dense layers' z (but for layers on the coordinates) and the stacks several uses share, and
    remakes the others from them in the backward (elementwise passes again, no wide GEMM). "all" also remakes
    each dense layer's z, by running the layer again (one more forward GEMM per layer, each once per backward),
    so between stacks that several uses share (PirateNet's block outputs and gates) only the block being
    differentiated is in memory; a plain MLP, whose layers form one chain, gets nothing back for the GEMMs.
    Estimated peaks on the CUDA path: bench/results/residual-memory-estimate-* (README).
    With recompute the backward cannot be recorded (create_graph); eager only; saved-tensor hooks of the caller
    do not apply inside jet().
    """
    _check_input(model, x)
    if not (isinstance(recompute, bool) or (isinstance(recompute, str) and recompute == "all")):
        raise TypeError(f'recompute must be True, False or "all", got {recompute!r}')
    if isinstance(derivatives, tuple) and derivatives and all(isinstance(a, int) for a in derivatives):
        raise TypeError(f"derivatives={derivatives!r} must be a list of index tuples, e.g. [{derivatives!r}]")
    if not isinstance(derivatives, list | tuple):
        raise TypeError(f"derivatives must be a list of index tuples such as [(0,), (1, 1)], got {derivatives!r}")
    derivatives = list(derivatives)
    plan = JetPlan.build(x.shape[1], derivatives, laplacian_axes)
    if not isinstance(model, JetModule):
        name = type(model).__qualname__
        if name not in _WARNED_FALLBACK:
            _WARNED_FALLBACK.add(name)
            warnings.warn(
                f"soap_kernels.jet: {name} is not a soap_kernels.nn network; falling back to nested autograd "
                "(slower, and its backward is a double backward)",
                RuntimeWarning,
                stacklevel=2,
            )
        return jet_autograd(model, x, derivatives, laplacian_axes)
    if recompute and torch.compiler.is_compiling():
        raise ValueError(f"jet(..., recompute={recompute!r}) runs eagerly only, not under torch.compile")
    seed = Jet.seed(x, plan, _layer_kernels(x, backend), bool(recompute))
    with keeping_recipes(layers=recompute == "all") if recompute else contextlib.nullcontext():
        output = model.forward_jet(seed).stack
    forget(output)  # a network ending in an elementwise rule: its recipe would hold its sources for the caller
    result: dict = {(): output[0]}
    for request in derivatives:
        result[tuple(request)] = output[plan.slot(tuple(request))]
    if plan.laplacian_slot is not None:
        result["laplacian"] = output[plan.laplacian_slot]
    return result
