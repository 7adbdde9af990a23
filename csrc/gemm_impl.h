// Packed GEMM, BLIS/GotoBLAS structure. Included inside namespace pyconv::<isa> by
// kernels_isa.inc, so each ISA gets its own micro-kernel (PYCONV_ISA_LEVEL picks it).
//
//   C[i, j] (+)= sum_k A[i, k] * B[k, j]        i < M, j < N, k < K
//
// The loops, outermost first (one thread's share of C):
//   jc: NC columns of C     pc: KC of the reduction -> pack B[pc, jc] into NR-column panels
//   ic: MC rows of C        -> pack A[ic, pc] into MR-row panels
//   jr, ir: one MR x NR tile of C, kept in vector registers by the micro-kernel.
// Packed panels are contiguous and zero-padded to full MR / NR, so the micro-kernel never
// branches on edges; it streams kc columns of an A panel and kc rows of a B panel.
//
// A, B and C are not plain matrices here: they are "sources" and a "destination" that know how
// to pack themselves (A: pack_panel(i0, rows, k0, kc, dst); B: pack_panel(k0, kc, j0, cols, dst))
// and where C's elements live (tile_ptr / scatter). Convolution uses this to run implicit
// im2col inside the B packing, and to write C straight into NCHW tensors.
//
// Also here: PrepackedA (an A packed once per call and reused by every block and thread),
// PrepackedB (a B packed once and read in place by many GEMMs: an LSTM's recurrent weights,
// one skinny batch x 4H x H product per time step), sources for a transposed A (InMatrixAT) and
// for a B given by rows or by columns in any order (RowsB, ColumnsB: the LSTM's gate-ordered
// weights), and a dot-product form of the GEMM (C = A B^T with both operands contiguous along
// the reduction, for weight gradients) with its own micro-kernel. A last column panel that is
// only partly used runs the micro-kernel on just the vectors it needs (N = 128 or 256 with
// NR = 48), so skinny products waste no work on padding and store their tiles in place.

// ---------------------------------------------------------------------------------------------
// Register tiles per ISA (the SIMD vocabulary, Simd<T>, is in simd_impl.h).
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

// ---------------------------------------------------------------------------------------------
// Scratch memory: 64-byte aligned, allocated once per call (per thread), freed on scope exit.

struct AlignedFree {
    void operator()(void* p) const { std::free(p); }
};
template <class T>
using Scratch = std::unique_ptr<T[], AlignedFree>;

template <class T>
Scratch<T> scratch(int64_t count) {
    const size_t bytes = (static_cast<size_t>(std::max<int64_t>(count, 1)) * sizeof(T) + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, bytes);
    if (p == nullptr) throw std::bad_alloc();
    return Scratch<T>(static_cast<T*>(p));
}

// ---------------------------------------------------------------------------------------------
// The micro-kernel: c[MR x NV*L] (row stride ldc) = acc, acc + c, or acc + bias[row], where
// acc = a_panel (MR x kc, packed k-major) times the first NV vectors of b_panel (kc x NR, packed
// row-major). NV < GemmTile::NV serves a last column panel that is only partly used (N = 128
// with NR = 48): no work on its padding, and its tile can still be stored in place.

enum class Store { overwrite, accumulate };

// Where row k of a B panel starts: a packed panel steps by NR; a panel read in place (see
// InMatrixB::rows_in_place) follows its row offsets.
template <class T, int NR = gemm_nr<T>()>
struct PackedRows {
    const T* b;
    const T* operator()(int64_t k) const { return b + k * NR; }
};
template <class T>
struct OffsetRows {
    const T* base;
    const int64_t* offsets;
    const T* operator()(int64_t k) const { return base + offsets[k]; }
};

// Where element (i, k) of an A panel is: a packed panel steps by MR with its rows adjacent; an
// A read in place sits at base + k_offsets[k] + i_offsets[i] (the channel-vectorised
// convolutions of conv_impl.h: a tap's offset plus a pixel's, in either role).
template <class T>
struct PackedCols {
    static constexpr int rows = GemmTile<T>::MR;
    const T* a;
    const T* col(int64_t k) const { return a + k * rows; }
    int64_t row(int i) const { return i; }
};
template <class T, int MR>
struct OffsetCols {
    static constexpr int rows = MR;
    const T* base;
    const int64_t* k_offsets;
    int64_t i_offsets[MR];
    const T* col(int64_t k) const { return base + k_offsets[k]; }
    int64_t row(int i) const { return i_offsets[i]; }
};

template <class T, int NV = GemmTile<T>::NV, class ACols, class BRows>
inline void micro_kernel(int64_t kc, const ACols& a, const BRows& b, T* c,
                         int64_t ldc, Store mode, const T* bias) {
    using V = Simd<T>;
    constexpr int MR = ACols::rows, L = V::lanes;
    typename V::reg acc[MR][NV];
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) acc[i][v] = V::zero();
    // The C tile is read after the k loop: start fetching it now (an LSTM step adds to the
    // input projection of its gates, written long before and no longer in cache).
    if (mode == Store::accumulate)
#pragma GCC unroll 8
        for (int i = 0; i < MR; ++i)
            for (int64_t byte = 0; byte < int64_t(NV * L * sizeof(T)); byte += 64)
                __builtin_prefetch(reinterpret_cast<const char*>(c + i * ldc) + byte);
    for (int64_t k = 0; k < kc; ++k) {
        const T* bk = b(k);
        typename V::reg bv[NV];
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) bv[v] = V::load(bk + v * L);
#pragma GCC unroll 8
        for (int i = 0; i < MR; ++i) {
            const typename V::reg ai = V::broadcast(a.col(k) + a.row(i));
#pragma GCC unroll 8
            for (int v = 0; v < NV; ++v) acc[i][v] = V::fma(ai, bv[v], acc[i][v]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
        T* row = c + i * ldc;
#pragma GCC unroll 8
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


// ---------------------------------------------------------------------------------------------
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
    // micro-kernel loads row k from base + offset[k] + the run's start. Only with row offsets
    // (the phase grid of a convolution, whose rows overlap, so the panel's rows are few cache
    // lines); plain rows a large power of two apart would compete for the same L1 sets.
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
template <class T>
struct PrepackedA {
    Scratch<T> data;
    int64_t K;

    template <class ASrc>
    PrepackedA(int64_t M, int64_t K_, const ASrc& A) : K(std::max<int64_t>(K_, 1)) {
        constexpr int MR = GemmTile<T>::MR;
        const int64_t panels = (M + MR - 1) / MR;
        data = scratch<T>(panels * MR * K);
#pragma omp parallel for num_threads(num_threads()) schedule(static)
        for (int64_t p = 0; p < panels; ++p)
            A.pack_panel(p * MR, std::min<int64_t>(MR, M - p * MR), 0, K_, data.get() + p * MR * K);
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

    // dst[k * MR + i] = A[i0 + i, k0 + k] for i < rows, 0 for rows <= i < MR.
    void pack_panel(int64_t i0, int64_t rows, int64_t k0, int64_t kc, T* dst) const {
        constexpr int MR = GemmTile<T>::MR;
        for (int64_t k = 0; k < kc; ++k) {
            const T* src = base + (k0 + k) * col_stride + i0;
            T* d = dst + k * MR;
            if (rows == MR) {
#pragma GCC unroll 8
                for (int i = 0; i < MR; ++i) d[i] = src[i];
            } else {
                for (int64_t i = 0; i < MR; ++i) d[i] = i < rows ? src[i] : T(0);
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
// blocks go through registers (transpose_block), the last kc % lanes rows element by element.
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
            for (; k < kc; ++k)
                for (int64_t r = 0; r < L; ++r) dst[k * NR + v * L + r] = src[r] ? src[r][k] : T(0);
        }
    }
};
template <class T, class ColFn>
ColumnsB<T, ColFn> columns_b(ColFn col) { return ColumnsB<T, ColFn>{col}; }

// B packed into NR-column panels once, for a B that many GEMMs reuse (an LSTM's recurrent
// weights, once per time step). Panel p holds columns p*NR.. as [k][NR] over the whole
// reduction, the layout gemm_block packs into, so gemm_block reads its blocks in place (see
// panel()) instead of copying them. Packs serially: threads that share a GEMM by columns each
// prepack their own columns.
template <class T>
struct PrepackedB {
    Scratch<T> data;
    int64_t K;

    template <class BSrc>
    PrepackedB(int64_t K_, int64_t N, const BSrc& B) : K(std::max<int64_t>(K_, 1)) {
        constexpr int NR = gemm_nr<T>();
        const int64_t panels = (N + NR - 1) / NR;
        data = scratch<T>(panels * NR * K);
        for (int64_t p = 0; p < panels; ++p)
            B.pack_panel(0, K_, p * NR, std::min<int64_t>(NR, N - p * NR), data.get() + p * NR * K);
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

// One B panel of gemm_block: read in place when the source allows it, else packed.
template <class T, class BSrc>
struct BPanel {
    bool in_place = false;
    OffsetRows<T> rows{};
    BPanel(const BSrc& B, int64_t k0, int64_t j0, int64_t cols) {
        if constexpr (HasRowsInPlace<BSrc>::value) in_place = B.rows_in_place(k0, j0, cols, rows);
    }
    // c = a_panel times this panel's first nv vectors (see micro_kernel).
    void multiply(int nv, int64_t kc, const T* a, const T* packed, T* c, int64_t ldc, Store mode,
                  const T* bias) const {
        if constexpr (HasRowsInPlace<BSrc>::value)
            if (in_place) return micro_kernel_cols<T>(nv, kc, PackedCols<T>{a}, rows, c, ldc, mode, bias);
        micro_kernel_cols<T>(nv, kc, PackedCols<T>{a}, PackedRows<T>{packed}, c, ldc, mode, bias);
    }
};

// ---------------------------------------------------------------------------------------------
// The driver.

// Packed-panel buffers of one thread, sized for the largest blocks. Without pack_b (every B is a
// PrepackedB) there is no B buffer: it is large, and a fresh one costs page faults on every call.
template <class T>
struct GemmBuffers {
    Scratch<T> a, b;
    explicit GemmBuffers(bool pack_b = true)
        : a(scratch<T>(GemmTile<T>::MC * GemmTile<T>::KC)),
          b(scratch<T>(pack_b ? GemmTile<T>::KC * (GemmTile<T>::NC + gemm_nr<T>()) : 1)) {}
};

// One thread's part: rows [m0, m1) x columns [n0, n1) of C, reduction [k_begin, k_end).
// The first reduction block overwrites C (adding the bias) unless `mode` is accumulate.
// CDst is an OutMatrix or anything with the same members (tile_ptr, scatter, row_stride, bias).
template <class T, class ASrc, class BSrc, class CDst>
void gemm_block(int64_t m0, int64_t m1, int64_t n0, int64_t n1, int64_t k_begin, int64_t k_end,
                const ASrc& A, const BSrc& B, const CDst& C, Store mode,
                GemmBuffers<T>& buf) {
    constexpr int MR = GemmTile<T>::MR, NR = gemm_nr<T>(), L = Simd<T>::lanes;
    constexpr int64_t KC = GemmTile<T>::KC, MC = GemmTile<T>::MC, NC = GemmTile<T>::NC;
    constexpr bool kPrepackedB = PanelsInPlace<BSrc>::value;
    alignas(64) T edge[MR * NR];  // tiles that cannot be stored in place go through here
    // Equal reduction blocks of at most KC (288 = 144 + 144, not 256 + 32: a short last block
    // would pay the tile loads and stores for little arithmetic).
    const int64_t k_blocks = std::max<int64_t>(1, (k_end - k_begin + KC - 1) / KC);
    const int64_t kc_step = std::max<int64_t>(1, (k_end - k_begin + k_blocks - 1) / k_blocks);
    // NC bounds the B block that is packed per column block; a prepacked B is not copied, so
    // its columns are one block and A is packed once per reduction block.
    const int64_t nc_max = kPrepackedB ? std::max<int64_t>(1, n1 - n0) : NC;
    for (int64_t jc = n0; jc < n1; jc += nc_max) {
        const int64_t nc = std::min(nc_max, n1 - jc);
        // An empty reduction still writes C once (zeros or bias): run pc once with kc = 0.
        for (int64_t pc = k_begin; pc == k_begin || pc < k_end; pc += kc_step) {
            const int64_t kc = std::min(kc_step, k_end - pc);
            const Store store = (pc == k_begin) ? mode : Store::accumulate;
            if constexpr (!kPrepackedB)
                for (int64_t jr = 0; jr < nc; jr += NR) {
                    const int64_t nr = std::min<int64_t>(NR, nc - jr);
                    if (!BPanel<T, BSrc>(B, pc, jc + jr, nr).in_place)
                        B.pack_panel(pc, kc, jc + jr, nr, buf.b.get() + jr * kc);
                }
            for (int64_t ic = m0; ic < m1; ic += MC) {
                const int64_t mc = std::min(MC, m1 - ic);
                for (int64_t ir = 0; ir < mc; ir += MR)
                    A.pack_panel(ic + ir, std::min<int64_t>(MR, mc - ir), pc, kc, buf.a.get() + ir * kc);
                for (int64_t jr = 0; jr < nc; jr += NR) {
                    const int64_t nr = std::min<int64_t>(NR, nc - jr);
                    const int nv = static_cast<int>((nr + L - 1) / L);  // vectors of the panel in use
                    const T* bp = b_block<T>(B, pc, jc + jr, buf.b.get() + jr * kc);
                    const BPanel<T, BSrc> panel(B, pc, jc + jr, nr);
                    for (int64_t ir = 0; ir < mc; ir += MR) {
                        const int64_t mr = std::min<int64_t>(MR, mc - ir);
                        const T* ap = buf.a.get() + ir * kc;
                        const T* bias = C.bias ? C.bias + ic + ir : nullptr;
                        T* c = (mr == MR && nr == nv * L) ? C.tile_ptr(ic + ir, jc + jr, nr) : nullptr;
                        if (c != nullptr) {
                            panel.multiply(nv, kc, ap, bp, c, C.row_stride, store, bias);
                        } else {
                            panel.multiply(nv, kc, ap, bp, edge, NR, Store::overwrite, nullptr);
                            C.scatter(ic + ir, jc + jr, mr, nr, edge, NR, store);
                        }
                    }
                }
            }
        }
    }
}

// How to split an M x N output among `threads`: a grid of tm x tn blocks, preferring to split
// columns (each thread then packs only its own B panels), in whole MR / NR panels.
struct ThreadGrid {
    int tm, tn;
};

template <class T>
ThreadGrid choose_grid(int64_t M, int64_t N, int threads) {
    const int64_t m_panels = (M + gemm_mr<T>() - 1) / gemm_mr<T>();
    const int64_t n_panels = (N + gemm_nr<T>() - 1) / gemm_nr<T>();
    ThreadGrid best{1, 1};
    double best_cost = 1e300;
    for (int tm = 1; tm <= threads; ++tm) {
        if (threads % tm) continue;
        const int tn = threads / tm;
        if (tm > m_panels || tn > n_panels) continue;
        // Work of the busiest thread, in panels, plus a small price for repacking B per row block.
        const double cost = double((m_panels + tm - 1) / tm) * double((n_panels + tn - 1) / tn) *
                            (1.0 + 0.05 * (tm - 1));
        if (cost < best_cost) best_cost = cost, best = ThreadGrid{tm, tn};
    }
    return best;
}

// [begin, end) of part `p` of `parts` equal shares of `panels` panels of size `unit`, clipped to n.
inline void split_range(int64_t n, int64_t unit, int p, int parts, int64_t& begin, int64_t& end) {
    const int64_t panels = (n + unit - 1) / unit;
    begin = std::min(n, panels * p / parts * unit);
    end = std::min(n, panels * (p + 1) / parts * unit);
}

// C = A B (+ bias per row), M x N x K, on num_threads() threads. Must be called outside any
// parallel region.
template <class T, class ASrc, class BSrc>
void gemm_parallel(int64_t M, int64_t N, int64_t K, const ASrc& A, const BSrc& B,
                   const OutMatrix<T>& C, Store mode = Store::overwrite) {
    if (M <= 0 || N <= 0) return;
    const int64_t flops = M * N * std::max<int64_t>(K, 1);
    const int threads = flops < 32768 ? 1 : num_threads();
    const ThreadGrid grid = choose_grid<T>(M, N, threads);
    // Allocated before the parallel region: an exception must not escape an OpenMP thread.
    std::vector<GemmBuffers<T>> bufs(grid.tm * grid.tn);
#pragma omp parallel num_threads(grid.tm * grid.tn)
    {
        // A loop, not one part per thread: OpenMP may start fewer threads than asked for.
        const int parts = grid.tm * grid.tn;
        for (int t = omp_get_thread_num(); t < parts; t += omp_get_num_threads()) {
            int64_t m0, m1, n0, n1;
            split_range(M, gemm_mr<T>(), t / grid.tn, grid.tm, m0, m1);
            split_range(N, gemm_nr<T>(), t % grid.tn, grid.tn, n0, n1);
            if (m0 < m1 && n0 < n1)
                gemm_block<T>(m0, m1, n0, n1, 0, K, A, B, C, mode, bufs[omp_get_thread_num()]);
        }
    }
}

// The plain row-major GEMM behind the `gemm` binding: C (M x N) = A (M x K) B (K x N) [+ C].
template <class T>
void gemm(int64_t M, int64_t N, int64_t K, const T* a, const T* b, T* c, bool accumulate) {
    gemm_parallel<T>(M, N, K, InMatrixA<T>::plain(a, K, K), InMatrixB<T>::plain(b, N, N),
                     OutMatrix<T>::plain(c, N, N),
                     accumulate ? Store::accumulate : Store::overwrite);
}

// C (plain M x N, row stride N) = A B for a long reduction and a small C (weight gradients):
// each thread reduces its share of K into its own copy of C, then the copies are summed.
// Falls back to gemm_parallel when C is large enough to split by itself.
template <class T, class ASrc, class BSrc>
void gemm_parallel_split_k(int64_t M, int64_t N, int64_t K, const ASrc& A, const BSrc& B, T* c) {
    const int threads = num_threads();
    if (threads == 1 || K < 4 * std::max(M, N) || K < 2 * GemmTile<T>::KC * threads) {
        gemm_parallel<T>(M, N, K, A, B, OutMatrix<T>::plain(c, N, N));
        return;
    }
    std::vector<GemmBuffers<T>> bufs(threads);
    Scratch<T> partial = scratch<T>((threads - 1) * M * N);
    const int64_t size = M * N;
#pragma omp parallel num_threads(threads)
    {
        // Split by the team OpenMP actually started, which may be smaller than asked for.
        const int t = omp_get_thread_num(), team = omp_get_num_threads();
        const int64_t k0 = K * t / team, k1 = K * (t + 1) / team;
        T* out = t == 0 ? c : partial.get() + (t - 1) * size;
        gemm_block<T>(0, M, 0, N, k0, k1, A, B, OutMatrix<T>::plain(out, N, N), Store::overwrite,
                      bufs[t]);
#pragma omp barrier
#pragma omp for schedule(static)
        for (int64_t e = 0; e < size; ++e)
            for (int p = 0; p + 1 < team; ++p) c[e] += partial[p * size + e];
    }
}

// ---------------------------------------------------------------------------------------------
// Dot-product form, for a long reduction that is contiguous in memory in both operands (the
// weight gradient: output gradient and input both run along pixels). Panels are packed
// k-contiguous (dst[row * kcp + k], kcp = kc rounded up to whole vectors), so packing is a
// plain copy; the micro-kernel keeps DotTile::MR x NR vector accumulators and sums each one
// across lanes once per reduction block.
//
//   C[i, j] (+)= sum_k A[i, k] * B[j, k]

template <class T>
constexpr int64_t dot_kc() { return 1024 * 4 / sizeof(T); }

template <class T>
inline void dot_micro_kernel(int64_t kcp, const T* __restrict a, const T* __restrict b, T* c,
                             int64_t ldc, int64_t mr, int64_t nr, Store mode) {
    using V = Simd<T>;
    constexpr int MR = DotTile<T>::MR, NR = DotTile<T>::NR, L = V::lanes;
    typename V::reg acc[MR][NR];
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
        for (int j = 0; j < NR; ++j) acc[i][j] = V::zero();
    for (int64_t k = 0; k < kcp; k += L) {
        typename V::reg bv[NR];
#pragma GCC unroll 8
        for (int j = 0; j < NR; ++j) bv[j] = V::load(b + j * kcp + k);
#pragma GCC unroll 8
        for (int i = 0; i < MR; ++i) {
            const typename V::reg av = V::load(a + i * kcp + k);
#pragma GCC unroll 8
            for (int j = 0; j < NR; ++j) acc[i][j] = V::fma(av, bv[j], acc[i][j]);
        }
    }
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
                    dot_micro_kernel<T>(kcp, buf.a.get() + ir * kcp, buf.b.get() + jr * kcp,
                                        c + ir * ldc + jc + jr, ldc, std::min<int64_t>(MR, M - ir),
                                        std::min<int64_t>(NR, nc - jr), mode);
        }
    }
}

// C (plain M x N) = A B^T with the reduction split across threads, partial results summed.
template <class T>
void gemm_dot_parallel(int64_t M, int64_t N, int64_t K, const PixelRows<T>& A,
                       const PixelRows<T>& B, T* c) {
    const int threads = static_cast<int>(std::min<int64_t>(num_threads(), std::max<int64_t>(1, K / 256)));
    std::vector<DotBuffers<T>> bufs;
    for (int t = 0; t < threads; ++t) bufs.emplace_back(M);
    Scratch<T> partial = scratch<T>((threads - 1) * M * N);
    const int64_t size = M * N;
#pragma omp parallel num_threads(threads)
    {
        const int t = omp_get_thread_num(), team = omp_get_num_threads();
        T* out = t == 0 ? c : partial.get() + (t - 1) * size;
        gemm_dot_block<T>(M, N, K * t / team, K * (t + 1) / team, A, B, out, N, bufs[t]);
#pragma omp barrier
#pragma omp for schedule(static)
        for (int64_t e = 0; e < size; ++e)
            for (int p = 0; p + 1 < team; ++p) c[e] += partial[p * size + e];
    }
}
