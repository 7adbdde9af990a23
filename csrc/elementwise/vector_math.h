// exp and log1p written for loops that vectorise (`#pragma omp simd`): no calls, no branches,
// only arithmetic, selects and integer bit operations, so every ISA build turns them into
// vector code (libm's exp/log1p are scalar calls that stop the vectoriser).
//
// exp: Cody-Waite reduction x = n ln2 + r with |r| <= ln2/2 (ln2 split in a high part whose
// product with n is exact and a low part), a Taylor polynomial for e^r (degree 7 in float,
// 13 in double: truncation below 2^-27 and 2^-60 of the result), then the result scaled by
// 2^n as two powers of two built from their bits (so that results down to the subnormal range
// and up to overflow come out right). x is clamped first: below the clamp exp underflows to 0,
// above it overflows to inf; NaN stays NaN.
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

namespace pyconv {
namespace PYCONV_ISA {

template <class T>
struct FloatBits;
template <>
struct FloatBits<float> {
    using Int = int32_t;
    static constexpr int mantissa = 23, bias = 127;
    static constexpr float shifter = 12582912.0f;     // 1.5 * 2^23: adding it rounds to an integer
    static constexpr float ln2_hi = 0.693359375f;      // few bits: n * ln2_hi is exact
    static constexpr float ln2_lo = -2.12194440e-4f;
    static constexpr float lowest = -104.0f, highest = 89.0f;  // exp: 0 below, inf above
};
template <>
struct FloatBits<double> {
    using Int = int64_t;
    static constexpr int mantissa = 52, bias = 1023;
    static constexpr double shifter = 6755399441055744.0;  // 1.5 * 2^52
    static constexpr double ln2_hi = 6.93147180369123816490e-01;
    static constexpr double ln2_lo = 1.90821492927058770002e-10;
    static constexpr double lowest = -746.0, highest = 710.0;
};

template <class T>
inline typename FloatBits<T>::Int bits_of(T v) {
    typename FloatBits<T>::Int i;
    std::memcpy(&i, &v, sizeof v);
    return i;
}

template <class T>
inline T from_bits(typename FloatBits<T>::Int i) {
    T v;
    std::memcpy(&v, &i, sizeof v);
    return v;
}

// 2^n for an integer n inside the normal exponent range.
template <class T>
inline T pow2(typename FloatBits<T>::Int n) {
    using B = FloatBits<T>;
    return from_bits<T>((n + B::bias) << B::mantissa);
}

template <class T>
inline T exp_taylor(T r);

template <>
inline float exp_taylor<float>(float r) {
    float p = 1.0f / 5040;
    p = p * r + 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    return p * r + 1.0f;
}

template <>
inline double exp_taylor<double>(double r) {
    constexpr double c[] = {1.0 / 6227020800.0, 1.0 / 479001600.0, 1.0 / 39916800.0,
                            1.0 / 3628800.0,    1.0 / 362880.0,    1.0 / 40320.0,
                            1.0 / 5040.0,       1.0 / 720.0,       1.0 / 120.0,
                            1.0 / 24.0,         1.0 / 6.0,         0.5,
                            1.0};
    double p = c[0];
    for (int k = 1; k < 13; ++k) p = p * r + c[k];  // unrolled (constant trip count)
    return p * r + 1.0;
}

template <class T>
inline T vexp(T x) {
    using B = FloatBits<T>;
    using Int = typename B::Int;
    // Clamped so that n below stays inside what two powers of two can scale; NaN passes both
    // comparisons false and stays NaN.
    const T xc = x < B::lowest ? B::lowest : (x > B::highest ? B::highest : x);
    const T shifted = xc * T(1.4426950408889634) + B::shifter;  // round(x / ln2) + shifter
    const T n = shifted - B::shifter;
    const Int ni = bits_of<T>(shifted) - bits_of<T>(B::shifter);
    T r = xc - n * B::ln2_hi;
    r = r - n * B::ln2_lo;
    const Int half = ni >> 1;  // 2^n as 2^half * 2^(n - half): each factor a normal number
    return exp_taylor<T>(r) * pow2<T>(half) * pow2<T>(ni - half);
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

// log(1 + u) for u in [0, 1] (what softplus needs: u = exp(-|x|)); NaN stays NaN.
template <class T>
inline T vlog1p(T u) {
    const T y = T(1) + u;
    const T c = u - (y - T(1));  // the rounding error of 1 + u, exactly
    const bool upper = y > T(1.4142135623730951);
    const T m = upper ? y * T(0.5) : y;
    const T k = upper ? T(1) : T(0);
    const T s = (m - T(1)) / (m + T(1));
    const T z = s * s;
    const T log_m = T(2) * s + T(2) * s * z * atanh_series<T>(z);
    return k * FloatBits<T>::ln2_hi + (log_m + k * FloatBits<T>::ln2_lo) + c / y;
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
