// Radius graph core shared by the CPU (cpu.cpp) and CUDA (cuda.cu)
// searches. Plain C++ with no torch include so nvcc can compile it without torch's CUDA headers.
//
// Scheme: every molecule gets its own grid of bins. Periodic molecules bin wrapped fractional
// coordinates (any triclinic cell); open molecules bin their bounding box. A receiver i visits
// the bins within `reach` of its own; on a periodic axis a bin index outside [0, n) is a periodic
// image (so cutoffs larger than half the cell simply visit the same bin under several images).
// Candidates pass a loose test on wrapped coordinates, then the exact test that decides
// membership is done on the ORIGINAL positions, in float64, as
//     vec = (pos_i - pos_j) + (S0 * a + S1 * b + S2 * c),  d2 = |vec|^2,  low2 <= d2 < cut2,
// which is what an fp64 brute force over all images computes, so the pair set does not depend
// on how atoms were binned or wrapped.
#pragma once

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef __CUDACC__
#define TNF_HD __host__ __device__ inline
#else
#define TNF_HD inline
#endif

namespace tnf {

struct Grid {
  double box[9];       // rows a, b, c (periodic molecules)
  double inv[9];       // box^-1: frac = pos @ inv
  double origin[3];    // open molecules: lower corner of the bounding box
  double scale[3];     // open molecules: bins per unit length
  int64_t n[3];        // bins per axis
  int64_t reach[3];    // bins searched on each side
  int64_t cell_begin;  // first global bin of this molecule
  double bin_len[3];   // bin extent along each axis's normal (plane spacing / n, or 1 / scale)
  int32_t periodic;
  int32_t orthogonal;  // axes pairwise orthogonal: per-axis gaps add in quadrature
};

// Edges a search may hold: TENSORNET_FAST_MAX_EDGES (default 1e8, as the Python checks of
// tensornet_fast/neighbors/graph.py). The CPU search counts while it runs and stops past it (its
// key arenas stay bounded however dense the input); the CUDA search checks its count before
// allocating the edges.
inline int64_t max_edges_budget() {
  const char* env = std::getenv("TENSORNET_FAST_MAX_EDGES");
  const double v = env != nullptr ? std::atof(env) : 0.0;
  return v > 0.0 ? static_cast<int64_t>(v) : int64_t(100000000);
}

// Integer floor division (b > 0).
TNF_HD int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  return (q * b > a) ? q - 1 : q;
}

TNF_HD int64_t clamp_bin(double u, int64_t n) {
  // u can be a hair outside [0, n) after rounding (frac = 1 - 1e-17 -> 1.0): clamp, the reach
  // margin of the grid setup covers it.
  double f = floor(u);
  if (!(f >= 0.0)) return 0;
  if (f >= static_cast<double>(n)) return n - 1;
  return static_cast<int64_t>(f);
}

// Bin, integer wrap (cell the atom sits in) and wrapped position of one atom.
TNF_HD void locate(const Grid& g, const double x[3], double wrap[3], double pw[3], int64_t bin[3]) {
  if (g.periodic) {
    for (int k = 0; k < 3; ++k) {
      double frac = x[0] * g.inv[k] + x[1] * g.inv[3 + k] + x[2] * g.inv[6 + k];
      wrap[k] = floor(frac);
      bin[k] = clamp_bin((frac - wrap[k]) * static_cast<double>(g.n[k]), g.n[k]);
    }
    for (int c = 0; c < 3; ++c)
      pw[c] = x[c] - (wrap[0] * g.box[c] + wrap[1] * g.box[3 + c] + wrap[2] * g.box[6 + c]);
  } else {
    for (int k = 0; k < 3; ++k) {
      wrap[k] = 0.0;
      pw[k] = x[k];
      bin[k] = clamp_bin((x[k] - g.origin[k]) * g.scale[k], g.n[k]);
    }
  }
}

// The membership test (see the header comment). s = integer lattice shift as doubles.
TNF_HD double exact_d2(const double xi[3], const double xj[3], const double s[3], const double* box,
                       bool periodic, double v[3]) {
  for (int c = 0; c < 3; ++c) {
    double d = xi[c] - xj[c];
    if (periodic) d = d + (s[0] * box[c] + s[1] * box[3 + c] + s[2] * box[6 + c]);
    v[c] = d;
  }
  return v[0] * v[0] + v[1] * v[1] + v[2] * v[2];
}

// Sort key of an edge within its receiver's row: sender j first, then the lattice shift
// relative to the receiver's cell (lexicographic), packed in one uint64 as bit fields:
// key = j << 3B | (s0 + M) << 2B | (s1 + M) << B | (s2 + M), B bits per component with
// 2M < 2^B and |component| <= M. For a fixed (i, j) the full shift is this relative shift plus a
// constant (wrap_j - wrap_i), so the order equals the (j, shift) order of the contract. Shifts
// and masks only: no integer division when decoding.
struct KeyCodec {
  int64_t M;
  int32_t B;
  TNF_HD uint64_t code(int64_t s0, int64_t s1, int64_t s2) const {
    return (static_cast<uint64_t>(s0 + M) << (2 * B)) | (static_cast<uint64_t>(s1 + M) << B) |
           static_cast<uint64_t>(s2 + M);
  }
  TNF_HD uint64_t encode(int64_t j, const int64_t s[3]) const {
    return (static_cast<uint64_t>(j) << (3 * B)) | code(s[0], s[1], s[2]);
  }
  TNF_HD void decode(uint64_t key, int64_t* j, int64_t s[3]) const {
    const uint64_t mask = (uint64_t(1) << B) - 1;
    *j = static_cast<int64_t>(key >> (3 * B));
    s[2] = static_cast<int64_t>(key & mask) - M;
    s[1] = static_cast<int64_t>((key >> B) & mask) - M;
    s[0] = static_cast<int64_t>((key >> (2 * B)) & mask) - M;
  }
  // True when atom indices below n fit above the 3B shift bits.
  bool fits(int64_t n) const {
    return 3 * B < 63 && static_cast<uint64_t>(n) <= (uint64_t(1) << (64 - 3 * B));
  }
};

struct SearchParams {
  double loose_cut2, loose_low2;  // widened thresholds on wrapped coordinates
  double tight_cut2, tight_low2;  // narrowed: inside these the exact test cannot disagree
  double cut2, low2;              // exact thresholds
};

// Visit every accepted (j, relative shift) of receiver i (self-loop excluded; the caller adds
// it).
// cell_start: [n_cells + 1]; in bin order (q): cell_atom (atom index), cell_pos (wrapped
// position), cell_x (original position, float64) and cell_wrap (integer wrap as doubles), so the
// inner loop reads contiguous memory whatever the atom order. xi / wi: receiver's position, wrap.
template <class Visit>
TNF_HD void search_receiver(int64_t i, const Grid& g, const int64_t bi[3], const double xi[3],
                            const double wi[3], const int64_t* cell_start, const int64_t* cell_atom,
                            const double* cell_pos, const double* cell_x, const double* cell_wrap,
                            const SearchParams& p, Visit&& visit) {
  double pwi[3], gap[3][2];
  for (int c = 0; c < 3; ++c)
    pwi[c] = g.periodic
                 ? xi[c] - (wi[0] * g.box[c] + wi[1] * g.box[3 + c] + wi[2] * g.box[6 + c])
                 : xi[c];
  // Distance from the receiver to the lower / upper face of its own bin along each axis normal:
  // a bin d > 0 steps away is at least (d - 1) bins + the upper gap away. Bins whose lower bound
  // exceeds the cutoff are skipped (about 1/4 of the 27 at one bin per cutoff).
  for (int k = 0; k < 3; ++k) {
    const double u = g.periodic
                         ? (pwi[0] * g.inv[k] + pwi[1] * g.inv[3 + k] + pwi[2] * g.inv[6 + k]) *
                               static_cast<double>(g.n[k])
                         : (pwi[k] - g.origin[k]) * g.scale[k];
    const double f = u - static_cast<double>(bi[k]);
    gap[k][0] = f > 0.0 ? f : 0.0;              // to the lower face, in bins
    gap[k][1] = f < 1.0 ? 1.0 - f : 0.0;        // to the upper face
  }
  auto axis_gap = [&](int k, int64_t d) -> double {
    if (d == 0) return 0.0;
    const double b = d > 0 ? gap[k][1] + static_cast<double>(d - 1)
                           : gap[k][0] + static_cast<double>(-d - 1);
    return b * g.bin_len[k];
  };
  // 1e-9: the bound is geometric; rounding of positions is far below the loose margin.
  const double prune2 = p.loose_cut2 * (1.0 + 1e-9);
  for (int64_t d0 = -g.reach[0]; d0 <= g.reach[0]; ++d0) {
    const double g0 = axis_gap(0, d0);
    if (g0 * g0 >= prune2) continue;
    int64_t u0 = bi[0] + d0, m0 = 0;
    if (g.periodic) {
      m0 = floor_div(u0, g.n[0]);
      u0 -= m0 * g.n[0];
    } else if (u0 < 0 || u0 >= g.n[0]) {
      continue;
    }
    for (int64_t d1 = -g.reach[1]; d1 <= g.reach[1]; ++d1) {
      const double g1 = axis_gap(1, d1);
      const double b01 = g.orthogonal ? g0 * g0 + g1 * g1 : fmax(g0 * g0, g1 * g1);
      if (b01 >= prune2) continue;
      int64_t u1 = bi[1] + d1, m1 = 0;
      if (g.periodic) {
        m1 = floor_div(u1, g.n[1]);
        u1 -= m1 * g.n[1];
      } else if (u1 < 0 || u1 >= g.n[1]) {
        continue;
      }
      for (int64_t d2 = -g.reach[2]; d2 <= g.reach[2]; ++d2) {
        const double g2 = axis_gap(2, d2);
        if ((g.orthogonal ? b01 + g2 * g2 : fmax(b01, g2 * g2)) >= prune2) continue;
        int64_t u2 = bi[2] + d2, m2 = 0;
        if (g.periodic) {
          m2 = floor_div(u2, g.n[2]);
          u2 -= m2 * g.n[2];
        } else if (u2 < 0 || u2 >= g.n[2]) {
          continue;
        }
        // Receiver seen from the image m of the neighbour bin: pwi - m @ box.
        double t[3];
        for (int c = 0; c < 3; ++c)
          t[c] = pwi[c] - (m0 * g.box[c] + m1 * g.box[3 + c] + m2 * g.box[6 + c]) * g.periodic;
        const bool zero_image = (m0 == 0 && m1 == 0 && m2 == 0);
        const int64_t cell = g.cell_begin + (u0 * g.n[1] + u1) * g.n[2] + u2;
        for (int64_t q = cell_start[cell]; q < cell_start[cell + 1]; ++q) {
          const double* pj = cell_pos + 3 * q;
          double vx = t[0] - pj[0], vy = t[1] - pj[1], vz = t[2] - pj[2];
          double r2 = vx * vx + vy * vy + vz * vz;
          if (r2 >= p.loose_cut2 || r2 < p.loose_low2) continue;
          const int64_t j = cell_atom[q];
          if (j == i && zero_image) continue;
          // Relative shift: vec = pos_i - pos_j + (wrap_j - wrap_i - m) @ box.
          int64_t rel[3] = {-m0, -m1, -m2};
          if (g.periodic && !(r2 < p.tight_cut2 && r2 >= p.tight_low2)) {
            // Within the rounding band of a threshold: decide with the exact test.
            const double* wj = cell_wrap + 3 * q;
            double s[3] = {wj[0] - wi[0] + rel[0], wj[1] - wi[1] + rel[1], wj[2] - wi[2] + rel[2]};
            double v[3];
            double e2 = exact_d2(xi, cell_x + 3 * q, s, g.box, true, v);
            if (e2 >= p.cut2 || e2 < p.low2) continue;
          } else if (!g.periodic && (r2 >= p.cut2 || r2 < p.low2)) {
            continue;  // open boundaries: r2 already is the exact fp64 test
          }
          visit(j, rel);
        }
      }
    }
  }
}


// ---------------------------------------------------------------------------------- host setup
struct Setup {
  std::vector<Grid> grids;
  SearchParams params;
  KeyCodec codec;
  int64_t n_cells = 0;
};

// Grids for n_mol molecules. boxes: [n_mol * 9] rows a, b, c, or nullptr (open). lo / hi:
// per-molecule bounding boxes [n_mol * 3] (used for open molecules), counts: atoms per molecule.
// max_abs: max |coordinate| over all atoms, for the rounding margin of the loose test.
// bins_per_cutoff: bin width ~ cutoff / bins_per_cutoff on periodic axes. 2 visits
// (5 bins)^3 of (c/2)^3 = 15.6 c^3 instead of 27 c^3 of candidates per receiver.
inline Setup make_setup(int64_t n_mol, const double* boxes, const double* lo, const double* hi,
                        const int64_t* counts, double cutoff, double cutoff_lower, double max_abs,
                        int bins_per_cutoff = 1, bool single_bin = false) {
  Setup st;
  st.grids.resize(static_cast<size_t>(n_mol));
  double max_row = 0.0;
  if (boxes)
    for (int64_t m = 0; m < n_mol; ++m)
      for (int r = 0; r < 3; ++r) {
        const double* b = boxes + 9 * m + 3 * r;
        max_row = std::max(max_row, std::sqrt(b[0] * b[0] + b[1] * b[1] + b[2] * b[2]));
      }
  int64_t M = 1;
  // Pass 1 sizes the bins with a provisional margin; the margin grows with the number of images
  // M (the loose test subtracts m @ box from wrapped positions), so recompute it after sizing.
  double delta = 0.0;
  for (int pass = 0; pass < 2; ++pass) {
    // Rounding of wrapped positions and of m @ box is a few ulps of the largest magnitude
    // involved; 64 ulps of (|x| + (M + 1) |row| + cutoff) is a wide, still tiny (1e-13 at 10 A)
    // margin. The exact fp64 test decides membership, the margin only keeps candidates.
    delta = 64.0 * DBL_EPSILON * (max_abs + static_cast<double>(M + 1) * max_row + cutoff);
    const double ce = cutoff + delta;
    int64_t cell = 0, maxM = 1;
    for (int64_t m = 0; m < n_mol; ++m) {
      Grid& g = st.grids[static_cast<size_t>(m)];
      g.periodic = boxes != nullptr;
      // Bins cost memory; keep at most ~2 per atom (plus a few) so sparse or huge systems stay
      // O(N) in memory. Dense systems (water: ~12 atoms per 5 A bin) never reach the cap.
      const double cap = 2.0 * static_cast<double>(counts[m]) + 8.0;
      if (g.periodic) {
        const double* b = boxes + 9 * m;
        for (int k = 0; k < 9; ++k) g.box[k] = b[k];
        const double det = b[0] * (b[4] * b[8] - b[5] * b[7]) - b[1] * (b[3] * b[8] - b[5] * b[6]) +
                           b[2] * (b[3] * b[7] - b[4] * b[6]);
        if (!(std::fabs(det) > 0.0) || !std::isfinite(det))
          throw std::invalid_argument("box of molecule " + std::to_string(m) + " is singular");
        // inv = adj(b) / det
        g.inv[0] = (b[4] * b[8] - b[5] * b[7]) / det;
        g.inv[1] = (b[2] * b[7] - b[1] * b[8]) / det;
        g.inv[2] = (b[1] * b[5] - b[2] * b[4]) / det;
        g.inv[3] = (b[5] * b[6] - b[3] * b[8]) / det;
        g.inv[4] = (b[0] * b[8] - b[2] * b[6]) / det;
        g.inv[5] = (b[2] * b[3] - b[0] * b[5]) / det;
        g.inv[6] = (b[3] * b[7] - b[4] * b[6]) / det;
        g.inv[7] = (b[1] * b[6] - b[0] * b[7]) / det;
        g.inv[8] = (b[0] * b[4] - b[1] * b[3]) / det;
        double spacing[3];
        g.orthogonal = 1;
        for (int r = 0; r < 3; ++r) {
          const double* u = b + 3 * r;
          const double* v = b + 3 * ((r + 1) % 3);
          const double dot = u[0] * v[0] + u[1] * v[1] + u[2] * v[2];
          const double nu = std::sqrt(u[0] * u[0] + u[1] * u[1] + u[2] * u[2]);
          const double nv = std::sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]);
          if (std::fabs(dot) > 1e-12 * nu * nv) g.orthogonal = 0;
        }
        for (int k = 0; k < 3; ++k) {
          // Distance between lattice planes k = 1 / |column k of inv|.
          const double c0 = g.inv[k], c1 = g.inv[3 + k], c2 = g.inv[6 + k];
          spacing[k] = 1.0 / std::sqrt(c0 * c0 + c1 * c1 + c2 * c2);
          g.n[k] = std::max<int64_t>(
              1, static_cast<int64_t>(std::floor(bins_per_cutoff * spacing[k] / ce)));
        }
        while (static_cast<double>(g.n[0]) * g.n[1] * g.n[2] > cap) {
          for (int k = 0; k < 3; ++k) g.n[k] = std::max<int64_t>(1, (g.n[k] * 3) / 4);
        }
        if (single_bin) g.n[0] = g.n[1] = g.n[2] = 1;  // brute force over all atoms and images
        for (int k = 0; k < 3; ++k) {
          // |frac_i - frac_j| < ce / spacing for a pair within ce, so bins differ by at most
          // ceil(n * ce / spacing); the relative 1e-12 absorbs rounding of the frac -> bin step.
          g.reach[k] = std::max<int64_t>(
              1, static_cast<int64_t>(std::ceil(g.n[k] * ce / spacing[k] * (1.0 + 1e-12))));
          maxM = std::max(maxM, g.reach[k] / g.n[k] + 1);
          g.bin_len[k] = spacing[k] / static_cast<double>(g.n[k]);
        }
      } else {
        for (int k = 0; k < 9; ++k) g.box[k] = g.inv[k] = 0.0;
        g.orthogonal = 1;
        double ext[3];
        for (int k = 0; k < 3; ++k) {
          g.origin[k] = counts[m] ? lo[3 * m + k] : 0.0;
          ext[k] = counts[m] ? std::max(0.0, hi[3 * m + k] - lo[3 * m + k]) : 0.0;
          g.n[k] = static_cast<int64_t>(std::floor(ext[k] / ce)) + 1;
          if (g.n[k] > (int64_t(1) << 20)) g.n[k] = int64_t(1) << 20;  // huge spread: cap
        }
        while (static_cast<double>(g.n[0]) * g.n[1] * g.n[2] > cap) {
          for (int k = 0; k < 3; ++k) g.n[k] = std::max<int64_t>(1, (g.n[k] * 3) / 4);
        }
        if (single_bin) g.n[0] = g.n[1] = g.n[2] = 1;
        for (int k = 0; k < 3; ++k) {
          // Bin width >= ce (1 + 1e-12): a pair within ce lies in the same or adjacent bins.
          const double w = std::max(ce, ext[k] / static_cast<double>(g.n[k])) * (1.0 + 1e-12);
          g.scale[k] = 1.0 / w;
          g.bin_len[k] = w;
          g.reach[k] = 1;
        }
      }
      g.cell_begin = cell;
      cell += g.n[0] * g.n[1] * g.n[2];
    }
    st.n_cells = cell;
    if (maxM <= M) break;
    M = maxM;
  }
  const double loose_cut = cutoff + delta;
  const double loose_low = std::max(0.0, cutoff_lower - delta);
  st.params.loose_cut2 = loose_cut * loose_cut;
  st.params.loose_low2 = loose_low * loose_low;
  const double tight_cut = std::max(0.0, cutoff - delta);
  const double tight_low = cutoff_lower > 0.0 ? cutoff_lower + delta : 0.0;
  st.params.tight_cut2 = tight_cut * tight_cut;
  st.params.tight_low2 = tight_low * tight_low;
  st.params.cut2 = cutoff * cutoff;
  st.params.low2 = cutoff_lower * cutoff_lower;
  // M >= the largest |shift| component (maxM of the last pass); B bits hold 0 .. 2M.
  st.codec.M = M;
  st.codec.B = 1;
  while ((int64_t(1) << st.codec.B) <= 2 * M && st.codec.B < 21) ++st.codec.B;
  return st;
}

// ------------------------------------------------------------------------------------- plans
// A plan is a Setup flattened into bytes (header, then one Grid per molecule), so it can be
// computed once on the host, kept in a uint8 tensor and copied to the device: the static-capacity
// search (radius_graph_static) then needs no host-side work per call, which CUDA graphs require.
struct PlanHeader {
  int64_t magic;  // kPlanMagic
  int64_t n_mol;
  int64_t n_cells;
  double max_abs;  // the rounding margin covers coordinates up to this magnitude
  SearchParams params;
  KeyCodec codec;
};

constexpr int64_t kPlanMagic = 0x746e66706c616e31;  // "tnfplan1"

inline size_t plan_bytes(int64_t n_mol) {
  return sizeof(PlanHeader) + static_cast<size_t>(n_mol) * sizeof(Grid);
}

inline void write_plan(const Setup& st, double max_abs, uint8_t* out) {
  PlanHeader h;
  h.max_abs = max_abs;
  h.magic = kPlanMagic;
  h.n_mol = static_cast<int64_t>(st.grids.size());
  h.n_cells = st.n_cells;
  h.params = st.params;
  h.codec = st.codec;
  std::memcpy(out, &h, sizeof(h));
  if (!st.grids.empty())
    std::memcpy(out + sizeof(h), st.grids.data(), st.grids.size() * sizeof(Grid));
}

inline Setup read_plan(const uint8_t* in, size_t n_bytes, double* max_abs) {
  PlanHeader h;
  if (n_bytes < sizeof(h)) throw std::invalid_argument("radius graph plan: too short");
  std::memcpy(&h, in, sizeof(h));
  if (h.magic != kPlanMagic || h.n_mol < 0 || n_bytes != plan_bytes(h.n_mol))
    throw std::invalid_argument("radius graph plan: not a plan made by radius_graph_plan");
  Setup st;
  *max_abs = h.max_abs;
  st.params = h.params;
  st.codec = h.codec;
  st.n_cells = h.n_cells;
  st.grids.resize(static_cast<size_t>(h.n_mol));
  if (h.n_mol) std::memcpy(st.grids.data(), in + sizeof(h), st.grids.size() * sizeof(Grid));
  return st;
}

}  // namespace tnf
