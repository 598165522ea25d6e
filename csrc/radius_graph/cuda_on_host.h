// The CUDA radius graph's kernels (cuda.cu) compiled either by nvcc for the GPU or by the host
// compiler as plain C++, so the kernel bodies run (and are tested) on machines without a GPU:
// cuda_emulated_kernels.cpp includes cuda.cu with this header in host mode, and the
// *_cuda_emulated ops (cuda_emulated.cpp) drive them through the same glue as the real ones.
//
// Kernels are launched with launch(kernel, blocks, threads, stream, args...): a real
// kernel<<<blocks, threads, 0, stream>>>(args...) under nvcc, and on the host a sequential loop
// over every (block, thread) with blockIdx / threadIdx set, calling the kernel body once each.
// That emulation is exact for kernels whose threads do not communicate: no shared memory, no
// __syncthreads, no warp intrinsics, and no thread reading what another thread of the same
// launch writes (cuda.cu's kernels satisfy this; the one benign race, range_check_kernel's
// flag, writes the same value from every writer). Launches are 1-D, as all of cuda.cu's are.
#pragma once

#include <cstdint>

#ifdef __CUDACC__

#include <cuda_runtime.h>

namespace tnf {

template <typename... KernelArgs, typename... Args>
inline void launch(void (*kernel)(KernelArgs...), unsigned blocks, unsigned threads,
                   void* stream, Args... args) {
  kernel<<<blocks, threads, 0, static_cast<cudaStream_t>(stream)>>>(args...);
}

}  // namespace tnf

#else  // host build: the CUDA keywords and built-ins as plain C++

#define __global__
#define __device__
#define __host__

namespace tnf {
namespace host_cuda {

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};

// The built-ins of the kernel body being run (one host thread runs one launch at a time).
inline thread_local Dim3 thread_idx, block_idx, block_dim, grid_dim;

}  // namespace host_cuda

template <typename... KernelArgs, typename... Args>
inline void launch(void (*kernel)(KernelArgs...), unsigned blocks, unsigned threads,
                   void* stream, Args... args) {
  (void)stream;  // sequential: every launch completes before the next starts, as on one stream
  host_cuda::grid_dim = {blocks, 1, 1};
  host_cuda::block_dim = {threads, 1, 1};
  for (unsigned b = 0; b < blocks; ++b)
    for (unsigned t = 0; t < threads; ++t) {
      host_cuda::block_idx = {b, 0, 0};
      host_cuda::thread_idx = {t, 0, 0};
      kernel(args...);  // by value each time, as a launch copies its arguments
    }
}

// Atomics as their sequential equivalents (one kernel body runs at a time). cuda.cu uses none
// today; these keep a future atomic from silently breaking the host build.
template <typename T>
inline T atomicAdd(T* address, T value) {
  const T old = *address;
  *address = old + value;
  return old;
}
template <typename T>
inline T atomicMax(T* address, T value) {
  const T old = *address;
  if (value > old) *address = value;
  return old;
}
template <typename T>
inline T atomicMin(T* address, T value) {
  const T old = *address;
  if (value < old) *address = value;
  return old;
}
template <typename T>
inline T atomicExch(T* address, T value) {
  const T old = *address;
  *address = value;
  return old;
}
template <typename T>
inline T atomicCAS(T* address, T compare, T value) {
  const T old = *address;
  if (old == compare) *address = value;
  return old;
}

}  // namespace tnf

#define threadIdx (::tnf::host_cuda::thread_idx)
#define blockIdx (::tnf::host_cuda::block_idx)
#define blockDim (::tnf::host_cuda::block_dim)
#define gridDim (::tnf::host_cuda::grid_dim)

// No counterpart on the host: a kernel using one must not compile in host mode, since the
// sequential emulation would be wrong for it.
#define __syncthreads() static_assert(false, "__syncthreads: not emulated on the host")
#define __shared__ static_assert(false, "__shared__: not emulated on the host");

#endif  // __CUDACC__
