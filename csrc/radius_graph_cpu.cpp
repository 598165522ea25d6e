// CPU cell-list radius graph (OpenMP) and the Verlet-list filter, registered as
// torch.ops.tensornet_fast.radius_graph / filter_pairs. Inputs are validated in Python
// (tensornet_fast/neighbors.py); the checks here guard the C++ invariants only.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <sys/mman.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "radius_graph_core.h"

#ifdef TNF_PROFILE  // dev builds (-DTNF_PROFILE): phase timings on stderr
#include <chrono>
#include <cstdio>
#define TNF_TICK_START auto tnf_prev = std::chrono::steady_clock::now()
#define TNF_TICK(name)                                                                      \
  do {                                                                                      \
    const auto now = std::chrono::steady_clock::now();                                      \
    std::fprintf(stderr, "%s %.1f ms\n", name,                                              \
                 std::chrono::duration<double, std::milli>(now - tnf_prev).count());        \
    tnf_prev = now;                                                                         \
  } while (0)
#else
#define TNF_TICK_START
#define TNF_TICK(name)
#endif

namespace {

using Result = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Receivers per work item: ~500 atoms x ~50 edges keeps each item ~100 us of work at water
// density, small enough for dynamic load balance and large enough to amortise the scheduling.
constexpr int64_t kChunk = 512;
// Bins of width >= cutoff (27 bins visited) measured faster than cutoff/2 (125 bins) and
// cutoff/3 on 100k water-density atoms at 5 A: 0.43 / 0.54 / 0.83 s CPU single-threaded; the
// per-bin loop overhead outweighs the 42% fewer distance tests.
constexpr int kBinsPerCutoff = 1;

// Rows hold ~50 keys at water density. Bins are visited in x-major order and atoms sit in
// ascending order inside a bin, so for atoms numbered in any spatially coherent order (molecules
// built on a grid, MD frames, most input files) a row arrives nearly sorted: insertion sort is
// then ~linear, and measured 25% of the whole search's CPU time cheaper than std::sort at 100k
// water atoms. Long or badly ordered rows fall back to std::sort (n log n).
void sort_row(uint64_t* a, size_t n) {
  size_t moves = 0;
  const size_t budget = 8 * n + 64;
  for (size_t k = 1; k < n; ++k) {
    const uint64_t key = a[k];
    size_t m = k;
    while (m > 0 && a[m - 1] > key) {
      a[m] = a[m - 1];
      --m;
    }
    a[m] = key;
    moves += k - m;
    if (moves > budget) {  // far from sorted: finish with n log n
      std::sort(a, a + n);
      return;
    }
  }
}

// Threads for a problem of n work items (atoms, or candidate pairs / 64). Each OpenMP region
// ends in a barrier; on this shared 2-core machine (load average ~9) a second thread that is not
// scheduled made a 1k-atom search take ~100 ms instead of 3 ms serial, while from ~30k atoms on
// two threads win (100k: 2.3-3.5 s vs 4.9-6.0 s wall under the same load). Below 8192 atoms the
// serial search is < 25 ms, so a possible scheduling delay is not worth risking.
constexpr int64_t kParallelAtoms = 8192;

int num_threads(int64_t n) {
  return n >= kParallelAtoms ? std::max(1, at::get_num_threads()) : 1;
}

// The outputs are ~72 B per edge (380 MB at 100k water atoms, fp64) in fresh mmap'd memory, and
// first-touch page faults of 4 KiB pages cost as much as the search itself on this machine
// (~0.5 s for 380 MB under load). Asking for transparent huge pages on the 2 MiB-aligned
// interior of big outputs cuts the number of faults ~500x; it is only advice (THP "madvise"
// mode) and a no-op where unsupported.
void advise_huge_pages(const at::Tensor& t) {
#ifdef MADV_HUGEPAGE
  const size_t bytes = t.numel() * t.element_size();
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  if (bytes < 4 * kHuge) return;
  const uintptr_t p = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t a = (p + kHuge - 1) & ~(kHuge - 1), e = (p + bytes) & ~(kHuge - 1);
  if (e > a) madvise(reinterpret_cast<void*>(a), e - a, MADV_HUGEPAGE);
#else
  (void)t;
#endif
}


// Per-molecule atom ranges from a sorted batch vector.
std::vector<int64_t> molecule_begin(const int64_t* batch, int64_t n, int64_t n_mol) {
  std::vector<int64_t> begin(static_cast<size_t>(n_mol + 1), n);
  int64_t a = 0;
  for (int64_t m = 0; m < n_mol; ++m) {
    while (a < n && batch[a] < m) ++a;
    begin[static_cast<size_t>(m)] = a;
  }
  return begin;
}

void check_common(const at::Tensor& pos, const at::Tensor& batch, const c10::optional<at::Tensor>& box) {
  TORCH_CHECK(pos.dim() == 2 && pos.size(1) == 3, "pos must be [N, 3]");
  TORCH_CHECK(pos.scalar_type() == at::kFloat || pos.scalar_type() == at::kDouble,
              "pos must be float32 or float64");
  TORCH_CHECK(batch.scalar_type() == at::kLong && batch.dim() == 1 && batch.size(0) == pos.size(0),
              "batch must be int64 [N]");
  if (box.has_value())
    TORCH_CHECK(box->scalar_type() == at::kDouble && box->dim() == 3 && box->size(1) == 3 &&
                    box->size(2) == 3,
                "box must be float64 [n_molecules, 3, 3]");
}

template <typename scalar_t>
void write_edges(int64_t e, int64_t i, int64_t j, const double s[3], const double v[3], bool self,
                 int64_t* ei, scalar_t* sh, scalar_t* vec, scalar_t* dist, int64_t E) {
  ei[e] = i;
  ei[E + e] = j;
  for (int c = 0; c < 3; ++c) {
    sh[3 * e + c] = static_cast<scalar_t>(s[c]);
    vec[3 * e + c] = static_cast<scalar_t>(v[c]);
  }
  dist[e] = self ? scalar_t(0)
                 : static_cast<scalar_t>(std::sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]));
}

Result radius_graph_cpu(const at::Tensor& pos_in, const at::Tensor& batch_in,
                        const c10::optional<at::Tensor>& box_in, double cutoff,
                        double cutoff_lower, bool loop) {
  TNF_TICK_START;
  check_common(pos_in, batch_in, box_in);
  const int64_t N = pos_in.size(0);
  const auto dtype = pos_in.scalar_type();
  const at::Tensor pos_d = pos_in.to(at::kDouble).contiguous();
  const at::Tensor batch = batch_in.contiguous();
  const double* pos = pos_d.data_ptr<double>();
  const int64_t* bat = batch.data_ptr<int64_t>();
  const int64_t n_mol = N ? bat[N - 1] + 1 : 0;
  const bool periodic = box_in.has_value();
  at::Tensor box;
  if (periodic) {
    box = box_in->contiguous();
    TORCH_CHECK(box.size(0) >= n_mol, "box must hold one cell per molecule");
  }

  const std::vector<int64_t> mbeg = molecule_begin(bat, N, n_mol);
  std::vector<int64_t> counts(static_cast<size_t>(n_mol));
  std::vector<double> lo(static_cast<size_t>(3 * n_mol), 0.0), hi(static_cast<size_t>(3 * n_mol), 0.0);
  double max_abs = 0.0;
  for (int64_t m = 0; m < n_mol; ++m) {
    counts[m] = mbeg[m + 1] - mbeg[m];
    for (int k = 0; k < 3; ++k) {
      double l = INFINITY, h = -INFINITY;
      for (int64_t a = mbeg[m]; a < mbeg[m + 1]; ++a) {
        l = std::min(l, pos[3 * a + k]);
        h = std::max(h, pos[3 * a + k]);
      }
      lo[3 * m + k] = l;
      hi[3 * m + k] = h;
      if (counts[m]) max_abs = std::max(max_abs, std::max(std::fabs(l), std::fabs(h)));
    }
  }
  tnf::Setup st;
  try {
    st = tnf::make_setup(n_mol, periodic ? box.data_ptr<double>() : nullptr, lo.data(), hi.data(),
                         counts.data(), cutoff, cutoff_lower, max_abs, kBinsPerCutoff);
  } catch (const std::invalid_argument& err) {
    TORCH_CHECK_VALUE(false, err.what());
  }
  TORCH_CHECK_VALUE(static_cast<double>(N + 1) * static_cast<double>(st.codec.K) < 1.8e19,
                    "cutoff spans too many periodic images for the 64-bit edge keys");

  TNF_TICK("setup");
  // Bin every atom; counting sort by bin keeps ascending atom order inside each bin.
  std::vector<double> wrap(static_cast<size_t>(3 * N)), pw(static_cast<size_t>(3 * N));
  std::vector<int64_t> bins(static_cast<size_t>(3 * N)), cell_of(static_cast<size_t>(N));
  const int nt = num_threads(N);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t a = 0; a < N; ++a) {
    const tnf::Grid& g = st.grids[bat[a]];
    tnf::locate(g, pos + 3 * a, &wrap[3 * a], &pw[3 * a], &bins[3 * a]);
    cell_of[a] = g.cell_begin + (bins[3 * a] * g.n[1] + bins[3 * a + 1]) * g.n[2] + bins[3 * a + 2];
  }
  std::vector<int64_t> cell_start(static_cast<size_t>(st.n_cells + 1), 0);
  for (int64_t a = 0; a < N; ++a) ++cell_start[cell_of[a] + 1];
  for (int64_t c = 0; c < st.n_cells; ++c) cell_start[c + 1] += cell_start[c];
  std::vector<int64_t> cell_atom(static_cast<size_t>(N)), fill(cell_start.begin(), cell_start.end() - 1);
  std::vector<double> cell_pos(static_cast<size_t>(3 * N)), cell_x(static_cast<size_t>(3 * N)),
      cell_wrap(static_cast<size_t>(3 * N));
  for (int64_t a = 0; a < N; ++a) {
    const int64_t q = fill[cell_of[a]]++;
    cell_atom[q] = a;
    for (int c = 0; c < 3; ++c) {
      cell_pos[3 * q + c] = pw[3 * a + c];
      cell_x[3 * q + c] = pos[3 * a + c];
      cell_wrap[3 * q + c] = wrap[3 * a + c];
    }
  }

  TNF_TICK("bin");
  // Search: each chunk of receivers appends its sorted keys to its own buffer.
  const int64_t n_chunks = (N + kChunk - 1) / kChunk;
  std::vector<std::vector<uint64_t>> keys(static_cast<size_t>(n_chunks));
  at::Tensor row_ptr = at::zeros({N + 1}, at::kLong);
  int64_t* rp = row_ptr.data_ptr<int64_t>();
  const tnf::KeyCodec codec = st.codec;
  const tnf::SearchParams params = st.params;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t ch = 0; ch < n_chunks; ++ch) {
    std::vector<uint64_t>& buf = keys[ch];
    buf.reserve(static_cast<size_t>(kChunk * 64));
    for (int64_t i = ch * kChunk; i < std::min(N, (ch + 1) * kChunk); ++i) {
      const size_t start = buf.size();
      const int64_t zero[3] = {0, 0, 0};
      if (loop) buf.push_back(codec.encode(i, zero));
      tnf::search_receiver(i, st.grids[bat[i]], &bins[3 * i], pos + 3 * i, &wrap[3 * i],
                           cell_start.data(), cell_atom.data(), cell_pos.data(), cell_x.data(),
                           cell_wrap.data(), params,
                           [&](int64_t j, const int64_t rel[3]) { buf.push_back(codec.encode(j, rel)); });
      sort_row(buf.data() + start, buf.size() - start);
      rp[i + 1] = static_cast<int64_t>(buf.size() - start);
    }
  }
  TNF_TICK("search");
  for (int64_t i = 0; i < N; ++i) rp[i + 1] += rp[i];
  const int64_t E = rp[N];

  const auto fopt = at::TensorOptions().dtype(dtype);
  at::Tensor edge_index = at::empty({2, E}, at::kLong);
  at::Tensor shifts = at::empty({E, 3}, fopt), vec = at::empty({E, 3}, fopt), dist = at::empty({E}, fopt);
  for (const at::Tensor* t : {&edge_index, &shifts, &vec, &dist}) advise_huge_pages(*t);
  // (a lambda, not AT_DISPATCH: an OpenMP pragma cannot sit inside a macro argument)
  auto fill_edges = [&](auto zero) {
    using scalar_t = decltype(zero);
    int64_t* ei = edge_index.data_ptr<int64_t>();
    scalar_t* sh = shifts.data_ptr<scalar_t>();
    scalar_t* ve = vec.data_ptr<scalar_t>();
    scalar_t* di = dist.data_ptr<scalar_t>();
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t ch = 0; ch < n_chunks; ++ch) {
      const std::vector<uint64_t>& buf = keys[ch];
      size_t k = 0;
      for (int64_t i = ch * kChunk; i < std::min(N, (ch + 1) * kChunk); ++i) {
        const tnf::Grid& g = st.grids[bat[i]];
        for (int64_t e = rp[i]; e < rp[i + 1]; ++e, ++k) {
          int64_t j, rel[3];
          codec.decode(buf[k], &j, rel);
          double s[3] = {0.0, 0.0, 0.0}, v[3];
          if (g.periodic)
            for (int c = 0; c < 3; ++c) s[c] = wrap[3 * j + c] - wrap[3 * i + c] + rel[c];
          tnf::exact_d2(pos + 3 * i, pos + 3 * j, s, g.box, g.periodic, v);
          const bool self = (i == j && s[0] == 0.0 && s[1] == 0.0 && s[2] == 0.0);
          write_edges<scalar_t>(e, i, j, s, v, self, ei, sh, ve, di, E);
        }
      }
      std::vector<uint64_t>().swap(keys[ch]);  // free early: the buffers are ~8 B per edge
    }
  };
  TNF_TICK("alloc");
  if (dtype == at::kFloat) fill_edges(0.0f); else fill_edges(0.0);
  TNF_TICK("fill");
  return {edge_index, shifts, vec, dist, row_ptr};
}

// Keep the candidate edges (sorted, e.g. a Verlet list built with cutoff + skin) that are within
// [cutoff_lower, cutoff) now, with exactly the membership test of the search itself, so the
// result equals a fresh build. Self-loops (i, i, 0) are kept iff loop.
Result filter_pairs_cpu(const at::Tensor& pos_in, const at::Tensor& batch_in,
                        const c10::optional<at::Tensor>& box_in, const at::Tensor& edge_index_in,
                        const at::Tensor& shifts_in, double cutoff, double cutoff_lower, bool loop) {
  check_common(pos_in, batch_in, box_in);
  const int64_t N = pos_in.size(0);
  const auto dtype = pos_in.scalar_type();
  const at::Tensor pos_d = pos_in.to(at::kDouble).contiguous();
  const at::Tensor batch = batch_in.contiguous();
  const at::Tensor cand = edge_index_in.to(at::kLong).contiguous();
  const at::Tensor cshift = shifts_in.to(at::kDouble).contiguous();
  const bool periodic = box_in.has_value();
  const at::Tensor box = periodic ? box_in->contiguous() : at::Tensor();
  const double* pos = pos_d.data_ptr<double>();
  const int64_t* bat = batch.data_ptr<int64_t>();
  const int64_t C = cand.size(1);
  const int64_t* ci = cand.data_ptr<int64_t>();
  const int64_t* cj = ci + C;
  const double* cs = cshift.data_ptr<double>();
  const double* bx = periodic ? box.data_ptr<double>() : nullptr;
  const double cut2 = cutoff * cutoff, low2 = cutoff_lower * cutoff_lower;
  const int nt = num_threads(C / 64);
  const int64_t block = 1 << 14;
  const int64_t n_blocks = (C + block - 1) / block;
  std::vector<uint8_t> keep(static_cast<size_t>(C));
  std::vector<int64_t> block_count(static_cast<size_t>(n_blocks + 1), 0);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t b = 0; b < n_blocks; ++b) {
    int64_t cnt = 0;
    for (int64_t e = b * block; e < std::min(C, (b + 1) * block); ++e) {
      const int64_t i = ci[e], j = cj[e];
      const double* s = cs + 3 * e;
      double v[3];
      const double d2 = tnf::exact_d2(pos + 3 * i, pos + 3 * j, s, periodic ? bx + 9 * bat[i] : nullptr,
                                      periodic, v);
      const bool self = (i == j && s[0] == 0.0 && s[1] == 0.0 && s[2] == 0.0);
      const bool k = self ? loop : (d2 < cut2 && d2 >= low2);
      keep[e] = k;
      cnt += k;
    }
    block_count[b + 1] = cnt;
  }
  for (int64_t b = 0; b < n_blocks; ++b) block_count[b + 1] += block_count[b];
  const int64_t E = block_count[n_blocks];
  const auto fopt = at::TensorOptions().dtype(dtype);
  at::Tensor edge_index = at::empty({2, E}, at::kLong);
  at::Tensor shifts = at::empty({E, 3}, fopt), vec = at::empty({E, 3}, fopt), dist = at::empty({E}, fopt);
  at::Tensor row_ptr = at::zeros({N + 1}, at::kLong);
  int64_t* rp = row_ptr.data_ptr<int64_t>();
  auto fill_edges = [&](auto zero) {
    using scalar_t = decltype(zero);
    int64_t* ei = edge_index.data_ptr<int64_t>();
    scalar_t* sh = shifts.data_ptr<scalar_t>();
    scalar_t* ve = vec.data_ptr<scalar_t>();
    scalar_t* di = dist.data_ptr<scalar_t>();
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t b = 0; b < n_blocks; ++b) {
      int64_t out = block_count[b];
      for (int64_t e = b * block; e < std::min(C, (b + 1) * block); ++e) {
        if (!keep[e]) continue;
        const int64_t i = ci[e], j = cj[e];
        const double* s = cs + 3 * e;
        double v[3];
        tnf::exact_d2(pos + 3 * i, pos + 3 * j, s, periodic ? bx + 9 * bat[i] : nullptr, periodic, v);
        const bool self = (i == j && s[0] == 0.0 && s[1] == 0.0 && s[2] == 0.0);
        write_edges<scalar_t>(out++, i, j, s, v, self, ei, sh, ve, di, E);
      }
    }
  };
  if (dtype == at::kFloat) fill_edges(0.0f); else fill_edges(0.0);
  const int64_t* eo = edge_index.data_ptr<int64_t>();
  for (int64_t e = 0; e < E; ++e) ++rp[eo[e] + 1];
  for (int64_t i = 0; i < N; ++i) rp[i + 1] += rp[i];
  return {edge_index, shifts, vec, dist, row_ptr};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(tensornet_fast, m) {
  m.def(
      "radius_graph(Tensor pos, Tensor batch, Tensor? box, float cutoff, float cutoff_lower, "
      "bool loop) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "filter_pairs(Tensor pos, Tensor batch, Tensor? box, Tensor edge_index, Tensor shifts, "
      "float cutoff, float cutoff_lower, bool loop) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(tensornet_fast, CPU, m) {
  m.impl("radius_graph", &radius_graph_cpu);
  m.impl("filter_pairs", &filter_pairs_cpu);
}
