// e^x and e^x - 1 of every lane over the whole floating-point range, for the activations.
//
// common/simd.h's vexp_clamped clamps its input so that it never returns inf or 0 (what the
// LSTM gates want); an activation must instead behave as std::exp / std::expm1 do: e^x overflows to inf
// above ln(max) (88.72 in float32, 709.78 in float64), goes to 0 below the smallest
// subnormal, is NaN for NaN, and e^x - 1 keeps its relative accuracy near 0 (ELU, float64 tanh).
//
// Both are common/simd.h's exponential (exp_parts: reduction, polynomial and 2^n) over the full
// range [lowest, highest], past which e^x is already inf or 0 in T; e^x - 1 combines the parts
// as 2^n q + (2^n - 1).
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

// e^x: inf above the overflow point, 0 (or a subnormal) below the underflow point, NaN for NaN.
template <class T>
static inline __attribute__((always_inline)) typename Simd<T>::V exp_full(typename Simd<T>::V x) {
    return exp_clamped_to<T>(x, FloatBits<T>::lowest, FloatBits<T>::highest);
}

// e^x - 1, accurate near 0: -1 for x -> -inf, inf above the overflow point, NaN for NaN, and
// -0 for -0.
template <class T>
static inline __attribute__((always_inline)) typename Simd<T>::V expm1_full(typename Simd<T>::V x) {
    const ExpParts<typename Simd<T>::V> e =
        exp_parts<T>(x, FloatBits<T>::lowest, FloatBits<T>::highest);
    const typename Simd<T>::V scale = e.scale_low * e.scale_high;
    const typename Simd<T>::V y = fma<T>(scale, e.p * e.r, scale - T(1));
    return x != T(0) ? y : x;  // -0 stays -0; NaN gives NaN through q
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
