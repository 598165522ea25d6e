// CUDA radius graph: the cell-list search of radius_graph_core.h, one thread per receiver.
// count -> (row pointer by a scan in the glue) -> fill + per-row sort -> finalize; no capacity
// is guessed, so nothing can overflow. Small systems use a single bin per molecule (the glue
// sets that up), which is the brute force over all atoms and images without a binning pass.
// The per-row sort makes the output independent of the (atomic, unordered) bin filling.
#include <cuda_runtime.h>

#include "radius_graph_cuda.h"

namespace tnf {
namespace cuda {
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

}  // namespace

void locate(const Grid* grids, const double* pos, const int64_t* batch, int64_t n, double* wrap,
            double* pw, int64_t* bins, int64_t* cell_of, void* stream) {
  if (n == 0) return;
  locate_kernel<<<blocks_for(n), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      grids, pos, batch, n, wrap, pw, bins, cell_of);
}

void count(const Grid* grids, const int64_t* batch, const int64_t* bins, const double* pos,
           const double* wrap, const int64_t* cell_start, const int64_t* cell_atom,
           const double* cell_pos, const double* cell_x, const double* cell_wrap,
           SearchParams params, KeyCodec codec, bool loop, int64_t n, int64_t* counts,
           void* stream) {
  (void)codec;
  if (n == 0) return;
  count_kernel<<<blocks_for(n), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      grids, batch, bins, pos, wrap, cell_start, cell_atom, cell_pos, cell_x, cell_wrap, params,
      loop, n, counts);
}

void fill(const Grid* grids, const int64_t* batch, const int64_t* bins, const double* pos,
          const double* wrap, const int64_t* cell_start, const int64_t* cell_atom,
          const double* cell_pos, const double* cell_x, const double* cell_wrap,
          SearchParams params, KeyCodec codec, bool loop, int64_t n, const int64_t* row_ptr,
          uint64_t* keys, void* stream) {
  if (n == 0) return;
  fill_kernel<<<blocks_for(n), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      grids, batch, bins, pos, wrap, cell_start, cell_atom, cell_pos, cell_x, cell_wrap, params,
      codec, loop, n, row_ptr, keys);
}

template <typename scalar_t>
void finalize(const Grid* grids, const int64_t* batch, const double* pos, const double* wrap,
              KeyCodec codec, int64_t n, int64_t n_edges, const int64_t* row_ptr,
              const uint64_t* keys, int64_t* edge_index, scalar_t* shifts, scalar_t* vec,
              scalar_t* dist, void* stream) {
  if (n == 0 || n_edges == 0) return;
  finalize_kernel<scalar_t><<<blocks_for(n), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
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
  filter_mark_kernel<<<blocks_for(n_cand), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      pos, batch, boxes, ei, shifts, n_cand, cut2, low2, loop, keep);
}

template <typename scalar_t>
void filter_write(const double* pos, const int64_t* batch, const double* boxes, const int64_t* ei,
                  const double* shifts, int64_t n_cand, const int64_t* sel, int64_t n_out,
                  int64_t* edge_index, scalar_t* out_shifts, scalar_t* vec, scalar_t* dist,
                  void* stream) {
  if (n_out == 0) return;
  filter_write_kernel<scalar_t>
      <<<blocks_for(n_out), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
          pos, batch, boxes, ei, shifts, n_cand, sel, n_out, edge_index, out_shifts, vec, dist);
}

template void filter_write<float>(const double*, const int64_t*, const double*, const int64_t*,
                                  const double*, int64_t, const int64_t*, int64_t, int64_t*,
                                  float*, float*, float*, void*);
template void filter_write<double>(const double*, const int64_t*, const double*, const int64_t*,
                                   const double*, int64_t, const int64_t*, int64_t, int64_t*,
                                   double*, double*, double*, void*);

}  // namespace cuda
}  // namespace tnf
