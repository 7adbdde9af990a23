// The operands of the packed GEMM: where C's elements live (OutMatrix) and the sources of A and
// B, each of which packs its own panels (A: pack_panel(i0, rows, k0, kc, dst); B:
// pack_panel(k0, kc, j0, cols, dst)) or hands them out in place. Convolution and LSTM kernels
// add sources of their own with the same members.
#pragma once

#include "common/prelude.h"
#include "common/denormals.h"
#include "common/scratch.h"
#include "common/simd.h"
#include "gemm/tile.h"
#include "gemm/micro_kernel.h"

namespace pyconv {
namespace PYCONV_ISA {

// Where C lives. Column j of C splits as j = (outer * n1 + mid) * n0 + inner and element (i, j) is
//   base[i * row_stride + outer * s2 + mid * s1 + inner * s0]
// which covers a plain matrix (n0 = N, s0 = 1), the (image, pixel) columns of a convolution's
// output, and the strided phases of a transpose convolution. Optional per-row bias on overwrite.
template <class T>
struct OutMatrix {
    T* base;
    int64_t row_stride;
    int64_t n0, s0, n1, s1, s2;
    const T* bias = nullptr;  // bias[i] added when a tile is first written (Store::overwrite)
    int64_t n0_valid = std::numeric_limits<int64_t>::max();  // inner indices past this are dropped

    static OutMatrix plain(T* c, int64_t ldc, int64_t N) {
        return OutMatrix{c, ldc, std::max<int64_t>(N, 1), 1, 1, 0, 0};
    }

    // Pointer to tile (i0, j0) when its nr columns are contiguous in memory, else nullptr.
    T* tile_ptr(int64_t i0, int64_t j0, int64_t nr) const {
        const int64_t inner = j0 % n0;
        if (s0 != 1 || inner + nr > std::min(n0, n0_valid)) return nullptr;
        const int64_t outer_mid = j0 / n0;
        return base + i0 * row_stride + (outer_mid / n1) * s2 + (outer_mid % n1) * s1 + inner;
    }

    // Writes the mr x nr corner of `tile` (row stride ld) into C, one run of contiguous
    // columns at a time. Columns whose inner index is >= n0_valid are dropped.
    void scatter(int64_t i0, int64_t j0, int64_t mr, int64_t nr, const T* tile, int64_t ld,
                 Store mode) const {
        int64_t inner = j0 % n0, mid = (j0 / n0) % n1, outer = j0 / n0 / n1;
        for (int64_t j = 0; j < nr;) {
            const int64_t run = std::min(nr - j, n0 - inner);
            const int64_t valid = std::clamp<int64_t>(std::min(n0_valid, n0) - inner, 0, run);
            T* col = base + i0 * row_stride + outer * s2 + mid * s1 + inner * s0;
            for (int64_t i = 0; i < mr; ++i) {
                T* dst = col + i * row_stride;
                const T* src = tile + i * ld + j;
                const T b = (mode == Store::overwrite && bias) ? bias[i0 + i] : T(0);
                if (mode == Store::accumulate && s0 == 1) {
                    for (int64_t t = 0; t < valid; ++t) dst[t] += src[t];
                } else if (mode == Store::accumulate) {
                    for (int64_t t = 0; t < valid; ++t) dst[t * s0] += src[t];
                } else if (s0 == 1) {
                    for (int64_t t = 0; t < valid; ++t) dst[t] = src[t] + b;
                } else {
                    for (int64_t t = 0; t < valid; ++t) dst[t * s0] = src[t] + b;
                }
            }
            j += run;
            inner = 0;
            if (++mid == n1) mid = 0, ++outer;
        }
    }
};

// ---------------------------------------------------------------------------------------------
// Sources of A and B for a plain row-major matrix. A may also have two-level columns:
// column k lies at (k / k_inner) * k_outer_stride + k % k_inner (the (image, pixel) reduction
// of a weight gradient).


// Columns k .. k + lanes - 1 of rows G .. G + lanes - 1 (those below MR) of an A panel, from
// rows src[i] (contiguous), transposed in registers (transpose_block) into dst[k * MR + i].
template <class T, int G = 0>
inline void pack_a_columns(const T* const* src, int64_t k, T* dst) {
    using V = Simd<T>;
    constexpr int MR = GemmTile<T>::MR, L = V::lanes, rows = std::min(L, MR - G);
    typename V::reg block[L];
#pragma GCC unroll 16
    for (int r = 0; r < L; ++r) block[r] = r < rows ? V::load(src[G + r] + k) : V::zero();
    transpose_block<T>(block);  // block[r]: column k + r, rows G ..
    if constexpr (rows == L) {
#pragma GCC unroll 16
        for (int r = 0; r < L; ++r) V::store(dst + (k + r) * MR + G, block[r]);
    } else if constexpr (2 * MR == L) {  // two columns per store (8 rows of 16-lane floats)
        typename V::I pair;
        for (int j = 0; j < L; ++j) pair[j] = j < MR ? j : L + j - MR;
#pragma GCC unroll 16
        for (int r = 0; r < L; r += 2) V::store(dst + (k + r) * MR, __builtin_shuffle(block[r], block[r + 1], pair));
    } else {
#pragma GCC unroll 16
        for (int r = 0; r < L; ++r) store_first<T>(dst + (k + r) * MR + G, block[r], rows);
    }
    if constexpr (G + L < MR) pack_a_columns<T, G + L>(src, k, dst);
}

// Columns k .. k + 2 lanes - 1 of an A panel of lanes / 2 rows (8 rows of 16-lane floats): the
// two halves of the columns fill one lanes x lanes block, whose transpose holds column k + r in
// the low half of block[r] and column k + lanes + r in the high half.
template <class T>
inline void pack_a_columns_twice(const T* const* src, int64_t k, T* dst) {
    using V = Simd<T>;
    constexpr int MR = GemmTile<T>::MR, L = V::lanes;
    static_assert(2 * MR == L);
    typename V::reg block[L];
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) block[r] = V::load(src[r] + k), block[MR + r] = V::load(src[r] + k + L);
    transpose_block<T>(block);
    typename V::I low, high;  // the low (high) halves of two vectors
    for (int j = 0; j < L; ++j) low[j] = j < MR ? j : L + j - MR, high[j] = j < MR ? MR + j : L + j;
#pragma GCC unroll 16
    for (int r = 0; r < L; r += 2) {
        V::store(dst + (k + r) * MR, __builtin_shuffle(block[r], block[r + 1], low));
        V::store(dst + (k + L + r) * MR, __builtin_shuffle(block[r], block[r + 1], high));
    }
}

// dst[k * MR + i] = src[i][k] for i < MR, k < kc: a full A panel whose rows are contiguous.
// Element by element, a 512 x 512 float A took 2.5x the time of copying the same B into
// panels on one AVX-512 core (64-78 us against 31 us, 5% of the GEMM).
template <class T>
void pack_a_rows(const T* const* src, int64_t kc, T* dst) {
    constexpr int MR = GemmTile<T>::MR, L = Simd<T>::lanes;
    int64_t k = 0;
    if constexpr (2 * MR == L)
        for (; k + 2 * L <= kc; k += 2 * L) pack_a_columns_twice<T>(src, k, dst);
    for (; k + L <= kc; k += L) pack_a_columns<T>(src, k, dst);
    for (; k < kc; ++k)
        for (int i = 0; i < MR; ++i) dst[k * MR + i] = src[i][k];
}

template <class T>
struct InMatrixA {
    const T* base;
    int64_t row_stride;
    int64_t k_inner, k_outer_stride;

    static InMatrixA plain(const T* a, int64_t lda, int64_t K) {
        return InMatrixA{a, lda, std::max<int64_t>(K, 1), 0};
    }

    // dst[k * MR + i] = A[i0 + i, k0 + k] for i < rows, 0 for rows <= i < MR.
    void pack_panel(int64_t i0, int64_t rows, int64_t k0, int64_t kc, T* dst) const {
        constexpr int MR = GemmTile<T>::MR;
        if (rows == MR) {  // a full panel: each run of contiguous columns transposed in registers
            int64_t inner = k0 % k_inner, outer = k0 / k_inner;
            for (int64_t k = 0; k < kc;) {
                const int64_t run = std::min(kc - k, k_inner - inner);
                const T* src[MR];
                for (int64_t i = 0; i < MR; ++i) src[i] = base + (i0 + i) * row_stride + outer * k_outer_stride + inner;
                pack_a_rows<T>(src, run, dst + k * MR);
                k += run;
                inner = 0;
                ++outer;
            }
            return;
        }
        for (int64_t i = 0; i < MR; ++i) {
            if (i >= rows) {
                for (int64_t k = 0; k < kc; ++k) dst[k * MR + i] = T(0);
                continue;
            }
            const T* row = base + (i0 + i) * row_stride;
            int64_t inner = k0 % k_inner, outer = k0 / k_inner;
            for (int64_t k = 0; k < kc;) {
                const int64_t run = std::min(kc - k, k_inner - inner);
                const T* src = row + outer * k_outer_stride + inner;
                for (int64_t t = 0; t < run; ++t) dst[(k + t) * MR + i] = src[t];
                k += run;
                inner = 0;
                ++outer;
            }
        }
    }
};

// B may have two-level columns too: column j lies at (j / j_inner) * j_outer_stride + j % j_inner
// (the (image, pixel) columns of an NCHW tensor seen as channels x pixels).
template <class T>
struct InMatrixB {
    const T* base;
    int64_t row_stride;
    int64_t j_inner, j_outer_stride;
    const int64_t* row_offsets = nullptr;  // row k at base + row_offsets[k] instead of k * row_stride

    static InMatrixB plain(const T* b, int64_t ldb, int64_t N) {
        return InMatrixB{b, ldb, std::max<int64_t>(N, 1), 0};
    }

    // A full panel whose columns are one run can be read where it lies instead of packed: the
    // micro-kernel loads row k from base + offset[k] + the run's start. Only with row offsets:
    // the phase grid of a convolution, whose rows overlap, so the panel's rows are few cache
    // lines; and a dense product of few rows (dense/matmul.h), where packing is most of the
    // cost. Plain rows a large power of two apart compete for the same L1 sets, which a product
    // of many rows measured (1024^3: 0.96x).
    // Returns false when the panel must be packed.
    bool rows_in_place(int64_t k0, int64_t j0, int64_t cols, OffsetRows<T>& rows) const {
        if (row_offsets == nullptr || cols != gemm_nr<T>() || j0 % j_inner + cols > j_inner) return false;
        rows = OffsetRows<T>{base + (j0 / j_inner) * j_outer_stride + j0 % j_inner, row_offsets + k0};
        return true;
    }

    // dst[k * NR + j] = B[k0 + k, j0 + j] for j < cols, 0 for cols <= j < NR.
    void pack_panel(int64_t k0, int64_t kc, int64_t j0, int64_t cols, T* dst) const {
        constexpr int NR = gemm_nr<T>();
        // The panel's columns as runs that are contiguous in memory (at most NR of them).
        int64_t run_offset[NR], run_length[NR], runs = 0;
        for (int64_t j = 0, inner = j0 % j_inner, outer = j0 / j_inner; j < cols; ++runs) {
            run_offset[runs] = outer * j_outer_stride + inner;
            run_length[runs] = std::min(cols - j, j_inner - inner);
            j += run_length[runs];
            inner = 0;
            ++outer;
        }
        using V = Simd<T>;
        for (int64_t k = 0; k < kc; ++k) {
            const T* row = base + (row_offsets ? row_offsets[k0 + k] : (k0 + k) * row_stride);
            T* d = dst + k * NR;
            if (runs == 1 && cols == NR) {  // the common case: one full row of the panel, in registers
                const T* src = row + run_offset[0];
#pragma GCC unroll 8
                for (int v = 0; v < GemmTile<T>::NV; ++v) V::store(d + v * V::lanes, V::load(src + v * V::lanes));
                continue;
            }
            // The last, partial panel: masked loads, zeros past its columns (a copy was a call
            // to memmove per row: 7% of a 35 x 128 x 3200 product).
            if (runs == 1) {
                const T* src = row + run_offset[0];
#pragma GCC unroll 8
                for (int v = 0; v < GemmTile<T>::NV; ++v) {
                    const int valid = int(std::clamp<int64_t>(cols - v * V::lanes, 0, V::lanes));
                    V::store(d + v * V::lanes, load_first<T>(src + v * V::lanes, valid));
                }
                continue;
            }
            for (int64_t r = 0; r < runs; ++r) {
                std::copy(row + run_offset[r], row + run_offset[r] + run_length[r], d);
                d += run_length[r];
            }
            for (int64_t j = cols; j < NR; ++j) dst[k * NR + j] = T(0);
        }
    }
};

// A packed into MR-row panels once per call, for an A (the weights of a convolution) that every
// column block and every thread would otherwise pack again. Panel p holds rows p*MR.. as
// [k][MR] over the whole reduction, so any reduction block of it is one contiguous copy.
// Row blocks must start at multiples of MR (gemm_parallel's always do).
// Elements of A from which PrepackedA packs on the whole team (256 KiB of float32, a few tens
// of microseconds on one core).
constexpr int64_t kParallelPrepack = int64_t(1) << 16;

template <class T>
struct PrepackedA {
    Scratch<T> data;
    int64_t K;

    template <class ASrc>
    PrepackedA(int64_t M, int64_t K_, const ASrc& A) : K(std::max<int64_t>(K_, 1)) {
        constexpr int MR = GemmTile<T>::MR;
        const int64_t panels = (M + MR - 1) / MR;
        data = scratch<T>(panels * MR * K);
        FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
        // A copy of a small A takes less time than waking the pool for it.
        parallel_for(panels, threads_if(panels * MR * K >= kParallelPrepack), [&](int64_t p, int) {
            A.pack_panel(p * MR, std::min<int64_t>(MR, M - p * MR), 0, K_, data.get() + p * MR * K);
        });
    }

    void pack_panel(int64_t i0, int64_t, int64_t k0, int64_t kc, T* dst) const {
        constexpr int MR = GemmTile<T>::MR;
        const T* src = data.get() + i0 * K + k0 * MR;  // i0 is a multiple of MR
        std::copy(src, src + kc * MR, dst);
    }
};

// A whose columns are contiguous (A given column-major: A[i, k] = base[k * col_stride + i]), e.g.
// the transpose of a row-major matrix (the gate gradients of an LSTM's weight gradient).
template <class T>
struct InMatrixAT {
    const T* base;
    int64_t col_stride;

    // dst[k * MR + i] = A[i0 + i, k0 + k] for i < rows, 0 for rows <= i < MR: MR contiguous
    // elements per k, moved by masked vectors (as a loop, g++ made each k a call to memmove).
    void pack_panel(int64_t i0, int64_t rows, int64_t k0, int64_t kc, T* dst) const {
        constexpr int MR = GemmTile<T>::MR, L = Simd<T>::lanes;
        for (int64_t k = 0; k < kc; ++k) {
            const T* src = base + (k0 + k) * col_stride + i0;
            T* d = dst + k * MR;
#pragma GCC unroll 4
            for (int i = 0; i < MR; i += L) {
                const int n = std::min(L, MR - i), valid = int(std::clamp<int64_t>(rows - i, 0, n));
                store_first<T>(d + i, load_first<T>(src + i, valid), n);
            }
        }
    }
};

// B given row by row: row(k) points at B[k, 0..N), or is nullptr for a row of zeros (e.g. the
// rows of a weight matrix in some permuted order, with padding rows).
template <class T, class RowFn>
struct RowsB {
    RowFn row;

    // dst[k * NR + j] = B[k0 + k, j0 + j] for j < cols, 0 for cols <= j < NR.
    void pack_panel(int64_t k0, int64_t kc, int64_t j0, int64_t cols, T* dst) const {
        constexpr int NR = gemm_nr<T>();
        for (int64_t k = 0; k < kc; ++k) {
            const T* src = row(k0 + k);
            T* d = dst + k * NR;
            if (src) std::copy(src + j0, src + j0 + cols, d);
            else std::fill(d, d + cols, T(0));
            std::fill(d + cols, d + NR, T(0));
        }
    }
};
template <class T, class RowFn>
RowsB<T, RowFn> rows_b(RowFn row) { return RowsB<T, RowFn>{row}; }

// B given column by column: col(j) points at B[0..K), j], or is nullptr for a column of zeros
// (B = W^T for a row-major weight W, as in x . W^T). Packing is a transpose: lanes x lanes
// blocks go through registers (transpose_block), the last kc % lanes rows too, from masked
// loads (element by element they were most of a short reduction's product: 64 x 8 x 2048).
template <class T, class ColFn>
struct ColumnsB {
    ColFn col;

    void pack_panel(int64_t k0, int64_t kc, int64_t j0, int64_t cols, T* dst) const {
        using V = Simd<T>;
        constexpr int NR = gemm_nr<T>(), L = V::lanes;
        for (int64_t v = 0; v < GemmTile<T>::NV; ++v) {
            const T* src[L];
            for (int64_t r = 0; r < L; ++r) {
                const int64_t j = v * L + r;
                src[r] = j < cols ? col(j0 + j) : nullptr;
                if (src[r]) src[r] += k0;
            }
            int64_t k = 0;
            for (; k + L <= kc; k += L) {
                typename V::reg block[L];
                for (int64_t r = 0; r < L; ++r) block[r] = src[r] ? V::load(src[r] + k) : V::zero();
                transpose_block<T>(block);
                for (int64_t r = 0; r < L; ++r) V::store(dst + (k + r) * NR + v * L, block[r]);
            }
            if (k < kc) {
                const int rest = int(kc - k);
                typename V::reg block[L];
                for (int64_t r = 0; r < L; ++r) block[r] = src[r] ? load_first<T>(src[r] + k, rest) : V::zero();
                transpose_block<T>(block);
                for (int64_t r = 0; r < rest; ++r) V::store(dst + (k + r) * NR + v * L, block[r]);
            }
        }
    }
};
template <class T, class ColFn>
ColumnsB<T, ColFn> columns_b(ColFn col) { return ColumnsB<T, ColFn>{col}; }

// B packed into NR-column panels once, for a B that many GEMMs reuse (an LSTM's recurrent
// weights, once per time step). Panel p holds columns p*NR.. as [k][NR] over the whole
// reduction, the layout gemm_block packs into, so gemm_block reads its blocks in place (see
// panel()) instead of copying them. The panels are packed on the pool's threads when there are
// enough of them (a single LSTM cell, 64 x 384 x 1024: packing its weights on one thread took
// longer than the product on two); from inside a pool task (threads that share a GEMM by
// columns, each prepacking its own) serially.
template <class T>
struct PrepackedB {
    Scratch<T> data;
    int64_t K;

    // Elements from which packing is split between threads: ~10 us of copying, the cost of
    // waking a worker.
    static constexpr int64_t kParallelElements = int64_t(1) << 16;

    template <class BSrc>
    PrepackedB(int64_t K_, int64_t N, const BSrc& B) : K(std::max<int64_t>(K_, 1)) {
        constexpr int NR = gemm_nr<T>();
        const int64_t panels = (N + NR - 1) / NR;
        data = scratch<T>(panels * NR * K);
        parallel_for(panels, threads_if(panels > 1 && panels * NR * K >= kParallelElements), [&](int64_t p, int) {
            B.pack_panel(0, K_, p * NR, std::min<int64_t>(NR, N - p * NR), data.get() + p * NR * K);
        });
    }

    // The packed kc x NR block at reduction row k0 of the panel starting at column j0 (a
    // multiple of NR: gemm_block's column blocks always are).
    const T* panel(int64_t k0, int64_t j0) const { return data.get() + j0 * K + k0 * gemm_nr<T>(); }

    void pack_panel(int64_t k0, int64_t kc, int64_t j0, int64_t, T* dst) const {
        const T* src = panel(k0, j0);
        std::copy(src, src + kc * gemm_nr<T>(), dst);
    }
};

// Whether a B source holds its panels packed already (has panel(k0, j0)).
template <class BSrc, class = void>
struct PanelsInPlace : std::false_type {};
template <class BSrc>
struct PanelsInPlace<BSrc, std::void_t<decltype(std::declval<const BSrc&>().panel(int64_t(0), int64_t(0)))>>
    : std::true_type {};

// Whether an A source holds its panels packed already (has a_panel(i0, k0): rows i0.. from
// reduction index k0 on, as [k][MR], zero past the last row), which gemm_block then reads in
// place instead of copying.
template <class ASrc, class = void>
struct APanelsInPlace : std::false_type {};
template <class ASrc>
struct APanelsInPlace<ASrc, std::void_t<decltype(std::declval<const ASrc&>().a_panel(int64_t(0), int64_t(0)))>>
    : std::true_type {};

// The packed B block gemm_block multiplies: B's own panel when prepacked, else its copy in buf.
template <class T, class BSrc>
const T* b_block(const BSrc& B, int64_t k0, int64_t j0, const T* copied) {
    if constexpr (PanelsInPlace<BSrc>::value) return B.panel(k0, j0);
    else return copied;
}

// Whether a B source can hand out panels to read in place (InMatrixB::rows_in_place).
template <class BSrc, class = void>
struct HasRowsInPlace : std::false_type {};
template <class BSrc>
struct HasRowsInPlace<BSrc, std::void_t<decltype(&BSrc::rows_in_place)>> : std::true_type {};

// A row-major A (M, K) that the micro-kernel reads where it lies, with no packing: for a
// product of a few column panels (dense/matmul.h, kMatmulAInPlacePanels), where packing would
// copy (transpose) all of A for as few passes over it (a dense layer's x W^T with few outputs:
// 3200 x 128 -> 35).
template <class T>
struct RowMajorA {
    const T* base;
    int64_t lda;
    // Rows i0.. (rows of them; the panel's rows past them repeat the last, and are not stored)
    // from column k0.
    RowsInPlaceCols<T> cols(int64_t i0, int64_t rows, int64_t k0) const {
        RowsInPlaceCols<T> a{base + i0 * lda + k0, {}};
        for (int i = 0; i < RowsInPlaceCols<T>::rows; ++i) a.i_offsets[i] = std::min<int64_t>(i, rows - 1) * lda;
        return a;
    }
};

// Whether an A source is read in place by rows (has cols(i0, rows, k0), see RowMajorA).
template <class ASrc, class = void>
struct AColsInPlace : std::false_type {};
template <class ASrc>
struct AColsInPlace<ASrc, std::void_t<decltype(std::declval<const ASrc&>().cols(int64_t(0), int64_t(0), int64_t(0)))>>
    : std::true_type {};

// Whether a B source's panels in place may be narrower than NR (has panel_width(): the
// distance between a panel's rows).
template <class BSrc, class = void>
struct HasPanelWidth : std::false_type {};
template <class BSrc>
struct HasPanelWidth<BSrc, std::void_t<decltype(&BSrc::panel_width)>> : std::true_type {};

// One B panel of gemm_block: read in place when the source allows it, else packed.
template <class T, class BSrc>
struct BPanel {
    bool in_place = false;
    OffsetRows<T> rows{};
    int64_t width = gemm_nr<T>();  // of a packed panel's rows
    BPanel(const BSrc& B, int64_t k0, int64_t j0, int64_t cols) {
        if constexpr (HasRowsInPlace<BSrc>::value) in_place = B.rows_in_place(k0, j0, cols, rows);
        if constexpr (HasPanelWidth<BSrc>::value) width = B.panel_width();
    }
    // c = the A panel (packed, or ACols read in place) times this panel's first nv vectors
    // (see micro_kernel).
    template <class ACols>
    void multiply(int nv, int64_t kc, const ACols& a, const T* packed, T* c, int64_t ldc, Store mode,
                  const T* bias) const {
        if constexpr (HasRowsInPlace<BSrc>::value)
            if (in_place) return micro_kernel_cols<T>(nv, kc, a, rows, c, ldc, mode, bias);
        if constexpr (HasPanelWidth<BSrc>::value)
            return micro_kernel_cols<T>(nv, kc, a, StridedRows<T>{packed, width}, c, ldc, mode, bias);
        micro_kernel_cols<T>(nv, kc, a, PackedRows<T>{packed}, c, ldc, mode, bias);
    }
    void multiply(int nv, int64_t kc, const T* a, const T* packed, T* c, int64_t ldc, Store mode,
                  const T* bias) const {
        multiply(nv, kc, PackedCols<T>{a}, packed, c, ldc, mode, bias);
    }
};

}  // namespace PYCONV_ISA
}  // namespace pyconv
