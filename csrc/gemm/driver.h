// The packed GEMM's driver, BLIS/GotoBLAS structure. Compiled once per ISA (see
// kernels_isa.inc), so each ISA gets its own micro-kernel and tiles (gemm/tile.h).
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
// The layers, one header each: gemm/tile.h (register tile per ISA), gemm/blocking.h (cache
// blocks chosen at run time from the CPU's caches),
// gemm/addressing.h (where the micro-kernel finds panel elements), gemm/micro_kernel.h,
// gemm/operands.h (the sources of A and B and the destination C), this driver,
// gemm/dot.h (the dot-product form) and gemm/chunked_reduction.h (a long reduction split
// between threads in chunks fixed by the shape).
//
// In gemm/operands.h: PrepackedA (an A packed once per call and reused by every block and
// thread), PrepackedB (a B packed once and read in place by many GEMMs: an LSTM's recurrent
// weights, one skinny batch x 4H x H product per time step), sources for a transposed A
// (InMatrixAT) and for a B given by rows or by columns in any order (RowsB, ColumnsB: the
// LSTM's gate-ordered weights). A last column panel that is only partly used runs the
// micro-kernel on just the vectors it needs (N = 128 or 256 with NR = 48), so skinny products
// waste no work on padding and store their tiles in place.
#pragma once

#include "common/prelude.h"
#include "common/denormals.h"
#include "common/scratch.h"
#include "gemm/chunked_reduction.h"
#include "gemm/tile.h"
#include "gemm/micro_kernel.h"
#include "gemm/operands.h"

namespace pyconv {
namespace PYCONV_ISA {

// Packed-panel buffers of one thread, sized for the cache blocks of this call, which gemm_block
// follows (read once here, so that a blocking changed meanwhile cannot overrun them). Without
// pack_b (every B is a PrepackedB) there is no B buffer: it is large, and a fresh one costs page
// faults on every call. Given the extents of the product (at most M x N x K), the buffers are
// no larger than its blocks: a small product then takes a small allocation, where a full
// block of B is megabytes. (Freeing a block that large also moves glibc's mmap threshold up to
// its size, after which the heap keeps every freed array below it: a step of many small
// products then grew the process by tens of MB.)
template <class T>
struct GemmBuffers {
    GemmBlocking blocks;
    Scratch<T> a, b;
    explicit GemmBuffers(bool pack_b = true)
        : GemmBuffers(INT64_MAX, INT64_MAX, INT64_MAX, pack_b) {}
    GemmBuffers(int64_t M, int64_t N, int64_t K, bool pack_b = true)
        : blocks(gemm_blocking<T>()),
          a(scratch<T>(panels_of(M, blocks.mc, gemm_mr<T>()) * kc_of(K))),
          b(scratch<T>(pack_b ? kc_of(K) * (panels_of(N, blocks.nc, gemm_nr<T>()) + gemm_nr<T>())
                              : 1)) {}

private:
    // min(n, block) rounded up to whole panels; block is a whole number of them.
    static int64_t panels_of(int64_t n, int64_t block, int64_t panel) {
        return n < block ? (std::max<int64_t>(n, 1) + panel - 1) / panel * panel : block;
    }
    int64_t kc_of(int64_t K) const { return std::min(std::max<int64_t>(K, 1), blocks.kc); }
};

// One thread's part: rows [m0, m1) x columns [n0, n1) of C, reduction [k_begin, k_end).
// The first reduction block overwrites C (adding the bias) unless `mode` is accumulate.
// CDst is an OutMatrix or anything with the same members (tile_ptr, scatter, row_stride, bias).
template <class T, class ASrc, class BSrc, class CDst>
void gemm_block(int64_t m0, int64_t m1, int64_t n0, int64_t n1, int64_t k_begin, int64_t k_end,
                const ASrc& A, const BSrc& B, const CDst& C, Store mode,
                GemmBuffers<T>& buf) {
    constexpr int MR = GemmTile<T>::MR, NR = gemm_nr<T>(), L = Simd<T>::lanes;
    const int64_t KC = buf.blocks.kc, MC = buf.blocks.mc, NC = buf.blocks.nc;
    constexpr bool kPrepackedB = PanelsInPlace<BSrc>::value, kPrepackedA = APanelsInPlace<ASrc>::value;
    constexpr bool kAInPlace = AColsInPlace<ASrc>::value;  // read by rows where it lies
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
                if constexpr (!kPrepackedA && !kAInPlace)
                    for (int64_t ir = 0; ir < mc; ir += MR)
                        A.pack_panel(ic + ir, std::min<int64_t>(MR, mc - ir), pc, kc, buf.a.get() + ir * kc);
                for (int64_t jr = 0; jr < nc; jr += NR) {
                    const int64_t nr = std::min<int64_t>(NR, nc - jr);
                    const int nv = static_cast<int>((nr + L - 1) / L);  // vectors of the panel in use
                    const T* bp = b_block<T>(B, pc, jc + jr, buf.b.get() + jr * kc);
                    const BPanel<T, BSrc> panel(B, pc, jc + jr, nr);
                    for (int64_t ir = 0; ir < mc; ir += MR) {
                        const int64_t mr = std::min<int64_t>(MR, mc - ir);
                        auto a_panel = [&] {
                            if constexpr (kAInPlace) return A.cols(ic + ir, mr, pc);
                            else if constexpr (kPrepackedA) return A.a_panel(ic + ir, pc);
                            else return static_cast<const T*>(buf.a.get() + ir * kc);
                        };
                        const T* bias = C.bias ? C.bias + ic + ir : nullptr;
                        T* c = (mr == MR && nr == nv * L) ? C.tile_ptr(ic + ir, jc + jr, nr) : nullptr;
                        if (c != nullptr) {
                            panel.multiply(nv, kc, a_panel(), bp, c, C.row_stride, store, bias);
                        } else {
                            panel.multiply(nv, kc, a_panel(), bp, edge, NR, Store::overwrite, nullptr);
                            C.scatter(ic + ir, jc + jr, mr, nr, edge, NR, store);
                        }
                    }
                }
            }
        }
    }
}

// The output C split into macro-tiles for the threads: tm row blocks x tn column blocks, in
// whole MR / NR panels. Every tile runs the whole reduction on one thread in the same blocks of
// KC, so each element of C is the same sum in the same order whichever thread takes its tile:
// the tiles (and how they are shared out) change the schedule, never the result.
struct TileGrid {
    int64_t tm, tn;
    int64_t count() const { return tm * tn; }
};

// A GEMM of fewer multiply-adds than this runs on the calling thread: below it, waking
// workers and waiting for the slowest costs more than the second core gives back. On the
// pool a GEMM alone in a loop gains from 2^20, but in the model steps a threshold of 2^20 lost
// (LeNet-5's small GEMMs); 2^23 puts a char-LSTM's output layer (3200 x 35 x 128, 14M: 477 ->
// 245 us forward) on both threads and left LeNet-5 unchanged (RESULTS).
constexpr int64_t kGemmParallelMacs = int64_t(1) << 23;
// Tiles per thread, so that a thread that starts late or is descheduled leaves most of its
// share to the others, and tiles of at least this many multiply-adds. Each tile packs its own
// panels of A and B over the whole reduction, so more tiles mean more packing: with two per
// thread, a square GEMM on 2 threads packs 4 M K elements where a split in two halves packs 3.
constexpr int64_t kGemmTilesPerThread = 2;
constexpr int64_t kGemmMinTileMacs = int64_t(1) << 19;
// From this many multiply-adds per thread, one tile per thread (the least packing; a thread
// that starts late still leaves its tile to the first one done): at 1024^3 on 2 threads, 2 x 2
// tiles took 1.5x the time of two column halves.
constexpr int64_t kGemmOneTilePerThreadMacs = int64_t(1) << 25;

// How many threads a GEMM of M x N x K runs on: 1 below kGemmParallelMacs, else the pool's,
// but not more than there are tiles of kGemmMinTileMacs.
inline int gemm_threads(int64_t M, int64_t N, int64_t K, int64_t parallel_macs = kGemmParallelMacs) {
    const int64_t macs = M * N * std::max<int64_t>(K, 1);
    if (macs < parallel_macs) return 1;
    return static_cast<int>(std::clamp<int64_t>(macs / kGemmMinTileMacs, 1, num_threads()));
}

// [begin, end) of part `p` of `parts` equal shares of `panels` panels of size `unit`, clipped to n.
inline void split_range(int64_t n, int64_t unit, int64_t p, int64_t parts, int64_t& begin, int64_t& end) {
    const int64_t panels = (n + unit - 1) / unit;
    begin = std::min(n, panels * p / parts * unit);
    end = std::min(n, panels * (p + 1) / parts * unit);
}

// What packing one element of A or B costs, in multiply-adds of the micro-kernel: on one
// AVX-512 core at 512^3 the micro-kernel ran ~110 G multiply-adds/s and packing moved 4-8 G
// elements/s (B rows copied, A rows transposed).
constexpr int64_t kGemmPackCostMacs = 16;

// The tiles of an M x N x K GEMM on `threads` threads: about kGemmTilesPerThread per thread,
// none smaller than kGemmMinTileMacs, cut so that the busiest thread finishes first: each
// thread takes ceil(tiles / threads) tiles, each costing its multiply-adds (columns counted in
// whole vectors: a partly used panel runs only those) plus kGemmPackCostMacs per element of its
// rows of A and columns of B (K (rows + cols)). Row panels (MR) are finer than column panels
// (NR): at 512^3 on 2 threads, column halves of 240 and 272 left one thread 13% more work than
// the other, row halves 256 each.
template <class T>
TileGrid choose_tiles(int64_t M, int64_t N, int64_t K, int threads) {
    if (threads <= 1) return TileGrid{1, 1};
    constexpr int64_t MR = gemm_mr<T>(), NR = gemm_nr<T>(), L = Simd<T>::lanes;
    const int64_t m_panels = (M + MR - 1) / MR;
    const int64_t n_panels = (N + NR - 1) / NR;
    const int64_t macs = M * N * std::max<int64_t>(K, 1);
    const int64_t per_thread = macs / threads >= kGemmOneTilePerThreadMacs ? 1 : kGemmTilesPerThread;
    const int64_t target = std::min(m_panels * n_panels,
                                    std::clamp<int64_t>(macs / kGemmMinTileMacs, threads, threads * per_thread));
    // The largest share of n in `parts` (split_range), rounded up to `round`.
    auto largest = [](int64_t n, int64_t unit, int64_t parts, int64_t round) {
        int64_t most = 0;
        for (int64_t p = 0; p < parts; ++p) {
            int64_t begin, end;
            split_range(n, unit, p, parts, begin, end);
            most = std::max(most, (end - begin + round - 1) / round * round);
        }
        return most;
    };
    const double k = double(std::max<int64_t>(K, 1));
    TileGrid best{1, std::min(n_panels, target)};
    double best_cost = 1e300;
    for (int64_t tm = 1; tm <= std::min(m_panels, target); ++tm) {
        const int64_t tn = std::min(n_panels, (target + tm - 1) / tm);
        if (tm * tn < target) continue;
        const double rows = double(largest(M, MR, tm, MR)), cols = double(largest(N, NR, tn, L));
        const double rounds = double((tm * tn + threads - 1) / threads);
        const double cost = rounds * k * (rows * cols + double(kGemmPackCostMacs) * (rows + cols));
        if (cost < best_cost) best_cost = cost, best = TileGrid{tm, tn};
    }
    return best;
}

// C = A B (+ bias per row), M x N x K, on num_threads() threads (one below parallel_macs
// multiply-adds, see kGemmParallelMacs). From inside a pool task it runs on the calling thread.
//
// The tiles are the thread pool's tasks (common/thread_pool.h): a thread that starts late, or
// loses its core to another process, simply takes fewer, rather than owning a fixed share that
// the others would wait for.
template <class T, class ASrc, class BSrc>
void gemm_parallel(int64_t M, int64_t N, int64_t K, const ASrc& A, const BSrc& B,
                   const OutMatrix<T>& C, Store mode = Store::overwrite,
                   int64_t parallel_macs = kGemmParallelMacs) {
    if (M <= 0 || N <= 0) return;
    const int threads = gemm_threads(M, N, K, parallel_macs);
    const TileGrid tiles = choose_tiles<T>(M, N, K, threads);
    auto run_tile = [&](int64_t t, GemmBuffers<T>& buf) {
        int64_t m0, m1, n0, n1;
        split_range(M, gemm_mr<T>(), t % tiles.tm, tiles.tm, m0, m1);
        split_range(N, gemm_nr<T>(), t / tiles.tm, tiles.tn, n0, n1);
        if (m0 < m1 && n0 < n1) gemm_block<T>(m0, m1, n0, n1, 0, K, A, B, C, mode, buf);
    };
    if (threads == 1) {
        GemmBuffers<T> buf(M, N, K);
        FlushDenormals ftz;
        run_tile(0, buf);
        return;
    }
    // Allocated before the tasks run: an exception must not escape a pool thread.
    std::vector<GemmBuffers<T>> bufs;
    for (int t = 0; t < threads; ++t) bufs.emplace_back(M, N, K);
    FlushDenormals ftz;  // the workers run with the caller's MXCSR
    parallel_tasks(tiles.count(), threads, [&](int64_t t, int worker) { run_tile(t, bufs[worker]); });
}

// The plain row-major GEMM behind the `gemm` binding: C (M x N) = A (M x K) B (K x N) [+ C].
template <class T>
void gemm(int64_t M, int64_t N, int64_t K, const T* a, const T* b, T* c, bool accumulate) {
    gemm_parallel<T>(M, N, K, InMatrixA<T>::plain(a, K, K), InMatrixB<T>::plain(b, N, N),
                     OutMatrix<T>::plain(c, N, N),
                     accumulate ? Store::accumulate : Store::overwrite);
}

// C (plain M x N, row stride N) = A B for a long reduction and a small C (weight gradients):
// the reduction is cut into chunks fixed by the shape (gemm/chunked_reduction.h), so the
// result is the same on any number of threads. Runs gemm_parallel when C is large enough to
// be split by itself, or K too short to be worth cutting.
template <class T, class ASrc, class BSrc>
void gemm_parallel_split_k(int64_t M, int64_t N, int64_t K, const ASrc& A, const BSrc& B, T* c) {
    // Chunks of whole compile-time KC blocks, not of the run-time KC: the split must follow from
    // the shape alone. (Each chunk is then reduced in blocks of the run-time KC, so a different
    // blocking rounds differently; a fixed one gives the same bytes on any number of threads.)
    const ReductionChunks chunks = reduction_chunks(K, M * N, GemmTile<T>::KC, 2);
    if (K < 4 * std::max(M, N) || chunks.count == 1) {
        gemm_parallel<T>(M, N, K, A, B, OutMatrix<T>::plain(c, N, N));
        return;
    }
    sum_of_chunks<T>(chunks, M * N, c, [&] { return GemmBuffers<T>(M, N, K); },
                     [&](int64_t k0, int64_t k1, T* out, GemmBuffers<T>& buf) {
                         gemm_block<T>(0, M, 0, N, k0, k1, A, B, OutMatrix<T>::plain(out, N, N),
                                       Store::overwrite, buf);
                     });
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
