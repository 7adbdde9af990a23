// exp, log1p and log (of y >= 1) written for loops that vectorise (`#pragma omp simd`): no
// calls, no branches, only arithmetic, selects and integer bit operations, so the ISA builds
// can turn them into vector code (libm's exp/log1p are scalar calls that stop the vectoriser).
//
// exp is common/simd.h's exponential on the scalar shape, over the full range: 0 below the
// underflow point, inf above the overflow point, NaN for NaN; vexp_nonpositive the same
// polynomial for the x - max(x) <= 0 of a softmax, with one scaling.
//
// log1p(u), u in [0, 1]: y = 1 + u rounded, c = u - (y - 1) the rounding error (exact), and
// log1p(u) = log(y) + c / y; log(y) = k ln2 + log(m) with m = y or y/2 in [sqrt(1/2), sqrt(2)],
// log(m) = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.172, summed as an odd series in s
// (5 terms in float, 12 in double).
//
// Measured against float64 (float) and against NumPy's correctly-rounded-in-practice libm
// (double) by tests/test_losses.py; the errors are stated in benchmarks/RESULTS.md.
#pragma once

#include "common/prelude.h"
#include "common/simd.h"

namespace pyconv {
namespace PYCONV_ISA {

template <class T>
inline T vexp(T x) {
    return exp_clamped_to<T>(x, FloatBits<T>::lowest, FloatBits<T>::highest);
}

// e^x for x <= 0 where subnormal results are flushed to zero (within FlushDenormals): the
// softmax family's exponentials of x - max(x). 0 below the log of the smallest normal number,
// above which one scaling by 2^n is exact and nothing overflows; NaN for NaN. vexp's second
// scaling and clamps were a seventh of a log_softmax.
template <class T>
inline T vexp_nonpositive(T x) {
    constexpr T log_smallest_normal = sizeof(T) == 4 ? T(-87.33654) : T(-708.3964);
    const auto e = exp_reduction<T>(x);
    const T y = mul_add<T>(e.p, e.r, T(1)) * exp2_normal<T, T>(e.n);
    return x < log_smallest_normal ? T(0) : y;
}

template <class T>
inline T atanh_series(T z);  // (atanh(s) / s - 1) / z for z = s^2

template <>
inline float atanh_series<float>(float z) {
    float p = 1.0f / 11;
    p = p * z + 1.0f / 9;
    p = p * z + 1.0f / 7;
    p = p * z + 1.0f / 5;
    p = p * z + 1.0f / 3;
    return p;
}

template <>
inline double atanh_series<double>(double z) {
    constexpr double c[] = {1.0 / 25, 1.0 / 23, 1.0 / 21, 1.0 / 19, 1.0 / 17, 1.0 / 15,
                            1.0 / 13, 1.0 / 11, 1.0 / 9,  1.0 / 7,  1.0 / 5,  1.0 / 3};
    double p = c[0];
    for (int k = 1; k < 12; ++k) p = p * z + c[k];
    return p;
}

// log(y) for y in [1, 2], taken as exact.
template <class T>
inline T vlog_1_to_2(T y) {
    const bool upper = y > T(1.4142135623730951);
    const T m = upper ? y * T(0.5) : y;
    const T k = upper ? T(1) : T(0);
    const T s = (m - T(1)) / (m + T(1));
    const T z = s * s;
    const T log_m = T(2) * s + T(2) * s * z * atanh_series<T>(z);
    return k * FloatBits<T>::ln2_hi + (log_m + k * FloatBits<T>::ln2_lo);
}

// log(1 + u) for u in [0, 1] (what softplus needs: u = exp(-|x|)); NaN stays NaN.
template <class T>
inline T vlog1p(T u) {
    const T y = T(1) + u;
    const T c = u - (y - T(1));  // the rounding error of 1 + u, exactly
    return vlog_1_to_2(y) + c / y;
}

// log(y) for finite y >= 1 (a row's sum of exponentials whose largest term is 1): y = 2^k f
// with f in [1, 2) taken from the bits, log(y) = k ln2 + log(f). NaN stays NaN through the
// added y - y (0 otherwise), which the vectoriser takes where it refuses a select.
template <class T>
inline T vlog_from_one(T y) {
    using B = FloatBits<T>;
    using I = typename B::Int;
    const I bits = same_bits<I>(y);
    const T k = T((bits >> B::mantissa) - B::bias);
    const T f = same_bits<T>(I((bits & ((I(1) << B::mantissa) - 1)) | (I(B::bias) << B::mantissa)));
    // f is exact, so vlog1p's correction for the rounding of 1 + u (and its division) is 0.
    const T log_y = k * B::ln2_hi + (vlog_1_to_2<T>(f) + k * B::ln2_lo);
    return log_y + (y - y);
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
