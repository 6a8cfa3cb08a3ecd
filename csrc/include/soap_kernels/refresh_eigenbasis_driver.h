// The host-side algorithm of soap_kernels::refresh_eigenbasis, shared by the CPU and CUDA kernels: batched
// ATen tensor operations (GEMMs, sorting, masks) around two device-specific steps that each kernel file
// supplies (the Cholesky + triangular inverse and the Jacobi eigensolver, both from eigen_refresh_core.h).
// Nothing here reads a tensor on the host, so on CUDA the whole op is asynchronous and graph-capturable.
//
// Inputs: factor L[b] (n x n, symmetric PSD) and basis Q[b] (n x n, orthonormal columns), float32/float64.
// Everything is computed in float64 and cast back to the input dtype.
//
// method "qr" (the SOAP reference's refresh, one power step):
//   d = diag(Q^T L Q); order = stable argsort of d, descending; Q_s = Q[:, order]
//   X = L Q_s / ||L||_F + delta Q_s       (delta = 1e-12, float32: 2^-24; full-rank regularisation, see core)
//   CholeskyQR passes (3 for float64, 2 for float32), the first shifted: G = X^T X (+ s I) = R^T R; X <- X R^{-1}
//   returns (X, order). R has a positive diagonal, so X spans the same nested column subspaces as
//   torch.linalg.qr(L Q_s): equal columns up to sign and rounding.
// method "exact" (warm-started Jacobi):
//   Q~ = Q (3 I - Q^T Q) / 2            (one Newton-Schulz step: removes the basis's drift from orthogonality)
//   B = Q~^T L Q~, symmetrised; B = V diag(lambda) V^T by Jacobi (at most max_sweeps sweeps)
//   order = stable argsort of lambda, descending; returns (Q~ V[:, order], order).
//   Column j of the result is the eigenvector Jacobi rotated out of old column order[j] (V is the product
//   of the rotations, near the identity from a warm start), so v is permuted with the same order.
// Non-finite input: a matrix whose basis has NaN/Inf is treated as if its basis were the identity; a matrix
// whose factor has NaN/Inf (or whose result would not be orthonormal) keeps its (sanitised) basis and gets
// order = 0..n-1. The output is always finite.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <functional>
#include <vector>
#include <string_view>
#include <tuple>

#include "soap_kernels/eigen_refresh_core.h"

namespace soap_kernels {

// X R^{-1} where G = R^T R (G: [batch, n, n] float64 contiguous, overwritten), plus a [batch] bool
// mask of the matrices whose factorisation succeeded.
using RightCholeskySolve = std::function<std::tuple<at::Tensor, at::Tensor>(at::Tensor& gram, const at::Tensor& x)>;
// In place: B ([batch, n, n] float64 contiguous) becomes diagonal, v_t receives V^T.
using BatchedJacobi = std::function<void(at::Tensor& b, at::Tensor& v_t, int64_t max_sweeps)>;

// destination <- R^{-1} (upper triangular, zeros below) where source = R^T R, on [batch, b, b] float64 views
// whose columns are contiguous (rows and matrices may be strided, e.g. diagonal blocks of a larger stack;
// b <= kCholeskyBlock; destination may be source itself). Only source's upper triangle is read.
using BatchedCholeskyInverse = std::function<void(const at::Tensor& source, at::Tensor& destination)>;

// Column width of the diagonal blocks of blocked_right_cholesky_solve: a 64 x 64 float64 block (32 KiB) fits
// a CUDA block's default shared memory, and the off-diagonal work becomes GEMMs.
constexpr int64_t kCholeskyBlock = 64;

// The checks every BatchedCholeskyInverse makes of its views.
inline void check_cholesky_blocks(const at::Tensor& source, const at::Tensor& destination) {
  TORCH_CHECK(source.dim() == 3 && source.size(1) == source.size(2) && source.size(1) <= kCholeskyBlock &&
                  destination.sizes() == source.sizes(),
              "soap_kernels: Cholesky diagonal blocks must be [batch, b, b] with b <= ", kCholeskyBlock, ", got ",
              source.sizes(), " -> ", destination.sizes());
  TORCH_CHECK(source.scalar_type() == at::kDouble && destination.scalar_type() == at::kDouble &&
                  source.stride(2) == 1 && destination.stride(2) == 1,
              "soap_kernels: Cholesky diagonal blocks must be float64 with contiguous rows");
}

// X R^{-1} with G = R^T R by blocked right-looking Cholesky (diagonal blocks factored and inverted by
// `diagonal`, panels and trailing updates by batched GEMMs) and a blocked right triangular solve:
//   R_kk^{-1} = W_kk from G_kk;  R_k,rest = W_kk^T G_k,rest;  G_rest,rest -= R_k,rest^T R_k,rest
//   Y_j = (X_j - sum_{i<j} Y_i R_ij) W_jj  over column blocks j.
// Every flop outside the diagonal blocks is a GEMM, and nothing is read back to the host. Every kernel writes
// into its destination (W_kk from G's diagonal block straight into `upper`, panels into `upper`, updates into
// G, solved blocks into Y: strided slices whose rows are contiguous, which batched GEMMs take as they are)
// rather than through temporaries and copies: the op is launch-bound on a GPU (1.7 ms for one 256 x 256
// factor on an H100), so each launch saved counts.
inline at::Tensor blocked_right_cholesky_solve(at::Tensor& gram, const at::Tensor& x,
                                               const BatchedCholeskyInverse& diagonal) {
  const int64_t n = gram.size(1);
  if (n <= kCholeskyBlock) {  // one diagonal block: W = R^{-1} in place, then one GEMM
    diagonal(gram, gram);
    return at::matmul(x, gram);
  }
  at::Tensor& g = gram;  // overwritten: the caller's scratch
  // R above its diagonal blocks and W_kk on them; every entry the solve reads is written below
  at::Tensor upper = at::empty_like(gram);
  for (int64_t start = 0; start < n; start += kCholeskyBlock) {
    const int64_t end = std::min(start + kCholeskyBlock, n);
    at::Tensor block = upper.slice(1, start, end).slice(2, start, end);
    diagonal(g.slice(1, start, end).slice(2, start, end), block);
    if (end < n) {
      at::Tensor panel = upper.slice(1, start, end).slice(2, end, n);
      at::bmm_out(panel, block.mT(), g.slice(1, start, end).slice(2, end, n));
      g.slice(1, end, n).slice(2, end, n).baddbmm_(panel.mT(), panel, /*beta=*/1.0, /*alpha=*/-1.0);
    }
  }
  at::Tensor y = at::empty_like(x);
  for (int64_t start = 0; start < n; start += kCholeskyBlock) {
    const int64_t end = std::min(start + kCholeskyBlock, n);
    at::Tensor right = x.slice(2, start, end);
    if (start > 0) {
      right = at::baddbmm(right, y.slice(2, 0, start), upper.slice(1, 0, start).slice(2, start, end),
                          /*beta=*/1.0, /*alpha=*/-1.0);
    }
    at::Tensor solved = y.slice(2, start, end);
    at::bmm_out(solved, right, upper.slice(1, start, end).slice(2, start, end));
  }
  return y;
}

inline void check_refresh_arguments(const at::Tensor& factor, const at::Tensor& basis, std::string_view method,
                                    int64_t max_sweeps) {
  TORCH_CHECK_VALUE(factor.dim() == 3 && factor.size(1) == factor.size(2),
                    "soap_kernels.refresh_eigenbasis: factor must have shape [batch, n, n], got ", factor.sizes());
  TORCH_CHECK_VALUE(basis.sizes() == factor.sizes(), "soap_kernels.refresh_eigenbasis: basis has shape ",
                    basis.sizes(), ", expected the factor's ", factor.sizes());
  TORCH_CHECK_TYPE(factor.scalar_type() == at::kFloat || factor.scalar_type() == at::kDouble,
                   "soap_kernels.refresh_eigenbasis: factor dtype must be float32 or float64, got ",
                   factor.scalar_type());
  TORCH_CHECK_TYPE(basis.scalar_type() == factor.scalar_type(), "soap_kernels.refresh_eigenbasis: basis dtype ",
                   basis.scalar_type(), " differs from the factor's ", factor.scalar_type());
  TORCH_CHECK_VALUE(basis.device() == factor.device(), "soap_kernels.refresh_eigenbasis: basis is on ",
                    basis.device(), ", factor on ", factor.device());
  TORCH_CHECK_VALUE(method == "qr" || method == "exact",
                    "soap_kernels.refresh_eigenbasis: method must be 'qr' or 'exact', got '", std::string(method),
                    "'");
  TORCH_CHECK_VALUE(max_sweeps >= 1, "soap_kernels.refresh_eigenbasis: max_sweeps must be >= 1, got ", max_sweeps);
}

// soap_kernels::jacobi_eigen_: the argument checks, then `jacobi` in place.
inline void jacobi_eigen_driver(at::Tensor& matrices, at::Tensor& vectors_t, int64_t max_sweeps,
                                const BatchedJacobi& jacobi) {
  TORCH_CHECK_VALUE(matrices.dim() == 3 && matrices.size(1) == matrices.size(2),
                    "soap_kernels.jacobi_eigen_: matrices must have shape [batch, n, n], got ", matrices.sizes());
  TORCH_CHECK_TYPE(matrices.scalar_type() == at::kDouble && vectors_t.scalar_type() == at::kDouble,
                   "soap_kernels.jacobi_eigen_: matrices and vectors_t must be float64, got ",
                   matrices.scalar_type(), " and ", vectors_t.scalar_type());
  TORCH_CHECK_VALUE(vectors_t.sizes() == matrices.sizes() && vectors_t.device() == matrices.device(),
                    "soap_kernels.jacobi_eigen_: vectors_t must match matrices (shape ", matrices.sizes(),
                    ", device ", matrices.device(), "), got ", vectors_t.sizes(), " on ", vectors_t.device());
  TORCH_CHECK_VALUE(matrices.is_contiguous() && vectors_t.is_contiguous(),
                    "soap_kernels.jacobi_eigen_: matrices and vectors_t must be contiguous");
  TORCH_CHECK_VALUE(max_sweeps >= 1, "soap_kernels.jacobi_eigen_: max_sweeps must be >= 1, got ", max_sweeps);
  if (matrices.numel() == 0) return;
  jacobi(matrices, vectors_t, max_sweeps);
}

inline std::tuple<at::Tensor, at::Tensor> refresh_eigenbasis_driver(const at::Tensor& factor,
                                                                    const at::Tensor& basis,
                                                                    std::string_view method, int64_t max_sweeps,
                                                                    const RightCholeskySolve& right_cholesky_solve,
                                                                    const BatchedJacobi& jacobi) {
  check_refresh_arguments(factor, basis, method, max_sweeps);
  const int64_t batch = factor.size(0), n = factor.size(1);
  const auto index_options = factor.options().dtype(at::kLong);
  if (batch == 0 || n == 0) return {basis.clone(), at::empty({batch, n}, index_options)};

  const at::Tensor l = factor.to(at::kDouble);
  const at::Tensor q = basis.to(at::kDouble);
  const auto work_options = l.options();
  const at::Tensor identity = at::eye(n, work_options).expand({batch, n, n});
  // One reduction per matrix: a NaN or Inf entry makes the sum non-finite (so would finite entries near
  // 1e300 that overflow it, which are treated as non-finite too).
  const at::Tensor factor_finite = at::isfinite(l.sum({-2, -1}));
  const at::Tensor basis_finite = at::isfinite(q.sum({-2, -1}));
  // On the CPU the masks may be read on the host, which skips the masking passes when all is finite; on a
  // GPU the masks stay on the device (no synchronisation) and are always applied.
  const bool on_host = factor.device().is_cpu();
  const at::Tensor q0 = on_host && basis_finite.all().item<bool>()
                            ? q.contiguous()
                            : at::where(basis_finite.view({batch, 1, 1}), q, identity).contiguous();
  const at::Tensor l0 = on_host && factor_finite.all().item<bool>()
                            ? l
                            : at::where(factor_finite.view({batch, 1, 1}), l, at::zeros({}, work_options));

  at::Tensor result, order;
  at::Tensor solved = factor_finite;
  if (method == "qr") {
    const at::Tensor power = at::matmul(l0, q0);  // L Q
    order = std::get<1>(at::sort((q0 * power).sum(-2), /*stable=*/true, /*dim=*/-1, /*descending=*/true));
    const at::Tensor columns = order.unsqueeze(1).expand({batch, n, n});
    const at::Tensor norm = at::linalg_vector_norm(l0, 2, at::IntArrayRef{-2, -1}, /*keepdim=*/true);
    const at::Tensor inverse_norm = at::where(norm > 0, norm.reciprocal(), at::ones({}, work_options));
    const bool single = factor.scalar_type() == at::kFloat;
    const double regularisation =
        single ? eigen_refresh::kQrRegularisationFloat32 : eigen_refresh::kQrRegularisationFloat64;
    const int passes = 1 + (single ? eigen_refresh::kQrPlainPassesFloat32 : eigen_refresh::kQrPlainPassesFloat64);
    at::Tensor x = at::gather(at::addcmul(regularisation * q0, power, inverse_norm), 2, columns);
    for (int pass = 0; pass < passes; ++pass) {
      at::Tensor gram = at::matmul(x.mT(), x).contiguous();  // only its upper triangle is read
      if (pass == 0) {  // ||X||_F^2 = trace(X^T X): read off the Gram matrix instead of another pass over X
        const at::Tensor shift = eigen_refresh::cholesky_qr_shift(n, 1.0) * gram.diagonal(0, -2, -1).sum(-1);
        gram.diagonal(0, -2, -1).add_(shift.unsqueeze(-1));
      }
      auto [next, ok] = right_cholesky_solve(gram, x);
      x = next;
      solved = solved & ok;
    }
    result = x;
  } else {
    const at::Tensor polished = 1.5 * q0 - 0.5 * at::matmul(q0, at::matmul(q0.mT(), q0));
    at::Tensor rotated = at::matmul(polished.mT(), at::matmul(l0, polished));
    rotated = ((rotated + rotated.mT()) * 0.5).contiguous();
    at::Tensor v_t = at::empty_like(rotated);
    jacobi(rotated, v_t, max_sweeps);
    order = std::get<1>(at::sort(rotated.diagonal(0, -2, -1), /*stable=*/true, /*dim=*/-1, /*descending=*/true));
    const at::Tensor rows = order.unsqueeze(-1).expand({batch, n, n});
    result = at::matmul(polished, at::gather(v_t, 1, rows).mT());
  }
  // Keep the old basis wherever the factor was not finite or the result is not an orthonormal basis
  // (a Cholesky breakdown the regularisation did not prevent): column norms must be 1 to rounding, which
  // NaN and Inf fail too.
  const at::Tensor column_norms_squared = result.square().sum(-2);
  const at::Tensor orthonormal = (column_norms_squared - 1.0).abs().lt(1e-3).all(-1);
  const at::Tensor ok = solved & orthonormal;
  if (!(on_host && ok.all().item<bool>())) {
    result = at::where(ok.view({batch, 1, 1}), result, q0);
    order = at::where(ok.view({batch, 1}), order, at::arange(n, index_options).expand({batch, n}));
  }
  return {result.to(basis.scalar_type()).contiguous(), order.contiguous()};
}

}  // namespace soap_kernels
