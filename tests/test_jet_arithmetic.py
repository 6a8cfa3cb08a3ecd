"""soap_kernels::jet_add and jet_scale (ops/jet_arithmetic.py): slot-wise jet arithmetic with cached outputs."""

import pytest
import torch

from soap_kernels import cpu_buffer_cache
from soap_kernels._native import has_native_cpu
from soap_kernels.ops.jet_arithmetic import jet_add, jet_scale

pytestmark = pytest.mark.skipif(not has_native_cpu(), reason="soap_kernels._C is not built")

# the first below the buffer cache's 1 MiB (torch's allocator), the second above it (cached memory)
SHAPES = [(3, 7, 33), (4, 1001, 65)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("alpha", [1.0, -1.0, 0.25])
def test_jet_add_matches_torch_with_gradients(shape, alpha):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    y = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    out = jet_add(x, y, alpha)
    torch.testing.assert_close(out, x + alpha * y, rtol=0, atol=1e-15)
    g = torch.randn_like(out)
    grad_x, grad_y = torch.autograd.grad(out, [x, y], g)
    torch.testing.assert_close(grad_x, g)
    torch.testing.assert_close(grad_y, alpha * g)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("factor_shape", [(), (1,)])
def test_jet_scale_matches_torch_with_gradients(shape, factor_shape):
    torch.manual_seed(1)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    factor = torch.full(factor_shape, 0.3, dtype=torch.float64, requires_grad=True)
    out = jet_scale(x, factor)
    expected = x * factor
    torch.testing.assert_close(out, expected, rtol=1e-15, atol=0)
    g = torch.randn_like(out)
    ours = torch.autograd.grad(out, [x, factor], g)
    reference = torch.autograd.grad(expected, [x, factor], g)
    for a, b in zip(ours, reference, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("needs", [(True, False), (False, True)], ids=["x only", "factor only"])
def test_jet_scale_gradient_of_one_input(needs):
    torch.manual_seed(5)
    x = torch.randn(SHAPES[0], dtype=torch.float64, requires_grad=needs[0])
    factor = torch.tensor([0.3], dtype=torch.float64, requires_grad=needs[1])
    wanted = [t for t, need in zip((x, factor), needs, strict=True) if need]
    g = torch.randn(SHAPES[0], dtype=torch.float64)
    ours = torch.autograd.grad(jet_scale(x, factor), wanted, g)
    reference = torch.autograd.grad(x * factor, wanted, g)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)


def test_float32_results_and_gradients_come_from_the_cache():
    torch.manual_seed(6)
    shape = (4, 2001, 65)  # 2 MB of float32: above the cache's 1 MiB
    x = torch.randn(shape, requires_grad=True)
    y = torch.randn(shape, requires_grad=True)
    factor = torch.tensor([0.3], requires_grad=True)
    hits = cpu_buffer_cache.stats()["hits"] + cpu_buffer_cache.stats()["misses"]
    out = jet_scale(jet_add(x, y, -1.0), factor)
    expected = (x - y) * factor
    torch.testing.assert_close(out, expected)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, [x, y, factor], g), torch.autograd.grad(expected, [x, y, factor], g)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    stats = cpu_buffer_cache.stats()
    assert stats["hits"] + stats["misses"] >= hits + 4  # two outputs, two cached gradients (y's and x's)


def test_backward_can_be_recorded_with_create_graph():
    torch.manual_seed(2)
    x = torch.randn(SHAPES[1], dtype=torch.float64, requires_grad=True)
    y = torch.randn(SHAPES[1], dtype=torch.float64, requires_grad=True)
    factor = torch.tensor([0.7], dtype=torch.float64, requires_grad=True)
    out = jet_scale(jet_add(x, y, -0.5), factor)
    # grad_y = -factor^2 (x - y/2), so d/dfactor of its sum is -2 factor sum(x - y/2)
    (grad_y,) = torch.autograd.grad(out.square().sum(), y, create_graph=True)
    (second,) = torch.autograd.grad(grad_y.sum(), factor)
    expected = (-2 * factor * (x - 0.5 * y)).sum().detach()
    torch.testing.assert_close(second.reshape(()), expected, rtol=1e-10, atol=1e-10)


def test_opcheck_and_bad_input():
    torch.manual_seed(3)
    x = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    factor = torch.tensor([1.5], dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(jet_add, (x, y, -1.0))
    torch.library.opcheck(jet_scale, (x, factor))
    with pytest.raises(ValueError, match=r"\(3, 5, 3\)"):
        jet_add(x, torch.randn(3, 5, 3, dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match=r"\(2,\)"):
        jet_scale(x, torch.ones(2, dtype=torch.float64))
