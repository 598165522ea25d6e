// LAMMPS pair style "tensornet": a TensorNet model exported with `tensornet-fast export --lammps`
// (an AOTInductor package, tensornet_fast/md/export.py "LAMMPS") run on each MPI rank's atoms.
//
//   pair_style tensornet model.pt2
//   pair_coeff * * H O          (one element symbol per LAMMPS atom type)
//
// Per step the rank builds a graph from LAMMPS's full neighbour list: its own atoms are nodes
// 0..nlocal-1; a ghost atom that is a periodic image of one of its own atoms is folded onto that
// atom (its edges get the image's offset), every other ghost atom is a node of its own with the
// edges of LAMMPS's ghost neighbour list. The package returns the rank's energy (its own atoms'),
// forces on every node (ghost nodes' forces are sent home by LAMMPS, newton on) and the virial.
// On one rank every ghost folds: the graph is exactly the periodic system's, as in Python.
#pragma once

#include "pair.h"

#include <memory>
#include <string>
#include <vector>

namespace torch {
namespace inductor {
class AOTIModelPackageLoader;
}
}  // namespace torch

namespace LAMMPS_NS {

class PairTensorNet : public Pair {
 public:
  explicit PairTensorNet(class LAMMPS *);
  ~PairTensorNet() override;
  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;

 private:
  void allocate();
  void build_nodes();  // node map, after every neighbour list build
  void build_edges();  // edge list, every step (positions move)

  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> package_;
  std::string package_path_;
  double cutoff_ = 0.0;      // the network's cutoff
  double max_cutoff_ = 0.0;  // the largest cutoff (network and pair priors): the edges passed
  int num_layers_ = 0;
  int max_z_ = 0;
  double mean_ = 0.0;
  bool d2_ = false;
  bool float64_ = false;
  std::vector<long> type_z_;  // LAMMPS type (1..ntypes) -> atomic number

  // graph of the current step
  bigint built_for_ = -1;       // neighbor->ncalls the node map was built for
  int nall_built_ = -1;
  std::vector<int> node_of_;    // LAMMPS atom index -> node
  std::vector<int> atom_of_;    // node -> LAMMPS atom index (the owner for folded images)
  std::vector<int> receivers_;  // LAMMPS atom whose neighbour list gives each node's edges
  std::vector<long> edge_i_, edge_j_;
  std::vector<double> offsets_;
};

}  // namespace LAMMPS_NS
