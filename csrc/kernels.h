// The kernel table: every C++ kernel's signature, once. Each ISA translation unit
// (kernels_generic.cpp, kernels_avx2.cpp, kernels_avx512.cpp) compiles the same kernel sources
// in its own namespace and fills one table; isa.cpp picks the table at run time.
//
// Shapes arrive already validated by pyconv/_spec.py and re-checked against the buffers in
// bindings.cpp, so kernels trust them. All sizes and offsets are int64_t.
#pragma once

#include <cstdint>

namespace pyconv {

// Direct convolution geometry: input (N,C,H,W), weight (K,C/groups,R,S), output (N,K,Ho,Wo).
// Only the top/left padding enters index arithmetic; bottom/right padding is implied by Ho/Wo.
// Transpose convolution is described by the geometry of the direct convolution it inverts.
struct ConvShape {
    int64_t N, C, H, W, K, R, S, Ho, Wo, sh, sw, ph, pw, dh, dw, groups;
};

// Pooling geometry: input (N,C,H,W) -> output (N,C,Ho,Wo), window kh x kw.
struct PoolShape {
    int64_t N, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw;
};

template <class T>
struct KernelsFor {
    // y (N,C,Ho,Wo); idx (N,C,Ho,Wo) flat offsets into each H*W plane, or nullptr.
    void (*max_pool2d)(const PoolShape&, const T* x, T* y, int64_t* idx);

    // Row-major C (M x N) = A (M x K) B (K x N), or C += A B when accumulate.
    void (*gemm)(int64_t M, int64_t N, int64_t K, const T* a, const T* b, T* c, bool accumulate);
    // Convolution: x (N,C,H,W), w (K,C/groups,R,S), y (N,K,Ho,Wo); b (K,) or nullptr.
    void (*conv2d)(const ConvShape&, const T* x, const T* w, const T* b, T* y);
    void (*conv2d_grad_input)(const ConvShape&, const T* grad_y, const T* w, T* grad_x);
    void (*conv2d_grad_weight)(const ConvShape&, const T* grad_y, const T* x, T* grad_w);
    // grad_b[k] = sum over n and the plane of grad_y (N, K, plane).
    void (*conv2d_grad_bias)(int64_t N, int64_t K, int64_t plane, const T* grad_y, T* grad_b);
};

struct KernelTable {
    const char* isa;
    KernelsFor<float> f32;
    KernelsFor<double> f64;
};

extern const KernelTable table_generic, table_avx2, table_avx512;

enum class Isa : int { generic = 0, avx2 = 1, avx512 = 2 };

Isa best_supported_isa();          // what this CPU can run
Isa active_isa();                  // what kernels() dispatches to
void set_active_isa(Isa isa);      // throws std::invalid_argument above best_supported_isa()
const char* isa_name(Isa isa);
const KernelTable& active_table();

template <class T>
const KernelsFor<T>& kernels() {
    if constexpr (sizeof(T) == 4) return active_table().f32;
    else return active_table().f64;
}

int num_threads();                 // OpenMP threads every kernel uses
void set_num_threads(int n);

}  // namespace pyconv
