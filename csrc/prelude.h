// Everything a kernel translation unit needs, included *before* any ISA target pragma so that
// standard-library code is compiled for the baseline ISA only (an AVX-512 copy of an inline
// std:: function could otherwise be picked by the linker for the generic path).
#pragma once

#include <immintrin.h>
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
