// Argument checks shared by the host entry points of every kernel.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace soap_kernels {

inline void check_same_layout(const at::Tensor& reference, const at::Tensor& other, const char* name) {
  TORCH_CHECK(other.sizes() == reference.sizes(), "soap_kernels: ", name, " has shape ", other.sizes(),
              ", expected ", reference.sizes());
  TORCH_CHECK(other.scalar_type() == reference.scalar_type(), "soap_kernels: ", name, " has dtype ",
              other.scalar_type(), ", expected ", reference.scalar_type());
  TORCH_CHECK(other.device() == reference.device(), "soap_kernels: ", name, " is on ", other.device(),
              ", expected ", reference.device());
  TORCH_CHECK(other.is_contiguous(), "soap_kernels: ", name, " must be contiguous");
}

inline void check_enabled_flag(const at::Tensor& enabled, const at::Tensor& reference) {
  TORCH_CHECK(enabled.numel() == 1 && enabled.scalar_type() == at::kBool,
              "soap_kernels: enabled must be a one-element bool tensor, got ", enabled.scalar_type(), " with ",
              enabled.numel(), " elements");
  TORCH_CHECK(enabled.device() == reference.device(), "soap_kernels: enabled is on ", enabled.device(),
              ", expected ", reference.device());
}

}  // namespace soap_kernels
