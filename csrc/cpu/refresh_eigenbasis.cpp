// CPU kernel of soap_kernels::refresh_eigenbasis (algorithm in csrc/include/soap_kernels/refresh_eigenbasis_driver.h).
// GEMMs go to ATen (BLAS); the Jacobi solver and, for small n, the Cholesky + triangular inverse run the
// shared cores of eigen_refresh_core.h on one thread per matrix, matrices spread over threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "soap_kernels/eigen_refresh_core.h"
#include "soap_kernels/refresh_eigenbasis_driver.h"

namespace soap_kernels {
namespace {

// Up to this size the core's Cholesky beats a LAPACK call per matrix (measured: at n = 64 both take
// about 0.05 ms); above it LAPACK's blocked potrf and BLAS trsm win by a growing factor.
constexpr int64_t kCoreCholeskyMaxN = 64;

std::tuple<at::Tensor, at::Tensor> right_cholesky_solve_cpu(at::Tensor& gram, const at::Tensor& x) {
  const int64_t batch = gram.size(0), n = gram.size(1);
  if (n > kCoreCholeskyMaxN) {
    auto [upper, info] = at::linalg_cholesky_ex(gram, /*upper=*/true, /*check_errors=*/false);
    at::Tensor solved = at::linalg_solve_triangular(upper, x, /*upper=*/true, /*left=*/false);
    return {solved, info.eq(0)};
  }
  double* data = gram.data_ptr<double>();
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> column(n);
    for (int64_t index = begin; index < end; ++index) {
      eigen_refresh::cholesky_upper_inverse(eigen_refresh::SerialTeam{}, data + index * n * n, n, column.data());
    }
  });
  return {at::matmul(x, gram), at::ones({batch}, x.options().dtype(at::kBool))};
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
                                   right_cholesky_solve_cpu, jacobi_cpu);
}

}  // namespace

TORCH_LIBRARY_IMPL(soap_kernels, CPU, m) { m.impl("refresh_eigenbasis", &refresh_eigenbasis_cpu); }

}  // namespace soap_kernels
