// Host launchers of the CUDA radius graph (cuda.cu). Raw device pointers and a
// cudaStream_t passed as void*, so the torch-facing glue (cuda_glue.cpp) needs no
// CUDA header and the .cu file needs no torch header.
//
// The namespace is tnf::cuda for the nvcc build (cuda_glue.cpp) and tnf::cuda_emulated for the
// host build of the same kernels (cuda_emulated_kernels.cpp, cuda_emulated.cpp): a file that
// includes this header, or cuda.cu, defines TNF_CUDA_KERNELS first to pick the second.
#pragma once

#include <cstdint>

#include "core.h"

#ifndef TNF_CUDA_KERNELS
#define TNF_CUDA_KERNELS cuda
#endif

namespace tnf {
namespace TNF_CUDA_KERNELS {

// Per atom: integer wrap, wrapped position, bin and global bin id.
void locate(const Grid* grids, const double* pos, const int64_t* batch, int64_t n, double* wrap,
            double* pw, int64_t* bins, int64_t* cell_of, void* stream);

// Per receiver: number of edges (self-loop included when loop).
void count(const Grid* grids, const int64_t* batch, const int64_t* bins, const double* pos,
           const double* wrap, const int64_t* cell_start, const int64_t* cell_atom,
           const double* cell_pos, const double* cell_x, const double* cell_wrap,
           SearchParams params, KeyCodec codec, bool loop, int64_t n, int64_t* counts, void* stream);

// Per receiver: the sorted keys of its row at keys[row_ptr[i] .. row_ptr[i + 1]).
void fill(const Grid* grids, const int64_t* batch, const int64_t* bins, const double* pos,
          const double* wrap, const int64_t* cell_start, const int64_t* cell_atom,
          const double* cell_pos, const double* cell_x, const double* cell_wrap,
          SearchParams params, KeyCodec codec, bool loop, int64_t n, const int64_t* row_ptr,
          uint64_t* keys, void* stream);

// Decode keys into edge_index [2, E], shifts / vec [E, 3] and dist [E] (float or double).
template <typename scalar_t>
void finalize(const Grid* grids, const int64_t* batch, const double* pos, const double* wrap,
              KeyCodec codec, int64_t n, int64_t n_edges, const int64_t* row_ptr,
              const uint64_t* keys, int64_t* edge_index, scalar_t* shifts, scalar_t* vec,
              scalar_t* dist, void* stream);

// Verlet filter: keep[e] = candidate e is an edge now (same test as the search).
void filter_mark(const double* pos, const int64_t* batch, const double* boxes, const int64_t* ei,
                 const double* shifts, int64_t n_cand, double cut2, double low2, bool loop,
                 uint8_t* keep, void* stream);

// Verlet filter, second pass: write the kept candidates sel[0 .. n_out) like finalize does.
template <typename scalar_t>
void filter_write(const double* pos, const int64_t* batch, const double* boxes, const int64_t* ei,
                  const double* shifts, int64_t n_cand, const int64_t* sel, int64_t n_out,
                  int64_t* edge_index, scalar_t* out_shifts, scalar_t* vec, scalar_t* dist,
                  void* stream);

// ------------------------------------------------------------------ static-capacity search
// status: int64 [2] on the device, [0] edges found, [1] out-of-plan flag (zeroed by the caller).

// status[1] = 1 if some |pos| component exceeds max_abs.
void range_check(const double* pos, int64_t n, double max_abs, int64_t* status, void* stream);

// status[0] = row_ptr[n] (the inclusive scan of the counts, done by the caller).
void static_total(const int64_t* row_ptr, int64_t n, int64_t* status, void* stream);

// fill into keys [capacity]; does nothing when the edges do not fit or status[1] is set.
void static_fill(const Grid* grids, const int64_t* batch, const int64_t* bins, const double* pos,
                 const double* wrap, const int64_t* cell_start, const int64_t* cell_atom,
                 const double* cell_pos, const double* cell_x, const double* cell_wrap,
                 SearchParams params, KeyCodec codec, bool loop, int64_t n,
                 const int64_t* row_ptr, const int64_t* status, int64_t capacity, uint64_t* keys,
                 void* stream);

// finalize into [capacity]-slot buffers (edge_index row stride = capacity) and pad slots
// [E, capacity); on overflow / out-of-plan: row_ptr zeroed and every slot padding.
template <typename scalar_t>
void static_finalize(const Grid* grids, const int64_t* batch, const double* pos,
                     const double* wrap, KeyCodec codec, int64_t n, int64_t capacity,
                     const int64_t* status, int64_t* row_ptr, const uint64_t* keys,
                     int64_t* edge_index, scalar_t* shifts, scalar_t* vec, scalar_t* dist,
                     void* stream);

}  // namespace TNF_CUDA_KERNELS
}  // namespace tnf
