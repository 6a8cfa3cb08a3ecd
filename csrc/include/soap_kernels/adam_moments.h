// Rotated-Adam moment update, one element: the algorithm core shared by the CPU and CUDA kernels.
//   m <- beta1 m + (1 - beta1) g
//   v <- beta2 v + (1 - beta2) g^2
//   d  = m / (sqrt(v) + eps)
// g, m and v live in the eigenbasis of SOAP's Kronecker factors (g~ = Q_L^T G Q_R).
#pragma once

#include <cmath>

#include "soap_kernels/host_device.h"

namespace soap_kernels {

// The update's constants in the element type. 1 - beta is taken in double before the cast, as the reference
// SOAP's alpha = 1 - beta is: in float32, 1 - float(0.999) is 0.00099998713, a 1.3e-5 relative error in v's
// increment (and, where v is small, in the direction) that the float32 cast of 1 - 0.999 does not have.
template <typename T>
struct AdamMomentConstants {
  T beta1, one_minus_beta1, beta2, one_minus_beta2, eps;

  static AdamMomentConstants from(double beta1, double beta2, double eps) {
    return {static_cast<T>(beta1), static_cast<T>(1.0 - beta1), static_cast<T>(beta2), static_cast<T>(1.0 - beta2),
            static_cast<T>(eps)};
  }
};

template <typename T>
SOAP_KERNELS_HOST_DEVICE T adam_moments_element(T& m, T& v, T g, const AdamMomentConstants<T>& c, bool enabled) {
  if (enabled) {
    m = c.beta1 * m + c.one_minus_beta1 * g;
    v = c.beta2 * v + c.one_minus_beta2 * g * g;
  }
  return m / (sqrt(v) + c.eps);
}

}  // namespace soap_kernels
