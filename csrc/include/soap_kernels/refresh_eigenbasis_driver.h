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
//   X = L Q_s / ||L||_F + 1e-12 Q_s                               (full-rank regularisation, see core)
//   three CholeskyQR passes, the first shifted: G = X^T X (+ s I); G = R^T R; X <- X R^{-1}
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

#include <functional>
#include <string_view>
#include <tuple>

#include "soap_kernels/eigen_refresh_core.h"

namespace soap_kernels {

// X R^{-1} where G = R^T R (G: [batch, n, n] float64 contiguous, may be overwritten), plus a [batch] bool
// mask of the matrices whose factorisation succeeded.
using RightCholeskySolve = std::function<std::tuple<at::Tensor, at::Tensor>(at::Tensor& gram, const at::Tensor& x)>;
// In place: B ([batch, n, n] float64 contiguous) becomes diagonal, v_t receives V^T.
using BatchedJacobi = std::function<void(at::Tensor& b, at::Tensor& v_t, int64_t max_sweeps)>;

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
  const at::Tensor factor_finite = at::isfinite(l).flatten(1).all(1);
  const at::Tensor basis_finite = at::isfinite(q).flatten(1).all(1);
  const at::Tensor q0 = at::where(basis_finite.view({batch, 1, 1}), q, identity).contiguous();
  const at::Tensor l0 = at::where(factor_finite.view({batch, 1, 1}), l, at::zeros({}, work_options));

  at::Tensor result, order;
  at::Tensor solved = factor_finite;
  if (method == "qr") {
    const at::Tensor power = at::matmul(l0, q0);  // L Q
    order = std::get<1>(at::sort((q0 * power).sum(-2), /*stable=*/true, /*dim=*/-1, /*descending=*/true));
    const at::Tensor columns = order.unsqueeze(1).expand({batch, n, n});
    const at::Tensor norm = at::linalg_vector_norm(l0, 2, at::IntArrayRef{-2, -1}, /*keepdim=*/true);
    const at::Tensor inverse_norm = at::where(norm > 0, norm.reciprocal(), at::ones({}, work_options));
    at::Tensor x = at::gather(power * inverse_norm + eigen_refresh::kQrRegularisation * q0, 2, columns);
    for (int pass = 0; pass < 3; ++pass) {
      at::Tensor gram = at::matmul(x.mT(), x).contiguous();  // only its upper triangle is read
      if (pass == 0) {
        const at::Tensor shift = eigen_refresh::cholesky_qr_shift(n, 1.0) * x.square().sum({-2, -1});
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
  // (a Cholesky breakdown the regularisation did not prevent): column norms must be 1 to rounding.
  const at::Tensor column_norms_squared = result.square().sum(-2);
  const at::Tensor orthonormal = (column_norms_squared - 1.0).abs().lt(1e-3).all(-1);
  const at::Tensor ok = solved & at::isfinite(result).flatten(1).all(1) & orthonormal;
  result = at::where(ok.view({batch, 1, 1}), result, q0);
  order = at::where(ok.view({batch, 1}), order, at::arange(n, index_options).expand({batch, n}));
  return {result.to(basis.scalar_type()).contiguous(), order.contiguous()};
}

}  // namespace soap_kernels
