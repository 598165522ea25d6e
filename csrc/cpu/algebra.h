// Per-(atom, channel) 3x3 algebra of the interaction layer on SIMD chunks (Chunk<T>, common.h):
// basis <-> full 3x3, products, and the normalisation with its backward.
#pragma once
#include "common.h"

namespace tnf {
namespace cpu {
namespace {

// 9 coefficients <-> full 3x3 (row-major m[3 r + c]); the map is orthogonal, so from_full is
// also the adjoint of to_full (gradients transform the same way).
template <typename T>
TNF_INLINE void to_full(const Chunk<T>& x, Chunk<T>& m) {
  const T a = T(0.57735026918962576451), b = T(0.70710678118654752440),
          d = T(0.40824829046386301637);
  m[0] = a * x[0] + b * x[7] + d * x[8];
  m[4] = a * x[0] - b * x[7] + d * x[8];
  m[8] = a * x[0] - T(2) * d * x[8];
  m[1] = b * (x[4] - x[3]);
  m[3] = b * (x[4] + x[3]);
  m[2] = b * (x[5] + x[2]);
  m[6] = b * (x[5] - x[2]);
  m[5] = b * (x[6] - x[1]);
  m[7] = b * (x[6] + x[1]);
}

template <typename T>
TNF_INLINE void from_full(const Chunk<T>& m, Chunk<T>& x) {
  const T a = T(0.57735026918962576451), b = T(0.70710678118654752440),
          d = T(0.40824829046386301637);
  x[0] = a * (m[0] + m[4] + m[8]);
  x[1] = b * (m[7] - m[5]);
  x[2] = b * (m[2] - m[6]);
  x[3] = b * (m[3] - m[1]);
  x[4] = b * (m[1] + m[3]);
  x[5] = b * (m[2] + m[6]);
  x[6] = b * (m[5] + m[7]);
  x[7] = b * (m[0] - m[4]);
  x[8] = d * (m[0] + m[4] - T(2) * m[8]);
}

// c = op(a) op(b) per channel (ta: a^T, tb: b^T), full 3x3
template <typename T, bool ta, bool tb>
TNF_INLINE void mm3(const Chunk<T>& a, const Chunk<T>& b, Chunk<T>& c) {
  for (int r = 0; r < 3; ++r)
    for (int q = 0; q < 3; ++q) {
      const int a0 = ta ? r : r * 3, a1 = ta ? 3 + r : r * 3 + 1, a2 = ta ? 6 + r : r * 3 + 2;
      const int b0 = tb ? q * 3 : q, b1 = tb ? q * 3 + 1 : 3 + q, b2 = tb ? q * 3 + 2 : 6 + q;
      c[r * 3 + q] = a[a0] * b[b0] + a[a1] * b[b1] + a[a2] * b[b2];
    }
}

// B (before normalisation) from Y and M in full form: O(3): q (MY + YM); SO(3): 2 YM.
template <typename T>
TNF_INLINE void layer_product(const Chunk<T>& yf, const Chunk<T>& mf, T qf, bool o3, Chunk<T>& bf) {
  mm3<T, false, false>(yf, mf, bf);
  if (o3) {
    Chunk<T> t;
    mm3<T, false, false>(mf, yf, t);
    for (int k = 0; k < 9; ++k) bf[k] = qf * (bf[k] + t[k]);
  } else {
    for (int k = 0; k < 9; ++k) bf[k] = T(2) * bf[k];
  }
}

// c = G A^T + A^T G per channel, full 3x3: the backward of A -> A A (pass G, A = dX) and of
// B = q (M Y + Y M) with respect to M (A = Y) and to Y (A = M).
template <typename T>
TNF_INLINE void anticommute_transposed(const Chunk<T>& g, const Chunk<T>& a, Chunk<T>& c) {
  Chunk<T> t;
  mm3<T, false, true>(g, a, c);
  mm3<T, true, false>(a, g, t);
  for (int k = 0; k < 9; ++k) c[k] += t[k];
}

// v / (|v|^2 + 1) in place
template <typename T>
TNF_INLINE void normalise(Chunk<T>& v) {
  Vec<T> r = Vec<T>{} + T(1);
  for (int k = 0; k < 9; ++k) r += v[k] * v[k];
  r = T(1) / r;
  for (int k = 0; k < 9; ++k) v[k] *= r;
}

// Backward of v / (|v|^2 + 1): g <- g r - 2 r^2 <g, v> v (in place on g).
template <typename T>
TNF_INLINE void normalise_bwd(const Chunk<T>& v, Chunk<T>& g) {
  Vec<T> r = Vec<T>{} + T(1), dot = Vec<T>{};
  for (int k = 0; k < 9; ++k) {
    r += v[k] * v[k];
    dot += g[k] * v[k];
  }
  r = T(1) / r;
  dot *= T(2) * r * r;
  for (int k = 0; k < 9; ++k) g[k] = g[k] * r - dot * v[k];
}

}  // namespace
}  // namespace cpu
}  // namespace tnf
