// The CUDA kernels of torch.ops.tensornet_fast.radius_graph / filter_pairs / radius_graph_static
// (registered in csrc/registration.cpp): glue.h on CUDA tensors with the kernels of cuda.cu.
// Compiled only when setup.py builds with CUDA (-DTNF_WITH_CUDA). Same algorithm and output as
// the CPU path; the *_cuda_emulated ops (cuda_emulated.cpp) run this glue and these kernels on
// the host, which is how they are tested without a GPU.
#ifdef TNF_WITH_CUDA

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda.h"  // the kernels' launchers in tnf::cuda
#include "glue.h"
#include "ops.h"

namespace tnf {
namespace {

struct CudaDevice {
  static constexpr const char* kName = "CUDA";
  static bool holds(const at::Tensor& t) { return t.is_cuda(); }
  using Guard = c10::cuda::CUDAGuard;
  static void* stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
};

}  // namespace

GraphResult radius_graph_cuda(const at::Tensor& pos, const at::Tensor& batch,
                              const c10::optional<at::Tensor>& box, double cutoff,
                              double cutoff_lower, bool loop) {
  return glue::radius_graph<CudaDevice>(pos, batch, box, cutoff, cutoff_lower, loop);
}

GraphResult filter_pairs_cuda(const at::Tensor& pos, const at::Tensor& batch,
                              const c10::optional<at::Tensor>& box, const at::Tensor& edge_index,
                              const at::Tensor& shifts, double cutoff, double cutoff_lower,
                              bool loop) {
  return glue::filter_pairs<CudaDevice>(pos, batch, box, edge_index, shifts, cutoff,
                                        cutoff_lower, loop);
}

void radius_graph_static_cuda(const at::Tensor& pos, const at::Tensor& batch,
                              const at::Tensor& plan, const at::Tensor& plan_dev, bool loop,
                              at::Tensor edge_index, at::Tensor shifts, at::Tensor vec,
                              at::Tensor dist, at::Tensor row_ptr, at::Tensor status) {
  glue::radius_graph_static<CudaDevice>(pos, batch, plan, plan_dev, loop, edge_index, shifts, vec,
                                        dist, row_ptr, status);
}

}  // namespace tnf

#endif  // TNF_WITH_CUDA
