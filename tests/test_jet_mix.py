"""jets/mix.py: x + alpha (h - x) with its lean backward, against torch.lerp's autograd in float64."""

from __future__ import annotations

import pytest
import torch

from soap_kernels.jets.mix import mix
from tests.conftest import DEVICES


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 7, 33), (4, 257, 5)])
@pytest.mark.parametrize("alpha_shape", [(), (1,)])
def test_values_and_gradients_equal_lerps(shape, alpha_shape, device):
    generator = torch.Generator().manual_seed(sum(shape))
    x, h, g = (torch.randn(shape, generator=generator, dtype=torch.float64).to(device) for _ in range(3))
    alpha = torch.rand(alpha_shape, generator=generator, dtype=torch.float64).to(device)
    ours = [t.clone().requires_grad_(True) for t in (x, h, alpha)]
    theirs = [t.clone().requires_grad_(True) for t in (x, h, alpha)]
    out = mix(*ours)
    expected = torch.lerp(*theirs)
    torch.testing.assert_close(out, expected, rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(out, alpha * h + (1 - alpha) * x, rtol=1e-14, atol=1e-14)
    out.backward(g)
    expected.backward(g)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)
        assert a.grad.shape == b.grad.shape


def test_gradcheck_and_second_order():
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(s, generator=generator, dtype=torch.float64, requires_grad=True) for s in ((2, 3, 5),) * 2]
    alpha = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(mix, (*inputs, alpha))
    assert torch.autograd.gradgradcheck(mix, (*inputs, alpha))


def test_only_the_needed_gradients_are_formed():
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 3, 4, dtype=torch.float64)
    alpha = torch.tensor([0.5], dtype=torch.float64)
    mix(x, h, alpha).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 0.5))
    assert h.grad is None and alpha.grad is None


def test_bad_shapes_raise_naming_them():
    with pytest.raises(ValueError, match=r"x \(2, 3\) and h \(3, 2\)"):
        mix(torch.zeros(2, 3), torch.zeros(3, 2), torch.zeros(1))
    with pytest.raises(ValueError, match=r"alpha of shape \(2,\)"):
        mix(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2))


def test_a_float32_alpha_mixes_float64_stacks_and_gets_a_float32_gradient():
    generator = torch.Generator().manual_seed(1)
    x, h, g = (torch.randn(2, 5, 3, generator=generator, dtype=torch.float64) for _ in range(3))
    alpha = torch.tensor([0.25], requires_grad=True)
    x.requires_grad_(True)
    out = mix(x, h, alpha)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, x + 0.25 * (h - x), rtol=1e-15, atol=1e-15)
    out.backward(g)
    assert alpha.grad.dtype == torch.float32 and alpha.grad.shape == (1,)
    torch.testing.assert_close(alpha.grad, (g * (h - x)).sum().float().reshape(1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x.grad, 0.75 * g, rtol=1e-15, atol=1e-15)
