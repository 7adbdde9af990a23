// Embedding lookups, as torch.nn.functional.embedding and its dense backward: the forward
// copies the table rows the indices pick, the backward adds each gradient row into the row its
// index picked. Indices outside the table are skipped and counted (the binding raises).
#pragma once

#include "common/prelude.h"
#include "elementwise/activation.h"

namespace pyconv {
namespace PYCONV_ISA {

// out[i] = weight[index[i]] for the n indices, rows of dim elements, the table `rows` long.
// Returns how many indices lay outside [0, rows) (their rows of out are left unwritten).
template <class T>
int64_t embedding(int64_t n, int64_t dim, int64_t rows, const T* weight, const int64_t* index, T* out) {
    std::atomic<int64_t> skipped{0};
    parallel_ranges(n, threads_if(n * dim >= kParallelElementwise), [&](int64_t begin, int64_t end, int) {
        int64_t outside = 0;
        for (int64_t i = begin; i < end; ++i) {
            const int64_t r = index[i];
            if (r < 0 || r >= rows) ++outside;
            else {
                const T* src = weight + r * dim;
                T* dst = out + i * dim;
#pragma omp simd
                for (int64_t c = 0; c < dim; ++c) dst[c] = src[c];
            }
        }
        skipped += outside;
    });
    return skipped.load();
}

// grad_weight (rows, dim) = for each table row r, the sum of the gradient rows grad_out[i]
// (n of dim elements) whose index[i] is r, added in the order of i (as np.add.at, the
// reference, adds them); row padding_idx (when non-negative) zero. One thread: shared by the
// table's rows, each thread skips the other's indices, a mispredicted branch for every other
// index of a random sequence (32000 indices into 65 x 32: 285 us on 2 threads against 205 on
// one); shared by columns, the threads write the same cache lines wherever a row's split
// falls inside one (6400 into 1000 x 128: 0.72 ms against 0.27). Sorting the gradient rows
// by index first, to add each run at once, costs more than the adds it groups (the NumPy form
// before: argsort and reduceat, 216 us for 3200 into 65 x 32 against 9 here). Returns how
// many indices lay outside [0, rows) (skipped).
template <class T>
int64_t embedding_backward(int64_t n, int64_t dim, int64_t rows, const int64_t* index, const T* grad_out,
                           int64_t padding_idx, T* grad_weight) {
    std::fill_n(grad_weight, rows * dim, T(0));
    int64_t skipped = 0;
    for (int64_t i = 0; i < n; ++i) {
        const int64_t r = index[i];
        if (r < 0 || r >= rows) {
            ++skipped;
            continue;
        }
        const T* g = grad_out + i * dim;
        T* w = grad_weight + r * dim;
#pragma omp simd
        for (int64_t c = 0; c < dim; ++c) w[c] += g[c];
    }
    if (padding_idx >= 0 && padding_idx < rows) std::fill_n(grad_weight + padding_idx * dim, dim, T(0));
    return skipped;
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
