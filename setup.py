"""Build script. The C++/CUDA extension (csrc/) is built only when its sources exist and torch is
importable; the CUDA part only when torch has CUDA. Without it, tensornet_fast falls back to its
plain-PyTorch paths, so ``import tensornet_fast`` always works."""

import glob
import os

from setuptools import find_packages, setup


def _sources(ext: str) -> list[str]:
    """csrc/**/*.<ext>, sorted: csrc/module.cpp, csrc/registration.cpp, csrc/cpu/ (the cpu
    backend's kernels) and csrc/radius_graph/ (the neighbour search, CPU and CUDA)."""
    return sorted(glob.glob(os.path.join("csrc", "**", f"*.{ext}"), recursive=True))


# The operators and their kernels (every csrc/ source but module.cpp) form a plain shared library
# without Python symbols, tensornet_fast/libtensornet_fast_ops.so: a C++ host (the LAMMPS pair
# style, any AOTInductor package runner) loads it to get torch.ops.tensornet_fast.*. The Python
# module tensornet_fast._C (csrc/module.cpp) links it (rpath $ORIGIN), so importing _C loads it.
OPS_LIB = "libtensornet_fast_ops"


def extensions():
    sources = [s for s in _sources("cpp") if os.path.basename(s) != "module.cpp"]
    if not sources or os.environ.get("TENSORNET_FAST_NO_EXT") == "1":
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        return [], {}
    # -ffp-contract=off: no fused multiply-adds the source does not write, so distances are
    # rounded exactly like the brute-force/PyTorch references (pairs at the cutoff, Verlet reuse
    # bitwise equal to a fresh build); the CUDA side uses --fmad=false for the same reason. The
    # cpu backend's kernels (csrc/cpu/) turn contraction back on for themselves with
    # `#pragma GCC optimize("fp-contract=fast")` in csrc/cpu/common.h (see there why).
    cxx = ["-O3", "-fopenmp", "-std=c++17", "-ffp-contract=off"]
    # The extension is built on the machine that runs it (build_ext --inplace), so by default it
    # targets that CPU (AVX2/FMA vector loops in the cpu backend's kernels: ~2x over SSE2).
    # TENSORNET_FAST_MARCH=x86-64 (or empty) for a portable build.
    march = os.environ.get("TENSORNET_FAST_MARCH", "native")
    if march:
        cxx.append(f"-march={march}")
    cuda_sources = _sources("cu")
    use_cuda = bool(cuda_sources) and torch.version.cuda is not None and cpp_extension.CUDA_HOME
    if use_cuda:
        ops = cpp_extension.CUDAExtension(
            f"tensornet_fast.{OPS_LIB}",
            sources + cuda_sources,
            # --fmad=false: the radius graph's exact fp64 membership test must round like the
            # CPU build (no fused multiply-adds), so both devices give the same pair set.
            extra_compile_args={"cxx": cxx + ["-DTNF_WITH_CUDA"], "nvcc": ["-O3", "--fmad=false"]},
            extra_link_args=["-fopenmp"],
        )
        flags = cxx + ["-DTNF_WITH_CUDA"]
    else:
        ops = cpp_extension.CppExtension(
            f"tensornet_fast.{OPS_LIB}", sources, extra_compile_args=cxx, extra_link_args=["-fopenmp"]
        )
        flags = cxx
    # no libtorch_python: the library must load in a process without Python
    ops.libraries = [lib for lib in ops.libraries if lib != "torch_python"]
    module = cpp_extension.CppExtension(
        "tensornet_fast._C",
        [os.path.join("csrc", "module.cpp")],
        extra_compile_args=flags,
        extra_link_args=["-Wl,-rpath,$ORIGIN"],
    )
    # ninja (pyproject's build requirements, scripts/ensure_venv.sh): the sources compile in
    # parallel, on every core unless MAX_JOBS says otherwise. torch looks for the `ninja`
    # program on PATH, which a venv's python run without activating the venv does not have.
    _put_ninja_on_path()
    return [ops, module], {"build_ext": _build_ext_class(cpp_extension)}


def _build_ext_class(cpp_extension):
    """torch's BuildExtension (ninja), naming the operator library ``libtensornet_fast_ops.so``
    (no Python ABI tag: it is no Python module) and linking _C against it."""

    class BuildExt(cpp_extension.BuildExtension.with_options(use_ninja=True)):
        def get_ext_filename(self, fullname):
            # called with the full dotted name and with its last component alone
            if fullname.split(".")[-1] == OPS_LIB:
                return os.path.join(*fullname.split(".")) + ".so"
            return super().get_ext_filename(fullname)

        def build_extension(self, ext):
            if ext.name == "tensornet_fast._C":
                lib = self.get_ext_fullpath(f"tensornet_fast.{OPS_LIB}")
                ext.library_dirs = [*ext.library_dirs, os.path.dirname(lib)]
                ext.libraries = [*ext.libraries, OPS_LIB[len("lib") :]]
            super().build_extension(ext)

    return BuildExt


def _put_ninja_on_path() -> None:
    try:
        import ninja
    except ImportError:
        return  # torch then warns and compiles one file at a time
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


ext_modules, cmdclass = extensions()
setup(
    # kernels/ (the Triton kernels, top-level in the source tree) installs as
    # tensornet_fast.kernels, never as a top-level "kernels" module.
    packages=find_packages(include=["tensornet_fast", "tensornet_fast.*"])
    + ["tensornet_fast.kernels"],
    package_dir={"tensornet_fast.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
