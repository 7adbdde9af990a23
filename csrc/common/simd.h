// Portable SIMD vectors for one ISA build, written with GCC's vector extensions: arithmetic,
// comparisons (which yield lane masks), `mask ? a : b` blends and __builtin_shuffle compile to
// AVX-512, AVX2 or SSE2 instructions depending on the target pragma of the including file.
#pragma once

#include "common/prelude.h"

namespace pyconv {
namespace PYCONV_ISA {

// Bytes per vector in this build: 16 floats / 8 doubles with AVX-512, 8 / 4 with AVX2, 4 / 2
// with SSE2.
constexpr int kVecBytes = PYCONV_ISA_LEVEL >= 2 ? 64 : PYCONV_ISA_LEVEL == 1 ? 32 : 16;

template <class T>
struct Simd {
    static constexpr int lanes = kVecBytes / int(sizeof(T));
    // Integer of the lane's width, so that index vectors line up with value vectors.
    using Int = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
    typedef T V __attribute__((vector_size(kVecBytes)));
    typedef Int I __attribute__((vector_size(kVecBytes)));
    // The same number of lanes as V, each an int64_t (to store indices).
    typedef int64_t I64 __attribute__((vector_size(lanes * 8)));

    static inline __attribute__((always_inline)) V load(const T* p) {
        V v;
        std::memcpy(&v, p, sizeof v);
        return v;
    }
    static inline __attribute__((always_inline)) void store(T* p, V v) {
        std::memcpy(p, &v, sizeof v);
    }
    static inline __attribute__((always_inline)) void store_index(int64_t* p, I v) {
        const I64 wide = __builtin_convertvector(v, I64);
        std::memcpy(p, &wide, sizeof wide);
    }
    // Lane 0 broadcast to every lane. (Not `V{} + v`: adding +0 is not a no-op for -0, so the
    // compiler would keep the add.)
    static inline __attribute__((always_inline)) V splat(T v) {
        const V r = {v};
        return __builtin_shuffle(r, I{});
    }
    static inline __attribute__((always_inline)) I splat_int(Int v) {
        const I r = {v};
        return __builtin_shuffle(r, I{});
    }
    // {0, 1, 2, ...}
    static inline __attribute__((always_inline)) I iota() {
        I v;
        for (int i = 0; i < lanes; ++i) v[i] = i;
        return v;
    }
    // The register vocabulary of the GEMM and convolution micro-kernels.
    using reg = V;
    static inline __attribute__((always_inline)) V zero() { return V{}; }
    static inline __attribute__((always_inline)) V broadcast(const T* p) { return splat(*p); }
    static inline __attribute__((always_inline)) V fma(V a, V b, V c);  // a*b + c, defined below
    static inline __attribute__((always_inline)) V add(V a, V b) { return a + b; }
    static inline __attribute__((always_inline)) T sum(V a) {
        T t = 0;
        for (int i = 0; i < lanes; ++i) t += a[i];
        return t;
    }
};

// a*b + c in one rounding (FMA instructions where the ISA has them).
template <class T>
static inline __attribute__((always_inline)) typename Simd<T>::V fma(typename Simd<T>::V a,
                                                                     typename Simd<T>::V b,
                                                                     typename Simd<T>::V c) {
#if PYCONV_ISA_LEVEL >= 2
    using V = typename Simd<T>::V;
    if constexpr (sizeof(T) == 4) return V(_mm512_fmadd_ps(__m512(a), __m512(b), __m512(c)));
    else return V(_mm512_fmadd_pd(__m512d(a), __m512d(b), __m512d(c)));
#elif PYCONV_ISA_LEVEL == 1
    using V = typename Simd<T>::V;
    if constexpr (sizeof(T) == 4) return V(_mm256_fmadd_ps(__m256(a), __m256(b), __m256(c)));
    else return V(_mm256_fmadd_pd(__m256d(a), __m256d(b), __m256d(c)));
#else
    return a * b + c;
#endif
}

template <class T>
inline typename Simd<T>::V Simd<T>::fma(V a, V b, V c) {
    return pyconv::PYCONV_ISA::fma<T>(a, b, c);
}

// e^x of every lane: x = n*ln2 + r with |r| <= ln2/2, e^r by its Taylor polynomial (degree 7
// for float, 12 for double: error below the type's rounding), 2^n built in the exponent bits.
// Inputs are clamped so that 2^n stays a normal number (e^x saturates, no inf/NaN for finite x).
template <class T>
static inline __attribute__((always_inline)) typename Simd<T>::V vexp(typename Simd<T>::V x) {
    using S = Simd<T>;
    using V = typename S::V;
    using I = typename S::I;
    constexpr bool f32 = sizeof(T) == 4;
    constexpr int mantissa_bits = f32 ? 23 : 52, bias = f32 ? 127 : 1023, degree = f32 ? 7 : 12;
    const T lo = f32 ? T(-87.0) : T(-708.0), hi = f32 ? T(88.0) : T(709.0);
    // Adding 1.5 * 2^mantissa_bits rounds to an integer held in the low mantissa bits.
    const T magic = T(1.5) * T(int64_t(1) << mantissa_bits);
    const T ln2_hi = f32 ? T(0.693359375) : T(0.693147180369123816490);
    const T ln2_lo = f32 ? T(-2.12194440e-4) : T(1.90821492927058770002e-10);
    x = x < lo ? S::splat(lo) : x;
    x = x > hi ? S::splat(hi) : x;
    const V t = x * T(1.4426950408889634) + magic;
    const V n = t - magic;
    const V r = (x - n * ln2_hi) - n * ln2_lo;
    // e^r = 1 + r(1 + r/2(1 + r/3(1 + ...))), evaluated from the innermost bracket out.
    V p = S::splat(T(1));
    for (int k = degree; k >= 1; --k) p = fma<T>(p, r * (T(1) / T(k)), S::splat(T(1)));
    const I n_int = I(t) - I(S::splat(magic));
    const V scale = V((n_int + bias) << mantissa_bits);
    return p * scale;
}

template <class T>
static inline __attribute__((always_inline)) typename Simd<T>::V vsigmoid(typename Simd<T>::V x) {
    return T(1) / (T(1) + vexp<T>(-x));
}

template <class T>
static inline __attribute__((always_inline)) typename Simd<T>::V vtanh(typename Simd<T>::V x) {
    return T(2) / (T(1) + vexp<T>(x * T(-2))) - T(1);
}

// Transposes a lanes x lanes block held in `rows` (rows[i][j] <-> rows[j][i]) in registers:
// log2(lanes) butterfly stages; stage d swaps the off-diagonal d x d blocks of every 2d x 2d
// block, two shuffles per pair of rows.
template <class T>
static inline __attribute__((always_inline)) void transpose_block(typename Simd<T>::V* rows) {
    using S = Simd<T>;
    using V = typename S::V;
    using I = typename S::I;
    constexpr int L = S::lanes;
#pragma GCC unroll 8
    for (int d = 1; d < L; d *= 2) {
        I top, bottom;  // row r takes b's left block, row r + d takes a's right block
        for (int j = 0; j < L; ++j) {
            top[j] = (j & d) ? L + j - d : j;
            bottom[j] = (j & d) ? L + j : j + d;
        }
#pragma GCC unroll 16
        for (int r = 0; r < L; ++r)
            if ((r & d) == 0) {
                const V a = rows[r], b = rows[r + d];
                rows[r] = __builtin_shuffle(a, b, top);
                rows[r + d] = __builtin_shuffle(a, b, bottom);
            }
    }
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
