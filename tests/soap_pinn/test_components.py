"""Small pieces of the trainer: derivatives, models, schedule, weighting, sampling, grid layout."""

import math

import numpy as np
import pytest
import torch
from soap_pinn.derivatives import evaluate, nested_autograd
from soap_pinn.models import EmbeddedMLP, ModelSpec, build_model
from soap_pinn.pdes import grid_points
from soap_pinn.sampling import BoxSampler
from soap_pinn.schedule import lr_factor
from soap_pinn.weighting import (
    causal_residual_losses,
    causal_weights,
    chunk_square_sums,
    grad_norm_weights,
    residual_losses_from_sums,
    update_weights,
)

SPEC = ModelSpec(input_dim=2, output_dim=1, hidden_features=8, hidden_layers=2, periodic_axes={1: math.pi},
                 fourier_features=8, fourier_scale=1.0)
DERIVATIVES = [(0,), (1,), (1, 1), (0, 1), (1, 1, 1), (1, 1, 1, 1)]


@pytest.mark.parametrize("architecture", ["auto", "local"])
def test_evaluate_matches_nested_autograd_in_float64(architecture):
    model = build_model(SPEC, seed=3, architecture=architecture).double()
    x = torch.rand(7, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ours = evaluate(model, x, DERIVATIVES)
    oracle = nested_autograd(model, x, DERIVATIVES)
    assert set(ours) == set(oracle) == {(), *DERIVATIVES}
    for key in oracle:
        torch.testing.assert_close(ours[key], oracle[key], rtol=1e-9, atol=1e-9)


def test_nested_autograd_on_a_known_function():
    class Known(torch.nn.Module):  # u = sin(2 t) x^3
        def forward(self, x):
            return (torch.sin(2 * x[:, 0]) * x[:, 1] ** 3)[:, None]

    x = torch.tensor([[0.3, 0.7], [1.1, -0.4]], dtype=torch.float64)
    d = nested_autograd(Known(), x, [(0,), (1, 1), (0, 1), (1, 1, 1, 1)])
    t, s = x[:, 0], x[:, 1]
    torch.testing.assert_close(d[(0,)][:, 0], 2 * torch.cos(2 * t) * s**3)
    torch.testing.assert_close(d[(1, 1)][:, 0], 6 * torch.sin(2 * t) * s)
    torch.testing.assert_close(d[(0, 1)][:, 0], 6 * torch.cos(2 * t) * s**2)
    torch.testing.assert_close(d[(1, 1, 1, 1)][:, 0], torch.zeros(2, dtype=torch.float64))


def test_nested_autograd_frees_its_graph_without_the_cyclic_gc():
    """The results die with their last reference (a self-calling memoising closure made a reference cycle that
    kept every step's create_graph graph alive until the cyclic GC ran)."""
    import gc
    import weakref

    model = build_model(SPEC, seed=3, architecture="local")
    x = torch.rand(5, 2)
    gc.collect()
    gc.disable()
    try:
        d = nested_autograd(model, x, DERIVATIVES)
        watched = [weakref.ref(d[()]), weakref.ref(d[(1, 1, 1, 1)])]
        del d
        assert all(ref() is None for ref in watched)
    finally:
        gc.enable()


def test_models_are_seeded_and_periodic():
    a, b = build_model(SPEC, seed=1), build_model(SPEC, seed=1)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), build_model(SPEC, seed=2).parameters()))
    x = torch.tensor([[0.2, -1.0], [0.2, 1.0]])  # x = -1 and 1 are the same point of the periodic domain
    for model in (a, EmbeddedMLP(SPEC, seed=0)):
        u = model(x)
        torch.testing.assert_close(u[0], u[1], rtol=1e-5, atol=1e-6)


def test_physics_informed_init_fits_targets():
    model = build_model(SPEC, seed=0).double()
    x = torch.rand(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    target = model.features(x) @ torch.arange(8, dtype=torch.float64)[:, None]  # exactly representable
    model.physics_informed_init(x, target)
    torch.testing.assert_close(model(x), target, rtol=1e-6, atol=1e-6)


def test_schedule_warmup_then_exponential_decay():
    assert lr_factor(0, 100, 500, 0.9) == 0.0
    assert lr_factor(50, 100, 500, 0.9) == pytest.approx(0.5)
    assert lr_factor(100, 100, 500, 0.9) == pytest.approx(1.0)
    assert lr_factor(600, 100, 500, 0.9) == pytest.approx(0.9)
    assert lr_factor(1100, 100, 500, 0.9) == pytest.approx(0.81)
    assert lr_factor(0, 0, 500, 0.9) == 1.0


def test_causal_weights():
    losses = torch.tensor([1.0, 2.0, 3.0])
    torch.testing.assert_close(causal_weights(losses, 0.5), torch.exp(-0.5 * torch.tensor([0.0, 1.0, 3.0])))
    r = torch.arange(8.0)  # chunks [0,1,2,3], [4,5,6,7]: chunk losses 3.5 and 31.5
    (loss,), weights = causal_residual_losses([r], chunks=2, tol=0.1)
    torch.testing.assert_close(weights, torch.tensor([1.0, math.exp(-0.35)]))
    assert loss.item() == pytest.approx((3.5 + math.exp(-0.35) * 31.5) / 2)
    (plain,), none = causal_residual_losses([r], chunks=2, tol=None)
    assert none is None and plain.item() == pytest.approx((r**2).mean().item())
    # a system: the elementwise minimum of the terms' weights, shared by both terms
    other = torch.tensor([3.0, 3.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])  # chunk losses 4.5 and 1
    (_, _), shared = causal_residual_losses([r, other], chunks=2, tol=0.1)
    torch.testing.assert_close(shared, torch.tensor([1.0, math.exp(-0.45)]))
    with pytest.raises(ValueError, match="not divisible"):
        causal_residual_losses([torch.ones(7)], chunks=2, tol=1.0)


def test_grad_norm_weights():
    grads = {"a": [torch.tensor([3.0, 4.0])], "b": [torch.tensor([1.0]), torch.tensor([0.0])]}  # norms 5, 1
    weights = grad_norm_weights(grads)
    assert weights["a"].item() == pytest.approx(3.0 / (5 + 3e-5))
    assert weights["b"].item() == pytest.approx(3.0 / (1 + 3e-5))
    moved = update_weights({"a": torch.tensor(1.0), "b": torch.tensor(1.0)}, weights, momentum=0.9)
    assert moved["a"].item() == pytest.approx(0.9 + 0.1 * weights["a"].item())


def test_sampler_bounds_order_and_chunks():
    sampler = BoxSampler([(0.0, 0.5), (-1.0, 1.0)], batch_size=256, seed=0, chunks=8)
    first, causal = sampler.sample(3, torch.float32, torch.device("cpu"), causal_chunks=4)
    assert first.shape == (256, 2)
    assert torch.all(first[1:, 0] >= first[:-1, 0])  # sorted by t
    assert first[:, 0].min() >= 0 and first[:, 0].max() <= 0.5 and first[:, 1].abs().max() <= 1
    assert causal.tolist() == [i // 64 for i in range(256)]
    # no state: step 3 again gives the same points, step 4 others
    assert torch.equal(sampler.sample(3, torch.float32, torch.device("cpu"))[0], first)
    assert not torch.equal(sampler.sample(4, torch.float32, torch.device("cpu"))[0], first)
    # ranks 0 and 1 of 2 split the same global batch, keeping each point's causal chunk
    parts = [sampler.sample(3, torch.float64, torch.device("cpu"), r, 2, causal_chunks=4) for r in range(2)]
    assert sum(len(p) for p, _ in parts) == 256
    merged = torch.cat([p for p, _ in parts])
    order = torch.argsort(merged[:, 0])
    torch.testing.assert_close(merged[order].float(), first, rtol=0, atol=0)
    assert torch.equal(torch.cat([c for _, c in parts])[order], causal)
    with pytest.raises(ValueError, match="world size 3 must divide the sample chunk count 8"):
        sampler.sample(3, torch.float32, torch.device("cpu"), 0, 3)
    with pytest.raises(ValueError, match="batch_size 100 must be divisible by the sample chunk count 8"):
        BoxSampler([(0.0, 1.0)], batch_size=100, seed=0, chunks=8)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sampler_on_cuda_draws_the_cpu_points_without_blocking():
    """The CUDA copies go from pinned memory without blocking (no stream synchronisation per step); the points
    are the CPU ones, also when the stream is busy while they are copied."""
    sampler = BoxSampler([(0.0, 0.5), (-1.0, 1.0)], batch_size=4096, seed=0, chunks=8)
    busy = torch.randn(4096, 4096, device="cuda")
    for step in range(3):
        busy = busy @ busy / 64.0  # queue work before the copies
        points, causal = sampler.sample(step, torch.float32, torch.device("cuda"), causal_chunks=4)
        expected_points, expected_causal = sampler.sample(step, torch.float32, torch.device("cpu"), causal_chunks=4)
        assert torch.equal(points.cpu(), expected_points) and torch.equal(causal.cpu(), expected_causal)


def test_chunk_sums_reproduce_the_causal_losses_and_add_up_over_ranks():
    generator = torch.Generator().manual_seed(0)
    r = torch.randn(16, dtype=torch.float64, generator=generator)
    index = torch.arange(16) // 4
    sums = chunk_square_sums([r], index, 4)
    (expected,), weights = causal_residual_losses([r], chunks=4, tol=0.5)
    local, total, shared = residual_losses_from_sums(sums, sums, 16, tol=0.5)
    torch.testing.assert_close(total[0], expected)
    torch.testing.assert_close(shared, weights)
    # two "ranks" holding alternate points: their local losses add up to the global loss
    halves = [chunk_square_sums([r[k::2]], index[k::2], 4) for k in range(2)]
    parts = [residual_losses_from_sums(h, halves[0] + halves[1], 16, tol=0.5)[0] for h in halves]
    torch.testing.assert_close(parts[0] + parts[1], expected.reshape(1))
    plain, _, none = residual_losses_from_sums(sums, sums, 16, tol=None)
    torch.testing.assert_close(plain[0], (r**2).mean())
    assert none is None


def test_grid_points_layout_matches_reference_arrays():
    t, x, y = np.array([0.0, 1.0]), np.array([10.0, 20.0, 30.0]), np.array([-1.0, -2.0])
    points = grid_points(t, (x, y)).reshape(2, 2, 3, 3)  # [t, y, x, (t, x, y)]
    assert points[1, 0, 2].tolist() == [1.0, 30.0, -1.0]
    assert points[0, 1, 0].tolist() == [0.0, 10.0, -2.0]
