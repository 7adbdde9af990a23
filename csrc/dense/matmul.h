// Matrix products with either operand transposed, on the packed GEMM: a dense layer's forward
// x W^T and its gradients g W and g^T x, each read where it lies rather than copied into a
// transposed array first (the transposed operand is packed by its own source, see
// gemm/operands.h).
#pragma once

#include "common/prelude.h"
#include "gemm/driver.h"

namespace pyconv {
namespace PYCONV_ISA {

// C (M x N, row-major) = op(A) op(B), or C += op(A) op(B) when accumulate; op(A) is M x K and
// op(B) K x N. A is stored row-major as (M, K), or as (K, M) when trans_a; B as (K, N), or as
// (N, K) when trans_b.
template <class T>
void matmul(int64_t M, int64_t N, int64_t K, const T* a, bool trans_a, const T* b, bool trans_b,
            T* c, bool accumulate) {
    const Store mode = accumulate ? Store::accumulate : Store::overwrite;
    const OutMatrix<T> C = OutMatrix<T>::plain(c, N, N);
    auto times_b = [&](const auto& A) {
        if (trans_b)
            gemm_parallel<T>(M, N, K, A, columns_b<T>([b, K](int64_t j) { return b + j * K; }), C,
                             mode);
        else
            gemm_parallel<T>(M, N, K, A, InMatrixB<T>::plain(b, N, N), C, mode);
    };
    if (trans_a) times_b(InMatrixAT<T>{a, M});
    else times_b(InMatrixA<T>::plain(a, K, K));
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
