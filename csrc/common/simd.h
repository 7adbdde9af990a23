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

// Simd<double>::lanes values of T from p, as doubles (exact from float).
template <class T>
static inline __attribute__((always_inline)) typename Simd<double>::V load_as_double(const T* p) {
    using D = typename Simd<double>::V;
#if PYCONV_ISA_LEVEL >= 2
    // (GCC 12 converts a vector extension's 8 floats in two halves, 4 instructions for this one:
    // a softmax gradient's sums in double ran 25% slower so.)
    if constexpr (std::is_same_v<T, float>) return D(_mm512_cvtps_pd(_mm256_loadu_ps(p)));
#endif
    typedef T Narrow __attribute__((vector_size(Simd<double>::lanes * sizeof(T))));
    Narrow v;
    std::memcpy(&v, p, sizeof v);
    return __builtin_convertvector(v, D);
}

// p[0 .. n-1] in the first n lanes (0 < n <= lanes), zeros in the others; reads nothing else.
template <class T>
static inline __attribute__((always_inline)) typename Simd<T>::V load_first(const T* p, int n) {
    using V = typename Simd<T>::V;
#if PYCONV_ISA_LEVEL >= 2
    if constexpr (sizeof(T) == 4) return V(_mm512_maskz_loadu_ps(__mmask16((1u << n) - 1), p));
    else return V(_mm512_maskz_loadu_pd(__mmask8((1u << n) - 1), p));
#elif PYCONV_ISA_LEVEL == 1
    using S = Simd<T>;
    const auto in = S::iota() < S::splat_int(typename S::Int(n));  // all-ones lanes below n
    if constexpr (sizeof(T) == 4) return V(_mm256_maskload_ps(p, __m256i(in)));
    else return V(_mm256_maskload_pd(p, __m256i(in)));
#else
    V v{};
    std::memcpy(&v, p, size_t(n) * sizeof(T));
    return v;
#endif
}

// The first n lanes (0 < n <= lanes) of v to p[0 .. n-1]; writes nothing else.
template <class T>
static inline __attribute__((always_inline)) void store_first(T* p, typename Simd<T>::V v, int n) {
#if PYCONV_ISA_LEVEL >= 2
    if constexpr (sizeof(T) == 4) _mm512_mask_storeu_ps(p, __mmask16((1u << n) - 1), __m512(v));
    else _mm512_mask_storeu_pd(p, __mmask8((1u << n) - 1), __m512d(v));
#elif PYCONV_ISA_LEVEL == 1
    using S = Simd<T>;
    const auto in = S::iota() < S::splat_int(typename S::Int(n));
    if constexpr (sizeof(T) == 4) _mm256_maskstore_ps(p, __m256i(in), __m256(v));
    else _mm256_maskstore_pd(p, __m256i(in), __m256d(v));
#else
    std::memcpy(p, &v, size_t(n) * sizeof(T));
#endif
}

// Copies n elements from src to dst with non-temporal (streaming) 16-byte stores wherever dst
// is aligned for them. Streamed lines go to memory without first being read into the cache (the
// read-for-ownership of a normal store): for output that would not stay in cache anyway. SSE2
// stores, so every ISA build has them. Needs an _mm_sfence() before other threads read dst.
template <class T>
static void stream_copy(const T* src, T* dst, int64_t n) {
    constexpr int64_t per = 16 / sizeof(T);
    int64_t i = 0;
    for (; i < n && reinterpret_cast<uintptr_t>(dst + i) % 16 != 0; ++i) dst[i] = src[i];
    for (; i + per <= n; i += per) {
        if constexpr (std::is_same_v<T, float>) _mm_stream_ps(dst + i, _mm_loadu_ps(src + i));
        else _mm_stream_pd(dst + i, _mm_loadu_pd(src + i));
    }
    for (; i < n; ++i) dst[i] = src[i];
}

// Short copies and fills in whole vectors, as loops (a library call costs as much as the copy
// for the few dozen elements of an image row). GCC would turn the loops back into memcpy and
// memset calls (7% of a segmentation's cross-entropy gradient went to those calls); the
// attribute that stops it also stops their inlining, so they are calls to these small loops.
// (PYCONV_KEEP_LOOPS: for any function whose copy loops must stay loops.)
#define PYCONV_KEEP_LOOPS __attribute__((optimize("no-tree-loop-distribute-patterns")))
template <class T>
PYCONV_KEEP_LOOPS static inline void copy_run(const T* src, int64_t n, T* dst) {
    using S = Simd<T>;
    int64_t e = 0;
    for (; e + S::lanes <= n; e += S::lanes) S::store(dst + e, S::load(src + e));
    for (; e < n; ++e) dst[e] = src[e];
}
template <class T>
PYCONV_KEEP_LOOPS static inline void zero_run(int64_t n, T* dst) {
    using S = Simd<T>;
    int64_t e = 0;
    for (; e + S::lanes <= n; e += S::lanes) S::store(dst + e, S::zero());
    for (; e < n; ++e) dst[e] = T(0);
}

// The one exponential algorithm of the library, written once for a scalar T (loops that
// `#pragma omp simd` vectorises: elementwise/vector_math.h) and for a vector Simd<T>::V
// (elementwise/exp.h, the LSTM gates below): the same steps, only arithmetic, selects and
// integer bit operations, so neither shape has a branch or a call.
//
// x = n ln2 + r, |r| <= ln2/2: n rounded to nearest by adding 1.5 * 2^mantissa, r by Cody
// and Waite's two-constant subtraction (n * ln2_hi is exact for every n of the range);
//   q = e^r - 1 = r (1 + r/2! + r^2/3! + ...)   (Taylor, degree 8 in float, 14 in double: the
//                                                truncation error is below a tenth of an ulp of
//                                                q on |r| <= ln2/2)
//   e^x = 2^n (1 + q),   e^x - 1 = 2^n q + (2^n - 1).
// 2^n is built in the exponent bits as two factors 2^(n/2) 2^(n - n/2), each a normal number
// for every n of the clamped range, so that their product rounds to inf, a subnormal or 0
// exactly as the true result does.
template <class T>
struct FloatBits {
    static constexpr bool f32 = sizeof(T) == 4;
    using Int = std::conditional_t<f32, int32_t, int64_t>;
    static constexpr int mantissa = f32 ? 23 : 52, bias = f32 ? 127 : 1023;
    // 1.5 * 2^mantissa: adding it rounds to an integer held in the low mantissa bits.
    static constexpr T shifter = T(1.5) * T(int64_t(1) << mantissa);
    // ln2 split so that n * ln2_hi is exact (few bits) for every n of the range.
    static constexpr T ln2_hi = f32 ? T(0.693359375) : T(0.693147180369123816490);
    static constexpr T ln2_lo = f32 ? T(-2.12194440e-4) : T(1.90821492927058770002e-10);
    // e^x is 0 below lowest and inf above highest; within them n stays in
    // [-2 bias - mantissa, 2 bias + 2], what the two factors of 2^n can scale.
    static constexpr T lowest = f32 ? T(-104.0) : T(-746.0), highest = f32 ? T(89.0) : T(710.0);
    static constexpr int exp_degree = f32 ? 8 : 14;
};

// The value type V is T itself (scalar shape) or Simd<T>::V (vector shape).
template <class T, class V>
static inline __attribute__((always_inline)) V broadcast(T v) {
    if constexpr (std::is_same_v<V, T>) return v;
    else return Simd<T>::splat(v);
}

// a*b + c: one rounding on the vector shape; on the scalar shape whatever the loop's ISA makes
// of it (a libm fma call would stop the vectoriser on builds without FMA instructions).
template <class T, class V>
static inline __attribute__((always_inline)) V mul_add(V a, V b, V c) {
    if constexpr (std::is_same_v<V, T>) return a * b + c;
    else return fma<T>(a, b, c);
}

template <class To, class From>
static inline __attribute__((always_inline)) To same_bits(From v) {
    static_assert(sizeof(To) == sizeof(From));
    To out;
    std::memcpy(&out, &v, sizeof out);
    return out;
}

// 1/k! for k = 0 .. degree, each rounded once to T.
template <class T>
struct ExpCoefficients {
    T inverse_factorial[FloatBits<T>::exp_degree + 1] = {};
    constexpr ExpCoefficients() {
        double factorial = 1;  // exact up to 18!
        for (int k = 0; k <= FloatBits<T>::exp_degree; ++k) {
            factorial *= k > 0 ? k : 1;
            inverse_factorial[k] = T(1.0 / factorial);
        }
    }
};

// e^x = 2^n (1 + p r) for x within [lowest, highest] of FloatBits<T>.
template <class V, class I>
struct ExpReduction {
    V r;    // the reduced argument, x - n ln2
    V p;    // (e^r - 1) / r
    I n;    // round(x / ln2)
};

template <class T, class V>
static inline __attribute__((always_inline)) auto exp_reduction(V x) {
    using B = FloatBits<T>;
    using I = std::conditional_t<std::is_same_v<V, T>, typename B::Int, typename Simd<T>::I>;
    const V t = x * T(1.4426950408889634) + B::shifter;
    const V n = t - B::shifter;
    ExpReduction<V, I> out;
    out.r = mul_add<T>(n, broadcast<T, V>(-B::ln2_lo), mul_add<T>(n, broadcast<T, V>(-B::ln2_hi), x));
    constexpr ExpCoefficients<T> c{};
    V p = broadcast<T, V>(c.inverse_factorial[B::exp_degree]);
#pragma GCC unroll 16
    for (int k = B::exp_degree - 1; k >= 1; --k)
        p = mul_add<T>(p, out.r, broadcast<T, V>(c.inverse_factorial[k]));
    out.p = p;
    out.n = same_bits<I>(t) - same_bits<I>(broadcast<T, V>(B::shifter));
    return out;
}

// 2^n for integers n that give a normal number.
template <class T, class V, class I>
static inline __attribute__((always_inline)) V exp2_normal(I n) {
    using B = FloatBits<T>;
    return same_bits<V>((n + B::bias) << B::mantissa);
}

template <class V>
struct ExpParts {
    V r;           // the reduced argument
    V p;           // (e^r - 1) / r
    V scale_low;   // 2^(n/2)
    V scale_high;  // 2^(n - n/2)
};

// x clamped into [lo, hi]; NaN compares false and passes.
template <class T, class V>
static inline __attribute__((always_inline)) V clamp_keeping_nan(V x, T lo, T hi) {
    x = x < lo ? broadcast<T, V>(lo) : x;
    return x > hi ? broadcast<T, V>(hi) : x;
}

// The reduction, the polynomial and 2^n for x clamped into [lo, hi] (a sub-range of
// [lowest, highest]).
template <class T, class V>
static inline __attribute__((always_inline)) ExpParts<V> exp_parts(V x, T lo, T hi) {
    // A NaN gives NaN q (its integer steps wrap harmlessly).
    const auto e = exp_reduction<T>(clamp_keeping_nan<T>(x, lo, hi));
    ExpParts<V> out;
    out.r = e.r;
    out.p = e.p;
    const auto half = e.n >> 1;  // floor(n / 2): both factors stay normal numbers
    out.scale_low = exp2_normal<T, V>(half);
    out.scale_high = exp2_normal<T, V>(e.n - half);
    return out;
}

// e^x with x clamped into [lo, hi] first, NaN for NaN.
template <class T, class V>
static inline __attribute__((always_inline)) V exp_clamped_to(V x, T lo, T hi) {
    const ExpParts<V> e = exp_parts<T, V>(x, lo, hi);
    // e^r = 1 + p r in one rounding; the two scalings are exact unless the result overflows or
    // is subnormal.
    return (mul_add<T>(e.p, e.r, broadcast<T, V>(T(1))) * e.scale_low) * e.scale_high;
}

// e^x of every lane, with the input clamped so that the result is never inf or 0 (finite
// inputs give finite, nonzero gates): what the LSTM gates rely on. The clamp keeps 2^n
// normal (n within [-126, 127] for float, [-1021, 1023] for double), so one scaling is exact
// where exp_clamped_to needs two.
template <class T>
static inline __attribute__((always_inline)) typename Simd<T>::V vexp_clamped(typename Simd<T>::V x) {
    using V = typename Simd<T>::V;
    constexpr bool f32 = sizeof(T) == 4;
    const auto e = exp_reduction<T>(clamp_keeping_nan<T>(x, f32 ? T(-87.0) : T(-708.0), f32 ? T(88.0) : T(709.0)));
    return mul_add<T>(e.p, e.r, broadcast<T, V>(T(1))) * exp2_normal<T, V>(e.n);
}

// 1 / d for d >= 1 (the sigmoid's and tanh's denominators), within 2 ulp for float: the
// hardware's reciprocal estimate (14 bits with AVX-512, 12 with AVX2) and one Newton step,
// which doubles the bits. A vector division holds the divider for ~10 cycles; an LSTM cell
// divides five times per vector of units (its update 14% -> 12% of the forward without them).
template <class T>
static inline __attribute__((always_inline)) typename Simd<T>::V reciprocal(typename Simd<T>::V d) {
#if PYCONV_ISA_LEVEL >= 1
    using V = typename Simd<T>::V;
    if constexpr (sizeof(T) == 4) {
#if PYCONV_ISA_LEVEL >= 2
        const V r = V(_mm512_rcp14_ps(__m512(d)));
#else
        const V r = V(_mm256_rcp_ps(__m256(d)));
#endif
        return fma<T>(r, fma<T>(-d, r, broadcast<T, V>(T(1))), r);  // r + r (1 - d r)
    }
#endif
    return T(1) / d;
}

template <class T>
static inline __attribute__((always_inline)) typename Simd<T>::V vsigmoid(typename Simd<T>::V x) {
    return reciprocal<T>(T(1) + vexp_clamped<T>(-x));
}

template <class T>
static inline __attribute__((always_inline)) typename Simd<T>::V vtanh(typename Simd<T>::V x) {
    return T(2) * reciprocal<T>(T(1) + vexp_clamped<T>(x * T(-2))) - T(1);
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
