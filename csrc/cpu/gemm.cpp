// cpu_gemm_pack: linear weights packed once per model for the packed float32 GEMM (gemm.h).
#include "gemm.h"

namespace tnf {
namespace cpu {

bool packed_gemm_available() { return kPackedGemm; }

// Linear weights w [..., out, in] packed for gemm_packed as the right-hand matrices B = W^T
// (transpose: the forward's x W^T) or B = W (the backward's g W): B [K, N] becomes
// [..., N/16, K, 16], panel p row r = B[r, 16p : 16p + 16]. Empty where gemm_packed does not
// apply (float64, N not a multiple of 16, or a build without AVX2/FMA): the ops then use BLAS.
// Always a new tensor: `.contiguous()` returned w itself where the transpose moved a size-1 dim
// (N = 16 or K = 1), an output aliasing an input, which the op's schema does not allow.
at::Tensor cpu_gemm_pack(const at::Tensor& w, bool transpose) {
  TORCH_CHECK(w.dim() >= 2, "w must be [..., out, in]");
  auto b = transpose ? w.transpose(-1, -2) : w;  // [..., K, N]
  const int64_t nn = b.size(-1);
  if (!kPackedGemm || w.scalar_type() != at::kFloat || nn % kPanel != 0)
    return at::empty({0}, w.options());
  auto shape = b.sizes().vec();
  shape.back() = nn / kPanel;
  shape.push_back(kPanel);  // [..., K, N/16, 16]
  const auto panels = b.reshape(shape).transpose(-2, -3);  // [..., N/16, K, 16]
  return at::empty(panels.sizes(), w.options()).copy_(panels);
}

}  // namespace cpu
}  // namespace tnf
