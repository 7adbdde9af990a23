// Size arithmetic that cannot wrap around: the products and sums that size a buffer or bound an
// index. A size that does not fit int64_t raises std::length_error (a ValueError in Python)
// instead of silently becoming a small number that a kernel would then write past.
//
// Included by common/prelude.h before any ISA target pragma, so these functions are compiled
// for the baseline ISA in every translation unit (they live in namespace pyconv, not in an
// ISA namespace).
#pragma once

#include <cstdint>
#include <cstdio>
#include <new>
#include <stdexcept>
#include <string>

namespace pyconv {

// a * b, or std::length_error when the product does not fit int64_t.
inline int64_t checked_mul(int64_t a, int64_t b) {
    int64_t r;
    if (__builtin_mul_overflow(a, b, &r))
        throw std::length_error("a size overflows 64-bit arithmetic (" + std::to_string(a) +
                                " * " + std::to_string(b) + ")");
    return r;
}

template <class... More>
inline int64_t checked_mul(int64_t a, int64_t b, int64_t c, More... more) {
    return checked_mul(checked_mul(a, b), c, more...);
}

// a + b, or std::length_error when the sum does not fit int64_t.
inline int64_t checked_add(int64_t a, int64_t b) {
    int64_t r;
    if (__builtin_add_overflow(a, b, &r))
        throw std::length_error("a size overflows 64-bit arithmetic (" + std::to_string(a) +
                                " + " + std::to_string(b) + ")");
    return r;
}

template <class... More>
inline int64_t checked_add(int64_t a, int64_t b, int64_t c, More... more) {
    return checked_add(checked_add(a, b), c, more...);
}

// A failed scratch allocation, with its size in the message (a MemoryError in Python).
class OutOfMemory : public std::bad_alloc {
public:
    explicit OutOfMemory(int64_t bytes) {
        std::snprintf(message_, sizeof message_, "cannot allocate %lld bytes of scratch memory",
                      static_cast<long long>(bytes));
    }
    const char* what() const noexcept override { return message_; }

private:
    char message_[80];
};

}  // namespace pyconv
