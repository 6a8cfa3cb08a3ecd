"""soap_kernels::adam_moments_: the rotated-Adam moment update, in place.

    m <- beta1 m + (1 - beta1) g~          (only where `enabled`)
    v <- beta2 v + (1 - beta2) g~^2        (only where `enabled`)
    returns d = m / (sqrt(v) + eps)

g~ is the gradient rotated into the eigenbasis of SOAP's Kronecker factors. `enabled` is a one-element
bool tensor on the same device, so a step skipped for a non-finite gradient is decided on the device.
Implementations: adam_moments_ref (torch, the specification), the C++ CPU and CUDA kernels in csrc/.
"""

from __future__ import annotations

import torch

from soap_kernels._backend import native_kernels_for

_OP_NAME = "soap_kernels::adam_moments_"


def adam_moments_ref(
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    grad: torch.Tensor,
    enabled: torch.Tensor,
    beta1: float,
    beta2: float,
    eps: float,
) -> torch.Tensor:
    """Torch reference of adam_moments_ (mutates exp_avg and exp_avg_sq, returns the direction)."""
    new_avg = exp_avg * beta1 + (1.0 - beta1) * grad
    new_avg_sq = exp_avg_sq * beta2 + (1.0 - beta2) * grad * grad
    exp_avg.copy_(torch.where(enabled, new_avg, exp_avg))
    exp_avg_sq.copy_(torch.where(enabled, new_avg_sq, exp_avg_sq))
    return exp_avg / (exp_avg_sq.sqrt() + eps)


def adam_moments_(
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    grad: torch.Tensor,
    enabled: torch.Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    use_native: bool | None = None,
) -> torch.Tensor:
    """Run adam_moments_ with the native kernel when it exists for the tensors' device, else the reference.

    use_native=True forces the native kernel (RuntimeError if absent), False the torch reference.
    """
    if use_native is None:
        use_native = native_kernels_for(exp_avg.device)
    if use_native:
        if not native_kernels_for(exp_avg.device):
            raise RuntimeError(f"soap_kernels: no native adam_moments_ kernel for device {exp_avg.device}")
        return torch.ops.soap_kernels.adam_moments_(exp_avg, exp_avg_sq, grad, enabled, beta1, beta2, eps)
    return adam_moments_ref(exp_avg, exp_avg_sq, grad, enabled, beta1, beta2, eps)


def _register_fake() -> None:
    """The meta kernel (shapes only) so the op works under torch.compile and FakeTensor tracing."""
    if not native_kernels_for(torch.device("cpu")):
        return

    @torch.library.register_fake(_OP_NAME)
    def _(exp_avg, exp_avg_sq, grad, enabled, beta1, beta2, eps):
        return torch.empty_like(exp_avg)


_register_fake()
