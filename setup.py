"""Build script. The C++/CUDA extension (csrc/) is built only when its sources exist and torch is
importable; the CUDA part only when torch has CUDA. Without it, tensornet_fast falls back to its
plain-PyTorch paths, so ``import tensornet_fast`` always works."""

import glob
import os

from setuptools import find_packages, setup


def extensions():
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    if not sources or os.environ.get("TENSORNET_FAST_NO_EXT") == "1":
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        return [], {}
    # -ffp-contract=off: no fused multiply-adds the source does not write, so distances are
    # rounded exactly like the brute-force/PyTorch references (pairs at the cutoff, Verlet reuse
    # bitwise equal to a fresh build); the CUDA side uses --fmad=false for the same reason.
    cxx = ["-O3", "-fopenmp", "-std=c++17", "-ffp-contract=off"]
    # The extension is built on the machine that runs it (build_ext --inplace), so by default it
    # targets that CPU (AVX2/FMA vector loops in the cpu backend's kernels: ~2x over SSE2).
    # TENSORNET_FAST_MARCH=x86-64 (or empty) for a portable build.
    march = os.environ.get("TENSORNET_FAST_MARCH", "native")
    if march:
        cxx.append(f"-march={march}")
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "*.cu")))
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
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=False)}


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
