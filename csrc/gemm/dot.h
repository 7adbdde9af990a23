// Dot-product form, for a long reduction that is contiguous in memory in both operands (the
// weight gradient: output gradient and input both run along pixels). Panels are packed
// k-contiguous (dst[row * kcp + k], kcp = kc rounded up to whole vectors), so packing is a
// plain copy, or rows already contiguous are read where they lie (gemm_dot_rows_parallel); the
// micro-kernel keeps DotTile::MR x NR vector accumulators and sums each one across lanes once
// per reduction block.
//
//   C[i, j] (+)= sum_k A[i, k] * B[j, k]
#pragma once

#include "common/prelude.h"
#include "common/denormals.h"
#include "common/scratch.h"
#include "common/simd.h"
#include "gemm/chunked_reduction.h"
#include "gemm/tile.h"
#include "gemm/micro_kernel.h"

namespace pyconv {
namespace PYCONV_ISA {

template <class T>
constexpr int64_t dot_kc() { return 1024 * 4 / sizeof(T); }

// The micro-kernel: DotTile::MR x NR vector accumulators over reduction [0, kc) of rows of A
// (row i at a + i lda) and of B (row j at b + j ldb), packed or where they lie, the last partial
// vector masked; each summed across lanes into c at the end. Rows past mr (nr) repeat the last
// one; their sums are not stored.
template <class T>
inline void dot_micro_kernel(int64_t kc, const T* a, int64_t lda, const T* b, int64_t ldb, T* c,
                             int64_t ldc, int64_t mr, int64_t nr, Store mode) {
    using V = Simd<T>;
    constexpr int MR = DotTile<T>::MR, NR = DotTile<T>::NR, L = V::lanes;
    const T* arow[MR];
    const T* brow[NR];
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) arow[i] = a + std::min<int64_t>(i, mr - 1) * lda;
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) brow[j] = b + std::min<int64_t>(j, nr - 1) * ldb;
    typename V::reg acc[MR][NR];
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
        for (int j = 0; j < NR; ++j) acc[i][j] = V::zero();
    auto step = [&](int64_t k, int n) {
        typename V::reg bv[NR];
#pragma GCC unroll 8
        for (int j = 0; j < NR; ++j) bv[j] = n == L ? V::load(brow[j] + k) : load_first<T>(brow[j] + k, n);
#pragma GCC unroll 8
        for (int i = 0; i < MR; ++i) {
            const typename V::reg av = n == L ? V::load(arow[i] + k) : load_first<T>(arow[i] + k, n);
#pragma GCC unroll 8
            for (int j = 0; j < NR; ++j) acc[i][j] = V::fma(av, bv[j], acc[i][j]);
        }
    };
    int64_t k = 0;
    for (; k + L <= kc; k += L) step(k, L);
    if (k < kc) step(k, int(kc - k));
    for (int i = 0; i < mr; ++i)
        for (int j = 0; j < nr; ++j) {
            const T v = V::sum(acc[i][j]);
            c[i * ldc + j] = mode == Store::accumulate ? c[i * ldc + j] + v : v;
        }
}

// Rows of an operand whose columns are pixels of NCHW images: row i starts at
// base + row_offset(i), and pixel q at (q / pixels) * image_stride + q % pixels from there.
template <class T>
struct PixelRows {
    const T* base;
    int64_t row_stride;                     // row i at i * row_stride ...
    const int64_t* row_offsets;             // ... or at row_offsets[i] when given
    int64_t pixels, image_stride;

    // dst[i * kcp + k] = row (i0 + i), pixel (k0 + k); zeros for k >= kc and i >= rows.
    void pack(int64_t i0, int64_t rows, int64_t rows_padded, int64_t k0, int64_t kc, int64_t kcp,
              T* dst) const {
        for (int64_t i = 0; i < rows_padded; ++i) {
            T* d = dst + i * kcp;
            if (i >= rows) {
                std::fill(d, d + kcp, T(0));
                continue;
            }
            const T* row = base + (row_offsets ? row_offsets[i0 + i] : (i0 + i) * row_stride);
            for (int64_t k = 0, q = k0 % pixels, n = k0 / pixels; k < kc; q = 0, ++n) {
                const int64_t run = std::min(kc - k, pixels - q);
                std::copy(row + n * image_stride + q, row + n * image_stride + q + run, d + k);
                k += run;
            }
            std::fill(d + kc, d + kcp, T(0));
        }
    }
};

// Buffers of one thread for the dot-product form: all rows of A and NC_DOT rows of B per block.
template <class T>
struct DotBuffers {
    static constexpr int64_t NC = 16 * DotTile<T>::NR;
    Scratch<T> a, b;
    explicit DotBuffers(int64_t M)
        : a(scratch<T>((M + DotTile<T>::MR) * dot_kc<T>())), b(scratch<T>(NC * dot_kc<T>())) {}
};

// C (M x N, row stride ldc) = A B^T over reduction [k_begin, k_end), one thread.
template <class T>
void gemm_dot_block(int64_t M, int64_t N, int64_t k_begin, int64_t k_end, const PixelRows<T>& A,
                    const PixelRows<T>& B, T* c, int64_t ldc, DotBuffers<T>& buf) {
    constexpr int MR = DotTile<T>::MR, NR = DotTile<T>::NR, L = Simd<T>::lanes;
    constexpr int64_t NC = DotBuffers<T>::NC;
    const int64_t Mp = (M + MR - 1) / MR * MR;
    for (int64_t pc = k_begin; pc == k_begin || pc < k_end; pc += dot_kc<T>()) {
        const int64_t kc = std::min(dot_kc<T>(), k_end - pc), kcp = (kc + L - 1) / L * L;
        const Store mode = pc == k_begin ? Store::overwrite : Store::accumulate;
        A.pack(0, M, Mp, pc, kc, kcp, buf.a.get());
        for (int64_t jc = 0; jc < N; jc += NC) {
            const int64_t nc = std::min(NC, N - jc), ncp = (nc + NR - 1) / NR * NR;
            B.pack(jc, nc, ncp, pc, kc, kcp, buf.b.get());
            for (int64_t jr = 0; jr < nc; jr += NR)
                for (int64_t ir = 0; ir < M; ir += MR)
                    dot_micro_kernel<T>(kcp, buf.a.get() + ir * kcp, kcp, buf.b.get() + jr * kcp, kcp,
                                        c + ir * ldc + jc + jr, ldc, std::min<int64_t>(MR, M - ir),
                                        std::min<int64_t>(NR, nc - jr), mode);
        }
    }
}

// C (plain M x N) = A B^T, the reduction cut into chunks fixed by the shape
// (gemm/chunked_reduction.h): the same result on any number of threads.
template <class T>
void gemm_dot_parallel(int64_t M, int64_t N, int64_t K, const PixelRows<T>& A,
                       const PixelRows<T>& B, T* c) {
    const ReductionChunks chunks = reduction_chunks(K, M * N, dot_kc<T>(), 1);
    sum_of_chunks<T>(chunks, M * N, c, [M] { return DotBuffers<T>(M); },
                     [&](int64_t k0, int64_t k1, T* out, DotBuffers<T>& buf) {
                         gemm_dot_block<T>(M, N, k0, k1, A, B, out, N, buf);
                     });
}

// C (plain M x N) = A B^T for A (M x K) and B (N x K) stored by rows (strides lda, ldb), read
// in place: no copies (gemm_dot_parallel's took more time than the products for a dense layer's
// x W^T). The reduction is cut into chunks fixed by the shape, as gemm_dot_parallel's, and each
// chunk into blocks of dot_kc, so that a tile's rows of B stay in L1 while the rows of A go past.
template <class T>
void gemm_dot_rows_parallel(int64_t M, int64_t N, int64_t K, const T* a, int64_t lda, const T* b,
                            int64_t ldb, T* c) {
    constexpr int MR = DotTile<T>::MR, NR = DotTile<T>::NR;
    const ReductionChunks chunks = reduction_chunks(K, M * N, dot_kc<T>(), 1);
    sum_of_chunks<T>(chunks, M * N, c, [] { return 0; }, [&](int64_t k0, int64_t k1, T* out, int) {
        for (int64_t pc = k0; pc == k0 || pc < k1; pc += dot_kc<T>()) {
            const int64_t kc = std::min(dot_kc<T>(), k1 - pc);
            const Store mode = pc == k0 ? Store::overwrite : Store::accumulate;
            for (int64_t jr = 0; jr < N; jr += NR)
                for (int64_t ir = 0; ir < M; ir += MR)
                    dot_micro_kernel<T>(kc, a + ir * lda + pc, lda, b + jr * ldb + pc, ldb, out + ir * N + jr, N,
                                        std::min<int64_t>(MR, M - ir), std::min<int64_t>(NR, N - jr), mode);
        }
    });
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
