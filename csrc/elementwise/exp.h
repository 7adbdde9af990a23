// e^x and e^x - 1 of every lane over the whole floating-point range, for the activations.
//
// common/simd.h's vexp clamps its input so that it never returns inf or 0 (what the LSTM gates
// want); an activation must instead behave as std::exp / std::expm1 do: e^x overflows to inf
// above ln(max) (88.72 in float32, 709.78 in float64), goes to 0 below the smallest
// subnormal, is NaN for NaN, and e^x - 1 keeps its relative accuracy near 0 (ELU, float64 tanh).
//
// Both start from the same reduction x = n ln2 + r, |r| <= ln2/2 (n rounded to nearest, r by
// Cody and Waite's two-constant subtraction), then
//   q = e^r - 1 = r (1 + r/2 (1 + r/3 (...)))   (Taylor, degree 8 in float32, 14 in float64:
//                                                the truncation error is below a tenth of an
//                                                ulp of q on |r| <= ln2/2)
//   e^x = 2^n (1 + q),   e^x - 1 = 2^n q + (2^n - 1).
// 2^n is built in the exponent bits as two factors 2^(n/2) 2^(n - n/2), each a normal number
// for every n of the clamped range, so that their product rounds to inf, a subnormal or 0
// exactly as the true result does. The clamp only bounds n; it sits past the points where the
// result is already inf or 0.
//
// Measured (tests/test_activations.py checks these bounds on every ISA build), over 1.2 10^6
// points of [-100, 100] with a tenth near 0 and a tenth within 10^-3 of it, in ulps of the
// exact result rounded to the type: float32 against float64 NumPy, e^x within 1.13 ulps
// (ELU's backward), ELU (e^x - 1) within 1.21, sigmoid within 2.5; float64 against NumPy's
// own float64 functions, e^x and ELU within 1 ulp, tanh within 3, sigmoid within 4 (both
// compose a division with e^x). (float32 tanh has its own path: elementwise/activation.h.)
#pragma once

#include "common/prelude.h"
#include "common/simd.h"

namespace pyconv {
namespace PYCONV_ISA {

template <class T>
struct ExpReduced {
    typename Simd<T>::V q;           // e^r - 1
    typename Simd<T>::V scale_low;   // 2^(n/2)
    typename Simd<T>::V scale_high;  // 2^(n - n/2)
};

template <class T>
static inline __attribute__((always_inline)) ExpReduced<T> exp_reduce(typename Simd<T>::V x) {
    using S = Simd<T>;
    using V = typename S::V;
    using I = typename S::I;
    constexpr bool f32 = sizeof(T) == 4;
    constexpr int mantissa_bits = f32 ? 23 : 52, bias = f32 ? 127 : 1023, degree = f32 ? 8 : 14;
    // Past these, e^x is inf or 0 in T; within them n stays in [-2 bias - m, 2 bias + 2].
    const T lo = f32 ? T(-104.0) : T(-746.0), hi = f32 ? T(89.0) : T(710.0);
    // Adding 1.5 * 2^mantissa_bits rounds to an integer held in the low mantissa bits.
    const T magic = T(1.5) * T(int64_t(1) << mantissa_bits);
    // ln2 split so that n * ln2_hi is exact for every n of the range.
    const T ln2_hi = f32 ? T(0.693359375) : T(0.693147180369123816490);
    const T ln2_lo = f32 ? T(-2.12194440e-4) : T(1.90821492927058770002e-10);
    // NaN lanes compute on 0 (the caller puts the NaN back), so the integer steps stay defined.
    x = x == x ? x : S::splat(T(0));
    x = x < lo ? S::splat(lo) : x;
    x = x > hi ? S::splat(hi) : x;
    const V t = x * T(1.4426950408889634) + magic;
    const V n = t - magic;
    const V r = fma<T>(n, S::splat(-ln2_lo), fma<T>(n, S::splat(-ln2_hi), x));
    V p = S::splat(T(1));
    for (int k = degree; k >= 2; --k) p = fma<T>(p, r * (T(1) / T(k)), S::splat(T(1)));
    ExpReduced<T> out;
    out.q = p * r;
    const I n_int = I(t) - I(S::splat(magic));
    const I half = n_int >> 1;  // floor(n / 2): both factors stay normal numbers
    out.scale_low = V((half + bias) << mantissa_bits);
    out.scale_high = V((n_int - half + bias) << mantissa_bits);
    return out;
}

// e^x: inf above the overflow point, 0 (or a subnormal) below the underflow point, NaN for NaN.
template <class T>
static inline __attribute__((always_inline)) typename Simd<T>::V exp_full(typename Simd<T>::V x) {
    const ExpReduced<T> e = exp_reduce<T>(x);
    const typename Simd<T>::V y = ((e.q + T(1)) * e.scale_low) * e.scale_high;
    return x == x ? y : x;
}

// e^x - 1, accurate near 0: -1 for x -> -inf, inf above the overflow point, NaN for NaN, and
// -0 for -0.
template <class T>
static inline __attribute__((always_inline)) typename Simd<T>::V expm1_full(typename Simd<T>::V x) {
    const ExpReduced<T> e = exp_reduce<T>(x);
    const typename Simd<T>::V scale = e.scale_low * e.scale_high;
    const typename Simd<T>::V y = fma<T>(scale, e.q, scale - T(1));
    return x == x && x != T(0) ? y : x;
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
