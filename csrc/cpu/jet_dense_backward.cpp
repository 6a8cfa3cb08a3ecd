// CPU kernel of soap_kernels::jet_dense_backward: the backward of a dense jet layer h = s(z), z_k = x_k W^T
// (+ b on the value slot), given dL/dh, one chunk of rows at a time:
//     g_z = (dh/dz)^T dL/dh             (jet_activation's adjoint, over the chunk's rows of every slot)
//     dL/dW += sum_k g_z,k^T x_k        (one GEMM per slot)
//     dL/dx_k = g_z,k W                 (into the chunk's rows of dL/dx)
//     dL/db += sum over rows of g_z,0
// Each chunk's g_z feeds its GEMMs while it is still in cache, and the [K, N, F_out] g_z of the whole batch never
// exists. The loop is here rather than in Python because its ~30 small calls per chunk made a step of the MLP
// 4x256 Allen-Cahn case (N = 4096, 4 chunks per layer) 2.3-3 ms slower (A/B interleaved on the 2-core CPU).
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <string_view>
#include <tuple>

#include "soap_kernels/cpu_buffer_cache.h"
#include "soap_kernels/jet_activation.h"

namespace soap_kernels {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> jet_dense_backward_cpu(
    const at::Tensor& grad_h, const at::Tensor& z, const at::Tensor& x, const at::Tensor& weight,
    const std::optional<at::Tensor>& base, std::string_view activation, c10::ArrayRef<double> tower_coefs,
    int64_t tower_orders, c10::IntArrayRef terms, c10::ArrayRef<double> coefs, bool compute_grad_x,
    int64_t chunk_rows) {
  TORCH_CHECK(z.dim() == 3 && x.dim() == 3 && weight.dim() == 2 && x.size(0) == z.size(0) &&
                  x.size(1) == z.size(1) && weight.size(0) == z.size(2) && weight.size(1) == x.size(2),
              "soap_kernels::jet_dense_backward: z ", z.sizes(), " must be x ", x.sizes(), " times weight ",
              weight.sizes(), "^T");
  TORCH_CHECK(x.scalar_type() == z.scalar_type() && weight.scalar_type() == z.scalar_type(),
              "soap_kernels::jet_dense_backward: x (", x.scalar_type(), ") and weight (", weight.scalar_type(),
              ") must have z's dtype ", z.scalar_type());
  TORCH_CHECK(grad_h.sizes() == z.sizes() && grad_h.scalar_type() == z.scalar_type(),
              "soap_kernels::jet_dense_backward: grad_h (", grad_h.sizes(), " ", grad_h.scalar_type(),
              ") must match z (", z.sizes(), " ", z.scalar_type(), ")");
  TORCH_CHECK(!base || (base->dim() == 2 && base->size(0) == z.size(1) && base->size(1) == z.size(2)),
              "soap_kernels::jet_dense_backward: base ", base ? base->sizes() : c10::IntArrayRef{},
              " must be [N, F_out] like z[0] ", z[0].sizes());
  TORCH_CHECK(chunk_rows >= 1, "soap_kernels::jet_dense_backward: chunk_rows must be >= 1, got ", chunk_rows);
  const int64_t num_slots = z.size(0), rows = z.size(1), f_out = z.size(2), f_in = x.size(2);
  // dL/dW accumulates in the orientation whose GEMM has the wider left operand: a skinny g^T x (a first layer,
  // F_in = d) is several times slower in CPU BLAS than (x^T g)^T
  const bool transposed = f_in < f_out;
  at::Tensor grad_weight = transposed ? at::zeros({f_in, f_out}, weight.options())
                                      : at::zeros({f_out, f_in}, weight.options());
  at::Tensor grad_bias = at::zeros({f_out}, weight.options());
  at::Tensor grad_x = compute_grad_x ? cpu_cached_empty(x.sizes(), x.scalar_type()) : at::empty({0}, x.options());
  for (int64_t start = 0; start < rows; start += chunk_rows) {
    const int64_t count = std::min(chunk_rows, rows - start);
    std::optional<at::Tensor> base_rows;
    if (base) base_rows = base->narrow(0, start, count);
    const at::Tensor grad_z = jet_activation_cpu(z.narrow(1, start, count), grad_h.narrow(1, start, count),
                                                 base_rows, activation, tower_coefs, tower_orders, terms, coefs);
    for (int64_t slot = 0; slot < num_slots; ++slot) {
      const at::Tensor g = grad_z.select(0, slot);
      const at::Tensor x_rows = x.select(0, slot).narrow(0, start, count);
      if (transposed) {
        grad_weight.addmm_(x_rows.t(), g);
      } else {
        grad_weight.addmm_(g.t(), x_rows);
      }
      if (compute_grad_x) {
        at::Tensor out = grad_x.select(0, slot).narrow(0, start, count);
        at::mm_out(out, g, weight);
      }
    }
    grad_bias.add_(grad_z.select(0, 0).sum(0));
  }
  return {grad_x, transposed ? grad_weight.t().contiguous() : grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(soap_kernels, CPU, m) { m.impl("jet_dense_backward", &jet_dense_backward_cpu); }

}  // namespace soap_kernels
