// The interaction layer ops (cpu_layer_fwd / cpu_layer_bwd): normalisation, channel GEMMs,
// message pass and products of one layer in one parallel region per direction.
// Per atom and channel everything is 9 coefficients (stride F in [N, 9, F]); channel linears
// are GEMMs (float32: gemm_packed; float64: BLAS, gemm.h) on the component slices [N, F] with
// leading dimension 9F, so nothing is copied or permuted. Inference only: no weight gradients.
#include "common.h"
#include "algebra.h"
#include "edge_passes.h"
#include "gemm.h"

namespace tnf {
namespace cpu {
namespace {

void check_layer(const at::Tensor& x, const at::Tensor& w, const at::Tensor& q,
                 const at::Tensor& row_ptr, const at::Tensor& col, const at::Tensor& tab,
                 const at::Tensor& idx) {
  check_node(x, w);
  TORCH_CHECK(w.size(0) == 6 && q.is_contiguous() && q.size(0) == x.size(0) &&
                  q.scalar_type() == x.scalar_type(),
              "w [6, F, F], q [N] in the dtype of x");
  check_csr(row_ptr, col, tab, idx);
  TORCH_CHECK(row_ptr.size(0) == x.size(0) + 1, "row_ptr must be [N + 1]");
  TORCH_CHECK(tab.size(2) == 3 * x.size(2), "filter width must be 3F");
}

}  // namespace

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

}  // namespace cpu
}  // namespace tnf
