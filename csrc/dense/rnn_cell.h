// One Elman RNN step and its gradients, as torch.nn.RNNCell:
//
//   h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh)        x (B, I), h (B, H), act tanh or ReLU
//
// A recurrent network runs this once per time step on small matrices (32 x 128 in a char-RNN),
// where each product takes a few microseconds: as one kernel the step's two products, biases
// and activation (and the backward's four products and bias sum) cross from Python once, not
// once per piece.
#pragma once

#include "common/prelude.h"
#include "common/scratch.h"
#include "dense/matmul.h"
#include "elementwise/activation.h"

namespace pyconv {
namespace PYCONV_ISA {

// y (B, H) = act(x w_ih^T + h w_hh^T + b_ih + b_hh); either bias may be nullptr. The rows of
// y start as the summed biases, the products are added to them, and the activation runs over
// y in place.
template <class T>
void rnn_cell(int64_t B, int64_t I, int64_t H, const T* x, const T* h, const T* w_ih, const T* w_hh,
              const T* b_ih, const T* b_hh, bool tanh, T* y) {
    for (int64_t j = 0; j < H; ++j) y[j] = (b_ih ? b_ih[j] : T(0)) + (b_hh ? b_hh[j] : T(0));
    for (int64_t b = 1; b < B; ++b) std::copy(y, y + H, y + b * H);
    matmul<T>(B, H, I, x, false, w_ih, true, y, true);
    matmul<T>(B, H, H, h, false, w_hh, true, y, true);
    if (tanh) tanh_forward<T>(B * H, y, y);
    else relu<T>(B * H, y, y);
}

// The gradients of rnn_cell given grad_y (B, H) and its output y: the pre-activation's gradient
// dz = grad_y act'(y) (tanh' = 1 - y^2; ReLU' = 1 where y > 0), then
//   grad_x = dz w_ih, grad_h = dz w_hh, grad_w_ih = dz^T x, grad_w_hh = dz^T h,
//   grad_b = the column sums of dz (nullptr: not wanted), summed over the rows in order.
template <class T>
void rnn_cell_backward(int64_t B, int64_t I, int64_t H, const T* grad_y, const T* x, const T* h,
                       const T* y, const T* w_ih, const T* w_hh, bool tanh, T* grad_x, T* grad_h,
                       T* grad_w_ih, T* grad_w_hh, T* grad_b) {
    Scratch<T> dz_buffer = scratch<T>(B * H);
    T* dz = dz_buffer.get();
    if (tanh) tanh_backward<T>(B * H, grad_y, y, dz);
    else relu_backward<T>(B * H, grad_y, y, dz);
    matmul<T>(B, I, H, dz, false, w_ih, false, grad_x, false);
    matmul<T>(B, H, H, dz, false, w_hh, false, grad_h, false);
    matmul<T>(H, I, B, dz, true, x, false, grad_w_ih, false);
    matmul<T>(H, H, B, dz, true, h, false, grad_w_hh, false);
    if (grad_b == nullptr) return;
    std::copy(dz, dz + H, grad_b);
    for (int64_t b = 1; b < B; ++b)
        for (int64_t j = 0; j < H; ++j) grad_b[j] += dz[b * H + j];
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
