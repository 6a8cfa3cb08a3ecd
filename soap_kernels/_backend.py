"""One place that decides which implementation runs an op: "cuda" (C++/CUDA kernels), "triton" or "torch".

SOAP_KERNELS_BACKEND=torch|triton|cuda forces one; asking for one that cannot run here is an error, never a
silent fallback. "auto" picks the fastest available for the tensors' device.
"""

from __future__ import annotations

import functools
import os

import torch

from soap_kernels._native import has_native_cpu, has_native_cuda

BACKENDS = ("auto", "torch", "triton", "cuda")


@functools.cache
def triton_available() -> bool:
    """True when Triton imports and can run here (a CUDA GPU, or the interpreter TRITON_INTERPRET=1)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() or triton_interpreted()


def triton_interpreted() -> bool:
    """True under TRITON_INTERPRET=1, where Triton kernels run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def requested_backend(backend: str = "auto") -> str:
    """The backend asked for: the environment variable wins over the argument."""
    chosen = os.environ.get("SOAP_KERNELS_BACKEND", "").strip().lower() or backend
    if chosen not in BACKENDS:
        raise ValueError(f"unknown soap_kernels backend {chosen!r}; expected one of {BACKENDS}")
    return chosen


def resolve_backend(device: torch.device, backend: str = "auto") -> str:
    """The backend that will run ops on `device`; raises RuntimeError if a forced one cannot run there."""
    chosen = requested_backend(backend)
    device = torch.device(device)
    if chosen == "auto":
        return "torch"  # refined per op: the optimizer and jets pick native kernels where they exist
    if chosen == "triton" and not (triton_available() and (device.type == "cuda" or triton_interpreted())):
        raise RuntimeError(
            f"soap_kernels backend 'triton' cannot run on {device}: it needs Triton and a CUDA device, "
            "or TRITON_INTERPRET=1 for CPU tensors"
        )
    if chosen == "cuda":
        if device.type != "cuda":
            raise RuntimeError(f"soap_kernels backend 'cuda' cannot run on {device}: it needs CUDA tensors")
        if not has_native_cuda():
            raise RuntimeError("soap_kernels backend 'cuda' needs soap_kernels._C built with CUDA")
    return chosen


def native_kernels_for(device: torch.device) -> bool:
    """True when the C++ (CPU) or CUDA C++ kernels are registered for `device`'s type."""
    device = torch.device(device)
    if device.type == "cuda":
        return has_native_cuda()
    if device.type == "cpu":
        return has_native_cpu()
    return False
