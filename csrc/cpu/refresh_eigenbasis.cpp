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

// CPU orthonormalisation for "qr": LAPACK's Householder QR (geqrf + orgqr, as torch.linalg.qr), in the input
// dtype like the SOAP reference, with the columns' signs flipped to make R's diagonal positive (the
// CholeskyQR sign convention). Householder Q is orthonormal to rounding whatever cond(X), so unlike the
// CholeskyQR passes it needs neither float64 nor a second pass. SOAP_KERNELS_REFRESH_QR_CPU=cholesky runs the
// CUDA kernel's float64 CholeskyQR passes instead (tests use it to cover that algorithm on the CPU).
// torch.linalg.qr of a batch runs its matrices one after another (LAPACK does not thread at these sizes), so the
// batch is split over the threads here. linalg_qr measured faster than geqrf + householder_product.
at::Tensor householder_orthonormalise_cpu(const at::Tensor& x) {
  const auto positive_r = [](const at::Tensor& matrices) {
    auto [q, r] = at::linalg_qr(matrices);
    return q.mul_(at::sign(r.diagonal(0, -2, -1)).add_(0.5).sign_().unsqueeze(-2));  // sign(0) counts as +1
  };
  if (x.size(0) == 1) return positive_r(x);  // no parallel region to open for one matrix
  at::Tensor q = at::empty_like(x);
  at::parallel_for(0, x.size(0), 1, [&](int64_t begin, int64_t end) {
    q.slice(0, begin, end).copy_(positive_r(x.slice(0, begin, end)));
  });
  return q;
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
