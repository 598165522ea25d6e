// TensorNet edge passes for the "cpu" backend (tensornet_fast/cpu_backend.py is the spec and the
// torch fallback of every function here). Tensors per atom and channel are 9 coefficients in an
// orthonormal basis: 0 = I, 1..3 = A, 4..8 = S; filters are 3F vectors blocked I | A | S.
//
// One thread owns one receiver row of the CSR (edges sorted by receiver), so the forward needs
// no atomics: per edge the filter (3F) is formed in a thread-local buffer and the 9F message is
// accumulated in another, never stored per edge. The dE/dY backward uses the graph's symmetry
// (edge (i, j, s) has the reverse (j, i, -s) with the same distance, hence the same filter):
// dE/dY_i = sum_j f_ij (*) dE/dM_j is again a receiver-CSR gather.
//
// Filter source per edge e: `tab` [U, 1, 3F] rows picked by idx[e] (exact mode: one row per
// distinct distance, derivative rows in `dtab`), or a cubic spline `tab` [n, 4, 3F] (tabulated
// mode: interval idx[e], local coordinate s[e], derivative = dp/ds * inv_h); idx[e] < 0 -> 0.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/torch.h>

#include <cmath>
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
    const T* c0 = tab + r * 4 * width;
    const T* c1 = c0 + width;
    const T* c2 = c1 + width;
    const T* c3 = c2 + width;
#pragma omp simd
    for (int64_t c = 0; c < width; ++c) f[c] = ((c3[c] * t + c2[c]) * t + c1[c]) * t + c0[c];
    if (fp) {
      const T h = inv_h;
#pragma omp simd
      for (int64_t c = 0; c < width; ++c)
        fp[c] = ((T(3) * c3[c] * t + T(2) * c2[c]) * t + c1[c]) * h;
    }
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
  src.spline = tab.size(1) == 4;
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
  TORCH_CHECK(tab.dim() == 3 && (tab.size(1) == 1 || tab.size(1) == 4), "tab is [U, 1|4, 3F]");
}

// M_i[k, c] = sum_{e in row i} f_e[blk(k), c] * y[col_e, k, c].  y [N, 9, F] -> [N, 9, F]
at::Tensor cpu_message_fwd(const at::Tensor& row_ptr, const at::Tensor& col, const at::Tensor& y,
                           const at::Tensor& tab, const at::Tensor& idx,
                           const c10::optional<at::Tensor>& s, double inv_h) {
  check(row_ptr, col, tab, idx);
  TORCH_CHECK(y.is_contiguous() && y.dim() == 3 && y.size(1) == 9, "y must be [N, 9, F]");
  const int64_t n = y.size(0), nf = y.size(2);
  TORCH_CHECK(tab.size(2) == 3 * nf, "filter width must be 3F");
  auto out = at::empty_like(y);
  TNF_DISPATCH(y, [&](auto zero) {
    using T = decltype(zero);
    const auto src = make_source<T>(tab, c10::nullopt, idx, s, inv_h);
    const int64_t* rp = row_ptr.data_ptr<int64_t>();
    const int64_t* cj = col.data_ptr<int64_t>();
    const T* yp = y.data_ptr<T>();
    T* op = out.data_ptr<T>();
    at::parallel_for(0, n, 8, [&](int64_t lo, int64_t hi) {
      std::vector<T> f(3 * nf);
      for (int64_t i = lo; i < hi; ++i) {
        T* acc = op + i * 9 * nf;
        for (int64_t x = 0; x < 9 * nf; ++x) acc[x] = T(0);
        for (int64_t e = rp[i]; e < rp[i + 1]; ++e) {
          src.load(e, f.data(), nullptr);
          const T* yj = yp + cj[e] * 9 * nf;
          for (int k = 0; k < 9; ++k) {
            const T* fk = f.data() + kBlock[k] * nf;
            const T* yk = yj + k * nf;
            T* ak = acc + k * nf;
#pragma omp simd
            for (int64_t c = 0; c < nf; ++c) ak[c] += fk[c] * yk[c];
          }
        }
      }
    });
  });
  return out;
}

// Backward of cpu_message_fwd given gm = dE/dM [N, 9, F]:
//   gd[e] = sum_{k,c} f'_e[blk(k), c] gm[i, k, c] y[j, k, c]   (dE/dd per edge)
//   gy[i] = sum_{e in row i} f_e (*) gm[col_e]                  (symmetric graph, see top)
std::vector<at::Tensor> cpu_message_bwd(const at::Tensor& row_ptr, const at::Tensor& col,
                                        const at::Tensor& y, const at::Tensor& gm,
                                        const at::Tensor& tab,
                                        const c10::optional<at::Tensor>& dtab,
                                        const at::Tensor& idx,
                                        const c10::optional<at::Tensor>& s, double inv_h,
                                        bool need_gy) {
  check(row_ptr, col, tab, idx);
  TORCH_CHECK(y.is_contiguous() && gm.is_contiguous() && y.sizes() == gm.sizes(),
              "y and gm must be contiguous [N, 9, F]");
  TORCH_CHECK(tab.size(1) == 4 || dtab.has_value(), "exact mode needs dtab");
  const int64_t n = y.size(0), nf = y.size(2);
  const int64_t ne = col.size(0);
  auto gd = at::empty({ne}, y.options());
  auto gy = need_gy ? at::empty_like(y) : at::empty({0}, y.options());
  TNF_DISPATCH(y, [&](auto zero) {
    using T = decltype(zero);
    const auto src = make_source<T>(tab, dtab, idx, s, inv_h);
    const int64_t* rp = row_ptr.data_ptr<int64_t>();
    const int64_t* cj = col.data_ptr<int64_t>();
    const T* yp = y.data_ptr<T>();
    const T* gp = gm.data_ptr<T>();
    T* gdp = gd.data_ptr<T>();
    T* gyp = need_gy ? gy.data_ptr<T>() : nullptr;
    at::parallel_for(0, n, 8, [&](int64_t lo, int64_t hi) {
      std::vector<T> f(3 * nf), fp(3 * nf), prod(3 * nf);
      for (int64_t i = lo; i < hi; ++i) {
        const T* gi = gp + i * 9 * nf;
        T* acc = need_gy ? gyp + i * 9 * nf : nullptr;
        if (acc)
          for (int64_t x = 0; x < 9 * nf; ++x) acc[x] = T(0);
        for (int64_t e = rp[i]; e < rp[i + 1]; ++e) {
          src.load(e, f.data(), fp.data());
          const int64_t j = cj[e];
          const T* yj = yp + j * 9 * nf;
          // per block: sum over its components of gm_i * y_j  -> [3F], then dot with f'
          for (int64_t x = 0; x < 3 * nf; ++x) prod[x] = T(0);
          for (int k = 0; k < 9; ++k) {
            T* pk = prod.data() + kBlock[k] * nf;
            const T* a = gi + k * nf;
            const T* b = yj + k * nf;
#pragma omp simd
            for (int64_t c = 0; c < nf; ++c) pk[c] += a[c] * b[c];
          }
          T sum = T(0);
#pragma omp simd reduction(+ : sum)
          for (int64_t x = 0; x < 3 * nf; ++x) sum += fp[x] * prod[x];
          gdp[e] = sum;
          if (acc) {
            const T* gj = gp + j * 9 * nf;
            for (int k = 0; k < 9; ++k) {
              const T* fk = f.data() + kBlock[k] * nf;
              const T* gk = gj + k * nf;
              T* ak = acc + k * nf;
#pragma omp simd
              for (int64_t c = 0; c < nf; ++c) ak[c] += fk[c] * gk[c];
            }
          }
        }
      }
    });
  });
  return {gd, gy};
}

// Embedding: R_i[k, c] = sum_e f_e[blk(k), c] * Z[pair_e, c] * geo[e, k]; geo [E, 9] holds
// (sqrt3, sqrt2 rhat, S-basis coefficients of rhat rhat^T) per edge.
at::Tensor cpu_embed_fwd(const at::Tensor& row_ptr, const at::Tensor& geo, const at::Tensor& ztab,
                         const at::Tensor& pair, const at::Tensor& tab, const at::Tensor& idx,
                         const c10::optional<at::Tensor>& s, double inv_h) {
  check(row_ptr, pair, tab, idx);
  TORCH_CHECK(geo.is_contiguous() && ztab.is_contiguous(), "geo, ztab must be contiguous");
  const int64_t n = row_ptr.size(0) - 1, nf = ztab.size(1);
  auto out = at::empty({n, 9, nf}, ztab.options());
  TNF_DISPATCH(ztab, [&](auto zero) {
    using T = decltype(zero);
    const auto src = make_source<T>(tab, c10::nullopt, idx, s, inv_h);
    const int64_t* rp = row_ptr.data_ptr<int64_t>();
    const int64_t* pp = pair.data_ptr<int64_t>();
    const T* gp = geo.data_ptr<T>();
    const T* zp = ztab.data_ptr<T>();
    T* op = out.data_ptr<T>();
    at::parallel_for(0, n, 8, [&](int64_t lo, int64_t hi) {
      std::vector<T> f(3 * nf);
      for (int64_t i = lo; i < hi; ++i) {
        T* acc = op + i * 9 * nf;
        for (int64_t x = 0; x < 9 * nf; ++x) acc[x] = T(0);
        for (int64_t e = rp[i]; e < rp[i + 1]; ++e) {
          src.load(e, f.data(), nullptr);
          const T* z = zp + pp[e] * nf;
          for (int b = 0; b < 3; ++b) {
            T* fb = f.data() + b * nf;
#pragma omp simd
            for (int64_t c = 0; c < nf; ++c) fb[c] *= z[c];
          }
          const T* g = gp + e * 9;
          for (int k = 0; k < 9; ++k) {
            const T gk = g[k];
            if (gk == T(0)) continue;  // self-loops: only the I component
            const T* fk = f.data() + kBlock[k] * nf;
            T* ak = acc + k * nf;
#pragma omp simd
            for (int64_t c = 0; c < nf; ++c) ak[c] += fk[c] * gk;
          }
        }
      }
    });
  });
  return out;
}

// Backward of cpu_embed_fwd given gr = dE/dR [N, 9, F]:
//   gd[e]      = sum_k geo[e, k] sum_c f'_e[blk(k), c] Z[c] gr[i, k, c]
//   ggeo[e, k] = sum_c f_e[blk(k), c] Z[c] gr[i, k, c]          (chained to rhat in Python)
std::vector<at::Tensor> cpu_embed_bwd(const at::Tensor& row_ptr, const at::Tensor& geo,
                                      const at::Tensor& ztab, const at::Tensor& pair,
                                      const at::Tensor& gr, const at::Tensor& tab,
                                      const c10::optional<at::Tensor>& dtab,
                                      const at::Tensor& idx, const c10::optional<at::Tensor>& s,
                                      double inv_h) {
  check(row_ptr, pair, tab, idx);
  TORCH_CHECK(gr.is_contiguous() && geo.is_contiguous() && ztab.is_contiguous(),
              "gr, geo, ztab must be contiguous");
  TORCH_CHECK(tab.size(1) == 4 || dtab.has_value(), "exact mode needs dtab");
  const int64_t n = row_ptr.size(0) - 1, nf = ztab.size(1);
  const int64_t ne = pair.size(0);
  auto gd = at::empty({ne}, gr.options());
  auto ggeo = at::empty({ne, 9}, gr.options());
  TNF_DISPATCH(gr, [&](auto zero) {
    using T = decltype(zero);
    const auto src = make_source<T>(tab, dtab, idx, s, inv_h);
    const int64_t* rp = row_ptr.data_ptr<int64_t>();
    const int64_t* pp = pair.data_ptr<int64_t>();
    const T* gp = geo.data_ptr<T>();
    const T* zp = ztab.data_ptr<T>();
    const T* grp = gr.data_ptr<T>();
    T* gdp = gd.data_ptr<T>();
    T* ggp = ggeo.data_ptr<T>();
    at::parallel_for(0, n, 8, [&](int64_t lo, int64_t hi) {
      std::vector<T> f(3 * nf), fp(3 * nf);
      for (int64_t i = lo; i < hi; ++i) {
        const T* gi = grp + i * 9 * nf;
        for (int64_t e = rp[i]; e < rp[i + 1]; ++e) {
          src.load(e, f.data(), fp.data());
          const T* z = zp + pp[e] * nf;
          const T* g = gp + e * 9;
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
            ggp[e * 9 + k] = sv;
            total += g[k] * sd;
          }
          gdp[e] = total;
        }
      }
    });
  });
  return {gd, ggeo};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(tensornet_fast, m) {
  m.def("cpu_message_fwd", &cpu_message_fwd);
  m.def("cpu_message_bwd", &cpu_message_bwd);
  m.def("cpu_embed_fwd", &cpu_embed_fwd);
  m.def("cpu_embed_bwd", &cpu_embed_bwd);
}
