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

// Room for `count` elements (a size computed with checked arithmetic, so never negative). Throws
// OutOfMemory, which names the size, when the allocation fails.
template <class T>
Scratch<T> scratch(int64_t count) {
    if (count < 0) throw std::length_error("negative scratch size " + std::to_string(count));
    const int64_t bytes = checked_add(checked_mul(std::max<int64_t>(count, 1), int64_t(sizeof(T))), 63) / 64 * 64;
    void* p = std::aligned_alloc(64, static_cast<size_t>(bytes));
    if (p == nullptr) throw OutOfMemory(bytes);
    return Scratch<T>(static_cast<T*>(p));
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
