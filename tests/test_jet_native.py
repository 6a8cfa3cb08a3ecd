"""The C++ CPU jet kernels (soap_kernels::jet_activation, jet_bilinear) against the torch reference of the jet rules."""

import gc
import math
import weakref

import pytest
import torch

import soap_kernels
import soap_kernels.ops.jet_dense_native as native
from soap_kernels import nn as snn
from soap_kernels._backend import triton_available
from soap_kernels._native import has_native_cpu
from soap_kernels.jets.api import _layer_kernels
from soap_kernels.jets.plan import JetPlan
from soap_kernels.jets.reference import activation_jet_adjoint_ref, activation_jet_ref, product_jet_ref
from soap_kernels.ops.jet_dense import jet_dense_activation, jet_dense_activation_backward
from soap_kernels.ops.jet_dense_native import (
    NATIVE_ACTIVATIONS,
    _program,
    _tower_coefficients,
    activation_jet_native,
    native_jet_supported,
)
from soap_kernels.ops.jet_product import jet_product, product_program
from tests.jet_layouts import LAYOUTS

pytestmark = pytest.mark.skipif(not has_native_cpu(), reason="soap_kernels._C is not built")

# N * F not a multiple of the kernel's 4096-element block, and one shape spanning several blocks (both threads)
SHAPES = [(1, 1), (7, 33), (257, 5), (300, 31)]


def _relative_error(ours, reference):
    return ((ours - reference).abs().max() / reference.abs().max().clamp_min(1e-300)).item()


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
@pytest.mark.parametrize("activation", NATIVE_ACTIVATIONS)
def test_forward_and_adjoint_match_the_reference_in_float64(layout, activation):
    torch.manual_seed(0)
    for n, f in SHAPES:
        z = torch.randn(layout.num_slots, n, f, dtype=torch.float64)
        grad = torch.randn_like(z)
        forward = activation_jet_native(z, activation, layout.key)
        assert _relative_error(forward, activation_jet_ref(z, activation, layout)) < 1e-13, (n, f)
        adjoint = activation_jet_native(z, activation, layout.key, grad=grad)
        assert _relative_error(adjoint, activation_jet_adjoint_ref(grad, z, activation, layout)) < 1e-13, (n, f)
        # the forward's value slot as the tower's base (tanh, sigmoid) gives the same adjoint
        with_value = activation_jet_native(z, activation, layout.key, grad=grad, value=forward[0].contiguous())
        assert _relative_error(with_value, adjoint) < 1e-14, (n, f)


@pytest.mark.parametrize("activation", ["tanh", "sin", "silu", "gelu"])
def test_float32_is_as_accurate_as_the_float32_reference(activation):
    """Against the float64 reference, the kernel's float32 error is within 4x the torch float32 reference's: both
    round the same products, in another order (measured: 0.5x-2.5x; silu's high orders cancel the most)."""
    torch.manual_seed(1)
    layout = LAYOUTS["kuramoto_sivashinsky"]
    z = torch.randn(layout.num_slots, 257, 33, dtype=torch.float64)
    grad = torch.randn_like(z)
    exact = activation_jet_ref(z, activation, layout), activation_jet_adjoint_ref(grad, z, activation, layout)
    ours = (
        activation_jet_native(z.float(), activation, layout.key),
        activation_jet_native(z.float(), activation, layout.key, grad=grad.float()),
    )
    torch32 = (
        activation_jet_ref(z.float(), activation, layout),
        activation_jet_adjoint_ref(grad.float(), z.float(), activation, layout),
    )
    for mine, reference32, truth in zip(ours, torch32, exact, strict=True):
        assert _relative_error(mine.double(), truth) <= 4 * _relative_error(reference32.double(), truth) + 1e-7


def _float32_values_to_sweep() -> torch.Tensor:
    """Every 997th float32 of [0, 11] (tanh is 1 in float32 beyond 9.01), dense runs across the kernel's branch
    points (0.4, 9) and around 0, their negatives, and the special values."""
    bits = torch.arange(0, 0x41300000, 997, dtype=torch.int64).to(torch.int32)
    branch_points = [torch.linspace(0.39, 0.41, 20001), torch.linspace(8.9, 9.1, 2001)]
    specials = torch.tensor([0.0, 1e-45, 1e-38, 1e-30, 1e-7, 88.0, 1e30, float("inf"), float("nan")])
    magnitudes = torch.cat([bits.view(torch.float32), *branch_points, specials])
    return torch.cat([magnitudes, -magnitudes])


def test_float32_tanh_is_within_2_5_ulp_and_keeps_specials():
    """A float32 tanh forward takes tanh(z_0) from the kernel's own vectorised tanh (fast_tanh.h), not ATen's:
    within 2.5 ulp of the float64 tanh (measured over every float32: 2.37), exact at 0, the infinities and beyond
    9, and NaN stays NaN."""
    values = _float32_values_to_sweep()
    layout = JetPlan.build(1, []).key  # the value slot alone
    ours = activation_jet_native(values.reshape(1, 1, -1), "tanh", layout).reshape(-1)
    exact = torch.tanh(values.double())
    finite = ~values.isnan()
    assert ours[~finite].isnan().all()
    rounded = exact[finite].float()
    ulp = (torch.nextafter(rounded.abs(), torch.tensor(float("inf"))) - rounded.abs()).double()
    errors = (ours[finite].double() - exact[finite]).abs() / ulp
    assert errors.max().item() <= 2.5, values[finite][errors.argmax()].item()
    for special in (0.0, -0.0, float("inf"), -float("inf"), 20.0, -20.0):
        assert activation_jet_native(torch.tensor([[[special]]]), "tanh", layout).item() == math.tanh(special)


def test_result_does_not_depend_on_the_thread_count():
    """Each element is computed by one thread from its own inputs: any split gives the same bits."""
    torch.manual_seed(2)
    layout = LAYOUTS["allen_cahn"]
    z = torch.randn(layout.num_slots, 1000, 37)
    grad = torch.randn_like(z)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = activation_jet_native(z, "tanh", layout.key, grad=grad)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(activation_jet_native(z, "tanh", layout.key, grad=grad), serial)


@pytest.mark.parametrize("activation", NATIVE_ACTIVATIONS)
@pytest.mark.parametrize("bias", [True, False])
def test_native_layer_equals_the_torch_layer_with_gradients(activation, bias):
    """jet_dense_activation with kernels="native" against kernels="torch"."""
    torch.manual_seed(3)
    layout = LAYOUTS["mixed_kdv_laplacian"]
    x = torch.randn(layout.num_slots, 33, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True) if bias else None
    inputs = [t for t in (x, w, b) if t is not None]
    results = {}
    for kernels in ("native", "torch"):
        h, z = jet_dense_activation(x, w, b, activation, layout.key, kernels)
        g = torch.sin(torch.arange(h.numel(), dtype=torch.float64)).reshape(h.shape)
        results[kernels] = (h, z, torch.autograd.grad(h, inputs, g))
    (h, z, grads), (h_ref, z_ref, grads_ref) = results["native"], results["torch"]
    torch.testing.assert_close(z, z_ref, rtol=0, atol=0)
    assert _relative_error(h, h_ref) < 1e-13  # relative to the largest entry: gelu's 4th-order slots reach ~1e2
    for ours, theirs in zip(grads, grads_ref, strict=True):
        assert _relative_error(ours, theirs) < 1e-12


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_jet_on_cuda_takes_triton_for_float32_and_float64_only():
    x = torch.rand(9, 2, device="cuda")
    assert _layer_kernels(x, "auto") == ("triton" if triton_available() else "torch")
    assert _layer_kernels(x.double(), "auto") == ("triton" if triton_available() else "torch")
    for dtype in (torch.float16, torch.bfloat16):  # the Triton kernels have no half-precision jets
        assert _layer_kernels(x.to(dtype), "auto") == "torch"


def test_jet_on_cpu_runs_the_native_kernels_by_default():
    torch.manual_seed(4)
    x = torch.rand(9, 2, dtype=torch.float64)
    assert _layer_kernels(x, "auto") == "native"
    assert _layer_kernels(x, "torch") == "torch"
    assert native_jet_supported(x, "gelu") and not native_jet_supported(
        x.cuda() if torch.cuda.is_available() else x.half(), "tanh"
    )
    assert not native_jet_supported(x.half(), "tanh")
    model = snn.PirateNet(2, 1, 16, 2, "tanh", rwf=(1.0, 0.1), alpha_init=0.5).double()
    derivatives = [(0,), (1, 1)]
    ours = soap_kernels.jet(model, x, derivatives)
    reference = soap_kernels.jet(model, x, derivatives, backend="torch")
    for key in reference:
        torch.testing.assert_close(ours[key], reference[key], rtol=1e-12, atol=1e-12)


def test_opcheck():
    torch.manual_seed(5)
    layout = LAYOUTS["allen_cahn"]
    z = torch.randn(layout.num_slots, 7, 5, dtype=torch.float64)
    grad = torch.randn_like(z)
    for adjoint in (False, True):
        terms, coefs, orders = _program(layout.key, adjoint)
        args = (z, grad if adjoint else None, None, "tanh", _tower_coefficients("tanh", orders), orders, terms, coefs)
        torch.library.opcheck(torch.ops.soap_kernels.jet_activation.default, args)


def test_bad_arguments_raise():
    layout = LAYOUTS["allen_cahn"]
    z = torch.randn(layout.num_slots, 3, 4)
    with pytest.raises(ValueError, match="unknown kernels 'cuda'"):
        jet_dense_activation(z, torch.randn(2, 4), None, "tanh", layout.key, "cuda")
    with pytest.raises(RuntimeError, match="no C\\+\\+ tower for activation 'relu'"):
        torch.ops.soap_kernels.jet_activation(z, None, None, "relu", [], 1, [0, 0, -1, 0, -1, -1, -1, -1], [1.0])
    with pytest.raises(RuntimeError, match="writes slot 7"):
        torch.ops.soap_kernels.jet_activation(z, None, None, "sin", [], 1, [7, 0, -1, 0, -1, -1, -1, -1], [1.0])
    with pytest.raises(RuntimeError, match="but no grad was given"):
        torch.ops.soap_kernels.jet_activation(z, None, None, "sin", [], 1, [0, 0, 1, 0, -1, -1, -1, -1], [1.0])
    with pytest.raises(RuntimeError, match="with contiguous slots"):
        torch.ops.soap_kernels.jet_activation(
            z.transpose(1, 2), None, None, "sin", [], 1, [0, 0, -1, 0] + [-1] * 4, [1.0]
        )
    with pytest.raises(RuntimeError, match="grad slot -2"):
        torch.ops.soap_kernels.jet_activation(z, z, None, "sin", [], 1, [0, 0, -2, 0] + [-1] * 4, [1.0])
    with pytest.raises(RuntimeError, match="precomputed base"):  # silu's tower is not a polynomial in silu(z_0)
        torch.ops.soap_kernels.jet_activation(z, None, z[0], "silu", [0.0, 1.0], 1, [0, 0, -1, 0] + [-1] * 4, [1.0])


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_leibniz_product_and_its_backward_match_the_reference(layout):
    torch.manual_seed(6)
    for n, f in SHAPES:
        x = torch.randn(layout.num_slots, n, f, dtype=torch.float64, requires_grad=True)
        y = torch.randn(layout.num_slots, n, f, dtype=torch.float64, requires_grad=True)
        ours, reference = jet_product(x, y, layout.key), product_jet_ref(x, y, layout)
        assert _relative_error(ours, reference) < 1e-14, (n, f)
        g = torch.randn_like(ours)
        for mine, theirs in zip(torch.autograd.grad(ours, (x, y), g), torch.autograd.grad(reference, (x, y), g)):
            assert _relative_error(mine, theirs) < 1e-14, (n, f)


def test_leibniz_product_gradcheck_gradgradcheck_and_opcheck():
    """jet_bilinear's registered backward is jet_bilinear again, so the product differentiates twice."""
    torch.manual_seed(7)
    layout = LAYOUTS["mixed_kdv_laplacian"]
    x = torch.randn(layout.num_slots, 3, 2, dtype=torch.float64, requires_grad=True)
    y = torch.randn(layout.num_slots, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: jet_product(a, b, layout.key), (x, y))
    assert torch.autograd.gradgradcheck(lambda a, b: jet_product(a, b, layout.key), (x, y))
    terms, coefs = product_program(layout.key)
    torch.library.opcheck(torch.ops.soap_kernels.jet_bilinear.default, (x, y, layout.num_slots, terms, coefs))


def test_leibniz_product_of_strided_stacks_and_bad_shapes():
    torch.manual_seed(8)
    layout = LAYOUTS["allen_cahn"]
    x = torch.randn(layout.num_slots, 5, 9, dtype=torch.float64)[:, :, ::2]  # not contiguous
    y = torch.randn(layout.num_slots, 9, 5, dtype=torch.float64).transpose(1, 2)[:, :, :5]
    torch.testing.assert_close(jet_product(x, y, layout.key), product_jet_ref(x, y, layout), rtol=1e-14, atol=0)
    with pytest.raises(ValueError, match="for a layout of 4 slots"):
        jet_product(x[:3], y[:3], layout.key)


def test_jet_bilinear_rejects_bad_programs_and_stacks():
    a = torch.randn(3, 4, 5)
    with pytest.raises(RuntimeError, match="out of range"):
        torch.ops.soap_kernels.jet_bilinear(a, a, 2, [0, 3, 0], [1.0])
    with pytest.raises(RuntimeError, match="sorted by output slot"):
        torch.ops.soap_kernels.jet_bilinear(a, a, 2, [1, 0, 0, 0, 0, 0], [1.0, 1.0])
    with pytest.raises(RuntimeError, match="must share N, F and dtype"):
        torch.ops.soap_kernels.jet_bilinear(a, torch.randn(3, 4, 6), 2, [0, 0, 0], [1.0])


def test_empty_stacks_and_slots_no_term_writes():
    layout = LAYOUTS["allen_cahn"]
    for n, f in [(0, 5), (4, 0)]:
        z = torch.randn(layout.num_slots, n, f)
        assert activation_jet_native(z, "tanh", layout.key, grad=torch.randn_like(z)).shape == z.shape
        assert torch.ops.soap_kernels.jet_bilinear(z, z, 2, [0, 0, 0], [1.0]).shape == (2, n, f)
    z = torch.randn(3, 4, 5, dtype=torch.float64)
    # slot 1 has no term: zero (the output is allocated uninitialised, so the kernel must clear it)
    out = torch.ops.soap_kernels.jet_bilinear(z, z, 3, [0, 0, 1, 2, 2, 2], [2.0, 1.0])
    torch.testing.assert_close(out[0], 2 * z[0] * z[1])
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    torch.testing.assert_close(out[2], z[2] * z[2])
    out = torch.ops.soap_kernels.jet_activation(z, None, None, "sin", [], 1, [2, 0, -1, 1, 1, -1, -1, -1], [3.0])
    assert torch.equal(out[:2], torch.zeros_like(out[:2]))
    torch.testing.assert_close(out[2], 3 * torch.sin(z[0]) * z[1])


def test_native_layer_does_not_keep_its_graph_alive():
    """The backward's saved s(z_0) must not form a reference cycle with the output (pytorch/pytorch#94990):
    a graph that is never backpropagated is freed with its outputs."""
    layout = LAYOUTS["allen_cahn"]
    x = torch.randn(layout.num_slots, 5, 3, requires_grad=True)
    w = torch.randn(4, 3, requires_grad=True)
    h, z = jet_dense_activation(x, w, None, "tanh", layout.key, "native")
    saved = weakref.ref(z)
    del h, z
    gc.collect()
    assert saved() is None


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
def test_opcheck_native_layer_with_the_reused_value(activation):
    torch.manual_seed(9)
    layout = LAYOUTS["kuramoto_sivashinsky"]
    x = torch.randn(layout.num_slots, 7, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(jet_dense_activation, (x, w, b, activation, layout.key, "native"))
    h, z = jet_dense_activation(x.detach(), w.detach(), b.detach(), activation, layout.key, "native")
    args = (torch.randn_like(h), z, x.detach(), w.detach(), activation, layout.key, "native", True, h[0].contiguous())
    torch.library.opcheck(jet_dense_activation_backward, args)


@pytest.mark.parametrize("f_in, f_out", [(2, 9), (9, 4)])  # dL/dW accumulated in either orientation
@pytest.mark.parametrize("activation", ["tanh", "sin"])
def test_backward_in_row_chunks_equals_the_torch_layer(monkeypatch, f_in, f_out, activation):
    """The native backward (soap_kernels::jet_dense_backward) computes g_z a chunk of rows at a time (here 5 rows:
    chunks of 5, 5, ..., 3) and accumulates dL/dW and dL/db over them."""
    monkeypatch.setattr(native, "BACKWARD_CHUNK_ELEMENTS", 5 * f_out)
    torch.manual_seed(10)
    layout = LAYOUTS["allen_cahn"]
    x = torch.randn(layout.num_slots, 33, f_in, dtype=torch.float64, requires_grad=True)
    w = torch.randn(f_out, f_in, dtype=torch.float64, requires_grad=True)
    b = torch.randn(f_out, dtype=torch.float64, requires_grad=True)
    grads = {}
    for kernels in ("native", "torch"):
        h, _ = jet_dense_activation(x, w, b, activation, layout.key, kernels)
        g = torch.cos(torch.arange(h.numel(), dtype=torch.float64)).reshape(h.shape)
        grads[kernels] = torch.autograd.grad(h, (x, w, b), g)
    for ours, theirs, name in zip(grads["native"], grads["torch"], "xwb", strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("compute_grad_x", [True, False])
def test_dense_backward_op_opcheck_and_bad_arguments(compute_grad_x):
    """soap_kernels::jet_dense_backward (the chunked C++ backward) passes opcheck (its fake included) on odd
    shapes with 3-row chunks, and rejects mismatched shapes and dtypes (grad_h and base too) and a chunk of no
    rows."""
    torch.manual_seed(12)
    layout = LAYOUTS["allen_cahn"]
    z = torch.randn(layout.num_slots, 7, 5, dtype=torch.float64)
    x = torch.randn(layout.num_slots, 7, 3, dtype=torch.float64)
    w = torch.randn(5, 3, dtype=torch.float64)
    terms, coefs, orders = _program(layout.key, True)
    program = ("tanh", _tower_coefficients("tanh", orders), orders, terms, coefs)
    op = torch.ops.soap_kernels.jet_dense_backward
    torch.library.opcheck(op.default, (torch.randn_like(z), z, x, w, None, *program, compute_grad_x, 3))
    with pytest.raises(RuntimeError, match="must be x"):
        op(z, z, x, w.t().contiguous(), None, *program, compute_grad_x, 3)
    with pytest.raises(RuntimeError, match="must have z's dtype"):
        op(z, z, x.float(), w, None, *program, compute_grad_x, 3)
    with pytest.raises(RuntimeError, match="chunk_rows must be >= 1, got 0"):
        op(z, z, x, w, None, *program, compute_grad_x, 0)
    with pytest.raises(RuntimeError, match="grad_h .* must match z"):  # more rows than z: never read silently
        op(torch.randn(layout.num_slots, 9, 5, dtype=torch.float64), z, x, w, None, *program, compute_grad_x, 3)
    with pytest.raises(RuntimeError, match="base .* must be \\[N, F_out\\]"):
        op(z, z, x, w, torch.randn(9, 5, dtype=torch.float64), *program, compute_grad_x, 3)


def test_kernel_reads_a_row_range_of_a_stack_in_place():
    """z[:, r0:r1] (slots apart, each slot's rows contiguous) gives what its contiguous copy gives."""
    torch.manual_seed(11)
    layout = LAYOUTS["allen_cahn"]
    z = torch.randn(layout.num_slots, 40, 6, dtype=torch.float64)
    grad = torch.randn_like(z)
    rows = slice(7, 30)
    ours = activation_jet_native(z[:, rows], "tanh", layout.key, grad=grad[:, rows])
    copied = activation_jet_native(z[:, rows].contiguous(), "tanh", layout.key, grad=grad[:, rows].contiguous())
    assert torch.equal(ours, copied)
