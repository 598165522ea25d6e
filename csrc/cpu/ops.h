// The "cpu" backend's operators (torch.ops.tensornet_fast.cpu_*; schemas in
// csrc/registration.cpp, fake kernels in tensornet_fast/backends/cpu/fakes.py). One line per op
// here; what each computes is documented at its definition:
//   gemm.cpp           cpu_gemm_pack
//   edge_passes.cpp    cpu_embed_fwd, cpu_embed_bwd
//   layer_ops.cpp      cpu_layer_fwd, cpu_layer_bwd
//   embedding_ops.cpp  cpu_embed_combine_fwd / _bwd, cpu_sq_norms, cpu_sq_norms_bwd
//   row_mlp.cpp        cpu_rows_fwd, cpu_rows_bwd
//   exact_filters.cpp  cpu_tanh_jvp_, cpu_bias_act_jvp_, cpu_cutoff_jvp, cpu_spline_locate
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <vector>

namespace tnf {
namespace cpu {

// True when this build has the packed float32 GEMM (AVX2 + FMA): cpu_gemm_pack then packs
// float32 weights whose output width is a multiple of 16 (the fake kernel needs to know).
bool packed_gemm_available();

at::Tensor cpu_gemm_pack(const at::Tensor& w, bool transpose);

at::Tensor cpu_embed_fwd(const at::Tensor& row_ptr, const at::Tensor& rhat, const at::Tensor& ztab,
                         const at::Tensor& pair, const at::Tensor& tab, const at::Tensor& idx,
                         const c10::optional<at::Tensor>& s, double inv_h);
at::Tensor cpu_embed_bwd(const at::Tensor& row_ptr, const at::Tensor& rhat,
                         const at::Tensor& dist, const at::Tensor& ztab, const at::Tensor& pair,
                         const at::Tensor& gr, const at::Tensor& tab,
                         const c10::optional<at::Tensor>& dtab, const at::Tensor& idx,
                         const c10::optional<at::Tensor>& s, double inv_h, const at::Tensor& raw,
                         const at::Tensor& gsq);

std::vector<at::Tensor> cpu_layer_fwd(const at::Tensor& x, const at::Tensor& w,
                                      const at::Tensor& w_packed, const at::Tensor& q, bool o3,
                                      const at::Tensor& row_ptr, const at::Tensor& col,
                                      const at::Tensor& tab, const at::Tensor& idx,
                                      const c10::optional<at::Tensor>& s, double inv_h);
std::vector<at::Tensor> cpu_layer_bwd(const at::Tensor& go, const at::Tensor& x,
                                      const at::Tensor& y, const at::Tensor& m,
                                      const at::Tensor& dx, const at::Tensor& w,
                                      const at::Tensor& w_packed, const at::Tensor& q, bool o3,
                                      const at::Tensor& row_ptr, const at::Tensor& col,
                                      const at::Tensor& tab,
                                      const c10::optional<at::Tensor>& dtab,
                                      const at::Tensor& idx, const c10::optional<at::Tensor>& s,
                                      double inv_h);

std::vector<at::Tensor> cpu_embed_combine_fwd(const at::Tensor& raw, const at::Tensor& norm,
                                              const at::Tensor& w, const at::Tensor& w_packed);
std::vector<at::Tensor> cpu_embed_combine_bwd(const at::Tensor& gx, const at::Tensor& p,
                                              const at::Tensor& norm, const at::Tensor& w,
                                              const at::Tensor& w_packed);
at::Tensor cpu_sq_norms(const at::Tensor& x, bool blocks);
at::Tensor cpu_sq_norms_bwd(const at::Tensor& x, const at::Tensor& g);

std::vector<at::Tensor> cpu_rows_fwd(const at::Tensor& x, const at::Tensor& ln_w,
                                     const at::Tensor& ln_b, double eps,
                                     const std::vector<at::Tensor>& ws,
                                     const std::vector<at::Tensor>& bs,
                                     const std::vector<int64_t>& acts,
                                     const std::vector<at::Tensor>& packed);
at::Tensor cpu_rows_bwd(const at::Tensor& g, const at::Tensor& x, const at::Tensor& ln_w,
                        const at::Tensor& ln_b, const std::vector<at::Tensor>& ws,
                        const std::vector<int64_t>& acts, const at::Tensor& mean,
                        const at::Tensor& rstd, const std::vector<at::Tensor>& pre_post,
                        const std::vector<at::Tensor>& packed);

void cpu_tanh_jvp_(at::Tensor& ta, const at::Tensor& t);
void cpu_bias_act_jvp_(at::Tensor& a, at::Tensor& ta, const at::Tensor& bias, int64_t act);
void cpu_cutoff_jvp(const at::Tensor& h, const at::Tensor& th, const at::Tensor& phi,
                    const at::Tensor& dphi, at::Tensor& val, at::Tensor& der);
std::vector<at::Tensor> cpu_spline_locate(const at::Tensor& d, double lo, double h, int64_t n,
                                          bool zero_below);

}  // namespace cpu
}  // namespace tnf
