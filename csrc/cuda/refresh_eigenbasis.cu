// CUDA kernel of soap_kernels::refresh_eigenbasis (algorithm in csrc/include/soap_kernels/refresh_eigenbasis_driver.h).
// GEMMs go to ATen (cuBLAS). The shared cores of eigen_refresh_core.h run with one thread block as the team:
// the Cholesky + triangular inverse of each 64 x 64 diagonal block in shared memory (the rest of the blocked
// Cholesky-QR is GEMMs), and the Jacobi solver on the whole float64 matrix in global memory (one block per
// matrix: simple and exact, but bound by L2 traffic for large n; see the report in the op's docstring). No step
// reads anything back to the host (no cuSOLVER, fixed sweep cap, convergence decided per block), so the
// op can be captured in a CUDA graph.
#include <ATen/ATen.h>
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

// One block per matrix of a [batch, b, b] stack (b <= kCholeskyBlock): the matrix is staged in shared memory.
__global__ void __launch_bounds__(kCholeskyThreads) cholesky_inverse_blocks_kernel(double* blocks, int64_t n) {
  extern __shared__ double shared[];
  double* matrix = shared;
  double* column = shared + n * n;
  double* global = blocks + static_cast<int64_t>(blockIdx.x) * n * n;
  for (int64_t index = threadIdx.x; index < n * n; index += blockDim.x) matrix[index] = global[index];
  eigen_refresh::cholesky_upper_inverse(BlockTeam{}, matrix, n, column);  // starts and ends with a barrier
  for (int64_t index = threadIdx.x; index < n * n; index += blockDim.x) global[index] = matrix[index];
}

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
  eigen_refresh::jacobi_eigen(BlockTeam{}, b + offset, v_t + offset, n, max_sweeps, scratch);
}

void cholesky_inverse_blocks_cuda(at::Tensor& blocks) {
  const int64_t batch = blocks.size(0), n = blocks.size(1);
  TORCH_CHECK(n <= kCholeskyBlock, "soap_kernels: Cholesky diagonal block of size ", n, " > ", kCholeskyBlock);
  const size_t shared_bytes = static_cast<size_t>(n * n + n) * sizeof(double);  // <= 33 KiB
  cholesky_inverse_blocks_kernel<<<static_cast<unsigned>(batch), kCholeskyThreads, shared_bytes,
                                   c10::cuda::getCurrentCUDAStream()>>>(blocks.data_ptr<double>(), n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> right_cholesky_solve_cuda(at::Tensor& gram, const at::Tensor& x) {
  return {blocked_right_cholesky_solve(gram, x, cholesky_inverse_blocks_cuda),
          at::ones({gram.size(0)}, x.options().dtype(at::kBool))};
}

void jacobi_cuda(at::Tensor& b, at::Tensor& v_t, int64_t max_sweeps) {
  const int64_t batch = b.size(0), n = b.size(1);
  const int64_t pairs = (n + (n & 1)) / 2;
  const size_t shared_bytes = static_cast<size_t>(6 * pairs) * sizeof(double);
  TORCH_CHECK(shared_bytes <= 48 * 1024, "soap_kernels.refresh_eigenbasis: n = ", n, " is too large for the CUDA kernel");
  jacobi_kernel<<<static_cast<unsigned>(batch), kJacobiThreads, shared_bytes, c10::cuda::getCurrentCUDAStream()>>>(
      b.data_ptr<double>(), v_t.data_ptr<double>(), n, max_sweeps);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> refresh_eigenbasis_cuda(const at::Tensor& factor, const at::Tensor& basis,
                                                           c10::string_view method, int64_t max_sweeps) {
  const c10::cuda::CUDAGuard guard(factor.device());
  return refresh_eigenbasis_driver(factor, basis, std::string_view(method.data(), method.size()), max_sweeps,
                                   right_cholesky_solve_cuda, jacobi_cuda);
}

}  // namespace

TORCH_LIBRARY_IMPL(soap_kernels, CUDA, m) { m.impl("refresh_eigenbasis", &refresh_eigenbasis_cuda); }

}  // namespace soap_kernels
