"""soap_kernels.nn architectures: structure, initialisation and argument checks."""

import copy
import math

import pytest
import torch

from soap_kernels import nn as snn


def test_mlp_shapes_and_layer_count():
    model = snn.MLP(3, 2, hidden_features=7, hidden_layers=4)
    assert model(torch.randn(11, 3)).shape == (11, 2)
    assert len(model.hidden) == 4 and model.output.activation is None


def test_rwf_starts_at_the_glorot_weight_and_trains_scale_and_direction():
    torch.manual_seed(0)
    layer = snn.Dense(5, 4, "tanh", rwf=(1.0, 0.1))
    names = {name for name, _ in layer.named_parameters()}
    assert names == {"scale", "direction", "bias"}
    assert (layer.scale > math.exp(0.5)).all()  # g = exp(N(1, 0.1))
    x = torch.randn(3, 5)
    expected = torch.tanh(x @ (layer.scale[:, None] * layer.direction).t())
    torch.testing.assert_close(layer(x), expected)


def test_fourier_features_trainable_or_fixed():
    trainable = snn.FourierFeatures(2, 6, scale=2.0)
    fixed = snn.FourierFeatures(2, 6, scale=2.0, trainable=False)
    assert [n for n, _ in trainable.named_parameters()] == ["frequencies"]
    assert list(fixed.parameters()) == [] and "frequencies" in dict(fixed.named_buffers())
    x = torch.randn(4, 2)
    z = x @ fixed.frequencies
    torch.testing.assert_close(fixed(x), torch.cat([torch.cos(z), torch.sin(z)], dim=1))


def test_periodic_embedding_is_periodic_in_its_axis_only():
    embedding = snn.PeriodicEmbedding(2, axes=[1], frequencies=[math.pi])  # period 2 in x_1
    x = torch.randn(5, 2, dtype=torch.float64)
    shifted = x + torch.tensor([0.0, 2.0], dtype=torch.float64)
    embedding = embedding.double()
    embedding.frequencies.fill_(math.pi)  # exact in float64, not the float32 rounding of pi
    torch.testing.assert_close(embedding(x), embedding(shifted))
    assert embedding(x).shape == (5, 3)
    torch.testing.assert_close(embedding(x)[:, 0], x[:, 0])


def test_modified_mlp_gates():
    model = snn.ModifiedMLP(2, 1, hidden_features=5, hidden_layers=2, activation="sin")
    x = torch.randn(4, 2)
    u, v = model.gate_u(x), model.gate_v(x)
    h = x
    for layer in model.hidden:
        a = layer(h)
        h = a * u + (1 - a) * v
    torch.testing.assert_close(model(x), model.output(h))


def test_piratenet_is_identity_blocks_at_initialisation():
    torch.manual_seed(0)
    model = snn.PirateNet(2, 1, hidden_features=8, blocks=3)
    x = torch.randn(6, 2)
    torch.testing.assert_close(model.features(x), model.embedding(x))
    assert [b.alpha.item() for b in model.blocks] == [0.0, 0.0, 0.0]


def test_piratenet_physics_informed_init_fits_least_squares():
    torch.manual_seed(0)
    model = snn.PirateNet(1, 1, hidden_features=16, blocks=1, rwf=(1.0, 0.1)).double()
    x = torch.linspace(-1, 1, 64, dtype=torch.float64)[:, None]
    y = x**2 * torch.cos(math.pi * x)
    model.physics_informed_init(x, y)
    features = model.features(x)
    best = torch.linalg.lstsq(features, y).solution
    torch.testing.assert_close(model(x), features @ best)
    assert model.output.bias.abs().max() == 0
    with pytest.raises(ValueError, match="y has shape"):
        model.physics_informed_init(x, y[:, 0])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_piratenet_physics_informed_init_on_cuda_equals_the_cpu_fit_even_with_few_points():
    # CUDA's lstsq driver (gels) assumes full rank and refuses fewer rows than columns: the fit runs on the CPU
    torch.manual_seed(0)
    model = snn.PirateNet(1, 1, hidden_features=32, blocks=1, rwf=(1.0, 0.1)).double()
    x = torch.linspace(-1, 1, 20, dtype=torch.float64)[:, None]  # 20 points, 32 features
    y = x**2 * torch.cos(math.pi * x)
    on_gpu = copy.deepcopy(model).cuda()
    model.physics_informed_init(x, y)
    on_gpu.physics_informed_init(x.cuda(), y.cuda())
    torch.testing.assert_close(on_gpu(x.cuda()).cpu(), model(x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: snn.MLP(0, 1), "in_features"),
        (lambda: snn.MLP(2, 1, hidden_layers=0), "hidden_layers"),
        (lambda: snn.MLP(2, 1, activation="relu"), "relu"),
        (lambda: snn.MLP(2, 1, fourier_features=5), "even"),
        (lambda: snn.MLP(2, 1, periodic_axes=[2]), "periodic axis 2"),
        (lambda: snn.PirateNet(2, 1, hidden_features=8, fourier_features=None), "embedding width"),
        (lambda: snn.Dense(2, 2, rwf=(1.0, -1.0)), "rwf"),
    ],
)
def test_bad_arguments_raise_naming_them(build, match):
    with pytest.raises(ValueError, match=match):
        build()
