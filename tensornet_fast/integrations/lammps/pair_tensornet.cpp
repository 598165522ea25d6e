// LAMMPS pair style "tensornet" (see pair_tensornet.h and docs/lammps.md).
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/torch.h>

#include "pair_tensornet.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <unordered_map>

using namespace LAMMPS_NS;

namespace {

// Element symbols by atomic number (index 0 unused).
const char *const kElements[] = {
    "",   "H",  "He", "Li", "Be", "B",  "C",  "N",  "O",  "F",  "Ne", "Na", "Mg", "Al", "Si",
    "P",  "S",  "Cl", "Ar", "K",  "Ca", "Sc", "Ti", "V",  "Cr", "Mn", "Fe", "Co", "Ni", "Cu",
    "Zn", "Ga", "Ge", "As", "Se", "Br", "Kr", "Rb", "Sr", "Y",  "Zr", "Nb", "Mo", "Tc", "Ru",
    "Rh", "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te", "I",  "Xe", "Cs", "Ba", "La", "Ce", "Pr",
    "Nd", "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "Lu", "Hf", "Ta", "W",
    "Re", "Os", "Ir", "Pt", "Au", "Hg", "Tl", "Pb", "Bi", "Po", "At", "Rn", "Fr", "Ra", "Ac",
    "Th", "Pa", "U",  "Np", "Pu", "Am", "Cm", "Bk", "Cf", "Es", "Fm", "Md", "No", "Lr", "Rf",
    "Db", "Sg", "Bh", "Hs", "Mt", "Ds", "Rg", "Cn", "Nh", "Fl", "Mc", "Lv", "Ts", "Og"};
constexpr int kNumElements = sizeof(kElements) / sizeof(kElements[0]);

int atomic_number(const char *symbol) {
  for (int z = 1; z < kNumElements; ++z)
    if (std::strcmp(symbol, kElements[z]) == 0) return z;
  return -1;
}

}  // namespace

PairTensorNet::PairTensorNet(LAMMPS *lmp) : Pair(lmp) {
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  // the package gives the virial itself (forces act on folded periodic images' owners, so
  // sum x f over LAMMPS's atoms would not be the virial)
  no_virial_fdotr_compute = 1;
  centroidstressflag = CENTROID_NOTAVAIL;
  // several ranks: ghost atoms that are no image of this rank's atoms are graph nodes with
  // their own neighbour lists
  ghostneigh = comm->nprocs > 1 ? 1 : 0;
}

PairTensorNet::~PairTensorNet() {
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
    if (ghostneigh) memory->destroy(cutghost);
  }
}

void PairTensorNet::allocate() {
  allocated = 1;
  const int n = atom->ntypes + 1;
  memory->create(setflag, n, n, "pair:setflag");
  memory->create(cutsq, n, n, "pair:cutsq");
  if (ghostneigh) memory->create(cutghost, n, n, "pair:cutghost");
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) setflag[i][j] = 0;
}

void PairTensorNet::settings(int narg, char **arg) {
  if (narg != 1)
    error->all(FLERR, "Illegal pair_style tensornet command: usage pair_style tensornet "
                      "MODEL.pt2 (a package from `tensornet-fast export --lammps`)");
  package_path_ = arg[0];
  std::unordered_map<std::string, std::string> meta;
  try {
    package_ = std::make_unique<torch::inductor::AOTIModelPackageLoader>(package_path_);
    meta = package_->get_metadata();
  } catch (const std::exception &e) {
    error->all(FLERR, "pair_style tensornet: cannot load {}: {}", package_path_, e.what());
  }
  if (meta.count("tensornet_fast_lammps") == 0)
    error->all(FLERR,
               "pair_style tensornet: {} is not a LAMMPS package (its metadata has no "
               "tensornet_fast_lammps entry): write one with `tensornet-fast export --lammps`",
               package_path_);
  if (meta["tensornet_fast_lammps"] != "1")
    error->all(FLERR, "pair_style tensornet: {} has package format {}, this pair style reads 1",
               package_path_, meta["tensornet_fast_lammps"]);
  cutoff_ = std::stod(meta.at("cutoff"));
  max_cutoff_ = std::stod(meta.at("max_cutoff"));
  num_layers_ = std::stoi(meta.at("num_layers"));
  max_z_ = std::stoi(meta.at("max_z"));
  mean_ = std::stod(meta.at("mean"));
  d2_ = meta.at("d2") == "1";
  float64_ = meta.at("dtype") == "float64";
  if (comm->me == 0)
    utils::logmesg(lmp,
                   "pair tensornet: {} ({}, backend {}, cutoff {}, largest cutoff {}, {} "
                   "interaction layers, atomic numbers below {})\n",
                   package_path_, meta.at("dtype"), meta.at("backend"), cutoff_, max_cutoff_,
                   num_layers_, max_z_);
}

void PairTensorNet::coeff(int narg, char **arg) {
  if (!allocated) allocate();
  const int ntypes = atom->ntypes;
  if (narg != 2 + ntypes)
    error->all(FLERR,
               "pair_coeff for tensornet: give * * and one element symbol per atom type "
               "({} types), e.g. pair_coeff * * H O",
               ntypes);
  if (std::strcmp(arg[0], "*") != 0 || std::strcmp(arg[1], "*") != 0)
    error->all(FLERR, "pair_coeff for tensornet: the first two arguments must be * *");
  if (!package_) error->all(FLERR, "pair_coeff for tensornet: pair_style comes first");
  type_z_.assign(ntypes + 1, 0);
  for (int t = 1; t <= ntypes; ++t) {
    const char *symbol = arg[1 + t];
    const int z = atomic_number(symbol);
    if (z < 0)
      error->all(FLERR, "pair_coeff for tensornet: '{}' (atom type {}) is no element symbol",
                 symbol, t);
    if (z >= max_z_)
      error->all(FLERR,
                 "pair_coeff for tensornet: element {} (Z = {}, atom type {}) is not in the "
                 "model, which takes atomic numbers below {}",
                 symbol, z, t, max_z_);
    type_z_[t] = z;
  }
  for (int i = 1; i <= ntypes; ++i)
    for (int j = i; j <= ntypes; ++j) setflag[i][j] = 1;
}

void PairTensorNet::init_style() {
  if (force->newton_pair == 0)
    error->all(FLERR, "pair_style tensornet needs newton pair on (forces on ghost atoms are "
                      "sent to their owners)");
  if (atom->tag_enable == 0)
    error->all(FLERR, "pair_style tensornet needs atom IDs (atom_modify id yes)");
  if (comm->nprocs > 1) {
    // An atom's energy depends on atoms (num_layers + 1) cutoffs away: the embedding and each
    // interaction layer pass messages over one cutoff. Ghost atoms must reach that far from
    // the rank's atoms, plus the skin they may move between neighbour list builds.
    const double need = (num_layers_ + 1) * max_cutoff_ + neighbor->skin;
    if (comm->cutghostuser < need)
      error->all(FLERR,
                 "pair_style tensornet on {} MPI ranks: this model has {} interaction layers "
                 "and cutoff {}, so ghost atoms must reach ({} + 1) x {} + skin {} = {}; the "
                 "ghost cutoff is {}. Add `comm_modify cutoff {}` to the input",
                 comm->nprocs, num_layers_, max_cutoff_, num_layers_, max_cutoff_,
                 neighbor->skin, need, comm->cutghostuser, need);
    if (d2_)
      error->all(FLERR, "pair_style tensornet: this model has a D2 prior, which torchmd-net "
                        "applies without periodic images; several MPI ranks cannot tell "
                        "images apart: run it on one rank");
    neighbor->add_request(this, NeighConst::REQ_FULL | NeighConst::REQ_GHOST);
  } else {
    neighbor->add_request(this, NeighConst::REQ_FULL);
  }
}

double PairTensorNet::init_one(int i, int j) {
  if (setflag[i][j] == 0) error->all(FLERR, "pair tensornet: pair_coeff * * ... is missing");
  if (ghostneigh) cutghost[i][j] = cutghost[j][i] = max_cutoff_;
  return max_cutoff_;
}

void PairTensorNet::build_nodes() {
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  const tagint *tag = atom->tag;
  std::unordered_map<tagint, int> local_of_tag;
  local_of_tag.reserve(2 * nlocal);
  for (int i = 0; i < nlocal; ++i) local_of_tag.emplace(tag[i], i);
  node_of_.assign(nall, -1);
  atom_of_.resize(nlocal);
  receivers_.resize(nlocal);
  for (int i = 0; i < nlocal; ++i) node_of_[i] = atom_of_[i] = receivers_[i] = i;
  for (int k = nlocal; k < nall; ++k) {
    // Several ranks: every ghost is a node of its own. Folding an image of an own atom onto
    // it there would make the graph asymmetric in node identity (a ghost node receives from
    // the folded atom, which receives from ANOTHER copy of that ghost's atom), and the cpu
    // kernels handle each pair once for both directions (csrc/cpu/edge_passes.h): they need
    // (i, j) and (j, i) together. Unfolded, both lists of a pair hold each other.
    auto it = ghostneigh ? local_of_tag.end() : local_of_tag.find(tag[k]);
    if (it != local_of_tag.end()) {
      node_of_[k] = it->second;  // a periodic image of the rank's own atom
    } else {
      if (!ghostneigh)
        error->one(FLERR, "pair tensornet: ghost atom {} (ID {}) is no image of this rank's "
                          "atoms on a single rank",
                   k, tag[k]);
      node_of_[k] = static_cast<int>(atom_of_.size());
      atom_of_.push_back(k);
      receivers_.push_back(k);
    }
  }
  built_for_ = neighbor->ncalls;
  nall_built_ = nall;
}

void PairTensorNet::build_edges() {
  double **x = atom->x;
  const double cutsq_max = max_cutoff_ * max_cutoff_;
  const int *numneigh = list->numneigh;
  int **firstneigh = list->firstneigh;
  edge_i_.clear();
  edge_j_.clear();
  offsets_.clear();
  const int nnodes = static_cast<int>(receivers_.size());
  for (int r = 0; r < nnodes; ++r) {
    const int a = receivers_[r];
    edge_i_.push_back(r);  // the self-loop first: edges stay sorted by receiver
    edge_j_.push_back(r);
    offsets_.insert(offsets_.end(), {0.0, 0.0, 0.0});
    const int *jlist = firstneigh[a];
    for (int jj = 0; jj < numneigh[a]; ++jj) {
      const int j = jlist[jj] & NEIGHMASK;
      const double dx = x[a][0] - x[j][0], dy = x[a][1] - x[j][1], dz = x[a][2] - x[j][2];
      if (dx * dx + dy * dy + dz * dz >= cutsq_max) continue;
      const int s = node_of_[j];
      const int owner = atom_of_[s];
      edge_i_.push_back(r);
      edge_j_.push_back(s);
      // pos[r] - pos[s] + offset = x[a] - x[j]
      offsets_.insert(offsets_.end(), {x[owner][0] - x[j][0], x[owner][1] - x[j][1],
                                       x[owner][2] - x[j][2]});
    }
  }
}

void PairTensorNet::compute(int eflag, int vflag) {
  ev_init(eflag, vflag);
  if (vflag_atom)
    error->all(FLERR, "pair tensornet gives no per-atom virial (compute stress/atom)");
  const int nlocal = atom->nlocal;
  if (nlocal == 0) return;
  const int nall = nlocal + atom->nghost;
  if (built_for_ != neighbor->ncalls || nall_built_ != nall) build_nodes();
  build_edges();

  double **x = atom->x;
  double **f = atom->f;
  const int *type = atom->type;
  int nnodes = static_cast<int>(atom_of_.size());
  const bool pad = nnodes < 2;  // the package takes >= 2 nodes: a lone atom gets a far ghost
  const int n = pad ? 2 : nnodes;
  const int64_t ne = static_cast<int64_t>(edge_i_.size()) + (pad ? 1 : 0);
  const auto fdtype = float64_ ? torch::kFloat64 : torch::kFloat32;

  auto z = torch::empty({n}, torch::kInt64);
  auto pos64 = torch::empty({n, 3}, torch::kFloat64);
  auto edge_index = torch::empty({2, ne}, torch::kInt64);
  auto offsets64 = torch::zeros({ne, 3}, torch::kFloat64);
  {
    int64_t *zp = z.data_ptr<int64_t>();
    double *pp = pos64.data_ptr<double>();
    for (int r = 0; r < nnodes; ++r) {
      const int a = atom_of_[r];
      zp[r] = type_z_[type[a]];
      for (int k = 0; k < 3; ++k) pp[3 * r + k] = x[a][k];
    }
    int64_t *ep = edge_index.data_ptr<int64_t>();
    const size_t m = edge_i_.size();
    std::memcpy(ep, edge_i_.data(), m * sizeof(int64_t));
    std::memcpy(ep + ne, edge_j_.data(), m * sizeof(int64_t));
    std::memcpy(offsets64.data_ptr<double>(), offsets_.data(), offsets_.size() * sizeof(double));
    if (pad) {  // node 1: the same element, far beyond every cutoff, only its self-loop
      zp[1] = zp[0];
      for (int k = 0; k < 3; ++k) pp[3 + k] = x[atom_of_[0]][k] + (k == 0 ? 1e4 : 0.0);
      ep[m] = 1;
      ep[ne + m] = 1;
    }
  }
  std::vector<at::Tensor> inputs = {z, pos64.to(fdtype), edge_index, offsets64.to(fdtype),
                                    torch::full({1}, nlocal, torch::kInt64)};
  std::vector<at::Tensor> out;
  try {
    out = package_->run(inputs);
  } catch (const std::exception &e) {
    error->one(FLERR, "pair tensornet: the package failed ({} nodes, {} edges): {}", n, ne,
               e.what());
  }
  const auto forces = out[2].to(torch::kFloat64).contiguous();
  const double *fp = forces.data_ptr<double>();
  for (int r = 0; r < nnodes; ++r) {
    double *fa = f[atom_of_[r]];
    for (int k = 0; k < 3; ++k) fa[k] += fp[3 * r + k];
  }
  // The package adds the model's mean energy once per rank; the system gets it once.
  const double share = atom->natoms > 0 ? mean_ * nlocal / double(atom->natoms) : 0.0;
  if (eflag_global) eng_vdwl += out[0].item<double>() - mean_ + share;
  if (eflag_atom) {
    const auto ae = out[1].to(torch::kFloat64).contiguous();
    const double *ep = ae.data_ptr<double>();
    for (int i = 0; i < nlocal; ++i) eatom[i] += ep[i] - mean_ / nlocal + mean_ / atom->natoms;
  }
  if (vflag_global) {
    const auto w = out[3].to(torch::kFloat64).contiguous();
    const double *wp = w.data_ptr<double>();
    virial[0] += wp[0];
    virial[1] += wp[4];
    virial[2] += wp[8];
    virial[3] += wp[1];
    virial[4] += wp[2];
    virial[5] += wp[5];
  }
}
