"""The C++ CPU buffer cache (csrc/cpu/buffer_cache.cpp): where the jets' large CPU stacks get their memory."""

import os
import subprocess
import sys
import threading

import pytest
import torch

import soap_kernels
from soap_kernels import cpu_buffer_cache
from soap_kernels import nn as snn
from soap_kernels._native import has_native_cpu
from soap_kernels.jets.plan import JetPlan
from soap_kernels.ops.jet_dense import jet_linear
from soap_kernels.ops.jet_dense_native import cached_empty

pytestmark = pytest.mark.skipif(not has_native_cpu(), reason="soap_kernels._C is not built")

MIB = 1 << 20
LIKE = torch.zeros(1)
# 3 * 1000 * 257 float32 = 3 MB: above the 1 MiB below which requests go to torch's allocator
LARGE = (3, 1000, 257)


@pytest.fixture
def restore_limit():
    limit = cpu_buffer_cache.stats()["limit_bytes"]
    yield
    cpu_buffer_cache.set_limit(limit)


@pytest.mark.parametrize("shape", [(1,), (7, 33), (4, 257, 33), (0, 5), LARGE])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cached_empty_has_the_shape_and_dtype_asked_for(shape, dtype):
    out = cached_empty(torch.zeros(1, dtype=dtype), shape)
    assert out.shape == shape and out.dtype == dtype and out.is_contiguous() and out.device.type == "cpu"
    out.fill_(3.0)  # the whole extent is writable
    assert out.sum().item() == 3.0 * out.numel()


def test_a_freed_block_is_reused_and_a_live_one_is_not():
    first = cached_empty(LIKE, LARGE).fill_(1.0)
    second = cached_empty(LIKE, LARGE).fill_(2.0)
    assert first.data_ptr() != second.data_ptr()
    assert first.eq(1.0).all()  # writing the second did not touch the first
    address = first.data_ptr()
    hits = cpu_buffer_cache.stats()["hits"]
    del first
    third = cached_empty(LIKE, LARGE)
    assert third.data_ptr() == address
    assert cpu_buffer_cache.stats()["hits"] == hits + 1
    assert second.eq(2.0).all()


def test_a_smaller_request_takes_a_block_at_most_an_eighth_larger():
    block = cached_empty(LIKE, (4 * MIB,))  # 16 MiB
    address = block.data_ptr()
    del block
    much_smaller = cached_empty(LIKE, (2 * MIB,))  # 8 MiB: would waste half the block
    assert much_smaller.data_ptr() != address
    slightly_smaller = cached_empty(LIKE, (4 * MIB - 100_000,))
    assert slightly_smaller.data_ptr() == address


def test_small_requests_bypass_the_cache():
    before = cpu_buffer_cache.stats()
    small = cached_empty(LIKE, (100, 100))  # 40 KB
    del small
    after = cpu_buffer_cache.stats()
    assert (after["hits"], after["misses"], after["cached_bytes"]) == (
        before["hits"],
        before["misses"],
        before["cached_bytes"],
    )


def test_limit_zero_keeps_nothing_and_clear_empties(restore_limit):
    kept = cached_empty(LIKE, LARGE)
    del kept
    assert cpu_buffer_cache.stats()["cached_bytes"] >= 3 * 1000 * 257 * 4
    cpu_buffer_cache.clear()
    assert cpu_buffer_cache.stats()["cached_bytes"] == 0
    cpu_buffer_cache.set_limit(0)
    block = cached_empty(LIKE, LARGE)
    del block
    stats = cpu_buffer_cache.stats()
    assert stats["limit_bytes"] == 0 and stats["cached_bytes"] == 0 and stats["cached_blocks"] == 0


def test_lowering_the_limit_frees_blocks_beyond_it(restore_limit):
    cpu_buffer_cache.clear()
    blocks = [cached_empty(LIKE, (MIB // 4 * k,)) for k in (1, 2, 3)]  # 1, 2 and 3 MiB of float32
    del blocks
    assert cpu_buffer_cache.stats()["cached_bytes"] == 6 * MIB
    cpu_buffer_cache.set_limit(4 * MIB)
    stats = cpu_buffer_cache.stats()
    assert stats["cached_bytes"] <= 4 * MIB and stats["limit_bytes"] == 4 * MIB
    assert stats["cached_bytes"] == 3 * MIB  # the largest block went first


def test_a_block_that_does_not_fit_evicts_the_longest_unused(restore_limit):
    """After a change of sizes, the old sizes' blocks make room for the new ones instead of pinning the limit."""
    cpu_buffer_cache.clear()
    cpu_buffer_cache.set_limit(4 * MIB)
    old = [cached_empty(LIKE, (MIB // 4 * 3 // 2,)) for _ in range(2)]  # two 1.5 MiB blocks
    del old
    assert cpu_buffer_cache.stats()["cached_bytes"] == 3 * MIB
    new = cached_empty(LIKE, (MIB // 4 * 3,))  # 3 MiB: no kept block fits it
    address = new.data_ptr()
    del new  # 3 + 3 MiB > 4 MiB, and 1.5 + 3 MiB still: both old blocks go, the new one is kept
    stats = cpu_buffer_cache.stats()
    assert stats["cached_bytes"] == 3 * MIB and stats["cached_blocks"] == 1
    again = cached_empty(LIKE, (MIB // 4 * 3,))
    assert again.data_ptr() == address


@pytest.fixture
def debug_fill():
    cpu_buffer_cache.set_debug_fill(True)
    yield
    cpu_buffer_cache.set_debug_fill(False)


def test_debug_fill_makes_uninitialised_memory_nan(debug_fill):
    for shape in [(5, 7), LARGE]:  # torch's allocator below 1 MiB, the cache above
        for dtype in (torch.float32, torch.float64):
            assert cached_empty(torch.zeros(1, dtype=dtype), shape).isnan().all()
    with pytest.raises(TypeError, match="int"):
        cpu_buffer_cache.set_debug_fill(1)


@pytest.mark.parametrize(
    "model_name, activation",
    [("mlp", "tanh"), ("mlp", "sin"), ("mlp", "gelu"), ("piratenet", "tanh")],
)
@pytest.mark.parametrize("n", [257, 3001])  # 3001 rows: the backward runs in chunks of 2730 (F = 96)
def test_native_jets_write_every_element_of_their_cached_stacks(debug_fill, model_name, activation, n):
    """With every cached tensor born NaN, the C++ jets' values and gradients equal the torch reference's: no
    kernel leaves an element of its output unwritten."""
    torch.manual_seed(4)
    if model_name == "mlp":
        model = snn.MLP(2, 1, 96, 3, activation).double()
    else:
        model = snn.PirateNet(2, 1, 96, 2, activation, rwf=(1.0, 0.1), alpha_init=0.5).double()
    x = torch.rand(n, 2, dtype=torch.float64)
    results = {}
    for backend in ("torch", "auto"):
        model.zero_grad(set_to_none=True)
        d = soap_kernels.jet(model, x, [(0,), (1, 1)], laplacian_axes=[0, 1], backend=backend)
        loss = sum(v.square().mean() for v in d.values())
        loss.backward()
        results[backend] = [d[key].detach() for key in sorted(d, key=str)] + [p.grad for p in model.parameters()]
    for ours, reference in zip(results["auto"], results["torch"], strict=True):
        assert not ours.isnan().any()
        torch.testing.assert_close(ours, reference, rtol=1e-9, atol=1e-11)


def test_bad_limits_raise():
    with pytest.raises(ValueError, match="-1"):
        cpu_buffer_cache.set_limit(-1)
    with pytest.raises(TypeError, match="float"):
        cpu_buffer_cache.set_limit(1.5)


def _run_with_environment(value: str, code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SOAP_KERNELS_CPU_CACHE_MB": value}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_the_environment_variable_sets_the_limit_and_a_bad_value_is_named():
    code = "from soap_kernels import cpu_buffer_cache as c; print(c.stats()['limit_bytes'])"
    good = _run_with_environment("7", code)
    assert good.returncode == 0, good.stderr
    assert int(good.stdout.strip().splitlines()[-1]) == 7 * MIB
    bad = _run_with_environment("lots", code)
    assert bad.returncode != 0
    assert "SOAP_KERNELS_CPU_CACHE_MB" in bad.stderr and "lots" in bad.stderr


def test_threads_allocating_and_freeing_never_share_a_block():
    errors = []

    def work(value: float):
        for _ in range(50):
            block = cached_empty(LIKE, LARGE).fill_(value)
            if not block.eq(value).all():
                errors.append(value)

    threads = [threading.Thread(target=work, args=(float(i),)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    stats = cpu_buffer_cache.stats()
    assert stats["cached_bytes"] <= stats["limit_bytes"]


@pytest.mark.parametrize("bias", [True, False])
def test_jet_linear_matches_the_reference_with_cached_stacks(bias):
    """Forward and backward of the output-layer op on stacks large enough to come from the cache (4 MB in
    float64), against linear algebra in float64."""
    torch.manual_seed(0)
    x = torch.randn(4, 2001, 65, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 65, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True) if bias else None
    z = jet_linear(x, w, b)
    expected = x @ w.t()
    if bias:
        expected = torch.cat([expected[:1] + b, expected[1:]])
    torch.testing.assert_close(z, expected, rtol=1e-13, atol=1e-13)
    grad = torch.randn_like(z)
    ours = torch.autograd.grad(z, [x, w] + ([b] if bias else []), grad)
    reference = torch.autograd.grad(expected, [x, w] + ([b] if bias else []), grad)
    for a, r in zip(ours, reference):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)


def test_jet_linear_backward_can_be_recorded_with_create_graph():
    """A backward recorded for a second one (create_graph=True) computes the same gradients (the cached out=
    GEMM has no autograd formula, so that path takes plain matmul)."""
    torch.manual_seed(3)
    x = torch.randn(4, 2001, 65, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 65, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(4, 2001, 3, dtype=torch.float64)
    recorded = torch.autograd.grad(jet_linear(x, w, None), [x, w], grad, create_graph=True)
    plain = torch.autograd.grad(jet_linear(x, w, None), [x, w], grad)
    for a, b in zip(recorded, plain):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)
    # dL/dx = g W, so d/dW ||g W||^2 = 2 g^T g W: the recorded graph differentiates again
    second = torch.autograd.grad(recorded[0].square().sum(), w)[0]
    g = grad.reshape(-1, 3)
    torch.testing.assert_close(second, 2 * g.t() @ g @ w.detach(), rtol=1e-10, atol=1e-10)


def test_jet_linear_opcheck_and_bad_input():
    torch.manual_seed(1)
    x = torch.randn(3, 7, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(jet_linear, (x, w, b))
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        jet_linear(x, torch.randn(2, 4, dtype=torch.float64), None)


@pytest.mark.parametrize("model_name", ["mlp", "piratenet"])
def test_repeated_native_steps_on_cached_memory_equal_the_torch_reference(model_name):
    """Three loss + backward steps of the C++ jets on stacks of several MB (so kept blocks are handed out again
    while other stacks of the same size are alive) equal the torch reference's every time: reuse never hands out
    a block still in use."""
    torch.manual_seed(2)
    if model_name == "mlp":
        model = snn.MLP(2, 1, 96, 3, "tanh").double()
    else:
        model = snn.PirateNet(2, 1, 96, 2, "tanh", rwf=(1.0, 0.1), alpha_init=0.5).double()
    requests = [(0,), (1, 1)]
    assert JetPlan.build(2, requests).num_slots * 1500 * 96 * 8 > 4 * MIB
    hits = cpu_buffer_cache.stats()["hits"]
    for step in range(3):
        x = torch.rand(1500, 2, dtype=torch.float64)
        results = {}
        for backend in ("torch", "auto"):
            model.zero_grad(set_to_none=True)
            d = soap_kernels.jet(model, x, requests, backend=backend)
            loss = (d[(0,)] - 1e-4 * d[(1, 1)] + 5 * d[()] ** 3 - 5 * d[()]).square().mean()
            loss.backward()
            results[backend] = [loss.detach()] + [p.grad.clone() for p in model.parameters()]
        for ours, reference in zip(results["auto"], results["torch"]):
            torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-12, msg=f"step {step}")
    assert cpu_buffer_cache.stats()["hits"] > hits
