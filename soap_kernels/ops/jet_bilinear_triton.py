"""The CUDA kernel of soap_kernels::jet_bilinear, in Triton: out[s] = sum over terms (s, i, j) of coef a[i] b[j].

The op (schema in csrc/registration.cpp, CPU kernel csrc/cpu/jet_bilinear.cpp) is the Leibniz product of two
jets and both halves of its backward (ops/jet_product.py builds the term programs and registers the autograd
formula). On CUDA the torch reference launches one elementwise kernel per multiplication and addition (about 20
for a four-slot layout); this kernel computes every output slot of a block of elements in one launch, reading each
input slot once. The term program is compiled into the source (ops/jet_triton_codegen.py's way), one kernel per
(program, dtype). Registered as the op's CUDA kernel when soap_kernels._C (which defines the op) and Triton are
both here; `jet_bilinear_triton` itself also runs CPU tensors under TRITON_INTERPRET=1 (the tests).
"""

from __future__ import annotations

import functools

import torch

from soap_kernels._native import has_native_cpu
from soap_kernels.ops._triton_utils import HAS_TRITON, cdiv, on_device_of
from soap_kernels.ops.jet_triton_codegen import float_literal, load_generated

_DTYPES = {torch.float32: "tl.float32", torch.float64: "tl.float64"}
_BLOCK = 1024  # elements of every slot per program


@functools.cache
def _kernel(terms: tuple[int, ...], coefs: tuple[float, ...], num_slots: int, dtype: str):
    """The generated kernel for one term program (triples (s, i, j) with their coefficients) and dtype."""
    triples = [(terms[3 * t], terms[3 * t + 1], terms[3 * t + 2], coef) for t, coef in enumerate(coefs)]
    a_slots = sorted({i for _, i, _, _ in triples})
    b_slots = sorted({j for _, _, j, _ in triples})
    lines = [f"a{i} = tl.load(a_ptr + {i} * slot + offs, mask=mask).to({dtype})" for i in a_slots]
    lines += [f"b{j} = tl.load(b_ptr + {j} * slot + offs, mask=mask).to({dtype})" for j in b_slots]
    for s in range(num_slots):
        pieces = [
            f"a{i} * b{j}" if coef == 1.0 else f"{float_literal(coef, dtype)} * a{i} * b{j}"
            for out, i, j, coef in triples
            if out == s
        ]
        value = " + ".join(pieces) if pieces else f"tl.zeros([BLOCK], {dtype})"
        lines.append(f"tl.store(out_ptr + {s} * slot + offs, {value}, mask=mask)")
    body = "\n".join("    " + line for line in lines)
    source = f'''
import triton
import triton.language as tl


@triton.jit
def _jet_bilinear_kernel(a_ptr, b_ptr, out_ptr, SLOT, BLOCK: tl.constexpr):
    """out[s] = sum coef * a[i] * b[j] over a block of every slot (program {terms} / {coefs})."""
    # 64-bit offsets: K slots of N * F elements may pass 2^31
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    slot = tl.cast(SLOT, tl.int64)
    mask = offs < slot
{body}
'''
    return load_generated(source, "jet-bilinear")["_jet_bilinear_kernel"]


def jet_bilinear_triton(a: torch.Tensor, b: torch.Tensor, num_slots: int, terms, coefs) -> torch.Tensor:
    """soap_kernels::jet_bilinear by the Triton kernel: a [Ka, N, F], b [Kb, N, F] contiguous stacks of one dtype
    (float32 or float64) on one device; terms are (s, i, j) triples, flattened, sorted by s."""
    if a.dim() != 3 or b.dim() != 3 or a.shape[1:] != b.shape[1:] or a.dtype != b.dtype or a.device != b.device:
        raise ValueError(
            f"jet_bilinear: a {tuple(a.shape)} {a.dtype} {a.device} and b {tuple(b.shape)} {b.dtype} {b.device} "
            "must be [K, N, F] stacks sharing N, F, dtype and device"
        )
    if a.dtype not in _DTYPES:
        raise TypeError(f"jet_bilinear: float32 or float64 stacks, got {a.dtype}")
    terms, coefs = tuple(int(t) for t in terms), tuple(float(c) for c in coefs)
    if len(terms) != 3 * len(coefs) or num_slots < 1:
        raise ValueError(f"jet_bilinear: {len(terms)} term integers for {len(coefs)} coefficients, {num_slots} slots")
    for s, i, j in zip(terms[0::3], terms[1::3], terms[2::3], strict=True):
        if not (0 <= s < num_slots and 0 <= i < a.shape[0] and 0 <= j < b.shape[0]):
            raise ValueError(
                f"jet_bilinear: term ({s}, {i}, {j}) out of range for {num_slots} output, {a.shape[0]} and "
                f"{b.shape[0]} input slots"
            )
    a, b = a.contiguous(), b.contiguous()
    out = a.new_empty((num_slots, *a.shape[1:]))
    slot = a.shape[1] * a.shape[2]
    if slot == 0:
        return out
    kernel = _kernel(terms, coefs, num_slots, _DTYPES[a.dtype])
    with on_device_of(a):
        kernel[(cdiv(slot, _BLOCK),)](a, b, out, slot, BLOCK=_BLOCK)
    return out


@functools.cache
def cuda_kernel_registered() -> bool:
    """Make jet_bilinear_triton the CUDA kernel of soap_kernels::jet_bilinear, once (where _C defines the op and
    Triton is installed); whether it is registered."""
    if not (HAS_TRITON and has_native_cpu()):
        return False
    torch.library.register_kernel("soap_kernels::jet_bilinear", "cuda", jet_bilinear_triton)
    return True
