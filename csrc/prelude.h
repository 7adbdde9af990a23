// Everything a kernel translation unit needs, included *before* any ISA target pragma so that
// standard-library code is compiled for the baseline ISA only (an AVX-512 copy of an inline
// std:: function could otherwise be picked by the linker for the generic path).
#pragma once

// GCC 12's AVX-512 headers pass _mm*_undefined_*() as the unused source of shuffles and
// extracts, which -Wmaybe-uninitialized reports inside them (GCC bug 105593): silence it there.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <numeric>
#include <type_traits>
#include <vector>

#include "kernels.h"
