// AVX2 + FMA build of every kernel (x86-64-v3 class CPUs).
#define PYCONV_ISA avx2
#define PYCONV_ISA_LEVEL 1
#include "common/prelude.h"
#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi,bmi2,f16c,popcnt,prefer-vector-width=256")
#include "kernels_isa.inc"
