// Matrix products with either operand transposed, on the packed GEMM: a dense layer's forward
// x W^T and its gradients g W and g^T x, each read where it lies rather than copied into a
// transposed array first (the transposed operand is packed by its own source, see
// gemm/operands.h). A product with one row or one column (a layer with one output, or its
// weight gradient: a matrix-vector product) runs as vector dot products or a weighted sum of
// rows instead, and one with a reduction of length 1 (that layer's input gradient) as an outer
// product: the packed GEMM would pad the single row, column or reduction step to a whole
// register tile or block and spend its time packing. Likewise a reduction shorter than a
// vector runs as weighted sums of rows, x W^T with a long reduction as dot products of rows
// (gemm/dot.h), a product of fewer columns than a vector's lanes transposed, and a long
// reduction into a small C in chunks on the threads (see matmul below).
#pragma once

#include "common/prelude.h"
#include "common/denormals.h"
#include "common/simd.h"
#include "gemm/dot.h"
#include "gemm/driver.h"

namespace pyconv {
namespace PYCONV_ISA {

// C (M x N, row-major) = op(A) op(B), or C += op(A) op(B) when accumulate; op(A) is M x K and
// op(B) K x N. A is stored row-major as (M, K), or as (K, M) when trans_a; B as (K, N), or as
// (N, K) when trans_b.
// Below this many multiply-adds (a 4 MB float32 matrix) a matrix-vector product runs on one
// thread. It is bound by reading the matrix once; a matrix that fits in one core's caches
// streams from them faster than a second thread can be woken: 64 x 6272 (1.6 MB) measured
// 22-23 us on one thread against 31-40 us on two, PyTorch 24-33 us.
constexpr int64_t kGemvParallelWork = int64_t(1) << 20;

// c[i] (+)= sum_k a[i * K + k] v[k] for i < M: each row of a dotted with v.
//
// Rows go L at a time (a vector's lanes), each into one vector accumulator (its lane j sums
// the terms k = j mod L in order, the last partial vector masked); a register transpose then
// turns the L accumulators into L vectors whose lane i holds row i's partial sums, added in a
// fixed tree. Summing each row's lanes on its own, in a chain of dependent scalar adds, was
// most of LeNet-5's 120 -> 84 layer at batch 1 (1.4 us for 10K multiply-adds). Every c[i] is
// summed by one thread in an order fixed by K alone, so the result does not depend on the
// thread count.
template <class T>
static inline void row_block_dot_vector(int64_t rows, int64_t K, const T* a, const T* v, T* c, bool accumulate) {
    using S = Simd<T>;
    using V = typename S::V;
    constexpr int L = S::lanes;
    const T* row[L];
#pragma GCC unroll 16
    for (int r = 0; r < L; ++r) row[r] = a + std::min<int64_t>(r, rows - 1) * K;  // rows past the block: ignored
    V acc[L];
#pragma GCC unroll 16
    for (int r = 0; r < L; ++r) acc[r] = S::zero();
    int64_t k = 0;
    for (; k + L <= K; k += L) {
        const V vk = S::load(v + k);
#pragma GCC unroll 16
        for (int r = 0; r < L; ++r) acc[r] = fma<T>(S::load(row[r] + k), vk, acc[r]);
    }
    if (k < K) {
        const int rest = int(K - k);
        const V vk = load_first<T>(v + k, rest);
#pragma GCC unroll 16
        for (int r = 0; r < L; ++r) acc[r] = fma<T>(load_first<T>(row[r] + k, rest), vk, acc[r]);
    }
    transpose_block<T>(acc);
#pragma GCC unroll 8
    for (int width = L / 2; width >= 1; width /= 2)
#pragma GCC unroll 8
        for (int j = 0; j < width; ++j) acc[j] = acc[j] + acc[j + width];
    const int n = int(std::min<int64_t>(L, rows));
    if (accumulate) acc[0] = acc[0] + load_first<T>(c, n);
    store_first<T>(c, acc[0], n);
}

template <class T>
void rows_dot_vector(int64_t M, int64_t K, const T* a, const T* v, T* c, bool accumulate) {
    constexpr int64_t L = Simd<T>::lanes;
    const int64_t blocks = (M + L - 1) / L;
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_for(blocks, threads_if(M * K >= kGemvParallelWork && blocks > 1), [&](int64_t b, int) {
        row_block_dot_vector<T>(std::min(L, M - b * L), K, a + b * L * K, v, c + b * L, accumulate);
    });
}

// c[j] (+)= sum_k v[k] b[k * ldb + j] for the columns j < (NV - 1) L + last of one register
// block: NV vectors, the last holding `last` lanes (a partial block: LeNet-5's 120 and 84
// columns are one, where column by column the strided reads took 37 us for a 400 x 120
// matrix). Each column sums its K terms in order k = 0, 1, ...
template <class T, int NV>
static inline void rows_block_times_vector(int64_t K, int64_t ldb, const T* v, const T* b, T* c, bool accumulate,
                                           int last) {
    using S = Simd<T>;
    using V = typename S::V;
    constexpr int64_t L = S::lanes;
    V acc[NV];  // in registers: every loop over it unrolled (else GCC kept it on the stack)
#pragma GCC unroll 8
    for (int q = 0; q < NV - 1; ++q) acc[q] = accumulate ? S::load(c + q * L) : S::zero();
    acc[NV - 1] = accumulate ? load_first<T>(c + (NV - 1) * L, last) : S::zero();
    for (int64_t k = 0; k < K; ++k) {
        const V w = S::splat(v[k]);
        const T* row = b + k * ldb;
#pragma GCC unroll 8
        for (int q = 0; q < NV - 1; ++q) acc[q] = fma<T>(w, S::load(row + q * L), acc[q]);
        acc[NV - 1] = fma<T>(w, load_first<T>(row + (NV - 1) * L, last), acc[NV - 1]);
    }
#pragma GCC unroll 8
    for (int q = 0; q < NV - 1; ++q) S::store(c + q * L, acc[q]);
    store_first<T>(c + (NV - 1) * L, acc[NV - 1], last);
}

// The same for any n <= rows_block_columns<T>() columns.
template <class T>
constexpr int64_t rows_block_columns() { return 8 * Simd<T>::lanes; }
template <class T>
static inline void rows_times_vector_block(int64_t K, int64_t ldb, const T* v, const T* b, T* c, bool accumulate,
                                           int64_t n) {
    constexpr int64_t L = Simd<T>::lanes;
    const int vectors = int((n + L - 1) / L), last = int(n - (vectors - 1) * L);
    switch (vectors) {
        case 1: return rows_block_times_vector<T, 1>(K, ldb, v, b, c, accumulate, last);
        case 2: return rows_block_times_vector<T, 2>(K, ldb, v, b, c, accumulate, last);
        case 3: return rows_block_times_vector<T, 3>(K, ldb, v, b, c, accumulate, last);
        case 4: return rows_block_times_vector<T, 4>(K, ldb, v, b, c, accumulate, last);
        case 5: return rows_block_times_vector<T, 5>(K, ldb, v, b, c, accumulate, last);
        case 6: return rows_block_times_vector<T, 6>(K, ldb, v, b, c, accumulate, last);
        case 7: return rows_block_times_vector<T, 7>(K, ldb, v, b, c, accumulate, last);
        default: return rows_block_times_vector<T, 8>(K, ldb, v, b, c, accumulate, last);
    }
}

// c[j] (+)= sum_k v[k] b[k * N + j] for j < N: the rows of b weighted by v and summed. Threads
// share out blocks of columns, so the result does not depend on the thread count.
template <class T>
void vector_times_rows(int64_t K, int64_t N, const T* v, const T* b, T* c, bool accumulate) {
    constexpr int64_t kBlock = rows_block_columns<T>();
    const int64_t blocks = (N + kBlock - 1) / kBlock;
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_for(blocks, threads_if(N * K >= kGemvParallelWork && blocks > 1), [&](int64_t blk, int) {
        const int64_t j0 = blk * kBlock;
        rows_times_vector_block<T>(K, N, v, b + j0, c + j0, accumulate, std::min(kBlock, N - j0));
    });
}

// A reduction shorter than a vector (a VAE's 8 latent dimensions into 2048 features): each row
// of C is a weighted sum of op(B)'s K rows, as in vector_times_rows. A job is one register
// block of columns for up to kShortReductionRows rows of C; when B is stored transposed, (N, K),
// the job first copies its block of op(B) row-major (K x rows_block_columns elements, into L1).
// The packed GEMM packed both operands and loaded and stored every C tile for a few steps of
// reduction: 64 x 8 -> 2048 (x W^T) took 36 us, now 19-23 (PyTorch 14). Each element sums its
// K terms in order, whatever the thread count.
constexpr int64_t kShortReductionRows = 64;
template <class T>
void short_reduction(int64_t M, int64_t N, int64_t K, const T* a, bool trans_a, const T* b, bool trans_b, T* c,
                     bool accumulate) {
    constexpr int64_t L = Simd<T>::lanes, kBlock = rows_block_columns<T>();
    const int64_t blocks = (N + kBlock - 1) / kBlock, row_parts = (M + kShortReductionRows - 1) / kShortReductionRows;
    const int threads = threads_if(M * N * K >= kGemvParallelWork && blocks * row_parts > 1);
    const Scratch<T> blocks_of_b = scratch<T>(trans_b ? threads * L * kBlock : 1);  // one per thread
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_for(blocks * row_parts, threads, [&](int64_t job, int worker) {
        const int64_t j0 = job / row_parts * kBlock, n = std::min(kBlock, N - j0);
        const int64_t i0 = job % row_parts * kShortReductionRows, i1 = std::min(M, i0 + kShortReductionRows);
        const T* bj = b + j0;
        int64_t ldb = N;
        if (trans_b) {
            T* block = blocks_of_b.get() + worker * L * kBlock;
            for (int64_t k = 0; k < K; ++k)
                for (int64_t j = 0; j < n; ++j) block[k * kBlock + j] = b[(j0 + j) * K + k];
            bj = block, ldb = kBlock;
        }
        for (int64_t i = i0; i < i1; ++i) {
            T v[L];
            for (int64_t k = 0; k < K; ++k) v[k] = trans_a ? a[k * M + i] : a[i * K + k];
            rows_times_vector_block<T>(K, ldb, v, bj, c + i * N + j0, accumulate, n);
        }
    });
}

// c[i * N + j] (+)= u[i] v[j]: a column times a row (the input gradient of a layer with one
// output). One product per element, rows shared out between threads.
template <class T>
void outer_product(int64_t M, int64_t N, const T* u, const T* v, T* c, bool accumulate) {
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_for(M, threads_if(M * N >= kGemvParallelWork && M > 1), [&](int64_t i, int) {
        const T ui = u[i];
        T* row = c + i * N;
        if (accumulate)
            for (int64_t j = 0; j < N; ++j) row[j] += ui * v[j];
        else
            for (int64_t j = 0; j < N; ++j) row[j] = ui * v[j];
    });
}

// Up to this many rows of C, a B stored (K, N) is read in place by the micro-kernel rather than
// packed: packing costs the same whatever M, and few rows reuse each packed element little.
// One thread, float32, packed against in place (us): 8x128x128 4.71 / 3.83, 32x128x128 12.33 /
// 11.45, 32x256x1024 184 / 153, 64x1024x1024 1354 / 1243, 128x512x512 627 / 598; from 256 rows
// it varied both ways (256x128x1024 0.99x, 1024^3 0.96x).
constexpr int64_t kMatmulBInPlaceRows = 128;

// Up to this many column panels of C, a row-major A is read in place by rows rather than
// packed (transposed into panels): packing copies all of A for as few passes over it. Two
// threads, float32, packed against in place (us): 3200 x 128 -> 35 184 / 122, 64 x 400 -> 120
// 63 / 59, 64 x 120 -> 84 15 / 13, 2048 x 1024 -> 144 2620 (145 columns, packed) / 2200.
constexpr int64_t kMatmulAInPlacePanels = 3;

// From a reduction this many times the larger side of C, x W^T runs as dot products.
constexpr int64_t kMatmulDotReduction = 4;

template <class T>
void matmul(int64_t M, int64_t N, int64_t K, const T* a, bool trans_a, const T* b, bool trans_b,
            T* c, bool accumulate) {
    // A single column of C: op(B) is one vector (contiguous whichever way B is stored).
    if (N == 1) {
        if (!trans_a) return rows_dot_vector(M, K, a, b, c, accumulate);
        return vector_times_rows(K, M, b, a, c, accumulate);  // A stored (K, M)
    }
    // A single row of C: op(A) is one vector.
    if (M == 1) {
        if (trans_b) return rows_dot_vector(N, K, b, a, c, accumulate);  // B stored (N, K)
        return vector_times_rows(K, N, a, b, c, accumulate);
    }
    // A reduction of length 1: op(A) is a column and op(B) a row, each contiguous.
    if (K == 1) return outer_product(M, N, a, b, c, accumulate);
    if (K < Simd<T>::lanes) return short_reduction<T>(M, N, K, a, trans_a, b, trans_b, c, accumulate);
    // Both operands along the reduction (x W^T), which is long against C: dot products of
    // rows read where they lie (gemm/dot.h). The packed form would transpose both into panels,
    // B's few rows padded to a whole panel (16 x 8192 x 10: 10 rows of B packed as 48).
    if (trans_b && !trans_a && !accumulate && K >= kMatmulDotReduction * std::max(M, N))
        return gemm_dot_rows_parallel<T>(M, N, K, a, K, b, K, c);
    // The same with B stored (K, N) but only a few columns (g W, the input gradient of a layer
    // with few outputs: the VAE's 2048 -> 8): B copied into rows first (N K elements against
    // M N K multiply-adds). Computed transposed (below), B's rows were packed from g's: 64 x
    // 2048 -> 8 took 51 us, PyTorch 30.
    if (!trans_b && !trans_a && !accumulate && N < Simd<T>::lanes && K >= kMatmulDotReduction * std::max(M, N)) {
        const Scratch<T> b_rows = scratch<T>(checked_mul(N, K));
        for (int64_t k = 0; k < K; ++k)
            for (int64_t j = 0; j < N; ++j) b_rows[j * K + k] = b[k * N + j];
        return gemm_dot_rows_parallel<T>(M, N, K, a, K, b_rows.get(), K, c);
    }
    // Fewer columns than a vector's lanes, against many rows: C^T = op(B)^T op(A)^T instead,
    // then transposed (M N elements against M N K multiply-adds). Its rows are C's columns:
    // a register tile of whole vectors rather than one vector mostly idle.
    if (N < Simd<T>::lanes && M >= 2 * Simd<T>::lanes && !accumulate) {
        const Scratch<T> ct = scratch<T>(checked_mul(M, N));
        matmul<T>(N, M, K, b, !trans_b, a, !trans_a, ct.get(), false);
        for (int64_t i = 0; i < M; ++i)
            for (int64_t j = 0; j < N; ++j) c[i * N + j] = ct[j * M + i];
        return;
    }
    // A reduction long against C (a dense layer's weight gradient over a large batch) is cut
    // into chunks of the reduction, one per task, each operand read once, and the partial
    // results summed in an order fixed by the shape (gemm_parallel_split_k). Cut into tiles of
    // C, each tile read the whole reduction of its rows and columns: 35 x 128 x 3200 ran as
    // fast on two threads as on one.
    auto product = [&](const auto& A, const auto& B) {
        if (accumulate) gemm_parallel<T>(M, N, K, A, B, OutMatrix<T>::plain(c, N, N), Store::accumulate);
        else gemm_parallel_split_k<T>(M, N, K, A, B, c);
    };
    auto times_b = [&](const auto& A) {
        if (trans_b)
            product(A, columns_b<T>([b, K](int64_t j) { return b + j * K; }));
        else if (M <= kMatmulBInPlaceRows) {
            // B's full panels read where they lie, row k at b + k N (gemm/operands.h,
            // InMatrixB::rows_in_place), instead of packed first.
            std::vector<int64_t> offsets(static_cast<size_t>(K));
            for (int64_t k = 0; k < K; ++k) offsets[size_t(k)] = k * N;
            InMatrixB<T> B = InMatrixB<T>::plain(b, N, N);
            B.row_offsets = offsets.data();
            product(A, B);
        } else {
            product(A, InMatrixB<T>::plain(b, N, N));
        }
    };
    if (trans_a) times_b(InMatrixAT<T>{a, M});
    else if (N <= kMatmulAInPlacePanels * gemm_nr<T>()) times_b(RowMajorA<T>{a, K});
    else times_b(InMatrixA<T>::plain(a, K, K));
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
