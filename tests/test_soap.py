"""soap_kernels.SOAP against the independent float64 specification (tests/soap_spec.py) and its contracts."""

from __future__ import annotations

import copy
import io

import pytest
import torch

from soap_kernels import SOAP
from soap_kernels._backend import triton_available
from soap_kernels.optim.layout import merged_shape, precondition_plan
from tests.soap_spec import SpecSOAP, spec_merge

STEPS = 27  # crosses several refreshes at the frequencies used below


def _run_pair(shapes, steps=STEPS, seed=0, dtype=torch.float64, **settings):
    """Step soap_kernels.SOAP and SpecSOAP on identical gradients; return both parameter lists and both."""
    generator = torch.Generator().manual_seed(seed)
    init = [torch.randn(s, generator=generator, dtype=dtype) for s in shapes]
    ours = [torch.nn.Parameter(x.clone()) for x in init]
    theirs = [x.clone() for x in init]
    optimizer = SOAP(ours, **settings)
    spec = SpecSOAP(theirs, **{k: v for k, v in settings.items() if k not in ("backend", "refresh")})
    for _ in range(steps):
        grads = [torch.randn(s, generator=generator, dtype=dtype) for s in shapes]
        for p, g in zip(ours, grads):
            p.grad = g.clone()
        optimizer.step()
        spec.step(grads)
    return ours, theirs, optimizer, spec


def _assert_close(ours, theirs, rtol=1e-9, atol=1e-11):
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.detach(), b, rtol=rtol, atol=atol)


# Full-rank shapes: every Kronecker factor is full rank from the first step (square matrices, tensors with
# each dim <= the product of the others), so the trajectory is unique up to rounding.
FULL_RANK_CASES = [
    pytest.param([(7, 7), (12, 12), (1, 1)], dict(precondition_frequency=3), id="square-matrices"),
    pytest.param([(3, 4, 5), (2, 3, 2, 3)], dict(precondition_frequency=4), id="3d-4d"),
    pytest.param([(6, 40), (40, 6)], dict(max_precond_dim=10, precondition_frequency=2), id="dim-above-max"),
    pytest.param([(2, 3, 4, 5), (5, 5)], dict(merge_dims=True, max_precond_dim=12, precondition_frequency=3),
                 id="merge-dims"),  # fmt: skip
    pytest.param([(33,), (), (5, 5)], dict(precondition_frequency=2), id="1d-unpreconditioned-and-scalar"),
    pytest.param([(9, 9)], dict(shampoo_beta=0.8, betas=(0.9, 0.99), precondition_frequency=5), id="shampoo-beta"),
    pytest.param([(8, 8), (2, 4, 4)], dict(correct_bias=False, weight_decay=0.1, lr=1e-2), id="no-bias-correction"),
    pytest.param([(6, 6), (7,)], dict(normalize_grads=True, precondition_frequency=2), id="normalize-grads"),
    pytest.param([(10, 10)], dict(lr=0.05, weight_decay=0.0, precondition_frequency=1), id="freq-1"),
]


@pytest.mark.parametrize("shapes, settings", FULL_RANK_CASES)
def test_trajectory_matches_specification_float64(shapes, settings):
    ours, theirs, _, _ = _run_pair(shapes, **settings)
    _assert_close(ours, theirs)


def test_backends_torch_and_native_agree_float64():
    shapes = [(7, 7), (3, 4, 5), (11,)]
    native, _, _, _ = _run_pair(shapes, precondition_frequency=3)
    reference, _, _, _ = _run_pair(shapes, precondition_frequency=3, backend="torch")
    _assert_close(native, [p.detach() for p in reference], rtol=1e-12, atol=1e-14)


def test_float32_trajectory_close_to_float64_specification():
    shapes = [(16, 16), (4, 6, 5)]
    ours, theirs, _, _ = _run_pair(shapes, dtype=torch.float32, precondition_frequency=3)
    spec_params = []
    generator = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=generator).double() for s in shapes]
    spec = SpecSOAP(init, precondition_frequency=3)
    for _ in range(STEPS):
        spec.step([torch.randn(s, generator=generator).double() for s in shapes])
    spec_params = spec.params
    for a, b in zip(ours, spec_params):
        torch.testing.assert_close(a.detach().double(), b, rtol=1e-4, atol=1e-5)
    assert all(p.dtype == torch.float32 for p in ours)


@pytest.mark.parametrize(
    "shapes, settings",
    [
        pytest.param([(12,), (5,)], dict(precondition_1d=True, precondition_frequency=2), id="1d-preconditioned"),
        pytest.param([(3, 20), (20, 3)], dict(precondition_frequency=3), id="non-square"),
    ],
)
def test_rank_deficient_factors_keep_basis_independent_invariants(shapes, settings):
    """Where a factor is rank deficient the basis inside its null space is arbitrary, so compare what is not:
    the factors L (EMA of G G^T), the momentum in parameter coordinates, orthonormal bases, finite parameters."""
    ours, _, optimizer, spec = _run_pair(shapes, **settings)
    for k, p in enumerate(ours):
        state = optimizer.state[p]
        for ours_factor, spec_factor in zip(state["GG"], spec.state[k]["L"]):
            if spec_factor is None:
                assert ours_factor is None
                continue
            torch.testing.assert_close(ours_factor, spec_factor, rtol=1e-10, atol=1e-12)
        for basis in state["Q"]:
            if basis is not None:
                eye = torch.eye(basis.shape[0], dtype=basis.dtype)
                torch.testing.assert_close(basis.T @ basis, eye, rtol=0, atol=1e-12)
        m = state["exp_avg"].reshape(spec.state[k]["m"].shape)
        for d, basis in enumerate(state["Q"]):  # back to parameter coordinates
            if basis is not None:
                m = torch.movedim(torch.tensordot(m, basis, dims=([d], [1])), -1, d)
        torch.testing.assert_close(m, spec.plain_momentum(k), rtol=1e-9, atol=1e-11)
        assert torch.isfinite(p).all()
        assert (state["exp_avg_sq"] >= 0).all()


def test_first_step_only_initialises():
    p = torch.nn.Parameter(torch.randn(5, 5, dtype=torch.float64))
    before = p.detach().clone()
    optimizer = SOAP([p])
    p.grad = torch.randn(5, 5, dtype=torch.float64)
    optimizer.step()
    assert torch.equal(p.detach(), before)
    state = optimizer.state[p]
    assert state["step"] == 0
    expected = (1 - 0.95) * p.grad @ p.grad.T
    torch.testing.assert_close(state["GG"][0], expected)


def test_merged_shape_matches_specification():
    for shape, limit in [((128, 64, 3, 3), 10000), ((2, 3, 4, 5), 12), ((20000, 3), 10000), ((5,), 2), ((4, 5), 10)]:
        assert list(merged_shape(shape, limit)) == spec_merge(shape, limit)
    assert precondition_plan((4, 5), 10000, True, False).view_shape == (20,)
    assert precondition_plan((7,), 10000, False, False).factored == (False,)
    assert precondition_plan((), 10, True, True).view_shape == ()


def test_param_groups_have_their_own_hyperparameters():
    a = torch.nn.Parameter(torch.randn(6, 6, dtype=torch.float64))
    b = torch.nn.Parameter(torch.randn(6, 6, dtype=torch.float64))
    a_ref, b_ref = a.detach().clone(), b.detach().clone()
    optimizer = SOAP([{"params": [a], "lr": 1e-2}, {"params": [b], "lr": 1e-3, "precondition_frequency": 2}])
    spec_a = SpecSOAP([a_ref], lr=1e-2)
    spec_b = SpecSOAP([b_ref], lr=1e-3, precondition_frequency=2)
    generator = torch.Generator().manual_seed(3)
    for _ in range(12):
        ga, gb = torch.randn(6, 6, generator=generator, dtype=torch.float64), torch.randn(
            6, 6, generator=generator, dtype=torch.float64
        )
        a.grad, b.grad = ga.clone(), gb.clone()
        optimizer.step()
        spec_a.step([ga])
        spec_b.step([gb])
    _assert_close([a, b], [a_ref, b_ref])


def test_parameters_without_gradients_are_skipped_and_join_later():
    shapes = [(5, 5), (5, 5)]
    a, b = (torch.nn.Parameter(torch.randn(s, dtype=torch.float64)) for s in shapes)
    b_before = b.detach().clone()
    optimizer = SOAP([a, b], precondition_frequency=2)
    spec_a, spec_b = SpecSOAP([a.detach().clone()], precondition_frequency=2), None
    generator = torch.Generator().manual_seed(1)
    for step in range(10):
        ga = torch.randn(5, 5, generator=generator, dtype=torch.float64)
        a.grad = ga.clone()
        spec_a.step([ga])
        if step >= 4:  # b gets gradients only from step 4 on: its own step count, its own stack
            if spec_b is None:
                spec_b = SpecSOAP([b.detach().clone()], precondition_frequency=2)
            gb = torch.randn(5, 5, generator=generator, dtype=torch.float64)
            b.grad = gb.clone()
            spec_b.step([gb])
        else:
            b.grad = None
        optimizer.step()
        if step < 4:
            assert torch.equal(b.detach(), b_before) and len(optimizer.state[b]) == 0
    _assert_close([a, b], [spec_a.params[0], spec_b.params[0]])


def test_closure_is_called_with_grad_enabled():
    p = torch.nn.Parameter(torch.randn(4, 4))
    optimizer = SOAP([p])

    def closure():
        optimizer.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    assert loss.requires_grad and p.grad is not None


def _snapshot(optimizer, params):
    return [p.detach().clone() for p in params], copy.deepcopy(optimizer.state_dict()["state"])


def _assert_same_state(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same_state(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        for x, y in zip(a, b):
            _assert_same_state(x, y)
    else:
        assert a == b


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_gradient_skips_the_step_without_changing_state(bad):
    params = [torch.nn.Parameter(torch.randn(s)) for s in [(6, 6), (3, 4, 5), (7,)]]
    optimizer = SOAP(params, precondition_frequency=2, precondition_1d=True)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator)
        optimizer.step()
    before_params, before_state = _snapshot(optimizer, params)
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator)
    params[2].grad[3] = bad  # one bad entry in one tensor skips the whole step (a refresh step: t = 4)
    optimizer.step()
    after_params, after_state = _snapshot(optimizer, params)
    for x, y in zip(before_params, after_params):
        assert torch.equal(x, y)
    for key in before_state:
        state_before = {k: v for k, v in before_state[key].items() if k != "step"}
        state_after = {k: v for k, v in after_state[key].items() if k != "step"}
        _assert_same_state(state_before, state_after)
    assert int(optimizer.skipped_steps) == 1
    for p in params:  # and it goes on normally afterwards
        p.grad = torch.randn(p.shape, generator=generator)
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in params)
    assert not all(torch.equal(x, p.detach()) for x, p in zip(before_params, params))


def _train(params, optimizer, generator, steps):
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator, dtype=p.dtype)
        optimizer.step()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_resumed_run_equals_uninterrupted_run(dtype):
    """Bitwise: a checkpointed and reloaded optimizer continues exactly like one that never stopped (the learning
    rate changes every step, as under a scheduler; (1, 64) caught a basis layout that differed after loading)."""
    shapes = [(6, 6), (3, 4, 5), (7,), (), (1, 64), (64,), (64,)]
    settings = dict(precondition_frequency=2, precondition_1d=True)

    def train(params, optimizer, generator, steps, start):
        for step in range(start, start + steps):
            for group in optimizer.param_groups:
                group["lr"] = 1e-3 * 0.9**step
            for p in params:
                p.grad = torch.randn(p.shape, generator=generator, dtype=p.dtype)
            optimizer.step()

    init = [torch.randn(s, dtype=dtype) for s in shapes]
    straight = [torch.nn.Parameter(x.clone()) for x in init]
    train(straight, SOAP(straight, **settings), torch.Generator().manual_seed(5), 20, 0)

    first = [torch.nn.Parameter(x.clone()) for x in init]
    generator = torch.Generator().manual_seed(5)
    optimizer = SOAP(first, **settings)
    train(first, optimizer, generator, 11, 0)
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in first], "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = [torch.nn.Parameter(x.clone()) for x in saved["params"]]
    optimizer = SOAP(resumed, **settings)
    optimizer.load_state_dict(saved["optimizer"])
    train(resumed, optimizer, generator, 9, 11)
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)


def test_bf16_parameters_keep_float32_state_across_load():
    params = [torch.nn.Parameter(torch.randn(8, 8).to(torch.bfloat16)), torch.nn.Parameter(torch.randn(8).bfloat16())]
    optimizer = SOAP(params, precondition_1d=True, precondition_frequency=2)
    _train(params, optimizer, torch.Generator().manual_seed(0), 5)
    state = optimizer.state_dict()
    assert state["state"][0]["exp_avg"].dtype == torch.float32
    fresh = [torch.nn.Parameter(p.detach().clone()) for p in params]
    restored = SOAP(fresh, precondition_1d=True, precondition_frequency=2)
    restored.load_state_dict(state)
    for key in ("exp_avg", "exp_avg_sq"):
        assert restored.state[fresh[0]][key].dtype == torch.float32
        assert torch.equal(restored.state[fresh[0]][key], optimizer.state[params[0]][key])
    assert restored.state[fresh[0]]["Q"][0].dtype == torch.float32
    _train(fresh, restored, torch.Generator().manual_seed(1), 3)
    _train(params, optimizer, torch.Generator().manual_seed(1), 3)
    for a, b in zip(params, fresh):
        assert a.dtype == torch.bfloat16 and torch.equal(a, b)


def test_float64_state_is_float64():
    p = torch.nn.Parameter(torch.randn(5, 5, dtype=torch.float64))
    optimizer = SOAP([p])
    _train([p], optimizer, torch.Generator().manual_seed(0), 3)
    state = optimizer.state[p]
    assert state["exp_avg"].dtype == state["GG"][0].dtype == state["Q"][0].dtype == torch.float64


@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        (dict(lr=-1e-3), ValueError, "-0.001"),
        (dict(betas=(1.0, 0.9)), ValueError, "1.0"),
        (dict(betas=(0.9, -0.1)), ValueError, "-0.1"),
        (dict(betas=0.9), TypeError, "0.9"),
        (dict(eps=-1.0), ValueError, "-1.0"),
        (dict(weight_decay=-0.5), ValueError, "-0.5"),
        (dict(precondition_frequency=0), ValueError, "0"),
        (dict(precondition_frequency=2.5), TypeError, "2.5"),
        (dict(max_precond_dim=0), ValueError, "0"),
        (dict(shampoo_beta=1.5), ValueError, "1.5"),
        (dict(refresh="svd"), ValueError, "svd"),
        (dict(backend="metal"), ValueError, "metal"),
        (dict(lr="fast"), TypeError, "fast"),
    ],
)
def test_bad_hyperparameters_raise_naming_the_value(kwargs, error, fragment):
    with pytest.raises(error, match=fragment):
        SOAP([torch.nn.Parameter(torch.randn(3, 3))], **kwargs)


def test_bad_group_hyperparameter_raises():
    with pytest.raises(ValueError, match="-2"):
        SOAP([{"params": [torch.nn.Parameter(torch.randn(2))], "lr": -2}])


def test_complex_parameters_are_rejected():
    with pytest.raises(TypeError, match="complex"):
        SOAP([torch.nn.Parameter(torch.randn(3, 3, dtype=torch.complex64))])


def test_sparse_gradient_is_rejected_without_touching_state():
    dense = torch.nn.Parameter(torch.randn(4, 4))
    sparse = torch.nn.Parameter(torch.randn(4, 4))
    optimizer = SOAP([{"params": [dense]}, {"params": [sparse]}])  # the bad one in a later group
    dense.grad = torch.randn(4, 4)
    sparse.grad = torch.randn(4, 4).to_sparse()
    before = dense.detach().clone()
    with pytest.raises(TypeError, match="sparse"):
        optimizer.step()
    assert torch.equal(dense.detach(), before) and len(optimizer.state[dense]) == 0


def test_forced_triton_backend_that_cannot_run_raises_before_touching_state(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    p = torch.nn.Parameter(torch.randn(3, 3))
    optimizer = SOAP([p], backend="triton")
    p.grad = torch.randn(3, 3)
    with pytest.raises(RuntimeError, match="triton"):
        optimizer.step()
    assert len(optimizer.state[p]) == 0
    monkeypatch.setenv("SOAP_KERNELS_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="cuda"):
        SOAP([p]).step()


@pytest.mark.skipif(not triton_available(), reason="needs Triton on CUDA or TRITON_INTERPRET=1")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_triton_backend_matches_torch_backend(dtype):
    """Fused Triton ops (1-D/2-D stacks) and the native path (scalars, 3-D) against the torch backend, on
    full-rank shapes (a one-sided basis where dim 40 > max_precond_dim)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shapes = [(6, 6), (6, 6), (7, 7), (5, 40), (9,), (), (2, 3, 4)]
    settings = dict(precondition_frequency=2, weight_decay=0.05, lr=1e-2, max_precond_dim=10)
    generator = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=generator, dtype=dtype) for s in shapes]
    runs = {}
    for backend in ("torch", "triton"):
        params = [torch.nn.Parameter(x.clone().to(device)) for x in init]
        optimizer = SOAP(params, backend=backend, **settings)
        gen = torch.Generator().manual_seed(1)
        for step in range(10):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen, dtype=dtype).to(device)
            if step == 5:
                params[0].grad[0, 0] = float("nan")  # a skipped step on both backends
            optimizer.step()
        runs[backend] = params
    tol = dict(rtol=1e-9, atol=1e-11) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-5)
    for a, b in zip(runs["torch"], runs["triton"]):
        torch.testing.assert_close(a.detach(), b.detach(), **tol)


@pytest.mark.parametrize("refresh", ["qr", "eigh", "exact"])
def test_soap_reduces_a_least_squares_loss(refresh):
    torch.manual_seed(0)
    a = torch.randn(64, 16)
    target = a @ torch.randn(16, 8)  # realisable: the optimum loss is 0
    w = torch.nn.Parameter(torch.zeros(16, 8))
    optimizer = SOAP([w], lr=0.1, weight_decay=0.0, precondition_frequency=2, refresh=refresh)
    losses = []
    for _ in range(100):
        optimizer.zero_grad()
        loss = ((a @ w - target) ** 2).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.02 * losses[0]


@pytest.mark.parametrize("refresh", ["eigh", "exact"])
def test_exact_refreshes_give_the_exact_eigenbasis(refresh):
    p = torch.nn.Parameter(torch.randn(6, 6, dtype=torch.float64))
    optimizer = SOAP([p], refresh=refresh, precondition_frequency=2)
    _train([p], optimizer, torch.Generator().manual_seed(2), 5)  # refreshes at t = 2 and 4
    factor, basis = optimizer.state[p]["GG"][0], optimizer.state[p]["Q"][0]
    rotated = basis.T @ factor @ basis
    eigenvalues = torch.linalg.eigvalsh(factor).flip(0)
    torch.testing.assert_close(rotated, torch.diag(eigenvalues), rtol=0, atol=1e-12)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["auto", "cuda", "torch", "triton"])
def test_cuda_trajectory_matches_cpu_and_steps_without_host_sync(backend):
    """On a GPU: every backend follows the CPU float64 trajectory, and steps after the first (initialising,
    eigh) one never synchronise with the host, refreshes included for refresh='qr' on the native path."""
    shapes = [(16, 16), (16, 16), (8, 24), (24,), (), (3, 4, 5)]
    settings = dict(precondition_frequency=2, weight_decay=0.01, lr=1e-2, max_precond_dim=20)
    generator = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=generator, dtype=torch.float64) for s in shapes]
    grads = [[torch.randn(s, generator=generator, dtype=torch.float64) for s in shapes] for _ in range(7)]
    cpu = [torch.nn.Parameter(x.clone()) for x in init]
    gpu = [torch.nn.Parameter(x.clone().cuda()) for x in init]
    cpu_opt, gpu_opt = SOAP(cpu, backend="torch", **settings), SOAP(gpu, backend=backend, **settings)
    for step, step_grads in enumerate(grads):
        for p, q, g in zip(cpu, gpu, step_grads):
            p.grad, q.grad = g.clone(), g.cuda()
        cpu_opt.step()
        if step == 0 or backend == "triton":  # the first step runs eigh; Triton's first launch compiles
            gpu_opt.step()
            continue
        torch.cuda.set_sync_debug_mode("error")
        try:
            gpu_opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(b.detach().cpu(), a.detach(), rtol=1e-9, atol=1e-11)


def test_step_method_routes_the_refresh(monkeypatch):
    """Which refresh a step runs: "qr" becomes the op on a CPU with the extension and, on CUDA with the native
    kernels, the op for stacks of several factors (not on the torch backend); capturable steps always take the
    graph-safe op."""
    from soap_kernels._native import has_native_cpu
    from soap_kernels.optim import refresh
    from soap_kernels.optim.refresh import step_method

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert step_method("qr", False, "native", cpu) == ("qr_kernel" if has_native_cpu() else "qr")
    assert step_method("qr", False, "torch", cpu) == "qr"
    assert step_method("qr", True, "torch", cpu) == "qr_kernel"
    assert step_method("exact", False, "native", cpu) == "exact"
    assert step_method("eigh", False, "native", cpu) == "eigh"
    monkeypatch.setattr(refresh, "native_kernels_for", lambda device: torch.device(device).type == "cuda")
    assert step_method("qr", False, "native", cuda) == "qr_kernel_batched"
    assert step_method("qr", False, "triton", cuda) == "qr_kernel_batched"
    assert step_method("qr", False, "torch", cuda) == "qr"
    assert step_method("qr", True, "native", cuda) == "qr_kernel"
    assert step_method("exact", False, "native", cuda) == "exact"
    monkeypatch.setattr(refresh, "native_kernels_for", lambda device: False)  # CUDA kernels not built
    assert step_method("qr", False, "native", cuda) == "qr"


@pytest.mark.parametrize("batch", [1, 2, 3, 5])
def test_batched_qr_refresh_takes_the_op_only_for_enough_factors(batch, monkeypatch):
    """"qr_kernel_batched" is torch.linalg.qr's refresh below CUDA_QR_KERNEL_MIN_BATCH factors and the op's from
    there on (checked by whether the op is called), and either way an orthonormal basis in the reference's
    column order."""
    from soap_kernels.optim import refresh

    generator = torch.Generator().manual_seed(batch)
    grads = torch.randn(batch, 7, 9, generator=generator, dtype=torch.float64)  # full rank: no ties in the order
    factor = grads @ grads.mT
    basis = refresh.initial_basis(factor + grads[..., :1] @ grads[..., :1].mT)  # the bases of an older factor
    calls = []
    op = refresh.refresh_eigenbasis
    monkeypatch.setattr(refresh, "refresh_eigenbasis", lambda *a, **k: calls.append(a[2]) or op(*a, **k))
    new_basis, order = refresh.refresh_basis(factor, basis, "qr_kernel_batched")
    assert calls == (["qr"] if batch >= refresh.CUDA_QR_KERNEL_MIN_BATCH else [])
    _, reference_order = refresh.refresh_basis(factor, basis, "qr")
    assert torch.equal(order, reference_order)
    eye = torch.eye(7, dtype=torch.float64).expand(batch, 7, 7)
    torch.testing.assert_close(new_basis.mT @ new_basis, eye, atol=1e-12, rtol=0)


@pytest.mark.parametrize("method", ["qr", "qr_kernel", "qr_kernel_batched", "exact", "eigh"])
def test_one_by_one_factors_take_the_shortcut_with_the_methods_result(method):
    """A 1 x 1 factor's refresh is built directly: what each method's algorithm computes (zero, positive and
    non-finite factors, a batch of 4; the basis 1 that the initialising eigh gives)."""
    from soap_kernels.optim import refresh

    factor = torch.tensor([0.0, 2.5, 1e-300, float("nan")], dtype=torch.float64).reshape(4, 1, 1)
    basis = refresh.initial_basis(torch.nan_to_num(factor))
    shortcut_basis, shortcut_order = refresh.refresh_basis(factor, basis, method)
    computed_basis, computed_order = refresh._refresh_basis(factor, basis, method)
    assert torch.equal(shortcut_basis, computed_basis) and torch.equal(shortcut_order, computed_order)
    with pytest.raises(ValueError, match="unknown refresh method 'lu'"):
        refresh.refresh_basis(factor, basis, "lu")


@pytest.mark.parametrize("method", ["qr", "qr_kernel", "exact", "eigh"])
def test_refreshes_batched_across_stacks_equal_refreshes_one_by_one(method):
    """batched_refresh concatenates factors of one size (and method) from several requests into one call: every
    request gets what refresh_basis gives it alone (float64; stacks of 1, 2 and 3 factors, sizes 5 and 7)."""
    from soap_kernels.optim import refresh

    generator = torch.Generator().manual_seed(3)
    requests = []
    for key, (batch, n) in enumerate([(2, 5), (1, 7), (3, 5), (1, 5)]):
        grads = torch.randn(batch, n, n + 2, generator=generator, dtype=torch.float64)
        factor = grads @ grads.mT
        basis = refresh.initial_basis(factor + grads[..., :1] @ grads[..., :1].mT)
        requests.append(((key, 0), factor, basis, method))
    results = refresh.batched_refresh(requests)
    assert sorted(results) == [(key, 0) for key in range(4)]
    for key, factor, basis, _ in requests:
        alone_basis, alone_order = refresh.refresh_basis(factor, basis, method)
        torch.testing.assert_close(results[key][0], alone_basis, atol=1e-12, rtol=0)
        assert torch.equal(results[key][1], alone_order)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_parameters_split_between_gpu_and_cpu_skip_a_non_finite_step_together():
    """The finite flags are computed on the first gradient's device (the GPU) and moved to the CPU stack: it must
    see the real flag (a non-blocking device-to-host copy could be read before it lands)."""
    gpu = torch.nn.Parameter(torch.randn(64, 64, device="cuda"))
    cpu = torch.nn.Parameter(torch.randn(48, 32))
    optimizer = SOAP([gpu, cpu], precondition_frequency=2)
    for step in range(6):
        gpu.grad, cpu.grad = torch.randn_like(gpu), torch.randn_like(cpu)
        if step == 4:
            gpu.grad[0, 0] = float("nan")
            before = cpu.detach().clone(), copy.deepcopy(optimizer.state[cpu])
        optimizer.step()
        if step == 4:
            torch.testing.assert_close(cpu.detach(), before[0], rtol=0, atol=0)
            for key, value in before[1].items():
                if isinstance(value, torch.Tensor):
                    torch.testing.assert_close(optimizer.state[cpu][key], value, rtol=0, atol=0)
    assert torch.isfinite(gpu).all() and torch.isfinite(cpu).all()
