// The bias gradient: grad_b[k] = the sum of grad_y over images and the plane of channel k.
#pragma once

#include "common/prelude.h"
#include "common/denormals.h"
#include "common/scratch.h"

namespace pyconv {
namespace PYCONV_ISA {

// Threads split the channels, in blocks of whole channels (or, where one plane is larger than
// a block, one channel at a time, its plane in chunks). A block's elements are summed over the
// images elementwise, one vector of consecutive elements at a time: in T over groups of
// kGroup images, each group's sums then added into double accumulators (float32 sums of ~10^5
// terms lose digits; of 16 they lose little, and converting every element to double took
// 1.4x as long); then each channel's accumulators are added up in order. Every channel's sum thus
// runs in one order fixed by the shape, whatever the thread count or the blocking. Summing
// each image's plane of a channel on its own instead (a horizontal reduction per image and
// channel) cost more than the additions on small feature maps: 64x128x4x4 took 104 us
// against PyTorch's 41 us on one thread.
template <class T>
void conv2d_grad_bias(int64_t N, int64_t K, int64_t plane, const T* dy, T* db) {
    constexpr int64_t kBlock = 2048;  // accumulators per block: 16 KiB of double, 8 KiB of float
    constexpr int64_t kGroup = 16;    // images summed in T before their sums go into double
    const int threads = int(std::max<int64_t>(1, std::min<int64_t>(num_threads(), K)));
    const int64_t chunk = std::min(plane, kBlock);  // elements of a plane summed at once
    const int64_t per_thread = (K + threads - 1) / threads;
    const int64_t channels = std::max<int64_t>(1, std::min(kBlock / chunk, per_thread));  // per block
    const int64_t blocks = (K + channels - 1) / channels;
    // Per thread (allocated here: an exception must not leave a pool thread).
    std::vector<Scratch<T>> parts;
    std::vector<Scratch<double>> accs, totals_of;
    for (int t = 0; t < threads; ++t) {
        parts.push_back(scratch<T>(channels * chunk));
        accs.push_back(scratch<double>(channels * chunk));
        totals_of.push_back(scratch<double>(channels));
    }
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_tasks(blocks, threads, [&](int64_t b, int worker) {
        double* totals = totals_of[size_t(worker)].get();
        const int64_t k0 = b * channels, nk = std::min(channels, K - k0);
        for (int64_t k = 0; k < nk; ++k) totals[k] = 0.0;
        // With several channels per block the chunk is the whole plane, so the block's
        // elements of one image are one contiguous run.
        for (int64_t i0 = 0; i0 < plane; i0 += chunk) {
            const int64_t len = std::min(chunk, plane - i0), run = nk * len;
            double* a = accs[size_t(worker)].get();
            T* q = parts[size_t(worker)].get();
            for (int64_t j = 0; j < run; ++j) a[j] = 0.0;
            for (int64_t n0 = 0; n0 < N; n0 += kGroup) {
                const T* p = dy + (n0 * K + k0) * plane + i0;
                for (int64_t j = 0; j < run; ++j) q[j] = p[j];
                for (int64_t n = n0 + 1; n < std::min(N, n0 + kGroup); ++n) {
                    p = dy + (n * K + k0) * plane + i0;
#pragma omp simd
                    for (int64_t j = 0; j < run; ++j) q[j] += p[j];
                }
#pragma omp simd
                for (int64_t j = 0; j < run; ++j) a[j] += double(q[j]);
            }
            for (int64_t k = 0; k < nk; ++k) {
                double s = 0.0;
                for (int64_t i = 0; i < len; ++i) s += a[k * len + i];
                totals[k] += s;
            }
        }
        for (int64_t k = 0; k < nk; ++k) db[k0 + k] = T(totals[k]);
    });
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
