// Direct kernels for grouped convolutions with few channels per group (depthwise: Cg = Kg = 1),
// where a GEMM would have a handful of rows. Each works on zero-padded copies of input planes,
// so the inner loops have no bounds checks and vectorise over output columns.
#pragma once

#include "common/prelude.h"
#include "common/denormals.h"
#include "common/scratch.h"
#include "common/simd.h"
#include "conv/padding.h"

namespace pyconv {
namespace PYCONV_ISA {

template <class T>
void conv2d_forward_direct(const ConvShape& g, const T* x, const T* w, const T* bias, T* y) {
    using V = Simd<T>;
    const int64_t Cg = g.C / g.groups, Kg = g.K / g.groups, RS = g.R * g.S;
    const PaddedPlane pp(g, V::lanes);
    const int64_t jobs = g.N * g.groups;
    const int threads = std::max<int64_t>(1, std::min<int64_t>(num_threads(), jobs));
    std::vector<Scratch<T>> pads;
    for (int t = 0; t < threads; ++t) pads.push_back(scratch<T>(checked_add(checked_mul(Cg, pp.size()), V::lanes)));
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_for(jobs, threads, [&](int64_t job, int worker) {
        const int64_t n = job / g.groups, grp = job % g.groups;
        T* xp = pads[worker].get();
        T* last = xp + Cg * pp.size();  // the vector of outputs that straddles Wo
        for (int64_t c = 0; c < Cg; ++c)
            pad_plane(g, pp, x + ((n * g.C) + grp * Cg + c) * g.H * g.W, xp + c * pp.size());
        for (int64_t kk = 0; kk < Kg; ++kk) {
            const int64_t k = grp * Kg + kk;
            const T* wk = w + k * Cg * RS;
            T* yk = y + (n * g.K + k) * g.Ho * g.Wo;
            const T b0 = bias ? bias[k] : T(0);
            for (int64_t ho = 0; ho < g.Ho; ++ho) {
                T* yrow = yk + ho * g.Wo;
                const T* xrow = xp + ho * g.sh * pp.Wp;
                // A vector of outputs accumulates every tap in registers and is stored once.
                for (int64_t wo = 0; g.sw == 1 && wo < g.Wo; wo += V::lanes) {
                    typename V::reg acc = V::broadcast(&b0);
                    for (int64_t c = 0; c < Cg; ++c)
                        for (int64_t r = 0; r < g.R; ++r)
                            for (int64_t s = 0; s < g.S; ++s)
                                acc = V::fma(V::broadcast(wk + c * RS + r * g.S + s),
                                             V::load(xrow + c * pp.size() + r * g.dh * pp.Wp + wo + s * g.dw), acc);
                    if (wo + V::lanes <= g.Wo) {
                        V::store(yrow + wo, acc);
                    } else {
                        V::store(last, acc);
                        std::copy(last, last + (g.Wo - wo), yrow + wo);
                    }
                }
                for (int64_t wo = 0; g.sw != 1 && wo < g.Wo; ++wo) {
                    T acc = b0;
                    for (int64_t c = 0; c < Cg; ++c)
                        for (int64_t r = 0; r < g.R; ++r)
                            for (int64_t s = 0; s < g.S; ++s)
                                acc += wk[c * RS + r * g.S + s] *
                                       xrow[c * pp.size() + r * g.dh * pp.Wp + wo * g.sw + s * g.dw];
                    yrow[wo] = acc;
                }
            }
        }
    });
}

// grad_x: each output gradient element scatters into a zero-padded copy of the input planes,
// whose interior is then copied out.
template <class T>
void conv2d_grad_input_direct(const ConvShape& g, const T* dy, const T* w, T* dx) {
    const int64_t Cg = g.C / g.groups, Kg = g.K / g.groups, RS = g.R * g.S;
    const PaddedPlane pp(g);
    const int64_t jobs = g.N * g.groups;
    const int threads = std::max<int64_t>(1, std::min<int64_t>(num_threads(), jobs));
    std::vector<Scratch<T>> pads;
    for (int t = 0; t < threads; ++t) pads.push_back(scratch<T>(checked_mul(Cg, pp.size())));
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_for(jobs, threads, [&](int64_t job, int worker) {
        const int64_t n = job / g.groups, grp = job % g.groups;
        T* dxp = pads[worker].get();
        std::fill(dxp, dxp + Cg * pp.size(), T(0));
        for (int64_t kk = 0; kk < Kg; ++kk) {
            const int64_t k = grp * Kg + kk;
            const T* wk = w + k * Cg * RS;
            const T* dyk = dy + (n * g.K + k) * g.Ho * g.Wo;
            for (int64_t ho = 0; ho < g.Ho; ++ho) {
                const T* dyrow = dyk + ho * g.Wo;
                for (int64_t c = 0; c < Cg; ++c)
                    for (int64_t r = 0; r < g.R; ++r) {
                        T* drow = dxp + c * pp.size() + (ho * g.sh + r * g.dh) * pp.Wp;
                        for (int64_t s = 0; s < g.S; ++s) {
                            const T wv = wk[c * RS + r * g.S + s];
                            T* ds = drow + s * g.dw;
#pragma omp simd
                            for (int64_t wo = 0; wo < g.Wo; ++wo) ds[wo * g.sw] += wv * dyrow[wo];
                        }
                    }
            }
        }
        // Interior of the padded planes; input rows/columns no output reads get zero.
        for (int64_t c = 0; c < Cg; ++c) {
            T* out = dx + (n * g.C + grp * Cg + c) * g.H * g.W;
            for (int64_t h = 0; h < g.H; ++h) {
                const int64_t hp = h + g.ph;
                if (hp >= pp.Hp) {
                    std::fill(out + h * g.W, out + (h + 1) * g.W, T(0));
                    continue;
                }
                gather_row(dxp + c * pp.size() + hp * pp.Wp, pp.Wp, g.pw, 1, g.W, out + h * g.W, 1);
            }
        }
    });
}

// grad_w: one dot product over (n, ho, wo) per weight; jobs are (group, output channel).
template <class T>
void conv2d_grad_weight_direct(const ConvShape& g, const T* dy, const T* x, T* dw) {
    const int64_t Cg = g.C / g.groups, Kg = g.K / g.groups, RS = g.R * g.S;
    const PaddedPlane pp(g);
    const int threads = std::max<int64_t>(1, std::min<int64_t>(num_threads(), g.K));
    std::vector<Scratch<T>> pads;
    for (int t = 0; t < threads; ++t) pads.push_back(scratch<T>(pp.size()));
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_for(g.K, threads, [&](int64_t k, int worker) {
        const int64_t grp = k / Kg;
        T* xp = pads[worker].get();
        T* dwk = dw + k * Cg * RS;
        std::fill(dwk, dwk + Cg * RS, T(0));
        for (int64_t n = 0; n < g.N; ++n) {
            const T* dyk = dy + (n * g.K + k) * g.Ho * g.Wo;
            for (int64_t c = 0; c < Cg; ++c) {
                pad_plane(g, pp, x + (n * g.C + grp * Cg + c) * g.H * g.W, xp);
                for (int64_t r = 0; r < g.R; ++r)
                    for (int64_t s = 0; s < g.S; ++s) {
                        T acc = T(0);
                        for (int64_t ho = 0; ho < g.Ho; ++ho) {
                            const T* xs = xp + (ho * g.sh + r * g.dh) * pp.Wp + s * g.dw;
                            const T* dyrow = dyk + ho * g.Wo;
#pragma omp simd reduction(+ : acc)
                            for (int64_t wo = 0; wo < g.Wo; ++wo) acc += dyrow[wo] * xs[wo * g.sw];
                        }
                        dwk[c * RS + r * g.S + s] += acc;
                    }
            }
        }
    });
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
