// A long reduction split between threads so that the result does not depend on how many
// threads ran it: the reduction is cut into chunks whose bounds follow from the problem's
// shape alone, each chunk is reduced into its own partial result by whichever thread takes
// it, and the partials are summed element by element in chunk order. Used for the weight
// gradients (long reductions over pixels or time steps into a small C), by the packed GEMM
// (gemm/driver.h) and the dot-product form (gemm/dot.h) alike.
#pragma once

#include "common/prelude.h"
#include "common/denormals.h"
#include "common/scratch.h"

namespace pyconv {
namespace PYCONV_ISA {

// [0, K) cut into `count` chunks of whole reduction blocks of `granule` (the last block may
// be shorter), as many blocks in each as an even share allows.
struct ReductionChunks {
    int64_t K, granule, count;
    int64_t blocks() const { return (K + granule - 1) / granule; }
    int64_t begin(int64_t i) const { return std::min(K, blocks() * i / count * granule); }
    int64_t end(int64_t i) const { return begin(i + 1); }
};

// At most this many chunks: enough for the threads of a large machine, while their partial
// results (chunks x the size of C) stay affordable.
constexpr int64_t kMaxReductionChunks = 32;
// The partial results of all chunks together hold at most this many elements.
constexpr int64_t kMaxPartialElements = int64_t(1) << 23;

// The largest power of two <= n (n >= 1).
inline int64_t power_of_two_floor(int64_t n) {
    int64_t p = 1;
    while (p * 2 <= n) p *= 2;
    return p;
}

// The chunks for a reduction of length K into `outputs` elements: whole blocks of `granule`
// (the kernel's reduction block, so that splitting adds no short blocks), at least
// `min_blocks` of them per chunk, and a power of two of chunks, so that they share out evenly
// among the usual thread counts (2, 4, 8, 16). One chunk means the reduction is not worth
// splitting.
inline ReductionChunks reduction_chunks(int64_t K, int64_t outputs, int64_t granule, int64_t min_blocks) {
    const ReductionChunks one{K, std::max<int64_t>(granule, 1), 1};
    const int64_t most = std::min({kMaxReductionChunks, one.blocks() / std::max<int64_t>(min_blocks, 1),
                                   kMaxPartialElements / std::max<int64_t>(outputs, 1)});
    return ReductionChunks{K, one.granule, power_of_two_floor(std::max<int64_t>(most, 1))};
}

// c[0, size) = the sum over chunks, in chunk order, of the partial results that
// reduce_chunk(k_begin, k_end, out, buffers) writes (overwrites) into `out` (size elements).
// make_buffers() gives one thread's working buffers, made before the tasks run (an exception
// must not leave a pool thread).
template <class T, class MakeBuffers, class ReduceChunk>
void sum_of_chunks(const ReductionChunks& chunks, int64_t size, T* c, MakeBuffers&& make_buffers,
                   ReduceChunk&& reduce_chunk) {
    const int threads = static_cast<int>(std::min<int64_t>(num_threads(), chunks.count));
    std::vector<decltype(make_buffers())> buffers;
    for (int t = 0; t < threads; ++t) buffers.push_back(make_buffers());
    Scratch<T> partial = scratch<T>(checked_mul(chunks.count - 1, size));  // chunk 0 goes to c
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_tasks(chunks.count, threads, [&](int64_t i, int worker) {
        reduce_chunk(chunks.begin(i), chunks.end(i), i == 0 ? c : partial.get() + (i - 1) * size, buffers[size_t(worker)]);
    });
    parallel_ranges(size, threads, [&](int64_t begin, int64_t end, int) {
        for (int64_t e = begin; e < end; ++e) {
            T sum = c[e];
            for (int64_t i = 1; i < chunks.count; ++i) sum += partial[(i - 1) * size + e];
            c[e] = sum;
        }
    });
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
