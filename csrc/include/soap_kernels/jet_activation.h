// The C++ CPU kernel of soap_kernels::jet_activation (csrc/cpu/jet_activation.cpp), for other CPU kernels that
// run it on part of a stack without a trip through the dispatcher (csrc/cpu/jet_dense_backward.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string_view>

namespace soap_kernels {

// The activation's jet of z [K, N, F] (grad empty) or its adjoint (dh/dz)^T grad; the operator's schema and the
// term encoding are in csrc/registration.cpp and soap_kernels/ops/jet_dense_native.py.
at::Tensor jet_activation_cpu(const at::Tensor& z, const std::optional<at::Tensor>& grad,
                              const std::optional<at::Tensor>& base, std::string_view activation,
                              c10::ArrayRef<double> tower_coefs, int64_t tower_orders, c10::IntArrayRef terms,
                              c10::ArrayRef<double> coefs);

}  // namespace soap_kernels
