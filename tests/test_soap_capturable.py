"""SOAP(capturable=True): device step counters and lr, no host reads after the first step, graph replay."""

from __future__ import annotations

import io

import pytest
import torch

from soap_kernels import SOAP
from soap_kernels._backend import triton_available
from tests.host_sync_guard import HostReadError, forbid_host_reads

SHAPES = [(9, 9), (5, 12), (12,), (3, 4, 5), ()]
SETTINGS = dict(precondition_frequency=3, precondition_1d=True, weight_decay=0.01, lr=1e-2, max_precond_dim=10)
BACKENDS = ["torch", "auto"] + (["triton"] if triton_available() else [])


def _params(dtype=torch.float64, device="cpu", shapes=SHAPES):
    generator = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(s, generator=generator, dtype=dtype).to(device)) for s in shapes]


def _gradients(steps: int, dtype=torch.float64, shapes=SHAPES, seed=1) -> list[list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=generator, dtype=dtype) for s in shapes] for _ in range(steps)]


def _run(optimizer, params, gradients, scheduler=None, guard_after: int | None = None):
    for step, grads in enumerate(gradients):
        for p, g in zip(params, grads):
            p.grad = g.to(p.device)
        if guard_after is not None and step >= guard_after:
            with forbid_host_reads():
                optimizer.step()
        else:
            optimizer.step()
        if scheduler is not None:
            scheduler.step()


def test_the_guard_catches_host_reads():
    x = torch.randn(4, 4, dtype=torch.float64)
    reads = [
        lambda: x.sum().item(), lambda: bool(x.sum() > 0), lambda: float(x[0, 0]), lambda: x.nonzero(),
        lambda: x[x > 0], lambda: torch.linalg.eigh(x @ x.T), lambda: torch.linalg.qr(x), lambda: x.tolist(),
        lambda: x.cpu(),
    ]  # fmt: skip
    for read in reads:
        with pytest.raises(HostReadError), forbid_host_reads():
            read()
    with forbid_host_reads():  # device-side work passes
        torch.where(x > 0, x, -x).sum().add_(1)


@pytest.mark.parametrize("refresh", ["qr", "exact"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_capturable_steps_read_nothing_back_to_the_host(backend, refresh, request):
    """Every step after the first (initialising, eigh) one, refresh steps included, with a tensor lr."""
    if backend == "triton":
        device, dtype = request.getfixturevalue("triton_device"), torch.float32
    else:
        device, dtype = "cpu", torch.float64
    params = _params(dtype, device)
    lr = torch.tensor(1e-2, dtype=torch.float64, device=device)
    optimizer = SOAP(params, **{**SETTINGS, "lr": lr}, refresh=refresh, backend=backend, capturable=True)
    gradients = _gradients(8, dtype)
    _run(optimizer, params, gradients[:4], guard_after=1)
    for stack in optimizer._stacks.values():  # as after a CUDA graph capture: a refresh computed every step
        stack.graph_captured = True
    _run(optimizer, params, gradients[4:], guard_after=0)
    assert all(torch.isfinite(p).all() for p in params)


def test_a_default_step_is_caught_reading_back():
    """The check can fail: the default step on the torch backend refreshes with torch.linalg.qr (a host sync on
    CUDA), which the guard flags. (With the C++ kernel on a CPU the default "qr" runs its op, whose host reads of
    CPU tensors happen inside C++, where no sync exists and the guard does not look.)"""
    params = _params()
    optimizer = SOAP(params, backend="torch", **SETTINGS)
    with pytest.raises(HostReadError):
        _run(optimizer, params, _gradients(4), guard_after=1)


@pytest.mark.parametrize("after_capture", [False, True], ids=["eager", "as-after-a-graph-capture"])
@pytest.mark.parametrize("refresh", ["qr", "exact"])
@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_capturable_follows_the_default_trajectory(backend, refresh, after_capture):
    """Eager capturable steps, and steps as after a capture (the refresh computed every step, installed on
    refresh steps of the device count only), follow the default trajectory."""
    gradients = _gradients(14)
    ours, theirs = _params(), _params()
    capturable = SOAP(ours, **SETTINGS, refresh=refresh, backend=backend, capturable=True)
    default = SOAP(theirs, **SETTINGS, refresh=refresh, backend=backend)
    _run(capturable, ours, gradients[:1])
    for stack in capturable._stacks.values():  # what capturing a step in a CUDA graph sets (CPU has no graphs)
        stack.graph_captured = after_capture
    _run(capturable, ours, gradients[1:])
    _run(default, theirs, gradients)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-9, atol=1e-11)
    assert all(isinstance(capturable.state[p]["step"], torch.Tensor) for p in ours)
    assert [int(capturable.state[p]["step"]) for p in ours] == [default.state[p]["step"] for p in theirs]


def test_tensor_lr_follows_a_scheduler_like_a_float_lr():
    gradients = _gradients(10)
    ours, theirs = _params(), _params()
    tensor_lr = SOAP(ours, **{**SETTINGS, "lr": torch.tensor(1e-2, dtype=torch.float64)}, capturable=True)
    float_lr = SOAP(theirs, **SETTINGS)
    _run(tensor_lr, ours, gradients, torch.optim.lr_scheduler.ExponentialLR(tensor_lr, gamma=0.7))
    _run(float_lr, theirs, gradients, torch.optim.lr_scheduler.ExponentialLR(float_lr, gamma=0.7))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-9, atol=1e-11)


def test_tensor_lr_with_the_fused_kernels_matches_the_torch_backend(triton_device):
    """The Triton update takes weight decay as a number; with a tensor lr the decay is applied after it."""
    gradients = _gradients(7, torch.float32)
    results = []
    for backend in ("torch", "triton"):
        params = _params(torch.float32, triton_device)
        lr = torch.tensor(1e-2, device=triton_device)
        optimizer = SOAP(params, **{**SETTINGS, "lr": lr, "weight_decay": 0.3}, backend=backend, capturable=True)
        _run(optimizer, params, gradients)
        results.append(params)
    for a, b in zip(*results):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=2e-5, atol=2e-6)


def test_a_non_finite_capturable_step_changes_nothing_and_counts_in_place():
    params = _params()
    optimizer = SOAP(params, **SETTINGS, capturable=True)
    _run(optimizer, params, _gradients(2))
    counter = optimizer.skipped_steps
    before = [p.detach().clone() for p in params]
    state_before = {k: v.clone() for k, v in optimizer.state[params[0]].items() if isinstance(v, torch.Tensor)}
    bad = _gradients(1)[0]
    bad[0][2, 3] = float("nan")
    with forbid_host_reads():
        _run(optimizer, params, [bad])
    assert optimizer.skipped_steps is counter and int(counter) == 1  # the same tensor, updated in place
    for a, b in zip(params, before):
        assert torch.equal(a.detach(), b)
    for key, value in state_before.items():
        if key != "step":  # the call counter advances, as in the reference
            assert torch.equal(optimizer.state[params[0]][key], value), key


def test_capturable_state_dict_resumes_exactly_and_loads_default_checkpoints():
    gradients = _gradients(12)
    straight = _params()
    reference = SOAP(straight, **SETTINGS, capturable=True)
    _run(reference, straight, gradients)

    for first_capturable in (True, False):  # a default optimizer's checkpoint loads into a capturable one
        resumed = _params()
        first = SOAP(resumed, **SETTINGS, capturable=first_capturable)
        _run(first, resumed, gradients[:5])
        buffer = io.BytesIO()
        torch.save(first.state_dict(), buffer)
        buffer.seek(0)
        second = SOAP(resumed, **SETTINGS, capturable=True)
        second.load_state_dict(torch.load(buffer, weights_only=True))
        _run(second, resumed, gradients[5:])
        for a, b in zip(resumed, straight):
            torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-12, atol=1e-14)


def test_capturable_rejects_what_it_cannot_do():
    params = _params()
    with pytest.raises(ValueError, match="eigh"):
        SOAP(params, refresh="eigh", capturable=True)
    with pytest.raises(TypeError, match="capturable"):
        SOAP(params, capturable="yes")
    with pytest.raises(TypeError, match="0-d"):
        SOAP(params, lr=torch.tensor([1e-3]))
    with pytest.raises(ValueError, match="lr"):
        SOAP(params, lr=torch.tensor(-1e-3))


def _step_fails_before_any_state(optimizer, params, error: type[Exception], match: str) -> None:
    for p in params:
        p.grad = torch.ones_like(p)
    with pytest.raises(error, match=match):
        optimizer.step()
    assert not any(optimizer.state[p] for p in params)


def test_a_tensor_lr_on_another_device_fails_before_any_state_is_allocated():
    params = _params()
    optimizer = SOAP(params, lr=torch.tensor(1e-3), capturable=True)
    optimizer.param_groups[0]["lr"] = torch.tensor(1e-3, device="meta")  # as a scheduler could leave it
    _step_fails_before_any_state(optimizer, params, ValueError, "parameters' device")


def test_capturing_a_sharded_refresh_fails_before_any_state_is_allocated(monkeypatch):
    """Eager capturable steps may shard the refresh (tests/test_soap_distributed.py); a capture may not."""
    from soap_kernels.optim import soap

    params = _params()
    optimizer = SOAP(params, capturable=True, shard_refresh=True)
    monkeypatch.setattr(soap, "sharding_active", lambda *args: True)  # as under torch.distributed with 2+ ranks
    monkeypatch.setattr(soap, "_capturing", lambda: True)  # as inside torch.cuda.graph
    _step_fails_before_any_state(optimizer, params, RuntimeError, "shard_refresh")


@pytest.mark.cuda
@pytest.mark.parametrize("why", ["not built", "torch forced"])
def test_capturable_on_cuda_needs_the_native_refresh_kernel(why, monkeypatch):
    from soap_kernels.optim import soap

    if why == "not built":
        monkeypatch.setattr(soap, "native_kernels_for", lambda device: False)
    else:
        monkeypatch.setenv("SOAP_KERNELS_BACKEND", "torch")
    params = _params(device="cuda")
    optimizer = SOAP(params, lr=torch.tensor(1e-3, device="cuda"), capturable=True)
    _step_fails_before_any_state(optimizer, params, RuntimeError, "native refresh_eigenbasis kernel")


@pytest.mark.cuda
def test_capturable_tensor_lr_must_live_on_the_parameters_device():
    params = _params(device="cuda")
    optimizer = SOAP(params, lr=torch.tensor(1e-3), capturable=True)
    for p in params:
        p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match="device"):
        optimizer.step()


@pytest.mark.cuda
@pytest.mark.parametrize("conditional", ["0", "1"], ids=["refresh-every-replay", "refresh-in-if-node"])
@pytest.mark.parametrize("refresh", ["qr", "exact"])
@pytest.mark.parametrize("backend", ["auto", "triton"])
def test_a_captured_step_replays_the_eager_trajectory(backend, refresh, conditional, monkeypatch):
    """One step captured in a CUDA graph, replayed with new gradients and a scheduled tensor lr, follows eager
    SOAP on the CPU (refreshes land on the right replays: every third step, while every replay computes one, or
    with SOAP_KERNELS_CONDITIONAL_REFRESH=1 only the replays whose device step count makes them due)."""
    monkeypatch.setenv("SOAP_KERNELS_CONDITIONAL_REFRESH", conditional)
    dtype = torch.float32 if backend == "triton" else torch.float64
    steps, warm_up = 12, 4  # the warm-up includes a refresh step (step 3): first launches stay out of the capture
    gradients = _gradients(steps, dtype)
    cpu = _params(dtype)
    cpu_lr = torch.tensor(1e-2, dtype=torch.float64)
    eager = SOAP(cpu, **{**SETTINGS, "lr": cpu_lr}, refresh=refresh, backend="torch")
    _run(eager, cpu, gradients, torch.optim.lr_scheduler.ExponentialLR(eager, gamma=0.9))

    gpu = _params(dtype, "cuda")
    lr = torch.tensor(1e-2, dtype=torch.float64, device="cuda")
    optimizer = SOAP(gpu, **{**SETTINGS, "lr": lr}, refresh=refresh, backend=backend, capturable=True)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)
    for p, g in zip(gpu, gradients[0]):
        p.grad = g.cuda()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: the initialising step and Triton's compilation run eagerly
        for step in range(warm_up):
            for p, g in zip(gpu, gradients[step]):
                p.grad.copy_(g)
            optimizer.step()
            scheduler.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    for p, g in zip(gpu, gradients[warm_up]):
        p.grad.copy_(g)
    with torch.cuda.graph(graph):
        optimizer.step()
    # capture does not run the step: replay it for every remaining step
    for step in range(warm_up, steps):
        for p, g in zip(gpu, gradients[step]):
            p.grad.copy_(g)
        graph.replay()
        scheduler.step()
    torch.cuda.synchronize()
    tolerance = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-11)
    for a, b in zip(gpu, cpu):
        torch.testing.assert_close(a.detach().cpu(), b.detach(), **tolerance)
    assert [int(optimizer.state[p]["step"]) for p in gpu] == [eager.state[p]["step"] for p in cpu]


@pytest.mark.parametrize("enabled", ["0", "1"])
def test_conditional_refresh_records_the_refresh_in_an_if_node(enabled, monkeypatch):
    """The wiring, on a CPU (only CUDA captures graphs): with SOAP_KERNELS_CONDITIONAL_REFRESH=1 inside a capture,
    each step's refresh is recorded between begin_capture_to_if_node(some stack due on the device count) and
    end_capture_to_conditional_node; switched off, no node is made. The CUDA test above replays it."""
    from soap_kernels.optim import soap as soap_module

    params = _params()
    optimizer = SOAP(params, **SETTINGS, capturable=True)  # precondition_frequency 3
    gradients = _gradients(4)
    _run(optimizer, params, gradients[:2])  # the initialising step and step 1, eagerly
    for stack in optimizer._stacks.values():  # what capturing a step on a CUDA device sets
        stack.graph_captured = True
    events = []

    class RecordingGraph:
        def begin_capture_to_if_node(self, condition):
            events.append(("begin", bool(condition)))

        def end_capture_to_conditional_node(self):
            events.append(("end",))

    def refresh_and_record(requests):
        events.append(("refresh",))
        return original(requests)

    original = soap_module.batched_refresh
    monkeypatch.setenv("SOAP_KERNELS_CONDITIONAL_REFRESH", enabled)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as inside torch.cuda.graph
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    monkeypatch.setattr(torch.cuda.CUDAGraph, "get_currently_capturing_graph", lambda: RecordingGraph())
    monkeypatch.setattr(soap_module, "batched_refresh", refresh_and_record)
    _run(optimizer, params, gradients[2:])  # steps 2 (not a refresh step) and 3 (one)
    if enabled == "1":
        assert events == [("begin", False), ("refresh",), ("end",), ("begin", True), ("refresh",), ("end",)]
    else:
        assert events == [("refresh",), ("refresh",)]  # computed every step, installed by the device mask
    monkeypatch.setenv("SOAP_KERNELS_CONDITIONAL_REFRESH", "yes")
    with pytest.raises(ValueError, match="SOAP_KERNELS_CONDITIONAL_REFRESH must be 0 or 1, got 'yes'"):
        _run(optimizer, params, gradients[:1])
