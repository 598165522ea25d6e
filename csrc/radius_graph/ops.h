// The radius graph's operators (torch.ops.tensornet_fast.radius_graph, filter_pairs,
// radius_graph_plan, radius_graph_static and the *_cuda_emulated ops; schemas in
// csrc/registration.cpp, fake kernels in tensornet_fast/neighbors/fakes.py):
//   cpu.cpp            the OpenMP cell list (CPU kernels of the four ops)
//   cuda_glue.cpp      the CUDA kernels' torch glue (CUDA builds only, -DTNF_WITH_CUDA)
//   cuda_emulated.cpp  the same glue and cuda.cu's kernels compiled for the host (always built;
//                      cuda_emulated_kernels.cpp, cuda_on_host.h)
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <tuple>

namespace tnf {

// (edge_index [2, E], shifts [E, 3], vec [E, 3], dist [E], row_ptr [N + 1])
using GraphResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

GraphResult radius_graph_cpu(const at::Tensor& pos, const at::Tensor& batch,
                             const c10::optional<at::Tensor>& box, double cutoff,
                             double cutoff_lower, bool loop);
GraphResult filter_pairs_cpu(const at::Tensor& pos, const at::Tensor& batch,
                             const c10::optional<at::Tensor>& box, const at::Tensor& edge_index,
                             const at::Tensor& shifts, double cutoff, double cutoff_lower,
                             bool loop);
at::Tensor radius_graph_plan_cpu(const at::Tensor& pos, const at::Tensor& batch,
                                 const c10::optional<at::Tensor>& box, double cutoff,
                                 double cutoff_lower, double max_abs);
void radius_graph_static_cpu(const at::Tensor& pos, const at::Tensor& batch,
                             const at::Tensor& plan, const at::Tensor& plan_dev, bool loop,
                             at::Tensor edge_index, at::Tensor shifts, at::Tensor vec,
                             at::Tensor dist, at::Tensor row_ptr, at::Tensor status);

#ifdef TNF_WITH_CUDA
GraphResult radius_graph_cuda(const at::Tensor& pos, const at::Tensor& batch,
                              const c10::optional<at::Tensor>& box, double cutoff,
                              double cutoff_lower, bool loop);
GraphResult filter_pairs_cuda(const at::Tensor& pos, const at::Tensor& batch,
                              const c10::optional<at::Tensor>& box, const at::Tensor& edge_index,
                              const at::Tensor& shifts, double cutoff, double cutoff_lower,
                              bool loop);
void radius_graph_static_cuda(const at::Tensor& pos, const at::Tensor& batch,
                              const at::Tensor& plan, const at::Tensor& plan_dev, bool loop,
                              at::Tensor edge_index, at::Tensor shifts, at::Tensor vec,
                              at::Tensor dist, at::Tensor row_ptr, at::Tensor status);
#endif

// The CUDA path (cuda.cu's kernels, glue.h) compiled for the host, on CPU tensors: same schemas
// as radius_graph, filter_pairs and radius_graph_static (cuda_emulated.cpp).
GraphResult radius_graph_cuda_emulated(const at::Tensor& pos, const at::Tensor& batch,
                                       const c10::optional<at::Tensor>& box, double cutoff,
                                       double cutoff_lower, bool loop);
GraphResult filter_pairs_cuda_emulated(const at::Tensor& pos, const at::Tensor& batch,
                                       const c10::optional<at::Tensor>& box,
                                       const at::Tensor& edge_index, const at::Tensor& shifts,
                                       double cutoff, double cutoff_lower, bool loop);
void radius_graph_static_cuda_emulated(const at::Tensor& pos, const at::Tensor& batch,
                                       const at::Tensor& plan, const at::Tensor& plan_dev,
                                       bool loop, at::Tensor edge_index, at::Tensor shifts,
                                       at::Tensor vec, at::Tensor dist, at::Tensor row_ptr,
                                       at::Tensor status);

}  // namespace tnf
