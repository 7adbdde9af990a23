// The kernel table: every C++ kernel's signature, once. Each ISA translation unit
// (kernels_generic.cpp, kernels_avx2.cpp, kernels_avx512.cpp) compiles the same kernel sources
// in its own namespace and fills one table; isa.cpp picks the table at run time.
//
// Shapes arrive already validated by pyconv/_spec.py and re-checked against the buffers in
// bindings.cpp, so kernels trust them. All sizes and offsets are int64_t. ConvShape and
// PoolShape carry the fields of pyconv/_spec.py's ConvGeom and PoolGeom under the same names;
// bindings.cpp copies them by name, so neither side depends on the other's field order.
#pragma once

#include <cstdint>
#include <memory>

namespace pyconv {

// A convolution's filters transformed once for many calls with the same weights (an inference
// graph's): made by conv2d_prepare, read by conv2d. Each ISA's kernels derive their own type
// from it, so filters prepared under one ISA are not recognised, and simply recomputed, by
// another.
struct PreparedFilters {
    virtual ~PreparedFilters() = default;
};

// The activation a batch normalisation applies to its output in the same pass (a network's
// BatchNorm -> ReLU / LeakyReLU pair), with the bits of the separate activation kernels.
enum class NormActivation : int { none = 0, relu = 1, leaky_relu = 2 };

// Direct convolution geometry: input (N,C,H,W), weight (K,C/groups,R,S), output (N,K,Ho,Wo).
// Only the top/left padding enters index arithmetic; bottom/right padding is implied by Ho/Wo.
// Transpose convolution is described by the geometry of the direct convolution it inverts.
struct ConvShape {
    int64_t N, C, H, W, K, R, S, Ho, Wo, sh, sw, ph, pw, dh, dw, groups;
    int64_t algorithm = 0;  // a ConvAlgorithm
};

// The algorithm a caller asks for (pyconv._spec's CONV_ALGORITHMS, in this order): automatic
// picks by shape (conv/dispatch.h); winograd runs forward passes, input gradients and weight
// gradients; direct and gemm every pass.
enum ConvAlgorithm : int64_t { conv_auto = 0, conv_gemm = 1, conv_winograd = 2, conv_direct = 3 };

// Pooling geometry: input (N,C,H,W) -> output (N,C,Ho,Wo), window kh x kw.
struct PoolShape {
    int64_t N, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw;
};

// LSTM sizes: x (T,B,I), h and c (B,H), w_ih (4H,I), w_hh (4H,H), biases (4H,). A cell is the
// sequence with T = 1.
struct LstmShape {
    int64_t T, B, I, H;
};

// An LSTM's parameters; either bias may be nullptr.
template <class T>
struct LstmWeights {
    const T *w_ih, *w_hh, *b_ih, *b_hh;
};

// The packed GEMM's register tile (MR x NR) and compile-time cache blocks (gemm/tile.h); the
// blocks it runs with are chosen at run time (gemm/blocking.h).
struct GemmTileShape {
    int mr, nr;
    int64_t kc, mc, nc;
};

template <class T>
struct KernelsFor {
    GemmTileShape gemm_tile;
    // y (N,C,Ho,Wo); idx (N,C,Ho,Wo) flat offsets into each H*W plane, or nullptr.
    void (*max_pool2d)(const PoolShape&, const T* x, T* y, int64_t* idx, bool relu);
    // grad_x (planes, in_plane) = scatter-add of grad_y (planes, out_plane) at idx. The two
    // scatters skip indices out of range and return how many they skipped.
    int64_t (*max_pool2d_backward)(int64_t planes, int64_t out_plane, int64_t in_plane,
                                const T* grad_y, const int64_t* idx, T* grad_x);
    // divisor_override 0 = none.
    void (*avg_pool2d)(const PoolShape&, bool count_include_pad, int64_t divisor_override,
                       const T* x, T* y);
    void (*avg_pool2d_backward)(const PoolShape&, bool count_include_pad,
                                int64_t divisor_override, const T* grad_y, T* grad_x);
    // y (planes, out_plane) = 0, then y[idx] = x (the last of repeated indices wins).
    int64_t (*max_unpool2d)(int64_t planes, int64_t in_plane, int64_t out_plane, const T* x,
                         const int64_t* idx, T* y);

    // out (T,B,H); h_T, c_T (B,H); h_T may be nullptr (a cell's h is out itself).
    // To keep the forward for the backward, saved_gates (T,B,lstm_gate_columns(H)) receives
    // the activated gates in the kernels' own layout and saved_cells (T,B,H) c_1..c_T; both
    // nullptr (nothing kept) or both set.
    void (*lstm)(const LstmShape&, const T* x, const T* h0, const T* c0, LstmWeights<T> w,
                 T* out, T* h_T, T* c_T, T* saved_gates, T* saved_cells);
    // Width of the saved gates' rows for H hidden units (4H rounded up to whole blocks).
    int64_t (*lstm_gate_columns)(int64_t H);
    // Backpropagation through time. grad_out (T,B,H), grad_hT, grad_cT (B,H) may be nullptr
    // (zero). grad_b is the gradient of each bias (both are the same), nullptr to skip it.
    // saved_gates as from lstm, saved_hs and saved_cs (T+1,B,H) = h_0..h_T and c_0..c_T: the
    // forward of the same inputs, or all nullptr to run the forward again. gate_grads: where
    // the gate gradients go, nullptr for a buffer of the kernel's own, or saved_gates itself
    // when the caller is done with the saved forward: the backward then writes over the gates
    // (no second buffer of that size to bring into the caches).
    void (*lstm_backward)(const LstmShape&, const T* grad_out, const T* grad_hT,
                          const T* grad_cT, const T* x, const T* h0, const T* c0,
                          LstmWeights<T> w, T* grad_x, T* grad_h0, T* grad_c0, T* grad_w_ih,
                          T* grad_w_hh, T* grad_b, const T* saved_gates, const T* saved_hs,
                          const T* saved_cs, T* gate_grads);

    // iou (n, m) of boxes a (n,4) and b (m,4) as (x1, y1, x2, y2).
    void (*box_iou)(const T* a, int64_t n, const T* b, int64_t m, T* iou);
    // Greedy NMS; writes the kept indices (by decreasing score) to keep (room for n) and
    // returns how many. category may be nullptr (one category): boxes of different
    // categories never suppress each other.
    int64_t (*nms)(const T* boxes, const T* scores, const int64_t* category, int64_t n,
                   double iou_threshold, int64_t* keep);
    // Soft-NMS (gaussian, else linear decay): writes the picked indices and their scores at
    // the pick to keep and kept_scores (room for n each) and returns how many.
    int64_t (*soft_nms)(const T* boxes, const T* scores, int64_t n, double sigma,
                        double iou_threshold, double score_threshold, bool gaussian,
                        int64_t* keep, T* kept_scores);
    // Greedy NMS on the distance-IoU; as nms without categories.
    int64_t (*diou_nms)(const T* boxes, const T* scores, int64_t n, double iou_threshold,
                        int64_t* keep);
    // Matrix NMS within each label: out (n,) = every box's decayed score, in input order.
    void (*matrix_nms)(const T* boxes, const T* scores, const int64_t* labels, int64_t n,
                       bool gaussian, double sigma, T* out);

    // Row-major C (M x N) = A (M x K) B (K x N), or C += A B when accumulate.
    void (*gemm)(int64_t M, int64_t N, int64_t K, const T* a, const T* b, T* c, bool accumulate);
    // C (M x N) (+)= op(A) op(B): A stored (M, K), or (K, M) when trans_a; B stored (K, N), or
    // (N, K) when trans_b.
    void (*matmul)(int64_t M, int64_t N, int64_t K, const T* a, bool trans_a, const T* b,
                   bool trans_b, T* c, bool accumulate);
    // Embedding rows (dense/embedding.h): out (n, dim) = weight[index], and grad_weight
    // (rows, dim) = the gradient rows summed by index, row padding_idx (if >= 0) zero. Both
    // return how many indices lay outside [0, rows) (skipped).
    int64_t (*embedding)(int64_t n, int64_t dim, int64_t rows, const T* weight, const int64_t* index, T* out);
    int64_t (*embedding_backward)(int64_t n, int64_t dim, int64_t rows, const int64_t* index,
                                  const T* grad_out, int64_t padding_idx, T* grad_weight);
    // One Elman RNN step, y (B, H) = act(x w_ih^T + b_ih + h w_hh^T + b_hh) (act tanh, else
    // ReLU; biases may be nullptr), and its gradients given grad_y and y (grad_b: nullptr when
    // not wanted).
    void (*rnn_cell)(int64_t B, int64_t I, int64_t H, const T* x, const T* h, const T* w_ih,
                     const T* w_hh, const T* b_ih, const T* b_hh, bool tanh, T* y);
    void (*rnn_cell_backward)(int64_t B, int64_t I, int64_t H, const T* grad_y, const T* x,
                              const T* h, const T* y, const T* w_ih, const T* w_hh, bool tanh,
                              T* grad_x, T* grad_h, T* grad_w_ih, T* grad_w_hh, T* grad_b);

    // Batch normalisation with batch statistics over x (N, C, L), then `act` (with its
    // negative slope, >= 0, for leaky_relu); w, b may be nullptr. mean, var (C,): the biased
    // statistics used.
    void (*batch_norm_forward)(int64_t N, int64_t C, int64_t L, const T* x, const T* w,
                               const T* b, double eps, NormActivation act, T slope, T* y,
                               T* mean, T* var);
    // Its gradients given the mean and invstd = 1/sqrt(var + eps), and (for an activation) the
    // forward's output y, from which the activation's gradient is taken; w may be nullptr.
    void (*batch_norm_backward)(int64_t N, int64_t C, int64_t L, const T* grad_y, const T* x,
                                const T* mean, const T* invstd, const T* w, NormActivation act,
                                T slope, const T* y, T* grad_x, T* grad_w, T* grad_b);

    // Softmax (log_softmax where `log`) over the rows of x (M, C), and its gradient given y.
    void (*softmax_forward)(int64_t M, int64_t C, const T* x, bool log, T* y);
    void (*softmax_backward)(int64_t M, int64_t C, const T* grad_y, const T* y, bool log,
                             T* grad_x);
    // Cross-entropy of the rows of x (N, C, P), row n P + p holding x[n, :, p] (classes last:
    // P = 1), against target (N P,) (entries in [0, C) or ignore_index), class weights (C,) or
    // nullptr, label smoothing eps: loss (N P,) and each row's lse (N P,).
    void (*cross_entropy_forward)(int64_t N, int64_t C, int64_t P, const T* x, const int64_t* target,
                                  const T* weight, int64_t ignore_index, double eps, T* loss,
                                  T* lse);
    void (*cross_entropy_backward)(int64_t N, int64_t C, int64_t P, const T* grad_loss, const T* x,
                                   const int64_t* target, const T* weight, const T* lse,
                                   int64_t ignore_index, double eps, T* grad_x);
    // Binary cross-entropy of logits x (M, C) against target (M, C); pos_weight (C,) or nullptr.
    void (*bce_with_logits_forward)(int64_t M, int64_t C, const T* x, const T* target,
                                    const T* pos_weight, T* loss);
    void (*bce_with_logits_backward)(int64_t M, int64_t C, const T* grad_y, const T* x,
                                     const T* target, const T* pos_weight, T* grad_x);
    // Optimiser steps over `count` tensors of sizes[k] elements, in place on the parameters
    // and state buffers (bufs nullptr for SGD without momentum).
    void (*sgd_step)(int64_t count, const int64_t* sizes, T* const* params,
                     const T* const* grads, T* const* bufs, double lr, double momentum,
                     double dampening, bool nesterov, double weight_decay, bool first_step);
    void (*adam_step)(int64_t count, const int64_t* sizes, T* const* params,
                      const T* const* grads, T* const* exp_avgs, T* const* exp_avg_sqs,
                      int64_t step, double lr, double beta1, double beta2, double eps,
                      double weight_decay, bool decoupled_weight_decay);
    // Convolution: x (N,C,H,W), w (K,C/groups,R,S), y (N,K,Ho,Wo); b (K,) or nullptr.
    // y = conv(x, w) + b, then + residual (unless null), then relu (if asked). `prepared`
    // (or nullptr): conv2d_prepare's result for these weights, used where it fits the shape.
    void (*conv2d)(const ConvShape&, const T* x, const T* w, const T* b, T* y, const T* residual, bool relu,
                   const PreparedFilters* prepared);
    // w as the algorithm conv2d runs for the shape transforms or packs it on every call, or
    // nullptr where it keeps nothing (Winograd F(4x4, 3x3) and the channel-vectorised forward
    // keep theirs).
    std::shared_ptr<const PreparedFilters> (*conv2d_prepare)(const ConvShape&, const T* w);
    // The name of the algorithm conv2d runs, with filters from conv2d_prepare or without.
    const char* (*conv2d_algorithm)(const ConvShape&, bool filters_prepared);
    // `prepared` (or nullptr): conv2d_grad_input_prepare's result for these weights. Then, as
    // a transposed convolution's forward, bias[c] (C,) added to grad_x's channel c (bias:
    // nullptr for none) and relu applied if asked.
    void (*conv2d_grad_input)(const ConvShape&, const T* grad_y, const T* w, T* grad_x, const T* bias, bool relu,
                              const PreparedFilters* prepared);
    // w as conv2d_grad_input packs it on every call (a transposed convolution's constant
    // weights), or nullptr where its algorithm keeps nothing (the channels-last form keeps its
    // tap panels).
    std::shared_ptr<const PreparedFilters> (*conv2d_grad_input_prepare)(const ConvShape&, const T* w);
    void (*conv2d_grad_weight)(const ConvShape&, const T* grad_y, const T* x, T* grad_w);
    // grad_b[k] = sum over n and the plane of grad_y (N, K, plane).
    void (*conv2d_grad_bias)(int64_t N, int64_t K, int64_t plane, const T* grad_y, T* grad_b);

    // Elementwise over n contiguous elements.
    void (*relu)(int64_t n, const T* x, T* y);
    void (*add_relu)(int64_t n, const T* a, const T* b, T* y);  // y = relu(a + b)
    void (*relu_backward)(int64_t n, const T* grad_y, const T* y, T* grad_x);
    void (*leaky_relu)(int64_t n, const T* x, T negative_slope, T* y);
    void (*leaky_relu_backward)(int64_t n, const T* grad_y, const T* x, T negative_slope,
                                T* grad_x);
    void (*elu)(int64_t n, const T* x, T alpha, T* y);
    void (*elu_backward)(int64_t n, const T* grad_y, const T* x, T alpha, T* grad_x);
    void (*sigmoid)(int64_t n, const T* x, T* y);
    void (*sigmoid_backward)(int64_t n, const T* grad_y, const T* y, T* grad_x);
    void (*tanh)(int64_t n, const T* x, T* y);
    void (*tanh_backward)(int64_t n, const T* grad_y, const T* y, T* grad_x);
    // y = a + b, IEEE (subnormals kept); y may be a or b.
    void (*add)(int64_t n, const T* a, const T* b, T* y);
    // tanh(a) sigmoid(b) for x = [a, b]: x (outer, 2, inner), y (outer, inner).
    void (*gated_tanh)(int64_t outer, int64_t inner, const T* x, T* y);
    void (*gated_tanh_backward)(int64_t outer, int64_t inner, const T* grad_y, const T* x, T* grad_x);
    // x (N, C, inner); w (w_size,) with w_size C or 1 (one slope for every channel).
    void (*prelu)(int64_t N, int64_t C, int64_t inner, const T* x, const T* w, int64_t w_size,
                  T* y);
    void (*prelu_backward)(int64_t N, int64_t C, int64_t inner, const T* grad_y, const T* x,
                           const T* w, int64_t w_size, T* grad_x, T* grad_w);
    // mask (n,) of 0 / 1; keep_threshold in [0, 2^24] (elementwise/dropout.h).
    void (*dropout)(int64_t n, const T* x, uint64_t seed, uint32_t keep_threshold, T scale, T* y,
                    uint8_t* mask);
    void (*dropout_backward)(int64_t n, const T* grad_y, const uint8_t* mask, T scale, T* grad_x);

    // Rotated boxes (n,5) as (cx, cy, w, h, angle in degrees): iou (n, m), and greedy NMS
    // writing the kept indices to keep (room for n), returning how many.
    void (*box_iou_rotated)(const T* a, int64_t n, const T* b, int64_t m, T* iou);
    int64_t (*nms_rotated)(const T* boxes, const T* scores, int64_t n, double iou_threshold,
                           int64_t* keep);
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

int num_threads();                 // threads every kernel uses (common/thread_pool.h)
void set_num_threads(int n);

}  // namespace pyconv
