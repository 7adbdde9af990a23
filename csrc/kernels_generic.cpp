// Baseline x86-64 build of every kernel (SSE2; whatever the compiler auto-vectorises).
#define PYCONV_ISA generic
#define PYCONV_ISA_LEVEL 0
#include "common/prelude.h"
#pragma GCC push_options
#include "kernels_isa.inc"
