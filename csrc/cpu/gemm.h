// Channel linears and per-atom MLP GEMMs of the "cpu" backend: BLAS looked up in libtorch, and
// the hand-written packed float32 tiles (AVX2 / AVX-512) with the weight packing they read
// (cpu_gemm_pack, gemm.cpp). Everything is inline here so each kernel file compiles the tiles
// into its own loops, as when all kernels were one file.
#pragma once
#include "common.h"

#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>  // gemm_packed's tiles
#endif

namespace tnf {
namespace cpu {
namespace {

// Fortran BLAS gemm (column-major, LP64) as exported by libtorch_cpu's MKL/OpenBLAS. It is looked
// up at run time in the library that defines at::mm, so a torch build without it still imports
// this extension (gemm_slice then falls back to at::mm on strided views).
template <typename T>
using gemm_fn = void (*)(const char*, const char*, const int*, const int*, const int*, const T*,
                         const T*, const int*, const T*, const int*, const T*, T*, const int*);


template <typename T>
gemm_fn<T> blas_gemm() {
  static gemm_fn<T> fn = reinterpret_cast<gemm_fn<T>>(
      torch_blas_symbol(std::is_same<T, float>::value ? "sgemm_" : "dgemm_"));
  return fn;
}

#if defined(__AVX2__) && defined(__FMA__)
// Hand-written float32 GEMM for the channel linears and the per-atom MLPs: out [n, N] =
// a [n, K] B (+ bias), B packed in 16-column panels ([N/16, K, 16], cpu_gemm_pack, built once
// per model), each 6x16 tile of out held in 12 AVX2 registers over the whole K loop and stored
// once. MKL on the channel-linear shapes (226 rows per thread, F=128, leading dimension 9F)
// reached ~60-70 GFLOP/s of this core's 93 (FMA peak; standalone loop), ~10% of its time
// packing the weight and zeroing the output (perf: sgemm_scopy_*, sgemm_mscale); this reached
// 75-85 in the same runs, with bitwise the same channel-linear results (k-ordered FMA sums).
// Whole energy+forces call on 64 g2 molecules: 0.92x (interleaved A/B against MKL).
constexpr bool kPackedGemm = true;
constexpr int64_t kPanel = 16;  // output columns per panel: two AVX2 / one AVX-512 register
constexpr int kTileRows = 6;    // 6 x 2 accumulators + 2 panel rows + 1 broadcast = 15 of 16

// Row pointers a0..a5 of a tile of `rows` <= 6 rows of a (leading dimension lda); rows past
// `rows` alias row 0 (read, never stored).
#define TNF_TILE_ROW_POINTERS                         \
  const float* a0 = a;                                \
  const float* a1 = rows > 1 ? a + lda : a;           \
  const float* a2 = rows > 2 ? a + 2 * lda : a;       \
  const float* a3 = rows > 3 ? a + 3 * lda : a;       \
  const float* a4 = rows > 4 ? a + 4 * lda : a;       \
  const float* a5 = rows > 5 ? a + 5 * lda : a;

// One step k of row r of a tile: c_r += a_r[k] * (b0 | b1).
#define TNF_TILE_ROW(r)                                  \
  {                                                      \
    const __m256 av = _mm256_broadcast_ss(a##r + k);     \
    c##r##0 = _mm256_fmadd_ps(av, b0, c##r##0);          \
    c##r##1 = _mm256_fmadd_ps(av, b1, c##r##1);          \
  }

// c[0:rows, 0:16] = a[0:rows, 0:nk] panel[0:nk, 0:16] + bias[0:16] (bias may be null), rows
// <= 6. The 12 accumulators are named variables, not an array: GCC 12 kept an array's copy on
// the stack and stored all 12 registers every k step when the tile was not inlined (in the
// extension: 2x slower than MKL). Rows past `rows` re-read row 0 and are not stored.
inline void gemm_tile(const float* a, int64_t lda, int rows, const float* panel,
                      const float* bias, float* c, int64_t ldc, int64_t nk) {
  TNF_TILE_ROW_POINTERS
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  for (int64_t k = 0; k < nk; ++k) {
    const __m256 b0 = _mm256_loadu_ps(panel + k * kPanel);
    const __m256 b1 = _mm256_loadu_ps(panel + k * kPanel + 8);
    TNF_TILE_ROW(0) TNF_TILE_ROW(1) TNF_TILE_ROW(2) TNF_TILE_ROW(3) TNF_TILE_ROW(4) TNF_TILE_ROW(5)
  }
  const __m256 z0 = bias ? _mm256_loadu_ps(bias) : _mm256_setzero_ps();
  const __m256 z1 = bias ? _mm256_loadu_ps(bias + 8) : _mm256_setzero_ps();
  const __m256 out[kTileRows][2] = {{c00, c01}, {c10, c11}, {c20, c21},
                                    {c30, c31}, {c40, c41}, {c50, c51}};
  for (int r = 0; r < rows; ++r) {
    _mm256_storeu_ps(c + r * ldc, _mm256_add_ps(out[r][0], z0));
    _mm256_storeu_ps(c + r * ldc + 8, _mm256_add_ps(out[r][1], z1));
  }
}
#undef TNF_TILE_ROW

#if defined(__AVX512F__)
// AVX-512 (32 registers of 16 floats): a tile is 6 rows x 4 panels (64 columns), 24
// accumulators + 4 panel rows + 1 broadcast = 29 of 32 registers, 24 FMAs per 10 loads. The
// same k-ordered FMA chain per output element as the AVX2 tile, so bitwise the same results.
// Both layer ops on 64 g2 molecules (F=128, same-process A/B on a Xeon with AVX-512): this
// tile 0.76x of the AVX2 one; 12 x 2 panels 0.78x, 14 x 2 0.76x, 7 x 4 0.77x.
constexpr int kTileRows512 = 6;

// One step k of row r: c_rq += a_r[k] * b_q for the tile's NP panels q.
#define TNF_TILE512_ROW(r)                                              \
  {                                                                     \
    const __m512 av = _mm512_set1_ps(a##r[k]);                          \
    c##r##0 = _mm512_fmadd_ps(av, b0, c##r##0);                         \
    if constexpr (NP > 1) c##r##1 = _mm512_fmadd_ps(av, b1, c##r##1);   \
    if constexpr (NP > 2) c##r##2 = _mm512_fmadd_ps(av, b2, c##r##2);   \
    if constexpr (NP > 2) c##r##3 = _mm512_fmadd_ps(av, b3, c##r##3);   \
  }
#define TNF_TILE512_STORE(r)                                                          \
  if (r < rows) {                                                                     \
    float* cr = c + r * ldc;                                                          \
    _mm512_storeu_ps(cr, _mm512_add_ps(c##r##0, z0));                                 \
    if constexpr (NP > 1) _mm512_storeu_ps(cr + kPanel, _mm512_add_ps(c##r##1, z1));  \
    if constexpr (NP > 2) _mm512_storeu_ps(cr + 2 * kPanel, _mm512_add_ps(c##r##2, z2)); \
    if constexpr (NP > 2) _mm512_storeu_ps(cr + 3 * kPanel, _mm512_add_ps(c##r##3, z3)); \
  }

// c[0:rows, 0:16 NP] = a[0:rows, 0:nk] (NP consecutive panels) + bias, rows <= 6, NP in
// {1, 2, 4}; named accumulators for the reason given at gemm_tile. Rows past `rows` re-read
// row 0 and are not stored.
template <int NP>
inline void gemm_tile512(const float* a, int64_t lda, int rows, const float* panel,
                         const float* bias, float* c, int64_t ldc, int64_t nk) {
  static_assert(NP == 1 || NP == 2 || NP == 4, "1, 2 or 4 panels");
  TNF_TILE_ROW_POINTERS
  const float* p1 = panel + (NP > 1 ? nk * kPanel : 0);  // the next panels (NP > 1 only)
  const float* p2 = panel + (NP > 2 ? 2 * nk * kPanel : 0);
  const float* p3 = panel + (NP > 2 ? 3 * nk * kPanel : 0);
  __m512 c00 = _mm512_setzero_ps(), c01 = c00, c02 = c00, c03 = c00;
  __m512 c10 = c00, c11 = c00, c12 = c00, c13 = c00, c20 = c00, c21 = c00, c22 = c00, c23 = c00;
  __m512 c30 = c00, c31 = c00, c32 = c00, c33 = c00, c40 = c00, c41 = c00, c42 = c00, c43 = c00;
  __m512 c50 = c00, c51 = c00, c52 = c00, c53 = c00;
  for (int64_t k = 0; k < nk; ++k) {
    const __m512 b0 = _mm512_loadu_ps(panel + k * kPanel);
    const __m512 b1 = NP > 1 ? _mm512_loadu_ps(p1 + k * kPanel) : b0;
    const __m512 b2 = NP > 2 ? _mm512_loadu_ps(p2 + k * kPanel) : b0;
    const __m512 b3 = NP > 2 ? _mm512_loadu_ps(p3 + k * kPanel) : b0;
    TNF_TILE512_ROW(0) TNF_TILE512_ROW(1) TNF_TILE512_ROW(2)
    TNF_TILE512_ROW(3) TNF_TILE512_ROW(4) TNF_TILE512_ROW(5)
  }
  const auto bias_at = [&](int q) {
    return bias && q < NP ? _mm512_loadu_ps(bias + q * kPanel) : _mm512_setzero_ps();
  };
  const __m512 z0 = bias_at(0), z1 = bias_at(1), z2 = bias_at(2), z3 = bias_at(3);
  TNF_TILE512_STORE(0) TNF_TILE512_STORE(1) TNF_TILE512_STORE(2)
  TNF_TILE512_STORE(3) TNF_TILE512_STORE(4) TNF_TILE512_STORE(5)
}
#undef TNF_TILE512_ROW
#undef TNF_TILE512_STORE

// c [n, N] = a [n, K] B + bias (bias [N] or null) with B packed (cpu_gemm_pack: [N/16, K, 16]);
// rows in blocks of 6 (at most 6 x 2 KB of a here, kept in L1) against 4 panels at a time
// (then 2, then 1 for the rest).
inline void gemm_packed(const float* a, int64_t lda, const float* bp, const float* bias,
                        float* c, int64_t ldc, int64_t n, int64_t nk, int64_t nn) {
  for (int64_t i = 0; i < n; i += kTileRows512) {
    const int rows = int(std::min<int64_t>(kTileRows512, n - i));
    const float* ai = a + i * lda;
    float* ci = c + i * ldc;
    int64_t p = 0;
    for (; p + 4 * kPanel <= nn; p += 4 * kPanel)
      gemm_tile512<4>(ai, lda, rows, bp + p * nk, bias ? bias + p : nullptr, ci + p, ldc, nk);
    for (; p + 2 * kPanel <= nn; p += 2 * kPanel)
      gemm_tile512<2>(ai, lda, rows, bp + p * nk, bias ? bias + p : nullptr, ci + p, ldc, nk);
    for (; p < nn; p += kPanel)
      gemm_tile512<1>(ai, lda, rows, bp + p * nk, bias ? bias + p : nullptr, ci + p, ldc, nk);
  }
}
#else
// c [n, N] = a [n, K] B + bias (bias [N] or null) with B packed (cpu_gemm_pack: [N/16, K, 16]);
// rows in blocks of 6 (at most 6 x 2 KB of a here, kept in L1) against every panel in turn.
inline void gemm_packed(const float* a, int64_t lda, const float* bp, const float* bias,
                        float* c, int64_t ldc, int64_t n, int64_t nk, int64_t nn) {
  for (int64_t i = 0; i < n; i += kTileRows) {
    const int rows = int(std::min<int64_t>(kTileRows, n - i));
    for (int64_t p = 0; p < nn; p += kPanel)
      gemm_tile(a + i * lda, lda, rows, bp + p * nk, bias ? bias + p : nullptr, c + i * ldc + p,
                ldc, nk);
  }
}
#endif  // __AVX512F__
#undef TNF_TILE_ROW_POINTERS
#else
constexpr bool kPackedGemm = false;
constexpr int64_t kPanel = 16;
inline void gemm_packed(const float*, int64_t, const float*, const float*, float*, int64_t,
                        int64_t, int64_t, int64_t) {}
#endif

// out[n, k, :] = x[n, k, :] W_{blk(k)}^T (transpose_w: W instead of W^T) for the atoms n in
// [a0, a1), 9 GEMMs; w: [3, F, F] (torch Linear layout [out, in]) for the I, A, S blocks;
// packed: cpu_gemm_pack(w, !transpose_w) or null (then BLAS). Called inside a parallel region,
// one atom slice per thread: BLAS called there runs sequentially, with no BLAS-internal
// synchronisation per call. 64 g2 molecules (453 atoms, F=128): 9 threaded GEMMs 1.14 ms ->
// ~0.95 ms this way, on 2 cores.
template <typename T>
void gemm_slice(const T* x, const T* w, const T* packed, T* out, int64_t a0, int64_t a1,
                int64_t nf, bool transpose_w) {
  if (a1 <= a0) return;
  if constexpr (std::is_same<T, float>::value) {
    if (packed) {
      for (int k = 0; k < 9; ++k) {
        const int64_t o = a0 * 9 * nf + k * nf;
        gemm_packed(x + o, 9 * nf, packed + kBlock[k] * nf * nf, nullptr, out + o, 9 * nf,
                    a1 - a0, nf, nf);
      }
      return;
    }
  }
  const auto gemm = blas_gemm<T>();
  const bool small = a1 - a0 < (int64_t(1) << 30) / (9 * nf);  // int32 BLAS dimensions
  for (int k = 0; k < 9; ++k) {
    const T* wk = w + kBlock[k] * nf * nf;
    const int64_t o = a0 * 9 * nf + k * nf;
    if (gemm && small) {
      // Row-major out_k [n, F] (ld 9F) = x_k W^T is column-major out_k^T = W x_k^T; the
      // row-major [out, in] weight read column-major is W^T, so op(A) = W is "T".
      const int m_ = int(nf), n_ = int(a1 - a0), ld = int(9 * nf), ldw = int(nf);
      const T one = T(1), zero = T(0);
      gemm(transpose_w ? "N" : "T", "N", &m_, &n_, &m_, &one, wk, &ldw, x + o, &ld, &zero,
           out + o, &ld);
      continue;
    }
    const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
    auto xv = at::from_blob(const_cast<T*>(x + o), {a1 - a0, nf}, {9 * nf, 1}, opts);
    auto wv = at::from_blob(const_cast<T*>(wk), {nf, nf}, {nf, 1}, opts);
    auto ov = at::from_blob(out + o, {a1 - a0, nf}, {9 * nf, 1}, opts);
    ov.copy_(at::mm(xv, transpose_w ? wv : wv.t()));
  }
}

// The packed weights' data for gemm_slice / gemm_packed, or null: wp is cpu_gemm_pack's output
// for w (empty: BLAS).
template <typename T>
const T* packed_weights(const at::Tensor& wp, const at::Tensor& w) {
  if (wp.numel() == 0) return nullptr;
  TORCH_CHECK(wp.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat &&
                  wp.is_contiguous() && wp.numel() == w.numel(),
              "packed weights must be cpu_gemm_pack(w) for float32 w");
  return reinterpret_cast<const T*>(wp.data_ptr<float>());
}

}  // namespace
}  // namespace cpu
}  // namespace tnf
