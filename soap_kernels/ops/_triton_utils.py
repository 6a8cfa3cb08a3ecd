"""Shared helpers of the Triton ops (factor_update, rotated_adam, the jet layers): where Triton runs, the device
guard of a launch, exact float64 scalars, IEEE sqrt/division, block sizes and the float64 tl.dot probe.

Scalars: Triton passes Python floats to kernels as float32. A float64 hyper-parameter (beta, eps, ...) is
therefore passed as three float32 parts hi + mid + lo whose sum, formed in float64 inside the kernel, is the
float64 value exactly (split_scalar checks this), so float64 state is computed in float64 end to end. For
float32 state the kernel uses hi = float32(value), which is what a torch float32 op does with a Python scalar.
"""

from __future__ import annotations

import contextlib
import functools
import struct
import warnings

import torch
from torch.utils._python_dispatch import _disable_current_modes

from soap_kernels._backend import triton_available, triton_interpreted

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # a torch build without Triton: the ops fall back to nothing (triton_runs_on is False)
    triton = None
    tl = None
    HAS_TRITON = False

SUPPORTED_DTYPES = (torch.float32, torch.float64)


def jit(fn):
    """triton.jit when Triton is installed; else the plain function (never launched: see triton_runs_on)."""
    return triton.jit(fn) if HAS_TRITON else fn


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def triton_runs_on(device: torch.device) -> bool:
    """True when the Triton kernels can run on tensors of `device`: CUDA, or CPU under TRITON_INTERPRET=1."""
    device = torch.device(device)
    if not (HAS_TRITON and triton_available()):
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and triton_interpreted()


def on_device_of(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """Context to launch a Triton kernel on `tensor`'s device: torch.cuda.device(tensor.device) for a CUDA tensor.

    A Triton launch goes to the *current* CUDA device and its current stream, not to its arguments' device, so
    without this a stack on cuda:1 while cuda:0 is current would run on the wrong GPU. A null context otherwise
    (CPU tensors under TRITON_INTERPRET=1).
    """
    if tensor.device.type == "cuda":
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()


def _f32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


def split_scalar(name: str, value: float) -> tuple[float, float, float]:
    """(hi, mid, lo), each exactly representable in float32, with hi + mid + lo == value exactly in float64.

    Raises ValueError naming the value when no such split exists (not finite, beyond float32 range, or so
    small that its parts would be float32 subnormals).
    """
    value = float(value)
    if value != value or abs(value) == float("inf") or abs(value) > 3.0e38:
        raise ValueError(f"{name}={value!r} must be finite and within float32 range for the Triton kernels")
    try:
        hi = _f32(value)
        mid = _f32(value - hi)
        lo = _f32(value - hi - mid)
    except OverflowError as exc:  # pragma: no cover - guarded above
        raise ValueError(f"{name}={value!r} is out of float32 range") from exc
    if (hi + mid) + lo != value:
        raise ValueError(f"{name}={value!r} cannot be passed exactly to the Triton kernels (float32 parts underflow)")
    return hi, mid, lo


def check_dtype(op: str, name: str, tensor: torch.Tensor) -> None:
    if tensor.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{op}: {name} has dtype {tensor.dtype}; the Triton kernels support float32 and float64")


def dot_precision(dtype: torch.dtype, allow_tf32: bool) -> str:
    """tl.dot input precision: "tf32" only when asked for and the data is float32, else exact "ieee"."""
    return "tf32" if (allow_tf32 and dtype == torch.float32) else "ieee"


def gemm_blocks(dtype: torch.dtype, device: torch.device) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps) of the batched small-GEMM kernels.

    Under the interpreter 32 x 64 x 64 (numpy per tile: few programs and loop trips is fast). On a GPU 64 x 64 x 32 for
    float32 and 32 x 32 x 16 for float64 (not tuned on hardware yet).
    """
    if torch.device(device).type != "cuda":
        return 32, 64, 64, 4
    if dtype == torch.float64:
        return 32, 32, 16, 4
    return 64, 64, 32, 4


if HAS_TRITON:

    @triton.jit
    def scalar3(hi, mid, lo, IS_FP64: tl.constexpr):
        """The kernel scalar hi + mid + lo: float64 (exact) when IS_FP64, else float32 hi."""
        if IS_FP64:
            return tl.cast(hi, tl.float64) + tl.cast(mid, tl.float64) + tl.cast(lo, tl.float64)
        else:
            return hi

    @triton.jit
    def sqrt_ieee(x, IS_FP64: tl.constexpr):
        """Correctly rounded sqrt(x) (float64 sqrt is IEEE; float32 needs sqrt_rn, tl.sqrt is approximate)."""
        if IS_FP64:
            return tl.sqrt(x)
        else:
            return tl.sqrt_rn(x)

    @triton.jit
    def div_ieee(a, b, IS_FP64: tl.constexpr):
        """Correctly rounded a / b (float32 '/' on a GPU is approximate, div_rn is IEEE)."""
        if IS_FP64:
            return a / b
        else:
            return tl.div_rn(a, b)

    @triton.jit
    def _fp64_dot_probe_kernel(a_ptr, b_ptr, c_ptr):
        """C = A B for 16 x 16 float64 tiles (checks that this Triton build lowers a float64 tl.dot)."""
        idx = tl.arange(0, 16)
        offs = idx[:, None] * 16 + idx[None, :]
        c = tl.dot(tl.load(a_ptr + offs), tl.load(b_ptr + offs), input_precision="ieee")
        tl.store(c_ptr + offs, c)


def _fp64_probe_operands() -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic 16 x 16 float64 integer matrices whose product float64 holds exactly, float32 cannot.

    Entries are 2^24 + (0..255): odd ones are not float32 numbers (and TF32 keeps far fewer bits), while every
    product (< 2^49) and every sum of 16 of them (< 2^53) is an integer float64 represents exactly, so a float64
    tl.dot must reproduce the int64 product bit for bit in any summation order.
    """
    index = torch.arange(256, dtype=torch.int64)
    a = (2**24 + (index * 37 + 11) % 256).reshape(16, 16)
    b = (2**24 + (index * 101 + 7) % 256).reshape(16, 16)
    return a, b


@functools.cache
def _fp64_dot_supported(device_type: str, index: int | None) -> bool:
    if device_type != "cuda":
        return True  # the interpreter runs float64 tl.dot in numpy
    device = torch.device(device_type, index)
    with torch.cuda.device(device):
        if torch.cuda.is_current_stream_capturing():
            # the probe reads its result on the host, which capture forbids; not cached, so the eager step probes
            raise RuntimeError(
                f"soap_kernels: the first float64 Triton op on {device} must run eagerly (it checks once whether "
                "this Triton lowers a float64 tl.dot, a host synchronisation); run one eager step before "
                "capturing a CUDA graph"
            )
    a_int, b_int = _fp64_probe_operands()
    expected = (a_int @ b_int).to(torch.float64)  # exact: integers below 2^53
    # real tensors even when first asked while tracing (fake / functional modes are switched off meanwhile);
    # no torch.randn, so the probe does not advance the user's CUDA generator
    with _disable_current_modes(), torch.no_grad():
        a = a_int.to(device=device, dtype=torch.float64)
        b = b_int.to(device=device, dtype=torch.float64)
        c = torch.empty_like(a)
        try:
            with on_device_of(a):
                _fp64_dot_probe_kernel[(1,)](a, b, c)
            good = torch.equal(c.cpu(), expected)  # one host sync, once per device
            reason = "its result differs from the exact product"
        except Exception as exc:  # noqa: BLE001 - any compile/launch failure means "not supported here"
            good, reason = False, f"{type(exc).__name__}: {exc}"
    if not good:
        warnings.warn(
            f"soap_kernels: Triton {triton.__version__} cannot run a float64 tl.dot on {device} ({reason}); "
            "float64 SOAP ops and jets on this device use the torch reference",
            RuntimeWarning,
            stacklevel=3,
        )
    return good


def fp64_dot_supported(device: torch.device) -> bool:
    """Whether float64 tl.dot compiles and is exact on `device` (probed once per device, with a warning if not).

    The probe synchronises with the host, so the first ask for a CUDA device must not happen while a CUDA graph
    is being captured: then it raises RuntimeError (run one eager step first) rather than guess an answer that
    would be cached for the device.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return _fp64_dot_supported(device.type, device.index)


def use_triton(tensor: torch.Tensor) -> bool:
    """Run the Triton kernel for this state tensor (else the torch reference).

    True on CUDA and, under TRITON_INTERPRET=1, on CPU; float64 on a GPU only when float64 tl.dot works there.
    """
    if not triton_runs_on(tensor.device):
        return False
    if tensor.dtype == torch.float64 and tensor.device.type == "cuda":
        return fp64_dot_supported(tensor.device)
    return True
