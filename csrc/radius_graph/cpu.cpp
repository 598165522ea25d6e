// CPU cell-list radius graph (OpenMP) and the Verlet-list filter, the CPU kernels of
// torch.ops.tensornet_fast.radius_graph / filter_pairs, and the static-capacity search
// (radius_graph_plan / radius_graph_static); registered in csrc/registration.cpp. Inputs are
// validated in Python (tensornet_fast/neighbors/radius_graph.py); the checks here guard the C++
// invariants only.
//
// Search: atoms are binned (counting sort, bin order kept in structure-of-arrays form); each
// receiver visits the (d0, d1) strips of bins around its own, and the bins of a strip that
// survive the distance bound are contiguous in memory, so a strip is one or two (periodic wrap)
// contiguous candidate loops (AVX2 when available) that append sort keys branch-free. Each row
// is sorted, then a second pass decodes the keys into the outputs with the exact float64 test's
// vector. Per 100k water atoms at 5 A (single thread, loaded 2-core EPYC): bin 10 ms, search
// 105 ms (a third of it the row sorts), fill 50 ms with cached output pages (85 ms fresh).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/zeros.h>

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <utility>
#include <cstdlib>
#include <cstring>
#include <tuple>
#include <vector>

#include "core.h"
#include "ops.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

#ifdef TNF_PROFILE  // dev builds (-DTNF_PROFILE): phase timings (wall, process CPU) on stderr
#include <chrono>
#include <cstdio>
#include <ctime>
#define TNF_TICK_START                                 \
  auto tnf_prev = std::chrono::steady_clock::now();    \
  std::clock_t tnf_cprev = std::clock()
#define TNF_TICK(name)                                                                       \
  do {                                                                                       \
    const auto now = std::chrono::steady_clock::now();                                       \
    const std::clock_t cnow = std::clock();                                                  \
    std::fprintf(stderr, "%s %.1f ms (cpu %.1f ms)\n", name,                                 \
                 std::chrono::duration<double, std::milli>(now - tnf_prev).count(),          \
                 1e3 * static_cast<double>(cnow - tnf_cprev) / CLOCKS_PER_SEC);              \
    tnf_prev = now;                                                                          \
    tnf_cprev = cnow;                                                                        \
  } while (0)
#else
#define TNF_TICK_START
#define TNF_TICK(name)
#endif

namespace tnf {
namespace {

// Receivers per work item: ~500 atoms x ~50 edges keeps each item ~100 us of work at water
// density, small enough for dynamic load balance and large enough to amortise the scheduling.
constexpr int64_t kChunk = 512;
// Bins of width >= cutoff: with the strip loops, cutoff/2 bins halve the distance tests but
// measured no faster (2.7x more loop starts) on 100k water-density atoms at 5 A.
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

// Per-molecule atom counts, bounding boxes and the largest |coordinate|.
struct Bounds {
  std::vector<int64_t> counts;
  std::vector<double> lo, hi;
  double max_abs = 0.0;
};

Bounds molecule_bounds(const double* pos, const int64_t* bat, int64_t N, int64_t n_mol) {
  const std::vector<int64_t> mbeg = molecule_begin(bat, N, n_mol);
  Bounds b;
  b.counts.resize(static_cast<size_t>(n_mol));
  b.lo.assign(static_cast<size_t>(3 * n_mol), 0.0);
  b.hi.assign(static_cast<size_t>(3 * n_mol), 0.0);
  for (int64_t m = 0; m < n_mol; ++m) {
    b.counts[m] = mbeg[m + 1] - mbeg[m];
    for (int k = 0; k < 3; ++k) {
      double l = INFINITY, h = -INFINITY;
      for (int64_t a = mbeg[m]; a < mbeg[m + 1]; ++a) {
        l = std::min(l, pos[3 * a + k]);
        h = std::max(h, pos[3 * a + k]);
      }
      b.lo[3 * m + k] = l;
      b.hi[3 * m + k] = h;
      if (b.counts[m]) b.max_abs = std::max(b.max_abs, std::max(std::fabs(l), std::fabs(h)));
    }
  }
  return b;
}

tnf::Setup setup_or_throw(int64_t n_mol, const double* boxes, const Bounds& b, int64_t N,
                          double cutoff, double cutoff_lower, double max_abs) {
  tnf::Setup st;
  try {
    st = tnf::make_setup(n_mol, boxes, b.lo.data(), b.hi.data(), b.counts.data(), cutoff,
                         cutoff_lower, max_abs, kBinsPerCutoff);
  } catch (const std::invalid_argument& err) {
    TORCH_CHECK_VALUE(false, err.what());
  }
  TORCH_CHECK_VALUE(st.codec.fits(N + 1),
                    "cutoff spans too many periodic images for the 64-bit edge keys");
  return st;
}

// Atoms in bin order. px / py / pz: wrapped positions (structure of arrays, so the candidate
// loop reads contiguous memory); ckey: the sender part of the sort key (j << 3B); catom: atom
// index. Per atom (input order): bins, slot (its position in bin order) and rec = original
// position and integer wrap (x, y, z, w0, w1, w2), read by the exact test and the fill.
struct Binned {
  std::vector<int64_t> cell_start, catom, bins, slot;
  std::vector<double> px, py, pz, rec;
  std::vector<uint64_t> ckey;
};

void bin_atoms(const tnf::Setup& st, const double* pos, const int64_t* bat, int64_t N, int nt,
               Binned& b) {
  const size_t n = static_cast<size_t>(N);
  std::vector<double> pw(3 * n);
  std::vector<int64_t> cell_of(n);
  b.bins.resize(3 * n);
  b.rec.resize(6 * n);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t a = 0; a < N; ++a) {
    const tnf::Grid& g = st.grids[bat[a]];
    double w[3];
    tnf::locate(g, pos + 3 * a, w, &pw[3 * a], &b.bins[3 * a]);
    for (int c = 0; c < 3; ++c) {
      b.rec[6 * a + c] = pos[3 * a + c];
      b.rec[6 * a + 3 + c] = w[c];
    }
    cell_of[a] = g.cell_begin + (b.bins[3 * a] * g.n[1] + b.bins[3 * a + 1]) * g.n[2] +
                 b.bins[3 * a + 2];
  }
  // Counting sort by bin keeps ascending atom order inside each bin.
  b.cell_start.assign(static_cast<size_t>(st.n_cells + 1), 0);
  for (int64_t a = 0; a < N; ++a) ++b.cell_start[cell_of[a] + 1];
  for (int64_t c = 0; c < st.n_cells; ++c) b.cell_start[c + 1] += b.cell_start[c];
  std::vector<int64_t> fill(b.cell_start.begin(), b.cell_start.end() - 1);
  b.catom.resize(n);
  b.slot.resize(n);
  b.px.resize(n);
  b.py.resize(n);
  b.pz.resize(n);
  b.ckey.resize(n);
  const int shift = 3 * st.codec.B;
  for (int64_t a = 0; a < N; ++a) {
    const int64_t q = fill[cell_of[a]]++;
    b.catom[q] = a;
    b.slot[a] = q;
    b.px[q] = pw[3 * a];
    b.py[q] = pw[3 * a + 1];
    b.pz[q] = pw[3 * a + 2];
    b.ckey[q] = static_cast<uint64_t>(a) << shift;
  }
}

// Memory of large outputs and key arenas: whole 2 MiB pages with huge-page advice (first-touch
// faults of 4 KiB pages cost as much as the search itself on 380 MB of output), and a small
// cache of freed blocks. Fresh anonymous memory is zeroed by the kernel on first touch, which
// costs about a quarter of a 100k-atom search (72 B per edge of output); a block freed by a
// previous call is reused as it is. The cache keeps at most kCacheBlocks blocks and
// TNF_RADIUS_GRAPH_CACHE_MB megabytes (default 1024; 0 disables it), everything else is
// unmapped at once.
class BlockCache {
 public:
  static constexpr size_t kHuge = size_t(1) << 21;
  static constexpr size_t kCacheBlocks = 16;

  static BlockCache& get() {
    static BlockCache* cache = new BlockCache();  // never destroyed: tensors may outlive exit
    return *cache;
  }

  // A block of at least `bytes`; *got receives its size.
  void* acquire(size_t bytes, size_t* got) {
    bytes = round_up(bytes);
    {
      std::lock_guard<std::mutex> lock(mu_);
      size_t best = free_.size();
      for (size_t k = 0; k < free_.size(); ++k)
        if (free_[k].second >= bytes && free_[k].second <= bytes + bytes / 4 + kHuge &&
            (best == free_.size() || free_[k].second < free_[best].second))
          best = k;
      if (best < free_.size()) {
        void* p = free_[best].first;
        *got = free_[best].second;
        cached_ -= *got;
        free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(best));
        return p;
      }
    }
    // Slightly larger than asked, so the next call's graph of about the same size fits.
    const size_t size = round_up(bytes + bytes / 16);
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    TORCH_CHECK(p != MAP_FAILED, "radius_graph: out of memory (", size, " bytes)");
#ifdef MADV_HUGEPAGE
    madvise(p, size, MADV_HUGEPAGE);
#endif
    *got = size;
    return p;
  }

  void release(void* p, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (bytes + cached_ <= limit_ && free_.size() < kCacheBlocks) {
        free_.emplace_back(p, bytes);
        cached_ += bytes;
        return;
      }
    }
    munmap(p, bytes);
  }

 private:
  BlockCache() {
    const char* env = std::getenv("TNF_RADIUS_GRAPH_CACHE_MB");
    limit_ = (env != nullptr ? static_cast<size_t>(std::max(0L, std::atol(env))) : size_t(1024))
             << 20;
  }
  static size_t round_up(size_t b) { return (std::max<size_t>(b, 1) + kHuge - 1) & ~(kHuge - 1); }

  std::mutex mu_;
  std::vector<std::pair<void*, size_t>> free_;
  size_t cached_ = 0, limit_ = 0;
};

// Outputs edge_index [2, E], shifts / vec [E, 3], dist [E] (dtype), each in its own block (one
// block per tensor: torch.save refuses storages viewed as different dtypes). Small graphs use
// ordinary tensors.
at::Tensor cached_empty(at::IntArrayRef sizes, at::ScalarType dtype) {
  int64_t numel = 1;
  for (int64_t d : sizes) numel *= d;
  const size_t bytes = static_cast<size_t>(numel) * at::elementSize(dtype);
  if (bytes < (size_t(4) << 20)) return at::empty(sizes, at::TensorOptions().dtype(dtype));
  size_t got = 0;
  void* p = BlockCache::get().acquire(bytes, &got);
  return at::from_blob(
      p, sizes, [got](void* ptr) { BlockCache::get().release(ptr, got); },
      at::TensorOptions().dtype(dtype));
}

// Per-thread storage of the rows' sort keys: blocks of kBlock keys, a row never spans two.
class Arena {
 public:
  static constexpr size_t kBlock = size_t(1) << 22;  // 32 MiB
  ~Arena() {
    for (const auto& b : blocks_) BlockCache::get().release(b.first, b.second);
  }
  // Room for `need` more keys after the `used` keys of the current row, which starts at *row;
  // moves the row into a new block when the current one is full.
  void reserve(uint64_t*& row, size_t used, size_t need) {
    if (row + used + need <= end_) return;
    size_t bytes = 0;
    uint64_t* p = static_cast<uint64_t*>(BlockCache::get().acquire(
        std::max(kBlock, 2 * (used + need)) * sizeof(uint64_t), &bytes));
    const size_t cap = bytes / sizeof(uint64_t);
    blocks_.emplace_back(p, bytes);
    if (used) std::memcpy(p, row, used * sizeof(uint64_t));
    row = p;
    end_ = p + cap;
  }
  uint64_t* next_row() const { return head_; }
  void commit(uint64_t* row, size_t used) { head_ = row + used; }
  void start() {
    if (head_ == nullptr) {
      uint64_t* row = nullptr;
      reserve(row, 0, 1);
      head_ = row;
    }
  }

 private:
  std::vector<std::pair<void*, size_t>> blocks_;
  uint64_t* head_ = nullptr;
  uint64_t* end_ = nullptr;
};

struct Thresholds {
  double lc2, ll2;  // accept candidates with ll2 <= r2 < lc2 ...
  double tc2, tl2;  // ... and check those outside [tl2, tc2) with the exact test
};

// One contiguous range of candidates [q0, q1) seen from the point t (the receiver minus the
// image offset): appends ckey[q] | code for every q with ll2 <= r2 < lc2 to out[k...] and returns
// the new k. Candidates with r2 outside [tl2, tc2) are in the rounding band of a threshold and
// go through exact(q) (the fp64 test on original positions), which may reject them.
struct ScanArgs {
  const double *px, *py, *pz;
  const uint64_t* ck;
  double t0, t1, t2;
  uint64_t code;
  double lc2, ll2, tc2, tl2;
};

// The exact test of a band candidate q (rare: kept out of line, off the hot loops).
struct ExactArgs {
  const double* rec;       // per atom: x, y, z, w0, w1, w2
  const int64_t* catom;    // bin order -> atom
  const double* xi;        // receiver: original position, then wrap
  const double* box;
  int64_t m0, m1, m2;      // image of the neighbour bin
  double cut2, low2;
};

__attribute__((noinline, cold)) bool exact_ok(const ExactArgs& x, int64_t q) {
  const double* xj = x.rec + 6 * x.catom[q];
  const double* wi = x.xi + 3;
  const double s[3] = {xj[3] - wi[0] - static_cast<double>(x.m0),
                       xj[4] - wi[1] - static_cast<double>(x.m1),
                       xj[5] - wi[2] - static_cast<double>(x.m2)};
  double v[3];
  const double e2 = tnf::exact_d2(x.xi, xj, s, x.box, true, v);
  return e2 < x.cut2 && e2 >= x.low2;
}

template <bool kBand>
__attribute__((always_inline)) inline size_t scan_scalar(const ScanArgs& a, int64_t q0,
                                                         int64_t q1, uint64_t* __restrict out,
                                                         size_t k, const ExactArgs& exact) {
  for (int64_t q = q0; q < q1; ++q) {
    const double vx = a.t0 - a.px[q], vy = a.t1 - a.py[q], vz = a.t2 - a.pz[q];
    const double r2 = vx * vx + vy * vy + vz * vz;
    const bool acc = (r2 < a.lc2) & (r2 >= a.ll2);
    out[k] = a.ck[q] | a.code;  // branch-free compaction: advance only on acceptance
    k += acc;
    if (kBand && __builtin_expect(acc & ((r2 >= a.tc2) | (r2 < a.tl2)), 0))
      k -= !exact_ok(exact, q);
  }
  return k;
}

#if defined(__x86_64__) && defined(__GNUC__)
#define TNF_HAVE_AVX2_SCAN 1
// Lane permutations for the 4-lane compaction: entry m moves the lanes set in m to the front.
struct CompressTable {
  alignas(32) int32_t idx[16][8];
  CompressTable() {
    for (int m = 0; m < 16; ++m) {
      int o = 0;
      for (int l = 0; l < 4; ++l)
        if (m >> l & 1) {
          idx[m][2 * o] = 2 * l;
          idx[m][2 * o + 1] = 2 * l + 1;
          ++o;
        }
      for (; o < 4; ++o) idx[m][2 * o] = idx[m][2 * o + 1] = 0;
    }
  }
};
const CompressTable kCompress;

// AVX2 version of scan_scalar, same results (the same r2 expression, rounded the same way:
// target avx2 without fma, so nothing is contracted). Selected at run time.
template <bool kBand>
__attribute__((target("avx2"))) size_t scan_avx2(const ScanArgs& a, int64_t q0, int64_t q1,
                                                 uint64_t* __restrict out, size_t k,
                                                 const ExactArgs& exact) {
  const __m256d T0 = _mm256_set1_pd(a.t0), T1 = _mm256_set1_pd(a.t1), T2 = _mm256_set1_pd(a.t2);
  const __m256d LC = _mm256_set1_pd(a.lc2), LL = _mm256_set1_pd(a.ll2);
  const __m256d TC = _mm256_set1_pd(a.tc2), TL = _mm256_set1_pd(a.tl2);
  const __m256i CODE = _mm256_set1_epi64x(static_cast<long long>(a.code));
  int64_t q = q0;
  for (; q + 4 <= q1; q += 4) {
    const __m256d vx = _mm256_sub_pd(T0, _mm256_loadu_pd(a.px + q));
    const __m256d vy = _mm256_sub_pd(T1, _mm256_loadu_pd(a.py + q));
    const __m256d vz = _mm256_sub_pd(T2, _mm256_loadu_pd(a.pz + q));
    const __m256d r2 = _mm256_add_pd(
        _mm256_add_pd(_mm256_mul_pd(vx, vx), _mm256_mul_pd(vy, vy)), _mm256_mul_pd(vz, vz));
    const __m256d acc =
        _mm256_and_pd(_mm256_cmp_pd(r2, LC, _CMP_LT_OQ), _mm256_cmp_pd(r2, LL, _CMP_GE_OQ));
    int m = _mm256_movemask_pd(acc);
    if (kBand) {
      const __m256d band = _mm256_and_pd(
          acc, _mm256_or_pd(_mm256_cmp_pd(r2, TC, _CMP_GE_OQ), _mm256_cmp_pd(r2, TL, _CMP_LT_OQ)));
      int bm = _mm256_movemask_pd(band);
      while (__builtin_expect(bm != 0, 0)) {
        const int l = __builtin_ctz(bm);
        bm &= bm - 1;
        if (!exact_ok(exact, q + l)) m &= ~(1 << l);
      }
    }
    const __m256i keys = _mm256_or_si256(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.ck + q)), CODE);
    const __m256i perm =
        _mm256_load_si256(reinterpret_cast<const __m256i*>(kCompress.idx[m]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + k),
                        _mm256_permutevar8x32_epi32(keys, perm));
    k += static_cast<size_t>(__builtin_popcount(m));
  }
  return scan_scalar<kBand>(a, q, q1, out, k, exact);
}

bool use_avx2() {
  const char* env = std::getenv("TNF_RADIUS_GRAPH_SIMD");
  if (env != nullptr && env[0] == '0') return false;  // tests run the scalar path this way
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2");
}
#else
bool use_avx2() { return false; }
#endif

// Row of receiver i: appends the keys of every accepted (j, relative shift), unsorted, to
// row[n...]; returns the new n. kPeriodic: molecule with a box (else open boundaries, where the
// test on r2 already is the exact one).
template <bool kPeriodic>
size_t search_row(int64_t i, const tnf::Grid& g, const Binned& b, const tnf::SearchParams& p,
                  const Thresholds& th, const tnf::KeyCodec& codec, bool avx2, Arena& arena,
                  uint64_t*& row, size_t n) {
  const int64_t* bi = &b.bins[3 * i];
  const int64_t si = b.slot[i];
  const double pwi[3] = {b.px[si], b.py[si], b.pz[si]};
  const double* xi = &b.rec[6 * i];  // original position, then wrap
  double gap[3][2];
  for (int k = 0; k < 3; ++k) {
    const double u = kPeriodic ? (pwi[0] * g.inv[k] + pwi[1] * g.inv[3 + k] +
                                  pwi[2] * g.inv[6 + k]) * static_cast<double>(g.n[k])
                               : (pwi[k] - g.origin[k]) * g.scale[k];
    const double f = u - static_cast<double>(bi[k]);
    gap[k][0] = f > 0.0 ? f : 0.0;
    gap[k][1] = f < 1.0 ? 1.0 - f : 0.0;
  }
  // Lower bound of the distance to a bin d steps away along axis k (see search_receiver).
  auto axis_gap = [&](int k, int64_t d) -> double {
    if (d == 0) return 0.0;
    const double v = d > 0 ? gap[k][1] + static_cast<double>(d - 1)
                           : gap[k][0] + static_cast<double>(-d - 1);
    return v * g.bin_len[k];
  };
  const bool ortho = g.orthogonal != 0;
  auto combine = [ortho](double a, double b2) { return ortho ? a + b2 : std::max(a, b2); };
  const double prune2 = p.loose_cut2 * (1.0 + 1e-9);
  const int64_t* cs = b.cell_start.data();
  const double *px = b.px.data(), *py = b.py.data(), *pz = b.pz.data();
  const uint64_t* ck = b.ckey.data();
  const double lc2 = th.lc2, ll2 = th.ll2, tc2 = th.tc2, tl2 = th.tl2;
  for (int64_t d0 = -g.reach[0]; d0 <= g.reach[0]; ++d0) {
    const double g0 = axis_gap(0, d0);
    if (g0 * g0 >= prune2) continue;
    int64_t u0 = bi[0] + d0, m0 = 0;
    if (kPeriodic) {
      m0 = tnf::floor_div(u0, g.n[0]);
      u0 -= m0 * g.n[0];
    } else if (u0 < 0 || u0 >= g.n[0]) {
      continue;
    }
    for (int64_t d1 = -g.reach[1]; d1 <= g.reach[1]; ++d1) {
      const double g1 = axis_gap(1, d1);
      const double b01 = combine(g0 * g0, g1 * g1);
      if (b01 >= prune2) continue;
      int64_t u1 = bi[1] + d1, m1 = 0;
      if (kPeriodic) {
        m1 = tnf::floor_div(u1, g.n[1]);
        u1 -= m1 * g.n[1];
      } else if (u1 < 0 || u1 >= g.n[1]) {
        continue;
      }
      // The bins of this (d0, d1) strip that survive the bound form one interval of d2
      // (the bound grows with |d2|); consecutive bins are consecutive in memory, so each run
      // without a periodic wrap is one contiguous range of atoms.
      int64_t lo = -g.reach[2], hi = g.reach[2];
      while (lo <= hi) {
        const double g2 = axis_gap(2, lo);
        if (combine(b01, g2 * g2) < prune2) break;
        ++lo;
      }
      while (hi >= lo) {
        const double g2 = axis_gap(2, hi);
        if (combine(b01, g2 * g2) < prune2) break;
        --hi;
      }
      if (!kPeriodic) {
        lo = std::max(lo, -bi[2]);
        hi = std::min(hi, g.n[2] - 1 - bi[2]);
      }
      for (int64_t d2 = lo; d2 <= hi;) {
        int64_t u2 = bi[2] + d2, m2 = 0;
        if (kPeriodic) {
          m2 = tnf::floor_div(u2, g.n[2]);
          u2 -= m2 * g.n[2];
        }
        const int64_t len = std::min(hi - d2 + 1, g.n[2] - u2);
        d2 += len;
        const int64_t cell = g.cell_begin + (u0 * g.n[1] + u1) * g.n[2] + u2;
        const int64_t qa = cs[cell], qb = cs[cell + len];
        if (qa == qb) continue;
        double t[3] = {pwi[0], pwi[1], pwi[2]};
        if (kPeriodic)
          for (int c = 0; c < 3; ++c)
            t[c] = pwi[c] - (m0 * g.box[c] + m1 * g.box[3 + c] + m2 * g.box[6 + c]);
        const uint64_t code = codec.code(-m0, -m1, -m2);
        arena.reserve(row, n, static_cast<size_t>(qb - qa) + 4);  // + 4: full-width stores
        const ScanArgs args{px, py, pz, ck, t[0], t[1], t[2], code, lc2, ll2, tc2, tl2};
        const ExactArgs exact{b.rec.data(), b.catom.data(), xi, g.box, m0, m1, m2, p.cut2, p.low2};
        auto scan = [&](int64_t q0, int64_t q1) {
#ifdef TNF_HAVE_AVX2_SCAN
          if (avx2) {
            n = scan_avx2<kPeriodic>(args, q0, q1, row, n, exact);
            return;
          }
#endif
          n = scan_scalar<kPeriodic>(args, q0, q1, row, n, exact);
        };
        if (m0 == 0 && m1 == 0 && m2 == 0 && si >= qa && si < qb) {
          scan(qa, si);  // the receiver itself (zero image) is not an edge
          scan(si + 1, qb);
        } else {
          scan(qa, qb);
        }
      }
    }
  }
  return n;
}

// The search: sorted keys of every row (row_keys[i], in the arenas) and the row pointer.
struct Rows {
  std::vector<Arena> arenas;
  std::vector<const uint64_t*> keys;
};

void search_all(const tnf::Setup& st, const Binned& b, const int64_t* bat, int64_t N, bool loop,
                int nt, Rows& rows, int64_t* rp) {
  const int64_t n_chunks = (N + kChunk - 1) / kChunk;
  rows.arenas.resize(static_cast<size_t>(nt));
  rows.keys.assign(static_cast<size_t>(N), nullptr);
  const tnf::SearchParams& p = st.params;
  const Thresholds periodic_th{p.loose_cut2, p.loose_low2, p.tight_cut2, p.tight_low2};
  const Thresholds open_th{p.cut2, p.low2, p.cut2, p.low2};
  const tnf::KeyCodec codec = st.codec;
  const bool avx2 = use_avx2();
  const int64_t cap = tnf::max_edges_budget();
  // Nothing may propagate out of the parallel region (std::terminate: SIGABRT, which Python
  // cannot catch): the first exception is kept and rethrown after it, the others stop early.
  std::atomic<int64_t> total{0};
  std::atomic<bool> stop{false};
  std::exception_ptr error;
  std::mutex error_mu;
  rp[0] = 0;
#pragma omp parallel num_threads(nt)
  {
#ifdef _OPENMP
    Arena& arena = rows.arenas[static_cast<size_t>(omp_get_thread_num())];
#else
    Arena& arena = rows.arenas[0];
#endif
    try {
      arena.start();
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mu);
      if (!error) error = std::current_exception();
      stop.store(true);
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t ch = 0; ch < n_chunks; ++ch) {
      if (stop.load(std::memory_order_relaxed)) continue;
      try {
        for (int64_t i = ch * kChunk; i < std::min(N, (ch + 1) * kChunk); ++i) {
          const tnf::Grid& g = st.grids[bat[i]];
          uint64_t* row = arena.next_row();
          size_t n = 0;
          if (loop) {
            const int64_t zero[3] = {0, 0, 0};
            arena.reserve(row, 0, 1);
            row[n++] = codec.encode(i, zero);
          }
          n = g.periodic ? search_row<true>(i, g, b, p, periodic_th, codec, avx2, arena, row, n)
                         : search_row<false>(i, g, b, p, open_th, codec, avx2, arena, row, n);
          sort_row(row, n);
          arena.commit(row, n);
          rows.keys[i] = row;
          rp[i + 1] = static_cast<int64_t>(n);
          if (total.fetch_add(static_cast<int64_t>(n)) + static_cast<int64_t>(n) > cap) {
            stop.store(true);
            break;
          }
        }
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mu);
        if (!error) error = std::current_exception();
        stop.store(true);
      }
    }
  }
  if (error) std::rethrow_exception(error);
  TORCH_CHECK_VALUE(total.load() <= cap, "the radius graph has more than ", cap,
                    " edges, the budget (TENSORNET_FAST_MAX_EDGES); check the positions' units "
                    "and the cutoff");
  for (int64_t i = 0; i < N; ++i) rp[i + 1] += rp[i];
}

// Decode the rows into edge_index (row stride ld), shifts, vec and dist at [rp[i], rp[i + 1]).
template <typename scalar_t>
void fill_edges(const tnf::Setup& st, const Binned& b, const Rows& rows, const int64_t* bat,
                int64_t N, int nt, const int64_t* rp, int64_t* ei, int64_t ld, scalar_t* sh,
                scalar_t* ve, scalar_t* di) {
  const tnf::KeyCodec codec = st.codec;
  const int64_t n_chunks = (N + kChunk - 1) / kChunk;
  const double* rec = b.rec.data();
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t ch = 0; ch < n_chunks; ++ch) {
    for (int64_t i = ch * kChunk; i < std::min(N, (ch + 1) * kChunk); ++i) {
      const tnf::Grid& g = st.grids[bat[i]];
      const double* xi = rec + 6 * i;
      const uint64_t* keys = rows.keys[i];
      const int64_t e0 = rp[i], e1 = rp[i + 1];
      for (int64_t e = e0; e < e1; ++e) {
        int64_t j, rel[3];
        codec.decode(keys[e - e0], &j, rel);
        const double* xj = rec + 6 * j;
        double s[3] = {0.0, 0.0, 0.0}, v[3];
        if (g.periodic)
          for (int c = 0; c < 3; ++c) s[c] = xj[3 + c] - xi[3 + c] + static_cast<double>(rel[c]);
        const double d2 = tnf::exact_d2(xi, xj, s, g.box, g.periodic != 0, v);
        ei[e] = i;
        ei[ld + e] = j;
        for (int c = 0; c < 3; ++c) {
          sh[3 * e + c] = static_cast<scalar_t>(s[c]);
          ve[3 * e + c] = static_cast<scalar_t>(v[c]);
        }
        di[e] = static_cast<scalar_t>(std::sqrt(d2));  // exactly 0 on self-loops (v = 0)
      }
    }
  }
}

}  // namespace

GraphResult radius_graph_cpu(const at::Tensor& pos_in, const at::Tensor& batch_in,
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
  const Bounds bounds = molecule_bounds(pos, bat, N, n_mol);
  const tnf::Setup st = setup_or_throw(n_mol, periodic ? box.data_ptr<double>() : nullptr, bounds,
                                       N, cutoff, cutoff_lower, bounds.max_abs);
  TNF_TICK("setup");
  const int nt = num_threads(N);
  Binned b;
  bin_atoms(st, pos, bat, N, nt, b);
  TNF_TICK("bin");
  at::Tensor row_ptr = at::empty({N + 1}, at::kLong);
  int64_t* rp = row_ptr.data_ptr<int64_t>();
  Rows rows;
  search_all(st, b, bat, N, loop, nt, rows, rp);
  TNF_TICK("search");
  const int64_t E = rp[N];
  at::Tensor edge_index = cached_empty({2, E}, at::kLong);
  at::Tensor shifts = cached_empty({E, 3}, dtype), vec = cached_empty({E, 3}, dtype),
             dist = cached_empty({E}, dtype);
  if (dtype == at::kFloat)
    fill_edges<float>(st, b, rows, bat, N, nt, rp, edge_index.data_ptr<int64_t>(), E,
                      shifts.data_ptr<float>(), vec.data_ptr<float>(), dist.data_ptr<float>());
  else
    fill_edges<double>(st, b, rows, bat, N, nt, rp, edge_index.data_ptr<int64_t>(), E,
                       shifts.data_ptr<double>(), vec.data_ptr<double>(), dist.data_ptr<double>());
  TNF_TICK("fill");
  return {edge_index, shifts, vec, dist, row_ptr};
}

// ------------------------------------------------------------------ static-capacity search
// radius_graph_plan: the grids of a system (host work, once). max_abs: the largest |coordinate|
// the rounding margin must cover (the static search flags positions beyond it).
at::Tensor radius_graph_plan_cpu(const at::Tensor& pos_in, const at::Tensor& batch_in,
                                 const c10::optional<at::Tensor>& box_in, double cutoff,
                                 double cutoff_lower, double max_abs) {
  check_common(pos_in, batch_in, box_in);
  const int64_t N = pos_in.size(0);
  const at::Tensor pos_d = pos_in.to(at::kDouble).contiguous();
  const at::Tensor batch = batch_in.contiguous();
  const double* pos = pos_d.data_ptr<double>();
  const int64_t* bat = batch.data_ptr<int64_t>();
  const int64_t n_mol = N ? bat[N - 1] + 1 : 0;
  at::Tensor box;
  if (box_in.has_value()) {
    box = box_in->contiguous();
    TORCH_CHECK(box.size(0) >= n_mol, "box must hold one cell per molecule");
  }
  const Bounds bounds = molecule_bounds(pos, bat, N, n_mol);
  TORCH_CHECK_VALUE(max_abs >= bounds.max_abs, "max_abs must cover the positions");
  const tnf::Setup st = setup_or_throw(n_mol, box.defined() ? box.data_ptr<double>() : nullptr,
                                       bounds, N, cutoff, cutoff_lower, max_abs);
  at::Tensor plan = at::empty({static_cast<int64_t>(tnf::plan_bytes(n_mol))}, at::kByte);
  tnf::write_plan(st, max_abs, plan.data_ptr<uint8_t>());
  return plan;
}

namespace {

void check_static_outputs(const at::Tensor& pos, const at::Tensor& edge_index,
                          const at::Tensor& shifts, const at::Tensor& vec, const at::Tensor& dist,
                          const at::Tensor& row_ptr, const at::Tensor& status) {
  const int64_t C = edge_index.size(1);
  TORCH_CHECK(edge_index.dim() == 2 && edge_index.size(0) == 2 &&
                  edge_index.scalar_type() == at::kLong && edge_index.is_contiguous(),
              "edge_index must be a contiguous int64 [2, capacity] tensor");
  for (const at::Tensor* t : {&shifts, &vec})
    TORCH_CHECK(t->dim() == 2 && t->size(0) == C && t->size(1) == 3 && t->is_contiguous() &&
                    t->scalar_type() == pos.scalar_type(),
                "shifts / vec must be contiguous [capacity, 3] tensors of pos's dtype");
  TORCH_CHECK(dist.dim() == 1 && dist.size(0) == C && dist.is_contiguous() &&
                  dist.scalar_type() == pos.scalar_type(),
              "dist must be a contiguous [capacity] tensor of pos's dtype");
  TORCH_CHECK(row_ptr.dim() == 1 && row_ptr.size(0) == pos.size(0) + 1 &&
                  row_ptr.scalar_type() == at::kLong && row_ptr.is_contiguous(),
              "row_ptr must be a contiguous int64 [n_atoms + 1] tensor");
  TORCH_CHECK(status.dim() == 1 && status.size(0) == 2 && status.scalar_type() == at::kLong,
              "status must be an int64 [2] tensor");
}

// Padding of slots [e0, C): edge_index -1, shifts / vec / dist 0.
template <typename scalar_t>
void pad_edges(int64_t e0, int64_t C, int64_t* ei, scalar_t* sh, scalar_t* ve, scalar_t* di) {
  if (e0 >= C) return;
  std::fill(ei + e0, ei + C, int64_t(-1));
  std::fill(ei + C + e0, ei + 2 * C, int64_t(-1));
  std::fill(sh + 3 * e0, sh + 3 * C, scalar_t(0));
  std::fill(ve + 3 * e0, ve + 3 * C, scalar_t(0));
  std::fill(di + e0, di + C, scalar_t(0));
}

}  // namespace

// The search of radius_graph with the grids of a plan, written into preallocated buffers of
// capacity C = edge_index.size(1). status[0] = edges found (the capacity needed); status[1] = 1
// when some |coordinate| exceeds the plan's max_abs (make a new plan). On overflow or an
// out-of-plan position the buffers hold an empty graph (row_ptr 0, every slot padding), so a
// consumer never reads an index out of range; otherwise slots [0, E) are the edges of
// radius_graph in the same order and [E, C) padding.
void radius_graph_static_cpu(const at::Tensor& pos_in, const at::Tensor& batch_in,
                             const at::Tensor& plan, const at::Tensor& plan_dev, bool loop,
                             at::Tensor edge_index, at::Tensor shifts, at::Tensor vec,
                             at::Tensor dist, at::Tensor row_ptr, at::Tensor status) {
  (void)plan_dev;  // the CUDA kernels read the grids from it; here the host plan is enough
  TORCH_CHECK(pos_in.dim() == 2 && pos_in.size(1) == 3, "pos must be [N, 3]");
  TORCH_CHECK(plan.scalar_type() == at::kByte && plan.is_contiguous() && !plan.is_cuda(),
              "plan must be the uint8 CPU tensor of radius_graph_plan");
  check_static_outputs(pos_in, edge_index, shifts, vec, dist, row_ptr, status);
  const int64_t N = pos_in.size(0);
  const int64_t C = edge_index.size(1);
  const auto dtype = pos_in.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "pos must be float32 or float64");
  double plan_max_abs = 0.0;
  tnf::Setup st;
  try {
    st = tnf::read_plan(plan.data_ptr<uint8_t>(), static_cast<size_t>(plan.numel()), &plan_max_abs);
  } catch (const std::invalid_argument& err) {
    TORCH_CHECK_VALUE(false, err.what());
  }
  const at::Tensor pos_d = pos_in.to(at::kDouble).contiguous();
  const at::Tensor batch = batch_in.contiguous();
  TORCH_CHECK(batch.scalar_type() == at::kLong && batch.dim() == 1 && batch.size(0) == N,
              "batch must be int64 [N]");
  const double* pos = pos_d.data_ptr<double>();
  const int64_t* bat = batch.data_ptr<int64_t>();
  const int64_t n_mol = static_cast<int64_t>(st.grids.size());
  TORCH_CHECK(N == 0 || (bat[0] >= 0 && bat[N - 1] < n_mol), "batch does not match the plan");
  TORCH_CHECK(st.codec.fits(N + 1), "too many atoms for the plan's edge keys");
  int64_t* ei = edge_index.data_ptr<int64_t>();
  int64_t* rp_out = row_ptr.data_ptr<int64_t>();
  int64_t* stat = status.data_ptr<int64_t>();
  auto empty_graph = [&]() {
    std::fill(rp_out, rp_out + N + 1, int64_t(0));
    if (dtype == at::kFloat)
      pad_edges<float>(0, C, ei, shifts.data_ptr<float>(), vec.data_ptr<float>(),
                       dist.data_ptr<float>());
    else
      pad_edges<double>(0, C, ei, shifts.data_ptr<double>(), vec.data_ptr<double>(),
                        dist.data_ptr<double>());
  };
  // Out of the plan: some |coordinate| above its max_abs, or not a number (NaN compares false,
  // so it is flagged too, as the CUDA kernel does; a NaN atom used to be dropped silently here).
  bool out_of_plan = false;
  for (int64_t k = 0; k < 3 * N; ++k) out_of_plan |= !(std::fabs(pos[k]) <= plan_max_abs);
  stat[0] = 0;
  stat[1] = out_of_plan ? 1 : 0;
  if (stat[1]) {
    empty_graph();
    return;
  }
  const int nt = num_threads(N);
  Binned b;
  bin_atoms(st, pos, bat, N, nt, b);
  std::vector<int64_t> rp(static_cast<size_t>(N + 1));
  Rows rows;
  search_all(st, b, bat, N, loop, nt, rows, rp.data());
  const int64_t E = rp[N];
  stat[0] = E;
  if (E > C) {
    empty_graph();
    return;
  }
  std::copy(rp.begin(), rp.end(), rp_out);
  if (dtype == at::kFloat) {
    fill_edges<float>(st, b, rows, bat, N, nt, rp.data(), ei, C, shifts.data_ptr<float>(),
                      vec.data_ptr<float>(), dist.data_ptr<float>());
    pad_edges<float>(E, C, ei, shifts.data_ptr<float>(), vec.data_ptr<float>(),
                     dist.data_ptr<float>());
  } else {
    fill_edges<double>(st, b, rows, bat, N, nt, rp.data(), ei, C, shifts.data_ptr<double>(),
                       vec.data_ptr<double>(), dist.data_ptr<double>());
    pad_edges<double>(E, C, ei, shifts.data_ptr<double>(), vec.data_ptr<double>(),
                      dist.data_ptr<double>());
  }
}

// Keep the candidate edges (sorted, e.g. a Verlet list built with cutoff + skin) that are within
// [cutoff_lower, cutoff) now, with exactly the membership test of the search itself, so the
// result equals a fresh build. Self-loops (i, i, 0) are kept iff loop.
GraphResult filter_pairs_cpu(const at::Tensor& pos_in, const at::Tensor& batch_in,
                             const c10::optional<at::Tensor>& box_in,
                             const at::Tensor& edge_index_in, const at::Tensor& shifts_in,
                             double cutoff, double cutoff_lower, bool loop) {
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

}  // namespace tnf
