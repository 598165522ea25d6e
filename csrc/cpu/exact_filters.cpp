// Exact-mode filter helpers: forward-mode (value + tangent) epilogues of the filter MLP
// (cpu_tanh_jvp_, cpu_bias_act_jvp_, cpu_cutoff_jvp) and the spline interval lookup of the
// tabulated mode (cpu_spline_locate).
#include "common.h"
#include "activations.h"

namespace tnf {
namespace cpu {

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

}  // namespace cpu
}  // namespace tnf
