"""soap_kernels::jet_dense_activation(_backward): registration, first-order backward, torch.compile."""

import pytest
import torch

import soap_kernels
from soap_kernels import nn as snn
from soap_kernels.jets import JetPlan
from soap_kernels.jets.reference import activation_jet_ref, linear_jet_ref
from soap_kernels.ops.jet_dense import jet_dense_activation, jet_dense_activation_backward

PLANS = [JetPlan.build(2, [(0,), (1, 1)]), JetPlan.build(2, [(0, 1), (1, 1, 1, 1)], laplacian_axes=[0, 1])]


def _inputs(plan, n=5, f_in=7, f_out=3, requires_grad=True):
    x = torch.randn(plan.num_slots, n, f_in, dtype=torch.float64, requires_grad=requires_grad)
    w = torch.randn(f_out, f_in, dtype=torch.float64, requires_grad=requires_grad)
    b = torch.randn(f_out, dtype=torch.float64, requires_grad=requires_grad)
    return x, w, b


@pytest.mark.parametrize("plan", PLANS, ids=["allen_cahn", "mixed_fourth_laplacian"])
@pytest.mark.parametrize("activation", ["tanh", "sin", "silu", "gelu"])
def test_custom_backward_equals_autograd_through_the_reference(plan, activation):
    torch.manual_seed(0)
    x, w, b = _inputs(plan)
    h, _ = jet_dense_activation(x, w, b, activation, plan.key, "torch")
    expected = activation_jet_ref(linear_jet_ref(x, w, b), activation, plan)
    torch.testing.assert_close(h, expected)
    g = torch.randn_like(h)
    ours = torch.autograd.grad(h, (x, w, b), g)
    theirs = torch.autograd.grad(expected, (x, w, b), g)
    for a, e, name in zip(ours, theirs, "xwb"):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("plan", PLANS, ids=["allen_cahn", "mixed_fourth_laplacian"])
def test_opcheck_forward(plan):
    torch.manual_seed(1)
    for bias in (True, False):
        x, w, b = _inputs(plan)
        torch.library.opcheck(jet_dense_activation, (x, w, b if bias else None, "tanh", plan.key, "torch"))


def test_opcheck_backward():
    torch.manual_seed(2)
    plan = PLANS[0]
    x, w, _ = _inputs(plan, requires_grad=False)
    z = linear_jet_ref(x, w, None)
    g = torch.randn_like(z)
    for compute_grad_x in (True, False):
        torch.library.opcheck(jet_dense_activation_backward, (g, z, x, w, "gelu", plan.key, "torch", compute_grad_x))


def test_gradcheck_op():
    torch.manual_seed(3)
    plan = PLANS[1]
    x, w, b = _inputs(plan, n=2, f_in=3, f_out=2)
    assert torch.autograd.gradcheck(lambda *a: jet_dense_activation(*a, "sin", plan.key, "torch")[0], (x, w, b))


def test_shape_errors_name_the_tensor():
    plan = PLANS[0]
    x, w, b = _inputs(plan, requires_grad=False)
    with pytest.raises(ValueError, match="weight shape"):
        jet_dense_activation(x, w.t(), b, "tanh", plan.key, "torch")
    with pytest.raises(ValueError, match=r"expected \[4, N, F\]"):
        jet_dense_activation(x[:2], w, b, "tanh", plan.key, "torch")


@pytest.mark.parametrize("backend", ["torch", "auto"])  # auto: the C++ kernels when soap_kernels._C is built
@pytest.mark.parametrize("model_name", ["mlp", "piratenet"])
def test_residual_loss_under_torch_compile_matches_eager(backend, model_name):
    """aot_eager traces the ops through their fakes and registered autograd (no C++ compiler needed)."""
    torch.manual_seed(4)
    if model_name == "mlp":
        model = snn.MLP(2, 1, 6, 2).double()
    else:  # gated products of jets: the Leibniz product op
        model = snn.PirateNet(2, 1, 6, 1, "tanh", rwf=(1.0, 0.1), alpha_init=0.5).double()
    x = torch.rand(5, 2, dtype=torch.float64)

    def loss():
        r = soap_kernels.jet(model, x, [(0,), (1, 1)], backend=backend)
        return ((r[(0,)] - 1e-4 * r[(1, 1)] + 5 * r[()] ** 3 - 5 * r[()]) ** 2).mean()

    eager = torch.autograd.grad(loss(), list(model.parameters()))
    compiled_loss = torch.compile(loss, backend="aot_eager", fullgraph=True)
    compiled = torch.autograd.grad(compiled_loss(), list(model.parameters()))
    for a, e in zip(compiled, eager):
        torch.testing.assert_close(a, e)


def test_jet_activation_and_product_rules_against_autograd():
    """Jet.activation (functional reference) and the Leibniz product on the input jet itself."""
    from soap_kernels.jets import Jet

    torch.manual_seed(5)
    x = torch.rand(6, 2, dtype=torch.float64)
    plan = JetPlan.build(2, [(0, 1), (1, 1, 1)], laplacian_axes=[0, 1])
    seed = Jet.seed(x, plan)
    field = (seed.activation("gelu") * seed.activation("sin")).stack.sum(-1)  # sum_i gelu(x_i) sin(x_i)

    def f(points):
        return (torch.nn.functional.gelu(points, approximate="tanh") * torch.sin(points)).sum(-1, keepdim=True)

    from soap_kernels.jets import jet_autograd

    class _F(torch.nn.Module):
        def forward(self, points):
            return f(points)

    expected = jet_autograd(_F(), x, [(0, 1), (1, 1, 1)], laplacian_axes=[0, 1])
    torch.testing.assert_close(field[plan.slot((0, 1))], expected[(0, 1)][:, 0])
    torch.testing.assert_close(field[plan.slot((1, 1, 1))], expected[(1, 1, 1)][:, 0])
    torch.testing.assert_close(field[plan.laplacian_slot], expected["laplacian"][:, 0])
