"""Activation derivative towers against repeated autograd differentiation, float64."""

import pytest
import torch

from soap_kernels.jets.activations import ACTIVATIONS, MAX_TOWER, activation_function, activation_tower


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_tower_matches_repeated_autograd(name):
    z = torch.linspace(-3, 3, 41, dtype=torch.float64, requires_grad=True)
    tower = activation_tower(name, z, MAX_TOWER)
    current = activation_function(name)(z)
    for order in range(MAX_TOWER + 1):
        torch.testing.assert_close(tower[order], current, rtol=1e-10, atol=1e-10, msg=f"{name} order {order}")
        (current,) = torch.autograd.grad(current.sum(), z, create_graph=True)


def test_unknown_activation_and_order():
    with pytest.raises(ValueError, match="relu"):
        activation_function("relu")
    with pytest.raises(ValueError, match="order 6"):
        activation_tower("tanh", torch.zeros(1), 6)
    with pytest.raises(TypeError, match="string"):
        activation_function(None)
