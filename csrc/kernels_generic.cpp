// Baseline x86-64 build of every kernel (SSE2; whatever the compiler auto-vectorises).
#include "prelude.h"
#pragma GCC push_options
#define PYCONV_ISA generic
#define PYCONV_ISA_LEVEL 0
#include "kernels_isa.inc"
