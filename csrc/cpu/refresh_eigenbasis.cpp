// CPU kernel of soap_kernels::refresh_eigenbasis: "qr" by its own Householder kernel below; "exact" (and "qr"
// under SOAP_KERNELS_REFRESH_QR_CPU=cholesky) by the driver shared with CUDA
// (csrc/include/soap_kernels/refresh_eigenbasis_driver.h). GEMMs go to ATen (BLAS); the Jacobi solver and the
// Cholesky + triangular inverse of the 64 x 64 diagonal blocks run the shared cores of eigen_refresh_core.h on
// one thread per matrix, matrices spread over threads (OpenMP, see CMakeLists.txt).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <numeric>
#include <type_traits>
#include <string_view>
#include <vector>

#include "soap_kernels/eigen_refresh_core.h"
#include "soap_kernels/refresh_eigenbasis_driver.h"

namespace soap_kernels {
namespace {

// destination <- R^{-1} where source = R^T R, per matrix of a [batch, b, b] stack (BatchedCholeskyInverse): each
// matrix copied into a contiguous scratch, solved by the serial core, copied out; matrices over threads.
void cholesky_inverse_blocks_cpu(const at::Tensor& source, at::Tensor& destination) {
  check_cholesky_blocks(source, destination);
  const int64_t batch = source.size(0), n = source.size(1);
  const double* in = source.const_data_ptr<double>();
  double* out = destination.data_ptr<double>();
  const int64_t in_matrix = source.stride(0), in_row = source.stride(1);
  const int64_t out_matrix = destination.stride(0), out_row = destination.stride(1);
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> matrix(n * n), scratch(2 * n);
    for (int64_t index = begin; index < end; ++index) {
      for (int64_t i = 0; i < n; ++i) {
        std::copy_n(in + index * in_matrix + i * in_row, n, matrix.data() + i * n);
      }
      eigen_refresh::cholesky_upper_inverse(eigen_refresh::SerialTeam{}, matrix.data(), n, scratch.data());
      for (int64_t i = 0; i < n; ++i) {
        std::copy_n(matrix.data() + i * n, n, out + index * out_matrix + i * out_row);
      }
    }
  });
}

// The same blocked algorithm as the CUDA kernel (so CPU tests cover it); LAPACK's potrf + trsm is no faster
// here at the sizes SOAP uses, and it would need its own breakdown handling.
std::tuple<at::Tensor, at::Tensor> right_cholesky_solve_cpu(at::Tensor& gram, const at::Tensor& x) {
  return {blocked_right_cholesky_solve(gram, x, cholesky_inverse_blocks_cpu),
          at::ones({gram.size(0)}, x.options().dtype(at::kBool))};
}

// ---- method "qr" on the CPU ---------------------------------------------------------------------------
// The driver's "qr" (module docstring of soap_kernels/ops/refresh_eigenbasis.py) computed in the input dtype, as
// the SOAP reference does, with Householder QR instead of float64 CholeskyQR passes: Householder Q is
// orthonormal to rounding whatever cond(X), so it needs neither float64 nor a second pass, and the work is the
// reference's (L Q, then torch.linalg.qr of L Q_s). One batched GEMM forms L Q; everything else runs per
// matrix with the matrices spread over the threads (torch.linalg.qr of a batch runs them one after another,
// and LAPACK does not thread at these sizes), in plain loops rather than a dozen small ATen calls.
// Non-finite input is handled as in the driver: a basis with NaN/Inf counts as the identity; a factor with
// NaN/Inf, or a result that is not finite, keeps the (sanitised) basis with order 0..n-1.

// sum_k term(data[k]) in float64 with 8 independent partial sums: one running sum is a chain of dependent
// additions (a few cycles each), which cost as much as the QR itself at n = 384; the partials vectorise.
template <typename T, typename Term>
double accumulate_in_double(const T* data, int64_t count, Term term) {
  double partial[8] = {};
  int64_t k = 0;
  for (; k + 8 <= count; k += 8) {
    for (int lane = 0; lane < 8; ++lane) partial[lane] += term(static_cast<double>(data[k + lane]));
  }
  double sum = 0.0;
  for (; k < count; ++k) sum += term(static_cast<double>(data[k]));
  for (const double value : partial) sum += value;
  return sum;
}

template <typename T>
double sum_in_double(const T* data, int64_t count) {
  return accumulate_in_double(data, count, [](double value) { return value; });
}

template <typename T>
double sum_of_squares_in_double(const T* data, int64_t count) {
  return accumulate_in_double(data, count, [](double value) { return value * value; });
}

// Given power = (L / ||L||_F) Q: order = stable argsort of diag(Q^T L Q), descending (a positive scale keeps it);
// X[:, j] = power[:, order[j]] + delta Q[:, order[j]] (row-major n x n matrices; Rayleigh quotients in float64).
template <typename T>
void regularised_power_iterate(const T* basis, const T* power, T* x, int64_t* order, int64_t n, double delta,
                               std::vector<double>& rayleigh) {
  std::fill(rayleigh.begin(), rayleigh.end(), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) rayleigh[j] += static_cast<double>(basis[i * n + j]) * power[i * n + j];
  }
  std::iota(order, order + n, int64_t{0});
  // descending with NaN first, as torch.sort(descending=True) (a NaN quotient means a non-finite X, which is
  // replaced anyway; the comparator must still be a strict weak order)
  std::stable_sort(order, order + n, [&](int64_t a, int64_t b) {
    const bool a_nan = std::isnan(rayleigh[a]), b_nan = std::isnan(rayleigh[b]);
    return a_nan != b_nan ? a_nan : rayleigh[a] > rayleigh[b];
  });
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      const int64_t from = i * n + order[j];
      x[i * n + j] = static_cast<T>(power[from] + delta * basis[from]);
    }
  }
}

template <typename T>
std::tuple<at::Tensor, at::Tensor> qr_refresh_cpu_typed(const at::Tensor& factor, const at::Tensor& basis) {
  const int64_t batch = factor.size(0), n = factor.size(1), size = n * n;
  const double delta = std::is_same_v<T, float> ? eigen_refresh::kQrRegularisationFloat32
                                                : eigen_refresh::kQrRegularisationFloat64;
  const at::Tensor l = factor.contiguous();
  at::Tensor q = basis.contiguous();
  // L / ||L||_F (||L|| in float64): its GEMM with Q cannot overflow where L's own could (float32 entries near
  // 1e36), so such a factor is refreshed as by the float64 reference instead of keeping its old basis.
  at::Tensor scaled = at::empty_like(l);
  std::vector<char> factor_finite(batch), basis_finite(batch);
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const T* factor_b = l.const_data_ptr<T>() + b * size;
      const double norm_squared = sum_of_squares_in_double(factor_b, size);
      const double inverse_norm = norm_squared > 0.0 ? 1.0 / std::sqrt(norm_squared) : 1.0;
      T* scaled_b = scaled.mutable_data_ptr<T>() + b * size;
      for (int64_t k = 0; k < size; ++k) scaled_b[k] = static_cast<T>(factor_b[k] * inverse_norm);
      factor_finite[b] = std::isfinite(sum_in_double(factor_b, size));
      basis_finite[b] = std::isfinite(sum_in_double(q.const_data_ptr<T>() + b * size, size));
    }
  });
  if (std::find(basis_finite.begin(), basis_finite.end(), 0) != basis_finite.end()) {
    q = q.clone();  // never write the caller's basis
    for (int64_t b = 0; b < batch; ++b) {
      if (!basis_finite[b]) q[b].copy_(at::eye(n, q.options()));
    }
  }
  const at::Tensor power = at::matmul(scaled, q);
  at::Tensor x = at::empty_like(l);
  at::Tensor order = at::empty({batch, n}, l.options().dtype(at::kLong));
  const T* q_data = q.const_data_ptr<T>();
  const T* power_data = power.const_data_ptr<T>();
  T* x_data = x.mutable_data_ptr<T>();
  int64_t* order_data = order.mutable_data_ptr<int64_t>();
  at::Tensor result = at::empty_like(l);
  T* result_data = result.mutable_data_ptr<T>();

  const auto refresh_range = [&](int64_t begin, int64_t end) {
    std::vector<double> rayleigh(n);
    for (int64_t b = begin; b < end; ++b) {
      if (factor_finite[b]) {
        regularised_power_iterate(q_data + b * size, power_data + b * size, x_data + b * size, order_data + b * n,
                                  n, delta, rayleigh);
      } else {  // orthonormalised below like the rest, then replaced by the kept basis
        std::copy(q_data + b * size, q_data + (b + 1) * size, x_data + b * size);
      }
    }
    // torch.linalg.qr's steps (geqrf, then orgqr) without forming R: only its diagonal's signs are read, from
    // geqrf's output, where R lies on and above the diagonal
    const auto [reflectors, tau] = at::geqrf(x.slice(0, begin, end));
    const at::Tensor householder_q = at::linalg_householder_product(reflectors, tau).contiguous();
    const at::Tensor r_diagonal = reflectors.diagonal(0, -2, -1).contiguous();
    const T* hq = householder_q.const_data_ptr<T>();
    const T* r_data = r_diagonal.const_data_ptr<T>();
    for (int64_t b = begin; b < end; ++b) {
      const int64_t local = b - begin;
      T* out = result_data + b * size;
      for (int64_t i = 0; i < n; ++i) {  // flip columns so that R's diagonal is positive (CholeskyQR's signs)
        for (int64_t j = 0; j < n; ++j) {
          const T value = hq[local * size + i * n + j];
          out[i * n + j] = r_data[local * n + j] < 0 ? -value : value;
        }
      }
      if (!factor_finite[b] || !std::isfinite(sum_in_double(out, size))) {
        std::copy(q_data + b * size, q_data + (b + 1) * size, out);
        std::iota(order_data + b * n, order_data + (b + 1) * n, int64_t{0});
      }
    }
  };
  if (batch == 1) {
    refresh_range(0, 1);  // no parallel region to open for one matrix (LAPACK may thread inside)
  } else {
    at::parallel_for(0, batch, 1, refresh_range);
  }
  return {result, order};
}

std::tuple<at::Tensor, at::Tensor> qr_refresh_cpu(const at::Tensor& factor, const at::Tensor& basis) {
  if (factor.size(0) == 0 || factor.size(1) == 0) {
    return {basis.clone(), at::empty({factor.size(0), factor.size(1)}, factor.options().dtype(at::kLong))};
  }
  return factor.scalar_type() == at::kFloat ? qr_refresh_cpu_typed<float>(factor, basis)
                                            : qr_refresh_cpu_typed<double>(factor, basis);
}

// SOAP_KERNELS_REFRESH_QR_CPU=cholesky runs "qr" through the driver's float64 CholeskyQR passes (the CUDA
// kernel's algorithm) on the CPU instead; tests use it to cover that algorithm without a GPU.
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
  const std::string_view method_name(method.data(), method.size());
  if (method_name == "qr" && !use_cholesky_qr_on_cpu()) {
    check_refresh_arguments(factor, basis, method_name, max_sweeps);
    return qr_refresh_cpu(factor, basis);
  }
  return refresh_eigenbasis_driver(factor, basis, method_name, max_sweeps, right_cholesky_solve_cpu, jacobi_cpu);
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
