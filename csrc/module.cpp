// The one Python module definition of tensornet_fast._C. Operators are defined and registered
// in registration.cpp (schemas, kernels per dispatch key) and called as
// torch.ops.tensornet_fast.<name>; importing this module loads them.
#include <pybind11/pybind11.h>  // not torch/extension.h: nothing here needs torch's API

namespace tnf {
namespace cpu {
bool packed_gemm_available();  // csrc/cpu/ops.h (declared here: that header pulls in ATen)
}  // namespace cpu
}  // namespace tnf

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "tensornet_fast compiled operators (see torch.ops.tensornet_fast)";
  m.attr("with_cuda") =
#ifdef TNF_WITH_CUDA
      true;
#else
      false;
#endif
  // cpu_gemm_pack packs float32 weights only in builds with AVX2 + FMA (its fake kernel reads
  // this to give the same output shape)
  m.attr("packed_gemm") = tnf::cpu::packed_gemm_available();
}
