// The embedding's edge passes (cpu_embed_fwd / cpu_embed_bwd): per receiver, the filtered
// neighbour embeddings times the edge geometry, and the backward to dE/d(edge_vec). Filter
// sources and the layer's message passes: edge_passes.h.
#include "common.h"
#include "edge_passes.h"

namespace tnf {
namespace cpu {
namespace {

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

}  // namespace

// Embedding: R_i[k, c] = sum_e f_e[blk(k), c] * Z[pair_e, c] * geo_e[k] (edge_geometry of
// rhat [E, 3]).
at::Tensor cpu_embed_fwd(const at::Tensor& row_ptr, const at::Tensor& rhat, const at::Tensor& ztab,
                         const at::Tensor& pair, const at::Tensor& tab, const at::Tensor& idx,
                         const c10::optional<at::Tensor>& s, double inv_h) {
  check_csr(row_ptr, pair, tab, idx);
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
                         const at::Tensor& dist, const at::Tensor& ztab, const at::Tensor& pair,
                         const at::Tensor& gr, const at::Tensor& tab,
                         const c10::optional<at::Tensor>& dtab, const at::Tensor& idx,
                         const c10::optional<at::Tensor>& s, double inv_h, const at::Tensor& raw,
                         const at::Tensor& gsq) {
  check_csr(row_ptr, pair, tab, idx);
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

}  // namespace cpu
}  // namespace tnf
