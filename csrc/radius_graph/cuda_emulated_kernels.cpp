// Host build of the CUDA radius graph's kernels: cuda.cu itself, compiled by the host compiler
// with its kernels launched as sequential loops over (block, thread) (cuda_on_host.h), in the
// namespace tnf::cuda_emulated. Always part of the CPU extension, so CI without a GPU runs the
// kernel bodies (tests/test_radius_graph_cuda_host.py through the *_cuda_emulated ops). Built
// with setup.py's -ffp-contract=off, which rounds like nvcc's --fmad=false.
#define TNF_CUDA_KERNELS cuda_emulated
#include "cuda.cu"
