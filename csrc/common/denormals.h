// Flush-to-zero and denormals-are-zero for the kernels' arithmetic.
//
// x86 arithmetic on subnormal floats (magnitudes below 2^-126 in float32, 2^-1022 in float64)
// takes a slow microcode path, 10-100x slower per instruction: a convolution whose weights are
// subnormal would run that much slower than the same convolution with normal weights. With
// the MXCSR's FTZ and DAZ bits set, subnormal inputs are read as zero and subnormal results
// are written as zero, at full speed. The kernels set them for their own duration only, and
// restore every thread's MXCSR (exception flags included) as they found it.
#pragma once

#include "common/prelude.h"

namespace pyconv {
namespace PYCONV_ISA {

// Sets FTZ and DAZ in this thread's MXCSR for the object's lifetime. The bindings open one on
// the calling thread around every kernel, and kernels open one before they hand tasks to the
// thread pool, whose workers run every task with the caller's MXCSR (common/thread_pool.h)
// and restore their own after it.
class FlushDenormals {
public:
    FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | kFtzDaz); }
    FlushDenormals(const FlushDenormals&) = delete;
    FlushDenormals& operator=(const FlushDenormals&) = delete;
    ~FlushDenormals() { _mm_setcsr(saved_); }

private:
    static constexpr unsigned kFtzDaz = 0x8040;  // FTZ is bit 15, DAZ bit 6
    unsigned saved_;
};

}  // namespace PYCONV_ISA
}  // namespace pyconv
