// Vectorised exp / sigmoid / SiLU slope of the row-wise MLPs (row_mlp.cpp) and the exact
// filters' forward-mode epilogue (exact_filters.cpp).
#pragma once
#include "common.h"

namespace tnf {
namespace cpu {
namespace {

// exp(x) on one register of floats in straight-line arithmetic (std::exp is a libm call per
// lane; an `omp simd` loop over a scalar form of this stayed scalar): Cody-Waite reduction by
// ln2 and Cephes' degree-6 polynomial, ~1 ulp on [-87.3, 88.7] (clamped outside; exp(-87.3) =
// 1.2e-38). Doubles use std::exp (the float64 path is the accuracy reference, not the fast path).
inline Vec<float> exp_arith(Vec<float> x) {
  typedef int32_t VecI __attribute__((vector_size(kVecBytes)));
  x = x < -87.3365f ? Vec<float>{} - 87.3365f : x;
  x = x > 88.7228f ? Vec<float>{} + 88.7228f : x;
  const Vec<float> t = x * 1.44269504088896341f + 0.5f;
  Vec<float> n = __builtin_convertvector(__builtin_convertvector(t, VecI), Vec<float>);
  n = n > t ? n - 1.0f : n;  // truncation -> floor
  Vec<float> r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  Vec<float> p = Vec<float>{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const VecI bits = (__builtin_convertvector(n, VecI) + 127) << 23;
  Vec<float> scale;  // 2^n: the bits reinterpreted (memcpy: no strict-aliasing violation)
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}
inline float exp_arith(float x) { return exp_arith(Vec<float>{} + x)[0]; }  // row tails
inline double exp_arith(double x) { return std::exp(x); }
inline Vec<double> exp_arith(Vec<double> x) {
  for (int c = 0; c < kLanes<double>; ++c) x[c] = std::exp(x[c]);
  return x;
}

// sigma(x) and d(x sigma(x))/dx = sigma (1 + x (1 - sigma)) on a register of lanes (V = Vec<T>)
// or one scalar (V = T, row tails)
template <typename V>
inline V sigmoid_arith(V x) {
  return 1 / (1 + exp_arith(V{} - x));
}
template <typename V>
inline V silu_slope(V x, V sg) {
  return sg * (1 + x * (1 - sg));
}

}  // namespace
}  // namespace cpu
}  // namespace tnf
