"""The Leibniz product of two jets by the op soap_kernels::jet_bilinear, differentiable to any order: its C++
kernel on CPU stacks, its Triton kernel (ops/jet_bilinear_triton.py) on CUDA stacks.

jet_bilinear computes out[s] = sum over terms (s, i, j) of coef * a[i] * b[j] for stacks a [Ka, N, F] and
b [Kb, N, F] (csrc/cpu/jet_bilinear.cpp), in one pass over blocks of every slot. For a layout's product program
(jets/plan.py, JetPlan.product_terms) it is the jet of x * y:

    D_k (x y) = sum over terms (coef, a, b) of slot k of coef x_a y_b.

Being bilinear, its backward is two more jet_bilinear calls with the transposed programs:

    dL/da_i = sum over terms (s, i, j) of coef g_s b_j,      dL/db_j = sum coef g_s a_i,

registered as its autograd formula here, so a double backward works too. The torch reference (and the path
everywhere else) is jets/reference.product_jet_ref.
"""

from __future__ import annotations

import functools

import torch

from soap_kernels._backend import triton_interpreted
from soap_kernels._native import has_native_cpu
from soap_kernels.jets.plan import JetPlan
from soap_kernels.ops.jet_dense_native import native_stack_supported

_OP_NAME = "soap_kernels::jet_bilinear"
# whether the op has its CUDA (Triton) kernel: set once at import by _register, read as a plain bool so that
# torch.compile never traces into the registration
_CUDA_KERNEL = False


def native_product_supported(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether jet_product can multiply these stacks: same shape and dtype, both taken by the C++ kernels."""
    return x.shape == y.shape and x.dtype == y.dtype and native_stack_supported(x) and native_stack_supported(y)


def product_supported(x: torch.Tensor, y: torch.Tensor, kernels: str) -> bool:
    """Whether jet_product runs these stacks on the given layer kernels: "native" on CPU stacks (C++), "triton"
    on CUDA stacks (ops/jet_bilinear_triton.py, the op's CUDA kernel) and, under TRITON_INTERPRET=1 where the
    "triton" kernels emulate the GPU path on CPU stacks, the same op by its C++ kernel (the same outputs and
    saved tensors as on CUDA); otherwise the torch reference does."""
    if kernels == "native" or (kernels == "triton" and triton_interpreted() and x.device.type == "cpu"):
        return native_product_supported(x, y)
    if kernels != "triton" or not (x.is_cuda and y.device == x.device):
        return False
    same = x.shape == y.shape and x.dtype == y.dtype
    return same and x.dtype in (torch.float32, torch.float64) and _CUDA_KERNEL


@functools.cache
def product_program(layout: str) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """The layout's Leibniz program as (out, a, b) triples, flattened, and their coefficients."""
    plan = JetPlan.from_key(layout)
    terms = [(k, a, b, coef) for k, slot_terms in enumerate(plan.product_terms) for coef, a, b in slot_terms]
    return tuple(index for k, a, b, _ in terms for index in (k, a, b)), tuple(coef for *_, coef in terms)


@functools.cache
def transposed_program(terms: tuple[int, ...], coefs: tuple[float, ...], wrt: int) -> tuple[list[int], list[float]]:
    """The program of d out / d a (wrt 0) or d out / d b (wrt 1): (s, i, j) becomes (i, s, j) or (j, s, i),
    sorted by the new output slot as jet_bilinear requires."""
    triples = [(terms[3 * t : 3 * t + 3], coef) for t, coef in enumerate(coefs)]
    moved = sorted(((i, s, j) if wrt == 0 else (j, s, i), coef) for (s, i, j), coef in triples)
    return [index for triple, _ in moved for index in triple], [coef for _, coef in moved]


def jet_product(x: torch.Tensor, y: torch.Tensor, layout: str) -> torch.Tensor:
    """The jet of x * y for two stacks [K, N, F] laid out by `layout` (the C++ kernel on CPU stacks, the Triton
    kernel on CUDA stacks)."""
    plan = JetPlan.from_key(layout)
    if x.shape[0] != plan.num_slots or y.shape[0] != plan.num_slots:
        raise ValueError(
            f"jet_product: stacks of shapes {tuple(x.shape)} and {tuple(y.shape)} for a layout of "
            f"{plan.num_slots} slots"
        )
    terms, coefs = product_program(layout)
    return torch.ops.soap_kernels.jet_bilinear(x.contiguous(), y.contiguous(), plan.num_slots, terms, coefs)


def _setup_context(ctx, inputs, output):
    a, b, num_slots, terms, coefs = inputs
    ctx.program = (tuple(terms), tuple(coefs))
    ctx.slots = (a.shape[0], b.shape[0])
    # each gradient needs the other operand only
    ctx.save_for_backward(b if ctx.needs_input_grad[0] else None, a if ctx.needs_input_grad[1] else None)


def _backward(ctx, grad):
    b, a = ctx.saved_tensors
    grad = grad.contiguous()
    grads = [None, None]
    for wrt, other in ((0, b), (1, a)):
        if ctx.needs_input_grad[wrt]:
            terms, coefs = transposed_program(*ctx.program, wrt)
            grads[wrt] = torch.ops.soap_kernels.jet_bilinear(grad, other, ctx.slots[wrt], terms, coefs)
    return grads[0], grads[1], None, None, None


def _register() -> None:
    """The meta kernel (shapes only, for torch.compile and FakeTensor tracing), the autograd formula and, with a
    GPU, the CUDA kernel."""
    global _CUDA_KERNEL
    if not has_native_cpu():
        return

    @torch.library.register_fake(_OP_NAME)
    def _(a, b, num_slots, terms, coefs):
        return a.new_empty((num_slots, *a.shape[1:]))

    torch.library.register_autograd(_OP_NAME, _backward, setup_context=_setup_context)
    if torch.cuda.is_available():  # the CUDA kernel (Triton; imported only where it can run)
        from soap_kernels.ops.jet_bilinear_triton import cuda_kernel_registered

        _CUDA_KERNEL = cuda_kernel_registered()


_register()
