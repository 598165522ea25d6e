// CUDA radius graph: the cell-list search of core.h, one thread per receiver.
// count -> (row pointer by a scan in the glue) -> fill + per-row sort -> finalize; no capacity
// is guessed, so nothing can overflow. Small systems use a single bin per molecule (the glue
// sets that up), which is the brute force over all atoms and images without a binning pass.
// The per-row sort makes the output independent of the (atomic, unordered) bin filling.
// The static-capacity kernels (radius_graph_static) run the same search into fixed-size
// buffers with the edge count and overflow flag kept on the device.
//
// Plain C++ apart from the kernel qualifiers and built-ins: cuda_on_host.h maps those (and
// launch()) for the host compiler, so cuda_emulated_kernels.cpp compiles this very file into
// the CPU extension and tests run the kernel bodies without a GPU (the *_cuda_emulated ops).
#include "cuda_on_host.h"
// (cuda_on_host.h first: it includes cuda_runtime.h under nvcc)
#include "cuda.h"

namespace tnf {
namespace TNF_CUDA_KERNELS {
namespace {

constexpr int kThreads = 256;

inline unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>((n + kThreads - 1) / kThreads);
}

__global__ void locate_kernel(const Grid* grids, const double* pos, const int64_t* batch,
                              int64_t n, double* wrap, double* pw, int64_t* bins,
                              int64_t* cell_of) {
  const int64_t a = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (a >= n) return;
  const Grid& g = grids[batch[a]];
  locate(g, pos + 3 * a, wrap + 3 * a, pw + 3 * a, bins + 3 * a);
  cell_of[a] = g.cell_begin + (bins[3 * a] * g.n[1] + bins[3 * a + 1]) * g.n[2] + bins[3 * a + 2];
}

struct CountVisit {
  int64_t* c;
  __device__ void operator()(int64_t, const int64_t*) const { ++*c; }
};

struct FillVisit {
  uint64_t* out;
  int64_t* k;
  KeyCodec codec;
  __device__ void operator()(int64_t j, const int64_t rel[3]) const {
    out[(*k)++] = codec.encode(j, rel);
  }
};

__global__ void count_kernel(const Grid* grids, const int64_t* batch, const int64_t* bins,
                             const double* pos, const double* wrap, const int64_t* cell_start,
                             const int64_t* cell_atom, const double* cell_pos, const double* cell_x,
                             const double* cell_wrap, SearchParams params, bool loop, int64_t n,
                             int64_t* counts) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  int64_t c = loop ? 1 : 0;
  search_receiver(i, grids[batch[i]], bins + 3 * i, pos + 3 * i, wrap + 3 * i, cell_start,
                  cell_atom, cell_pos, cell_x, cell_wrap, params, CountVisit{&c});
  counts[i] = c;
}

__global__ void fill_kernel(const Grid* grids, const int64_t* batch, const int64_t* bins,
                            const double* pos, const double* wrap, const int64_t* cell_start,
                            const int64_t* cell_atom, const double* cell_pos, const double* cell_x,
                            const double* cell_wrap, SearchParams params, KeyCodec codec, bool loop,
                            int64_t n, const int64_t* row_ptr, uint64_t* keys) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  uint64_t* out = keys + row_ptr[i];
  int64_t k = 0;
  if (loop) {
    const int64_t zero[3] = {0, 0, 0};
    out[k++] = codec.encode(i, zero);
  }
  search_receiver(i, grids[batch[i]], bins + 3 * i, pos + 3 * i, wrap + 3 * i, cell_start,
                  cell_atom, cell_pos, cell_x, cell_wrap, params, FillVisit{out, &k, codec});
  // Insertion sort of the row (~50 keys at water density, 5 A).
  for (int64_t a = 1; a < k; ++a) {
    const uint64_t key = out[a];
    int64_t b = a - 1;
    while (b >= 0 && out[b] > key) {
      out[b + 1] = out[b];
      --b;
    }
    out[b + 1] = key;
  }
}

template <typename scalar_t>
__global__ void finalize_kernel(const Grid* grids, const int64_t* batch, const double* pos,
                                const double* wrap, KeyCodec codec, int64_t n, int64_t n_edges,
                                const int64_t* row_ptr, const uint64_t* keys, int64_t* edge_index,
                                scalar_t* shifts, scalar_t* vec, scalar_t* dist) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const Grid& g = grids[batch[i]];
  for (int64_t e = row_ptr[i]; e < row_ptr[i + 1]; ++e) {
    int64_t j, rel[3];
    codec.decode(keys[e], &j, rel);
    double s[3] = {0.0, 0.0, 0.0}, v[3];
    if (g.periodic)
      for (int c = 0; c < 3; ++c) s[c] = wrap[3 * j + c] - wrap[3 * i + c] + rel[c];
    const double d2 = exact_d2(pos + 3 * i, pos + 3 * j, s, g.box, g.periodic, v);
    const bool self = (i == j && s[0] == 0.0 && s[1] == 0.0 && s[2] == 0.0);
    edge_index[e] = i;
    edge_index[n_edges + e] = j;
    for (int c = 0; c < 3; ++c) {
      shifts[3 * e + c] = static_cast<scalar_t>(s[c]);
      vec[3 * e + c] = static_cast<scalar_t>(v[c]);
    }
    dist[e] = self ? scalar_t(0) : static_cast<scalar_t>(sqrt(d2));
  }
}

__global__ void filter_mark_kernel(const double* pos, const int64_t* batch, const double* boxes,
                                   const int64_t* ei, const double* shifts, int64_t n_cand,
                                   double cut2, double low2, bool loop, uint8_t* keep) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= n_cand) return;
  const int64_t i = ei[e], j = ei[n_cand + e];
  const double* s = shifts + 3 * e;
  double v[3];
  const bool periodic = boxes != nullptr;
  const double d2 = exact_d2(pos + 3 * i, pos + 3 * j, s, periodic ? boxes + 9 * batch[i] : nullptr,
                             periodic, v);
  const bool self = (i == j && s[0] == 0.0 && s[1] == 0.0 && s[2] == 0.0);
  keep[e] = self ? loop : (d2 < cut2 && d2 >= low2);
}

template <typename scalar_t>
__global__ void filter_write_kernel(const double* pos, const int64_t* batch, const double* boxes,
                                    const int64_t* ei, const double* shifts, int64_t n_cand,
                                    const int64_t* sel, int64_t n_out, int64_t* edge_index,
                                    scalar_t* out_shifts, scalar_t* vec, scalar_t* dist) {
  const int64_t o = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (o >= n_out) return;
  const int64_t e = sel[o];
  const int64_t i = ei[e], j = ei[n_cand + e];
  const double* s = shifts + 3 * e;
  double v[3];
  const bool periodic = boxes != nullptr;
  const double d2 = exact_d2(pos + 3 * i, pos + 3 * j, s, periodic ? boxes + 9 * batch[i] : nullptr,
                             periodic, v);
  const bool self = (i == j && s[0] == 0.0 && s[1] == 0.0 && s[2] == 0.0);
  edge_index[o] = i;
  edge_index[n_out + o] = j;
  for (int c = 0; c < 3; ++c) {
    out_shifts[3 * o + c] = static_cast<scalar_t>(s[c]);
    vec[3 * o + c] = static_cast<scalar_t>(v[c]);
  }
  dist[o] = self ? scalar_t(0) : static_cast<scalar_t>(sqrt(d2));
}


// ------------------------------------------------------------------ static-capacity kernels
// Every step reads the edge count and the flags from device memory (status), so the sequence
// needs no host synchronisation and can be captured in a CUDA graph.

__global__ void range_check_kernel(const double* pos, int64_t n3, double max_abs,
                                   int64_t* status) {
  const int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (k >= n3) return;
  if (!(fabs(pos[k]) <= max_abs)) status[1] = 1;  // benign race: every writer writes 1
}

// status[0] = the edges found, or 0 when a position left the plan (range_check ran before on
// the same stream): that count came from positions the plan does not cover, and the CPU kernel
// reports 0 there too (it used to be the count here; found comparing the two on the host).
__global__ void total_kernel(const int64_t* row_ptr, int64_t n, int64_t* status) {
  if (blockIdx.x == 0 && threadIdx.x == 0) status[0] = status[1] ? 0 : row_ptr[n];
}

// Usable: the edges fit and no position left the plan.
__device__ inline bool static_ok(const int64_t* status, int64_t capacity) {
  return status[1] == 0 && status[0] <= capacity;
}

__global__ void static_fill_kernel(const Grid* grids, const int64_t* batch, const int64_t* bins,
                                   const double* pos, const double* wrap,
                                   const int64_t* cell_start, const int64_t* cell_atom,
                                   const double* cell_pos, const double* cell_x,
                                   const double* cell_wrap, SearchParams params, KeyCodec codec,
                                   bool loop, int64_t n, const int64_t* row_ptr,
                                   const int64_t* status, int64_t capacity, uint64_t* keys) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n || !static_ok(status, capacity)) return;
  uint64_t* out = keys + row_ptr[i];
  int64_t k = 0;
  if (loop) {
    const int64_t zero[3] = {0, 0, 0};
    out[k++] = codec.encode(i, zero);
  }
  search_receiver(i, grids[batch[i]], bins + 3 * i, pos + 3 * i, wrap + 3 * i, cell_start,
                  cell_atom, cell_pos, cell_x, cell_wrap, params, FillVisit{out, &k, codec});
  for (int64_t a = 1; a < k; ++a) {
    const uint64_t key = out[a];
    int64_t b = a - 1;
    while (b >= 0 && out[b] > key) {
      out[b + 1] = out[b];
      --b;
    }
    out[b + 1] = key;
  }
}

template <typename scalar_t>
__global__ void static_finalize_kernel(const Grid* grids, const int64_t* batch, const double* pos,
                                       const double* wrap, KeyCodec codec, int64_t n,
                                       int64_t capacity, const int64_t* status, int64_t* row_ptr,
                                       const uint64_t* keys, int64_t* edge_index,
                                       scalar_t* shifts, scalar_t* vec, scalar_t* dist) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  if (!static_ok(status, capacity)) {  // empty graph: no index can point past the buffers
    row_ptr[i + 1] = 0;
    if (i == 0) row_ptr[0] = 0;
    return;
  }
  const Grid& g = grids[batch[i]];
  for (int64_t e = row_ptr[i]; e < row_ptr[i + 1]; ++e) {
    int64_t j, rel[3];
    codec.decode(keys[e], &j, rel);
    double s[3] = {0.0, 0.0, 0.0}, v[3];
    if (g.periodic)
      for (int c = 0; c < 3; ++c) s[c] = wrap[3 * j + c] - wrap[3 * i + c] + rel[c];
    const double d2 = exact_d2(pos + 3 * i, pos + 3 * j, s, g.box, g.periodic, v);
    edge_index[e] = i;
    edge_index[capacity + e] = j;
    for (int c = 0; c < 3; ++c) {
      shifts[3 * e + c] = static_cast<scalar_t>(s[c]);
      vec[3 * e + c] = static_cast<scalar_t>(v[c]);
    }
    dist[e] = static_cast<scalar_t>(sqrt(d2));  // exactly 0 on self-loops (v = 0)
  }
}

template <typename scalar_t>
__global__ void static_pad_kernel(int64_t capacity, const int64_t* status, int64_t* edge_index,
                                  scalar_t* shifts, scalar_t* vec, scalar_t* dist) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= capacity) return;
  const int64_t valid = static_ok(status, capacity) ? status[0] : 0;
  if (e < valid) return;
  edge_index[e] = -1;
  edge_index[capacity + e] = -1;
  for (int c = 0; c < 3; ++c) {
    shifts[3 * e + c] = scalar_t(0);
    vec[3 * e + c] = scalar_t(0);
  }
  dist[e] = scalar_t(0);
}

}  // namespace

void locate(const Grid* grids, const double* pos, const int64_t* batch, int64_t n, double* wrap,
            double* pw, int64_t* bins, int64_t* cell_of, void* stream) {
  if (n == 0) return;
  launch(locate_kernel, blocks_for(n), kThreads, stream,
      grids, pos, batch, n, wrap, pw, bins, cell_of);
}

void count(const Grid* grids, const int64_t* batch, const int64_t* bins, const double* pos,
           const double* wrap, const int64_t* cell_start, const int64_t* cell_atom,
           const double* cell_pos, const double* cell_x, const double* cell_wrap,
           SearchParams params, KeyCodec codec, bool loop, int64_t n, int64_t* counts,
           void* stream) {
  (void)codec;
  if (n == 0) return;
  launch(count_kernel, blocks_for(n), kThreads, stream,
      grids, batch, bins, pos, wrap, cell_start, cell_atom, cell_pos, cell_x, cell_wrap, params,
      loop, n, counts);
}

void fill(const Grid* grids, const int64_t* batch, const int64_t* bins, const double* pos,
          const double* wrap, const int64_t* cell_start, const int64_t* cell_atom,
          const double* cell_pos, const double* cell_x, const double* cell_wrap,
          SearchParams params, KeyCodec codec, bool loop, int64_t n, const int64_t* row_ptr,
          uint64_t* keys, void* stream) {
  if (n == 0) return;
  launch(fill_kernel, blocks_for(n), kThreads, stream,
      grids, batch, bins, pos, wrap, cell_start, cell_atom, cell_pos, cell_x, cell_wrap, params,
      codec, loop, n, row_ptr, keys);
}

template <typename scalar_t>
void finalize(const Grid* grids, const int64_t* batch, const double* pos, const double* wrap,
              KeyCodec codec, int64_t n, int64_t n_edges, const int64_t* row_ptr,
              const uint64_t* keys, int64_t* edge_index, scalar_t* shifts, scalar_t* vec,
              scalar_t* dist, void* stream) {
  if (n == 0 || n_edges == 0) return;
  launch(finalize_kernel<scalar_t>, blocks_for(n), kThreads, stream,
      grids, batch, pos, wrap, codec, n, n_edges, row_ptr, keys, edge_index, shifts, vec, dist);
}

template void finalize<float>(const Grid*, const int64_t*, const double*, const double*, KeyCodec,
                              int64_t, int64_t, const int64_t*, const uint64_t*, int64_t*, float*,
                              float*, float*, void*);
template void finalize<double>(const Grid*, const int64_t*, const double*, const double*, KeyCodec,
                               int64_t, int64_t, const int64_t*, const uint64_t*, int64_t*,
                               double*, double*, double*, void*);

void filter_mark(const double* pos, const int64_t* batch, const double* boxes, const int64_t* ei,
                 const double* shifts, int64_t n_cand, double cut2, double low2, bool loop,
                 uint8_t* keep, void* stream) {
  if (n_cand == 0) return;
  launch(filter_mark_kernel, blocks_for(n_cand), kThreads, stream,
      pos, batch, boxes, ei, shifts, n_cand, cut2, low2, loop, keep);
}

template <typename scalar_t>
void filter_write(const double* pos, const int64_t* batch, const double* boxes, const int64_t* ei,
                  const double* shifts, int64_t n_cand, const int64_t* sel, int64_t n_out,
                  int64_t* edge_index, scalar_t* out_shifts, scalar_t* vec, scalar_t* dist,
                  void* stream) {
  if (n_out == 0) return;
  launch(filter_write_kernel<scalar_t>, blocks_for(n_out), kThreads, stream,
      pos, batch, boxes, ei, shifts, n_cand, sel, n_out, edge_index, out_shifts, vec, dist);
}

template void filter_write<float>(const double*, const int64_t*, const double*, const int64_t*,
                                  const double*, int64_t, const int64_t*, int64_t, int64_t*,
                                  float*, float*, float*, void*);
template void filter_write<double>(const double*, const int64_t*, const double*, const int64_t*,
                                   const double*, int64_t, const int64_t*, int64_t, int64_t*,
                                   double*, double*, double*, void*);

void range_check(const double* pos, int64_t n, double max_abs, int64_t* status, void* stream) {
  if (n == 0) return;
  launch(range_check_kernel, blocks_for(3 * n), kThreads, stream, pos, 3 * n, max_abs, status);
}

void static_total(const int64_t* row_ptr, int64_t n, int64_t* status, void* stream) {
  launch(total_kernel, 1, 1, stream, row_ptr, n, status);
}

void static_fill(const Grid* grids, const int64_t* batch, const int64_t* bins, const double* pos,
                 const double* wrap, const int64_t* cell_start, const int64_t* cell_atom,
                 const double* cell_pos, const double* cell_x, const double* cell_wrap,
                 SearchParams params, KeyCodec codec, bool loop, int64_t n,
                 const int64_t* row_ptr, const int64_t* status, int64_t capacity, uint64_t* keys,
                 void* stream) {
  if (n == 0) return;
  launch(static_fill_kernel, blocks_for(n), kThreads, stream,
      grids, batch, bins, pos, wrap, cell_start, cell_atom, cell_pos, cell_x, cell_wrap, params,
      codec, loop, n, row_ptr, status, capacity, keys);
}

template <typename scalar_t>
void static_finalize(const Grid* grids, const int64_t* batch, const double* pos,
                     const double* wrap, KeyCodec codec, int64_t n, int64_t capacity,
                     const int64_t* status, int64_t* row_ptr, const uint64_t* keys,
                     int64_t* edge_index, scalar_t* shifts, scalar_t* vec, scalar_t* dist,
                     void* stream) {
  if (n > 0)
    launch(static_finalize_kernel<scalar_t>, blocks_for(n), kThreads, stream,
        grids, batch, pos, wrap, codec, n, capacity, status, row_ptr, keys, edge_index, shifts,
        vec, dist);
  if (capacity > 0)
    launch(static_pad_kernel<scalar_t>, blocks_for(capacity), kThreads, stream,
        capacity, status, edge_index, shifts, vec, dist);
}

template void static_finalize<float>(const Grid*, const int64_t*, const double*, const double*,
                                     KeyCodec, int64_t, int64_t, const int64_t*, int64_t*,
                                     const uint64_t*, int64_t*, float*, float*, float*, void*);
template void static_finalize<double>(const Grid*, const int64_t*, const double*, const double*,
                                      KeyCodec, int64_t, int64_t, const int64_t*, int64_t*,
                                      const uint64_t*, int64_t*, double*, double*, double*,
                                      void*);

}  // namespace TNF_CUDA_KERNELS
}  // namespace tnf
