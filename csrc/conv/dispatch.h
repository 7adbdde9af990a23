// Which convolution algorithm runs for which shape: every rule in one place, then the three
// entry points of the kernel table that apply them.
//
// Notation (ConvShape): input x (N, C, H, W), weight w (K, Cg, R, S) with Cg = C / groups,
// output y (N, K, Ho, Wo), Kg = K / groups. Output (ho, wo) reads input row ho*sh - ph + r*dh
// and column wo*sw - pw + s*dw. As GEMMs, per group, with X the im2col matrix
// X[(c,r,s), (n,ho,wo)] (conv/im2col.h):
//   forward      y[k, (n,ho,wo)]  = sum_{(c,r,s)} w[k, (c,r,s)] X[(c,r,s), (n,ho,wo)]
//   grad weight  dw[k, (c,r,s)]   = sum_{(n,ho,wo)} dy[k, (n,ho,wo)] X[(c,r,s), (n,ho,wo)]
//   grad input   col[(c,r,s), (n,ho,wo)] = sum_k w[k, (c,r,s)] dy[k, (n,ho,wo)], added into
//                grad_x where it belongs (col2im); also the transpose convolution's forward.
//
// The algorithms, one header each:
//   conv/depthwise.h     one input channel per group: planes streamed along output rows, x in place
//   conv/direct.h        direct loops over zero-padded planes (grouped, few channels per group)
//   conv/direct_grid.h   forward: register tiles of channels x pixels read the phase grid in place
//   conv/direct_channels.h  forward: 16 output channels per vector x a block of pixels, x in place
//   conv/by_channels.h   micro-kernel vectorised over channels, x or dy read in place
//   conv/phase_grid.h    x copied once onto a grid split by stride phase; B packing is a copy
//   conv/im2col_gemm.h   B gathered from x row run by row run while packing (the general case)
//   conv/col2im.h        the input gradient's GEMM with its tiles scattered into grad_x, or
//                        stored by column blocks whose rows are then summed into grad_x
//   conv/grad_input_as_forward.h   stride 1: the input gradient as a forward convolution
//   conv/whole_window.h  the window covers the whole input: plain matrix products
//   conv/winograd.h      F(4x4, 3x3) Winograd: 3x3, stride 1, 36 GEMMs in the transform domain
//   conv/winograd_blocks.h  larger kernels, stride 1: their 3x3 blocks on Winograd
//   conv/winograd_phases.h  F(4x4, 2x2) Winograd over the four stride phases: 4x4, stride 2
//   conv/weight_grad_rows.h  weight gradient as dot products of dy rows and shifted x rows
//   conv/subsampled.h    strided 1x1: the stride-1 convolution of the subsampled input
//
// ConvShape::algorithm may force one: winograd (every pass; F(4x4, 3x3) for 3x3 stride 1,
// F(4x4, 2x2) over phases for 4x4 stride 2; the bindings reject shapes neither can do),
// direct (every pass, when its padded copies fit), or gemm (every
// algorithm but those two, by the rules below).
#pragma once

#include "common/prelude.h"
#include "conv/by_channels.h"
#include "conv/col2im.h"
#include "conv/depthwise.h"
#include "conv/direct.h"
#include "conv/direct_channels.h"
#include "conv/direct_grid.h"
#include "conv/epilogue.h"
#include "conv/grad_input_as_forward.h"
#include "conv/im2col_gemm.h"
#include "conv/padding.h"
#include "conv/phase_grid.h"
#include "conv/subsampled.h"
#include "conv/weight_grad_rows.h"
#include "conv/whole_window.h"
#include "conv/winograd.h"
#include "conv/winograd_blocks.h"
#include "conv/winograd_phases.h"

namespace pyconv {
namespace PYCONV_ISA {

// ---- The rules --------------------------------------------------------------------------------

// Depthwise convolutions (one input channel per group, conv/depthwise.h), first of all the
// rules, before the direct forms that took them (direct_pays, forward_direct_grid_pays).
// Measured against those (algorithm="direct": the phase-grid forward, conv/direct.h's
// gradients; C++ calls alone, one AVX-512 thread, CPU time, best of 3 interleaved rounds,
// benchmarks/depthwise_vs_direct.py): 3x3 multiplier 1, 8x64 on 56x56 forward 1.8x, input
// gradient 4.2x, weight gradient 10x; stride 2 2.7x, 3.6x, 4.8x; 1x32 on 112x112 2.4x, 3.3x,
// 17x; 1x144 on 56x56 stride 2 2.5x, 3.6x, 4.0x; 1x1024 on 7x7 1.8x, 5.8x, 2.1x; 8x128 5x5 on
// 28x28 2.0x, 9.2x, 8.1x; 4x32 7x7 on 32x32 1.3x, 5.9x, 5.6x. With 2 output channels per
// group the forward 1.35x; from 4 the phase grid, which shares each x load among its tile's
// output channels, is faster (4: 0.88x, 8: 0.79x, 16: 0.71x), so the forward takes it there;
// the gradients stay 5.8-6.6x faster.
inline bool depthwise_pays(const ConvShape& g) {
    return g.algorithm == conv_auto && depthwise_applies(g);
}
inline bool forward_depthwise_pays(const ConvShape& g) {
    return depthwise_pays(g) && g.K / g.groups <= 2;
}

// Grouped convolutions with few channels per group (depthwise: Cg = Kg = 1): a GEMM would have
// a handful of rows, so the direct loops, vectorised along output rows, win. First in every
// pass, before any GEMM form. Every algorithm below that copies x into padded planes or a
// phase grid also needs that copy to be bounded by the operands (scratch_fits): strides,
// dilations or padding far beyond the input go to im2col / col2im instead.
inline bool direct_pays(const ConvShape& g) {
    return g.groups > 1 && (g.C / g.groups) * (g.K / g.groups) <= 16 &&
           padded_planes_fit(g, double(g.N) * double(g.C));
}

// Forward vectorised over output channels: from 64 output channels per group every vector
// panel is full, and the pixels of a tile are any consecutive outputs, so nothing is wasted at
// row or image ends (the pixel-vectorised GEMM drops grid columns there). Measured faster than
// the pixel-vectorised GEMM from 7x7 to 56x56 images. A 1x1 kernel reads x in place as a plain
// matrix and stays with the GEMM.
inline bool forward_by_channels_pays(const ConvShape& g) {
    return g.K / g.groups >= 64 && g.C / g.groups > 0 && g.R * g.S > 1 &&
           padded_planes_fit(g, double(g.N) * double(g.C));
}

// Strided layers from 16 output channels per group (ResNet's 16 -> 32 3x3 stride 2 on 32x32
// images) take the channel-vectorised forward too, where from 128 taps (forward_direct_grid_pays)
// the phase-grid forms stop paying: their grid copies x once more, split by stride phase, and
// the pixel-vectorised GEMM computes a grid column per output row it drops. Measured on one
// AVX-512 thread (C++ call alone, best of 5; loaded host, 3 runs), batch 16, 3x3 padding 1,
// stride 2, against the phase-grid GEMM that ran before: 16 -> 32 on 32x32 0.30-0.34 against
// 0.40-0.45 ms (1.2-1.45x), 16 -> 16 on 32x32 1.2x, 32 -> 32 on 32x32 1.7x, 32 -> 32 and
// 64 -> 32 on 16x16 1.75x, 1.9x. The AVX2 build on the same machine: 16 -> 32 on 32x32 1.3-1.4x.
inline bool forward_strided_by_channels_pays(const ConvShape& g) {
    return (g.sh > 1 || g.sw > 1) && g.K / g.groups >= 16 && g.C / g.groups > 0 && g.R * g.S > 1 &&
           padded_planes_fit(g, double(g.N) * double(g.C));
}

// The phase grid computes and drops Wq - Wo columns of every output row. On small images with
// a wide kernel that is a large share (LeNet's conv2, 5x5 on 14x14: 10 of every 14 columns
// kept), and there the channel-vectorised forward, which computes no column twice, measured
// faster from one AVX-512 vector of output channels (16): 6 -> 16 channels, 5x5 on 14x14,
// 0.35 against 0.43 ms on one thread and 0.40 against 0.50 ms on two (batch 8: 0.071 against
// 0.082 ms). Where the grid drops at most a fifth of its columns it stayed the faster:
// 16 -> 16 channels 3x3 p1 on 16x16 (2 of 18 dropped) 0.72 against 0.82 ms, on 32x32 0.49
// against 0.72 ms; 32 -> 16 on 14x14 (2 of 16) 0.51-0.67 against 0.56-0.62 ms.
inline bool forward_grid_wastes_columns(const ConvShape& g) {
    const double Wq = double(g.Wo) + double((g.S - 1) * g.dw / g.sw);
    return g.K / g.groups >= 16 && g.C / g.groups > 0 && g.R * g.S > 1 && Wq * 4 > double(g.Wo) * 5 &&
           padded_planes_fit(g, double(g.N) * double(g.C));
}

// Weight gradient vectorised over output channels: here one vector of output channels (16)
// is already worth it, because the dot-product form it replaces reduces every accumulator
// across lanes and pads the grid's rows.
inline bool weight_grad_by_channels_pays(const ConvShape& g) {
    return g.K / g.groups >= 16 && g.C / g.groups > 0 && g.R * g.S > 1 &&
           padded_planes_fit(g, double(g.N) * double(g.C));
}

// Weight gradient along output pixels (conv/weight_grad_rows.h), stride 1: at most 32
// channels in and out per group (where the channel-vectorised form fills one or two of its
// four vectors of output channels). Measured on one AVX-512 thread, 3x3 p1, batch 64, against
// the channel-vectorised form: 16 -> 16 on 32x32 3.1 against 6.9 ms, 1 -> 16 on 32x32 0.44
// against 3.8 ms, 16 -> 32 and 32 -> 16 on 16x16 1.2-1.4x faster, 32 -> 32 on 16x16 even,
// 64 -> 64 on 16x16 0.5x. Also 64 output channels from at most 16 inputs (first layers, the
// gated PixelCNN's 1 -> 64): on the Intel host, 2 threads, batch 64 unless named, against the
// rules' choice before (by channels; best of 20 calls): 1 -> 64 1x2 on 32x33 0.57 against 2.40
// ms (PyTorch 1.11), 2x5 0.72 against 2.56 (1.22), 7x7 1.96 against 4.20 (2.06-2.19), on
// 16x16 0.52 against 0.91 (0.54); 3 -> 64 3x3 on 32x32, batch 16, 0.34 against 0.74 (0.45);
// 8 -> 64 5x5 7.1 against 9.3 (11.0); 16 -> 64 3x3 on 16x16 and 24x24 1.32 against 1.52 and
// 3.17 against 3.47 (1.22, 2.70). From 32 inputs on images of 24x24 or more: 32 -> 64 1x3
// on 32x34 (the PixelCNN's horizontal stack) 4.46 against 5.94 (4.79-6.25), 3x3 on 24x24 6.07
// against 6.56 (5.09-5.24), on 32x32 even (11.6, 11.5), on 16x16 2.96 against 2.51 (2.16).
// Up to 288 taps (Cg R S) with 64 outputs: 3x5 32 -> 64 on 34x32 (480) 21.1 against 18.9.
// Images of 16x16 or more: on 8x8 each tile's run is 4 vectors long, too short for its
// accumulators' loads and stores (32 -> 32: 0.6x). At least 16 blocks of rows (two chunks of
// the reduction), else one thread would do all the work.
// Strided: first layers of at most 32 taps per output (Cg R S) and 64 output channels per
// group, where the channel-vectorised form first transposes all of dy (for a 1-channel layer,
// whose FMAs are few, most of its time) and the phase grid computes the columns it drops.
// Measured on one AVX-512 thread, batch 64, 4x4 stride 2 p1, C++ call alone (5 rounds,
// medians, load average 15), against the rules' choice before (by channels, else the phase
// grid): 1 -> 64 on 28x28 0.34 against 0.60 ms (PyTorch 0.42), 1 -> 32 and 1 -> 16 on 32x32
// 0.33 and 0.22 against 0.47 and 0.34 ms, 2 -> 32 on 32x32 0.64 against 0.95 ms; with 48 taps
// (3 -> 32) 0.78 against 0.83 ms, even, left to the grid; with many taps the rows lose
// (32 -> 64 on 16x16: 5.2 against 1.8 ms). On AVX2 alike: 0.62 against 0.81 ms, 0.36 against
// 0.55 ms, 0.85 against 0.92 ms. Images of 64+ output pixels, as at stride 1 (a
// run of a few vectors is too short for the tile's accumulator loads and stores).
inline bool weight_grad_rows_pays(const ConvShape& g, size_t element_bytes) {
    const int64_t Cg = g.C / g.groups, Kg = g.K / g.groups;
    if (g.R * g.S == 1 || Cg < 1) return false;
    const bool strided = g.sh > 1 || g.sw > 1;
    const bool pays = strided ? Cg * g.R * g.S <= 32 && Kg <= 64 && g.Ho * g.Wo >= 64
                              : Cg <= 32 && g.Ho * g.Wo >= 256 &&
                                    (Kg <= 32 || (Kg <= 64 && Cg * g.R * g.S <= 288 &&
                                                  (Cg <= 16 || g.Ho * g.Wo >= 576)));
    if (!pays) return false;
    const RowBlocks rb(g, element_bytes, kRowBlockBytes);
    return g.N * rb.per_image >= 16 &&
           scratch_fits(g, double(Cg) * double(rb.copies) * double(rb.x_rows) * double(g.Wo));
}

// The phase grid (forward and weight gradient, pixel-vectorised): worth its copy of x when it
// wastes few columns (its rows are Wq >= Wo wide), or when the GEMM has so few rows (output
// channels) that packing B, which the grid turns into a plain copy, is the larger cost.
inline bool phase_grid_pays(const ConvShape& g) {
    if (!scratch_fits(g, PhaseGrid::elements(g))) return false;
    const PhaseGrid pg(g);
    return g.K / g.groups <= 64 || pg.Wq * 10 <= g.Wo * 11;
}

// The weight gradient on the phase grid before the channel-vectorised one
// (weight_grad_by_channels_pays): with under 64 output channels per group and under 64 taps
// (Cg R S: first layers on 1-3 channel images) the latter's vectors of output channels run
// partly empty over a short reduction, and the pixel-vectorised phase grid measured faster
// (1 thread, batch 64): 1 -> 16 and 1 -> 32 4x4 stride 2 on 32x32 3.1x, 2.0x, 3 -> 32 4x4
// stride 2 1.34x, 1 -> 32 3x3 stride 2 1.74x, 1 -> 16 and 1 -> 32 3x3 stride 1 on 14x14 2.9x,
// 1.65x; not from 64 channels (1 -> 64 4x4 stride 2 on 28x28 0.77x) nor from 72 taps (8 -> 32
// 3x3 stride 2 on 8x8 0.48x). (Strided layers of up to 32 taps now go along pixels first,
// weight_grad_rows_pays.) AVX-512 only: with AVX2 (channel panels of 24) the
// channel-vectorised form stayed faster on 1 -> 32 4x4 stride 2 (about 0.85x).
inline bool weight_grad_grid_before_by_channels(const ConvShape& g) {
    return PYCONV_ISA_LEVEL == 2 && g.K / g.groups < 64 && (g.C / g.groups) * g.R * g.S < 64 &&
           phase_grid_pays(g);
}

// Input gradient as a forward convolution (stride 1, and padding no larger than the kernel's
// reach, so the flipped convolution's padding is not negative): the forward kernels store
// tiles in place instead of scattering them. With few input channels (the rows of that GEMM)
// the col2im form, whose rows are (c, r, s), fills the micro-tiles better; with a 1x1 kernel
// both GEMMs have the same C rows, and the forward, which stores in place, measured faster
// (16 -> 32 channels on 16x16, batch 16, one thread: 37 against 72 us).
// Also on images up to 16 columns wide with 16-31 input channels and at most 32 output
// channels (SegNet's 16x16 stage): col2im then adds its tiles into grad_x in runs of at most
// 16, where the forward stores in place. Batch 64, 3x3 p1, col2im against the forward (process
// CPU time, medians of 7, loaded host), 1 thread / 2 threads: 16 -> 32 on 16x16 1.16x / 1.21x,
// 16 -> 16 on 16x16 2.3x / 1.8x, on 8x8 2.5x, 24 -> 32 on 16x16 1.2x; on 32x32 images even
// (16 -> 16, 16 -> 32: 1.0x), and with 64 output channels the forward lost (16 -> 64 on
// 16x16: 0.68x / 0.58x).
inline bool grad_input_as_forward(const ConvShape& g) {
    const int64_t Cg = g.C / g.groups, Kg = g.K / g.groups;
    const bool narrow_images = Cg >= 16 && Kg <= 32 && g.W <= 16;
    return g.sh == 1 && g.sw == 1 && g.ph <= (g.R - 1) * g.dh && g.pw <= (g.S - 1) * g.dw &&
           (Cg >= 32 || g.R * g.S == 1 || narrow_images);
}

// Strided 1x1 convolutions without padding (ResNet's shortcuts) run every pass as the
// stride-1 convolution of the subsampled input (conv/subsampled.h), a plain GEMM per image.
// The phase grid copies all sh*sw phases of x to read one. Measured against it on one thread,
// float32, stride 2 (forward, input gradient, weight gradient): 16 -> 32 on 16x16, batch 16,
// 28/31/48 against 74/36/98 us; 64 -> 128 on 28x28, batch 8, 0.22/0.31/0.38 against
// 0.49/0.53/0.67 ms; 256 -> 512 on 56x56, batch 8, 1.2-1.25x.
inline bool subsampled_pays(const ConvShape& g) {
    return g.algorithm != conv_direct && subsampled_applies(g);
}

// The kernel window covers the whole padded input (one output pixel per image): each pass is
// one plain GEMM with the batch as a dimension, where the convolution kernels would see
// 1-pixel images (a transpose convolution from 1x1 inputs measured 20x slower through col2im).
// First in every pass.
inline bool whole_window_pays(const ConvShape& g) {
    return g.groups == 1 && g.dh == 1 && g.dw == 1 && g.H + 2 * g.ph == g.R && g.W + 2 * g.pw == g.S &&
           g.R * g.S > 1 &&
           scratch_fits(g, double(g.N) * double(g.C) * double(g.R) * double(g.S));  // padded copy
}

// The 1x1 weight gradient (stride 1, no padding, one group) on the im2col GEMM, whose X is x
// itself there: one GEMM over (image, pixel), on images of at most 64 pixels with 8+ output
// channels. Measured on 2 AVX-512 threads, best of 15 calls,
// against the rules' choice before (the phase grid's dot-product form): 64 x 138 -> 128 on
// 4x4 0.25 against 0.50-0.75 ms (PyTorch 0.29), 16 x 256 -> 256 on 4x4 0.22 against 0.60-0.82,
// 64 x 128 -> 64 on 2x2 0.077 against 0.14-0.18, 64 x 64 -> 128 on 8x8 0.47-0.49 against
// 0.52-0.57, 64 x 64 -> 8 on 4x4 0.037 against 0.05-0.07, 64 x 16 -> 16 on 8x8 even; lost with
// 4 output channels (64 x 32 -> 4 on 8x8: 0.056 against 0.036-0.047, half a register tile
// of rows) and evened out from 16x16 (its runs of pixels are long enough for the grid's form;
// 16 -> 4 on 32x32 3.6x slower).
inline bool pointwise_weight_grad_pays(const ConvShape& g) {
    return g.R == 1 && g.S == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0 && g.groups == 1 &&
           g.H * g.W <= 64 && g.K >= 8;
}

// Few taps per output (Cg R S < 128: first layers on 1-8 channel images). The channel-vectorised
// forward (forward_by_channels_pays) then stores each tile transposed for about as long as it
// computes it: on 1-8 channel layers with 64-128 output channels the pixel-vectorised GEMMs,
// which store whole vectors of pixels, measured 1.3-2.5x faster.
inline bool few_taps(const ConvShape& g) {
    return (g.C / g.groups) * g.R * g.S < 128;
}

// A forward with few taps and 64+ output channels (a first layer on 1-3 channel images):
// of the pixel-vectorised GEMMs, the im2col one, which gathers B's panels straight from x,
// measured 1.3-2x faster than the phase grid for kernels up to 4x4, and the grid faster for
// larger ones (7x7 on one channel), whose B panels im2col gathers in many short row runs.
inline bool forward_im2col_pays(const ConvShape& g) {
    return few_taps(g) && g.K / g.groups >= 64 && g.R * g.S > 1 && g.R * g.S <= 16;
}

// Input gradient vectorised over input channels into a channels-last copy of each image
// (strided transpose convolutions with 64+ channels): col2im instead adds every GEMM element
// into grad_x with scalar, strided read-modify-writes in runs of Wo, which dominates on small
// images (3x slower for one 64-channel image on one thread). Needs the per-thread copy kept
// within a thread's share of the last-level cache, else col2im is faster. The rule does not
// look at the thread count, although a batch smaller than the team leaves threads idle here
// (threads share out images and 64-channel panels): the two algorithms sum in different
// orders, and the result must not depend on how many threads computed it.
// Strided layers from 32 input channels also (the second layer of a DCGAN discriminator or a
// VAE encoder), although half of each 64-channel panel is then empty: 1 thread, batch 64,
// 32 -> 64 4x4 stride 2 on 16x16 and 8x8 1.63x, 1.75x, 32 -> 16 4x4 stride 2 2.1x, 32 -> 64
// 3x3 stride 2 on 32x32 1.28x; with 8-16 channels it is about even (0.89-1.25x), and stride 1
// with 16 channels lost (0.31x).
inline bool grad_input_channels_last_pays(const ConvShape& g, size_t element_bytes) {
    const double copy_bytes = PaddedPlane(g).area() * double((g.C + 63) / 64 * 64) * double(element_bytes);
    const bool strided = g.sh > 1 || g.sw > 1;
    return g.groups == 1 && (g.C >= 64 || (strided && g.C >= 32)) && g.K > 0 && copy_bytes <= 16.0 * (1 << 20);
}

// Winograd F(4x4, 3x3) on 3x3 stride-1 layers: a quarter of the multiplications of the GEMMs,
// plus transforms that cost per channel and tile (not per channel pair) and a filter transform
// per call. Measured against the GEMM forms on 2 threads, batch 8 (benchmarks/RESULTS.md):
// 1.2-1.8x from 16 channels on images of 28+ columns; on 14-column images only with
// 128 x 128 channel pairs or more (the transforms fill few lanes per tile row); not on 12-13
// columns (below 12: see the end), nor with fewer than 128 tiles (the filter transform is not amortised).
// Above 256 x 256 channel pairs the transformed filters (36 K C elements) outgrow the caches:
// stored, 512 x 512 ran 0.4-0.8x; computed per block of output channels (winograd_layout) from
// 32 tiles on 7+ columns, see there.
// On 14-16 column images from 32 x 32 channel pairs also (a small ResNet's middle stage), from
// 256 tiles (batch 16): measured on one AVX-512 thread (C++ call alone, best of 5) against the
// phase-grid GEMM or channel-vectorised form that ran before, 32 -> 32 on 16x16 0.29 against
// 0.58 ms (2.0x), 32 -> 64 1.85x, 64 -> 64 2.0x, on 14x14 32 -> 32 1.19x, 64 -> 64 1.5x (the
// AVX2 build: 32 -> 32 on 16x16 2.5x); batch 64, 32 -> 32 on 16x16 (SegNet's) 2.3x; with
// fewer pairs it measured about even (16 -> 16 on 16x16 1.02x, 16 -> 32 1.26x) while two threads
// shared the 48-tile blocks out unevenly (256 tiles: 144 against 112). Since Tiling::of_forward
// cuts fewer than 384 tiles into equal blocks, from 16 output columns it pays with 16 x 16 channel
// pairs and 128 tiles: 2 threads, medians of 15 interleaved calls against the GEMM forms that ran
// before and PyTorch: batch 64, 16 -> 32 on 16x16 (SegNet's) 0.56 against 0.88 ms (PyTorch 0.72),
// 32 -> 16 0.67 against 0.94 (0.73), 16 -> 16 0.37-0.43 against 0.48-0.50 (0.40); batch 8 and 16,
// 16 -> 32 0.11 and 0.17 against 0.15 and 0.25 ms; 16 -> 16 on 20x20 and 24x24 (batch 16) 1.14x,
// 1.20x PyTorch against 0.93x, 0.96x; 16 -> 32 on 24x24 1.52x against 0.93x; one thread, 16 -> 32
// and 32 -> 16 on 16x16 (batch 64) 1.75x and 1.47x the GEMM (the AVX2 build, forward and input
// gradient: 16 -> 32 2.3x and 1.7x, 32 -> 16 1.7x and 1.8x, 16 -> 16 1.5x and 1.4x); 16 -> 16 on
// 16x16 outputs without padding 0.39-0.47 against 0.46-0.52 ms for the direct forward by channels.
// Even on 18x18 (32 -> 16: 0.295 against 0.314 ms), and on 14 columns with fewer than 32 x 32 pairs
// the direct forms stay ahead (16 -> 16, batch 16: 0.105 against 0.116).
// On 7-11 columns (a small ResNet's last stage, 8x8) from 32 x 32 channel pairs and 32 tiles,
// now that few tiles make an even number of equal blocks (Tiling::of_forward): one AVX-512
// thread, CPU time, best of 5, against "auto" without it (the channel-vectorised GEMM), batch
// 16 on 8x8: 64 -> 64 1.66x, 32 -> 32 1.51x, 32 -> 64 1.43x, 128 -> 128 2.1x; batch 8 and 4,
// 64 -> 64 (32 and 16 tiles) 1.41x, 1.24x; 7x7 64 -> 64 1.37x, 10x10 1.38x; 16 -> 16 on
// 8x8 even (0.97x), so it stays out. Two threads: 64 tiles make 2 blocks of 32 (one each);
// an odd number of 16-tile vectors keeps blocks of 48 (48 tiles: one block, one thread).
// With the filters prepared (conv2d_prepare: transformed once, as for a model's constant
// weights), from one image on 12+ columns: 2 threads, batch 1, against the rules' choice
// without it (the direct or GEMM forms), 16 -> 16 on 32x32 22.6 against 36.0 us, 32 -> 32 on
// 16x16 20.8 against 40.3, 64 -> 64 on 14x14 47.3 against 85.3, 128 -> 128 on 12x12 121
// against 209, 256 -> 256 on 14x14 540 against 1179; batch 2, 4, 8 likewise. Not 16 -> 16 on
// 12-15 columns from batch 4 (12x12: 74-87 against 37-58 us direct), nor on 7-11 columns below
// 32 tiles (batch 1, 8x8: 64 -> 64 48 against 35 us, 128 -> 128 133 against 112 by channels).
inline bool winograd_pays(const ConvShape& g, bool filters_prepared = false) {
    const int64_t tiles = g.N * ((g.Ho + 3) / 4) * ((g.Wo + 3) / 4), pairs = g.C * g.K;
    if (!winograd_applies(g) || g.C < 16 || g.K < 16) return false;
    if (pairs > 256 * 256) return g.Wo >= 7 && tiles >= 32;
    if (filters_prepared && g.Wo >= 12 && (g.Wo >= 16 || pairs >= 32 * 32)) return true;
    if (g.Wo < 12) return g.Wo >= 7 && g.C >= 32 && g.K >= 32 && tiles >= 32;
    return tiles >= 128 && (g.Wo >= 16 || pairs >= 128 * 128 || (g.Wo >= 14 && pairs >= 32 * 32 && tiles >= 256));
}

// Kernels larger than 3x3 by their 3x3 blocks on Winograd (conv/winograd_blocks.h): where at
// least two thirds of the blocks' taps are the kernel's (3x4, 3x5, 5x5, 6x6; not 4x4 or 7x7),
// with 32+ channels in and out, on images of 12+ output columns, where the 3x3 convolution over
// the copies is one Winograd pays for. Measured on one AVX-512 thread (CPU time, best of 3,
// loaded host) against the rules' choice without it, forward / input gradient / weight
// gradient: PixelCNN's 3x5 32 -> 64 on 32x32 (batch 64) 22.1 / 28.7 / 30.6 against 38.2 / 47.3
// / 43.8 ms; 5x5 32 -> 64 on 32x32 (16) 1.61x / 1.44x / 1.37x; 5x5 64 -> 64 on 56x56 (8) 1.62x
// / 1.64x / 1.29x, on 16x16 (16) 1.44x / 1.48x / 1.21x; 3x4 32 -> 32 on 32x32 1.07x / 1.39x /
// 1.04x. Lost: 7x7 64 -> 64 on 32x32 (81 block taps for 49) 0.97x / 0.97x / 1.21x, 5x5 on 8x8
// 0.49x / 0.60x / 0.47x.
inline bool winograd_blocks_pay(const ConvShape& g) {
    if (g.algorithm != conv_auto || !winograd_blocks_apply(g) || g.C < 32 || g.K < 32 || g.Wo < 12) return false;
    const int64_t blocks = kernel_blocks_down(g) * kernel_blocks_across(g);
    if (3 * g.R * g.S < 2 * 9 * blocks) return false;
    const ConvShape b = winograd_blocks_shape(g);
    // Not past 256 x 256 channel pairs over the copies: the 3x3 forward's rule takes those
    // (winograd_layout), but not measured here.
    return b.C * b.K <= 256 * 256 && winograd_pays(b) &&
           scratch_fits(g, double(b.N) * double(b.C) * double(b.H) * double(b.W));
}

// Winograd's layout (conv/winograd.h): one GEMM per transform-domain position over all tiles
// when the transformed filters (36 K C elements) outgrow a core's cache, so that block by
// block every block would read them from memory again, and all tiles' V and M (36 (C + K)
// elements per tile) stay within the last-level cache. 256 -> 256 channels on 14x14, batch 8
// (128 tiles, 9.4 MB of V and M), one thread: 6.0-7.3 against 10.1-11.2 ms block by block, and
// on two threads the 36 positions share out evenly where the 3 blocks of 48 tiles do not; on
// 128 x 128 pairs (28x28, batch 8) the blocks stayed faster, 4.4 against 5.3 ms.
// Also where the tiles make fewer blocks than threads (one image of a small layer: 16 tiles on
// 16x16, one block), which block by block would leave threads idle.
template <class T>
inline bool winograd_by_position(const ConvShape& g) {
    const double tiles = double(g.N) * double((g.Ho + 3) / 4) * double((g.Wo + 3) / 4);
    const double footprint = 36.0 * double(g.C + g.K) * tiles * double(sizeof(T));
    return (g.C * g.K >= 256 * 256 && footprint <= 16.0 * (1 << 20)) ||
           winograd::Tiling::of_forward<T, winograd::F4x3>(g).blocks < num_threads();
}

// Winograd's layout: past 256 x 256 channel pairs U is computed per block of output channels
// (winograd::multiply_filter_blocks), never stored: 2 threads, medians of 7 alternated calls
// (loaded host), against the channel-vectorised GEMM that ran before and the stored U: 512 ->
// 512 on 7x7, batch 8 (ResNet's last stage) 8.0-8.7 against 10.8-12.7 and 24.6-28.1 ms, batch
// 16 15.9 against 28.6 and 36.0, batch 32 23.7 against 47.2 and 43.4; on 14x14, batch 8, 40.6
// against 54-77 and 48.2. With fewer pairs the stored U stays ahead (256 -> 256 on 14x14,
// batch 16: 20.9 against 15.2 ms; on 28x28, batch 8: 24.1 against 16.2).
template <class T>
inline WinogradLayout winograd_layout(const ConvShape& g) {
    if (g.C * g.K > 256 * 256) return WinogradLayout::filter_blocks;
    return winograd_by_position<T>(g) ? WinogradLayout::by_position : WinogradLayout::blocks;
}

// Winograd's weight gradient (conv/winograd.h, conv2d_grad_weight_winograd): a quarter of the
// multiplications, plus transforms of x and dy per channel and tile, a transposition of both
// into tile-major matrices and the transform back per channel pair. Measured against the GEMM
// forms on one thread, batch 8, CPU time, medians of 5 interleaved rounds (load average
// 12-14): 32, 64, 128, 128 and 256 channels on 56, 56, 28, 56 and 28 px 1.34x, 1.38x, 1.44x,
// 1.68x, 1.87x; 64 and 32 channels on 28 and 32 px 1.11x; 256 channels on 14 px 1.33x
// [0.99-1.47]. Not with 16 channels (16 on 56 px 0.87x, on 32 px 0.31x: the weight gradient
// along pixel rows is faster there), nor on 14-px images with fewer channel pairs (128
// channels 1.01x, and 0.84x before the transform back was vectorised), nor 512 on 7 px with M stored (0.54x:
// 32 tiles against 262144 channel pairs, whose 36 products it writes and transforms back).
// On 16-27 columns from 64 x 64 channel pairs: 2 threads, medians of 15 interleaved calls,
// against the rules' choice without it (the channel-vectorised form) and PyTorch, batch 16:
// 64 -> 64 on 16x16 1.05-1.50 against 1.50-1.84 ms (PyTorch 1.49-1.71), 128 -> 128 3.6 against
// 7.1 (6.2), 64 -> 128 2.7 against 3.6 (3.3), 64 -> 64 on 24x24 2.1 against 3.6 (3.3); batch 64,
// 64 -> 64 on 16x16 4.1-5.5 against 7.1-7.7 ms (6.1-6.6); batch 8, 128 -> 128 on 16x16 2.0
// against 3.4, 64 -> 64 on 20x20 0.84 against 1.23. Not with 32 channels on either side there
// (the weight gradient along pixels, or by channels, stays ahead: 32 -> 32 on 16x16, batch 16
// and 64, 0.69-0.76 against 0.54-0.56 and 3.3-3.4 against 1.9-2.5 ms; 64 -> 32 and 32 -> 64
// 1.08 against 0.89-0.92), nor on 14 columns (64 -> 64, batch 16: 1.11-1.51 against 1.19-1.30).
// Past 256 x 256 pairs by blocks of output channels (conv/winograd.h,
// weight_grad_by_filter_blocks), where all tiles' transforms fit one chunk, on 7+ columns from
// 8 tiles: 2 threads, medians of 5 alternated calls, against the channel-vectorised form that
// ran before, 512 -> 512 on 7x7, batch 8 6.2 against 9.7 ms, batch 16 12.6 against 19.3,
// batch 2 2.8 against 3.3. (On 14x14, batch 8, the chunked form with M stored: 31.9 against
// 37.0 ms, not taken.)
inline bool winograd_weight_grad_pays(const ConvShape& g) {
    const int64_t tiles = g.N * ((g.Ho + 3) / 4) * ((g.Wo + 3) / 4), pairs = g.C * g.K;
    if (pairs > 256 * 256) return winograd_applies(g) && g.Wo >= 7 && tiles >= 8 && weight_grad_by_filter_blocks<float>(g);
    return winograd_applies(g) && g.C >= 32 && g.K >= 32 && pairs <= 256 * 256 && tiles >= 128 &&
           (g.Wo >= 28 || (g.Wo >= 16 && g.C >= 64 && g.K >= 64) || (g.Wo >= 12 && pairs >= 256 * 256));
}

// Winograd F(4x4, 2x2) over the stride phases (conv/winograd_phases.h) for 4x4 stride-2
// layers, every pass: 32+ channels in and out, and at least 1.9 times fewer products than the
// direct sum once the tiles' overhang and the vector lanes past the batch (images go in the
// lanes) are counted: 16 Ho Wo N against 100 (4 phases x 25) per tile of a padded batch, 2.56
// where the tiles fit the output exactly, 1.96 on 7x7 outputs of a batch of whole vectors.
// Measured on one AVX-512 thread, process CPU time, best of 5 rounds interleaved with PyTorch
// in one process (loaded host), batch 64, padding 1, forward / input gradient / weight
// gradient, against the algorithms the rules chose before (tiles across images, all three):
//   64 -> 128 on 14x14 (the 28x28 DCGAN):  5.9-6.2 / 5.7 / 6.2-7.1 ms against 7.5-8.1 / 7.4-7.9 / 7.7-8.2
//   32 -> 64 on 16x16:                     1.8 / 1.95 / 2.4-2.5 ms against 2.4 / 3.1 / 2.8
//   64 -> 128 on 8x8:                      1.7 / 1.8 / 1.9-2.1 ms against 2.2-2.4 / 2.2 / 2.2-2.35
// (benchmarks/stride2_layers.py; PyTorch 6.9-7.3 / 7.1-7.3 / 7.3-7.7, 2.2 / 3.1-3.4 / 2.4, 2.2 /
// 2.4-2.5 / 2.8). Not measured: more than 256 x 256 channel pairs (as for
// F(4x4, 3x3); the weight gradient's 25 K x 4C sums grow with them), other batches; a 1-3
// channel first layer stays with the GEMM forms. The lanes counted are AVX-512's 16 floats
// whatever the dtype and ISA (fewer lanes waste less), so the rule is the shape's alone.
//
// The input gradient pays from 8 input channels (32 phase channels): its GEMMs produce the
// phases of dx from K channels of dy, and the direct and GEMM forms it replaces run short rows
// of C there. Two threads, medians of 9 interleaved calls, batch 64, against the rules' choice
// without it: 11 -> 32 on 32x32 (the conditional DCGAN's first layer) 1.48 against 2.10 ms
// (torch 2.15), 8 -> 32 on 32x32 1.32x, 8 -> 64 on 16x16 1.49x, 16 -> 32 on 14x14 1.74x,
// 24 -> 64 on 8x8 2.41x (one thread 1.19-2.00x); 4 -> 32 on 32x32 0.84x, 1 -> 32 0.38x. The
// forward and the weight gradient with 11-16 channels measured 0.83-1.21x: they keep 32.
inline bool winograd_phases_pays(const ConvShape& g, int64_t min_channels_in = 32) {
    if (!winograd_phases_applies(g) || g.C < min_channels_in || g.K < 32 || g.C * g.K > 256 * 256) return false;
    const int64_t L = 16, padded = (g.N + L - 1) / L * L;
    const double direct = 16.0 * double(g.Ho) * double(g.Wo) * double(g.N);
    const double winograd = 100.0 * double((g.Ho + 3) / 4) * double((g.Wo + 3) / 4) * double(padded);
    return direct >= 1.9 * winograd;
}

// Direct forward on the phase grid (conv/direct_grid.h), where the GEMM forms pack or pad
// more than they multiply: up to 16 output channels per group (one or two register tiles of
// channels, where a GEMM's 64-channel panels or 16-row micro-tiles run mostly empty), or 24 to
// 127 taps per output (1-3 channel first layers with 3x3 to 7x7 kernels). Measured against
// "auto" without it (C++ call alone, 1 thread, 3 rounds, medians, benchmarks/RESULTS.md):
// 6 and 16 output channels (LeNet's layers) 1.75x and 1.17x; 64 -> 16 3x3 on 28x28 1.37x
// (against Winograd, which still goes first: against it 16 -> 16 on 32x32 ran 0.92x);
// 256 -> 16 1.14x; grouped 4 -> 4 3.4x, depthwise 1.12x; 3 -> 64 3x3 (27 taps) 1.15x,
// 1 -> 64 7x7 (49) 1.21x, 3 -> 32 5x5 (75) 1.13x. With 64 output channels and fewer taps at
// stride 1 the tile's stores weigh as much as its FMAs (1 -> 64 3x3, 9 taps: 0.77x), and from
// 128 taps the channel-vectorised GEMM is faster (32 -> 64 3x3 stride 2: 0.58x).
// Strided layers take it from any tap count: there the GEMMs gather B with the stride (im2col)
// or compute grid columns they drop, where the direct kernel reads one contiguous run per tap
// of its phase. Measured against "auto" without this, 1 thread, 7 rounds, medians, batch 64,
// stride 2: 1 -> 32 4x4 on 16, 32 and 64 images 1.80x, 1.73x, 1.48x, 1 -> 64 4x4 on 28 and 32
// 1.22x, 1.19x, 1 -> 32 and 2 -> 32 3x3 on 32 1.57x, 1.56x.
// Stride-1 layers of up to 32 output channels per group take it from any tap count (those
// Winograd leaves: other kernel shapes, small images): there the pixel-vectorised GEMM's
// product has too few rows (4 micro-tiles) to reuse its B panels. Measured against the
// phase-grid GEMM on an Intel Xeon host (2 threads, batch 64, best of 7, three rounds):
// 64 -> 32 1x3 on 32x32 (a PixelCNN's horizontal input gradient) 3.5 against 5.6-6.4 ms
// (PyTorch 3.6), 128 -> 32 1x3 8.1 against 13.3-14.1, 64 -> 32 1x5 4.9-5.0 against 7.3,
// 16 -> 32 3x3 on 14x14 0.48-0.50 against 0.58-0.62, 32, 64 and 128 -> 32 3x3 on 8x8 0.37,
// 0.70-0.73 and 1.35-1.41 against 0.41, 0.89-0.92 and 1.66-1.70. With 64 outputs it won some
// and lost others (64 -> 64 1x3 on 32x32 5.3-5.6 against 6.2-6.4, on 16x16 1.61-1.65 against
// 1.51-1.52; 32 -> 64 3x3 on 7x7 0.56-0.57 against 0.45-0.46): those keep the tap bound.
inline bool forward_direct_grid_pays(const ConvShape& g) {
    const int64_t taps = (g.C / g.groups) * g.R * g.S, Kg = g.K / g.groups;
    const bool strided = g.sh > 1 || g.sw > 1;
    const bool few_taps_or_outputs = taps < 128 || (!strided && Kg <= 32);
    return g.R * g.S > 1 && (Kg <= 16 || ((taps >= 24 || strided) && few_taps_or_outputs)) && direct_grid_fits(g);
}

// The direct forward by channels (conv/direct_channels.h) before the one on the phase grid:
// exactly 16 output channels (one AVX-512 vector), stride 1 along rows, no padding, output
// images of at most 256 pixels (a thread's channels-last buffer of one image, 16 KiB in
// float32, stays in L1) and at least 48 taps per output (fewer leave each tile's stores and
// the transpose a large share). Measured against the phase grid, one AVX-512 thread, process
// CPU time, best of 5 interleaved rounds, batch 64: 6 -> 16 5x5 on 14x14 (LeNet's conv2)
// 0.38 against 0.50 ms (1.32x; ONNX Runtime 0.41), 2 -> 16 5x5 on 14x14 1.20x, 8 -> 16 and
// 32 -> 16 3x3 on 12x12 and 8x8 1.33x, 1.41x, 16 -> 16 3x3 on 16x16 and 18x18 1.14x, 1.07x
// (where Winograd, first, now pays);
// even with 25 taps (1 -> 16 5x5 on 16x16, 1.01x); lost on 28x28 outputs (1 -> 16 and
// 3 -> 16 5x5 on 32x32: 0.75x, 0.91x).
inline bool forward_direct_channels_pays(const ConvShape& g) {
    return direct_channels_applies(g) && g.C * g.R * g.S >= 48 && g.Ho * g.Wo <= 256;
}

// The direct forward (forward_direct_grid_pays) on column copies of x instead of the phase
// grid (conv/direct_grid.h): no grid column computed and dropped, and every tile stored as whole
// vectors of an output plane (on a strided grid a vector spans two rows: two masked stores), for
// S copies of each row, filled image by image. Kernels 4+ columns wide whose grid drops columns,
// with at most 16 copies of each input row (Cg S) and at least 128 multiply-adds per copied
// element (Kg R), else filling the copies costs more than the dropped columns. Measured against
// the phase grid on main, 1 thread, process CPU time, medians, main and this rule in alternating
// processes (3-4 pairs on a loaded host), as speed-ups over PyTorch in the same process
// (benchmarks/RESULTS.md): 1 -> 32 4x4 stride 2 on 32x32 (Kg R = 128) 1.02-1.18x -> 1.20-1.44x;
// 1 -> 64 4x4 stride 2 on 28x28 1.02-1.16x -> 1.03-1.18x; 1 -> 64 7x7 on 28x28, batch 1,
// 2.10-2.16x -> 2.21-2.48x, batch 32 even; 3 -> 32 5x5 on 32x32 1.72-1.86x -> 1.77-1.86x. Lost:
// 1 -> 6 5x5 (Kg R = 30, LeNet's conv1) 2.7-3.2x -> 2.3-2.5x; 6 -> 16 5x5 on 14x14 (Cg S = 30)
// 0.94-0.97x the grid. 3x3 kernels stay on the grid, which drops 2 columns a row.
inline bool direct_grid_column_copies_pay(const ConvShape& g) {
    const int64_t dropped = (g.S - 1) * g.dw / g.sw;  // grid columns per row past Wo
    return g.S >= 4 && dropped > 0 && (g.C / g.groups) * g.S <= 16 && (g.K / g.groups) * g.R >= 128 &&
           scratch_fits(g, ColumnCopies::elements(g) + 64);
}

// The channel-vectorised forward with tiles across images (conv/by_channels.h), which skips
// the taps that fall on padding, where they are a large share of the products: strided,
// padded layers on small images (the second layer of a DCGAN discriminator, 64 -> 128 4x4
// stride 2 padding 1 on 14x14, multiplies padding in 14% of its products). The useful share
// of the products it computes (its last block of MR images may repeat images) must be at most
// 0.92 of the other forward's. Measured on one AVX-512 thread, CPU time, best of 5, batch 64:
// 64 -> 128 4x4 stride 2 padding 1 on 14x14 (0.86 of the products) 7.6 against 8.4-8.5 ms for
// the forward by channels (PyTorch, which skips padding too: 7.0 ms; 8.2 on the same input
// padded beforehand). Only measured on that layer, so stride 1 and batches that leave most
// of the last tile of images empty stay out.
inline double across_images_share(const ConvShape& g) {
    auto kept = [](int64_t out, int64_t stride, int64_t pad, int64_t taps, int64_t step, int64_t extent) {
        int64_t valid = 0;
        for (int64_t o = 0; o < out; ++o)
            for (int64_t t = 0; t < taps; ++t) {
                const int64_t i = o * stride - pad + t * step;
                valid += i >= 0 && i < extent;
            }
        return double(valid) / double(out * taps);
    };
    constexpr int64_t MR = ChannelTile<float>::MR;
    return kept(g.Ho, g.sh, g.ph, g.R, g.dh, g.H) * kept(g.Wo, g.sw, g.pw, g.S, g.dw, g.W) *
           double((g.N + MR - 1) / MR * MR) / double(g.N);
}
inline bool forward_across_images_pays(const ConvShape& g) {
    if (g.groups != 1 || (g.ph == 0 && g.pw == 0) || (g.sh == 1 && g.sw == 1) || g.N < 1) return false;
    return across_images_share(g) <= 0.92;
}

// The input and weight gradients with tiles across images (conv/by_channels.h), which skip
// the taps on padding as the forward above does, for the same layers
// (forward_across_images_pays). Measured on one AVX-512 thread, C++ call alone, CPU time,
// best of 7 in 2-3 rounds interleaved with PyTorch in one process (loaded host), batch 64,
// 4x4 stride 2 padding 1, against the forms that ran before (input gradient channels last,
// weight gradient by channels), as ratios to PyTorch:
//   64 -> 128 on 14x14: input gradient 0.95-0.97x against 0.79x (7.7-8.0 against 9.1 ms),
//                       weight gradient 0.97-1.00x against 0.90x
//   64 -> 128 on 8x8:   input gradient 1.24x against 0.81-0.85x, weight gradient 1.34x against 1.05x
//   32 -> 64 on 8x8:    input gradient 1.36-1.38x against 1.03-1.04x, weight 1.16x against 0.95-0.97x
//   32 -> 64 on 16x16:  input gradient 1.03-1.09x against 1.05-1.06x (even),
//                       weight gradient 0.89-0.90x against 0.92-0.95x (lost)
// The weight gradient's tiles are MR input channels of one tap, so channels short of a whole
// tile (32 = 6 x 6 - 4) waste products too: it needs the forward's computed share times that
// waste to stay at most 0.92 (32 -> 64 on 16x16: 0.88 x 36/32 = 0.99), and 64 output channels
// (one full panel; fewer were not measured).
inline bool grad_input_across_images_pays(const ConvShape& g) {
    return forward_across_images_pays(g) && g.C >= 32 && g.K > 0;
}
inline bool grad_weight_across_images_pays(const ConvShape& g) {
    constexpr int64_t MR = ChannelTile<float>::MR;
    return forward_across_images_pays(g) && g.K >= 64 && g.C * g.R * g.S >= 128 &&
           across_images_share(g) * double((g.C + MR - 1) / MR * MR) / double(g.C) <= 0.92;
}

// The input gradient by column blocks (conv/col2im.h, conv2d_grad_input_col_rows) where the
// col2im GEMM would run: stride 1, no dilation, one group, one image's column block of at most
// 64 K elements, images up to 64 columns wide (measured up to 32). Against col2im, one AVX-512
// thread, process CPU time, batch 64 (benchmarks/RESULTS.md): 6 -> 16 5x5 on 14x14 (LeNet's
// conv2) 0.68 against 0.93 ms, 8 -> 16 3x3 p1 on 16x16 1.43x, 4 -> 8 3x3 p1 on 28x28 1.23x,
// 3 -> 16 5x5 on 32x32 1.17x.
inline bool grad_input_col_rows_pays(const ConvShape& g) {
    return g.algorithm == conv_auto && g.W <= 64 && grad_input_col_rows_applies(g);
}

// Which pass runs which algorithm.
inline bool use_winograd(const ConvShape& g, bool filters_prepared = false) {
    return winograd_applies(g) &&
           (g.algorithm == conv_winograd || (g.algorithm == conv_auto && winograd_pays(g, filters_prepared)));
}
// min_channels_in: the input gradient's rule takes fewer (winograd_phases_pays).
inline bool use_winograd_phases(const ConvShape& g, int64_t min_channels_in = 32) {
    return winograd_phases_applies(g) &&
           (g.algorithm == conv_winograd || (g.algorithm == conv_auto && winograd_phases_pays(g, min_channels_in)));
}
inline bool use_direct(const ConvShape& g) {
    const bool fits = padded_planes_fit(g, double(g.N) * double(g.C));
    return fits && (g.algorithm == conv_direct || (g.algorithm == conv_auto && direct_pays(g)));
}

// algorithm="direct" asked for (and possible): it goes before the rules, which keep their order.
inline bool direct_asked(const ConvShape& g) { return g.algorithm == conv_direct && use_direct(g); }

// ---- The entry points -------------------------------------------------------------------------

// The forward's algorithm for g: the rules above, in order.
enum class ForwardAlgorithm { winograd, winograd_blocks, winograd_phases, depthwise, direct, direct_grid, direct_channels, direct_columns, whole_window, by_channels, by_channels_across_images, im2col, phase_grid, subsampled };
inline ForwardAlgorithm direct_grid_layout(const ConvShape& g) {
    return direct_grid_column_copies_pay(g) ? ForwardAlgorithm::direct_columns : ForwardAlgorithm::direct_grid;
}
inline ForwardAlgorithm forward_algorithm(const ConvShape& g, bool filters_prepared = false) {
    if (use_winograd(g, filters_prepared)) return ForwardAlgorithm::winograd;
    if (winograd_blocks_pay(g)) return ForwardAlgorithm::winograd_blocks;
    if (use_winograd_phases(g)) return ForwardAlgorithm::winograd_phases;
    // algorithm="direct": the direct forward on the phase grid (or column copies) where its
    // copy fits, else the direct loops over padded planes.
    if (g.algorithm == conv_direct && direct_grid_fits(g)) return direct_grid_layout(g);
    if (direct_asked(g)) return ForwardAlgorithm::direct;
    if (forward_depthwise_pays(g)) return ForwardAlgorithm::depthwise;
    if (subsampled_pays(g)) return ForwardAlgorithm::subsampled;
    if (whole_window_pays(g)) return ForwardAlgorithm::whole_window;
    if (g.algorithm == conv_auto && forward_direct_grid_pays(g))
        return forward_direct_channels_pays(g) ? ForwardAlgorithm::direct_channels : direct_grid_layout(g);
    if (use_direct(g)) return ForwardAlgorithm::direct;
    if (!few_taps(g) &&
        (forward_by_channels_pays(g) || forward_strided_by_channels_pays(g) || forward_grid_wastes_columns(g)))
        return forward_across_images_pays(g) ? ForwardAlgorithm::by_channels_across_images : ForwardAlgorithm::by_channels;
    if (forward_im2col_pays(g)) return ForwardAlgorithm::im2col;
    if (phase_grid_pays(g)) return ForwardAlgorithm::phase_grid;
    return ForwardAlgorithm::im2col;
}

// Its name, for reports (pyconv bench): the GEMM forms are "gemm (<form>)", Winograd's
// layouts "winograd" (block by block) and "winograd (by position)", over stride phases
// "winograd (phases)" (F(4x4, 2x2)) or "winograd (phases, 7x7 tiles)" (F(7x7, 2x2)).
template <class T>
const char* conv2d_forward_algorithm(const ConvShape& g, bool filters_prepared) {
    switch (forward_algorithm(g, filters_prepared)) {
        case ForwardAlgorithm::winograd:
            switch (winograd_layout<T>(g)) {
                case WinogradLayout::filter_blocks: return "winograd (by position, filters per block)";
                case WinogradLayout::by_position: return "winograd (by position)";
                default: return "winograd";
            }
        case ForwardAlgorithm::winograd_blocks: return "winograd (3x3 blocks)";
        case ForwardAlgorithm::winograd_phases:
            return winograd_phases::forward_by_7x7_tile<T>(g) ? "winograd (phases, 7x7 tiles)" : "winograd (phases)";
        case ForwardAlgorithm::depthwise: return "depthwise";
        case ForwardAlgorithm::direct: return "direct";
        case ForwardAlgorithm::direct_grid: return "direct (phase grid)";
        case ForwardAlgorithm::direct_columns: return "direct (column copies)";
        case ForwardAlgorithm::direct_channels: return "direct (by channels)";
        case ForwardAlgorithm::whole_window: return "gemm (whole window)";
        case ForwardAlgorithm::by_channels: return "gemm (by channels)";
        case ForwardAlgorithm::by_channels_across_images: return "gemm (by channels, across images)";
        case ForwardAlgorithm::phase_grid: return "gemm (phase grid)";
        case ForwardAlgorithm::subsampled: return "gemm (subsampled)";
        case ForwardAlgorithm::im2col: break;
    }
    return "gemm (im2col)";
}

template <class T>
void conv2d_forward(const ConvShape& g, const T* x, const T* w, const T* bias, T* y,
                    const PreparedFilters* prepared = nullptr) {
    switch (forward_algorithm(g, prepared != nullptr)) {
        case ForwardAlgorithm::winograd:
            return conv2d_forward_winograd(g, x, w, bias, y, winograd_layout<T>(g), {}, prepared);
        case ForwardAlgorithm::winograd_blocks:
            return conv2d_forward_winograd_blocks(g, x, w, bias, y, winograd_layout<T>(winograd_blocks_shape(g)));
        case ForwardAlgorithm::winograd_phases: return conv2d_forward_winograd_phases(g, x, w, bias, y);
        case ForwardAlgorithm::depthwise: return conv2d_forward_depthwise(g, x, w, bias, y);
        case ForwardAlgorithm::direct: return conv2d_forward_direct(g, x, w, bias, y);
        case ForwardAlgorithm::direct_grid: return conv2d_forward_direct_grid(g, x, w, bias, y);
        case ForwardAlgorithm::direct_columns: return conv2d_forward_direct_columns(g, x, w, bias, y);
        case ForwardAlgorithm::direct_channels: return conv2d_forward_direct_channels(g, x, w, bias, y, direct_grid_threads(g));
        case ForwardAlgorithm::whole_window: return conv2d_forward_whole_window(g, x, w, bias, y);
        case ForwardAlgorithm::by_channels: return conv2d_forward_by_channels(g, x, w, bias, y, {}, prepared);
        case ForwardAlgorithm::by_channels_across_images: return conv2d_forward_by_channels_across_images(g, x, w, bias, y);
        case ForwardAlgorithm::phase_grid: return conv2d_forward_grid(g, x, w, bias, y);
        case ForwardAlgorithm::subsampled: return conv2d_forward_subsampled(g, x, w, bias, y);
        case ForwardAlgorithm::im2col: break;
    }
    conv2d_forward_im2col(g, x, w, bias, y);
}

// The forward, then the epilogue (conv/epilogue.h: a residual added, relu): Winograd (every
// form) applies it as its output transform stores, the channel-vectorised forward as it stores
// its transposed tiles, the direct forward on the phase grid (relu alone) from its registers,
// the other algorithms in one pass over y afterwards.
template <class T>
void conv2d_forward_then(const ConvShape& g, const T* x, const T* w, const T* bias, T* y, const T* residual,
                         bool relu, const PreparedFilters* prepared) {
    const Epilogue<T> ep{residual, relu};
    if (ep.any()) switch (forward_algorithm(g, prepared != nullptr)) {
        case ForwardAlgorithm::winograd:
            return conv2d_forward_winograd(g, x, w, bias, y, winograd_layout<T>(g), ep, prepared);
        case ForwardAlgorithm::winograd_blocks:
            return conv2d_forward_winograd_blocks(g, x, w, bias, y, winograd_layout<T>(winograd_blocks_shape(g)), ep);
        case ForwardAlgorithm::winograd_phases: return conv2d_forward_winograd_phases(g, x, w, bias, y, ep);
        case ForwardAlgorithm::by_channels: return conv2d_forward_by_channels(g, x, w, bias, y, ep, prepared);
        case ForwardAlgorithm::direct_grid:
            if (!residual) return conv2d_forward_direct_grid(g, x, w, bias, y, relu);
            break;
        case ForwardAlgorithm::direct_columns:
            if (!residual) return conv2d_forward_direct_columns(g, x, w, bias, y, relu);
            break;
        default: break;
    }
    conv2d_forward(g, x, w, bias, y, prepared);
    apply_epilogue(ep, checked_mul(g.N, g.K, g.Ho * g.Wo), y);
}

// What conv2d would make of w on every call for the shape: Winograd's transformed filters, the
// channel-vectorised forward's weight panels; nothing for the other algorithms yet.
template <class T>
std::shared_ptr<const PreparedFilters> conv2d_prepare(const ConvShape& g, const T* w) {
    switch (forward_algorithm(g, true)) {
        case ForwardAlgorithm::winograd:  // U is not kept where it is computed per block
            if (winograd_layout<T>(g) == WinogradLayout::filter_blocks) return nullptr;
            return std::make_shared<const winograd::PreparedTransform<T, winograd::F4x3>>(g, w);
        case ForwardAlgorithm::by_channels: return std::make_shared<const PreparedChannelPanels<T>>(g, w);
        default: return nullptr;
    }
}

template <class T>
void conv2d_grad_weight(const ConvShape& g, const T* dy, const T* x, T* dw) {
    if (direct_asked(g)) return conv2d_grad_weight_direct(g, dy, x, dw);
    if (depthwise_pays(g)) return conv2d_grad_weight_depthwise(g, dy, x, dw);
    if (winograd_applies(g) &&
        (g.algorithm == conv_winograd || (g.algorithm == conv_auto && winograd_weight_grad_pays(g))))
        return conv2d_grad_weight_winograd(g, dy, x, dw);
    if (winograd_blocks_pay(g)) return conv2d_grad_weight_winograd_blocks(g, dy, x, dw);
    if (use_winograd_phases(g)) return conv2d_grad_weight_winograd_phases(g, dy, x, dw);
    if (subsampled_pays(g)) {
        const Scratch<T> xs = subsample(g, x);
        return conv2d_grad_weight(subsampled_shape(g), dy, xs.get(), dw);
    }
    if (whole_window_pays(g)) return conv2d_grad_weight_whole_window(g, dy, x, dw);
    if (pointwise_weight_grad_pays(g)) return conv2d_grad_weight_im2col(g, dy, x, dw);
    if (use_direct(g)) return conv2d_grad_weight_direct(g, dy, x, dw);
    if (weight_grad_rows_pays(g, sizeof(T))) return conv2d_grad_weight_rows(g, dy, x, dw);
    if (weight_grad_grid_before_by_channels(g) && conv2d_grad_weight_grid(g, dy, x, dw)) return;
    if (grad_weight_across_images_pays(g)) return conv2d_grad_weight_across_images(g, dy, x, dw);
    if (weight_grad_by_channels_pays(g)) return conv2d_grad_weight_by_channels(g, dy, x, dw);
    if (phase_grid_pays(g) && conv2d_grad_weight_grid(g, dy, x, dw)) return;  // else x has inf/NaN
    conv2d_grad_weight_im2col(g, dy, x, dw);
}

// The input gradient's algorithm for g (also the transposed convolution's): the rules above,
// in order.
enum class GradInputAlgorithm { direct, winograd_phases, depthwise, subsampled, whole_window, by_channels, as_forward, across_images, channels_last, col_rows, col2im };
template <class T>
GradInputAlgorithm grad_input_algorithm(const ConvShape& g) {
    // Winograd on the flipped forward convolution (conv/grad_input_as_forward.h), whose
    // padding 2 - ph must not be negative.
    const bool winograd = use_winograd(g) && g.ph <= 2 && g.pw <= 2;
    // Larger kernels' blocks on Winograd, in the flipped forward convolution likewise.
    const bool blocks = winograd_blocks_apply(g) && g.ph <= g.R - 1 && g.pw <= g.S - 1 &&
                        winograd_blocks_pay(grad_input_as_forward_shape(g));
    if (direct_asked(g)) return GradInputAlgorithm::direct;
    if (use_winograd_phases(g, 8)) return GradInputAlgorithm::winograd_phases;
    if (depthwise_pays(g)) return GradInputAlgorithm::depthwise;
    if (subsampled_pays(g)) return GradInputAlgorithm::subsampled;
    if (!winograd && !blocks && whole_window_pays(g)) return GradInputAlgorithm::whole_window;
    if (use_direct(g)) return GradInputAlgorithm::direct;
    if (winograd || blocks || grad_input_as_forward(g)) {
        ConvShape forward = grad_input_as_forward_shape(g);
        forward.algorithm = g.algorithm;
        // The channel-vectorised forward packs the flipped weights straight from w.
        return forward_algorithm(forward) == ForwardAlgorithm::by_channels ? GradInputAlgorithm::by_channels
                                                                           : GradInputAlgorithm::as_forward;
    }
    if (grad_input_across_images_pays(g)) return GradInputAlgorithm::across_images;
    if (grad_input_channels_last_pays(g, sizeof(T))) return GradInputAlgorithm::channels_last;
    if (grad_input_col_rows_pays(g)) return GradInputAlgorithm::col_rows;
    return GradInputAlgorithm::col2im;
}

template <class T>
void conv2d_grad_input(const ConvShape& g, const T* dy, const T* w, T* dx, const PreparedFilters* prepared = nullptr) {
    switch (grad_input_algorithm<T>(g)) {
        case GradInputAlgorithm::direct: return conv2d_grad_input_direct(g, dy, w, dx);
        case GradInputAlgorithm::winograd_phases: return conv2d_grad_input_winograd_phases(g, dy, w, dx);
        case GradInputAlgorithm::depthwise: return conv2d_grad_input_depthwise(g, dy, w, dx);
        case GradInputAlgorithm::subsampled: {
            const Scratch<T> dxs = scratch<T>(checked_mul(g.N, g.C, g.Ho * g.Wo));
            conv2d_grad_input(subsampled_shape(g), dy, w, dxs.get());
            return scatter_subsampled(g, dxs.get(), dx);
        }
        case GradInputAlgorithm::whole_window: return conv2d_grad_input_whole_window(g, dy, w, dx);
        case GradInputAlgorithm::by_channels: return conv2d_grad_input_by_channels(g, dy, w, dx);
        case GradInputAlgorithm::as_forward: {
            ConvShape forward = grad_input_as_forward_shape(g);
            forward.algorithm = g.algorithm;
            if (forward_algorithm(forward) == ForwardAlgorithm::winograd &&
                winograd_layout<T>(forward) == WinogradLayout::filter_blocks) {
                // The flipped, transposed taps read where they lie in w: no copy of w (9.4 MB for
                // 512 x 512, copied on one thread: a third of the input gradient's time).
                constexpr int RR = winograd::F4x3::R * winograd::F4x3::R;
                const auto tap = [w, C = g.C](int64_t c, int64_t k, int j) { return w[(k * C + c) * RR + RR - 1 - j]; };
                return winograd::forward_filter_blocks<T, winograd::F4x3>(forward, dy, tap, nullptr, dx, {});
            }
            const Scratch<T> flipped = flipped_transposed_weights(g, w);
            return conv2d_forward(forward, dy, flipped.get(), static_cast<const T*>(nullptr), dx);
        }
        case GradInputAlgorithm::across_images: return conv2d_grad_input_across_images(g, dy, w, dx);
        case GradInputAlgorithm::channels_last: return conv2d_grad_input_channels_last(g, dy, w, dx, prepared);
        case GradInputAlgorithm::col_rows: return conv2d_grad_input_col_rows(g, dy, w, dx);
        case GradInputAlgorithm::col2im: break;
    }
    conv2d_grad_input_col2im(g, dy, w, dx);
}

// The input gradient, then (a transposed convolution's forward) its bias per channel and relu
// (conv/epilogue.h's channel_bias_relu), where asked.
template <class T>
void conv2d_grad_input_then(const ConvShape& g, const T* dy, const T* w, T* dx, const T* bias, bool relu,
                            const PreparedFilters* prepared) {
    conv2d_grad_input(g, dy, w, dx, prepared);
    if (bias != nullptr || relu) channel_bias_relu(checked_mul(g.N, g.C), g.C, g.H * g.W, bias, relu, dx);
}

// What conv2d_grad_input (a transposed convolution's forward) would make of w on every call for
// the shape: the channels-last form's tap panels; nothing for the other algorithms yet.
template <class T>
std::shared_ptr<const PreparedFilters> conv2d_grad_input_prepare(const ConvShape& g, const T* w) {
    if (grad_input_algorithm<T>(g) == GradInputAlgorithm::channels_last)
        return std::make_shared<const PreparedTapPanels<T>>(g, w);
    return nullptr;
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
