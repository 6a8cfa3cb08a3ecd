"""soap_kernels.jet against nested autograd (float64): values, parameter and input gradients, errors."""

import warnings

import pytest
import torch

import soap_kernels
from soap_kernels import nn as snn
from soap_kernels.jets import Jet, JetPlan, jet_autograd

ACTIVATIONS = ["tanh", "sin", "silu", "gelu"]
DERIVATIVES = [(0,), (1,), (1, 0), (1, 1), (1, 1, 1), (1, 1, 1, 1), (0, 1, 1), (0, 0, 1, 1)]


def _architectures(activation):
    """One small, oddly shaped instance of every architecture and embedding."""
    return {
        "mlp": snn.MLP(2, 1, hidden_features=7, hidden_layers=3, activation=activation),
        "mlp_rwf_fourier": snn.MLP(
            2, 2, 5, 2, activation, rwf=(1.0, 0.1), fourier_features=6, fourier_scale=1.5
        ),
        "mlp_periodic": snn.MLP(
            2, 1, 5, 2, activation, periodic_axes=[1], periodic_frequencies=[3.0], periodic_trainable=True
        ),
        "modified_mlp": snn.ModifiedMLP(2, 1, 7, 2, activation, rwf=(0.5, 0.1)),
        "piratenet": snn.PirateNet(
            2, 1, 6, 2, activation, alpha_init=0.4, fourier_trainable=False, periodic_axes=[0]
        ),
    }


def _weighted_sum(result, weights):
    return sum((value * weights[key]).sum() for key, value in result.items())


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_values_and_parameter_gradients_match_nested_autograd(activation):
    torch.manual_seed(1)
    for name, model in _architectures(activation).items():
        model = model.double()
        x = torch.rand(9, 2, dtype=torch.float64) * 2 - 1
        ours = soap_kernels.jet(model, x, DERIVATIVES, laplacian_axes=[0, 1])
        reference = jet_autograd(model, x, DERIVATIVES, laplacian_axes=[0, 1])
        assert ours.keys() == reference.keys()
        for key in ours:
            torch.testing.assert_close(ours[key], reference[key], rtol=1e-9, atol=1e-9, msg=f"{name} {key}")
        weights = {key: torch.randn_like(value) for key, value in ours.items()}
        params = [p for p in model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(_weighted_sum(ours, weights), params)
        expected = torch.autograd.grad(_weighted_sum(reference, weights), params)
        for p_name, g, e in zip([n for n, p in model.named_parameters() if p.requires_grad], grads, expected):
            torch.testing.assert_close(g, e, rtol=1e-8, atol=1e-9, msg=f"{name} d/d{p_name}")


def test_value_equals_forward_and_odd_shapes():
    torch.manual_seed(2)
    for n in (1, 33, 257):
        model = snn.MLP(3, 2, hidden_features=33, hidden_layers=2).double()
        x = torch.randn(n, 3, dtype=torch.float64)
        result = soap_kernels.jet(model, x, [(2,), (0, 1)])
        torch.testing.assert_close(result[()], model(x))
        assert result[(2,)].shape == (n, 2) and result[(0, 1)].shape == (n, 2)


def test_gradient_with_respect_to_x():
    torch.manual_seed(3)
    model = snn.ModifiedMLP(2, 1, 5, 2, "tanh").double()
    x = torch.rand(7, 2, dtype=torch.float64, requires_grad=True)
    ours = soap_kernels.jet(model, x, [(0,), (1, 1)])
    reference = jet_autograd(model, x, [(0,), (1, 1)])
    weights = {key: torch.randn_like(value) for key, value in ours.items()}
    (g,) = torch.autograd.grad(_weighted_sum(ours, weights), x)
    (e,) = torch.autograd.grad(_weighted_sum(reference, weights), x)
    torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-10)


class _ForwardJet(torch.nn.Module):
    """forward = model.forward_jet, so torch.func.functional_call can substitute the parameters."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, jet):
        return self.model.forward_jet(jet)


def test_gradcheck_small_case():
    torch.manual_seed(4)
    model = snn.PirateNet(2, 1, 4, 1, "tanh", alpha_init=0.5).double()
    x = torch.rand(3, 2, dtype=torch.float64)
    plan = JetPlan.build(2, [(0,), (1, 1)])
    caller = _ForwardJet(model)
    names = [f"model.{name}" for name, _ in model.named_parameters()]

    def residual(*values):
        out = torch.func.functional_call(caller, dict(zip(names, values)), (Jet.seed(x, plan),)).stack
        return out[plan.slot((0,))] - 0.1 * out[plan.slot((1, 1))] + out[0] ** 3

    inputs = tuple(p.detach().clone().requires_grad_(True) for p in model.parameters())
    assert torch.autograd.gradcheck(residual, inputs, eps=1e-6, atol=1e-6)


class _Plain(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def forward(self, x):
        return torch.tanh(self.layer(x)) ** 2


def test_unknown_model_falls_back_to_autograd_with_one_warning():
    torch.manual_seed(5)
    model = _Plain().double()
    x = torch.randn(4, 2, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="falling back to nested autograd"):
        first = soap_kernels.jet(model, x, [(0, 1)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = soap_kernels.jet(model, x, [(0, 1)])
    torch.testing.assert_close(first[(0, 1)], second[(0, 1)])
    # d2/dx0 dx1 tanh(w.x + b)^2 = w0 w1 (2 sech^4 - 4 tanh^2 sech^2)
    w = model.layer.weight[0]
    t = torch.tanh(model.layer(x))
    expected = w[0] * w[1] * (2 * (1 - t**2) ** 2 - 4 * t**2 * (1 - t**2))
    torch.testing.assert_close(first[(0, 1)], expected)


@pytest.mark.parametrize(
    "x, derivatives, error, match",
    [
        (torch.zeros(4), [(0,)], ValueError, "2-D"),
        (torch.zeros(4, 3), [(0,)], ValueError, "in_features=2"),
        (torch.zeros(4, 2, dtype=torch.long), [(0,)], TypeError, "floating-point"),
        ([[0.0, 0.0]], [(0,)], TypeError, "torch.Tensor"),
        (torch.zeros(4, 2), [(2,)], ValueError, "axis 2 is out of range"),
        (torch.zeros(4, 2), [(0, 0, 0, 0, 0)], ValueError, "order 5"),
        (torch.zeros(4, 2), (0, 1), TypeError, "list of index tuples"),
        (torch.zeros(4, 2), None, TypeError, "derivatives must be a list"),
        (torch.zeros(4, 2, dtype=torch.float64), [(0,)], TypeError, "model's parameters are torch.float32"),
    ],
)
def test_bad_input_raises_naming_it(x, derivatives, error, match):
    model = snn.MLP(2, 1, 3, 1)
    with pytest.raises(error, match=match):
        soap_kernels.jet(model, x, derivatives)


def test_model_must_be_a_module():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        soap_kernels.jet(lambda x: x, torch.zeros(3, 2), [(0,)])


def test_bad_laplacian_axes():
    with pytest.raises(ValueError, match="axis 5"):
        soap_kernels.jet(snn.MLP(2, 1, 3, 1), torch.zeros(3, 2), [], laplacian_axes=[5])
    with pytest.raises(ValueError, match="laplacian_axes is empty"):
        soap_kernels.jet(snn.MLP(2, 1, 3, 1), torch.zeros(3, 2), [], laplacian_axes=[])


def test_nested_autograd_frees_its_graph_without_the_cyclic_gc():
    """jet_autograd's results and create_graph gradients die with their last reference: a reference cycle there
    (a memoising closure that called itself) kept every step's graph alive until the cyclic GC ran, and a
    PirateNet training loop grew by about 1 GB per step."""
    import gc
    import weakref

    model = snn.PirateNet(2, 1, 6, 2, "tanh", alpha_init=0.4)
    x = torch.rand(9, 2)
    gc.collect()
    gc.disable()
    try:
        result = jet_autograd(model, x, [(0,), (1, 1)])
        watched = [weakref.ref(result[()]), weakref.ref(result[(1, 1)])]
        del result
        assert all(ref() is None for ref in watched)
    finally:
        gc.enable()
