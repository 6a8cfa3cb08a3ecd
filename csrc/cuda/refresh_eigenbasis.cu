// CUDA kernel of soap_kernels::refresh_eigenbasis (algorithm in csrc/include/soap_kernels/refresh_eigenbasis_driver.h).
// GEMMs go to ATen (cuBLAS). The shared cores of eigen_refresh_core.h run with one thread block as the team:
// the Cholesky + triangular inverse of each 64 x 64 diagonal block in shared memory (the rest of the blocked
// Cholesky-QR is GEMMs), and the Jacobi solver on the whole float64 matrix, one block per matrix, staged in
// shared memory up to n = 167 (H100) and in global memory above (exact, but bound by L2 traffic there; the
// issue's block-Jacobi design for n = 256 and 384 runs this solver on 64 x 64 sub-problems through
// soap_kernels::jacobi_eigen_, driven from soap_kernels/ops/block_jacobi.py). No step
// reads anything back to the host (no cuSOLVER, fixed sweep cap, convergence decided per block), so the
// op can be captured in a CUDA graph.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "soap_kernels/eigen_refresh_core.h"
#include "soap_kernels/refresh_eigenbasis_driver.h"

namespace soap_kernels {
namespace {

// One thread block as the core's team.
struct BlockTeam {
  __device__ __forceinline__ int rank() const { return static_cast<int>(threadIdx.x); }
  __device__ __forceinline__ int size() const { return static_cast<int>(blockDim.x); }
  __device__ __forceinline__ void sync() const { __syncthreads(); }
  __device__ __forceinline__ bool any(bool flag) const { return __syncthreads_or(flag) != 0; }
  // Block-wide sum, returned to every thread (warp shuffles, then one partial per warp in shared memory).
  __device__ double sum(double value) const {
    __shared__ double partial[32];
    __shared__ double total;
    for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffffu, value, offset);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    __syncthreads();
    if (lane == 0) partial[warp] = value;
    __syncthreads();
    if (warp == 0) {
      const int warps = (blockDim.x + 31) / 32;
      double accumulated = lane < warps ? partial[lane] : 0.0;
      for (int offset = 16; offset > 0; offset /= 2) accumulated += __shfl_down_sync(0xffffffffu, accumulated, offset);
      if (lane == 0) total = accumulated;
    }
    __syncthreads();
    return total;
  }
};

constexpr int kCholeskyThreads = 256;
constexpr int kJacobiThreads = 512;  // a multiple of 32: BlockTeam::sum assumes whole warps

// One block per matrix of a [batch, b, b] stack (b <= kCholeskyBlock): the matrix is read from its (strided)
// source into shared memory, factored and inverted there, and written to its (strided) destination.
__global__ void __launch_bounds__(kCholeskyThreads)
    cholesky_inverse_blocks_kernel(const double* source, int64_t source_matrix, int64_t source_row,
                                   double* destination, int64_t destination_matrix, int64_t destination_row,
                                   int n) {
  extern __shared__ double shared[];
  double* matrix = shared;
  double* scratch = shared + n * n;
  const double* in = source + static_cast<int64_t>(blockIdx.x) * source_matrix;
  double* out = destination + static_cast<int64_t>(blockIdx.x) * destination_matrix;
  const eigen_refresh::TeamGrid grid = eigen_refresh::team_grid(BlockTeam{}, n);  // rows of n threads
  if (grid.active()) {
    for (int i = grid.row; i < n; i += grid.rows) {
      for (int j = grid.col; j < n; j += grid.cols) matrix[i * n + j] = in[i * source_row + j];
    }
  }
  eigen_refresh::cholesky_upper_inverse(BlockTeam{}, matrix, n, scratch);  // starts and ends with a barrier
  if (grid.active()) {
    for (int i = grid.row; i < n; i += grid.rows) {
      for (int j = grid.col; j < n; j += grid.cols) out[i * destination_row + j] = matrix[i * n + j];
    }
  }
}

// Staging of the Jacobi solver's operands in shared memory, when they fit (the solver touches every entry
// of B and V^T about 3 times per round, so global memory makes it L2-bound): B and V^T, B only, or none.
enum JacobiStaging : int { kStageNone = 0, kStageMatrix = 1, kStageBoth = 2 };

template <int kStaging>
__global__ void __launch_bounds__(kJacobiThreads) jacobi_kernel(double* b, double* v_t, int64_t n, int64_t max_sweeps) {
  extern __shared__ double shared[];
  const int64_t pairs = (n + (n & 1)) / 2;
  const eigen_refresh::JacobiScratch scratch{shared,
                                             shared + pairs,
                                             shared + 2 * pairs,
                                             shared + 3 * pairs,
                                             reinterpret_cast<int64_t*>(shared + 4 * pairs),
                                             reinterpret_cast<int64_t*>(shared + 5 * pairs)};
  const int64_t offset = static_cast<int64_t>(blockIdx.x) * n * n;
  double* matrix = b + offset;
  double* vectors = v_t + offset;
  if (kStaging >= kStageMatrix) {
    double* staged = shared + 6 * pairs;
    for (int64_t index = threadIdx.x; index < n * n; index += blockDim.x) staged[index] = matrix[index];
    matrix = staged;
  }
  if (kStaging == kStageBoth) vectors = shared + 6 * pairs + n * n;
  __syncthreads();
  eigen_refresh::jacobi_eigen(BlockTeam{}, matrix, vectors, n, max_sweeps, scratch);  // ends with a barrier
  if (kStaging >= kStageMatrix) {
    for (int64_t index = threadIdx.x; index < n * n; index += blockDim.x) b[offset + index] = matrix[index];
  }
  if (kStaging == kStageBoth) {
    for (int64_t index = threadIdx.x; index < n * n; index += blockDim.x) v_t[offset + index] = vectors[index];
  }
}

template <int kStaging>
void launch_jacobi(at::Tensor& b, at::Tensor& v_t, int64_t max_sweeps, size_t shared_bytes) {
  if (shared_bytes > 48 * 1024) {  // above the default limit a kernel must opt in (a host-side attribute)
    C10_CUDA_CHECK(cudaFuncSetAttribute(jacobi_kernel<kStaging>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(shared_bytes)));
  }
  jacobi_kernel<kStaging><<<static_cast<unsigned>(b.size(0)), kJacobiThreads, shared_bytes,
                            c10::cuda::getCurrentCUDAStream()>>>(b.data_ptr<double>(), v_t.data_ptr<double>(),
                                                                 b.size(1), max_sweeps);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void cholesky_inverse_blocks_cuda(const at::Tensor& source, at::Tensor& destination) {
  check_cholesky_blocks(source, destination);
  const int64_t batch = source.size(0), n = source.size(1);
  const size_t shared_bytes = static_cast<size_t>(n * n + 2 * n) * sizeof(double);  // <= 33 KiB
  cholesky_inverse_blocks_kernel<<<static_cast<unsigned>(batch), kCholeskyThreads, shared_bytes,
                                   c10::cuda::getCurrentCUDAStream()>>>(
      source.const_data_ptr<double>(), source.stride(0), source.stride(1), destination.data_ptr<double>(),
      destination.stride(0), destination.stride(1), static_cast<int>(n));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> right_cholesky_solve_cuda(at::Tensor& gram, const at::Tensor& x) {
  return {blocked_right_cholesky_solve(gram, x, cholesky_inverse_blocks_cuda),
          at::ones({gram.size(0)}, x.options().dtype(at::kBool))};
}

void jacobi_cuda(at::Tensor& b, at::Tensor& v_t, int64_t max_sweeps) {
  const int64_t n = b.size(1);
  const int64_t pairs = (n + (n & 1)) / 2;
  const size_t scratch_bytes = static_cast<size_t>(6 * pairs) * sizeof(double);
  const size_t matrix_bytes = static_cast<size_t>(n * n) * sizeof(double);
  int device = 0, optin_bytes = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin_bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  // Less 1 KiB for the static shared memory of BlockTeam::sum (33 doubles).
  const size_t available = static_cast<size_t>(optin_bytes) - 1024;
  TORCH_CHECK(scratch_bytes <= 48 * 1024, "soap_kernels.refresh_eigenbasis: n = ", n, " is too large for the CUDA kernel");
  if (scratch_bytes + 2 * matrix_bytes <= available) {  // n <= 118 on an H100 (227 KiB per block)
    launch_jacobi<kStageBoth>(b, v_t, max_sweeps, scratch_bytes + 2 * matrix_bytes);
  } else if (scratch_bytes + matrix_bytes <= available) {  // n <= 166
    launch_jacobi<kStageMatrix>(b, v_t, max_sweeps, scratch_bytes + matrix_bytes);
  } else {
    launch_jacobi<kStageNone>(b, v_t, max_sweeps, scratch_bytes);
  }
}

std::tuple<at::Tensor, at::Tensor> refresh_eigenbasis_cuda(const at::Tensor& factor, const at::Tensor& basis,
                                                           c10::string_view method, int64_t max_sweeps) {
  const c10::cuda::CUDAGuard guard(factor.device());
  return refresh_eigenbasis_driver(factor, basis, std::string_view(method.data(), method.size()), max_sweeps,
                                   right_cholesky_solve_cuda, jacobi_cuda);
}

void jacobi_eigen_cuda(at::Tensor& matrices, at::Tensor& vectors_t, int64_t max_sweeps) {
  const c10::cuda::CUDAGuard guard(matrices.device());
  jacobi_eigen_driver(matrices, vectors_t, max_sweeps, jacobi_cuda);
}

}  // namespace

TORCH_LIBRARY_IMPL(soap_kernels, CUDA, m) {
  m.impl("refresh_eigenbasis", &refresh_eigenbasis_cuda);
  m.impl("jacobi_eigen_", &jacobi_eigen_cuda);
}

}  // namespace soap_kernels
