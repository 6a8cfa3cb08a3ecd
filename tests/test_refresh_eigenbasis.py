"""soap_kernels::refresh_eigenbasis: the C++/CUDA kernels against the torch reference of the same algorithm,
against torch.linalg.qr (method "qr") and numpy.linalg.eigh in float64 (method "exact")."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from soap_kernels._native import has_native_cpu, has_native_cuda
from soap_kernels.ops import block_jacobi
from soap_kernels.ops.refresh_eigenbasis import refresh_eigenbasis, refresh_eigenbasis_ref

needs_native = pytest.mark.skipif(not has_native_cpu(), reason="soap_kernels._C is not built")
needs_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and has_native_cuda()), reason="needs a CUDA device and the CUDA kernels"
)

ORTHOGONALITY = {torch.float32: 1e-5, torch.float64: 1e-12}
RESIDUAL = {torch.float32: 1e-5, torch.float64: 1e-12}


def _orthogonal(batch: int, n: int, generator: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(batch, n, n, dtype=torch.float64, generator=generator))
    return q * torch.sgn(r.diagonal(0, -2, -1)).unsqueeze(-2)


def _with_spectrum(eigenvalues: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """U diag(eigenvalues) U^T with a random orthogonal U, float64, [batch, n, n]."""
    batch, n = eigenvalues.shape
    u = _orthogonal(batch, n, generator)
    matrix = (u * eigenvalues.unsqueeze(-2)) @ u.mT
    return (matrix + matrix.mT) / 2


def _factor(kind: str, batch: int, n: int, seed: int = 0) -> torch.Tensor:
    """float64 symmetric PSD test factors of a given kind."""
    generator = torch.Generator().manual_seed(seed)
    if kind == "gram":  # a full-rank G G^T
        g = torch.randn(batch, n, n + 3, dtype=torch.float64, generator=generator)
        return g @ g.mT
    if kind == "cond1e8":
        exponents = torch.rand(batch, n, dtype=torch.float64, generator=generator) * -8
        exponents[:, 0], exponents[:, -1] = 0.0, -8.0
        return _with_spectrum(10.0**exponents, generator)
    if kind == "clustered":  # three clusters of (nearly) repeated eigenvalues
        values = torch.tensor([5.0, 1.0, 0.2], dtype=torch.float64)[torch.arange(n) % 3]
        values = values + 1e-13 * torch.rand(n, dtype=torch.float64, generator=generator)
        return _with_spectrum(values.expand(batch, n).clone(), generator)
    if kind == "repeated":
        return _with_spectrum(torch.ones(batch, n, dtype=torch.float64), generator) * 3.0
    if kind == "rank_deficient":  # G G^T with G of rank ~ n / 4: SOAP's early factors
        g = torch.randn(batch, n, max(1, n // 4), dtype=torch.float64, generator=generator)
        return g @ g.mT
    if kind == "zero":
        return torch.zeros(batch, n, n, dtype=torch.float64)
    raise AssertionError(kind)


def _warm_basis(factor: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """Eigenvectors of a nearby factor (about 5% relative change): the basis SOAP holds between refreshes."""
    generator = torch.Generator().manual_seed(seed)
    batch, n, _ = factor.shape
    noise = torch.randn(batch, n, n, dtype=torch.float64, generator=generator)
    scale = 0.05 * torch.linalg.matrix_norm(factor).clamp_min(1e-30).view(batch, 1, 1) / n
    nearby = factor + scale * (noise + noise.mT)
    return torch.from_numpy(np.linalg.eigh(nearby.numpy())[1][..., ::-1].copy())


def _orthogonality_error(q: torch.Tensor) -> float:
    q = q.double()
    return (q.mT @ q - torch.eye(q.shape[-1], dtype=torch.float64)).abs().amax().item()


def _relative_residual(factor: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """||L Q - Q diag(Q^T L Q)||_F / ||L||_F per matrix (0 for the zero matrix), in float64."""
    factor, q = factor.double(), q.double()
    eigenvalues = (q * (factor @ q)).sum(-2)
    residual = torch.linalg.matrix_norm(factor @ q - q * eigenvalues.unsqueeze(-2))
    return residual / torch.linalg.matrix_norm(factor).clamp_min(1e-300)


def drifting_factors(batch: int, n: int, rank: int, steps: int, beta: float = 0.95, seed: int = 5):
    """float64 factors [batch, n, n] moving like SOAP's, L <- beta L + (1 - beta) g g^T, one per step: g comes
    from a rank-`rank` direction that itself drifts a little every step."""
    generator = torch.Generator().manual_seed(seed)
    direction = torch.randn(batch, n, rank, dtype=torch.float64, generator=generator)
    factor = direction @ direction.mT
    for _ in range(steps):
        direction = direction + 0.1 * torch.randn(batch, n, rank, dtype=torch.float64, generator=generator)
        gradient = direction @ torch.randn(batch, rank, 1, dtype=torch.float64, generator=generator)
        factor = beta * factor + (1 - beta) * gradient @ gradient.mT
        yield factor


def _qr_reference_path(factor: torch.Tensor, basis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SOAP's reference refresh in float64: sort by diag(Q^T L Q) (stable), then torch.linalg.qr(L Q_sorted)."""
    factor, basis = factor.double(), basis.double()
    estimated = (basis * (factor @ basis)).sum(-2)
    order = torch.sort(estimated, dim=-1, descending=True, stable=True).indices
    n = factor.shape[-1]
    sorted_basis = torch.gather(basis, 2, order.unsqueeze(1).expand(-1, n, n))
    return torch.linalg.qr(factor @ sorted_basis)[0], order


# ---------------------------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("use_native", [False, pytest.param(True, marks=needs_native)])
def test_bad_arguments_name_the_value(use_native):
    factor = torch.eye(4, dtype=torch.float64).expand(2, 4, 4).clone()
    with pytest.raises(ValueError, match="method"):
        refresh_eigenbasis(factor, factor, "cholesky", use_native=use_native)
    with pytest.raises(ValueError, match="shape"):
        refresh_eigenbasis(factor, factor[:, :3, :3], use_native=use_native)
    with pytest.raises(ValueError, match=r"\[batch, n, n\]"):
        refresh_eigenbasis(factor[:, :3], factor[:, :3], use_native=use_native)
    with pytest.raises(TypeError, match="float32 or float64"):
        refresh_eigenbasis(factor.int(), factor.int(), use_native=use_native)
    with pytest.raises(TypeError, match="differs"):
        refresh_eigenbasis(factor, factor.float(), use_native=use_native)
    with pytest.raises(TypeError, match="torch.Tensor"):
        refresh_eigenbasis(factor.numpy(), factor, use_native=use_native)
    with pytest.raises(ValueError, match="max_sweeps"):
        refresh_eigenbasis(factor, factor, "exact", max_sweeps=0, use_native=use_native)


@needs_native
def test_native_op_checks_its_arguments_too():
    factor = torch.eye(3).expand(2, 3, 3).clone()
    with pytest.raises(ValueError, match="method"):
        torch.ops.soap_kernels.refresh_eigenbasis(factor, factor, "svd", 10)
    with pytest.raises(TypeError, match="float32 or float64"):
        torch.ops.soap_kernels.refresh_eigenbasis(factor.half(), factor.half(), "qr", 10)


@needs_native
def test_backend_environment_variable_selects_the_implementation(monkeypatch):
    factor = _factor("gram", 1, 4)
    basis = torch.eye(4, dtype=torch.float64).expand(1, 4, 4).clone()
    calls = []
    monkeypatch.setattr(
        "soap_kernels.ops.refresh_eigenbasis.refresh_eigenbasis_ref",
        lambda *args: calls.append("reference") or refresh_eigenbasis_ref(*args),
    )
    monkeypatch.setenv("SOAP_KERNELS_BACKEND", "torch")
    refresh_eigenbasis(factor, basis)
    assert calls == ["reference"]
    monkeypatch.setenv("SOAP_KERNELS_BACKEND", "auto")
    refresh_eigenbasis(factor, basis)
    assert calls == ["reference"]  # the native kernel ran
    monkeypatch.setenv("SOAP_KERNELS_BACKEND", "cuda")  # CPU tensors: the CUDA-only kernel cannot run them
    with pytest.raises(RuntimeError):
        refresh_eigenbasis(factor, basis)


def test_unbatched_call_drops_the_batch_dimension():
    factor = _factor("gram", 1, 5)[0]
    basis, order = refresh_eigenbasis(factor, torch.eye(5, dtype=torch.float64))
    assert basis.shape == (5, 5) and order.shape == (5,) and order.dtype == torch.int64


# ------------------------------------------------------------------------------- kernel == torch reference


@needs_native
@pytest.mark.parametrize("method", ["qr", "exact"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("batch", "n"), [(1, 1), (3, 2), (1, 7), (4, 7), (2, 32)])
def test_native_kernel_matches_torch_reference(method, dtype, batch, n):
    factor = _factor("gram", batch, n, seed=n).to(dtype)
    basis = (_warm_basis(factor.double()) if method == "exact" else _orthogonal(batch, n, torch.Generator())).to(dtype)
    ours, ours_order = refresh_eigenbasis(factor, basis, method, use_native=True)
    reference, reference_order = refresh_eigenbasis_ref(factor, basis, method)
    assert ours.dtype == dtype and ours_order.dtype == torch.int64
    assert torch.equal(ours_order, reference_order)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-11
    torch.testing.assert_close(ours, reference, atol=tolerance, rtol=0)


@needs_native
@pytest.mark.parametrize("method", ["qr", "exact"])
@pytest.mark.parametrize("kind", ["cond1e8", "clustered", "rank_deficient", "zero"])
def test_native_kernel_matches_torch_reference_on_hard_factors(method, kind):
    factor = _factor(kind, 3, 16, seed=4)
    basis = _warm_basis(factor)
    ours, ours_order = refresh_eigenbasis(factor, basis, method, use_native=True)
    reference, reference_order = refresh_eigenbasis_ref(factor, basis, method)
    if kind in ("cond1e8", "zero"):
        assert torch.equal(ours_order, reference_order)
        torch.testing.assert_close(ours, reference, atol=1e-9, rtol=0)
    elif method == "exact":  # vectors inside a (near-)degenerate eigenspace are not determined: compare L
        for basis_ in (ours, reference):
            values = (basis_ * (factor @ basis_)).sum(-2)
            torch.testing.assert_close((basis_ * values.unsqueeze(-2)) @ basis_.mT, factor, atol=1e-12, rtol=0)
    else:  # rank 4: the first 4 columns are determined, the rest complete the basis
        assert torch.equal(ours_order, reference_order)
        torch.testing.assert_close(ours[..., :4], reference[..., :4], atol=1e-9, rtol=0)
        assert _orthogonality_error(ours) < 1e-12


@needs_native
@pytest.mark.parametrize("cpu_algorithm", ["householder", "cholesky"])
@pytest.mark.parametrize("kind", ["gram", "cond1e8", "rank_deficient"])
@pytest.mark.parametrize(("batch", "n"), [(2, 7), (2, 96), (1, 300)])
def test_native_qr_both_cpu_algorithms(cpu_algorithm, kind, batch, n, monkeypatch):
    """The CPU kernel's Householder-R path and the CUDA kernel's blocked CholeskyQR (forced on the CPU: 96 and
    300 take several 64-wide diagonal blocks, the last one ragged) against the reference and invariants."""
    monkeypatch.setenv("SOAP_KERNELS_REFRESH_QR_CPU", cpu_algorithm)
    factor = _factor(kind, batch, n, seed=n)
    basis = _warm_basis(factor)
    ours, order = refresh_eigenbasis(factor, basis, "qr", use_native=True)
    reference, reference_order = refresh_eigenbasis_ref(factor, basis, "qr")
    assert torch.equal(order, reference_order)
    assert _orthogonality_error(ours) < 1e-12 * max(1, n / 64)
    if kind == "gram":
        torch.testing.assert_close(ours, reference, atol=1e-10, rtol=0)
    sorted_basis = torch.gather(basis, 2, order.unsqueeze(1).expand(-1, n, n))
    below_diagonal = torch.linalg.matrix_norm(torch.tril(ours.mT @ (factor @ sorted_basis), -1))
    assert (below_diagonal / torch.linalg.matrix_norm(factor)).max().item() < 1e-12 * (n**0.5 + 10)


# ------------------------------------------------------------------------------------ "qr": the SOAP path


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("batch", "n"), [(1, 1), (3, 2), (1, 7), (3, 32), (2, 64), (1, 128), (2, 256), (1, 300)])
def test_qr_spans_the_nested_subspaces_of_torch_qr(dtype, batch, n):
    """Well-conditioned factors: each column equals torch.linalg.qr's up to sign; order is the reference's."""
    generator = torch.Generator().manual_seed(n)
    factor = _with_spectrum(1.0 + 9.0 * torch.rand(batch, n, dtype=torch.float64, generator=generator), generator)
    basis = _orthogonal(batch, n, generator)
    factor, basis = factor.to(dtype), basis.to(dtype)
    ours, order = refresh_eigenbasis(factor, basis, "qr")
    expected, expected_order = _qr_reference_path(factor, basis)
    assert torch.equal(order, expected_order)
    cosines = (ours.double() * expected).sum(-2).abs()
    tolerance = 1e-4 if dtype == torch.float32 else 1e-10
    assert (1 - cosines).abs().max().item() < tolerance
    assert _orthogonality_error(ours) < ORTHOGONALITY[dtype] * max(1, n / 64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["cond1e8", "clustered", "repeated", "rank_deficient", "zero"])
@pytest.mark.parametrize(("batch", "n"), [(1, 2), (3, 7), (2, 64), (1, 256)])
def test_qr_hard_factors_stay_orthonormal_and_triangular(dtype, kind, batch, n):
    """Ill-conditioned or singular factors: an orthonormal basis with Q^T (L Q_sorted) upper triangular."""
    factor = _factor(kind, batch, n, seed=n).to(dtype)
    basis = _orthogonal(batch, n, torch.Generator().manual_seed(7)).to(dtype)
    ours, order = refresh_eigenbasis(factor, basis, "qr")
    assert torch.isfinite(ours).all()
    assert _orthogonality_error(ours) < ORTHOGONALITY[dtype] * max(1, n / 64)
    sorted_basis = torch.gather(basis.double(), 2, order.unsqueeze(1).expand(-1, n, n))
    power = factor.double() @ sorted_basis
    below_diagonal = torch.linalg.matrix_norm(torch.tril(ours.double().mT @ power, -1))
    scale = torch.linalg.matrix_norm(factor.double()).clamp_min(1e-300)
    # X = L Q_s / ||L|| + 1e-12 Q_s is what is triangularised exactly: the shift adds <= 1e-12 sqrt(n).
    bound = 1e-5 if dtype == torch.float32 else 1e-12 * (n**0.5 + 10)
    assert (below_diagonal / scale).max().item() < bound
    if kind == "zero":  # nothing to learn: keep the (sorted) basis
        torch.testing.assert_close(ours.double(), sorted_basis, atol=ORTHOGONALITY[dtype], rtol=0)


# ------------------------------------------------------------------------------------ "exact": Jacobi


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["gram", "cond1e8", "clustered", "repeated", "rank_deficient", "zero"])
@pytest.mark.parametrize(("batch", "n", "warm"), [(1, 1, False), (3, 2, False), (4, 7, False), (2, 32, False)])
def test_exact_small_against_numpy_eigh(dtype, kind, batch, n, warm):
    _check_exact(dtype, kind, batch, n, warm)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("dtype", "kind", "batch", "n"),
    [
        (torch.float64, "cond1e8", 2, 64),
        (torch.float32, "gram", 1, 64),
        (torch.float64, "clustered", 1, 128),
        (torch.float64, "rank_deficient", 1, 128),
        (torch.float64, "gram", 1, 256),
        (torch.float32, "cond1e8", 1, 300),
    ],
)
def test_exact_large_warm_started_against_numpy_eigh(dtype, kind, batch, n):
    _check_exact(dtype, kind, batch, n, warm=True)


def _check_exact(dtype, kind, batch, n, warm):
    factor64 = _factor(kind, batch, n, seed=n)
    basis64 = _warm_basis(factor64) if warm else torch.eye(n, dtype=torch.float64).expand(batch, n, n)
    factor, basis = factor64.to(dtype), basis64.to(dtype)
    ours, order = refresh_eigenbasis(factor, basis, "exact")
    assert ours.dtype == dtype and torch.isfinite(ours).all()
    assert sorted(order[0].tolist()) == list(range(n))
    assert _orthogonality_error(ours) < ORTHOGONALITY[dtype]
    assert _relative_residual(factor.double(), ours).max().item() < RESIDUAL[dtype]
    reference_values = torch.from_numpy(np.linalg.eigvalsh(factor.double().numpy())[..., ::-1].copy())
    ours_values = (ours.double() * (factor.double() @ ours.double())).sum(-2)
    scale = torch.linalg.matrix_norm(factor.double()).clamp_min(1e-300).unsqueeze(-1)
    assert ((ours_values - reference_values).abs() / scale).max().item() < RESIDUAL[dtype]
    assert (ours_values[:, 1:] <= ours_values[:, :-1] + RESIDUAL[dtype] * scale).all()  # descending


def permuted_exact_basis(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(factor [1, n, n] with eigenvalues 9..1, basis = its eigenvectors permuted and sign-flipped, the
    permutation): new column j of an exact refresh must be old column argsort(permutation)[j]."""
    generator = torch.Generator().manual_seed(11)
    values = torch.linspace(9.0, 1.0, n, dtype=torch.float64)
    eigenvectors = _orthogonal(1, n, generator)
    factor = (eigenvectors * values) @ eigenvectors.mT
    permutation = torch.randperm(n, generator=generator)
    signs = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0).to(torch.float64)
    return factor, eigenvectors[:, :, permutation] * signs, permutation


def test_exact_order_maps_new_columns_to_the_old_ones():
    """From a permuted, sign-flipped exact eigenbasis, new column j is old column order[j] (up to sign)."""
    factor, basis, permutation = permuted_exact_basis(9)
    ours, order = refresh_eigenbasis(factor, basis, "exact")
    assert torch.equal(order[0], torch.argsort(permutation))
    torch.testing.assert_close(ours, basis[:, :, order[0]], atol=1e-12, rtol=0)
    qr_basis, qr_order = refresh_eigenbasis(factor, basis, "qr")  # the same permutation, by diag(Q^T L Q)
    assert torch.equal(qr_order, order)


@pytest.mark.parametrize("method", ["exact", "qr"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_many_warm_refreshes_of_a_drifting_factor_stay_orthonormal(method, dtype):
    """1000 refreshes of a factor that moves like SOAP's (L <- b L + (1 - b) g g^T), each from the last basis."""
    basis = torch.eye(12, dtype=dtype).expand(2, 12, 12).clone()
    for step, factor in enumerate(drifting_factors(batch=2, n=12, rank=4, steps=1000)):
        basis, _ = refresh_eigenbasis(factor.to(dtype), basis, method)
        if step % 100 == 99:
            assert _orthogonality_error(basis) < ORTHOGONALITY[dtype]
    if method == "exact":
        assert _relative_residual(factor.to(dtype), basis).max().item() < RESIDUAL[dtype]


@pytest.mark.parametrize("method", ["qr", "exact"])
@pytest.mark.parametrize("use_native", [False, pytest.param(True, marks=needs_native)])
def test_non_finite_input_keeps_or_sanitises_the_basis(method, use_native):
    factor = _factor("gram", 3, 6, seed=2)
    basis = _warm_basis(factor)
    factor[1, 2, 3] = float("nan")
    basis[2, 0, 0] = float("inf")
    ours, order = refresh_eigenbasis(factor, basis, method, use_native=use_native)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours[1], basis[1])  # the non-finite factor keeps its basis
    assert torch.equal(order[1], torch.arange(6))
    assert _orthogonality_error(ours[2]) < 1e-12  # the non-finite basis restarts from the identity
    clean, clean_order = refresh_eigenbasis(factor[:1], basis[:1], method, use_native=use_native)
    torch.testing.assert_close(ours[:1], clean)  # other matrices are not affected
    assert torch.equal(order[:1], clean_order)


@pytest.mark.parametrize("method", ["qr", "exact"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("use_native", [False, pytest.param(True, marks=needs_native)])
def test_a_batch_equals_its_matrices_refreshed_alone(method, dtype, use_native):
    """The CPU kernel splits a batch over threads: each matrix's result must not depend on its neighbours."""
    factor = _factor("gram", 6, 9, seed=5).to(dtype)  # well conditioned: batched and single GEMMs round alike
    basis = _warm_basis(factor.double()).to(dtype)
    together, together_order = refresh_eigenbasis(factor, basis, method, use_native=use_native)
    for index in range(factor.shape[0]):
        alone, alone_order = refresh_eigenbasis(factor[index], basis[index], method, use_native=use_native)
        assert torch.equal(together_order[index], alone_order)
        torch.testing.assert_close(together[index], alone, atol=ORTHOGONALITY[dtype], rtol=0)


@pytest.mark.parametrize("use_native", [False, pytest.param(True, marks=needs_native)])
def test_qr_is_scale_invariant_up_to_float32s_top(use_native):
    """A finite float32 factor whose L Q would overflow (entries 3e38, all ones plus a gram) refreshes like the same
    factor scaled down by 1e-30: the kernel forms (L / ||L||) Q, never L Q."""
    generator = torch.Generator().manual_seed(11)
    g = torch.randn(1, 8, 8, dtype=torch.float64, generator=generator)
    shape = torch.ones(1, 8, 8, dtype=torch.float64) + 0.1 * g @ g.mT / 8
    basis = _orthogonal(1, 8, generator).float()
    top = (shape * 3e38 / shape.abs().amax()).float()
    assert torch.isfinite(top).all() and not torch.isfinite(top @ basis).all()  # L Q itself overflows in float32
    ours, order = refresh_eigenbasis(top, basis, "qr", use_native=use_native)
    small, small_order = refresh_eigenbasis((top.double() * 1e-30).float(), basis, "qr", use_native=use_native)
    assert torch.equal(order, small_order)
    cosines = (ours.double() * small.double()).sum(-2).abs()
    assert (1 - cosines).abs().max().item() < 1e-4


@pytest.mark.parametrize("use_native", [False, pytest.param(True, marks=needs_native)])
def test_qr_of_a_huge_finite_float32_factor_is_still_a_qr(use_native):
    """Entries near 1e20 (a diverging run's factor) square past float32's range in ||L||_F; the result must
    still be the orthonormal factor of L Q_sorted, not the old basis."""
    factor = _factor("gram", 2, 8, seed=3)
    basis = _warm_basis(factor)
    huge = (factor * 1e20 / factor.abs().amax()).float()
    ours, order = refresh_eigenbasis(huge, basis.float(), "qr", use_native=use_native)
    expected, expected_order = refresh_eigenbasis(factor, basis, "qr", use_native=use_native)
    assert torch.equal(order, expected_order)
    cosines = (ours.double() * expected).sum(-2).abs()
    assert (1 - cosines).abs().max().item() < 1e-4

@pytest.mark.parametrize("use_native", [False, pytest.param(True, marks=needs_native)])
def test_empty_batch(use_native):
    empty = torch.empty(0, 4, 4, dtype=torch.float64)
    basis, order = refresh_eigenbasis(empty, empty, "exact", use_native=use_native)
    assert basis.shape == (0, 4, 4) and order.shape == (0, 4)


# ------------------------------------------------------------------------------------ registration


@needs_native
@pytest.mark.parametrize("method", ["qr", "exact"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(method, dtype):
    factor = _factor("gram", 2, 5, seed=1).to(dtype)
    basis = torch.eye(5, dtype=dtype).expand(2, 5, 5).clone()
    torch.library.opcheck(torch.ops.soap_kernels.refresh_eigenbasis.default, (factor, basis, method, 12))


# ------------------------------------------------------------------ the shared core with a parallel team

# The CUDA kernels run the solver cores with a thread block as the team. Without a GPU, this program runs
# them with a team of std::threads (barrier = __syncthreads) to check that the phases are race-free and that
# the parallel result equals the one-worker (CPU kernel) result bit for bit.
_TEAM_CHECK_SOURCE = r"""
// Runs the shared solver cores with a team of std::threads standing in for a CUDA thread block.
#include <atomic>
#include <barrier>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <thread>
#include <vector>

#include "soap_kernels/eigen_refresh_core.h"

using namespace soap_kernels::eigen_refresh;

struct ThreadTeam {
  int worker, workers;
  std::barrier<>* barrier;
  std::atomic<int>* flag;
  double* partials;
  int rank() const { return worker; }
  int size() const { return workers; }
  void sync() const { barrier->arrive_and_wait(); }
  bool any(bool value) const {
    sync();
    if (worker == 0) flag->store(0);
    sync();
    if (value) flag->fetch_or(1);
    sync();
    const bool result = flag->load() != 0;
    sync();
    return result;
  }
  double sum(double value) const {
    partials[worker] = value;
    sync();
    double total = 0.0;
    for (int i = 0; i < workers; ++i) total += partials[i];
    sync();
    return total;
  }
};

template <typename Body>
void run_team(int workers, Body body) {
  std::barrier<> barrier(workers);
  std::atomic<int> flag{0};
  std::vector<double> partials(workers);
  std::vector<std::thread> threads;
  for (int w = 0; w < workers; ++w)
    threads.emplace_back([&, w] { body(ThreadTeam{w, workers, &barrier, &flag, partials.data()}); });
  for (auto& t : threads) t.join();
}

int main(int argc, char** argv) {
  const int64_t n = std::atoi(argv[1]);
  const int workers = std::atoi(argv[2]);
  std::mt19937_64 rng(42);
  std::normal_distribution<double> normal;
  std::vector<double> a(n * n);
  for (auto& x : a) x = normal(rng);
  std::vector<double> g(n * n, 0.0);  // G = A A^T + I
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = i == j ? 1.0 : 0.0;
      for (int64_t k = 0; k < n; ++k) s += a[i * n + k] * a[j * n + k];
      g[i * n + j] = s;
    }
  // Cholesky + inverse: W^T G W must be I, W upper triangular, and the serial team must agree.
  std::vector<double> w = g, w_serial = g, scratch(2 * n), scratch_serial(2 * n);
  run_team(workers, [&](const ThreadTeam& team) { cholesky_upper_inverse(team, w.data(), n, scratch.data()); });
  run_team(1, [&](const ThreadTeam& team) { cholesky_upper_inverse(team, w_serial.data(), n, scratch_serial.data()); });
  double cholesky_error = 0.0, cholesky_serial_difference = 0.0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0.0;
      for (int64_t k = 0; k < n; ++k)
        for (int64_t l = 0; l < n; ++l) s += w[k * n + i] * g[k * n + l] * w[l * n + j];
      cholesky_error = std::max(cholesky_error, std::abs(s - (i == j ? 1.0 : 0.0)));
      if (i > j && w[i * n + j] != 0.0) cholesky_error = 1.0;  // below the diagonal: zeros
      cholesky_serial_difference = std::max(cholesky_serial_difference, std::abs(w[i * n + j] - w_serial[i * n + j]));
    }
  // Jacobi: V diag(B') V^T must be G, V orthogonal; the serial team must agree.
  const int64_t pairs = (n + (n & 1)) / 2;
  auto solve = [&](int team_size, std::vector<double>& b, std::vector<double>& v_t) {
    std::vector<double> reals(4 * pairs);
    std::vector<int64_t> indices(2 * pairs);
    const JacobiScratch scratch{reals.data(), reals.data() + pairs, reals.data() + 2 * pairs,
                                reals.data() + 3 * pairs, indices.data(), indices.data() + pairs};
    run_team(team_size, [&](const ThreadTeam& team) { jacobi_eigen(team, b.data(), v_t.data(), n, 40, scratch); });
  };
  std::vector<double> b = g, v_t(n * n), b_serial = g, v_serial(n * n);
  solve(workers, b, v_t);
  solve(1, b_serial, v_serial);
  double reconstruction = 0.0, orthogonality = 0.0, serial_difference = 0.0, scale = 0.0;
  for (int64_t i = 0; i < n * n; ++i) scale = std::max(scale, std::abs(g[i]));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0.0, o = 0.0;
      for (int64_t k = 0; k < n; ++k) {
        s += v_t[k * n + i] * b[k * n + k] * v_t[k * n + j];
        o += v_t[i * n + k] * v_t[j * n + k];
      }
      reconstruction = std::max(reconstruction, std::abs(s - g[i * n + j]) / scale);
      orthogonality = std::max(orthogonality, std::abs(o - (i == j ? 1.0 : 0.0)));
      serial_difference = std::max(serial_difference, std::abs(v_t[i * n + j] - v_serial[i * n + j]));
    }
  std::printf("%.3e %.3e %.3e %.3e %.3e\n", cholesky_error, cholesky_serial_difference, reconstruction,
              orthogonality, serial_difference);
  return 0;
}
"""


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="needs a C++20 compiler")
def test_solver_cores_with_a_parallel_team(tmp_path):
    source = tmp_path / "team_check.cpp"
    source.write_text(_TEAM_CHECK_SOURCE)
    include = Path(__file__).resolve().parent.parent / "csrc" / "include"
    binary = tmp_path / "team_check"
    compiler = os.environ.get("CXX", "g++")
    subprocess.run(
        [compiler, "-std=c++20", "-O1", "-pthread", f"-I{include}", str(source), "-o", str(binary)], check=True
    )
    for n, workers in [(1, 1), (2, 3), (7, 4), (33, 8), (64, 5), (64, 256), (37, 100)]:
        output = subprocess.run([str(binary), str(n), str(workers)], capture_output=True, text=True, check=True)
        cholesky, cholesky_serial, reconstruction, orthogonality, serial = map(float, output.stdout.split())
        assert cholesky < 1e-12 and reconstruction < 1e-13 and orthogonality < 1e-13, (n, workers, output.stdout)
        assert cholesky_serial == 0.0 and serial == 0.0, (n, workers, output.stdout)


# ------------------------------------------------------------------------------------ CUDA


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("method", ["qr", "exact"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
# n = 1, 7, 64: Jacobi staged in shared memory with its vectors; 128: the matrix only; 256, 300: "exact" runs
# block-Jacobi on CUDA (ops/block_jacobi.py), compared with the same algorithm on the CPU.
@pytest.mark.parametrize(("batch", "n"), [(1, 1), (3, 7), (2, 64), (2, 128), (4, 256), (1, 300)])
def test_cuda_kernel_matches_cpu_kernel(method, dtype, batch, n):
    factor = _factor("gram", batch, n, seed=n)
    basis = _warm_basis(factor)
    factor, basis = factor.to(dtype), basis.to(dtype)
    ours, order = refresh_eigenbasis(factor.cuda(), basis.cuda(), method, use_native=True)
    if method == "exact" and block_jacobi.uses_block_jacobi(n, torch.device("cuda")):
        expected, expected_order = block_jacobi.block_jacobi_refresh(factor, basis, 30)
    else:
        expected, expected_order = refresh_eigenbasis(factor, basis, method, use_native=True)
    assert torch.equal(order.cpu(), expected_order)
    tolerance = 1e-4 if dtype == torch.float32 else 1e-9
    torch.testing.assert_close(ours.cpu(), expected, atol=tolerance, rtol=0)
    assert _orthogonality_error(ours.cpu()) < ORTHOGONALITY[dtype] * max(1, n / 64)
    if method == "exact":
        assert _relative_residual(factor.double(), ours.cpu()).max().item() < RESIDUAL[dtype]


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("method", ["qr", "exact"])
def test_cuda_refresh_is_graph_capturable(method):
    factor = _factor("gram", 4, 128, seed=4).cuda()
    basis = _warm_basis(factor.cpu()).cuda()
    expected, expected_order = refresh_eigenbasis(factor, basis, method)
    refresh_eigenbasis(factor, basis, method)  # warm up cuBLAS handles outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured, captured_order = refresh_eigenbasis(factor, basis, method)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(captured, expected, atol=1e-10, rtol=0)
    assert torch.equal(captured_order, expected_order)


@pytest.mark.cuda
@needs_cuda
def test_cuda_opcheck():
    factor = _factor("gram", 2, 5, seed=1).cuda()
    basis = torch.eye(5, dtype=torch.float64, device="cuda").expand(2, 5, 5).clone()
    torch.library.opcheck(torch.ops.soap_kernels.refresh_eigenbasis.default, (factor, basis, "exact", 12))
