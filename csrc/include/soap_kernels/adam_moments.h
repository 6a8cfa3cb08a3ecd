// Rotated-Adam moment update, one element: the algorithm core shared by the CPU and CUDA kernels.
//   m <- beta1 m + (1 - beta1) g
//   v <- beta2 v + (1 - beta2) g^2
//   d  = m / (sqrt(v) + eps)
// g, m and v live in the eigenbasis of SOAP's Kronecker factors (g~ = Q_L^T G Q_R).
#pragma once

#include <cmath>

#include "soap_kernels/host_device.h"

namespace soap_kernels {

template <typename T>
SOAP_KERNELS_HOST_DEVICE T adam_moments_element(T& m, T& v, T g, T beta1, T beta2, T eps, bool enabled) {
  if (enabled) {
    m = beta1 * m + (T(1) - beta1) * g;
    v = beta2 * v + (T(1) - beta2) * g * g;
  }
  return m / (sqrt(v) + eps);
}

}  // namespace soap_kernels
