// Node-level embedding ops: the combine X = (W R) (*) norm with its backward, and the squared
// norms per channel (feeding the embedding and output MLPs) with theirs.
#include "common.h"
#include "gemm.h"

namespace tnf {
namespace cpu {
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

}  // namespace cpu
}  // namespace tnf
