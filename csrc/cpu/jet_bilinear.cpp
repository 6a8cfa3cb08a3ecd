// CPU kernel of soap_kernels::jet_bilinear: out[s] = sum over terms (s, i, j) of coef * a[i] * b[j] for jet stacks
// a [Ka, N, F] and b [Kb, N, F], all output slots in one pass over blocks. It is the Leibniz product of two jets
// and both halves of its backward (soap_kernels/ops/jet_product.py builds the three term programs).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "soap_kernels/cpu_buffer_cache.h"
#include "soap_kernels/jet_terms.h"

#include <algorithm>
#include <vector>

namespace soap_kernels {
namespace {

struct BilinearTerm {
  int64_t out_slot, a_slot, b_slot;
  double coef;
};

template <typename scalar_t>
struct BilinearBlocks {
  const std::vector<BilinearTerm>* program;
  const scalar_t* a;
  const scalar_t* b;
  scalar_t* out;
  int64_t slot_stride;
};

template <typename scalar_t>
SOAP_KERNELS_INLINE void run_bilinear_blocks(const BilinearBlocks<scalar_t>& p, int64_t first_block,
                                             int64_t last_block) {
  for (int64_t blk = first_block; blk < last_block; ++blk) {
    const int64_t offset = blk * kJetBlockElements;
    const int64_t count = std::min(kJetBlockElements, p.slot_stride - offset);
    int64_t written_slot = -1;
    for (const BilinearTerm& t : *p.program) {
      const scalar_t* operands[2] = {p.a + t.a_slot * p.slot_stride + offset, p.b + t.b_slot * p.slot_stride + offset};
      // the first term of a slot assigns it, the others accumulate
      term(p.out + t.out_slot * p.slot_stride + offset, static_cast<scalar_t>(t.coef), operands, 2, count,
           t.out_slot == written_slot);
      written_slot = t.out_slot;
    }
  }
}

// one overload per dtype, so AT_DISPATCH's (non-template) lambda picks it
SOAP_KERNELS_CPU_CLONES void run_bilinear(const BilinearBlocks<float>& p, int64_t first, int64_t last) {
  run_bilinear_blocks(p, first, last);
}

SOAP_KERNELS_CPU_CLONES void run_bilinear(const BilinearBlocks<double>& p, int64_t first, int64_t last) {
  run_bilinear_blocks(p, first, last);
}

at::Tensor jet_bilinear_cpu(const at::Tensor& a, const at::Tensor& b, int64_t num_slots, c10::IntArrayRef terms,
                            c10::ArrayRef<double> coefs) {
  TORCH_CHECK(a.dim() == 3 && a.is_contiguous() && b.dim() == 3 && b.is_contiguous(),
              "soap_kernels::jet_bilinear: a and b must be contiguous [K, N, F] stacks, got shapes ", a.sizes(),
              " and ", b.sizes());
  TORCH_CHECK(a.size(1) == b.size(1) && a.size(2) == b.size(2) && a.scalar_type() == b.scalar_type(),
              "soap_kernels::jet_bilinear: a ", a.sizes(), " ", a.scalar_type(), " and b ", b.sizes(), " ",
              b.scalar_type(), " must share N, F and dtype");
  TORCH_CHECK(a.scalar_type() == at::kFloat || a.scalar_type() == at::kDouble,
              "soap_kernels::jet_bilinear: float32 or float64 stacks, got ", a.scalar_type());
  TORCH_CHECK(num_slots >= 1, "soap_kernels::jet_bilinear: num_slots must be positive, got ", num_slots);
  TORCH_CHECK(terms.size() == 3 * coefs.size(), "soap_kernels::jet_bilinear: terms must hold 3 integers per "
              "coefficient, got ", terms.size(), " for ", coefs.size());
  std::vector<BilinearTerm> program(coefs.size());
  for (size_t i = 0; i < program.size(); ++i) {
    program[i] = {terms[3 * i], terms[3 * i + 1], terms[3 * i + 2], coefs[i]};
    const BilinearTerm& t = program[i];
    TORCH_CHECK(t.out_slot >= 0 && t.out_slot < num_slots && t.a_slot >= 0 && t.a_slot < a.size(0) &&
                    t.b_slot >= 0 && t.b_slot < b.size(0),
                "soap_kernels::jet_bilinear: term ", i, " (", t.out_slot, ", ", t.a_slot, ", ", t.b_slot,
                ") is out of range for ", num_slots, " output, ", a.size(0), " and ", b.size(0), " input slots");
    TORCH_CHECK(i == 0 || program[i - 1].out_slot <= t.out_slot,
                "soap_kernels::jet_bilinear: terms must be sorted by output slot");
  }
  at::Tensor out = cpu_cached_empty({num_slots, a.size(1), a.size(2)}, a.scalar_type());
  std::vector<int64_t> written_slots;
  for (const BilinearTerm& t : program) written_slots.push_back(t.out_slot);
  zero_unwritten_slots(out, written_slots);
  const int64_t slot_stride = a.size(1) * a.size(2);
  if (slot_stride == 0) return out;
  const int64_t num_blocks = (slot_stride + kJetBlockElements - 1) / kJetBlockElements;
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "jet_bilinear_cpu", [&] {
    const BilinearBlocks<scalar_t> blocks{&program, a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(),
                                          out.data_ptr<scalar_t>(), slot_stride};
    at::parallel_for(0, num_blocks, 1, [&](int64_t first, int64_t last) { run_bilinear(blocks, first, last); });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(soap_kernels, CPU, m) { m.impl("jet_bilinear", &jet_bilinear_cpu); }

}  // namespace soap_kernels
