"""The Triton kernel of soap_kernels::jet_bilinear (the jets' Leibniz product on CUDA) against a plain reference:
TRITON_INTERPRET=1 on CPU tensors, or a CUDA GPU."""

import pytest
import torch

from soap_kernels._native import has_native_cpu
from soap_kernels.jets.reference import product_jet_ref
from soap_kernels.ops.jet_bilinear_triton import jet_bilinear_triton
from soap_kernels.ops.jet_product import jet_product, product_program, product_supported, transposed_program
from tests.jet_layouts import LAYOUTS

# N * F below, at and across the kernel's 1024-element block
SHAPES = [(1, 1), (7, 33), (32, 32), (257, 5)]


@pytest.fixture
def device(triton_device):
    return triton_device


def _bilinear_reference(a, b, num_slots, terms, coefs):
    """out[s] = sum over terms (s, i, j) of coef a[i] b[j], one term at a time."""
    out = torch.zeros((num_slots, *a.shape[1:]), dtype=a.dtype, device=a.device)
    for t, coef in enumerate(coefs):
        s, i, j = terms[3 * t : 3 * t + 3]
        out[s] += coef * a[i] * b[j]
    return out


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_product_and_both_backward_programs_match_the_reference(device, layout, dtype):
    torch.manual_seed(0)
    terms, coefs = product_program(layout.key)
    k = layout.num_slots
    tolerance = {"rtol": 1e-13, "atol": 1e-13} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    for n, f in SHAPES:
        x = torch.randn(k, n, f, dtype=dtype, device=device)
        y = torch.randn(k, n, f, dtype=dtype, device=device)
        product = jet_bilinear_triton(x, y, k, terms, coefs)
        torch.testing.assert_close(product, product_jet_ref(x, y, layout), **tolerance, msg=f"N={n} F={f}")
        g = torch.randn_like(product)
        for wrt, other in ((0, y), (1, x)):  # dL/dx from (g, y), dL/dy from (g, x)
            back_terms, back_coefs = transposed_program(terms, coefs, wrt)
            ours = jet_bilinear_triton(g, other, k, back_terms, back_coefs)
            expected = _bilinear_reference(g, other, k, back_terms, back_coefs)
            torch.testing.assert_close(ours, expected, **tolerance, msg=f"wrt {wrt} N={n} F={f}")


def test_unwritten_slots_are_zeroed_and_empty_stacks_launch_nothing(device, monkeypatch):
    """Slots no term writes are stored as zeros by the kernel (its output is born NaN here), and an empty stack
    returns before any kernel is built or launched."""
    import soap_kernels.ops.jet_bilinear_triton as module

    new_empty = torch.Tensor.new_empty
    monkeypatch.setattr(torch.Tensor, "new_empty", lambda self, *a, **k: new_empty(self, *a, **k).fill_(float("nan")))
    a = torch.randn(2, 5, 3, dtype=torch.float64, device=device)
    out = jet_bilinear_triton(a, a, 3, [1, 0, 1], [2.0])  # only slot 1 is written by a term
    torch.testing.assert_close(out[1], 2.0 * a[0] * a[1])
    assert out[0].eq(0).all() and out[2].eq(0).all()

    def no_kernel(*args):
        raise AssertionError("an empty stack built a kernel")

    monkeypatch.setattr(module, "_kernel", no_kernel)
    empty = torch.randn(2, 0, 3, device=device)
    assert jet_bilinear_triton(empty, empty, 2, [0, 0, 0], [1.0]).shape == (2, 0, 3)


def test_bad_input_is_named(device):
    a = torch.randn(2, 5, 3, device=device)
    with pytest.raises(ValueError, match=r"\(2, 5, 4\)"):
        jet_bilinear_triton(a, torch.randn(2, 5, 4, device=device), 2, [0, 0, 0], [1.0])
    with pytest.raises(ValueError, match=r"\(0, 2, 0\)"):
        jet_bilinear_triton(a, a, 2, [0, 2, 0], [1.0])
    with pytest.raises(ValueError, match="4 term integers"):
        jet_bilinear_triton(a, a, 2, [0, 0, 0, 1], [1.0])
    with pytest.raises(TypeError, match="float16"):
        jet_bilinear_triton(a.half(), a.half(), 2, [0, 0, 0], [1.0])


def test_triton_products_run_on_cuda_stacks_or_emulate_them_under_the_interpreter(monkeypatch):
    cpu = torch.randn(4, 3, 2)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not product_supported(cpu, cpu, "triton")  # CPU stacks on the triton kernels: the torch reference
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the GPU path emulated: the op, by its CPU kernel
    assert product_supported(cpu, cpu, "triton") == has_native_cpu()
    assert not product_supported(cpu, cpu.double(), "triton")
    assert not product_supported(cpu, cpu, "torch")
    assert product_supported(cpu, cpu, "native") == has_native_cpu()


@pytest.mark.skipif(not (torch.cuda.is_available() and has_native_cpu()), reason="needs CUDA and soap_kernels._C")
def test_cuda_product_is_the_triton_kernel_and_differentiates_twice():
    layout = LAYOUTS["allen_cahn"]
    torch.manual_seed(1)
    x = torch.randn(layout.num_slots, 7, 33, dtype=torch.float64, device="cuda", requires_grad=True)
    y = torch.randn(layout.num_slots, 7, 33, dtype=torch.float64, device="cuda", requires_grad=True)
    assert product_supported(x, y, "triton")
    torch.testing.assert_close(jet_product(x, y, layout.key), product_jet_ref(x, y, layout), rtol=1e-13, atol=1e-13)
    terms, coefs = product_program(layout.key)
    torch.library.opcheck(torch.ops.soap_kernels.jet_bilinear.default, (x, y, layout.num_slots, terms, coefs))
    small = [t[:, :3, :2].detach().clone().requires_grad_(True) for t in (x, y)]
    assert torch.autograd.gradcheck(lambda a, b: jet_product(a, b, layout.key), small)
    assert torch.autograd.gradgradcheck(lambda a, b: jet_product(a, b, layout.key), small)
