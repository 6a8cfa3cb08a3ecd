"""soap_kernels::factor_update_ (Triton) against factor_update_ref and the optimizer's gram: TRITON_INTERPRET=1 on
CPU tensors, or a CUDA GPU."""

from __future__ import annotations

import pytest
import torch

from soap_kernels.ops import factor_update as fu
from soap_kernels.ops.factor_update import factor_update_, factor_update_ref
from soap_kernels.optim.projection import gram
from tests.cuda_marks import needs_gpu_memory, needs_two_gpus
from tests.launch_guards import record_launch_guards

OPCHECK_ALL = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


@pytest.fixture
def device(triton_device):
    return triton_device


@pytest.fixture
def triton_only(monkeypatch):
    """Make a silent fall back to the torch reference inside the op an error."""

    def refuse(*args, **kwargs):
        raise AssertionError("the op ran the torch reference instead of the Triton kernel")

    monkeypatch.setattr(fu, "factor_update_ref", refuse)


def _tol(dtype):
    return dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)


def _inputs(shape, dim, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    grad = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
    size = shape[1 + dim]
    a = torch.randn(shape[0], size, size, generator=gen, dtype=torch.float64)
    factor = (a @ a.mT / size).to(dtype=dtype, device=device)
    return factor, grad


SHAPES = [(1, 1, 7), (3, 7, 33), (3, 33, 1), (1, 40, 17), (3, 5)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(device, dtype, shape, triton_only):
    ok = torch.tensor(True, device=device)
    for dim in range(len(shape) - 1):
        factor, grad = _inputs(shape, dim, dtype, device)
        expected = factor.clone()
        factor_update_(factor, grad, ok, 0.95, dim)
        torch.testing.assert_close(factor, _reference(expected, grad, ok, 0.95, dim), **_tol(dtype))


_REF = factor_update_ref  # bound at import: the triton_only fixture patches the module attribute


def _reference(factor, grad, ok, beta, dim):
    reference = factor.clone()
    _REF(reference, grad, ok, beta, dim)
    return reference


def test_reference_is_the_optimizer_math():
    """factor_update_ref is stack.py's lerp(L, gram(G, d + 1), 1 - beta) for matrices and vectors."""
    for shape in [(3, 7, 5), (2, 9)]:
        for dim in range(len(shape) - 1):
            factor, grad = _inputs(shape, dim, torch.float64, "cpu", seed=4)
            expected = torch.lerp(factor, gram(grad, dim + 1), 0.05)
            factor_update_ref(factor, grad, torch.tensor(True), 0.95, dim)
            torch.testing.assert_close(factor, expected, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_higher_rank_gradients_are_unfolded(device, dtype, triton_only):
    """3-D and 4-D stacks: every dim's factor moves toward gram(G, d + 1), the optimizer's mode-d statistic."""
    ok = torch.tensor(True, device=device)
    for shape in [(2, 3, 5, 4), (1, 2, 3, 2, 5)]:
        for dim in range(len(shape) - 1):
            factor, grad = _inputs(shape, dim, dtype, device, seed=dim)
            expected = torch.lerp(factor, gram(grad, dim + 1), 0.05)
            factor_update_(factor, grad, ok, 0.95, dim)
            torch.testing.assert_close(factor, expected, **_tol(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_weight_lerp_branch_and_vector_257(device, dtype, triton_only):
    """beta < 0.5 (lerp weight >= 0.5 takes torch.lerp's other formula); a non-power-of-two outer product."""
    ok = torch.tensor(True, device=device)
    factor, grad = _inputs((3, 9, 20), 1, dtype, device, seed=1)
    expected = _reference(factor, grad, ok, 0.3, 1)
    factor_update_(factor, grad, ok, 0.3, 1)
    torch.testing.assert_close(factor, expected, **_tol(dtype))
    factor, grad = _inputs((1, 257), 0, dtype, device, seed=2)
    expected = _reference(factor, grad, ok, 0.99, 0)
    factor_update_(factor, grad, ok, 0.99, 0)
    torch.testing.assert_close(factor, expected, **_tol(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_result_is_exactly_symmetric(device, dtype, triton_only):
    factor, grad = _inputs((2, 45, 70), 0, dtype, device, seed=3)
    factor = (factor + factor.mT) / 2  # exactly symmetric to start with
    factor_update_(factor, grad, torch.tensor(True, device=device), 0.9, 0)
    assert torch.equal(factor, factor.mT)


@pytest.mark.filterwarnings("ignore:invalid value encountered")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_not_ok_leaves_factor_bitwise_unchanged(device, dtype, triton_only):
    ok = torch.tensor(False, device=device)
    for shape, dim in [((3, 7, 33), 0), ((3, 7, 33), 1), ((1, 5), 0)]:
        factor, grad = _inputs(shape, dim, dtype, device)
        grad.view(-1)[1] = float("nan")
        grad.view(-1)[0] = float("inf")
        before = factor.clone()
        factor_update_(factor, grad, ok, 0.95, dim)
        assert torch.equal(factor, before)


def test_non_contiguous_grad(device, triton_only):
    factor, grad = _inputs((2, 11, 6), 1, torch.float64, device)
    strided = grad.mT.contiguous().mT  # same values, column-major
    expected = _reference(factor, grad, torch.tensor(True, device=device), 0.95, 1)
    factor_update_(factor, strided, torch.tensor(True, device=device), 0.95, 1)
    torch.testing.assert_close(factor, expected, rtol=1e-12, atol=1e-12)


def test_opcheck(device):
    utils = OPCHECK_ALL if device.type == "cuda" else ("test_schema", "test_autograd_registration", "test_faketensor")
    factor, grad = _inputs((3, 7, 5), 1, torch.float64, device)
    for ok in (True, False):
        torch.library.opcheck(
            torch.ops.soap_kernels.factor_update_.default,
            (factor, grad, torch.tensor(ok, device=device), 0.95, 1, False),
            test_utils=utils,
        )


def test_schema_declares_the_mutation():
    schema = str(torch.ops.soap_kernels.factor_update_.default._schema)
    assert "Tensor(a0!) factor" in schema and "Tensor grad" in schema and schema.endswith("-> ()")


def test_reference_path_without_triton(monkeypatch):
    """On CPU without the interpreter the op runs factor_update_ref (and gives its result)."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    factor, grad = _inputs((2, 4, 3), 0, torch.float64, "cpu")
    expected = _reference(factor, grad, torch.tensor(True), 0.95, 0)
    factor_update_(factor, grad, torch.tensor(True), 0.95, 0)
    torch.testing.assert_close(factor, expected, rtol=0, atol=0)


def test_bad_arguments_raise():
    factor, grad = _inputs((2, 4, 3), 0, torch.float32, "cpu")
    ok = torch.tensor(True)
    with pytest.raises(ValueError, match="factor has shape"):
        factor_update_(factor, grad, ok, 0.95, 1)
    with pytest.raises(ValueError, match="dim=2"):
        factor_update_(factor, grad, ok, 0.95, 2)
    with pytest.raises(TypeError, match="dtype"):
        factor_update_(factor, grad.double(), ok, 0.95, 0)
    with pytest.raises(TypeError, match="float32 and float64"):
        factor_update_(factor.half(), grad.half(), ok, 0.95, 0)
    with pytest.raises(TypeError, match="ok must be"):
        factor_update_(factor, grad, torch.tensor(1.0), 0.95, 0)
    with pytest.raises(ValueError, match="beta=1.5"):
        factor_update_(factor, grad, ok, 1.5, 0)
    with pytest.raises(ValueError, match="higher-rank"):
        torch.ops.soap_kernels.factor_update_(factor, grad.reshape(2, 4, 3, 1), ok, 0.95, 0, False)
    with pytest.raises(ValueError, match="dim=3"):
        factor_update_(factor, grad.reshape(2, 4, 3, 1), ok, 0.95, 3)
    with pytest.raises(ValueError, match="contiguous"):
        factor_update_(torch.zeros(4, 4, 2).permute(2, 0, 1), grad, ok, 0.95, 0)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(3, 256, 256), (2, 512, 384), (4, 1, 1000)], ids=str)
def test_real_sizes_on_gpu(dtype, shape):
    ok = torch.tensor(True, device="cuda")
    for dim in range(len(shape) - 1):
        factor, grad = _inputs(shape, dim, dtype, "cuda")
        expected = _reference(factor, grad, ok, 0.95, dim)
        factor_update_(factor, grad, ok, 0.95, dim)
        tol = dict(rtol=1e-11, atol=1e-11) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(factor, expected, **tol)


def test_the_launch_runs_under_a_guard_for_the_stacks_device(device, monkeypatch, triton_only):
    """Triton launches on the current CUDA device: the launch must sit inside on_device_of(the stack)."""
    launches = record_launch_guards(monkeypatch, fu)
    factor, grad = _inputs((2, 9, 5), 0, torch.float64, device)
    ok = torch.tensor(True, device=device)
    expected = _reference(factor, grad, ok, 0.95, 0)
    factor_update_(factor, grad, ok, 0.95, 0)
    torch.testing.assert_close(factor, expected, **_tol(torch.float64))
    assert launches == [("_factor_update_kernel", [torch.device(device)])]


@pytest.mark.cuda
@needs_two_gpus
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stack_on_a_gpu_that_is_not_current(dtype):
    """Tensors on cuda:1 while cuda:0 is current: the kernel must run on cuda:1 and match the reference."""
    device = torch.device("cuda", 1)
    ok = torch.tensor(True, device=device)
    with torch.cuda.device(0):
        for dim in (0, 1):
            factor, grad = _inputs((3, 70, 40), dim, dtype, device)
            expected = _reference(factor, grad, ok, 0.95, dim)
            factor_update_(factor, grad, ok, 0.95, dim)
            torch.cuda.synchronize(device)
            torch.testing.assert_close(factor, expected, **_tol(dtype))


@pytest.mark.cuda
@needs_gpu_memory(24)
def test_factor_of_more_than_2_31_elements():
    """A 46341 x 46341 factor (2^31 + 4633 elements): offsets past 2^31 must not wrap (64-bit indexing)."""
    torch.cuda.empty_cache()  # blocks cached by earlier tests must not make the big allocations fail
    size = 46341
    grad = torch.randn(1, size, device="cuda")
    factor = torch.zeros(1, size, size, device="cuda")
    factor_update_(factor, grad, torch.tensor(True, device="cuda"), 0.0, 0)  # beta 0: factor = g g^T
    g = grad[0]
    for row in (0, size // 2, size - 1):
        torch.testing.assert_close(factor[0, row], g[row] * g, rtol=1e-6, atol=0)
        torch.testing.assert_close(factor[0, :, row], g * g[row], rtol=1e-6, atol=0)
