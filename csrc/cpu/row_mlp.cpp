// Row-wise MLP stacks (cpu_rows_fwd / cpu_rows_bwd) with their activations.
// The [N, C] per-atom MLPs of the fused path (embedding: LayerNorm + linears_scalar; output:
// out_norm + linear + head), rows split over threads in ONE parallel region, each thread
// running ATen's LayerNorm, addmm and activation kernels on its rows (sequential inside the
// region). Through torch they were ~20 ops per direction, each its own parallel region and
// dispatch (64 g2 molecules: ~1 ms of the call with passive waiting).
// Activations (ids as in cpu_backend._ACTIVATION_IDS): 0 SiLU, 1 tanh, 2 sigmoid,
// 3 shifted softplus (softplus(x) - log 2), 4 mish; -1 after a layer: no activation.
#include "common.h"
#include "activations.h"
#include "gemm.h"

#include <ATen/ops/addmm.h>
#include <ATen/ops/mish.h>
#include <ATen/ops/mish_backward.h>
#include <ATen/ops/native_layer_norm.h>
#include <ATen/ops/native_layer_norm_backward.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/sigmoid_backward.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/silu_backward.h>
#include <ATen/ops/softplus.h>
#include <ATen/ops/softplus_backward.h>
#include <ATen/ops/tanh.h>
#include <ATen/ops/tanh_backward.h>

namespace tnf {
namespace cpu {
namespace {

// SiLU (act 0) or sigmoid (act 2) of float32 rows through exp_arith, and SiLU's backward:
// aten's float32 silu took ~1.5 ns per element on one core here (85 us for [227, 256], more
// than the LayerNorm and a third of the linear before it). With the float32 distance glue of
// the same change, 64 g2 molecules: whole call 0.982x (interleaved A/B).
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

}  // namespace

// LayerNorm(x) then h <- act_l(h W_l^T + b_l) for each layer l.  x [N, C] -> [N, C_L];
// packed: cpu_gemm_pack(ws[l], true) or empty per layer.
// Returns (mean [N, 1], rstd [N, 1], pre_0, out_0, pre_1, out_1, ...) for cpu_rows_bwd; the
// stack's output is the last out_l. A layer without activation (act -1) returns an empty out_l
// (its output is pre_l): a custom op's outputs must not alias each other (opcheck, AOT autograd).
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
    post[l] = acts[l] >= 0 ? at::empty_like(pre[l]) : pre[l];  // aliased only inside the op
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
  std::vector<at::Tensor> res{mean, rstd};
  for (size_t l = 0; l < nl; ++l) {
    res.push_back(pre[l]);
    res.push_back(acts[l] >= 0 ? post[l] : at::empty({0}, x.options()));
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

}  // namespace cpu
}  // namespace tnf
