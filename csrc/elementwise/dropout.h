// Dropout in one pass: the keep-mask drawn, stored and applied together.
//
// The random numbers come from Philox4x32-10 (Salmon, Moraes, Dror and Shaw, "Parallel random
// numbers: as easy as 1, 2, 3", SC 2011), a counter-based generator: block b of a call is
// philox(counter = (b mod 2^32, b / 2^32, 0, 0), key = (seed mod 2^32, seed / 2^32)), four
// 32-bit words, and element i reads word i mod 4 of block i / 4. Every element's number is
// thereby a function of (seed, i) alone: the mask is the same however the array is split between
// threads, and on every backend (each implements these same lines). An element is kept when
// the top 24 bits of its word are below keep_threshold = round((1 - p) 2^24), and a kept
// element is multiplied by scale = 1 / (1 - p), a dropped one by 0 (so inf or NaN there give
// NaN, as PyTorch's x * mask * scale does).
#pragma once

#include "common/denormals.h"
#include "common/prelude.h"
#include "elementwise/activation.h"

namespace pyconv {
namespace PYCONV_ISA {

// Philox blocks per chunk: the chunk's 64 elements are a unit of work whose 16 blocks are
// computed side by side (the round loop vectorises across them).
constexpr int kPhiloxBlocksPerChunk = 16;
constexpr int64_t kDropoutChunk = 4 * kPhiloxBlocksPerChunk;

// The 4 x 16 words of blocks first_block ... first_block + 15, word j of block l at 4 l + j
// (element order).
static inline void philox4x32_10_chunk(uint64_t first_block, uint64_t seed, uint32_t* words) {
    constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;  // multipliers
    constexpr uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;  // key increments (Weyl sequence)
    uint32_t c0[kPhiloxBlocksPerChunk], c1[kPhiloxBlocksPerChunk], c2[kPhiloxBlocksPerChunk],
        c3[kPhiloxBlocksPerChunk];
#pragma omp simd
    for (int l = 0; l < kPhiloxBlocksPerChunk; ++l) {
        const uint64_t block = first_block + uint64_t(l);
        uint32_t x0 = uint32_t(block), x1 = uint32_t(block >> 32), x2 = 0, x3 = 0;
        uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
        for (int round = 0; round < 10; ++round) {
            const uint64_t p0 = uint64_t(M0) * x0, p1 = uint64_t(M1) * x2;
            const uint32_t y0 = uint32_t(p1 >> 32) ^ x1 ^ k0, y2 = uint32_t(p0 >> 32) ^ x3 ^ k1;
            x1 = uint32_t(p1);
            x3 = uint32_t(p0);
            x0 = y0;
            x2 = y2;
            k0 += W0;
            k1 += W1;
        }
        c0[l] = x0;
        c1[l] = x1;
        c2[l] = x2;
        c3[l] = x3;
    }
    for (int l = 0; l < kPhiloxBlocksPerChunk; ++l) {
        words[4 * l] = c0[l];
        words[4 * l + 1] = c1[l];
        words[4 * l + 2] = c2[l];
        words[4 * l + 3] = c3[l];
    }
}

// y = x * (kept ? scale : 0) and mask = kept (0 or 1) for the n elements.
template <class T>
void dropout(int64_t n, const T* x, uint64_t seed, uint32_t keep_threshold, T scale, T* y,
             uint8_t* mask) {
    const int64_t chunks = (n + kDropoutChunk - 1) / kDropoutChunk;
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_for(chunks, threads_if(n >= kParallelElementwise), [&](int64_t chunk, int) {
        uint32_t words[kDropoutChunk];
        philox4x32_10_chunk(uint64_t(chunk) * kPhiloxBlocksPerChunk, seed, words);
        const int64_t start = chunk * kDropoutChunk;
        const int64_t count = std::min(kDropoutChunk, n - start);
        const T* xc = x + start;
        T* yc = y + start;
        uint8_t* mc = mask + start;
        const uint32_t threshold = keep_threshold;  // in registers (see leaky_relu in elementwise/activation.h)
        const T kept = scale;
#pragma omp simd
        for (int64_t e = 0; e < count; ++e) {
            const bool keep = (words[e] >> 8) < threshold;
            yc[e] = xc[e] * (keep ? kept : T(0));
            mc[e] = uint8_t(keep);
        }
    });
}

// grad_x = grad_y * (mask ? scale : 0).
template <class T>
void dropout_backward(int64_t n, const T* grad_y, const uint8_t* mask, T scale, T* grad_x) {
    FlushDenormals ftz;
    parallel_ranges(n, threads_if(n >= kParallelElementwise), [&](int64_t begin, int64_t end, int) {
        const T kept = scale;  // in a register (see leaky_relu in elementwise/activation.h)
#pragma omp simd
        for (int64_t i = begin; i < end; ++i) grad_x[i] = grad_y[i] * (mask[i] ? kept : T(0));
    });
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
