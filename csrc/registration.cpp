// Every soap_kernels operator schema, and the Python module soap_kernels._C that reports how it was built.
// Kernels register their implementations beside their code (TORCH_LIBRARY_IMPL in csrc/cpu, csrc/cuda).
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include "soap_kernels/cpu_buffer_cache.h"

TORCH_LIBRARY(soap_kernels, m) {
  // Rotated-Adam moments, in place: m <- b1 m + (1-b1) g; v <- b2 v + (1-b2) g^2 (only where `enabled`);
  // returns the preconditioned direction m / (sqrt(v) + eps).
  m.def(
      "adam_moments_(Tensor(a!) exp_avg, Tensor(b!) exp_avg_sq, Tensor grad, Tensor enabled, float beta1, "
      "float beta2, float eps) -> Tensor");
  // SOAP eigenbasis refresh of a stack of Kronecker factors L[b] with previous bases Q[b]: method "qr" (sort by
  // diag(Q^T L Q), one power step, orthonormalise) or "exact" (warm-started Jacobi eigendecomposition).
  // Returns the new bases and the column permutation `order` [batch, n] to apply to Adam's second moment.
  m.def("refresh_eigenbasis(Tensor factor, Tensor basis, str method, int max_sweeps) -> (Tensor, Tensor)");
  // The Jacobi solver of "exact" alone, in place on a float64 stack of symmetric B[b] (n x n, contiguous): B
  // becomes diagonal (its eigenvalues, unsorted) and vectors_t receives V^T (row i: the eigenvector rotated
  // out of coordinate i). The sub-problem solver of the block-Jacobi driver (soap_kernels/ops/block_jacobi.py).
  m.def("jacobi_eigen_(Tensor(a!) matrices, Tensor(b!) vectors_t, int max_sweeps) -> ()");
  // An activation's jet rule over a stack z [K, N, F] (grad None) or its adjoint (grad = dL/dh), as the term
  // program `terms` (8 integers per term) / `coefs`, with the derivative tower's polynomials `tower_coefs`
  // (tower_orders rows) in the base b = tanh(z_0) or sigmoid(z_0) (given as `base` when already computed).
  // CPU only; the encoding is in soap_kernels/ops/jet_dense_native.py. Returns a new [K, N, F] stack.
  m.def(
      "jet_activation(Tensor z, Tensor? grad, Tensor? base, str activation, float[] tower_coefs, int tower_orders, "
      "int[] terms, float[] coefs) -> Tensor");
  // The backward of a dense jet layer h = activation jet of z, z_k = x_k W^T (+ b on the value slot), given
  // grad_h = dL/dh: (dL/dx, empty unless compute_grad_x; dL/dW; dL/db), jet_activation's adjoint (same program
  // arguments) and the GEMMs run chunk_rows rows at a time. CPU only (csrc/cpu/jet_dense_backward.cpp).
  m.def(
      "jet_dense_backward(Tensor grad_h, Tensor z, Tensor x, Tensor weight, Tensor? base, str activation, "
      "float[] tower_coefs, int tower_orders, int[] terms, float[] coefs, bool compute_grad_x, int chunk_rows) "
      "-> (Tensor, Tensor, Tensor)");
  // out[s] = sum over terms (s, i, j) of coef * a[i] * b[j] for jet stacks a [Ka, N, F], b [Kb, N, F]: the
  // Leibniz product of two jets and its backward (CPU only; soap_kernels/ops/jet_product.py).
  m.def("jet_bilinear(Tensor a, Tensor b, int num_slots, int[] terms, float[] coefs) -> Tensor");
  // An uninitialised contiguous tensor of `size` and like's dtype whose storage comes from the CPU buffer cache
  // (csrc/include/soap_kernels/cpu_buffer_cache.h), for the jets' large stacks. CPU only.
  m.def("cached_empty(Tensor like, SymInt[] size) -> Tensor");
}

PYBIND11_MODULE(_C, module) {
  module.doc() = "soap_kernels native kernels (operators live under torch.ops.soap_kernels)";
  pybind11::dict info;
  info["cuda"] = static_cast<bool>(SOAP_KERNELS_WITH_CUDA);
  info["cuda_archs"] = std::string(SOAP_KERNELS_CUDA_ARCHS);
  info["torch_version"] = std::string(SOAP_KERNELS_TORCH_VERSION);
  info["torch_cuda_version"] = std::string(SOAP_KERNELS_CUDA_VERSION);
  info["compiler"] = std::string(__VERSION__);
  module.attr("build_info") = info;
  module.def(
      "cpu_buffer_cache_stats",
      [] {
        const soap_kernels::CpuBufferCacheStats stats = soap_kernels::cpu_buffer_cache_stats();
        pybind11::dict out;
        out["limit_bytes"] = stats.limit_bytes;
        out["cached_bytes"] = stats.cached_bytes;
        out["cached_blocks"] = stats.cached_blocks;
        out["hits"] = stats.hits;
        out["misses"] = stats.misses;
        return out;
      },
      "The CPU buffer cache's limit, kept bytes and blocks, and its hit and miss counts.");
  module.def("cpu_buffer_cache_clear", &soap_kernels::cpu_buffer_cache_clear,
             "Frees every block the CPU buffer cache keeps.");
  module.def("cpu_buffer_cache_set_limit", &soap_kernels::cpu_buffer_cache_set_limit, pybind11::arg("bytes"),
             "Sets how many bytes of freed blocks the CPU buffer cache keeps (0: none).");
  module.def("cpu_buffer_cache_set_debug_fill", &soap_kernels::cpu_buffer_cache_set_debug_fill,
             pybind11::arg("enabled"), "Fills every tensor the cache hands out with NaN bytes (debugging).");
}
