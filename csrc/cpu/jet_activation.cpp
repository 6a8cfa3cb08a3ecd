// CPU kernel of soap_kernels::jet_activation: an activation's jet rule (forward) or its adjoint (backward) over a
// jet stack z [K, N, F], all output slots in one pass over blocks, without [N, F] temporaries.
//
// The rule is a term program compiled in Python (soap_kernels/jets/plan.py, encoded by
// soap_kernels/ops/jet_dense_native.py), eight integers of `terms` per term:
//     (out_slot, order m, grad_slot or -1, number of factors, factor slots f_0..f_3)
//     out[out_slot] += coef * s^(m)(z_0) * grad[grad_slot] * prod_i z[f_i]
// The derivative tower s^(m)(z_0), m = 0..M, comes from one or two base functions of z_0, evaluated (vectorised)
// over the whole value slot before the block loop, by one ATen call each (per block, the dispatcher and
// TensorIterator overhead of a 4096-element call cost several times its arithmetic) — but for float32 tanh,
// which the block loop computes itself by fast_tanh.h (no call to pay for), and gelu's float32 tanh, which the
// pre-pass takes from fast_tanh.h too:
//     tanh, sigmoid: s^(m) = P_m(b), b = tanh(z_0) or sigmoid(z_0), P_m = row m of tower_coefs (lowest degree
//                    first; tower_orders rows)
//     silu:          s^(m) = z_0 P_m(b) + m P_{m-1}(b), b = sigmoid(z_0), P the sigmoid polynomials
//     sin, cos:      s^(m) = sin(z_0 + (m + phase) pi/2), phase 0 for sin, 1 for cos
//     gelu:          0.5 x (1 + T), T = tanh(u), u = c (x + a x^3): T's derivatives by Faa di Bruno from the tanh
//                    polynomials in T and u's (the third is constant), then Leibniz with 0.5 x
// Why blocks: the torch reference runs one pass per multiplication and allocates every intermediate; on a CPU those
// fresh [N, F] tensors page-fault (glibc returns large blocks to the OS) and cost more than the arithmetic. Here a
// block (4096 elements of every slot) lives in L1/L2 while all of its terms are computed.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/cos.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/sin.h>
#include <ATen/ops/tanh.h>
#include <torch/library.h>

#include "soap_kernels/cpu_buffer_cache.h"
#include "soap_kernels/fast_tanh.h"
#include "soap_kernels/jet_activation.h"
#include "soap_kernels/jet_terms.h"

#include <algorithm>
#include <array>
#include <string_view>
#include <type_traits>
#include <vector>

namespace soap_kernels {
namespace {

enum class TowerKind { kTanh, kSigmoid, kSilu, kSin, kCos, kGelu };

// gelu's tanh approximation 0.5 x (1 + tanh(c (x + a x^3))), as soap_kernels/jets/activations.py defines it
constexpr double kGeluC = 0.7978845608028654;  // sqrt(2 / pi)
constexpr double kGeluA = 0.044715;

constexpr int64_t kTermColumns = 8;  // out_slot, order, grad_slot, num_factors, f0..f3
constexpr int64_t kMaxFactors = 4;

TowerKind tower_kind(std::string_view activation) {
  if (activation == "tanh") return TowerKind::kTanh;
  if (activation == "sigmoid") return TowerKind::kSigmoid;
  if (activation == "silu") return TowerKind::kSilu;
  if (activation == "sin") return TowerKind::kSin;
  if (activation == "cos") return TowerKind::kCos;
  if (activation == "gelu") return TowerKind::kGelu;
  TORCH_CHECK(false, "soap_kernels::jet_activation: no C++ tower for activation '", activation,
              "' (tanh, sigmoid, silu, sin, cos, gelu have one; use the torch reference for others)");
}

struct Term {
  int64_t out_slot, order, grad_slot, num_factors;
  std::array<int64_t, kMaxFactors> factors;
  double coef;
};

std::vector<Term> read_terms(c10::IntArrayRef terms, c10::ArrayRef<double> coefs, int64_t num_slots,
                             int64_t max_order, bool has_grad) {
  TORCH_CHECK(terms.size() % kTermColumns == 0 && terms.size() / kTermColumns == coefs.size(),
              "soap_kernels::jet_activation: terms must hold ", kTermColumns, " integers per coefficient, got ",
              terms.size(), " integers for ", coefs.size(), " coefficients");
  std::vector<Term> program(coefs.size());
  for (size_t i = 0; i < program.size(); ++i) {
    const int64_t* row = terms.data() + i * kTermColumns;
    Term& term = program[i];
    term = {row[0], row[1], row[2], row[3], {row[4], row[5], row[6], row[7]}, coefs[i]};
    TORCH_CHECK(term.out_slot >= 0 && term.out_slot < num_slots, "soap_kernels::jet_activation: term ", i,
                " writes slot ", term.out_slot, " of ", num_slots);
    TORCH_CHECK(term.order >= 0 && term.order <= max_order, "soap_kernels::jet_activation: term ", i,
                " needs derivative order ", term.order, " but the tower goes to ", max_order);
    TORCH_CHECK(term.grad_slot >= -1 && term.grad_slot < num_slots && (term.grad_slot == -1 || has_grad),
                "soap_kernels::jet_activation: term ", i, " reads grad slot ", term.grad_slot,
                has_grad ? "" : " but no grad was given");
    TORCH_CHECK(term.num_factors >= 0 && term.num_factors <= kMaxFactors, "soap_kernels::jet_activation: term ", i,
                " has ", term.num_factors, " factors");
    for (int64_t f = 0; f < term.num_factors; ++f) {
      TORCH_CHECK(term.factors[f] >= 0 && term.factors[f] < num_slots, "soap_kernels::jet_activation: term ", i,
                  " reads slot ", term.factors[f], " of ", num_slots);
    }
    TORCH_CHECK(i == 0 || program[i - 1].out_slot <= term.out_slot,
                "soap_kernels::jet_activation: terms must be sorted by output slot");
  }
  return program;
}

// True when each slot [N, F] of a stack is one contiguous run of N F elements (the slots themselves may be apart,
// as in a row range z[:, r0:r1] of a bigger stack).
bool slots_are_contiguous(const at::Tensor& t) {
  if (t.numel() == 0) return true;
  return (t.size(2) <= 1 || t.stride(2) == 1) && (t.size(1) <= 1 || t.stride(1) == t.size(2)) &&
         (t.size(0) <= 1 || t.stride(0) >= t.size(1) * t.size(2));
}

// sum_{d < degree_count} coefs[d] b^d by Horner's rule, element-wise over `count` elements.
template <typename scalar_t>
SOAP_KERNELS_INLINE void polynomial(const double* coefs, int64_t degree_count, const scalar_t* __restrict b,
                                    scalar_t* __restrict out, int64_t count) {
  const auto top = static_cast<scalar_t>(degree_count ? coefs[degree_count - 1] : 0.0);
  for (int64_t e = 0; e < count; ++e) out[e] = top;
  for (int64_t d = degree_count - 2; d >= 0; --d) {
    const auto c = static_cast<scalar_t>(coefs[d]);
    for (int64_t e = 0; e < count; ++e) out[e] = out[e] * b[e] + c;
  }
}

// The derivative tower's polynomials s^(m) = P_m(b), trimmed to their highest non-zero coefficient. tanh's are
// alternately even and odd; those are evaluated in b^2 (half the Horner steps and roundings, as the reference does).
struct TowerPolynomial {
  std::vector<double> coefs;  // lowest degree first, in b (parity 0) or in b^2 (parity 1: b Q(b^2), 2: Q(b^2))
  int parity = 0;
};

struct TowerPolynomials {
  std::vector<TowerPolynomial> rows;
  bool needs_square = false;
  TowerPolynomials(c10::ArrayRef<double> table, int64_t orders) {
    const auto stride = static_cast<int64_t>(table.size()) / orders;
    for (int64_t m = 0; m < orders; ++m) {
      std::vector<double> c(table.begin() + m * stride, table.begin() + (m + 1) * stride);
      while (!c.empty() && c.back() == 0.0) c.pop_back();
      TowerPolynomial row;
      // parity 2 keeps the even coefficients, 1 the odd ones; worth it from two kept coefficients on (b itself,
      // sigmoid's P_0, is not worth a b^2 pass)
      for (int parity : {2, 1}) {
        bool others_zero = row.parity == 0;
        std::vector<double> kept;
        for (size_t d = 0; d < c.size(); ++d) {
          if ((d % 2 == 0) == (parity == 2)) {
            kept.push_back(c[d]);
          } else {
            others_zero = others_zero && c[d] == 0.0;
          }
        }
        if (others_zero && kept.size() >= 2) {
          row.parity = parity;
          row.coefs = kept;
        }
      }
      if (row.parity == 0) row.coefs = c;
      needs_square = needs_square || row.parity != 0;
      rows.push_back(std::move(row));
    }
  }
  int64_t orders() const { return static_cast<int64_t>(rows.size()); }
};

// Rows 0..orders-1 of `tower` hold tanh^(m)(u) (row 0: T = tanh(u)) for gelu's u = c (x + a x^3); overwrites
// them with gelu^(m)(x). (f o u)^(k) by Faa di Bruno with u1 = c (1 + 3 a x^2), u2 = 6 c a x, u3 = 6 c a and
// u4 = u5 = 0 (the reference's _compose_tower), then gelu^(k) = 0.5 (x O_k + k O_{k-1}) with O = 1 + T.
template <typename scalar_t>
SOAP_KERNELS_INLINE void gelu_from_tanh_tower(const scalar_t* x, scalar_t* tower, int64_t count, int64_t block,
                                              int64_t orders) {
  const auto c = static_cast<scalar_t>(kGeluC), a = static_cast<scalar_t>(kGeluA);
  const scalar_t half(0.5), u3 = 6 * c * a;
  for (int64_t e = 0; e < count; ++e) {
    const scalar_t xe = x[e], u1 = c * (1 + 3 * a * xe * xe), u2 = u3 * xe;
    scalar_t t[6] = {0, 0, 0, 0, 0, 0};
    for (int64_t m = 0; m < orders; ++m) t[m] = tower[m * block + e];
    scalar_t o[6];
    o[0] = 1 + t[0];
    o[1] = t[1] * u1;
    o[2] = t[1] * u2 + t[2] * u1 * u1;
    o[3] = t[1] * u3 + 3 * t[2] * u1 * u2 + t[3] * u1 * u1 * u1;
    o[4] = t[2] * (4 * u1 * u3 + 3 * u2 * u2) + 6 * t[3] * u1 * u1 * u2 + t[4] * u1 * u1 * u1 * u1;
    o[5] = t[2] * 10 * u2 * u3 + t[3] * (10 * u1 * u1 * u3 + 15 * u1 * u2 * u2) + 10 * t[4] * u1 * u1 * u1 * u2 +
           t[5] * u1 * u1 * u1 * u1 * u1;
    tower[e] = half * xe * o[0];
    for (int64_t m = 1; m < orders; ++m) {
      tower[m * block + e] = half * (xe * o[m] + static_cast<scalar_t>(m) * o[m - 1]);
    }
  }
}

template <typename scalar_t>
struct TowerBuffers {
  // square: b^2 for even/odd polynomials; base: b of the block when the block loop computes it (float32 tanh)
  std::vector<scalar_t> square, tower, base;
  TowerBuffers(int64_t orders, int64_t block) : square(block), tower(orders * block), base(block) {}
};

// The base functions of z_0 over a block: b = tanh(z_0), sigmoid(z_0) (also silu's) or tanh(u) (gelu's); for sin
// and cos, b = sin(z_0) and cosine = cos(z_0).
template <typename scalar_t>
struct BaseBlock {
  const scalar_t* b;
  const scalar_t* cosine;  // sin and cos only
};

// tower[m * block + e] = s^(m)(z0[e]) for m = 0..orders-1 over `count` elements.
template <typename scalar_t>
SOAP_KERNELS_INLINE void fill_tower(TowerKind kind, const TowerPolynomials& polys, const scalar_t* z0,
                                    BaseBlock<scalar_t> base, int64_t count, int64_t block,
                                    TowerBuffers<scalar_t>& buffers) {
  const int64_t orders = polys.orders();
  scalar_t* tower = buffers.tower.data();
  if (kind == TowerKind::kSin || kind == TowerKind::kCos) {
    const int phase = kind == TowerKind::kSin ? 0 : 1;
    for (int64_t m = 0; m < orders; ++m) {
      const int quarter = static_cast<int>((m + phase) % 4);
      const scalar_t* source = quarter % 2 == 0 ? base.b : base.cosine;
      const scalar_t sign = quarter >= 2 ? scalar_t(-1) : scalar_t(1);
      scalar_t* out = tower + m * block;
      for (int64_t e = 0; e < count; ++e) out[e] = sign * source[e];
    }
    return;
  }
  const scalar_t* b = base.b;
  scalar_t* square = buffers.square.data();
  if (polys.needs_square) {
    for (int64_t e = 0; e < count; ++e) square[e] = b[e] * b[e];
  }
  for (int64_t m = 0; m < orders; ++m) {
    const TowerPolynomial& p = polys.rows[m];
    scalar_t* row = tower + m * block;
    polynomial(p.coefs.data(), static_cast<int64_t>(p.coefs.size()), p.parity ? square : b, row, count);
    if (p.parity == 1) {
      for (int64_t e = 0; e < count; ++e) row[e] *= b[e];
    }
  }
  if (kind == TowerKind::kGelu) gelu_from_tanh_tower(z0, tower, count, block, orders);
  if (kind == TowerKind::kSilu) {
    // top-down so P_{m-1}(b) is still in row m-1 when row m needs it
    for (int64_t m = orders - 1; m >= 0; --m) {
      scalar_t* row = tower + m * block;
      const scalar_t* below = m > 0 ? tower + (m - 1) * block : nullptr;
      const auto mm = static_cast<scalar_t>(m);
      for (int64_t e = 0; e < count; ++e) row[e] = z0[e] * row[e] + (below ? mm * below[e] : scalar_t(0));
    }
  }
}

// What the block loop reads and writes: K slots of `elements` (N F) contiguous elements each, slot k of z at
// z + k * z_stride (a row range of a bigger stack has z_stride > N F), of grad at grad + k * grad_stride, of the
// (contiguous) output at out + k * elements.
template <typename scalar_t>
struct JetBlocks {
  TowerKind kind;
  const TowerPolynomials* polys;
  const std::vector<Term>* program;
  const scalar_t* z;
  const scalar_t* grad;  // null in the forward
  // the base function of z_0 over the value slot: tanh, sigmoid, gelu's tanh(u) or sin; null: float32 tanh, which
  // the block loop computes block by block (fast_tanh.h) instead of in a pass of its own
  const scalar_t* base;
  const scalar_t* cosine;  // cos(z_0) for sin and cos, else null
  scalar_t* out;
  int64_t elements, z_stride, grad_stride;
};

template <typename scalar_t>
SOAP_KERNELS_INLINE void run_blocks(const JetBlocks<scalar_t>& a, int64_t first_block, int64_t last_block) {
  const int64_t block = kJetBlockElements;
  TowerBuffers<scalar_t> buffers(a.polys->orders(), block);
  std::array<const scalar_t*, 2 + kMaxFactors> operands;
  for (int64_t blk = first_block; blk < last_block; ++blk) {
    const int64_t offset = blk * block;
    const int64_t count = std::min(block, a.elements - offset);
    const scalar_t* b = a.base ? a.base + offset : buffers.base.data();
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (!a.base) tanh_float_block(a.z + offset, buffers.base.data(), count);
    }
    const BaseBlock<scalar_t> base{b, a.cosine ? a.cosine + offset : nullptr};
    fill_tower(a.kind, *a.polys, a.z + offset, base, count, block, buffers);
    int64_t written_slot = -1;
    for (const Term& t : *a.program) {
      int num_operands = 0;
      operands[num_operands++] = buffers.tower.data() + t.order * block;
      if (t.grad_slot >= 0) operands[num_operands++] = a.grad + t.grad_slot * a.grad_stride + offset;
      for (int64_t f = 0; f < t.num_factors; ++f) {
        operands[num_operands++] = a.z + t.factors[f] * a.z_stride + offset;
      }
      // the first term of a slot assigns it, the others accumulate
      term(a.out + t.out_slot * a.elements + offset, static_cast<scalar_t>(t.coef), operands.data(), num_operands,
           count, t.out_slot == written_slot);
      written_slot = t.out_slot;
    }
  }
}

// one overload per dtype, so AT_DISPATCH's (non-template) lambda picks it
SOAP_KERNELS_CPU_CLONES void run_activation_blocks(const JetBlocks<float>& a, int64_t first, int64_t last) {
  run_blocks(a, first, last);
}

SOAP_KERNELS_CPU_CLONES void run_activation_blocks(const JetBlocks<double>& a, int64_t first, int64_t last) {
  run_blocks(a, first, last);
}

SOAP_KERNELS_CPU_CLONES void tanh_float_span(float* values, int64_t count) {
  tanh_float_in_place(values, count);
}

// The base functions of z_0 over the whole value slot z0 [N, F] (see BaseBlock), each by one vectorised, threaded
// pass; `given` is the tanh or sigmoid of z_0 the caller already has (the forward's output value slot). None
// (undefined tensors) for a float32 tanh: the block loop computes it.
template <typename scalar_t>
std::array<at::Tensor, 2> base_functions(const at::Tensor& z0, TowerKind kind, const at::Tensor* given) {
  if (given != nullptr) return {*given, at::Tensor()};
  if (kind == TowerKind::kTanh && std::is_same_v<scalar_t, float>) return {};
  at::Tensor b = cpu_cached_empty(z0.sizes(), z0.scalar_type());
  switch (kind) {
    case TowerKind::kTanh:
      at::tanh_out(b, z0);
      return {b, at::Tensor()};
    case TowerKind::kSigmoid:
    case TowerKind::kSilu:
      at::sigmoid_out(b, z0);
      return {b, at::Tensor()};
    case TowerKind::kGelu: {
      // u = c (x + a x^3), then tanh(u) in place
      const scalar_t* x = z0.data_ptr<scalar_t>();
      scalar_t* u = b.data_ptr<scalar_t>();
      const auto c = static_cast<scalar_t>(kGeluC), a = static_cast<scalar_t>(kGeluA);
      at::parallel_for(0, z0.numel(), kJetBlockElements, [&](int64_t first, int64_t last) {
        for (int64_t e = first; e < last; ++e) u[e] = c * (x[e] + a * x[e] * x[e] * x[e]);
        if constexpr (std::is_same_v<scalar_t, float>) tanh_float_span(u + first, last - first);
      });
      if constexpr (!std::is_same_v<scalar_t, float>) at::tanh_(b);
      return {b, at::Tensor()};
    }
    case TowerKind::kSin:
    case TowerKind::kCos: {
      at::sin_out(b, z0);
      at::Tensor cosine = cpu_cached_empty(z0.sizes(), z0.scalar_type());
      at::cos_out(cosine, z0);
      return {b, cosine};
    }
  }
  TORCH_CHECK(false, "soap_kernels::jet_activation: unhandled activation kind");
}

template <typename scalar_t>
void jet_activation_typed(const at::Tensor& z, const at::Tensor* grad, const at::Tensor* given_base, TowerKind kind,
                          const TowerPolynomials& polys, const std::vector<Term>& program, at::Tensor& out) {
  const int64_t elements = z.size(1) * z.size(2);  // per slot; blocks split it, whatever F is
  const std::array<at::Tensor, 2> bases = base_functions<scalar_t>(z.select(0, 0), kind, given_base);
  const JetBlocks<scalar_t> blocks{kind,
                                   &polys,
                                   &program,
                                   z.data_ptr<scalar_t>(),
                                   grad ? grad->data_ptr<scalar_t>() : nullptr,
                                   bases[0].defined() ? bases[0].data_ptr<scalar_t>() : nullptr,
                                   bases[1].defined() ? bases[1].data_ptr<scalar_t>() : nullptr,
                                   out.data_ptr<scalar_t>(),
                                   elements,
                                   z.stride(0),
                                   grad ? grad->stride(0) : 0};
  const int64_t num_blocks = (elements + kJetBlockElements - 1) / kJetBlockElements;
  at::parallel_for(0, num_blocks, 1, [&](int64_t first, int64_t last) { run_activation_blocks(blocks, first, last); });
}

}  // namespace

at::Tensor jet_activation_cpu(const at::Tensor& z, const std::optional<at::Tensor>& grad,
                              const std::optional<at::Tensor>& base, std::string_view activation,
                              c10::ArrayRef<double> tower_coefs, int64_t tower_orders, c10::IntArrayRef terms,
                              c10::ArrayRef<double> coefs) {
  TORCH_CHECK(z.dim() == 3 && slots_are_contiguous(z), "soap_kernels::jet_activation: z must be a [K, N, F] "
              "stack with contiguous slots, got shape ", z.sizes(), " strides ", z.strides());
  TORCH_CHECK(z.scalar_type() == at::kFloat || z.scalar_type() == at::kDouble,
              "soap_kernels::jet_activation: z must be float32 or float64, got ", z.scalar_type());
  if (grad) {
    TORCH_CHECK(grad->sizes() == z.sizes() && grad->scalar_type() == z.scalar_type() && slots_are_contiguous(*grad) &&
                    grad->device() == z.device(),
                "soap_kernels::jet_activation: grad (", grad->sizes(), " ", grad->scalar_type(),
                ") must have contiguous slots and match z's shape ", z.sizes(), " and dtype ", z.scalar_type());
  }
  TORCH_CHECK(tower_orders >= 1 && static_cast<int64_t>(tower_coefs.size()) % tower_orders == 0,
              "soap_kernels::jet_activation: tower_coefs (", tower_coefs.size(), " numbers) must be tower_orders = ",
              tower_orders, " rows of polynomial coefficients");
  const TowerKind kind = tower_kind(activation);
  if (base) {
    TORCH_CHECK(kind == TowerKind::kTanh || kind == TowerKind::kSigmoid,
                "soap_kernels::jet_activation: a precomputed base is tanh(z_0) or sigmoid(z_0); ", activation,
                " takes none");
    TORCH_CHECK(base->dim() == 2 && base->size(0) == z.size(1) && base->size(1) == z.size(2) &&
                    base->scalar_type() == z.scalar_type() && base->is_contiguous() && base->device() == z.device(),
                "soap_kernels::jet_activation: base must be a contiguous [N, F] tensor like z[0] (", z.sizes(), " ",
                z.scalar_type(), "), got ", base->sizes(), " ", base->scalar_type());
  }
  TORCH_CHECK(kind == TowerKind::kSin || kind == TowerKind::kCos || !tower_coefs.empty(),
              "soap_kernels::jet_activation: ", activation, " needs polynomial tower coefficients");
  const std::vector<Term> program = read_terms(terms, coefs, z.size(0), tower_orders - 1, grad.has_value());
  const TowerPolynomials polys(tower_coefs, tower_orders);
  at::Tensor out = cpu_cached_empty(z.sizes(), z.scalar_type());
  std::vector<int64_t> written_slots;
  for (const Term& term : program) written_slots.push_back(term.out_slot);
  zero_unwritten_slots(out, written_slots);
  if (z.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "jet_activation_cpu", [&] {
    jet_activation_typed<scalar_t>(z, grad ? &*grad : nullptr, base ? &*base : nullptr, kind, polys, program, out);
  });
  return out;
}

TORCH_LIBRARY_IMPL(soap_kernels, CPU, m) { m.impl("jet_activation", &jet_activation_cpu); }

}  // namespace soap_kernels
