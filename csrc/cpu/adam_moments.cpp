// CPU kernel of soap_kernels::adam_moments_ (formula in csrc/include/soap_kernels/adam_moments.h).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "soap_kernels/adam_moments.h"
#include "soap_kernels/checks.h"

namespace soap_kernels {

at::Tensor adam_moments_cpu(at::Tensor& exp_avg, at::Tensor& exp_avg_sq, const at::Tensor& grad,
                            const at::Tensor& enabled, double beta1, double beta2, double eps) {
  TORCH_CHECK(exp_avg.is_contiguous(), "soap_kernels: exp_avg must be contiguous");
  check_same_layout(exp_avg, exp_avg_sq, "exp_avg_sq");
  check_same_layout(exp_avg, grad, "grad");
  check_enabled_flag(enabled, exp_avg);
  at::Tensor direction = at::empty_like(exp_avg);
  const bool on = enabled.item<bool>();  // a CPU tensor: reading it is not a device sync
  AT_DISPATCH_FLOATING_TYPES(exp_avg.scalar_type(), "adam_moments_cpu", [&] {
    scalar_t* m = exp_avg.data_ptr<scalar_t>();
    scalar_t* v = exp_avg_sq.data_ptr<scalar_t>();
    const scalar_t* g = grad.data_ptr<scalar_t>();
    scalar_t* d = direction.data_ptr<scalar_t>();
    const auto constants = AdamMomentConstants<scalar_t>::from(beta1, beta2, eps);
    at::parallel_for(0, exp_avg.numel(), 16384, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        d[i] = adam_moments_element<scalar_t>(m[i], v[i], g[i], constants, on);
      }
    });
  });
  return direction;
}

TORCH_LIBRARY_IMPL(soap_kernels, CPU, m) { m.impl("adam_moments_", &adam_moments_cpu); }

}  // namespace soap_kernels
