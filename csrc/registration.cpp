// Every operator of torch.ops.tensornet_fast: its schema (the one TORCH_LIBRARY block) and its
// kernels per dispatch key. Python calls the ops positionally, so argument order and return
// types are the contract; names only document. Mutated arguments carry alias annotations
// (Tensor(a!)). Fake (meta) kernels for torch.compile / torch.export are registered in Python:
// tensornet_fast/backends/cpu/fakes.py and tensornet_fast/neighbors/fakes.py.
#include <torch/library.h>

#include "cpu/ops.h"
#include "radius_graph/ops.h"

TORCH_LIBRARY(tensornet_fast, m) {
  // ------------------------------------------------------------------ cpu backend (csrc/cpu/)
  m.def("cpu_gemm_pack(Tensor w, bool transpose) -> Tensor");
  m.def(
      "cpu_embed_fwd(Tensor row_ptr, Tensor rhat, Tensor ztab, Tensor pair, Tensor tab, "
      "Tensor idx, Tensor? s, float inv_h) -> Tensor");
  m.def(
      "cpu_embed_bwd(Tensor row_ptr, Tensor rhat, Tensor dist, Tensor ztab, Tensor pair, "
      "Tensor gr, Tensor tab, Tensor? dtab, Tensor idx, Tensor? s, float inv_h, Tensor raw, "
      "Tensor gsq) -> Tensor");
  m.def(
      "cpu_layer_fwd(Tensor x, Tensor w, Tensor w_packed, Tensor q, bool o3, Tensor row_ptr, "
      "Tensor col, Tensor tab, Tensor idx, Tensor? s, float inv_h) -> Tensor[]");
  m.def(
      "cpu_layer_bwd(Tensor go, Tensor x, Tensor y, Tensor m, Tensor dx, Tensor w, "
      "Tensor w_packed, Tensor q, bool o3, Tensor row_ptr, Tensor col, Tensor tab, Tensor? dtab, "
      "Tensor idx, Tensor? s, float inv_h) -> Tensor[]");
  m.def("cpu_embed_combine_fwd(Tensor raw, Tensor norm, Tensor w, Tensor w_packed) -> Tensor[]");
  m.def(
      "cpu_embed_combine_bwd(Tensor gx, Tensor p, Tensor norm, Tensor w, Tensor w_packed) "
      "-> Tensor[]");
  m.def("cpu_sq_norms(Tensor x, bool blocks) -> Tensor");
  m.def("cpu_sq_norms_bwd(Tensor x, Tensor g) -> Tensor");
  m.def(
      "cpu_spline_locate(Tensor d, float lo, float h, int n, bool zero_below) -> Tensor[]");
  m.def(
      "cpu_rows_fwd(Tensor x, Tensor ln_w, Tensor ln_b, float eps, Tensor[] ws, Tensor[] bs, "
      "int[] acts, Tensor[] packed) -> Tensor[]");
  m.def(
      "cpu_rows_bwd(Tensor g, Tensor x, Tensor ln_w, Tensor ln_b, Tensor[] ws, int[] acts, "
      "Tensor mean, Tensor rstd, Tensor[] pre_post, Tensor[] packed) -> Tensor");
  m.def("cpu_tanh_jvp_(Tensor(a!) ta, Tensor t) -> ()");
  m.def("cpu_bias_act_jvp_(Tensor(a!) a, Tensor(b!) ta, Tensor bias, int act) -> ()");
  m.def(
      "cpu_cutoff_jvp(Tensor h, Tensor th, Tensor phi, Tensor dphi, Tensor(a!) val, "
      "Tensor(b!) der) -> ()");

  // ------------------------------------------------------- radius graph (csrc/radius_graph/)
  m.def(
      "radius_graph(Tensor pos, Tensor batch, Tensor? box, float cutoff, float cutoff_lower, "
      "bool loop) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "filter_pairs(Tensor pos, Tensor batch, Tensor? box, Tensor edge_index, Tensor shifts, "
      "float cutoff, float cutoff_lower, bool loop) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "radius_graph_plan(Tensor pos, Tensor batch, Tensor? box, float cutoff, float cutoff_lower, "
      "float max_abs) -> Tensor");
  m.def(
      "radius_graph_static(Tensor pos, Tensor batch, Tensor plan, Tensor plan_dev, bool loop, "
      "Tensor(a!) edge_index, Tensor(b!) shifts, Tensor(c!) vec, Tensor(d!) dist, "
      "Tensor(e!) row_ptr, Tensor(f!) status) -> ()");
  // The CUDA path's glue and kernels compiled for the host (csrc/radius_graph/cuda_on_host.h),
  // on CPU tensors, for tests without a GPU: the schemas of the three ops above
  m.def(
      "radius_graph_cuda_emulated(Tensor pos, Tensor batch, Tensor? box, float cutoff, "
      "float cutoff_lower, bool loop) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "filter_pairs_cuda_emulated(Tensor pos, Tensor batch, Tensor? box, Tensor edge_index, "
      "Tensor shifts, float cutoff, float cutoff_lower, bool loop) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "radius_graph_static_cuda_emulated(Tensor pos, Tensor batch, Tensor plan, Tensor plan_dev, "
      "bool loop, Tensor(a!) edge_index, Tensor(b!) shifts, Tensor(c!) vec, Tensor(d!) dist, "
      "Tensor(e!) row_ptr, Tensor(f!) status) -> ()");
}

TORCH_LIBRARY_IMPL(tensornet_fast, CPU, m) {
  m.impl("cpu_gemm_pack", &tnf::cpu::cpu_gemm_pack);
  m.impl("cpu_embed_fwd", &tnf::cpu::cpu_embed_fwd);
  m.impl("cpu_embed_bwd", &tnf::cpu::cpu_embed_bwd);
  m.impl("cpu_layer_fwd", &tnf::cpu::cpu_layer_fwd);
  m.impl("cpu_layer_bwd", &tnf::cpu::cpu_layer_bwd);
  m.impl("cpu_embed_combine_fwd", &tnf::cpu::cpu_embed_combine_fwd);
  m.impl("cpu_embed_combine_bwd", &tnf::cpu::cpu_embed_combine_bwd);
  m.impl("cpu_sq_norms", &tnf::cpu::cpu_sq_norms);
  m.impl("cpu_sq_norms_bwd", &tnf::cpu::cpu_sq_norms_bwd);
  m.impl("cpu_spline_locate", &tnf::cpu::cpu_spline_locate);
  m.impl("cpu_rows_fwd", &tnf::cpu::cpu_rows_fwd);
  m.impl("cpu_rows_bwd", &tnf::cpu::cpu_rows_bwd);
  m.impl("cpu_tanh_jvp_", &tnf::cpu::cpu_tanh_jvp_);
  m.impl("cpu_bias_act_jvp_", &tnf::cpu::cpu_bias_act_jvp_);
  m.impl("cpu_cutoff_jvp", &tnf::cpu::cpu_cutoff_jvp);

  m.impl("radius_graph", &tnf::radius_graph_cpu);
  m.impl("filter_pairs", &tnf::filter_pairs_cpu);
  m.impl("radius_graph_plan", &tnf::radius_graph_plan_cpu);
  m.impl("radius_graph_static", &tnf::radius_graph_static_cpu);
  m.impl("radius_graph_cuda_emulated", &tnf::radius_graph_cuda_emulated);
  m.impl("filter_pairs_cuda_emulated", &tnf::filter_pairs_cuda_emulated);
  m.impl("radius_graph_static_cuda_emulated", &tnf::radius_graph_static_cuda_emulated);
}

#ifdef TNF_WITH_CUDA
// radius_graph_plan has no CUDA kernel: the plan is host work (StaticRadiusGraph passes CPU
// tensors and copies the plan to the device itself).
TORCH_LIBRARY_IMPL(tensornet_fast, CUDA, m) {
  m.impl("radius_graph", &tnf::radius_graph_cuda);
  m.impl("filter_pairs", &tnf::filter_pairs_cuda);
  m.impl("radius_graph_static", &tnf::radius_graph_static_cuda);
}
#endif
