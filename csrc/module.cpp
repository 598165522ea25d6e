// The one Python module definition of tensornet_fast._C. Operators are registered with
// TORCH_LIBRARY_FRAGMENT(tensornet_fast, m) in their own .cpp files and called as
// torch.ops.tensornet_fast.<name>; importing this module loads them.
#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "tensornet_fast compiled operators (see torch.ops.tensornet_fast)";
  m.attr("with_cuda") =
#ifdef TNF_WITH_CUDA
      true;
#else
      false;
#endif
}
