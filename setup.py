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


def extensions():
    sources = _sources("cpp")
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
        ext = cpp_extension.CUDAExtension(
            "tensornet_fast._C",
            sources + cuda_sources,
            # --fmad=false: the radius graph's exact fp64 membership test must round like the
            # CPU build (no fused multiply-adds), so both devices give the same pair set.
            extra_compile_args={"cxx": cxx + ["-DTNF_WITH_CUDA"], "nvcc": ["-O3", "--fmad=false"]},
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = cpp_extension.CppExtension(
            "tensornet_fast._C", sources, extra_compile_args=cxx, extra_link_args=["-fopenmp"]
        )
    # ninja (pyproject's build requirements, scripts/ensure_venv.sh): the sources compile in
    # parallel, on every core unless MAX_JOBS says otherwise. torch looks for the `ninja`
    # program on PATH, which a venv's python run without activating the venv does not have.
    _put_ninja_on_path()
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


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
