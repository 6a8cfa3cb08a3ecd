"""Block-Jacobi driver of refresh_eigenbasis(method="exact") (soap_kernels/ops/block_jacobi.py): against
numpy.linalg.eigh in float64, the scalar kernel, the documented guarantees, and its host-read freedom."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from soap_kernels.ops import block_jacobi
from soap_kernels.ops.block_jacobi import block_jacobi_refresh, block_jacobi_refresh_with_sweeps, block_layout
from soap_kernels.ops.refresh_eigenbasis import jacobi_eigen_ref, refresh_eigenbasis
from tests.host_sync_guard import forbid_host_reads
from tests.test_refresh_eigenbasis import (
    ORTHOGONALITY,
    RESIDUAL,
    _check_exact,
    _factor,
    _orthogonality_error,
    _relative_residual,
    _warm_basis,
    drifting_factors,
    needs_cuda,
    needs_native,
    permuted_exact_basis,
)

pytestmark = needs_native  # the sub-problems go to the native kernel


@pytest.fixture(autouse=True)
def one_thread():
    """Many small batched ops: on a loaded 2-core machine a second intra-op thread only adds waiting (the
    drifting-factor test ran 7x slower with two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def block_path(monkeypatch):
    """refresh_eigenbasis(method="exact") takes block-Jacobi above n = 64 on the CPU; yields the call count."""
    calls = []
    original = block_jacobi.block_jacobi_refresh
    monkeypatch.setitem(block_jacobi.MIN_N, "cpu", 64)
    monkeypatch.setattr(block_jacobi, "block_jacobi_refresh", lambda *args: calls.append(1) or original(*args))
    return calls


def _soap_like(batch: int, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, Q): a factor two steps of L <- 0.95 L + 0.05 g g^T after the one whose eigenvectors Q are."""
    generator = torch.Generator().manual_seed(seed)
    gradient = torch.randn(batch, n, n, dtype=torch.float64, generator=generator) / n**0.5
    factor = torch.zeros(batch, n, n, dtype=torch.float64)
    for step in range(22):
        if step == 20:
            basis = torch.from_numpy(np.linalg.eigh(factor.numpy())[1][..., ::-1].copy())
        gradient = gradient + 0.3 * torch.randn(batch, n, n, dtype=torch.float64, generator=generator) / n**0.5
        factor = 0.95 * factor + 0.05 * gradient @ gradient.mT
    return factor, basis


# ---------------------------------------------------------------------------------------------- layout


@pytest.mark.parametrize("n", [1, 2, 63, 64, 65, 129, 200, 256, 300, 384])
def test_block_layout_pads_less_than_one_index_per_block(n):
    k, b = block_layout(n)
    assert 1 <= b <= block_jacobi.MAX_BLOCK and 0 <= 2 * k * b - n < 2 * k


@pytest.mark.parametrize(("k", "b"), [(1, 3), (2, 2), (4, 32), (5, 30)])
def test_rounds_pair_every_two_blocks_once_per_sweep(k, b):
    first, steps, natural = block_jacobi._round_permutations(k, b, torch.device("cpu"))
    stored = first.clone()  # stored[i]: the natural index at stored position i
    met = set()
    for step in steps:
        blocks = (stored.view(2 * k, b) // b)[:, 0].tolist()  # the block at each position of the round
        assert sorted(blocks) == list(range(2 * k))
        assert (stored.view(2 * k, b) - stored.view(2 * k, b)[:, :1] == torch.arange(b)).all()  # blocks stay whole
        for t in range(k):
            met.add(tuple(sorted(blocks[2 * t : 2 * t + 2])))
        stored = stored[step]
    assert met == {(p, q) for p in range(2 * k) for q in range(p + 1, 2 * k)}
    assert torch.equal(stored, first)  # the last step returns to round 0's ordering
    assert torch.equal(stored[natural], torch.arange(2 * k * b))


# ---------------------------------------------------------------------------------------------- jacobi_eigen_

needs_jacobi_op = pytest.mark.skipif(
    not block_jacobi.has_jacobi_op(), reason="soap_kernels._C predates jacobi_eigen_ (rebuild it)"
)


@needs_jacobi_op
@pytest.mark.parametrize(("batch", "n"), [(1, 1), (3, 7), (4, 64)])
def test_jacobi_op_matches_the_reference_solver(batch, n):
    matrices = _factor("gram", batch, n, seed=n)
    values, vectors = jacobi_eigen_ref(matrices, 30)
    ours, vectors_t = matrices.clone(), torch.empty_like(matrices)
    torch.ops.soap_kernels.jacobi_eigen_(ours, vectors_t, 30)
    torch.testing.assert_close(ours.diagonal(0, -2, -1), values, atol=1e-12 * n, rtol=0)
    torch.testing.assert_close(vectors_t.mT, vectors, atol=1e-12, rtol=0)


@needs_jacobi_op
def test_jacobi_op_checks_its_arguments_and_opcheck():
    matrices = _factor("gram", 2, 5, seed=1)
    with pytest.raises(TypeError, match="float64"):
        torch.ops.soap_kernels.jacobi_eigen_(matrices.float(), matrices.float(), 10)
    with pytest.raises(ValueError, match="match"):
        torch.ops.soap_kernels.jacobi_eigen_(matrices, matrices[:1].clone(), 10)
    with pytest.raises(ValueError, match="contiguous"):
        torch.ops.soap_kernels.jacobi_eigen_(matrices.mT, matrices.clone(), 10)
    with pytest.raises(ValueError, match="max_sweeps"):
        torch.ops.soap_kernels.jacobi_eigen_(matrices, matrices.clone(), 0)
    torch.library.opcheck(torch.ops.soap_kernels.jacobi_eigen_.default, (matrices, torch.empty_like(matrices), 12))


@needs_jacobi_op
def test_both_sub_problem_solvers_agree():
    """jacobi_eigen_ and the fallback through the whole refresh op (sorted columns put back) agree."""
    factor, basis = _soap_like(2, 100, seed=3)
    ours, order, sweeps = block_jacobi_refresh_with_sweeps(factor, basis, 30, direct=True)
    other, other_order, other_sweeps = block_jacobi_refresh_with_sweeps(factor, basis, 30, direct=False)
    assert torch.equal(order, other_order) and torch.equal(sweeps, other_sweeps)
    torch.testing.assert_close(ours, other, atol=1e-12, rtol=0)
    for result in (ours, other):
        assert _relative_residual(factor, result).max().item() < 1e-12


# ---------------------------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize(
    ("dtype", "kind", "batch", "n", "warm"),
    [
        (torch.float64, "gram", 3, 65, False),  # 65 -> 2 pairs of blocks of 17 (3 padded indices)
        (torch.float64, "gram", 1, 256, True),
        (torch.float64, "cond1e8", 1, 130, True),
        (torch.float64, "cond1e8", 3, 67, False),
        (torch.float64, "clustered", 3, 65, False),
        (torch.float64, "clustered", 1, 200, True),
        (torch.float64, "clustered", 1, 256, False),  # 22 sweeps: needs the final Newton-Schulz step on V
        (torch.float64, "rank_deficient", 3, 200, True),
        (torch.float64, "repeated", 3, 300, False),
        (torch.float64, "zero", 3, 256, True),
        (torch.float32, "gram", 3, 65, True),
        (torch.float32, "cond1e8", 1, 300, True),
        (torch.float32, "rank_deficient", 1, 256, False),
    ],
)
def test_block_jacobi_against_numpy_eigh(block_path, dtype, kind, batch, n, warm):
    """Orthogonality, residual ||L Q - Q Lambda|| / ||L||, eigenvalues against numpy, descending order."""
    _check_exact(dtype, kind, batch, n, warm)
    assert block_path  # the block path ran


@pytest.mark.parametrize("n", [1, 2, 5])
def test_tiny_sizes(n):
    """Blocks of one or two indices (and a padded one) still give an exact eigenbasis."""
    factor = _factor("gram", 2, n, seed=n)
    ours, order = block_jacobi_refresh(factor, torch.eye(n, dtype=torch.float64).expand(2, n, n), 30)
    assert sorted(order[1].tolist()) == list(range(n))
    assert _orthogonality_error(ours) < 1e-14 and _relative_residual(factor, ours).max().item() < 1e-14


def test_order_maps_new_columns_to_the_old_ones(block_path):
    """From a permuted, sign-flipped exact eigenbasis, new column j is old column order[j]: the sub-problems'
    sorted eigenvectors are put back in place and the round permutations are undone."""
    factor, basis, permutation = permuted_exact_basis(70)
    ours, order = refresh_eigenbasis(factor, basis, "exact")
    assert block_path
    assert torch.equal(order[0], torch.argsort(permutation))
    torch.testing.assert_close(ours, basis[:, :, order[0]], atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_agrees_with_the_scalar_kernel_up_to_column_signs(dtype):
    """Well-separated spectrum, close warm start: the same eigenvectors, order and signs as the scalar kernel."""
    generator = torch.Generator().manual_seed(3)
    n = 150
    values = torch.linspace(10.0, 1.0, n, dtype=torch.float64).expand(2, n)
    factor = _with_spectrum_near(values, generator)
    basis = torch.eye(n, dtype=torch.float64).expand(2, n, n)  # rotated by about 1e-3 from the eigenvectors
    factor, basis = factor.to(dtype), basis.to(dtype)
    ours, order = block_jacobi_refresh(factor, basis, 30)
    scalar, scalar_order = refresh_eigenbasis(factor, basis, "exact", use_native=True)
    assert torch.equal(order, scalar_order)
    torch.testing.assert_close(ours, scalar, atol=10 * ORTHOGONALITY[dtype], rtol=0)


def _with_spectrum_near(values: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """U diag(values) U^T with U a small rotation of the identity (so the warm basis is unambiguous)."""
    batch, n = values.shape
    skew = 1e-3 * torch.randn(batch, n, n, dtype=torch.float64, generator=generator)
    u = torch.linalg.matrix_exp(skew - skew.mT)
    matrix = (u * values.unsqueeze(-2)) @ u.mT
    return (matrix + matrix.mT) / 2


def test_warm_start_converges_in_few_sweeps():
    """SOAP-like factors (two steps of drift since the basis was exact): at most 5 sweeps, fewer than cold."""
    factor, basis = _soap_like(2, 200)
    warm_basis, _, warm_sweeps = block_jacobi_refresh_with_sweeps(factor, basis, 30)
    identity = torch.eye(200, dtype=torch.float64).expand(2, 200, 200)
    cold_basis, _, cold_sweeps = block_jacobi_refresh_with_sweeps(factor, identity, 30)
    assert (warm_sweeps <= 5).all() and (warm_sweeps < cold_sweeps).all(), (warm_sweeps, cold_sweeps)
    for result in (warm_basis, cold_basis):
        assert _orthogonality_error(result) < 1e-12
        assert _relative_residual(factor, result).max().item() < 1e-12


def test_sweep_cap_still_returns_an_orthonormal_basis():
    factor = _factor("gram", 2, 100, seed=5)
    identity = torch.eye(100, dtype=torch.float64).expand(2, 100, 100)
    capped, order, sweeps = block_jacobi_refresh_with_sweeps(factor, identity, 1)
    assert sweeps.tolist() == [1, 1] and sorted(order[0].tolist()) == list(range(100))
    assert _orthogonality_error(capped) < 1e-12
    assert _relative_residual(factor, capped).max().item() > 1e-6  # one sweep of a cold start: not converged


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_many_warm_refreshes_of_a_drifting_factor_stay_orthonormal(dtype):
    """200 refreshes of a factor moving like SOAP's (L <- b L + (1 - b) g g^T), each from the last basis."""
    basis = torch.eye(70, dtype=dtype).expand(2, 70, 70).clone()
    for step, factor in enumerate(drifting_factors(batch=2, n=70, rank=8, steps=200)):
        basis, _ = block_jacobi_refresh(factor.to(dtype), basis, 30)
        if step % 50 == 49:
            assert _orthogonality_error(basis) < ORTHOGONALITY[dtype]
    assert _relative_residual(factor.to(dtype), basis).max().item() < RESIDUAL[dtype]


# ---------------------------------------------------------------------------------------------- guarantees


def test_non_finite_input_keeps_or_sanitises_the_basis(block_path):
    factor = _factor("gram", 3, 70, seed=2)
    basis = _warm_basis(factor)
    factor[1, 2, 3] = float("nan")
    basis[2, 0, 0] = float("inf")
    ours, order = refresh_eigenbasis(factor, basis, "exact")
    assert block_path
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours[1], basis[1])  # the non-finite factor keeps its basis
    assert torch.equal(order[1], torch.arange(70))
    assert _orthogonality_error(ours[2]) < 1e-12  # the non-finite basis restarts from the identity
    assert _relative_residual(factor[2:], ours[2:]).max().item() < 1e-12
    clean, clean_order = refresh_eigenbasis(factor[:1], basis[:1], "exact")
    torch.testing.assert_close(ours[:1], clean, atol=1e-14, rtol=0)  # other matrices are not affected
    assert torch.equal(order[:1], clean_order)


def test_overflowing_products_fall_back_to_the_basis():
    """Finite entries near 1e300 whose sum is finite but whose products overflow: no NaN comes out."""
    factor = _factor("gram", 2, 70, seed=3) / 500.0
    factor[0] *= 1e297
    basis = _warm_basis(factor)
    ours, order = block_jacobi_refresh(factor, basis, 30)
    assert torch.isfinite(ours).all()
    assert _orthogonality_error(ours) < 1e-12


def test_empty_and_unbatched_calls(block_path):
    empty = torch.empty(0, 80, 80, dtype=torch.float64)
    basis, order = refresh_eigenbasis(empty, empty, "exact")
    assert basis.shape == (0, 80, 80) and order.shape == (0, 80)
    factor = _factor("gram", 1, 80, seed=1)[0]
    basis, order = refresh_eigenbasis(factor, torch.eye(80, dtype=torch.float64), "exact")
    assert basis.shape == (80, 80) and order.shape == (80,) and block_path
    assert _relative_residual(factor[None], basis[None]).item() < 1e-12


def test_dispatch_threshold(monkeypatch):
    calls = []
    original = block_jacobi.block_jacobi_refresh
    spy = lambda *args: calls.append(args[0].shape) or original(*args)  # noqa: E731
    monkeypatch.setattr(block_jacobi, "block_jacobi_refresh", spy)
    monkeypatch.setitem(block_jacobi.MIN_N, "cpu", 40)
    factor = _factor("gram", 1, 40, seed=1)
    basis = torch.eye(40, dtype=torch.float64).expand(1, 40, 40)
    refresh_eigenbasis(factor, basis, "exact", use_native=True)  # n = 40: not above the threshold
    refresh_eigenbasis(factor, basis, "qr", use_native=True)
    refresh_eigenbasis(factor, basis, "exact", use_native=False)
    assert calls == []
    refresh_eigenbasis(_factor("gram", 1, 41, seed=1), torch.eye(41).double().expand(1, 41, 41), "exact")
    assert calls == [(1, 41, 41)]


def test_no_host_reads_without_early_stop():
    """With stop_early=False (the CUDA default) the driver reads nothing back: graph-capturable on a GPU, given
    a warm-up call that built the round permutations (cached per device)."""
    factor = _factor("gram", 2, 70, seed=4)
    basis = _warm_basis(factor)
    expected, expected_order = block_jacobi_refresh(factor, basis, 8, stop_early=False)
    with forbid_host_reads():
        ours, order = block_jacobi_refresh(factor, basis, 8, stop_early=False)
    assert torch.equal(ours, expected) and torch.equal(order, expected_order)
    early, early_order = block_jacobi_refresh(factor, basis, 8)  # converged sweeps change nothing
    assert torch.equal(early, expected) and torch.equal(early_order, expected_order)


# ---------------------------------------------------------------------------------------------- CUDA


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("batch", "n"), [(3, 256), (1, 300), (2, 384)])
def test_cuda_block_jacobi_matches_cpu(dtype, batch, n):
    assert block_jacobi.uses_block_jacobi(n, torch.device("cuda"))
    factor, basis = _soap_like(batch, n, seed=n)
    factor, basis = factor.to(dtype), basis.to(dtype)
    ours, order = refresh_eigenbasis(factor.cuda(), basis.cuda(), "exact")
    expected, expected_order = block_jacobi_refresh(factor, basis, 30)
    assert torch.equal(order.cpu(), expected_order)
    torch.testing.assert_close(ours.cpu(), expected, atol=1e-4 if dtype == torch.float32 else 1e-9, rtol=0)
    assert _orthogonality_error(ours.cpu()) < ORTHOGONALITY[dtype]
    assert _relative_residual(factor.double(), ours.cpu()).max().item() < RESIDUAL[dtype]


@pytest.mark.cuda
@needs_cuda
def test_cuda_block_jacobi_is_graph_capturable():
    factor, basis = _soap_like(4, 256, seed=1)
    factor, basis = factor.cuda(), basis.cuda()
    expected, expected_order = refresh_eigenbasis(factor, basis, "exact", max_sweeps=8)  # also the warm-up
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured, captured_order = refresh_eigenbasis(factor, basis, "exact", max_sweeps=8)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(captured, expected, atol=1e-12, rtol=0)
    assert torch.equal(captured_order, expected_order)
    assert _relative_residual(factor.cpu(), captured.cpu()).max().item() < 1e-12


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_round_permutations_first_built_inside_a_capture_are_not_kept(monkeypatch):
    """Built inside a capture, the index maps exist only once the graph replays: an eager refresh after the
    capture (before any replay) must build its own, and both must match an eager refresh."""
    from soap_kernels.ops import block_jacobi

    monkeypatch.setattr(block_jacobi, "_PERMUTATIONS", {})
    factor, basis = _soap_like(2, 256, seed=3)
    factor, basis = factor.cuda(), basis.cuda()
    warm_factor, warm_basis = (t.cuda() for t in _soap_like(2, 300, seed=4))  # other blocks: (5, 30), not (4, 32)
    side = torch.cuda.Stream()  # the warm-up a capture needs (libraries, Triton), on another size
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        block_jacobi.block_jacobi_refresh(warm_factor, warm_basis, 8)
    torch.cuda.current_stream().wait_stream(side)
    kept = set(block_jacobi._PERMUTATIONS)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured, captured_order = block_jacobi.block_jacobi_refresh(factor, basis, 8)
    assert set(block_jacobi._PERMUTATIONS) == kept
    eager, eager_order = block_jacobi.block_jacobi_refresh(factor, basis, 8)  # before any replay
    assert len(block_jacobi._PERMUTATIONS) == len(kept) + 1
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(captured, eager, atol=1e-12, rtol=0)
    assert torch.equal(captured_order, eager_order)
