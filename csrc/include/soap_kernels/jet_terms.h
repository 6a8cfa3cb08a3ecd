// Host helpers shared by the CPU jet kernels (csrc/cpu/jet_*.cpp): a jet stack [K, N, F] is processed in blocks
// of kJetBlockElements elements of every slot, each output slot a sum of terms coef * prod operands.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

namespace soap_kernels {

// Elements of one slot per block: every slot's block (and a few scratch rows) stays in L1/L2 while its terms run.
constexpr int64_t kJetBlockElements = 4096;

// A block loop is compiled twice, for x86-64-v3 (AVX2, FMA, BMI2: Haswell, Zen and later) and for the baseline,
// and the loader picks the one the CPU runs (GCC function multiversioning): the elementwise loops are 2x wider.
// Not "arch=haswell": GCC's resolver takes that clone only on an Intel CPU of that model family (never on the
// AMD EPYC we measure on), while a level like x86-64-v3 is chosen by the CPU's features. Every helper it calls
// is forced inline so it is compiled into each clone (GCC 12 is the version this was built and tested with;
// older ones get the baseline loop only). The AVX2 clone contracts a * b + c into FMAs, so its results can
// differ from the baseline's in the last bit.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && __GNUC__ >= 12
#define SOAP_KERNELS_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define SOAP_KERNELS_CPU_CLONES
#endif
#if defined(__GNUC__)
#define SOAP_KERNELS_INLINE inline __attribute__((always_inline))
#else
#define SOAP_KERNELS_INLINE inline
#endif

// out (=, or += when accumulate) coef * prod_{i < N} operands[i] over `count` elements: one pass per term, the
// operand count a compile-time constant so the product unrolls and the loop vectorises.
template <typename scalar_t, int N>
SOAP_KERNELS_INLINE void term_pass(scalar_t* __restrict out, scalar_t coef, const scalar_t* const* operands,
                                   int64_t count, bool accumulate) {
  std::array<const scalar_t* __restrict, N> op;
  for (int i = 0; i < N; ++i) op[i] = operands[i];
  if (accumulate) {
    for (int64_t e = 0; e < count; ++e) {
      scalar_t v = coef;
      for (int i = 0; i < N; ++i) v *= op[i][e];
      out[e] += v;
    }
  } else {
    for (int64_t e = 0; e < count; ++e) {
      scalar_t v = coef;
      for (int i = 0; i < N; ++i) v *= op[i][e];
      out[e] = v;
    }
  }
}

template <typename scalar_t>
SOAP_KERNELS_INLINE void term(scalar_t* out, scalar_t coef, const scalar_t* const* operands, int num_operands,
                              int64_t count, bool accumulate) {
  switch (num_operands) {
    case 1: return term_pass<scalar_t, 1>(out, coef, operands, count, accumulate);
    case 2: return term_pass<scalar_t, 2>(out, coef, operands, count, accumulate);
    case 3: return term_pass<scalar_t, 3>(out, coef, operands, count, accumulate);
    case 4: return term_pass<scalar_t, 4>(out, coef, operands, count, accumulate);
    case 5: return term_pass<scalar_t, 5>(out, coef, operands, count, accumulate);
    case 6: return term_pass<scalar_t, 6>(out, coef, operands, count, accumulate);
    default: TORCH_CHECK(false, "soap_kernels: a jet term with ", num_operands, " operands");
  }
}

// Zeroes the slots of a freshly allocated output stack that no term writes (a kernel assigns a slot at its
// first term and accumulates the rest, so every other slot is written completely).
inline void zero_unwritten_slots(at::Tensor& out, const std::vector<int64_t>& written_slots) {
  for (int64_t slot = 0; slot < out.size(0); ++slot) {
    if (std::find(written_slots.begin(), written_slots.end(), slot) == written_slots.end()) out[slot].zero_();
  }
}

}  // namespace soap_kernels
