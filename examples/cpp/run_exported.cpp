// Runs a tensornet_fast AOTInductor package (tensornet-fast export / export_model) from C++,
// without Python: reads a structure, prints the energy, the forces and (periodic packages) the
// stress in the model's units.
//
//   run_exported PACKAGE.pt2 STRUCTURE.xyz
//
// STRUCTURE.xyz: plain XYZ. Line 1: the atom count N. Line 2: a comment; for periodic packages
// it must hold the cell as `box=ax ay az bx by bz cx cy cz` (rows a, b, c). Then N lines
// `SYMBOL_OR_Z x y z` (an element symbol or an atomic number).
//
// Output (one value per token, %.17g):
//   energy E
//   forces N
//   fx fy fz            (N lines)
//   stress              (periodic packages only)
//   sxx sxy sxz         (3 lines)
//
// Build: examples/cpp/build.sh (g++ against the libtorch of a Python venv), or CMake with
// -DCMAKE_PREFIX_PATH=$(python -c 'import torch; print(torch.utils.cmake_prefix_path)').
#include <ATen/ATen.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

const char* kSymbols[] = {"X",  "H",  "He", "Li", "Be", "B",  "C",  "N",  "O",  "F",  "Ne",
                          "Na", "Mg", "Al", "Si", "P",  "S",  "Cl", "Ar", "K",  "Ca", "Sc",
                          "Ti", "V",  "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga", "Ge",
                          "As", "Se", "Br", "Kr", "Rb", "Sr", "Y",  "Zr", "Nb", "Mo", "Tc",
                          "Ru", "Rh", "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te", "I",  "Xe"};

int64_t atomic_number(const std::string& token) {
  if (!token.empty() && std::isdigit(static_cast<unsigned char>(token[0]))) {
    return std::stoll(token);
  }
  for (int64_t k = 1; k < static_cast<int64_t>(sizeof(kSymbols) / sizeof(kSymbols[0])); ++k) {
    if (token == kSymbols[k]) return k;
  }
  throw std::runtime_error("unknown element '" + token + "' (use the atomic number)");
}

struct Structure {
  std::vector<int64_t> z;
  std::vector<double> pos;  // N x 3
  std::vector<double> box;  // 9 values or empty
};

Structure read_xyz(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path);
  Structure s;
  std::string line;
  std::getline(in, line);
  const int64_t n = std::stoll(line);
  if (n < 2) throw std::runtime_error("need at least 2 atoms");
  std::getline(in, line);
  const auto at = line.find("box=");
  if (at != std::string::npos) {
    std::istringstream b(line.substr(at + 4));
    double v;
    while (s.box.size() < 9 && b >> v) s.box.push_back(v);
    if (s.box.size() != 9) throw std::runtime_error("box= needs 9 numbers (rows a, b, c)");
  }
  for (int64_t i = 0; i < n; ++i) {
    if (!std::getline(in, line)) throw std::runtime_error("file ends before atom " +
                                                          std::to_string(i));
    std::istringstream row(line);
    std::string sym;
    double x, y, zc;
    if (!(row >> sym >> x >> y >> zc)) throw std::runtime_error("bad atom line: " + line);
    s.z.push_back(atomic_number(sym));
    s.pos.insert(s.pos.end(), {x, y, zc});
  }
  return s;
}

double cross_norm(const double* u, const double* v) {
  const double c0 = u[1] * v[2] - u[2] * v[1], c1 = u[2] * v[0] - u[0] * v[2],
               c2 = u[0] * v[1] - u[1] * v[0];
  return std::sqrt(c0 * c0 + c1 * c1 + c2 * c2);
}

// Smallest distance between lattice planes of the cell (rows a, b, c).
double min_plane_spacing(const std::vector<double>& b) {
  const double* a = b.data();
  const double* bb = b.data() + 3;
  const double* c = b.data() + 6;
  const double volume = std::fabs(a[0] * (bb[1] * c[2] - bb[2] * c[1]) -
                                  a[1] * (bb[0] * c[2] - bb[2] * c[0]) +
                                  a[2] * (bb[0] * c[1] - bb[1] * c[0]));
  return std::min({volume / cross_norm(bb, c), volume / cross_norm(c, a),
                   volume / cross_norm(a, bb)});
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s PACKAGE.pt2 STRUCTURE.xyz\n", argv[0]);
    return 2;
  }
  try {
    torch::inductor::AOTIModelPackageLoader loader(argv[1]);
    auto meta = loader.get_metadata();
    if (meta.count("tensornet_fast_export") == 0) {
      throw std::runtime_error(std::string(argv[1]) + " is not a tensornet_fast export");
    }
    const bool periodic = meta["periodic"] == "1";
    const auto dtype = meta["dtype"] == "float64" ? at::kDouble : at::kFloat;
    const int64_t max_z = std::stoll(meta["max_z"]);

    Structure s = read_xyz(argv[2]);
    const int64_t n = static_cast<int64_t>(s.z.size());
    for (int64_t zi : s.z) {
      if (zi < 0 || zi >= max_z) {
        throw std::runtime_error("atom type " + std::to_string(zi) + " outside the model's 0.." +
                                 std::to_string(max_z - 1));
      }
    }
    auto z = at::from_blob(s.z.data(), {n}, at::kLong).clone();
    auto pos = at::from_blob(s.pos.data(), {n, 3}, at::kDouble).to(dtype);
    std::vector<at::Tensor> inputs{z, pos};
    if (periodic) {
      if (s.box.empty()) throw std::runtime_error("periodic package: the comment line needs box=");
      // The package searches images -images..images: exact while every plane spacing of the
      // cell is >= max_cutoff / images.
      const double need = std::stod(meta["max_cutoff"]) / std::stod(meta["images"]);
      const double spacing = min_plane_spacing(s.box);
      if (spacing < need) {
        throw std::runtime_error("cell plane spacing " + std::to_string(spacing) +
                                 " < cutoff / images = " + std::to_string(need) +
                                 ": export with a larger `images`");
      }
      inputs.push_back(at::from_blob(s.box.data(), {3, 3}, at::kDouble).to(dtype));
    } else if (!s.box.empty()) {
      throw std::runtime_error("this package is for isolated molecules; the file has a box");
    }

    std::vector<at::Tensor> out = loader.run(inputs);
    auto energy = out[0].to(at::kDouble).contiguous();
    auto forces = out[1].to(at::kDouble).contiguous();
    std::printf("energy %.17g\n", energy.data_ptr<double>()[0]);
    std::printf("forces %lld\n", static_cast<long long>(n));
    const double* f = forces.data_ptr<double>();
    for (int64_t i = 0; i < n; ++i) {
      std::printf("%.17g %.17g %.17g\n", f[3 * i], f[3 * i + 1], f[3 * i + 2]);
    }
    if (periodic) {
      auto stress = out[2].to(at::kDouble).contiguous();
      const double* sg = stress.data_ptr<double>();
      std::printf("stress\n");
      for (int r = 0; r < 3; ++r) std::printf("%.17g %.17g %.17g\n", sg[3 * r], sg[3 * r + 1],
                                              sg[3 * r + 2]);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "run_exported: %s\n", e.what());
    return 1;
  }
  return 0;
}
