// Scratch memory: 64-byte aligned, allocated once per call (per thread), freed on scope exit.
#pragma once

#include "common/prelude.h"

namespace pyconv {
namespace PYCONV_ISA {

struct AlignedFree {
    void operator()(void* p) const { std::free(p); }
};
template <class T>
using Scratch = std::unique_ptr<T[], AlignedFree>;

template <class T>
Scratch<T> scratch(int64_t count) {
    const size_t bytes = (static_cast<size_t>(std::max<int64_t>(count, 1)) * sizeof(T) + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, bytes);
    if (p == nullptr) throw std::bad_alloc();
    return Scratch<T>(static_cast<T*>(p));
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
