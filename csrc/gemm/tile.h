// The packed GEMM's register tile (MR rows x NV vectors of C kept in registers by the
// micro-kernel) and compile-time cache blocks (KC x NC panels of B, MC x KC of A) for this ISA;
// DotTile is the tile of the dot-product form (gemm/dot.h).
//
// The blocks the GEMM runs with are chosen at run time from the CPU's caches (gemm/blocking.h,
// gemm_blocking<T>() below); the constants here are the fallback when no cache size is found,
// and KC is also the reduction granule of the chunked weight-gradient sums, which must depend
// on the shape alone.
#pragma once

#include "common/prelude.h"
#include "common/simd.h"
#include "gemm/blocking.h"

namespace pyconv {
namespace PYCONV_ISA {

#if PYCONV_ISA_LEVEL == 2
// 8 rows x 3 vectors: 24 accumulators + 3 B vectors + 1 broadcast of the 32 zmm registers
// (8 rows: channel counts are mostly multiples of 8).
// Dot-product form: 4 x 6 accumulators + 6 B vectors + 1 A vector.
template <class T> struct DotTile { static constexpr int MR = 4, NR = 6; };
template <class T> struct GemmTile {
    static constexpr int MR = 8, NV = 3;
    static constexpr int64_t KC = 256, MC = 96, NC = 480;
};
#elif PYCONV_ISA_LEVEL == 1
// 6 rows x 2 vectors: 12 accumulators + 2 B vectors + 1 broadcast of the 16 ymm registers.
// Dot-product form: 3 x 4 accumulators + 4 B vectors + 1 A vector.
template <class T> struct DotTile { static constexpr int MR = 3, NR = 4; };
template <class T> struct GemmTile {
    static constexpr int MR = 6, NV = 2;
    static constexpr int64_t KC = 256, MC = 96, NC = 480;
};
#else
template <class T> struct DotTile { static constexpr int MR = 2, NR = 4; };
template <class T> struct GemmTile {
    static constexpr int MR = 4, NV = 2;
    static constexpr int64_t KC = 256, MC = 64, NC = 1024;
};
#endif

template <class T> constexpr int gemm_mr() { return GemmTile<T>::MR; }
template <class T> constexpr int gemm_nr() { return GemmTile<T>::NV * Simd<T>::lanes; }

// The cache blocks this ISA's GEMM of T runs with now (gemm/blocking.h).
template <class T> GemmBlocking gemm_blocking() { return pyconv::gemm_blocking(PYCONV_ISA_LEVEL, sizeof(T)); }

}  // namespace PYCONV_ISA
}  // namespace pyconv
