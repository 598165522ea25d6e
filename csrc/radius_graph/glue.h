// torch-facing glue of the CUDA radius graph, written once for two device policies:
//   cuda_glue.cpp      CUDA tensors, ATen's CUDA ops, the current CUDA stream, the kernels of
//                      cuda.cu built by nvcc (tnf::cuda): the CUDA kernels of the ops
//   cuda_emulated.cpp  CPU tensors, ATen's CPU ops, the same kernels built for the host
//                      (tnf::cuda_emulated, cuda_on_host.h): the *_cuda_emulated ops, which run
//                      this glue and the kernel bodies in CI without a GPU
// A Device policy has: holds(t) (t is on this device type), kName, Guard (constructed from a
// device) and stream() (the void* stream the launchers take). Scans, sorts and gathers are ATen
// ops on pos's device; the search is in the kernels. Same algorithm and output as the CPU path.
// Include after cuda.h, whose TNF_CUDA_KERNELS picks the kernels' namespace.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/argsort.h>
#include <ATen/ops/bincount.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/nonzero.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <tuple>
#include <vector>

#include "cuda.h"
#include "ops.h"

namespace tnf {
namespace {
namespace glue {

namespace kernels = ::tnf::TNF_CUDA_KERNELS;

// Below this many atoms one bin per molecule (the brute force) beats binning: the search is a
// few microseconds either way and the brute force skips the bin sort and its launches.
constexpr int64_t kBruteForceAtoms = 1024;

at::Tensor exclusive_row_ptr(const at::Tensor& counts) {
  at::Tensor rp = at::zeros({counts.size(0) + 1}, counts.options());
  if (counts.size(0)) rp.narrow(0, 1, counts.size(0)).copy_(at::cumsum(counts, 0));
  return rp;
}

template <class Device>
GraphResult radius_graph(const at::Tensor& pos_in, const at::Tensor& batch_in,
                         const c10::optional<at::Tensor>& box_in, double cutoff,
                         double cutoff_lower, bool loop) {
  TORCH_CHECK(Device::holds(pos_in) && pos_in.dim() == 2 && pos_in.size(1) == 3, "pos must be ",
              Device::kName, " [N, 3]");
  const typename Device::Guard guard(pos_in.device());
  void* stream = Device::stream();
  const int64_t N = pos_in.size(0);
  const auto dtype = pos_in.scalar_type();
  const auto dev = pos_in.device();
  const at::Tensor pos = pos_in.to(at::kDouble).contiguous();
  const at::Tensor batch = batch_in.to(at::kLong).contiguous();
  const int64_t n_mol = N ? batch[N - 1].item<int64_t>() + 1 : 0;
  const bool periodic = box_in.has_value();

  // Host-side grid setup from per-molecule bounds (tiny transfers).
  std::vector<int64_t> counts(static_cast<size_t>(n_mol), 0);
  at::Tensor lo_h, hi_h, box_h;
  double max_abs = 0.0;
  if (N) {
    at::Tensor cnt = at::bincount(batch, {}, n_mol).to(at::kCPU).contiguous();
    for (int64_t m = 0; m < n_mol; ++m) counts[m] = cnt.data_ptr<int64_t>()[m];
    at::Tensor idx = batch.unsqueeze(1).expand({N, 3});
    at::Tensor lo = at::zeros({n_mol, 3}, pos.options()).scatter_reduce(0, idx, pos, "amin", false);
    at::Tensor hi = at::zeros({n_mol, 3}, pos.options()).scatter_reduce(0, idx, pos, "amax", false);
    lo_h = lo.to(at::kCPU).contiguous();
    hi_h = hi.to(at::kCPU).contiguous();
    max_abs = pos.abs().max().item<double>();
  } else {
    lo_h = hi_h = at::zeros({0, 3}, at::kDouble);
  }
  if (periodic) box_h = box_in->to(at::kCPU, at::kDouble).contiguous();
  tnf::Setup st;
  try {
    st = tnf::make_setup(n_mol, periodic ? box_h.data_ptr<double>() : nullptr,
                         lo_h.data_ptr<double>(), hi_h.data_ptr<double>(), counts.data(), cutoff,
                         cutoff_lower, max_abs, 1, N <= kBruteForceAtoms);
  } catch (const std::invalid_argument& err) {
    TORCH_CHECK_VALUE(false, err.what());
  }
  TORCH_CHECK_VALUE(st.codec.fits(N + 1),
                    "cutoff spans too many periodic images for the 64-bit edge keys");
  const auto i64 = at::TensorOptions().dtype(at::kLong).device(dev);
  const auto f64 = at::TensorOptions().dtype(at::kDouble).device(dev);
  at::Tensor grids_h = at::empty({static_cast<int64_t>(st.grids.size() * sizeof(tnf::Grid))}, at::kByte);
  if (!st.grids.empty())
    std::memcpy(grids_h.data_ptr(), st.grids.data(), st.grids.size() * sizeof(tnf::Grid));
  const at::Tensor grids_d = grids_h.to(dev);
  const auto* grids = reinterpret_cast<const tnf::Grid*>(grids_d.data_ptr());

  at::Tensor wrap = at::empty({N, 3}, f64), pw = at::empty({N, 3}, f64);
  at::Tensor bins = at::empty({N, 3}, i64), cell_of = at::empty({N}, i64);
  kernels::locate(grids, pos.data_ptr<double>(), batch.data_ptr<int64_t>(), N,
                  wrap.data_ptr<double>(), pw.data_ptr<double>(), bins.data_ptr<int64_t>(),
                  cell_of.data_ptr<int64_t>(), stream);
  const at::Tensor cell_start = exclusive_row_ptr(at::bincount(cell_of, {}, st.n_cells));
  const at::Tensor cell_atom = at::argsort(cell_of, /*stable=*/true);
  const at::Tensor cell_pos = pw.index_select(0, cell_atom).contiguous();
  const at::Tensor cell_x = pos.index_select(0, cell_atom).contiguous();
  const at::Tensor cell_wrap = wrap.index_select(0, cell_atom).contiguous();

  at::Tensor counts_d = at::empty({N}, i64);
  kernels::count(grids, batch.data_ptr<int64_t>(), bins.data_ptr<int64_t>(),
                 pos.data_ptr<double>(), wrap.data_ptr<double>(), cell_start.data_ptr<int64_t>(),
                 cell_atom.data_ptr<int64_t>(), cell_pos.data_ptr<double>(),
                 cell_x.data_ptr<double>(), cell_wrap.data_ptr<double>(), st.params, st.codec,
                 loop, N, counts_d.data_ptr<int64_t>(), stream);
  const at::Tensor row_ptr = exclusive_row_ptr(counts_d);
  const int64_t E = row_ptr[N].item<int64_t>();
  TORCH_CHECK_VALUE(E <= tnf::max_edges_budget(), "the radius graph has ", E,
                    " edges, more than the budget of ", tnf::max_edges_budget(),
                    " (TENSORNET_FAST_MAX_EDGES); check the positions' units and the cutoff");
  at::Tensor keys = at::empty({E}, i64);
  kernels::fill(grids, batch.data_ptr<int64_t>(), bins.data_ptr<int64_t>(),
                pos.data_ptr<double>(), wrap.data_ptr<double>(), cell_start.data_ptr<int64_t>(),
                cell_atom.data_ptr<int64_t>(), cell_pos.data_ptr<double>(),
                cell_x.data_ptr<double>(), cell_wrap.data_ptr<double>(), st.params, st.codec,
                loop, N, row_ptr.data_ptr<int64_t>(),
                reinterpret_cast<uint64_t*>(keys.data_ptr<int64_t>()), stream);
  const auto fo = at::TensorOptions().dtype(dtype).device(dev);
  at::Tensor edge_index = at::empty({2, E}, i64);
  at::Tensor shifts = at::empty({E, 3}, fo), vec = at::empty({E, 3}, fo), dist = at::empty({E}, fo);
  const auto* kp = reinterpret_cast<const uint64_t*>(keys.data_ptr<int64_t>());
  if (dtype == at::kFloat)
    kernels::finalize<float>(grids, batch.data_ptr<int64_t>(), pos.data_ptr<double>(),
                             wrap.data_ptr<double>(), st.codec, N, E, row_ptr.data_ptr<int64_t>(),
                             kp, edge_index.data_ptr<int64_t>(), shifts.data_ptr<float>(),
                             vec.data_ptr<float>(), dist.data_ptr<float>(), stream);
  else
    kernels::finalize<double>(grids, batch.data_ptr<int64_t>(), pos.data_ptr<double>(),
                              wrap.data_ptr<double>(), st.codec, N, E, row_ptr.data_ptr<int64_t>(),
                              kp, edge_index.data_ptr<int64_t>(), shifts.data_ptr<double>(),
                              vec.data_ptr<double>(), dist.data_ptr<double>(), stream);
  return {edge_index, shifts, vec, dist, row_ptr};
}

template <class Device>
GraphResult filter_pairs(const at::Tensor& pos_in, const at::Tensor& batch_in,
                         const c10::optional<at::Tensor>& box_in, const at::Tensor& edge_index_in,
                         const at::Tensor& shifts_in, double cutoff, double cutoff_lower, bool loop) {
  const typename Device::Guard guard(pos_in.device());
  void* stream = Device::stream();
  const int64_t N = pos_in.size(0);
  const auto dtype = pos_in.scalar_type();
  const at::Tensor pos = pos_in.to(at::kDouble).contiguous();
  const at::Tensor batch = batch_in.to(at::kLong).contiguous();
  const at::Tensor cand = edge_index_in.to(at::kLong).contiguous();
  const at::Tensor cshift = shifts_in.to(at::kDouble).contiguous();
  const bool periodic = box_in.has_value();
  const at::Tensor box = periodic ? box_in->to(at::kDouble).contiguous() : at::Tensor();
  const int64_t C = cand.size(1);
  at::Tensor keep = at::empty({C}, pos.options().dtype(at::kByte));
  kernels::filter_mark(pos.data_ptr<double>(), batch.data_ptr<int64_t>(),
                       periodic ? box.data_ptr<double>() : nullptr, cand.data_ptr<int64_t>(),
                       cshift.data_ptr<double>(), C, cutoff * cutoff, cutoff_lower * cutoff_lower,
                       loop, keep.data_ptr<uint8_t>(), stream);
  const at::Tensor sel = at::nonzero(keep).flatten().contiguous();
  const int64_t E = sel.size(0);
  const auto fo = pos_in.options().dtype(dtype);
  at::Tensor edge_index = at::empty({2, E}, cand.options());
  at::Tensor shifts = at::empty({E, 3}, fo), vec = at::empty({E, 3}, fo), dist = at::empty({E}, fo);
  const double* bx = periodic ? box.data_ptr<double>() : nullptr;
  if (dtype == at::kFloat)
    kernels::filter_write<float>(pos.data_ptr<double>(), batch.data_ptr<int64_t>(), bx,
                                 cand.data_ptr<int64_t>(), cshift.data_ptr<double>(), C,
                                 sel.data_ptr<int64_t>(), E, edge_index.data_ptr<int64_t>(),
                                 shifts.data_ptr<float>(), vec.data_ptr<float>(),
                                 dist.data_ptr<float>(), stream);
  else
    kernels::filter_write<double>(pos.data_ptr<double>(), batch.data_ptr<int64_t>(), bx,
                                  cand.data_ptr<int64_t>(), cshift.data_ptr<double>(), C,
                                  sel.data_ptr<int64_t>(), E, edge_index.data_ptr<int64_t>(),
                                  shifts.data_ptr<double>(), vec.data_ptr<double>(),
                                  dist.data_ptr<double>(), stream);
  const at::Tensor row_ptr = exclusive_row_ptr(at::bincount(edge_index[0], {}, N));
  return {edge_index, shifts, vec, dist, row_ptr};
}

// Static-capacity search (see radius_graph_static_cpu in cpu.cpp): grids from the plan already on the
// device (plan_dev), the host plan only for the by-value parameters. No device-to-host copy and
// no data-dependent allocation size, so the whole call can be captured in a CUDA graph.
template <class Device>
void radius_graph_static(const at::Tensor& pos_in, const at::Tensor& batch_in,
                              const at::Tensor& plan, const at::Tensor& plan_dev, bool loop,
                              at::Tensor edge_index, at::Tensor shifts, at::Tensor vec,
                              at::Tensor dist, at::Tensor row_ptr, at::Tensor status) {
  TORCH_CHECK(Device::holds(pos_in) && pos_in.dim() == 2 && pos_in.size(1) == 3, "pos must be ",
              Device::kName, " [N, 3]");
  TORCH_CHECK(plan.scalar_type() == at::kByte && plan.is_cpu() && plan.is_contiguous(),
              "plan must be the uint8 CPU tensor of radius_graph_plan");
  TORCH_CHECK(Device::holds(plan_dev) && plan_dev.device() == pos_in.device() &&
                  plan_dev.numel() == plan.numel() && plan_dev.is_contiguous(),
              "plan_dev must be the plan copied to pos's device");
  for (const at::Tensor* t : {&edge_index, &shifts, &vec, &dist, &row_ptr, &status})
    TORCH_CHECK(t->device() == pos_in.device() && t->is_contiguous(),
                "static buffers must be contiguous and on pos's device");
  const int64_t N = pos_in.size(0);
  const int64_t C = edge_index.size(1);
  const auto dtype = pos_in.scalar_type();
  TORCH_CHECK(edge_index.dim() == 2 && edge_index.size(0) == 2 &&
                  edge_index.scalar_type() == at::kLong && shifts.size(0) == C &&
                  vec.size(0) == C && dist.size(0) == C && shifts.scalar_type() == dtype &&
                  vec.scalar_type() == dtype && dist.scalar_type() == dtype &&
                  row_ptr.numel() == N + 1 && row_ptr.scalar_type() == at::kLong &&
                  status.numel() == 2 && status.scalar_type() == at::kLong,
              "static buffers do not match pos (see StaticRadiusGraph)");
  const typename Device::Guard guard(pos_in.device());
  void* stream = Device::stream();
  double plan_max_abs = 0.0;
  tnf::Setup st;
  try {
    st = tnf::read_plan(plan.data_ptr<uint8_t>(), static_cast<size_t>(plan.numel()),
                        &plan_max_abs);
  } catch (const std::invalid_argument& err) {
    TORCH_CHECK_VALUE(false, err.what());
  }
  TORCH_CHECK(st.codec.fits(N + 1), "too many atoms for the plan's edge keys");
  const auto dev = pos_in.device();
  const auto i64 = at::TensorOptions().dtype(at::kLong).device(dev);
  const auto f64 = at::TensorOptions().dtype(at::kDouble).device(dev);
  const at::Tensor pos = pos_in.to(at::kDouble).contiguous();
  const at::Tensor batch = batch_in.to(at::kLong).contiguous();
  const auto* grids =
      reinterpret_cast<const tnf::Grid*>(plan_dev.data_ptr<uint8_t>() + sizeof(tnf::PlanHeader));
  status.zero_();
  kernels::range_check(pos.data_ptr<double>(), N, plan_max_abs, status.data_ptr<int64_t>(),
                       stream);
  at::Tensor wrap = at::empty({N, 3}, f64), pw = at::empty({N, 3}, f64);
  at::Tensor bins = at::empty({N, 3}, i64), cell_of = at::empty({N}, i64);
  kernels::locate(grids, pos.data_ptr<double>(), batch.data_ptr<int64_t>(), N,
                  wrap.data_ptr<double>(), pw.data_ptr<double>(), bins.data_ptr<int64_t>(),
                  cell_of.data_ptr<int64_t>(), stream);
  // Bin counts by index_add_ (bincount would read its size back to the host).
  at::Tensor cell_start = at::zeros({st.n_cells + 1}, i64);
  if (N) cell_start.narrow(0, 1, st.n_cells).index_add_(0, cell_of, at::ones({N}, i64));
  cell_start = at::cumsum(cell_start, 0);
  const at::Tensor cell_atom = at::argsort(cell_of, /*stable=*/true);
  const at::Tensor cell_pos = pw.index_select(0, cell_atom).contiguous();
  const at::Tensor cell_x = pos.index_select(0, cell_atom).contiguous();
  const at::Tensor cell_wrap = wrap.index_select(0, cell_atom).contiguous();
  at::Tensor counts = at::empty({N}, i64);
  kernels::count(grids, batch.data_ptr<int64_t>(), bins.data_ptr<int64_t>(),
                 pos.data_ptr<double>(), wrap.data_ptr<double>(), cell_start.data_ptr<int64_t>(),
                 cell_atom.data_ptr<int64_t>(), cell_pos.data_ptr<double>(),
                 cell_x.data_ptr<double>(), cell_wrap.data_ptr<double>(), st.params, st.codec,
                 loop, N, counts.data_ptr<int64_t>(), stream);
  row_ptr.narrow(0, 0, 1).zero_();
  if (N) {
    at::Tensor tail = row_ptr.narrow(0, 1, N);
    at::cumsum_out(tail, counts, 0);
  }
  kernels::static_total(row_ptr.data_ptr<int64_t>(), N, status.data_ptr<int64_t>(), stream);
  at::Tensor keys = at::empty({std::max<int64_t>(C, 1)}, i64);
  auto* kp = reinterpret_cast<uint64_t*>(keys.data_ptr<int64_t>());
  kernels::static_fill(grids, batch.data_ptr<int64_t>(), bins.data_ptr<int64_t>(),
                       pos.data_ptr<double>(), wrap.data_ptr<double>(),
                       cell_start.data_ptr<int64_t>(), cell_atom.data_ptr<int64_t>(),
                       cell_pos.data_ptr<double>(), cell_x.data_ptr<double>(),
                       cell_wrap.data_ptr<double>(), st.params, st.codec, loop, N,
                       row_ptr.data_ptr<int64_t>(), status.data_ptr<int64_t>(), C, kp, stream);
  if (dtype == at::kFloat)
    kernels::static_finalize<float>(
        grids, batch.data_ptr<int64_t>(), pos.data_ptr<double>(), wrap.data_ptr<double>(),
        st.codec, N, C, status.data_ptr<int64_t>(), row_ptr.data_ptr<int64_t>(), kp,
        edge_index.data_ptr<int64_t>(), shifts.data_ptr<float>(), vec.data_ptr<float>(),
        dist.data_ptr<float>(), stream);
  else
    kernels::static_finalize<double>(
        grids, batch.data_ptr<int64_t>(), pos.data_ptr<double>(), wrap.data_ptr<double>(),
        st.codec, N, C, status.data_ptr<int64_t>(), row_ptr.data_ptr<int64_t>(), kp,
        edge_index.data_ptr<int64_t>(), shifts.data_ptr<double>(), vec.data_ptr<double>(),
        dist.data_ptr<double>(), stream);
}

}  // namespace glue
}  // namespace
}  // namespace tnf
