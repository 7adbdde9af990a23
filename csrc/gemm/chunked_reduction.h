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

// [0, K) cut into `count` chunks of `size` (the last one shorter).
struct ReductionChunks {
    int64_t K, count, size;
    int64_t begin(int64_t i) const { return std::min(K, i * size); }
    int64_t end(int64_t i) const { return std::min(K, (i + 1) * size); }
};

// At most this many chunks: enough for the threads of a large machine, while their partial
// results (chunks x the size of C) stay affordable.
constexpr int64_t kMaxReductionChunks = 32;
// The partial results of all chunks together hold at most this many elements.
constexpr int64_t kMaxPartialElements = int64_t(1) << 23;

// The chunks for a reduction of length K into `outputs` elements: whole multiples of
// `granule` (a reduction block of the kernel, so that no chunk ends in a short block), at
// least `min_chunk` long. One chunk means the reduction is not worth splitting.
inline ReductionChunks reduction_chunks(int64_t K, int64_t outputs, int64_t granule, int64_t min_chunk) {
    int64_t count = std::min<int64_t>(kMaxReductionChunks, K / std::max<int64_t>(min_chunk, 1));
    count = std::min<int64_t>(count, kMaxPartialElements / std::max<int64_t>(outputs, 1));
    count = std::max<int64_t>(count, 1);
    int64_t size = (K + count - 1) / count;
    size = std::max<int64_t>(granule, (size + granule - 1) / granule * granule);
    return ReductionChunks{K, std::max<int64_t>(1, (K + size - 1) / size), size};
}

// c[0, size) = the sum over chunks, in chunk order, of the partial results that
// reduce_chunk(k_begin, k_end, out, buffers) writes (overwrites) into `out` (size elements).
// make_buffers() gives one thread's working buffers, made before the parallel region (an
// exception must not leave it). Must be called outside any parallel region.
template <class T, class MakeBuffers, class ReduceChunk>
void sum_of_chunks(const ReductionChunks& chunks, int64_t size, T* c, MakeBuffers&& make_buffers,
                   ReduceChunk&& reduce_chunk) {
    const int threads = static_cast<int>(std::min<int64_t>(num_threads(), chunks.count));
    std::vector<decltype(make_buffers())> buffers;
    for (int t = 0; t < threads; ++t) buffers.push_back(make_buffers());
    Scratch<T> partial = scratch<T>(checked_mul(chunks.count - 1, size));  // chunk 0 goes to c
    FlushDenormals ftz;  // on every thread of the team (common/denormals.h)
#pragma omp parallel num_threads(threads) firstprivate(ftz)
    {
        auto& buf = buffers[omp_get_thread_num()];
#pragma omp for schedule(static)
        for (int64_t i = 0; i < chunks.count; ++i)
            reduce_chunk(chunks.begin(i), chunks.end(i), i == 0 ? c : partial.get() + (i - 1) * size, buf);
#pragma omp for schedule(static)
        for (int64_t e = 0; e < size; ++e) {
            T sum = c[e];
            for (int64_t i = 1; i < chunks.count; ++i) sum += partial[(i - 1) * size + e];
            c[e] = sum;
        }
    }
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
