// tanh of float32, written so a block loop of it vectorises (no calls, no branches): ATen's tanh (SLEEF's
// 1-ulp version) costs about 4x a sigmoid on the CPUs measured, and the forward of a tanh jet evaluates it once
// per element of the value slot. Error at most 2.37 ulp over every float32 (the x86-64-v3 clone, with FMAs; 2.32
// without); tests/test_jet_native.py checks every 997th float, both signs, within 2.5.
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>

#include "soap_kernels/jet_terms.h"

namespace soap_kernels {

// tanh(x) = sign(x) t(|x|), where for |x| < 0.4 t is the odd Taylor series to x^15 (relative remainder below
// 1e-9 there) and otherwise t = (1 - e) / (1 + e) with e = exp(-2 |x|) = 2^n exp(r), |r| <= ln2 / 2 (exp(r) by
// its Taylor series to r^7, 5e-9). |x| is clamped at 9 (tanh(9) is within 0.51 ulp of tanh beyond it, which
// rounds to 1 from 9.011); a NaN stays NaN. Every select is on integer bits, so no floating-point comparison
// (which may trap) keeps the loop from vectorising.
SOAP_KERNELS_INLINE float tanh_float(float x) {
  constexpr int32_t kSign = INT32_MIN, kNine = 0x41100000, kInfinity = 0x7F800000, kSeriesBelow = 0x3ECCCCCD;
  const int32_t bits = std::bit_cast<int32_t>(x);
  const int32_t magnitude = bits & ~kSign;
  const float a = std::bit_cast<float>(magnitude);
  const float s = a * a;
  float p = -929569.0f / 638512875.0f;
  p = p * s + 21844.0f / 6081075.0f;
  p = p * s - 1382.0f / 155925.0f;
  p = p * s + 62.0f / 2835.0f;
  p = p * s - 17.0f / 315.0f;
  p = p * s + 2.0f / 15.0f;
  p = p * s - 1.0f / 3.0f;
  const float series = a + a * s * p;
  const int32_t is_nan = -static_cast<int32_t>(magnitude > kInfinity);  // all ones or zero
  const float y = -2.0f * std::bit_cast<float>(std::min(magnitude, kNine) | (magnitude & is_nan));
  // round y / ln2 to the nearest integer n by adding 1.5 * 2^23: the sum's low mantissa bits are then n
  const float shifted = y * 1.44269504088896341f + 12582912.0f;
  const float n = shifted - 12582912.0f;
  const float r = (y - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;  // ln2 in two parts
  float q = 1.0f / 5040.0f;
  q = q * r + 1.0f / 720.0f;
  q = q * r + 1.0f / 120.0f;
  q = q * r + 1.0f / 24.0f;
  q = q * r + 1.0f / 6.0f;
  q = q * r + 0.5f;
  q = q * r + 1.0f;
  q = q * r + 1.0f;
  const float e = q * std::bit_cast<float>((std::bit_cast<int32_t>(shifted) - 0x4B400000 + 127) << 23);
  const float ratio = (1.0f - e) / (1.0f + e);
  const int32_t use_series = -static_cast<int32_t>(magnitude < kSeriesBelow);
  const int32_t t = (std::bit_cast<int32_t>(series) & use_series) | (std::bit_cast<int32_t>(ratio) & ~use_series);
  return std::bit_cast<float>(t | (bits & kSign));
}

SOAP_KERNELS_INLINE void tanh_float_block(const float* __restrict in, float* __restrict out, int64_t count) {
  for (int64_t e = 0; e < count; ++e) out[e] = tanh_float(in[e]);
}

SOAP_KERNELS_INLINE void tanh_float_in_place(float* values, int64_t count) {
  for (int64_t e = 0; e < count; ++e) values[e] = tanh_float(values[e]);
}

}  // namespace soap_kernels
