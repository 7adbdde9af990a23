// AVX-512 (F, BW, VL, DQ) build of every kernel (x86-64-v4 class CPUs), 512-bit vectors.
#define PYCONV_ISA avx512
#define PYCONV_ISA_LEVEL 2
#include "common/prelude.h"
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,bmi,bmi2,f16c,popcnt,prefer-vector-width=512")
#include "kernels_isa.inc"
