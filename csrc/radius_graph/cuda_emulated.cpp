// The *_cuda_emulated ops: the CUDA radius graph's glue (glue.h) on CPU tensors with ATen's
// CPU ops, driving the kernels of cuda.cu compiled for the host (cuda_emulated_kernels.cpp:
// every (block, thread) of a launch run in turn). Same schemas as radius_graph, filter_pairs
// and radius_graph_static, registered for CPU tensors in every build, so tests compare the
// CUDA code path with the CPU search on machines without a GPU
// (tests/test_radius_graph_cuda_host.py). Not meant for use: the emulation is sequential.
#define TNF_CUDA_KERNELS cuda_emulated
#include "cuda.h"  // the kernels' launchers in tnf::cuda_emulated
#include "glue.h"
#include "ops.h"

namespace tnf {
namespace {

struct HostDevice {
  static constexpr const char* kName = "CPU";
  static bool holds(const at::Tensor& t) { return t.is_cpu(); }
  struct Guard {
    explicit Guard(const at::Device&) {}
  };
  static void* stream() { return nullptr; }
};

}  // namespace

GraphResult radius_graph_cuda_emulated(const at::Tensor& pos, const at::Tensor& batch,
                                       const c10::optional<at::Tensor>& box, double cutoff,
                                       double cutoff_lower, bool loop) {
  return glue::radius_graph<HostDevice>(pos, batch, box, cutoff, cutoff_lower, loop);
}

GraphResult filter_pairs_cuda_emulated(const at::Tensor& pos, const at::Tensor& batch,
                                       const c10::optional<at::Tensor>& box,
                                       const at::Tensor& edge_index, const at::Tensor& shifts,
                                       double cutoff, double cutoff_lower, bool loop) {
  return glue::filter_pairs<HostDevice>(pos, batch, box, edge_index, shifts, cutoff,
                                        cutoff_lower, loop);
}

void radius_graph_static_cuda_emulated(const at::Tensor& pos, const at::Tensor& batch,
                                       const at::Tensor& plan, const at::Tensor& plan_dev,
                                       bool loop, at::Tensor edge_index, at::Tensor shifts,
                                       at::Tensor vec, at::Tensor dist, at::Tensor row_ptr,
                                       at::Tensor status) {
  glue::radius_graph_static<HostDevice>(pos, batch, plan, plan_dev, loop, edge_index, shifts, vec,
                                        dist, row_ptr, status);
}

}  // namespace tnf
