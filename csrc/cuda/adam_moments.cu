// CUDA kernel of soap_kernels::adam_moments_ (formula in csrc/include/soap_kernels/adam_moments.h).
// The skip flag is read on the device, so a skipped step costs no host synchronisation.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "soap_kernels/adam_moments.h"
#include "soap_kernels/checks.h"

namespace soap_kernels {

template <typename scalar_t>
__global__ void adam_moments_kernel(scalar_t* __restrict__ m, scalar_t* __restrict__ v,
                                    const scalar_t* __restrict__ g, scalar_t* __restrict__ d,
                                    const bool* __restrict__ enabled, int64_t n,
                                    const AdamMomentConstants<scalar_t> constants) {
  const bool on = *enabled;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    scalar_t mi = m[i], vi = v[i];
    d[i] = adam_moments_element<scalar_t>(mi, vi, g[i], constants, on);
    m[i] = mi;
    v[i] = vi;
  }
}

at::Tensor adam_moments_cuda(at::Tensor& exp_avg, at::Tensor& exp_avg_sq, const at::Tensor& grad,
                             const at::Tensor& enabled, double beta1, double beta2, double eps) {
  TORCH_CHECK(exp_avg.is_contiguous(), "soap_kernels: exp_avg must be contiguous");
  check_same_layout(exp_avg, exp_avg_sq, "exp_avg_sq");
  check_same_layout(exp_avg, grad, "grad");
  check_enabled_flag(enabled, exp_avg);
  const c10::cuda::CUDAGuard guard(exp_avg.device());
  at::Tensor direction = at::empty_like(exp_avg);
  const int64_t n = exp_avg.numel();
  if (n == 0) return direction;
  constexpr int threads = 256;
  const int64_t blocks = std::min<int64_t>((n + threads - 1) / threads, 65535);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(exp_avg.scalar_type(), "adam_moments_cuda", [&] {
    adam_moments_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
        exp_avg.data_ptr<scalar_t>(), exp_avg_sq.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(),
        direction.data_ptr<scalar_t>(), enabled.data_ptr<bool>(), n,
        AdamMomentConstants<scalar_t>::from(beta1, beta2, eps));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return direction;
}

TORCH_LIBRARY_IMPL(soap_kernels, CUDA, m) { m.impl("adam_moments_", &adam_moments_cuda); }

}  // namespace soap_kernels
