// Shared by every kernel file of the "cpu" backend (csrc/cpu/*.cpp; tensornet_fast/backends/cpu/
// backend.py is the spec and the torch fallback of every op): float/double dispatch, thread
// slices and the one-parallel-region helper (node_region), and the SIMD chunk types of the
// per-(atom, channel) algebra. Tensors per atom and channel are 9 coefficients in an
// orthonormal basis: 0 = I, 1..3 = A, 4..8 = S; filters are 3F vectors blocked I | A | S.
//
// Include this header FIRST in every csrc/cpu/*.cpp: its pragma applies to the rest of the
// file. setup.py builds with -ffp-contract=off so the radius graph rounds distances exactly
// like the brute-force reference. Nothing here needs bitwise agreement (the model is compared
// with float64 within tolerances), and fused multiply-adds cut the layer kernels' time by ~15%
// (measured on 64 g2 molecules, F=128: layer forward 3.98 -> 3.35 ms, backward 5.6 -> 4.8 ms).
//
// Helpers live in an unnamed namespace (internal linkage), as when all kernels were one file
// (csrc/cpu_tensornet.cpp): each kernel file gets its own copy that GCC inlines exactly as
// before; only the ops (csrc/cpu/ops.h) have external linkage.
#pragma once
#pragma GCC optimize("fp-contract=fast")
// ATen's per-operator headers, not ATen/ATen.h: half the compile time of a kernel file.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm_ops.h>
#include <c10/util/ParallelGuard.h>
#include <dlfcn.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "ops.h"

namespace tnf {
namespace cpu {
namespace {

// float / double dispatch without a macro around the body (OpenMP pragmas cannot sit inside
// macro arguments, which AT_DISPATCH_FLOATING_TYPES would need).
template <typename F>
void TNF_DISPATCH(const at::Tensor& t, F&& body) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble,
              "cpu backend kernels support float32 and float64, got ", t.scalar_type());
  if (t.scalar_type() == at::kFloat)
    body(float(0));
  else
    body(double(0));
}

constexpr int kBlock[9] = {0, 1, 1, 1, 2, 2, 2, 2, 2};

// A symbol of the library that defines at::mm (libtorch_cpu, where MKL is linked), or null.
inline void* torch_blas_symbol(const char* name) {
  Dl_info info;
  if (!dladdr(reinterpret_cast<void*>(&at::_ops::mm::call), &info) || !info.dli_fname)
    return nullptr;
  void* lib = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
  return lib ? dlsym(lib, name) : nullptr;
}

// Atom slice [a0, a1) of thread t of nt (even split; the per-atom work is uniform).
inline std::pair<int64_t, int64_t> thread_slice(int64_t n, int t, int nt) {
  return {n * t / nt, n * (t + 1) / nt};
}

// MKL threads each GEMM called outside a parallel region on its own: 9 small GEMMs of a
// 10-atom layer woke the pool 9 times (~0.4 ms per layer with passive waiting). This guard
// makes BLAS sequential on the calling thread for its lifetime (MKL_Set_Num_Threads_Local, the
// C entry point: the lower-case name is the Fortran one, taking a pointer; looked up like
// sgemm_; a no-op without MKL).
class SequentialBlas {
 public:
  SequentialBlas() {
    if (set_local()) previous_ = set_local()(1);
  }
  ~SequentialBlas() {
    if (set_local()) set_local()(previous_);  // 0 restores the global setting
  }
  SequentialBlas(const SequentialBlas&) = delete;
  SequentialBlas& operator=(const SequentialBlas&) = delete;

 private:
  using fn = int (*)(int);
  static fn set_local() {
    static fn f = reinterpret_cast<fn>(torch_blas_symbol("MKL_Set_Num_Threads_Local"));
    return f;
  }
  int previous_ = 0;
};

// One parallel region over n atoms: body(t, nt) on every thread t of the intra-op pool (nt
// threads; thread_slice gives each its atoms), so a body can hold several steps separated by
// `#pragma omp barrier` where a step needs other threads' atoms (the message passes). Each
// region or barrier costs a thread wake-up with OMP_WAIT_POLICY=PASSIVE (~15-30 us here), so
// the layer ops use one region with one barrier instead of one region per step. Below 32
// atoms, inside another parallel region or with one thread: body(0, 1) on the caller (the
// barriers are then no-ops). All threads must reach the same barriers, and bodies must not
// throw (inputs are checked before).
template <typename Body>
void node_region(int64_t n, const Body& body) {
  if (n < 32 || at::in_parallel_region() || at::get_num_threads() == 1) {
    SequentialBlas guard;
    body(0, 1);
    return;
  }
  at::internal::lazy_init_num_threads();
#pragma omp parallel
  {
    c10::ParallelGuard guard(true);  // nested at::parallel_for / ATen ops run inline
    body(omp_get_thread_num(), omp_get_num_threads());
  }
}

// The per-chunk helpers below are forced inline: GCC 12 outlined load9 and to_full once the
// file grew (perf: 2.3% of samples in their out-of-line copies, each call passing its 9
// registers through memory).
#define TNF_INLINE inline __attribute__((always_inline))

// Per-(atom, channel) algebra works on chunks of one SIMD register of channels (8 float / 4
// double lanes, GCC vector extensions; 16 / 8 lanes where the build has AVX-512F: both layer
// ops on 64 g2 molecules 0.92x of 32-byte chunks, same-process A/B on a Xeon): a 3x3 tensor is
// 9 registers, every statement below is one vector instruction per register, with no loops
// over a run-time length (those compiled to 64-byte memcpy calls; same-phase A/B on 64 g2
// molecules: layer 3-5% faster). A chunk at the end of F narrower than a register is
// zero-padded (zero lanes stay finite everywhere).
#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#else
constexpr int kVecBytes = 32;
#endif
template <typename T>
struct SimdOf;
template <>
struct SimdOf<float> {
  typedef float V __attribute__((vector_size(kVecBytes)));
};
template <>
struct SimdOf<double> {
  typedef double V __attribute__((vector_size(kVecBytes)));
};
template <typename T>
using Vec = typename SimdOf<T>::V;
template <typename T>
constexpr int kLanes = int(sizeof(Vec<T>) / sizeof(T));
// 9 registers (a struct, not an array alias, so templates can deduce T from it)
template <typename T>
struct Chunk {
  Vec<T> v[9];
  Vec<T>& operator[](int k) { return v[k]; }
  const Vec<T>& operator[](int k) const { return v[k]; }
};

template <typename T>
TNF_INLINE Vec<T> vload(const T* p, int len) {
  Vec<T> v = Vec<T>{};
  if (len == kLanes<T>)
    std::memcpy(&v, p, sizeof(v));
  else
    for (int c = 0; c < len; ++c) v[c] = p[c];
  return v;
}
template <typename T>
TNF_INLINE void vstore(T* p, const Vec<T>& v, int len) {
  if (len == kLanes<T>)
    std::memcpy(p, &v, sizeof(v));
  else
    for (int c = 0; c < len; ++c) p[c] = v[c];
}

// Per-atom passes read/write 9 rows of F channels per atom ([N, 9, F]: 9 runs of 512 B for
// F=128 float), each run too short for the hardware stream prefetchers to train on, so every
// run started with a demand miss (perf: ~40% of the layer passes' samples on the first load
// of a row). load9/store9 prefetch the same rows two atoms ahead (18 rows); prefetches past
// the end of an array do not fault. Interleaved A/B, 64 g2 molecules: whole call 0.89x.
constexpr int64_t kAhead = 18;
template <typename T>
TNF_INLINE void load9(const T* p, int64_t nf, int len, Chunk<T>& v) {
  for (int k = 0; k < 9; ++k) __builtin_prefetch(p + (kAhead + k) * nf, 0, 3);
  for (int k = 0; k < 9; ++k) v[k] = vload(p + k * nf, len);
}
template <typename T>
TNF_INLINE void store9(T* p, int64_t nf, int len, const Chunk<T>& v) {
  for (int k = 0; k < 9; ++k) __builtin_prefetch(p + (kAhead + k) * nf, 1, 3);
  for (int k = 0; k < 9; ++k) vstore(p + k * nf, v[k], len);
}

constexpr int64_t kNodeGrain = 16;  // atoms per parallel task in the node-level loops

// Loop over (atom, channel chunk) for the atoms [a0, a1); body(i, offset, len) with offset =
// i * 9F + c0 the start of the chunk's component 0.
template <typename T, typename Body>
void for_chunks(int64_t a0, int64_t a1, int64_t nf, const Body& body) {
  for (int64_t i = a0; i < a1; ++i)
    for (int64_t c0 = 0; c0 < nf; c0 += kLanes<T>)
      body(i, i * 9 * nf + c0, int(std::min<int64_t>(kLanes<T>, nf - c0)));
}

inline void check_node(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(x.is_contiguous() && x.dim() == 3 && x.size(1) == 9, "x must be [N, 9, F]");
  TORCH_CHECK(w.is_contiguous() && w.dim() == 3 && w.size(1) == x.size(2) &&
                  w.size(2) == x.size(2) && w.scalar_type() == x.scalar_type(),
              "weights must be contiguous [k, F, F] in the dtype of x");
}

}  // namespace
}  // namespace cpu
}  // namespace tnf
