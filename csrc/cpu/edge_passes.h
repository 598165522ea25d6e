// Edge passes of the "cpu" backend: per-edge filter sources and the message pass over the
// receiver CSR (forward and backward), used inside the layer ops' parallel region
// (layer_ops.cpp); the embedding's edge passes are in edge_passes.cpp.
//
// Each thread owns a contiguous slice of receiver rows of the CSR (edges sorted by receiver), so
// the passes need no atomics: per edge the filter (3F) is formed in a thread-local buffer and the
// 9F message is accumulated into the receiver's row, never stored per edge. The dE/dY backward
// uses the graph's symmetry (edge (i, j, s) has the reverse (j, i, -s) with the same distance,
// hence the same filter): dE/dY_i = sum_j f_ij (*) dE/dM_j is again a receiver-CSR gather, and
// a pair with both ends in one thread's slice is evaluated once for both directions.
//
// Filter source per edge e: `tab` [U, 1, 3F] rows picked by idx[e] (exact mode: one row per
// distinct distance, derivative rows in `dtab`), or a quintic spline `tab` [n, 6, 3F] (tabulated
// mode: interval idx[e], local coordinate s[e], derivative = dp/ds * inv_h); idx[e] < 0 -> 0.
#pragma once
#include "common.h"

namespace tnf {
namespace cpu {
namespace {

template <typename T>
struct FilterSource {
  const T* tab;
  const T* dtab;  // exact mode derivative rows (may be null)
  const int64_t* idx;
  const T* s;     // spline local coordinate (null in exact mode)
  int64_t width;  // 3F
  bool spline;
  T inv_h;

  // f[0:3F] (and fp when non-null) for edge e.
  inline void load(int64_t e, T* f, T* fp) const {
    const int64_t r = idx[e];
    if (r < 0) {
      for (int64_t c = 0; c < width; ++c) f[c] = T(0);
      if (fp)
        for (int64_t c = 0; c < width; ++c) fp[c] = T(0);
      return;
    }
    if (!spline) {
      const T* row = tab + r * width;
      for (int64_t c = 0; c < width; ++c) f[c] = row[c];
      if (fp) {
        const T* drow = dtab + r * width;
        for (int64_t c = 0; c < width; ++c) fp[c] = drow[c];
      }
      return;
    }
    const T t = s[e];
    const T* c0 = tab + r * 6 * width;
    const T* c1 = c0 + width;
    const T* c2 = c1 + width;
    const T* c3 = c2 + width;
    const T* c4 = c3 + width;
    const T* c5 = c4 + width;
    if (fp) {  // value and derivative in one pass over the coefficients
      // p'(t) / h = sum_k k c_k t^(k-1) / h with the per-edge factors k t^(k-1) / h hoisted:
      // 5 independent multiply-adds per channel instead of a second Horner chain
      const T d1 = inv_h, d2 = T(2) * t * inv_h, d3 = T(3) * t * t * inv_h;
      const T d4 = T(4) * t * t * t * inv_h, d5 = T(5) * t * t * t * t * inv_h;
#pragma omp simd
      for (int64_t c = 0; c < width; ++c) {
        f[c] = ((((c5[c] * t + c4[c]) * t + c3[c]) * t + c2[c]) * t + c1[c]) * t + c0[c];
        fp[c] = c1[c] * d1 + c2[c] * d2 + c3[c] * d3 + c4[c] * d4 + c5[c] * d5;
      }
      return;
    }
#pragma omp simd
    for (int64_t c = 0; c < width; ++c)
      f[c] = ((((c5[c] * t + c4[c]) * t + c3[c]) * t + c2[c]) * t + c1[c]) * t + c0[c];
  }
};

template <typename T>
FilterSource<T> make_source(const at::Tensor& tab, const c10::optional<at::Tensor>& dtab,
                            const at::Tensor& idx, const c10::optional<at::Tensor>& s,
                            double inv_h) {
  FilterSource<T> src;
  src.tab = tab.data_ptr<T>();
  src.dtab = dtab.has_value() ? dtab->data_ptr<T>() : nullptr;
  src.idx = idx.data_ptr<int64_t>();
  src.spline = tab.size(1) == 6;
  src.s = s.has_value() ? s->data_ptr<T>() : nullptr;
  src.width = tab.size(2);
  src.inv_h = static_cast<T>(inv_h);
  return src;
}

// The CSR and filter-source inputs every edge pass reads.
inline void check_csr(const at::Tensor& row_ptr, const at::Tensor& col, const at::Tensor& tab,
                      const at::Tensor& idx) {
  TORCH_CHECK(row_ptr.dtype() == at::kLong && col.dtype() == at::kLong &&
                  idx.dtype() == at::kLong,
              "row_ptr, col, idx must be int64");
  TORCH_CHECK(row_ptr.is_contiguous() && col.is_contiguous() && idx.is_contiguous() &&
                  tab.is_contiguous(),
              "inputs must be contiguous");
  TORCH_CHECK(tab.dim() == 3 && (tab.size(1) == 1 || tab.size(1) == 6), "tab is [U, 1|6, 3F]");
}

// acc[k, c] += f[blk(k), c] * x[k, c] for one atom's rows (x, acc [9, F]; f [3F], I | A | S)
template <typename T>
inline void add_filtered(const T* f, const T* x, T* acc, int64_t nf) {
  for (int k = 0; k < 9; ++k) {
    const T* fk = f + kBlock[k] * nf;
    const T* xk = x + k * nf;
    T* ak = acc + k * nf;
#pragma omp simd
    for (int64_t c = 0; c < nf; ++c) ak[c] += fk[c] * xk[c];
  }
}

// add_filtered for both edges of a pair (same filter) in one pass over f:
// acc1 += f (*) x1, acc2 += f (*) x2
template <typename T>
inline void add_filtered2(const T* f, const T* x1, T* acc1, const T* x2, T* acc2, int64_t nf) {
  for (int k = 0; k < 9; ++k) {
    const T* fk = f + kBlock[k] * nf;
    const T *x1k = x1 + k * nf, *x2k = x2 + k * nf;
    T *a1k = acc1 + k * nf, *a2k = acc2 + k * nf;
#pragma omp simd
    for (int64_t c = 0; c < nf; ++c) {
      const T fc = fk[c];
      a1k[c] += fc * x1k[c];
      a2k[c] += fc * x2k[c];
    }
  }
}

// sum_{k,c} f[blk(k), c] a[k, c] b[k, c] in one pass over the channels (one horizontal sum; per
// component, the 9 sums' lane reductions were ~7% of the message backward's samples)
template <typename T>
inline T blocked_dot(const T* f, const T* a, const T* b, int64_t nf) {
  T sum = T(0);
#pragma omp simd reduction(+ : sum)
  for (int64_t c = 0; c < nf; ++c) {
    T sa = T(0), ss = T(0);
    for (int k = 1; k < 4; ++k) sa += a[k * nf + c] * b[k * nf + c];
    for (int k = 4; k < 9; ++k) ss += a[k * nf + c] * b[k * nf + c];
    sum += f[c] * a[c] * b[c] + f[nf + c] * sa + f[2 * nf + c] * ss;
  }
  return sum;
}

// blocked_dot(f, a1, b1) + blocked_dot(f, a2, b2) in one pass over f (both edges of a pair)
template <typename T>
inline T blocked_dot2(const T* f, const T* a1, const T* b1, const T* a2, const T* b2, int64_t nf) {
  T sum = T(0);
#pragma omp simd reduction(+ : sum)
  for (int64_t c = 0; c < nf; ++c) {
    T sa = T(0), ss = T(0);
    for (int k = 1; k < 4; ++k) {
      const int64_t o = k * nf + c;
      sa += a1[o] * b1[o] + a2[o] * b2[o];
    }
    for (int k = 4; k < 9; ++k) {
      const int64_t o = k * nf + c;
      ss += a1[o] * b1[o] + a2[o] * b2[o];
    }
    sum += f[c] * (a1[c] * b1[c] + a2[c] * b2[c]) + f[nf + c] * sa + f[2 * nf + c] * ss;
  }
  return sum;
}

// M_i[k, c] = sum_{e in row i} f_e[blk(k), c] * y[col_e, k, c] for the receivers i in [lo, hi);
// f: 3F scratch. A pair of edges (i, j), (j, i) with both ends in [lo, hi) is evaluated once, at
// the edge with j > i, adding f (*) y_i into M_j too (the reverse edge has the same filter; see
// message_bwd_rows), so the rows [lo, hi) are zeroed first.
template <typename T>
void message_fwd_rows(const FilterSource<T>& src, const int64_t* rp, const int64_t* cj,
                      const T* yp, T* op, int64_t nf, int64_t lo, int64_t hi, T* f) {
  std::fill(op + lo * 9 * nf, op + hi * 9 * nf, T(0));
  for (int64_t i = lo; i < hi; ++i) {
    T* acc = op + i * 9 * nf;
    const T* yi = yp + i * 9 * nf;
    for (int64_t e = rp[i]; e < rp[i + 1]; ++e) {
      const int64_t j = cj[e];
      const bool both = j != i && j >= lo && j < hi;
      if (both && j < i) continue;  // added with the reverse edge, in row j
      src.load(e, f, nullptr);
      if (both)
        add_filtered2(f, yp + j * 9 * nf, acc, yi, op + j * 9 * nf, nf);
      else
        add_filtered(f, yp + j * 9 * nf, acc, nf);
    }
  }
}

// Backward of message_fwd_rows given gm = dE/dM [N, 9, F], for the receivers i in [lo, hi):
//   gd[e] = sum_{k,c} f'_e[blk(k), c] gm[i, k, c] y[j, k, c]   (dE/dd per edge of row i)
//   gy[i] += sum_{e in row i} f_e (*) gm[col_e]                 (symmetric graph, see top)
// gyp: [N, 9, F] to ADD dE/dY into. f, fp: 3F scratch each.
// An edge whose sender j is also in [lo, hi) (j != i) is handled once for both directions:
// its reverse edge (j, i, -s) has the same filter, so the edge with j > i gets gd of both
// (dE/dd_e + dE/dd_rev, which the chain rule to positions and cell treats exactly like the two
// separate values: edge_vec_rev = -edge_vec_e) and adds f (*) gm_i into gy_j; the reverse edge
// gets gd = 0. One spline evaluation and one coefficient read per such pair instead of two
// (64 g2 molecules: 99% of the pairs lie in one thread's slice).
template <typename T>
void message_bwd_rows(const FilterSource<T>& src, const int64_t* rp, const int64_t* cj,
                      const T* yp, const T* gp, T* gdp, T* gyp, int64_t nf, int64_t lo,
                      int64_t hi, T* f, T* fp) {
  for (int64_t i = lo; i < hi; ++i) {
    const T* gi = gp + i * 9 * nf;
    const T* yi = yp + i * 9 * nf;
    T* acc = gyp + i * 9 * nf;
    for (int64_t e = rp[i]; e < rp[i + 1]; ++e) {
      const int64_t j = cj[e];
      const bool both = j != i && j >= lo && j < hi;
      if (both && j < i) {  // done with the reverse edge, in row j
        gdp[e] = T(0);
        continue;
      }
      src.load(e, f, fp);
      const T* yj = yp + j * 9 * nf;
      const T* gj = gp + j * 9 * nf;
      if (both) {
        gdp[e] = blocked_dot2(fp, gi, yj, gj, yi, nf);
        add_filtered2(f, gj, acc, gi, gyp + j * 9 * nf, nf);
      } else {
        gdp[e] = blocked_dot(fp, gi, yj, nf);
        add_filtered(f, gj, acc, nf);
      }
    }
  }
}

}  // namespace
}  // namespace cpu
}  // namespace tnf
