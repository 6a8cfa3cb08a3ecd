// CPU kernel of soap_kernels::refresh_eigenbasis (algorithm in csrc/include/soap_kernels/refresh_eigenbasis_driver.h).
// GEMMs go to ATen (BLAS); the Jacobi solver and the Cholesky + triangular inverse of the 64 x 64 diagonal
// blocks run the shared cores of eigen_refresh_core.h on one thread per matrix, matrices spread over threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdlib>
#include <string_view>
#include <vector>

#include "soap_kernels/eigen_refresh_core.h"
#include "soap_kernels/refresh_eigenbasis_driver.h"

namespace soap_kernels {
namespace {

// G = R^T R, G <- R^{-1} on each matrix of a [batch, b, b] stack with the serial core, matrices over threads.
void cholesky_inverse_blocks_cpu(at::Tensor& blocks) {
  const int64_t batch = blocks.size(0), n = blocks.size(1);
  double* data = blocks.data_ptr<double>();
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> column(n);
    for (int64_t index = begin; index < end; ++index) {
      eigen_refresh::cholesky_upper_inverse(eigen_refresh::SerialTeam{}, data + index * n * n, n, column.data());
    }
  });
}

// The same blocked algorithm as the CUDA kernel (so CPU tests cover it); LAPACK's potrf + trsm is no faster
// here at the sizes SOAP uses, and it would need its own breakdown handling.
std::tuple<at::Tensor, at::Tensor> right_cholesky_solve_cpu(at::Tensor& gram, const at::Tensor& x) {
  return {blocked_right_cholesky_solve(gram, x, cholesky_inverse_blocks_cpu),
          at::ones({gram.size(0)}, x.options().dtype(at::kBool))};
}

// CPU orthonormalisation for "qr": LAPACK's Householder geqrf gives R (backward stable for any cond(X));
// Q = X R^{-1} by a triangular solve after flipping R's rows to a positive diagonal (the CholeskyQR sign
// convention). Q's orthogonality error is about u cond(X) <= 1e-16 / delta: 4e-9 for float32 inputs (delta =
// 2^-24, below their rounding), 1e-4 for float64 ones (delta = 1e-12), which one plain CholeskyQR pass then
// removes. This skips orgqr, the slower half of torch.linalg.qr. SOAP_KERNELS_REFRESH_QR_CPU=cholesky runs
// the CUDA kernel's CholeskyQR passes instead (tests use it to cover that algorithm on the CPU).
std::tuple<at::Tensor, at::Tensor> householder_orthonormalise_cpu(const at::Tensor& x, bool single) {
  auto [packed, tau] = at::geqrf(x);
  at::Tensor upper = packed.triu();
  const at::Tensor signs = at::where(upper.diagonal(0, -2, -1) < 0, -1.0, 1.0).to(upper.scalar_type());
  upper.mul_(signs.unsqueeze(-1));
  at::Tensor q = at::linalg_solve_triangular(upper, x, /*upper=*/true, /*left=*/false);
  at::Tensor ok = at::ones({x.size(0)}, x.options().dtype(at::kBool));
  if (!single) {
    auto [cholesky, info] = at::linalg_cholesky_ex(at::matmul(q.mT(), q), /*upper=*/true, /*check_errors=*/false);
    q = at::linalg_solve_triangular(cholesky, q, /*upper=*/true, /*left=*/false);
    ok = info.eq(0);
  }
  return {q, ok};
}

bool use_cholesky_qr_on_cpu() {
  const char* choice = std::getenv("SOAP_KERNELS_REFRESH_QR_CPU");
  return choice != nullptr && std::string_view(choice) == "cholesky";
}

void jacobi_cpu(at::Tensor& b, at::Tensor& v_t, int64_t max_sweeps) {
  const int64_t batch = b.size(0), n = b.size(1);
  const int64_t pairs = (n + (n & 1)) / 2;
  double* b_data = b.data_ptr<double>();
  double* v_data = v_t.data_ptr<double>();
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> reals(4 * pairs);
    std::vector<int64_t> indices(2 * pairs);
    const eigen_refresh::JacobiScratch scratch{reals.data(), reals.data() + pairs, reals.data() + 2 * pairs,
                                               reals.data() + 3 * pairs, indices.data(), indices.data() + pairs};
    for (int64_t index = begin; index < end; ++index) {
      eigen_refresh::jacobi_eigen(eigen_refresh::SerialTeam{}, b_data + index * n * n, v_data + index * n * n, n,
                                  max_sweeps, scratch);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> refresh_eigenbasis_cpu(const at::Tensor& factor, const at::Tensor& basis,
                                                          c10::string_view method, int64_t max_sweeps) {
  return refresh_eigenbasis_driver(factor, basis, std::string_view(method.data(), method.size()), max_sweeps,
                                   right_cholesky_solve_cpu, jacobi_cpu,
                                   use_cholesky_qr_on_cpu() ? Orthonormalise() : householder_orthonormalise_cpu);
}

void jacobi_eigen_cpu(at::Tensor& matrices, at::Tensor& vectors_t, int64_t max_sweeps) {
  jacobi_eigen_driver(matrices, vectors_t, max_sweeps, jacobi_cpu);
}

}  // namespace

TORCH_LIBRARY_IMPL(soap_kernels, CPU, m) {
  m.impl("refresh_eigenbasis", &refresh_eigenbasis_cpu);
  m.impl("jacobi_eigen_", &jacobi_eigen_cpu);
}

}  // namespace soap_kernels
