// What every kernel header needs: the standard library, the intrinsics, the kernel table's
// types, and the ISA this copy of the kernels is compiled for.
//
// Each kernels_<isa>.cpp includes this file *before* its ISA target pragma, so that
// standard-library code is compiled for the baseline ISA only (an AVX-512 copy of an inline
// std:: function could otherwise be picked by the linker for the generic path). That is why
// the kernel headers take their standard headers from here rather than each its own: once
// the target pragma is active, a standard header must already have been included.
#pragma once

// GCC 12's AVX-512 headers pass _mm*_undefined_*() as the unused source of shuffles and
// extracts, which -Wmaybe-uninitialized reports inside them (GCC bug 105593): silence it there.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <new>
#include <numeric>
#include <optional>
#include <type_traits>
#include <vector>

#include "common/checked.h"
#include "common/thread_pool.h"
#include "kernels.h"

// The ISA of this compilation: kernels_<isa>.cpp define both before including anything. A
// header compiled on its own (tests/test_cpp_headers.py) gets the baseline.
//   PYCONV_ISA        the namespace the kernels are compiled into (generic, avx2, avx512)
//   PYCONV_ISA_LEVEL  0 (generic), 1 (AVX2+FMA) or 2 (AVX-512); kernels with hand-written SIMD
//                     test it (g++ does not update __AVX512F__ & co. after a target pragma)
#ifndef PYCONV_ISA
#define PYCONV_ISA generic
#endif
#ifndef PYCONV_ISA_LEVEL
#define PYCONV_ISA_LEVEL 0
#endif
