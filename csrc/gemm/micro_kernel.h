// The micro-kernel: c[MR x NV*L] (row stride ldc) = acc, acc + c, or acc + bias[row], where
// acc = a_panel (MR x kc, packed k-major) times the first NV vectors of b_panel (kc x NR, packed
// row-major). NV < GemmTile::NV serves a last column panel that is only partly used (N = 128
// with NR = 48): no work on its padding, and its tile can still be stored in place.
#pragma once

#include "common/prelude.h"
#include "common/simd.h"
#include "gemm/tile.h"
#include "gemm/addressing.h"

#include <algorithm>
#include <type_traits>

namespace pyconv {
namespace PYCONV_ISA {

template <class T, int NV = GemmTile<T>::NV, class ACols, class BRows>
inline void micro_kernel(int64_t kc, const ACols& a, const BRows& b, T* c,
                         int64_t ldc, Store mode, const T* bias) {
    using V = Simd<T>;
    constexpr int MR = ACols::rows, L = V::lanes;
    typename V::reg acc[MR][NV];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) acc[i][v] = V::zero();
    // The C tile is read after the k loop: start fetching it now (an LSTM step adds to the
    // input projection of its gates, written long before and no longer in cache).
    if (mode == Store::accumulate)
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i)
            for (int64_t byte = 0; byte < int64_t(NV * L * sizeof(T)); byte += 64)
                __builtin_prefetch(reinterpret_cast<const char*>(c + i * ldc) + byte);
    // A packed A is requested 4 KiB ahead, a line per line of it (k steps of MR elements). Its
    // panels are contiguous, so this runs on into the next panel. The transformed filters that
    // the Winograd GEMMs read in place (megabytes, from beyond L2) are used for few columns
    // each (32 tiles: two FMAs per element), and the hardware prefetchers did not keep up:
    // perf put 40% of those products' samples on the loads, and the prefetch took the
    // discriminator's 64 -> 128 4x4 stride-2 forward from 2.75 to 2.31 ms (2 threads).
    constexpr int64_t kAheadElements = 4096 / sizeof(T);
    constexpr int64_t kStepsPerLine = std::max<int64_t>(1, 64 / (MR * sizeof(T)));
    for (int64_t k = 0; k < kc; ++k) {
        if constexpr (std::is_same_v<ACols, PackedCols<T>>)
            if (k % kStepsPerLine == 0) __builtin_prefetch(a.col(k) + kAheadElements);
        const T* bk = b(k);
        typename V::reg bv[NV];
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) bv[v] = V::load(bk + v * L);
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i) {
            const typename V::reg ai = V::broadcast(a.col(k) + a.row(i));
#pragma GCC unroll 16
            for (int v = 0; v < NV; ++v) acc[i][v] = V::fma(ai, bv[v], acc[i][v]);
        }
    }
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
        T* row = c + i * ldc;
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) {
            typename V::reg out = acc[i][v];
            if (mode == Store::accumulate) out = V::add(out, V::load(row + v * L));
            else if (bias) out = V::add(out, V::broadcast(bias + i));
            V::store(row + v * L, out);
        }
    }
}

// The micro-kernel on the first nv vectors of the panels (1 <= nv <= GemmTile::NV).
template <class T, int NV = GemmTile<T>::NV, class ACols, class BRows>
inline void micro_kernel_cols(int nv, int64_t kc, const ACols& a, const BRows& b, T* c, int64_t ldc,
                              Store mode, const T* bias) {
    if constexpr (NV > 1)
        if (nv < NV) return micro_kernel_cols<T, NV - 1>(nv, kc, a, b, c, ldc, mode, bias);
    micro_kernel<T, NV>(kc, a, b, c, ldc, mode, bias);
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
