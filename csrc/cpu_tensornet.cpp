// TensorNet edge passes for the "cpu" backend (tensornet_fast/cpu_backend.py is the spec and the
// torch fallback of every function here). Tensors per atom and channel are 9 coefficients in an
// orthonormal basis: 0 = I, 1..3 = A, 4..8 = S; filters are 3F vectors blocked I | A | S.
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
// setup.py builds with -ffp-contract=off so the radius graph rounds distances exactly like the
// brute-force reference. Nothing here needs bitwise agreement (the model is compared with
// float64 within tolerances), and fused multiply-adds cut the layer kernels' time by ~15%
// (measured on 64 g2 molecules, F=128: layer forward 3.98 -> 3.35 ms, backward 5.6 -> 4.8 ms).
#pragma GCC optimize("fp-contract=fast")
#include <ATen/Parallel.h>
#include <c10/util/ParallelGuard.h>
#include <dlfcn.h>
#include <omp.h>
#include <torch/library.h>
#include <torch/torch.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>  // gemm_packed's tiles
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

// float / double dispatch without a macro around the body (OpenMP pragmas cannot sit inside
// macro arguments, which AT_DISPATCH_FLOATING_TYPES would need).
template <typename F>
void TNF_DISPATCH(const at::Tensor& t, F&& body) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble,
              "cpu backend kernels support float32 and float64, got ", t.scalar_type());
  if (t.scalar_type() == at::kFloat)
    body(float(0));
  else
    body(double(0));
}

constexpr int kBlock[9] = {0, 1, 1, 1, 2, 2, 2, 2, 2};

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

void check(const at::Tensor& row_ptr, const at::Tensor& col, const at::Tensor& tab,
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

// Per edge the 9 geometric factors multiplying f^I, f^A, f^S: (sqrt3, sqrt2 rhat, S-basis
// coefficients of rhat rhat^T - Id/3) (cpu_backend._embedding_geometry). Self-loops have
// rhat = 0: only the I factor is non-zero.
template <typename T>
inline void edge_geometry(const T* r, T* g) {
  const T s2 = T(1.41421356237309504880), s3 = T(1.73205080756887729353),
          s6 = T(2.44948974278317809820);
  const T x = r[0], y = r[1], z = r[2];
  g[0] = s3;
  g[1] = s2 * x;
  g[2] = s2 * y;
  g[3] = s2 * z;
  g[4] = s2 * x * y;
  g[5] = s2 * x * z;
  g[6] = s2 * y * z;
  g[7] = (x * x - y * y) / s2;
  g[8] = (x * x + y * y - T(2) * z * z) / s6;
}

// acc[k, c] += (f_b[c] Z[c]) g[k] for the M components k of one block (f_b: the block's filter
// row; acc, g from the block's first component): one pass over f_b and Z per block instead of
// scaling f by Z in place and a pass per component (cpu_embed_fwd 0.84-0.90x, same bits).
template <typename T, int M>
inline void add_geometry_block(const T* fb, const T* z, const T* g, T* acc, int64_t nf) {
#pragma omp simd
  for (int64_t c = 0; c < nf; ++c) {
    const T fz = fb[c] * z[c];
    for (int k = 0; k < M; ++k) acc[k * nf + c] += fz * g[k];
  }
}

// Embedding: R_i[k, c] = sum_e f_e[blk(k), c] * Z[pair_e, c] * geo_e[k] (edge_geometry of
// rhat [E, 3]).
at::Tensor cpu_embed_fwd(const at::Tensor& row_ptr, const at::Tensor& rhat, const at::Tensor& ztab,
                         const at::Tensor& pair, const at::Tensor& tab, const at::Tensor& idx,
                         const c10::optional<at::Tensor>& s, double inv_h) {
  check(row_ptr, pair, tab, idx);
  TORCH_CHECK(rhat.is_contiguous() && ztab.is_contiguous(), "rhat, ztab must be contiguous");
  const int64_t n = row_ptr.size(0) - 1, nf = ztab.size(1);
  auto out = at::empty({n, 9, nf}, ztab.options());
  TNF_DISPATCH(ztab, [&](auto zero) {
    using T = decltype(zero);
    const auto src = make_source<T>(tab, c10::nullopt, idx, s, inv_h);
    const int64_t* rp = row_ptr.data_ptr<int64_t>();
    const int64_t* pp = pair.data_ptr<int64_t>();
    const T* rh = rhat.data_ptr<T>();
    const T* zp = ztab.data_ptr<T>();
    T* op = out.data_ptr<T>();
    at::parallel_for(0, n, 8, [&](int64_t lo, int64_t hi) {
      std::vector<T> f(3 * nf);
      T g[9];
      for (int64_t i = lo; i < hi; ++i) {
        T* acc = op + i * 9 * nf;
        for (int64_t x = 0; x < 9 * nf; ++x) acc[x] = T(0);
        for (int64_t e = rp[i]; e < rp[i + 1]; ++e) {
          src.load(e, f.data(), nullptr);
          const T* z = zp + pp[e] * nf;
          edge_geometry(rh + e * 3, g);
          add_geometry_block<T, 1>(f.data(), z, g, acc, nf);
          // rhat = 0 only on self-loops (the A factors sqrt2 rhat vanish, and so do the S ones):
          // the I block only
          if (g[1] != T(0) || g[2] != T(0) || g[3] != T(0)) {
            add_geometry_block<T, 3>(f.data() + nf, z, g + 1, acc + nf, nf);
            add_geometry_block<T, 5>(f.data() + 2 * nf, z, g + 4, acc + 4 * nf, nf);
          }
        }
      }
    });
  });
  return out;
}

// Backward of cpu_embed_fwd given gr = dE/dR [N, 9, F] through the combine: dE/d(edge_vec)
// [E, 3], from
//   gd[e]      = sum_k geo[e, k] sum_c f'_e[blk(k), c] Z[c] gr[i, k, c]      (dE/dd)
//   ggeo[e, k] = sum_c f_e[blk(k), c] Z[c] gr[i, k, c]
//   grhat      = d(geo)/d(rhat)^T ggeo, and with rhat = v / d:
//   dE/dv      = gd rhat + (grhat - (grhat . rhat) rhat) / d      (0 on self-loops, d = 0)
// with gr + 2 R gsq in place of gr, raw = R [N, 9, F] and gsq = dE/d(sum_k R_k^2) [N, F] (the
// squared norm feeding the embedding MLP; added per row here instead of an aten addcmul over
// [N, 9, F], ~0.3 ms of the 64-g2 call).
at::Tensor cpu_embed_bwd(const at::Tensor& row_ptr, const at::Tensor& rhat,
                                      const at::Tensor& dist, const at::Tensor& ztab,
                                      const at::Tensor& pair, const at::Tensor& gr,
                                      const at::Tensor& tab, const c10::optional<at::Tensor>& dtab,
                                      const at::Tensor& idx, const c10::optional<at::Tensor>& s,
                                      double inv_h, const at::Tensor& raw, const at::Tensor& gsq) {
  check(row_ptr, pair, tab, idx);
  TORCH_CHECK(gr.is_contiguous() && rhat.is_contiguous() && dist.is_contiguous() &&
                  ztab.is_contiguous(),
              "gr, rhat, dist, ztab must be contiguous");
  TORCH_CHECK(tab.size(1) == 6 || dtab.has_value(), "exact mode needs dtab");
  const int64_t n = row_ptr.size(0) - 1, nf = ztab.size(1);
  TORCH_CHECK(raw.is_contiguous() && raw.sizes() == gr.sizes() && gsq.is_contiguous() &&
                  gsq.dim() == 2 && gsq.size(0) == n && gsq.size(1) == nf,
              "raw must be contiguous like gr, gsq contiguous [N, F]");
  const int64_t ne = pair.size(0);
  auto gv = at::empty({ne, 3}, gr.options());
  TNF_DISPATCH(gr, [&](auto zero) {
    using T = decltype(zero);
    const auto src = make_source<T>(tab, dtab, idx, s, inv_h);
    const int64_t* rp = row_ptr.data_ptr<int64_t>();
    const int64_t* pp = pair.data_ptr<int64_t>();
    const T* rh = rhat.data_ptr<T>();
    const T* dp = dist.data_ptr<T>();
    const T* zp = ztab.data_ptr<T>();
    const T* grp = gr.data_ptr<T>();
    const T* rawp = raw.data_ptr<T>();
    const T* gsqp = gsq.data_ptr<T>();
    T* gvp = gv.data_ptr<T>();
    const T s2 = T(1.41421356237309504880), s6 = T(2.44948974278317809820);
    at::parallel_for(0, n, 8, [&](int64_t lo, int64_t hi) {
      std::vector<T> f(3 * nf), fp(3 * nf), gbuf(9 * nf);
      T g[9], gg[9];
      for (int64_t i = lo; i < hi; ++i) {
        // dE/dR_k + 2 R_k dE/d(sum_k R_k^2): the embedding MLP's input is |R|^2
        const T* gr_i = grp + i * 9 * nf;
        const T* ri = rawp + i * 9 * nf;
        const T* qi = gsqp + i * nf;
        for (int k = 0; k < 9; ++k)
#pragma omp simd
          for (int64_t c = 0; c < nf; ++c)
            gbuf[k * nf + c] = gr_i[k * nf + c] + T(2) * ri[k * nf + c] * qi[c];
        const T* gi = gbuf.data();
        for (int64_t e = rp[i]; e < rp[i + 1]; ++e) {
          src.load(e, f.data(), fp.data());
          const T* z = zp + pp[e] * nf;
          const T* r = rh + e * 3;
          edge_geometry(r, g);
          T total = T(0);
          for (int k = 0; k < 9; ++k) {
            const T* fk = f.data() + kBlock[k] * nf;
            const T* fpk = fp.data() + kBlock[k] * nf;
            const T* gk = gi + k * nf;
            T sv = T(0), sd = T(0);
#pragma omp simd reduction(+ : sv, sd)
            for (int64_t c = 0; c < nf; ++c) {
              const T zg = z[c] * gk[c];
              sv += fk[c] * zg;
              sd += fpk[c] * zg;
            }
            gg[k] = sv;
            total += g[k] * sd;
          }
          const T d = dp[e];
          T* out = gvp + e * 3;
          if (d == T(0)) {  // self-loop: no direction, no gradient
            out[0] = out[1] = out[2] = T(0);
            continue;
          }
          const T x = r[0], y = r[1], zz = r[2];
          const T gx = s2 * (gg[1] + y * gg[4] + zz * gg[5] + x * gg[7]) + T(2) * x / s6 * gg[8];
          const T gy = s2 * (gg[2] + x * gg[4] + zz * gg[6] - y * gg[7]) + T(2) * y / s6 * gg[8];
          const T gz = s2 * (gg[3] + x * gg[5] + y * gg[6]) - T(4) * zz / s6 * gg[8];
          const T radial = gx * x + gy * y + gz * zz;
          out[0] = total * x + (gx - radial * x) / d;
          out[1] = total * y + (gy - radial * y) / d;
          out[2] = total * zz + (gz - radial * zz) / d;
        }
      }
    });
  });
  return gv;
}


// ============================================================================ node-level algebra
// Per atom and channel everything below is 9 coefficients (stride F in [N, 9, F]); channel
// linears are GEMMs (float32: gemm_packed below; float64: BLAS) on the component slices [N, F]
// with leading dimension 9F, so nothing is copied or permuted. Inference only: no weight
// gradients.

// Fortran BLAS gemm (column-major, LP64) as exported by libtorch_cpu's MKL/OpenBLAS. It is looked
// up at run time in the library that defines at::mm, so a torch build without it still imports
// this extension (gemm_slice then falls back to at::mm on strided views).
template <typename T>
using gemm_fn = void (*)(const char*, const char*, const int*, const int*, const int*, const T*,
                         const T*, const int*, const T*, const int*, const T*, T*, const int*);

// A symbol of the library that defines at::mm (libtorch_cpu, where MKL is linked), or null.
inline void* torch_blas_symbol(const char* name) {
  Dl_info info;
  if (!dladdr(reinterpret_cast<void*>(&at::_ops::mm::call), &info) || !info.dli_fname)
    return nullptr;
  void* lib = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
  return lib ? dlsym(lib, name) : nullptr;
}

template <typename T>
gemm_fn<T> blas_gemm() {
  static gemm_fn<T> fn = reinterpret_cast<gemm_fn<T>>(
      torch_blas_symbol(std::is_same<T, float>::value ? "sgemm_" : "dgemm_"));
  return fn;
}

#if defined(__AVX2__) && defined(__FMA__)
// Hand-written float32 GEMM for the channel linears and the per-atom MLPs: out [n, N] =
// a [n, K] B (+ bias), B packed in 16-column panels ([N/16, K, 16], cpu_gemm_pack, built once
// per model), each 6x16 tile of out held in 12 AVX2 registers over the whole K loop and stored
// once. MKL on the channel-linear shapes (226 rows per thread, F=128, leading dimension 9F)
// reached ~60-70 GFLOP/s of this core's 93 (FMA peak; standalone loop), ~10% of its time
// packing the weight and zeroing the output (perf: sgemm_scopy_*, sgemm_mscale); this reached
// 75-85 in the same runs, with bitwise the same channel-linear results (k-ordered FMA sums).
// Whole energy+forces call on 64 g2 molecules: 0.92x (interleaved A/B against MKL).
constexpr bool kPackedGemm = true;
constexpr int64_t kPanel = 16;  // output columns per panel: two AVX2 / one AVX-512 register
constexpr int kTileRows = 6;    // 6 x 2 accumulators + 2 panel rows + 1 broadcast = 15 of 16

// Row pointers a0..a5 of a tile of `rows` <= 6 rows of a (leading dimension lda); rows past
// `rows` alias row 0 (read, never stored).
#define TNF_TILE_ROW_POINTERS                         \
  const float* a0 = a;                                \
  const float* a1 = rows > 1 ? a + lda : a;           \
  const float* a2 = rows > 2 ? a + 2 * lda : a;       \
  const float* a3 = rows > 3 ? a + 3 * lda : a;       \
  const float* a4 = rows > 4 ? a + 4 * lda : a;       \
  const float* a5 = rows > 5 ? a + 5 * lda : a;

// One step k of row r of a tile: c_r += a_r[k] * (b0 | b1).
#define TNF_TILE_ROW(r)                                  \
  {                                                      \
    const __m256 av = _mm256_broadcast_ss(a##r + k);     \
    c##r##0 = _mm256_fmadd_ps(av, b0, c##r##0);          \
    c##r##1 = _mm256_fmadd_ps(av, b1, c##r##1);          \
  }

// c[0:rows, 0:16] = a[0:rows, 0:nk] panel[0:nk, 0:16] + bias[0:16] (bias may be null), rows
// <= 6. The 12 accumulators are named variables, not an array: GCC 12 kept an array's copy on
// the stack and stored all 12 registers every k step when the tile was not inlined (in the
// extension: 2x slower than MKL). Rows past `rows` re-read row 0 and are not stored.
inline void gemm_tile(const float* a, int64_t lda, int rows, const float* panel,
                      const float* bias, float* c, int64_t ldc, int64_t nk) {
  TNF_TILE_ROW_POINTERS
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  for (int64_t k = 0; k < nk; ++k) {
    const __m256 b0 = _mm256_loadu_ps(panel + k * kPanel);
    const __m256 b1 = _mm256_loadu_ps(panel + k * kPanel + 8);
    TNF_TILE_ROW(0) TNF_TILE_ROW(1) TNF_TILE_ROW(2) TNF_TILE_ROW(3) TNF_TILE_ROW(4) TNF_TILE_ROW(5)
  }
  const __m256 z0 = bias ? _mm256_loadu_ps(bias) : _mm256_setzero_ps();
  const __m256 z1 = bias ? _mm256_loadu_ps(bias + 8) : _mm256_setzero_ps();
  const __m256 out[kTileRows][2] = {{c00, c01}, {c10, c11}, {c20, c21},
                                    {c30, c31}, {c40, c41}, {c50, c51}};
  for (int r = 0; r < rows; ++r) {
    _mm256_storeu_ps(c + r * ldc, _mm256_add_ps(out[r][0], z0));
    _mm256_storeu_ps(c + r * ldc + 8, _mm256_add_ps(out[r][1], z1));
  }
}
#undef TNF_TILE_ROW

#if defined(__AVX512F__)
// AVX-512 (32 registers of 16 floats): a tile is 6 rows x 4 panels (64 columns), 24
// accumulators + 4 panel rows + 1 broadcast = 29 of 32 registers, 24 FMAs per 10 loads. The
// same k-ordered FMA chain per output element as the AVX2 tile, so bitwise the same results.
// Both layer ops on 64 g2 molecules (F=128, same-process A/B on a Xeon with AVX-512): this
// tile 0.76x of the AVX2 one; 12 x 2 panels 0.78x, 14 x 2 0.76x, 7 x 4 0.77x.
constexpr int kTileRows512 = 6;

// One step k of row r: c_rq += a_r[k] * b_q for the tile's NP panels q.
#define TNF_TILE512_ROW(r)                                              \
  {                                                                     \
    const __m512 av = _mm512_set1_ps(a##r[k]);                          \
    c##r##0 = _mm512_fmadd_ps(av, b0, c##r##0);                         \
    if constexpr (NP > 1) c##r##1 = _mm512_fmadd_ps(av, b1, c##r##1);   \
    if constexpr (NP > 2) c##r##2 = _mm512_fmadd_ps(av, b2, c##r##2);   \
    if constexpr (NP > 2) c##r##3 = _mm512_fmadd_ps(av, b3, c##r##3);   \
  }
#define TNF_TILE512_STORE(r)                                                          \
  if (r < rows) {                                                                     \
    float* cr = c + r * ldc;                                                          \
    _mm512_storeu_ps(cr, _mm512_add_ps(c##r##0, z0));                                 \
    if constexpr (NP > 1) _mm512_storeu_ps(cr + kPanel, _mm512_add_ps(c##r##1, z1));  \
    if constexpr (NP > 2) _mm512_storeu_ps(cr + 2 * kPanel, _mm512_add_ps(c##r##2, z2)); \
    if constexpr (NP > 2) _mm512_storeu_ps(cr + 3 * kPanel, _mm512_add_ps(c##r##3, z3)); \
  }

// c[0:rows, 0:16 NP] = a[0:rows, 0:nk] (NP consecutive panels) + bias, rows <= 6, NP in
// {1, 2, 4}; named accumulators for the reason given at gemm_tile. Rows past `rows` re-read
// row 0 and are not stored.
template <int NP>
inline void gemm_tile512(const float* a, int64_t lda, int rows, const float* panel,
                         const float* bias, float* c, int64_t ldc, int64_t nk) {
  static_assert(NP == 1 || NP == 2 || NP == 4, "1, 2 or 4 panels");
  TNF_TILE_ROW_POINTERS
  const float* p1 = panel + (NP > 1 ? nk * kPanel : 0);  // the next panels (NP > 1 only)
  const float* p2 = panel + (NP > 2 ? 2 * nk * kPanel : 0);
  const float* p3 = panel + (NP > 2 ? 3 * nk * kPanel : 0);
  __m512 c00 = _mm512_setzero_ps(), c01 = c00, c02 = c00, c03 = c00;
  __m512 c10 = c00, c11 = c00, c12 = c00, c13 = c00, c20 = c00, c21 = c00, c22 = c00, c23 = c00;
  __m512 c30 = c00, c31 = c00, c32 = c00, c33 = c00, c40 = c00, c41 = c00, c42 = c00, c43 = c00;
  __m512 c50 = c00, c51 = c00, c52 = c00, c53 = c00;
  for (int64_t k = 0; k < nk; ++k) {
    const __m512 b0 = _mm512_loadu_ps(panel + k * kPanel);
    const __m512 b1 = NP > 1 ? _mm512_loadu_ps(p1 + k * kPanel) : b0;
    const __m512 b2 = NP > 2 ? _mm512_loadu_ps(p2 + k * kPanel) : b0;
    const __m512 b3 = NP > 2 ? _mm512_loadu_ps(p3 + k * kPanel) : b0;
    TNF_TILE512_ROW(0) TNF_TILE512_ROW(1) TNF_TILE512_ROW(2)
    TNF_TILE512_ROW(3) TNF_TILE512_ROW(4) TNF_TILE512_ROW(5)
  }
  const auto bias_at = [&](int q) {
    return bias && q < NP ? _mm512_loadu_ps(bias + q * kPanel) : _mm512_setzero_ps();
  };
  const __m512 z0 = bias_at(0), z1 = bias_at(1), z2 = bias_at(2), z3 = bias_at(3);
  TNF_TILE512_STORE(0) TNF_TILE512_STORE(1) TNF_TILE512_STORE(2)
  TNF_TILE512_STORE(3) TNF_TILE512_STORE(4) TNF_TILE512_STORE(5)
}
#undef TNF_TILE512_ROW
#undef TNF_TILE512_STORE

// c [n, N] = a [n, K] B + bias (bias [N] or null) with B packed (cpu_gemm_pack: [N/16, K, 16]);
// rows in blocks of 6 (at most 6 x 2 KB of a here, kept in L1) against 4 panels at a time
// (then 2, then 1 for the rest).
inline void gemm_packed(const float* a, int64_t lda, const float* bp, const float* bias,
                        float* c, int64_t ldc, int64_t n, int64_t nk, int64_t nn) {
  for (int64_t i = 0; i < n; i += kTileRows512) {
    const int rows = int(std::min<int64_t>(kTileRows512, n - i));
    const float* ai = a + i * lda;
    float* ci = c + i * ldc;
    int64_t p = 0;
    for (; p + 4 * kPanel <= nn; p += 4 * kPanel)
      gemm_tile512<4>(ai, lda, rows, bp + p * nk, bias ? bias + p : nullptr, ci + p, ldc, nk);
    for (; p + 2 * kPanel <= nn; p += 2 * kPanel)
      gemm_tile512<2>(ai, lda, rows, bp + p * nk, bias ? bias + p : nullptr, ci + p, ldc, nk);
    for (; p < nn; p += kPanel)
      gemm_tile512<1>(ai, lda, rows, bp + p * nk, bias ? bias + p : nullptr, ci + p, ldc, nk);
  }
}
#else
// c [n, N] = a [n, K] B + bias (bias [N] or null) with B packed (cpu_gemm_pack: [N/16, K, 16]);
// rows in blocks of 6 (at most 6 x 2 KB of a here, kept in L1) against every panel in turn.
inline void gemm_packed(const float* a, int64_t lda, const float* bp, const float* bias,
                        float* c, int64_t ldc, int64_t n, int64_t nk, int64_t nn) {
  for (int64_t i = 0; i < n; i += kTileRows) {
    const int rows = int(std::min<int64_t>(kTileRows, n - i));
    for (int64_t p = 0; p < nn; p += kPanel)
      gemm_tile(a + i * lda, lda, rows, bp + p * nk, bias ? bias + p : nullptr, c + i * ldc + p,
                ldc, nk);
  }
}
#endif  // __AVX512F__
#undef TNF_TILE_ROW_POINTERS
#else
constexpr bool kPackedGemm = false;
constexpr int64_t kPanel = 16;
inline void gemm_packed(const float*, int64_t, const float*, const float*, float*, int64_t,
                        int64_t, int64_t, int64_t) {}
#endif

// Linear weights w [..., out, in] packed for gemm_packed as the right-hand matrices B = W^T
// (transpose: the forward's x W^T) or B = W (the backward's g W): B [K, N] becomes
// [..., N/16, K, 16], panel p row r = B[r, 16p : 16p + 16]. Empty where gemm_packed does not
// apply (float64, N not a multiple of 16, or a build without AVX2/FMA): the ops then use BLAS.
at::Tensor cpu_gemm_pack(const at::Tensor& w, bool transpose) {
  TORCH_CHECK(w.dim() >= 2, "w must be [..., out, in]");
  auto b = transpose ? w.transpose(-1, -2) : w;  // [..., K, N]
  const int64_t nn = b.size(-1);
  if (!kPackedGemm || w.scalar_type() != at::kFloat || nn % kPanel != 0)
    return at::empty({0}, w.options());
  auto shape = b.sizes().vec();
  shape.back() = nn / kPanel;
  shape.push_back(kPanel);  // [..., K, N/16, 16]
  return b.reshape(shape).transpose(-2, -3).contiguous();
}

// out[n, k, :] = x[n, k, :] W_{blk(k)}^T (transpose_w: W instead of W^T) for the atoms n in
// [a0, a1), 9 GEMMs; w: [3, F, F] (torch Linear layout [out, in]) for the I, A, S blocks;
// packed: cpu_gemm_pack(w, !transpose_w) or null (then BLAS). Called inside a parallel region,
// one atom slice per thread: BLAS called there runs sequentially, with no BLAS-internal
// synchronisation per call. 64 g2 molecules (453 atoms, F=128): 9 threaded GEMMs 1.14 ms ->
// ~0.95 ms this way, on 2 cores.
template <typename T>
void gemm_slice(const T* x, const T* w, const T* packed, T* out, int64_t a0, int64_t a1,
                int64_t nf, bool transpose_w) {
  if (a1 <= a0) return;
  if constexpr (std::is_same<T, float>::value) {
    if (packed) {
      for (int k = 0; k < 9; ++k) {
        const int64_t o = a0 * 9 * nf + k * nf;
        gemm_packed(x + o, 9 * nf, packed + kBlock[k] * nf * nf, nullptr, out + o, 9 * nf,
                    a1 - a0, nf, nf);
      }
      return;
    }
  }
  const auto gemm = blas_gemm<T>();
  const bool small = a1 - a0 < (int64_t(1) << 30) / (9 * nf);  // int32 BLAS dimensions
  for (int k = 0; k < 9; ++k) {
    const T* wk = w + kBlock[k] * nf * nf;
    const int64_t o = a0 * 9 * nf + k * nf;
    if (gemm && small) {
      // Row-major out_k [n, F] (ld 9F) = x_k W^T is column-major out_k^T = W x_k^T; the
      // row-major [out, in] weight read column-major is W^T, so op(A) = W is "T".
      const int m_ = int(nf), n_ = int(a1 - a0), ld = int(9 * nf), ldw = int(nf);
      const T one = T(1), zero = T(0);
      gemm(transpose_w ? "N" : "T", "N", &m_, &n_, &m_, &one, wk, &ldw, x + o, &ld, &zero,
           out + o, &ld);
      continue;
    }
    const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
    auto xv = at::from_blob(const_cast<T*>(x + o), {a1 - a0, nf}, {9 * nf, 1}, opts);
    auto wv = at::from_blob(const_cast<T*>(wk), {nf, nf}, {nf, 1}, opts);
    auto ov = at::from_blob(out + o, {a1 - a0, nf}, {9 * nf, 1}, opts);
    ov.copy_(at::mm(xv, transpose_w ? wv : wv.t()));
  }
}

// The packed weights' data for gemm_slice / gemm_packed, or null: wp is cpu_gemm_pack's output
// for w (empty: BLAS).
template <typename T>
const T* packed_weights(const at::Tensor& wp, const at::Tensor& w) {
  if (wp.numel() == 0) return nullptr;
  TORCH_CHECK(wp.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat &&
                  wp.is_contiguous() && wp.numel() == w.numel(),
              "packed weights must be cpu_gemm_pack(w) for float32 w");
  return reinterpret_cast<const T*>(wp.data_ptr<float>());
}

// Atom slice [a0, a1) of thread t of nt (even split; the per-atom work is uniform).
inline std::pair<int64_t, int64_t> thread_slice(int64_t n, int t, int nt) {
  return {n * t / nt, n * (t + 1) / nt};
}

// MKL threads each GEMM called outside a parallel region on its own: 9 small GEMMs of a
// 10-atom layer woke the pool 9 times (~0.4 ms per layer with passive waiting). This guard
// makes BLAS sequential on the calling thread for its lifetime (MKL_Set_Num_Threads_Local, the
// C entry point: the lower-case name is the Fortran one, taking a pointer; looked up like
// sgemm_; a no-op without MKL).
class SequentialBlas {
 public:
  SequentialBlas() {
    if (set_local()) previous_ = set_local()(1);
  }
  ~SequentialBlas() {
    if (set_local()) set_local()(previous_);  // 0 restores the global setting
  }
  SequentialBlas(const SequentialBlas&) = delete;
  SequentialBlas& operator=(const SequentialBlas&) = delete;

 private:
  using fn = int (*)(int);
  static fn set_local() {
    static fn f = reinterpret_cast<fn>(torch_blas_symbol("MKL_Set_Num_Threads_Local"));
    return f;
  }
  int previous_ = 0;
};

// One parallel region over n atoms: body(t, nt) on every thread t of the intra-op pool (nt
// threads; thread_slice gives each its atoms), so a body can hold several steps separated by
// `#pragma omp barrier` where a step needs other threads' atoms (the message passes). Each
// region or barrier costs a thread wake-up with OMP_WAIT_POLICY=PASSIVE (~15-30 us here), so
// the layer ops use one region with one barrier instead of one region per step. Below 32
// atoms, inside another parallel region or with one thread: body(0, 1) on the caller (the
// barriers are then no-ops). All threads must reach the same barriers, and bodies must not
// throw (inputs are checked before).
template <typename Body>
void node_region(int64_t n, const Body& body) {
  if (n < 32 || at::in_parallel_region() || at::get_num_threads() == 1) {
    SequentialBlas guard;
    body(0, 1);
    return;
  }
  at::internal::lazy_init_num_threads();
#pragma omp parallel
  {
    c10::ParallelGuard guard(true);  // nested at::parallel_for / ATen ops run inline
    body(omp_get_thread_num(), omp_get_num_threads());
  }
}

// The per-chunk helpers below are forced inline: GCC 12 outlined load9 and to_full once the
// file grew (perf: 2.3% of samples in their out-of-line copies, each call passing its 9
// registers through memory).
#define TNF_INLINE inline __attribute__((always_inline))

// Per-(atom, channel) algebra works on chunks of one SIMD register of channels (8 float / 4
// double lanes, GCC vector extensions; 16 / 8 lanes where the build has AVX-512F: both layer
// ops on 64 g2 molecules 0.92x of 32-byte chunks, same-process A/B on a Xeon): a 3x3 tensor is
// 9 registers, every statement below is one vector instruction per register, with no loops
// over a run-time length (those compiled to 64-byte memcpy calls; same-phase A/B on 64 g2
// molecules: layer 3-5% faster). A chunk at the end of F narrower than a register is
// zero-padded (zero lanes stay finite everywhere).
#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#else
constexpr int kVecBytes = 32;
#endif
template <typename T>
struct SimdOf;
template <>
struct SimdOf<float> {
  typedef float V __attribute__((vector_size(kVecBytes)));
};
template <>
struct SimdOf<double> {
  typedef double V __attribute__((vector_size(kVecBytes)));
};
template <typename T>
using Vec = typename SimdOf<T>::V;
template <typename T>
constexpr int kLanes = int(sizeof(Vec<T>) / sizeof(T));
// 9 registers (a struct, not an array alias, so templates can deduce T from it)
template <typename T>
struct Chunk {
  Vec<T> v[9];
  Vec<T>& operator[](int k) { return v[k]; }
  const Vec<T>& operator[](int k) const { return v[k]; }
};

template <typename T>
TNF_INLINE Vec<T> vload(const T* p, int len) {
  Vec<T> v = Vec<T>{};
  if (len == kLanes<T>)
    std::memcpy(&v, p, sizeof(v));
  else
    for (int c = 0; c < len; ++c) v[c] = p[c];
  return v;
}
template <typename T>
TNF_INLINE void vstore(T* p, const Vec<T>& v, int len) {
  if (len == kLanes<T>)
    std::memcpy(p, &v, sizeof(v));
  else
    for (int c = 0; c < len; ++c) p[c] = v[c];
}

// Per-atom passes read/write 9 rows of F channels per atom ([N, 9, F]: 9 runs of 512 B for
// F=128 float), each run too short for the hardware stream prefetchers to train on, so every
// run started with a demand miss (perf: ~40% of the layer passes' samples on the first load
// of a row). load9/store9 prefetch the same rows two atoms ahead (18 rows); prefetches past
// the end of an array do not fault. Interleaved A/B, 64 g2 molecules: whole call 0.89x.
constexpr int64_t kAhead = 18;
template <typename T>
TNF_INLINE void load9(const T* p, int64_t nf, int len, Chunk<T>& v) {
  for (int k = 0; k < 9; ++k) __builtin_prefetch(p + (kAhead + k) * nf, 0, 3);
  for (int k = 0; k < 9; ++k) v[k] = vload(p + k * nf, len);
}
template <typename T>
TNF_INLINE void store9(T* p, int64_t nf, int len, const Chunk<T>& v) {
  for (int k = 0; k < 9; ++k) __builtin_prefetch(p + (kAhead + k) * nf, 1, 3);
  for (int k = 0; k < 9; ++k) vstore(p + k * nf, v[k], len);
}

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

constexpr int64_t kNodeGrain = 16;  // atoms per parallel task in the node-level loops

// Loop over (atom, channel chunk) for the atoms [a0, a1); body(i, offset, len) with offset =
// i * 9F + c0 the start of the chunk's component 0.
template <typename T, typename Body>
void for_chunks(int64_t a0, int64_t a1, int64_t nf, const Body& body) {
  for (int64_t i = a0; i < a1; ++i)
    for (int64_t c0 = 0; c0 < nf; c0 += kLanes<T>)
      body(i, i * 9 * nf + c0, int(std::min<int64_t>(kLanes<T>, nf - c0)));
}

void check_node(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(x.is_contiguous() && x.dim() == 3 && x.size(1) == 9, "x must be [N, 9, F]");
  TORCH_CHECK(w.is_contiguous() && w.dim() == 3 && w.size(1) == x.size(2) &&
                  w.size(2) == x.size(2) && w.scalar_type() == x.scalar_type(),
              "weights must be contiguous [k, F, F] in the dtype of x");
}

void check_layer(const at::Tensor& x, const at::Tensor& w, const at::Tensor& q,
                 const at::Tensor& row_ptr, const at::Tensor& col, const at::Tensor& tab,
                 const at::Tensor& idx) {
  check_node(x, w);
  TORCH_CHECK(w.size(0) == 6 && q.is_contiguous() && q.size(0) == x.size(0) &&
                  q.scalar_type() == x.scalar_type(),
              "w [6, F, F], q [N] in the dtype of x");
  check(row_ptr, col, tab, idx);
  TORCH_CHECK(row_ptr.size(0) == x.size(0) + 1, "row_ptr must be [N + 1]");
  TORCH_CHECK(tab.size(2) == 3 * x.size(2), "filter width must be 3F");
}

// One interaction layer (SPEC.md "Interaction layer", steps 2-6) with its message pass, in
// one parallel region: each thread normalises its atoms and runs their GEMMs (Y = W X_bar),
// then after one barrier (messages read every atom's Y) forms its receivers' messages M, the
// products B = q (M Y + Y M) (SO(3): 2 Y M), B_bar, dX = W B_bar and X_out.
// w [6, F, F]: linears_tensor.0..5; w_packed: cpu_gemm_pack(w, true) or empty; q [N]: charge
// factor (1 + 0.1 q_i). Returns (X_out, Y, M, dX); the last three are what cpu_layer_bwd needs
// (B is recomputed there from Y and M: 54 FMAs per channel instead of 2 MB more to write and
// read back per layer for 453 atoms, F=128).
std::vector<at::Tensor> cpu_layer_fwd(const at::Tensor& x, const at::Tensor& w,
                                      const at::Tensor& w_packed, const at::Tensor& q, bool o3,
                                      const at::Tensor& row_ptr, const at::Tensor& col,
                                      const at::Tensor& tab, const at::Tensor& idx,
                                      const c10::optional<at::Tensor>& s, double inv_h) {
  check_layer(x, w, q, row_ptr, col, tab, idx);
  const int64_t n = x.size(0), nf = x.size(2);
  auto out = at::empty_like(x);  // X_bar, then X_out = X_bar + dX + q dX dX in place
  auto y = at::empty_like(x);
  auto m = at::empty_like(x);
  auto bn = at::empty_like(x);  // B_bar
  auto dx = at::empty_like(x);
  TNF_DISPATCH(x, [&](auto zero) {
    using T = decltype(zero);
    const auto src = make_source<T>(tab, c10::nullopt, idx, s, inv_h);
    const T* xp = x.data_ptr<T>();
    const T* qp = q.data_ptr<T>();
    const T* wp = w.data_ptr<T>();
    const T* pk = packed_weights<T>(w_packed, w);
    const T* pk3 = pk ? pk + 3 * nf * nf : nullptr;  // second set of three
    T *op = out.data_ptr<T>(), *yp = y.data_ptr<T>(), *mp = m.data_ptr<T>();
    T *bp = bn.data_ptr<T>(), *dp = dx.data_ptr<T>();
    node_region(n, [&](int t, int nt) {
      const auto [a0, a1] = thread_slice(n, t, nt);
      for_chunks<T>(a0, a1, nf, [&](int64_t, int64_t o, int len) {
        Chunk<T> v;
        load9(xp + o, nf, len, v);
        normalise(v);
        store9(op + o, nf, len, v);
      });
      gemm_slice<T>(op, wp, pk, yp, a0, a1, nf, false);
#pragma omp barrier
      std::vector<T> f(3 * nf);
      message_fwd_rows<T>(src, row_ptr.data_ptr<int64_t>(), col.data_ptr<int64_t>(), yp, mp, nf,
                          a0, a1, f.data());
      for_chunks<T>(a0, a1, nf, [&](int64_t i, int64_t o, int len) {
        Chunk<T> v, yf, mf, bf;
        load9(yp + o, nf, len, v);
        to_full(v, yf);
        load9(mp + o, nf, len, v);
        to_full(v, mf);
        layer_product(yf, mf, qp[i], o3, bf);
        from_full(bf, v);
        normalise(v);
        store9(bp + o, nf, len, v);
      });
      gemm_slice<T>(bp, wp + 3 * nf * nf, pk3, dp, a0, a1, nf, false);
      for_chunks<T>(a0, a1, nf, [&](int64_t i, int64_t o, int len) {
        Chunk<T> v, df, pf, p, xo;
        load9(dp + o, nf, len, v);
        to_full(v, df);
        mm3<T, false, false>(df, df, pf);
        from_full(pf, p);
        load9(op + o, nf, len, xo);
        const T qf = qp[i];
        for (int k = 0; k < 9; ++k) xo[k] += v[k] + qf * p[k];
        store9(op + o, nf, len, xo);
      });
    });
  });
  return {out, y, m, dx};
}

// Backward of cpu_layer_fwd given go = dE/dX_out: (dE/dX [N, 9, F], dE/dd [E]). One parallel
// region: per thread dE/d(dX), dE/dB_bar (GEMM), dE/dB, dE/dM and the local part of dE/dY;
// after one barrier (dE/dY_i gathers its neighbours' dE/dM) the message backward, dE/dX_bar
// (GEMM) and dE/dX. w_packed: cpu_gemm_pack(w, false) or empty.
std::vector<at::Tensor> cpu_layer_bwd(const at::Tensor& go, const at::Tensor& x,
                                      const at::Tensor& y, const at::Tensor& m,
                                      const at::Tensor& dx, const at::Tensor& w,
                                      const at::Tensor& w_packed,
                                      const at::Tensor& q, bool o3, const at::Tensor& row_ptr,
                                      const at::Tensor& col, const at::Tensor& tab,
                                      const c10::optional<at::Tensor>& dtab,
                                      const at::Tensor& idx, const c10::optional<at::Tensor>& s,
                                      double inv_h) {
  check_layer(x, w, q, row_ptr, col, tab, idx);
  TORCH_CHECK(tab.size(1) == 6 || dtab.has_value(), "exact mode needs dtab");
  for (const auto* t : {&go, &y, &m, &dx})
    TORCH_CHECK(t->is_contiguous() && t->sizes() == x.sizes() &&
                    t->scalar_type() == x.scalar_type(),
                "go, y, m, dx must be contiguous [N, 9, F] in the dtype of x");
  const int64_t n = x.size(0), nf = x.size(2);
  auto gdx = at::empty_like(x);  // dE/d(dX), then dE/dX_bar - go
  auto gb = at::empty_like(x);   // dE/dB_bar, then the result dE/dX
  auto gm = at::empty_like(x);
  auto gy = at::empty_like(x);
  auto gd = at::empty({col.size(0)}, x.options());
  TNF_DISPATCH(x, [&](auto zero) {
    using T = decltype(zero);
    const auto src = make_source<T>(tab, dtab, idx, s, inv_h);
    const T *gop = go.data_ptr<T>(), *xp = x.data_ptr<T>(), *yp = y.data_ptr<T>();
    const T *mp = m.data_ptr<T>(), *dp = dx.data_ptr<T>();
    const T *qp = q.data_ptr<T>(), *wp = w.data_ptr<T>();
    const T* pk = packed_weights<T>(w_packed, w);
    const T* pk3 = pk ? pk + 3 * nf * nf : nullptr;  // second set of three
    T *gdp = gdx.data_ptr<T>(), *gbp = gb.data_ptr<T>(), *gmp = gm.data_ptr<T>();
    T* gyp = gy.data_ptr<T>();
    node_region(n, [&](int t, int nt) {
      const auto [a0, a1] = thread_slice(n, t, nt);
      // dE/d(dX) = go + q (G D^T + D^T G)
      for_chunks<T>(a0, a1, nf, [&](int64_t i, int64_t o, int len) {
        Chunk<T> g, v, gf, df, t1;
        load9(gop + o, nf, len, g);
        to_full(g, gf);
        load9(dp + o, nf, len, v);
        to_full(v, df);
        anticommute_transposed(gf, df, t1);
        from_full(t1, v);
        const T qf = qp[i];
        for (int k = 0; k < 9; ++k) v[k] = g[k] + qf * v[k];
        store9(gdp + o, nf, len, v);
      });
      // dE/d(B_bar) = dE/d(dX) W_{3,4,5}
      gemm_slice<T>(gdp, wp + 3 * nf * nf, pk3, gbp, a0, a1, nf, true);
      for_chunks<T>(a0, a1, nf, [&](int64_t i, int64_t o, int len) {
        Chunk<T> v, yf, mf, bv, g, gf, t1;
        load9(yp + o, nf, len, v);
        to_full(v, yf);
        load9(mp + o, nf, len, v);
        to_full(v, mf);
        load9(gbp + o, nf, len, g);
        layer_product(yf, mf, qp[i], o3, t1);  // B (before normalisation), as in the forward
        from_full(t1, bv);
        normalise_bwd(bv, g);  // dE/dB
        to_full(g, gf);
        // O(3), B = q (M Y + Y M): gM = q (G Y^T + Y^T G), gY = q (G M^T + M^T G);
        // SO(3), B = 2 Y M: gM = 2 Y^T G, gY = 2 G M^T
        const T scale = o3 ? qp[i] : T(2);
        for (int which = 0; which < 2; ++which) {  // gM, then gY
          if (o3)
            anticommute_transposed(gf, which == 0 ? yf : mf, t1);
          else if (which == 0)
            mm3<T, true, false>(yf, gf, t1);
          else
            mm3<T, false, true>(gf, mf, t1);
          for (int k = 0; k < 9; ++k) t1[k] = scale * t1[k];
          from_full(t1, v);
          store9((which == 0 ? gmp : gyp) + o, nf, len, v);
        }
      });
#pragma omp barrier
      // dE/dY = local part (in gy) + message part (added by the message backward)
      std::vector<T> f(3 * nf), fp(3 * nf);
      message_bwd_rows<T>(src, row_ptr.data_ptr<int64_t>(), col.data_ptr<int64_t>(), yp, gmp,
                          gd.data_ptr<T>(), gyp, nf, a0, a1, f.data(), fp.data());
      // dE/dX_bar = go + dE/dY W_{0,1,2}; X_bar = X / (|X|^2 + 1)
      gemm_slice<T>(gyp, wp, pk, gdp, a0, a1, nf, true);
      for_chunks<T>(a0, a1, nf, [&](int64_t, int64_t o, int len) {
        Chunk<T> v, g, g0;
        load9(xp + o, nf, len, v);
        load9(gdp + o, nf, len, g);
        load9(gop + o, nf, len, g0);
        for (int k = 0; k < 9; ++k) g[k] += g0[k];
        normalise_bwd(v, g);
        store9(gbp + o, nf, len, g);
      });
    });
  });
  return {gb, gd};
}

// Embedding output X = (W_{blk(k)} R_k) (*) n_{blk(k)}; R [N, 9, F], norm [N, 3F], w [3, F, F],
// w_packed: cpu_gemm_pack(w, true) or empty.
// Returns (X, P = W R) (P is what the backward needs).
std::vector<at::Tensor> cpu_embed_combine_fwd(const at::Tensor& raw, const at::Tensor& norm,
                                              const at::Tensor& w, const at::Tensor& w_packed) {
  check_node(raw, w);
  TORCH_CHECK(norm.is_contiguous() && norm.size(0) == raw.size(0) &&
                  norm.size(1) == 3 * raw.size(2),
              "norm must be contiguous [N, 3F]");
  const int64_t n = raw.size(0), nf = raw.size(2);
  auto p = at::empty_like(raw);
  auto out = at::empty_like(raw);
  TNF_DISPATCH(raw, [&](auto zero) {
    using T = decltype(zero);
    const T* pp = p.data_ptr<T>();
    const T* np = norm.data_ptr<T>();
    T* op = out.data_ptr<T>();
    const T* pk = packed_weights<T>(w_packed, w);
    node_region(n, [&](int t, int nt) {  // one region: GEMM, then the product, per slice
      const auto [lo, hi] = thread_slice(n, t, nt);
      gemm_slice<T>(raw.data_ptr<T>(), w.data_ptr<T>(), pk, p.data_ptr<T>(), lo, hi, nf, false);
      for (int64_t i = lo; i < hi; ++i)
        for (int k = 0; k < 9; ++k) {
          const T* a = pp + (i * 9 + k) * nf;
          const T* b = np + (i * 3 + kBlock[k]) * nf;
          T* o = op + (i * 9 + k) * nf;
#pragma omp simd
          for (int64_t c = 0; c < nf; ++c) o[c] = a[c] * b[c];
        }
    });
  });
  return {out, p};
}

// Backward: (dE/dR [N, 9, F], dE/dnorm [N, 3F]); w_packed: cpu_gemm_pack(w, false) or empty.
std::vector<at::Tensor> cpu_embed_combine_bwd(const at::Tensor& gx, const at::Tensor& p,
                                              const at::Tensor& norm, const at::Tensor& w,
                                              const at::Tensor& w_packed) {
  check_node(p, w);
  TORCH_CHECK(gx.is_contiguous() && gx.sizes() == p.sizes(), "gx must be contiguous [N,9,F]");
  TORCH_CHECK(norm.is_contiguous() && norm.dim() == 2 && norm.size(0) == p.size(0) &&
                  norm.size(1) == 3 * p.size(2) && norm.scalar_type() == p.scalar_type(),
              "norm must be contiguous [N, 3F] in p's dtype");
  const int64_t n = p.size(0), nf = p.size(2);
  auto gp = at::empty_like(p);
  auto gn = at::empty_like(norm);  // rows zeroed in the region (at::zeros: one more region)
  auto graw = at::empty_like(p);
  TNF_DISPATCH(p, [&](auto zero) {
    using T = decltype(zero);
    const T* gxp = gx.data_ptr<T>();
    const T* pp = p.data_ptr<T>();
    const T* np = norm.data_ptr<T>();
    T* gpp = gp.data_ptr<T>();
    T* gnp = gn.data_ptr<T>();
    const T* pk = packed_weights<T>(w_packed, w);
    node_region(n, [&](int t, int nt) {  // one region: the product, then GEMM, per slice
      const auto [lo, hi] = thread_slice(n, t, nt);
      std::fill(gnp + lo * 3 * nf, gnp + hi * 3 * nf, T(0));
      for (int64_t i = lo; i < hi; ++i)
        for (int k = 0; k < 9; ++k) {
          const int64_t o = (i * 9 + k) * nf, ob = (i * 3 + kBlock[k]) * nf;
#pragma omp simd
          for (int64_t c = 0; c < nf; ++c) {
            gpp[o + c] = gxp[o + c] * np[ob + c];
            gnp[ob + c] += gxp[o + c] * pp[o + c];
          }
        }
      gemm_slice<T>(gpp, w.data_ptr<T>(), pk, graw.data_ptr<T>(), lo, hi, nf, true);
    });
  });
  return {graw, gn};
}

// Squared norms per channel: blocks=false: [N, F] = sum_k x_k^2 (= ||X||^2); blocks=true:
// [N, 3F] = (x_0^2 | sum_{1..3} x_k^2 | sum_{4..8} x_k^2) (= 3 I^2, ||A||^2, ||S||^2).
at::Tensor cpu_sq_norms(const at::Tensor& x, bool blocks) {
  TORCH_CHECK(x.is_contiguous() && x.dim() == 3 && x.size(1) == 9, "x must be [N, 9, F]");
  const int64_t n = x.size(0), nf = x.size(2);
  const int64_t width = blocks ? 3 * nf : nf;
  auto out = at::empty({n, width}, x.options());  // zeroed per slice (at::zeros: a region more)
  TNF_DISPATCH(x, [&](auto zero) {
    using T = decltype(zero);
    const T* xp = x.data_ptr<T>();
    T* op = out.data_ptr<T>();
    at::parallel_for(0, n, kNodeGrain, [&](int64_t lo, int64_t hi) {
      std::fill(op + lo * width, op + hi * width, T(0));
      for (int64_t i = lo; i < hi; ++i)
        for (int k = 0; k < 9; ++k) {
          const T* a = xp + (i * 9 + k) * nf;
          T* o = op + (i * (blocks ? 3 : 1) + (blocks ? kBlock[k] : 0)) * nf;
#pragma omp simd
          for (int64_t c = 0; c < nf; ++c) o[c] += a[c] * a[c];
        }
    });
  });
  return out;
}

// Backward of cpu_sq_norms: dE/dx_k = 2 x_k g_{blk(k)} (g [N, F] or [N, 3F]).
at::Tensor cpu_sq_norms_bwd(const at::Tensor& x, const at::Tensor& g) {
  TORCH_CHECK(x.is_contiguous() && g.is_contiguous(), "x, g must be contiguous");
  const int64_t n = x.size(0), nf = x.size(2);
  const bool blocks = g.size(1) == 3 * nf;
  auto out = at::empty_like(x);
  TNF_DISPATCH(x, [&](auto zero) {
    using T = decltype(zero);
    const T* xp = x.data_ptr<T>();
    const T* gp = g.data_ptr<T>();
    T* op = out.data_ptr<T>();
    at::parallel_for(0, n, kNodeGrain, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i)
        for (int k = 0; k < 9; ++k) {
          const int64_t o = (i * 9 + k) * nf;
          const T* b = gp + (i * (blocks ? 3 : 1) + (blocks ? kBlock[k] : 0)) * nf;
#pragma omp simd
          for (int64_t c = 0; c < nf; ++c) op[o + c] = T(2) * xp[o + c] * b[c];
        }
    });
  });
  return out;
}

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

// SiLU (act 0) or sigmoid (act 2) of float32 rows through exp_arith, and SiLU's backward:
// aten's float32 silu took ~1.5 ns per element on one core here (85 us for [227, 256], more
// than the LayerNorm and a third of the linear before it). With the float32 distance glue of
// the same change, 64 g2 molecules: whole call 0.982x (interleaved A/B).
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

void sigmoid_family_out(int64_t act, const float* x, float* y, int64_t numel) {
  constexpr int L = kLanes<float>;
  auto step = [act](auto v) {
    const decltype(v) sg = sigmoid_arith(v);
    return act == 0 ? v * sg : sg;
  };
  int64_t c = 0;
  for (; c + L <= numel; c += L) vstore(y + c, step(vload(x + c, L)), L);
  for (; c < numel; ++c) y[c] = step(x[c]);
}

// dE/dx = g sigma(x) (1 + x (1 - sigma(x))) for y = x sigma(x)
void silu_backward_rows(const float* g, const float* x, float* out, int64_t numel) {
  constexpr int L = kLanes<float>;
  auto step = [](auto gv, auto v) { return gv * silu_slope(v, sigmoid_arith(v)); };
  int64_t c = 0;
  for (; c + L <= numel; c += L) vstore(out + c, step(vload(g + c, L), vload(x + c, L)), L);
  for (; c < numel; ++c) out[c] = step(g[c], x[c]);
}

bool fast_rows(const at::Tensor& a) {
  return a.scalar_type() == at::kFloat && a.is_contiguous();
}

// ============================================================================ row-wise stacks
// The [N, C] per-atom MLPs of the fused path (embedding: LayerNorm + linears_scalar; output:
// out_norm + linear + head), rows split over threads in ONE parallel region, each thread
// running ATen's LayerNorm, addmm and activation kernels on its rows (sequential inside the
// region). Through torch they were ~20 ops per direction, each its own parallel region and
// dispatch (64 g2 molecules: ~1 ms of the call with passive waiting).
// Activations (ids as in cpu_backend._ACTIVATION_IDS): 0 SiLU, 1 tanh, 2 sigmoid,
// 3 shifted softplus (softplus(x) - log 2), 4 mish; -1 after a layer: no activation.

void activation_out(int64_t act, const at::Tensor& pre, at::Tensor& out) {
  if ((act == 0 || act == 2) && fast_rows(pre) && fast_rows(out)) {
    sigmoid_family_out(act, pre.data_ptr<float>(), out.data_ptr<float>(), pre.numel());
    return;
  }
  switch (act) {
    case 0: at::silu_out(out, pre); break;
    case 1: at::tanh_out(out, pre); break;
    case 2: at::sigmoid_out(out, pre); break;
    case 3: at::softplus_out(out, pre, 1, 20).sub_(std::log(2.0)); break;
    case 4: at::mish_out(out, pre); break;
    default: out.copy_(pre);
  }
}

at::Tensor activation_backward(int64_t act, const at::Tensor& g, const at::Tensor& pre,
                               const at::Tensor& out) {
  if (act == 0 && fast_rows(g) && fast_rows(pre)) {
    auto out = at::empty_like(pre);
    silu_backward_rows(g.data_ptr<float>(), pre.data_ptr<float>(), out.data_ptr<float>(),
                       pre.numel());
    return out;
  }
  switch (act) {
    case 0: return at::silu_backward(g, pre);
    case 1: return at::tanh_backward(g, out);
    case 2: return at::sigmoid_backward(g, out);
    case 3: return at::softplus_backward(g, pre, 1, 20);
    case 4: return at::mish_backward(g, pre);
    default: return g;
  }
}

void check_rows(const at::Tensor& x, const at::Tensor& ln_w, const at::Tensor& ln_b,
                const std::vector<at::Tensor>& ws, const std::vector<int64_t>& acts) {
  // ATen ops run inside a parallel region below, where an exception would end the process:
  // everything they could reject is checked here
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "x must be contiguous [N, C]");
  TORCH_CHECK(ln_w.dim() == 1 && ln_w.size(0) == x.size(1) && ln_b.sizes() == ln_w.sizes() &&
                  ln_w.scalar_type() == x.scalar_type() && ln_b.scalar_type() == x.scalar_type(),
              "LayerNorm weight and bias must be [C] in x's dtype");
  TORCH_CHECK(!ws.empty() && ws.size() == acts.size(), "one activation id per weight");
  int64_t width = x.size(1);
  for (size_t l = 0; l < ws.size(); ++l) {
    TORCH_CHECK(ws[l].dim() == 2 && ws[l].size(1) == width &&
                    ws[l].scalar_type() == x.scalar_type(),
                "layer ", l, ": weight [out, in] matching the previous width and x's dtype");
    TORCH_CHECK(acts[l] >= -1 && acts[l] <= 4, "activation id must be -1..4");
    width = ws[l].size(0);
  }
}

// Per layer the packed weights' data (cpu_gemm_pack of ws[l]) or null where packed[l] is empty
// (then ATen's addmm / mm).
std::vector<const float*> packed_layers(const std::vector<at::Tensor>& packed,
                                        const std::vector<at::Tensor>& ws) {
  TORCH_CHECK(packed.size() == ws.size(), "one packed weight (or empty tensor) per weight");
  std::vector<const float*> out(ws.size());
  for (size_t l = 0; l < ws.size(); ++l) out[l] = packed_weights<float>(packed[l], ws[l]);
  return out;
}

// LayerNorm(x) then h <- act_l(h W_l^T + b_l) for each layer l.  x [N, C] -> [N, C_L];
// packed: cpu_gemm_pack(ws[l], true) or empty per layer.
// Returns (out, mean [N, 1], rstd [N, 1], pre_0, out_0, pre_1, out_1, ...) for cpu_rows_bwd.
std::vector<at::Tensor> cpu_rows_fwd(const at::Tensor& x, const at::Tensor& ln_w,
                                     const at::Tensor& ln_b, double eps,
                                     const std::vector<at::Tensor>& ws,
                                     const std::vector<at::Tensor>& bs,
                                     const std::vector<int64_t>& acts,
                                     const std::vector<at::Tensor>& packed) {
  check_rows(x, ln_w, ln_b, ws, acts);
  const auto pk = packed_layers(packed, ws);
  TORCH_CHECK(bs.size() == ws.size(), "one bias per weight");
  for (size_t l = 0; l < ws.size(); ++l)
    TORCH_CHECK(bs[l].dim() == 1 && bs[l].size(0) == ws[l].size(0) &&
                    bs[l].scalar_type() == x.scalar_type(),
                "bias ", l, " must be [out] in x's dtype");
  const int64_t n = x.size(0);
  const size_t nl = ws.size();
  auto mean = at::empty({n, 1}, x.options());
  auto rstd = at::empty({n, 1}, x.options());
  std::vector<at::Tensor> pre(nl), post(nl);
  for (size_t l = 0; l < nl; ++l) {
    pre[l] = at::empty({n, ws[l].size(0)}, x.options());
    post[l] = acts[l] >= 0 ? at::empty_like(pre[l]) : pre[l];
  }
  const std::vector<int64_t> shape{x.size(1)};
  node_region(n, [&](int t, int nt) {
    const auto [a0, a1] = thread_slice(n, t, nt);
    if (a1 <= a0) return;
    auto [h, mu, rs] = at::native_layer_norm(x.slice(0, a0, a1), shape, ln_w, ln_b, eps);
    mean.slice(0, a0, a1).copy_(mu.view({a1 - a0, 1}));
    rstd.slice(0, a0, a1).copy_(rs.view({a1 - a0, 1}));
    at::Tensor in = h;  // this thread's LayerNorm output, the first linear's input
    for (size_t l = 0; l < nl; ++l) {
      auto p = pre[l].slice(0, a0, a1);
      if (pk[l])  // rows are contiguous: the slices' row stride is their width
        gemm_packed(in.data_ptr<float>(), in.stride(0), pk[l], bs[l].data_ptr<float>(),
                    p.data_ptr<float>(), p.stride(0), a1 - a0, ws[l].size(1), ws[l].size(0));
      else
        at::addmm_out(p, bs[l], in, ws[l].t());
      if (acts[l] >= 0) {
        auto o = post[l].slice(0, a0, a1);
        activation_out(acts[l], p, o);
      }
      in = post[l].slice(0, a0, a1);
    }
  });
  std::vector<at::Tensor> res{post[nl - 1], mean, rstd};
  for (size_t l = 0; l < nl; ++l) {
    res.push_back(pre[l]);
    res.push_back(post[l]);
  }
  return res;
}

// Input backward of cpu_rows_fwd: dE/dx [N, C] given g = dE/d(out) [N, C_L] and its tape;
// packed: cpu_gemm_pack(ws[l], false) or empty per layer.
at::Tensor cpu_rows_bwd(const at::Tensor& g, const at::Tensor& x, const at::Tensor& ln_w,
                        const at::Tensor& ln_b, const std::vector<at::Tensor>& ws,
                        const std::vector<int64_t>& acts, const at::Tensor& mean,
                        const at::Tensor& rstd, const std::vector<at::Tensor>& pre_post,
                        const std::vector<at::Tensor>& packed) {
  check_rows(x, ln_w, ln_b, ws, acts);
  const auto pk = packed_layers(packed, ws);
  const int64_t n = x.size(0);
  const size_t nl = ws.size();
  TORCH_CHECK(pre_post.size() == 2 * nl, "tape: (pre, out) per layer");
  for (size_t l = 0; l < nl; ++l)
    for (int k = 0; k < 2 && acts[l] >= 0; ++k)
      TORCH_CHECK(pre_post[2 * l + k].dim() == 2 && pre_post[2 * l + k].size(0) == n &&
                      pre_post[2 * l + k].size(1) == ws[l].size(0) &&
                      pre_post[2 * l + k].scalar_type() == x.scalar_type(),
                  "tape of layer ", l, " must be [N, out] in x's dtype");
  TORCH_CHECK(g.dim() == 2 && g.size(0) == n && g.size(1) == ws[nl - 1].size(0) &&
                  g.scalar_type() == x.scalar_type() && g.is_contiguous() && mean.size(0) == n &&
                  rstd.size(0) == n,
              "g must be contiguous [N, C_L] in x's dtype, mean and rstd [N, 1]");
  auto gx = at::empty_like(x);
  const std::vector<int64_t> shape{x.size(1)};
  node_region(n, [&](int t, int nt) {
    const auto [a0, a1] = thread_slice(n, t, nt);
    if (a1 <= a0) return;
    at::Tensor gh = g.slice(0, a0, a1);
    for (size_t l = nl; l-- > 0;) {
      if (acts[l] >= 0)
        gh = activation_backward(acts[l], gh, pre_post[2 * l].slice(0, a0, a1),
                                 pre_post[2 * l + 1].slice(0, a0, a1));
      if (pk[l]) {  // gh's rows are contiguous (a row slice of g, or an activation's output)
        auto o = at::empty({a1 - a0, ws[l].size(1)}, x.options());
        gemm_packed(gh.data_ptr<float>(), gh.stride(0), pk[l], nullptr, o.data_ptr<float>(),
                    o.stride(0), a1 - a0, ws[l].size(0), ws[l].size(1));
        gh = o;
      } else {
        gh = at::mm(gh, ws[l]);
      }
    }
    auto r = at::native_layer_norm_backward(
        gh, x.slice(0, a0, a1), shape, mean.slice(0, a0, a1), rstd.slice(0, a0, a1), ln_w,
        ln_b, {true, false, false});
    gx.slice(0, a0, a1).copy_(std::get<0>(r));
  });
  return gx;
}

// ============================================================================ exact filters
// Tangent through tanh (exact-mode filter MLP, forward mode), in place: ta <- (1 - t^2) ta given
// t = tanh(a), which torch computes accurately (SiLU and sigmoid: cpu_bias_act_jvp_ below).
void cpu_tanh_jvp_(at::Tensor& ta, const at::Tensor& t) {
  TORCH_CHECK(ta.is_contiguous() && t.is_contiguous() && ta.sizes() == t.sizes() &&
                  ta.scalar_type() == t.scalar_type(),
              "ta, t must be contiguous and of one shape and dtype");
  const int64_t numel = ta.numel();
  TNF_DISPATCH(ta, [&](auto zero) {
    using T = decltype(zero);
    T* tp = ta.data_ptr<T>();
    const T* hp = t.data_ptr<T>();
    at::parallel_for(0, numel, 16384, [&](int64_t lo, int64_t hi) {
#pragma omp simd
      for (int64_t e = lo; e < hi; ++e) tp[e] *= T(1) - hp[e] * hp[e];
    });
  });
}

// Exact-mode filter MLP, one linear's epilogue in place (value and forward-mode tangent):
// a <- sigma(a + bias), ta <- sigma'(a + bias) ta, for act 0 = SiLU, 2 = sigmoid. Replaces
// addmm's bias copy, torch.sigmoid and a tangent pass (three passes over [U, C] -> one).
void cpu_bias_act_jvp_(at::Tensor& a, at::Tensor& ta, const at::Tensor& bias, int64_t act) {
  TORCH_CHECK(a.is_contiguous() && ta.is_contiguous() && bias.is_contiguous() &&
                  a.sizes() == ta.sizes() && a.dim() == 2 && bias.numel() == a.size(1) &&
                  bias.scalar_type() == a.scalar_type(),
              "a, ta must be contiguous [U, C] and bias [C] of their dtype");
  TORCH_CHECK(act == 0 || act == 2, "act must be 0 (silu) or 2 (sigmoid)");
  const int64_t u = a.size(0), width = a.size(1);
  TNF_DISPATCH(a, [&](auto zero) {
    using T = decltype(zero);
    T* ap = a.data_ptr<T>();
    T* tp = ta.data_ptr<T>();
    const T* bp = bias.data_ptr<T>();
    // one register of lanes (V = Vec<T>) or, at the end of a row, one scalar (V = T)
    auto step = [&](auto x, auto ta) {
      const decltype(x) sg = sigmoid_arith(x);
      if (act == 0) return std::make_pair(x * sg, ta * silu_slope(x, sg));
      return std::make_pair(sg, ta * (sg * (T(1) - sg)));
    };
    at::parallel_for(0, u, 64, [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r) {
        T* ar = ap + r * width;
        T* tr = tp + r * width;
        int64_t c = 0;
        for (; c + kLanes<T> <= width; c += kLanes<T>) {
          const auto [h, th] =
              step(vload(ar + c, kLanes<T>) + vload(bp + c, kLanes<T>), vload(tr + c, kLanes<T>));
          vstore(ar + c, h, kLanes<T>);
          vstore(tr + c, th, kLanes<T>);
        }
        for (; c < width; ++c) std::tie(ar[c], tr[c]) = step(ar[c] + bp[c], tr[c]);
      }
    });
  });
}

// val = h phi, der = th phi + h dphi (phi, dphi [U, 1]; h, th, val, der [U, C]).
void cpu_cutoff_jvp(const at::Tensor& h, const at::Tensor& th, const at::Tensor& phi,
                    const at::Tensor& dphi, at::Tensor& val, at::Tensor& der) {
  TORCH_CHECK(h.is_contiguous() && th.is_contiguous() && phi.is_contiguous() &&
                  dphi.is_contiguous() && val.is_contiguous() && der.is_contiguous(),
              "inputs must be contiguous");
  const int64_t u = h.size(0), width = h.size(1);
  TNF_DISPATCH(h, [&](auto zero) {
    using T = decltype(zero);
    const T* hp = h.data_ptr<T>();
    const T* tp = th.data_ptr<T>();
    const T* pp = phi.data_ptr<T>();
    const T* dp = dphi.data_ptr<T>();
    T* vp = val.data_ptr<T>();
    T* op = der.data_ptr<T>();
    at::parallel_for(0, u, 64, [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r) {
        const T p = pp[r], dpr = dp[r];
        const int64_t o = r * width;
#pragma omp simd
        for (int64_t c = 0; c < width; ++c) {
          vp[o + c] = hp[o + c] * p;
          op[o + c] = tp[o + c] * p + hp[o + c] * dpr;
        }
      }
    });
  });
}

// Spline interval and local coordinate per edge (cpu_backend.Spline.locate, same float64
// arithmetic, so the same bits): t = (d - lo) / h, k = clamp(floor t, 0, n - 1),
// s = clamp(t - k, 0, 1) in the dtype of d; k = -1 where d < lo (in d's dtype) when
// zero_below. One pass instead of ~10 tensor ops (0.2 ms of a 64-molecule call).
std::vector<at::Tensor> cpu_spline_locate(const at::Tensor& d, double lo, double h, int64_t n,
                                          bool zero_below) {
  TORCH_CHECK(d.dim() == 1 && d.is_contiguous(), "d must be a contiguous 1-D tensor");
  TORCH_CHECK(h > 0 && n > 0, "spline step and interval count must be positive");
  auto k = at::empty({d.size(0)}, d.options().dtype(at::kLong));
  auto s = at::empty_like(d);
  TNF_DISPATCH(d, [&](auto zero) {
    using T = decltype(zero);
    const T* dp = d.data_ptr<T>();
    int64_t* kp = k.data_ptr<int64_t>();
    T* sp = s.data_ptr<T>();
    const double top = double(n - 1);
    at::parallel_for(0, d.size(0), 16384, [&](int64_t e0, int64_t e1) {
      for (int64_t e = e0; e < e1; ++e) {
        const double de = double(dp[e]);
        const double t = (de - lo) / h;
        const double kf = std::min(std::max(std::floor(t), 0.0), top);
        sp[e] = T(std::min(std::max(t - kf, 0.0), 1.0));
        kp[e] = zero_below && dp[e] < T(lo) ? -1 : int64_t(kf);  // compared in T, as torch does
      }
    });
  });
  return {k, s};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(tensornet_fast, m) {
  m.def("cpu_embed_fwd", &cpu_embed_fwd);
  m.def("cpu_embed_bwd", &cpu_embed_bwd);
  m.def("cpu_gemm_pack", &cpu_gemm_pack);
  m.def("cpu_layer_fwd", &cpu_layer_fwd);
  m.def("cpu_layer_bwd", &cpu_layer_bwd);
  m.def("cpu_embed_combine_fwd", &cpu_embed_combine_fwd);
  m.def("cpu_embed_combine_bwd", &cpu_embed_combine_bwd);
  m.def("cpu_sq_norms", &cpu_sq_norms);
  m.def("cpu_sq_norms_bwd", &cpu_sq_norms_bwd);
  m.def("cpu_spline_locate", &cpu_spline_locate);
  m.def("cpu_rows_fwd", &cpu_rows_fwd);
  m.def("cpu_rows_bwd", &cpu_rows_bwd);
  m.def("cpu_tanh_jvp_(Tensor(a!) ta, Tensor t) -> ()", &cpu_tanh_jvp_);
  m.def("cpu_bias_act_jvp_(Tensor(a!) a, Tensor(b!) ta, Tensor bias, int act) -> ()",
        &cpu_bias_act_jvp_);
  m.def("cpu_cutoff_jvp(Tensor h, Tensor th, Tensor phi, Tensor dphi, Tensor(a!) val, "
        "Tensor(b!) der) -> ()",
        &cpu_cutoff_jvp);
}
