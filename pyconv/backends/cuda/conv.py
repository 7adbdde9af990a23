"""Convolution on the GPU: forward, backward-data (= transpose conv) and backward-weight as a
shared-memory tiled implicit GEMM, a direct kernel for depthwise convs, and the bias gradient.

Implicit GEMM. Each pass is a matrix product whose operands are never materialised (no im2col
buffer): the tiles are gathered from the NCHW tensors while they are copied into shared memory.
For one group of a ConvGeom g (Cg = C/groups, Kg = K/groups, RS = R*S):

    pass         rows (M)      columns (P)         reduction (Q)       A (M x Q)      B (Q x P)
    forward      Kg out chans  N*Ho*Wo out pixels  Cg*R*S (c, r, s)    weights        input patches
    grad_input   Cg in chans   N*H*W in pixels     Kg*R*S (k, r, s)    weights^T      grad_out gathered
    grad_weight  Kg out chans  Cg*R*S (c, r, s)    N*Ho*Wo out pixels  grad_out       input patches

Tiling (float32): a block of 256 threads computes a BM x BN = 128 x 128 tile of the output,
each thread an 8 x 8 register tile (rows ty + 16 i, columns tx + 16 j, so that a warp's shared
memory reads are conflict-free: 16 consecutive words, broadcast to the two rows of threads).
The reduction advances BK = 8 at a time through tiles As (BK x BM, padded to BM + 4 so the
transposing stores hit 32 distinct banks) and Bs (BK x BN): 8.3 KB of shared memory.

Why these sizes (sm_90, H100 SXM: 132 SMs, 4 x 32 FP32 lanes per SM, 1 shared-memory load
instruction per clock per SM, ~67 TFLOP/s FP32, 3.35 TB/s HBM3):
* FMA versus shared memory: per k step a warp issues 64 FFMA (8 x 8 tile) and 16 LDS (8 of A,
  8 of B). The SM issues 4 FFMA warp-instructions per clock but only 1 LDS, so 64 FFMA take 16
  clocks and 16 LDS take 16 clocks: balanced, and the FMA pipe can stay busy. A 4 x 4 tile
  would give 16 FFMA (4 clocks) against 8 LDS (8 clocks): at most 50% of the FMA rate.
* Registers and occupancy (ptxas -v, sm_90): 212 / 184 / 197 registers (forward / grad_input
  / grad_weight), no spills, no stack: 64 accumulators + 16 fragments + 8 prefetched tile
  elements + 64-bit index arithmetic. So one 256-thread block (8 warps, 12.5% occupancy) per
  SM; capping at 128 registers for 2 blocks spilled ~300 B per thread. One block suffices
  because the parallelism is inside each thread: 64 independent FMA chains per k step cover
  the 4-cycle FMA latency with 2 warps per scheduler, and the global loads of the next tile
  are issued into registers before the multiply of this one (register prefetching), so their
  latency (~300 ns from L2, where most tiles come from as neighbouring blocks share them;
  ~700 ns from DRAM) hides behind the 128 x 128 x 8 FMAs / 128 lanes = 1024 cycles (~520 ns)
  of one tile. Exposed per tile: the shared-memory stores, two barriers and the index decode
  (~100-150 cycles), so ~80% of the FMA peak in the main loop is the expectation, and >= 50%
  overall for a large conv once partial edge tiles and the epilogue are counted.
* Global memory: per k tile a block reads (128 + 128) x 8 x 4 B = 8 KB and does
  2 x 128 x 128 x 8 = 262K FLOP: 32 FLOP/B, far above the 67 TFLOP/s / 3.35 TB/s = 20 FLOP/B
  machine balance even before L2 reuse, so a large conv (e.g. 256 -> 256 channels, 3x3,
  56x56, batch 32) is FMA-bound: the design target is >= 50% of the FP32 FMA rate.
* Index arithmetic stays out of the inner loop: the BK reduction indices of a k tile are
  decoded once (divisions by R*S and S) by BK threads into shared memory; every other thread
  decodes its one pixel column at the start. (64-bit divisions: NVPTX checks at run time that
  the operands fit in 32 bits and then uses the 32-bit divide.)
float64 uses a 4 x 4 register tile (64 x 64 block): 8 x 8 doubles would need ~250 registers.

Depthwise (groups == C, one input channel per group): the GEMM's reduction would be only
R*S long, so a direct kernel (one thread per output element, the window read through L1)
does it; it is bandwidth-bound (2*R*S FLOP per 8 B moved).
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

from . import backend
from ._kernel_util import REDUCE_THREADS, Kernels, block_sum, geometry_args, per_dtype
from ._runtime import THREADS, blocks_for, dummy, flat, launch, xp

GEMM_THREADS = 256  # 16 x 16 threads per implicit-GEMM block
BK = 8  # reduction depth of one shared-memory tile
A_PAD = 4  # As row padding: (BM + 4) mod 32 == 4 spreads a warp's 8 x 4 stores over 32 banks
# Per-split reduction length of grad_weight and the number of blocks worth filling the GPU with
# (132 SMs x 2 resident GEMM blocks).
WGRAD_MIN_CHUNK = 16 * BK
WGRAD_TARGET_BLOCKS = 264


def micro_tile(dtype) -> int:
    return 8 if np.dtype(dtype) == np.float32 else 4


def gemm_tile(dtype) -> int:
    """BM = BN, the block tile edge: 16 threads x the register tile."""
    return 16 * micro_tile(dtype)


@per_dtype
def kernels(dtype):
    dt = dtype.type
    TM = micro_tile(dtype)  # register tile edge
    BM = BN = 16 * TM
    A_LOADS = BM * BK // GEMM_THREADS  # elements of A (and of B) each thread copies per k tile
    A_ROWS = GEMM_THREADS // BK  # row stride between one thread's A elements
    B_ROWS = GEMM_THREADS // BN  # reduction-row stride between one thread's B elements
    AS_COLS = BM + A_PAD
    ks = Kernels(dtype)
    G = "n" * 16  # the ConvGeom fields, in their order
    BOUNDS = (GEMM_THREADS, 1)  # see the module docstring: 2 blocks per SM would spill

    @cuda.jit(device=True)
    def zero_tile(acc):
        for i in range(TM):
            for j in range(TM):
                acc[i, j] = dt(0)

    @cuda.jit(device=True)
    def multiply_tiles(As, Bs, acc, tx, ty):
        """acc += this thread's 8 x 8 part of As^T Bs over the BK rows of the tiles."""
        a = cuda.local.array(TM, dt)
        b = cuda.local.array(TM, dt)
        for kk in range(BK):
            for i in range(TM):
                a[i] = As[kk, ty + 16 * i]
                b[i] = Bs[kk, tx + 16 * i]
            for i in range(TM):
                for j in range(TM):
                    acc[i, j] += a[i] * b[j]

    # The three GEMM kernels share one pipeline per k tile t (n tiles of BK reduction indices):
    #   store the registers holding tile t into As/Bs | decode tile t+1's indices | barrier |
    #   issue tile t+1's global loads into registers  | multiply tile t           | barrier
    # so the global loads of the next tile are in flight while the FMAs of this one run
    # (register prefetching: 2 x A_LOADS registers, instead of a second shared buffer). The
    # loop starts at t = -1, which only decodes and fetches tile 0. Decoded indices live in
    # two shared slots (t % 2), since tile t+1 is decoded while tile t's may still be read.

    @ks.add("fffnf" + G, BOUNDS)
    def conv2d_fwd(x, w, b, has_bias, y, N, C, H, W, K, R, S, Ho, Wo, sh, sw, ph, pw, dh, dw, groups):
        Cg = C // groups
        Kg = K // groups
        RS = R * S
        Q = Cg * RS
        HoWo = Ho * Wo
        P = N * HoWo
        grp = cuda.blockIdx.z
        m0 = cuda.blockIdx.y * BM
        p0 = cuda.blockIdx.x * BN
        tid = cuda.threadIdx.x
        tx = tid % 16
        ty = tid // 16
        As = cuda.shared.array((BK, AS_COLS), dt)
        Bs = cuda.shared.array((BK, BN), dt)
        q_off = cuda.shared.array((2, BK), np.int64)  # input offset of reduction index (c, r, s)
        q_dr = cuda.shared.array((2, BK), np.int64)  # r * dh
        q_ds = cuda.shared.array((2, BK), np.int64)  # s * dw
        ra = cuda.local.array(A_LOADS, dt)  # this thread's elements of the next A and B tiles
        rb = cuda.local.array(A_LOADS, dt)

        # The output pixel whose column of B this thread copies, decoded once.
        col = tid % BN
        p = p0 + col
        n = p // HoWo
        ho = (p - n * HoWo) // Wo
        wo = p - n * HoWo - ho * Wo
        hi0 = ho * sh - ph
        wi0 = wo * sw - pw
        x_base = (n * C + grp * Cg) * H * W + hi0 * W + wi0
        w_base = (grp * Kg + m0) * Q
        kk = tid % BK  # the reduction column of A this thread copies

        acc = cuda.local.array((TM, TM), dt)
        zero_tile(acc)
        n_tiles = (Q + BK - 1) // BK
        for t in range(-1, n_tiles):
            if t >= 0:
                for j in range(A_LOADS):
                    As[kk, tid // BK + j * A_ROWS] = ra[j]
                    Bs[tid // BN + j * B_ROWS, col] = rb[j]
            k1 = (t + 1) * BK  # first reduction index of the next tile
            slot = (t + 1) % 2
            if tid < BK and k1 < Q:
                c = (k1 + tid) // RS
                r = (k1 + tid - c * RS) // S
                s = k1 + tid - c * RS - r * S
                q_dr[slot, tid] = r * dh
                q_ds[slot, tid] = s * dw
                q_off[slot, tid] = c * H * W + r * dh * W + s * dw
            cuda.syncthreads()
            if k1 < Q:
                for j in range(A_LOADS):
                    m = tid // BK + j * A_ROWS
                    v = dt(0)
                    if m0 + m < Kg and k1 + kk < Q:
                        v = w[w_base + m * Q + k1 + kk]
                    ra[j] = v
                    kb = tid // BN + j * B_ROWS
                    hi = hi0 + q_dr[slot, kb]
                    wi = wi0 + q_ds[slot, kb]
                    v = dt(0)
                    if p < P and k1 + kb < Q and 0 <= hi < H and 0 <= wi < W:
                        v = x[x_base + q_off[slot, kb]]
                    rb[j] = v
            if t >= 0:
                multiply_tiles(As, Bs, acc, tx, ty)
            cuda.syncthreads()

        # Output offset of each of this thread's pixel columns (-1 past the end), decoded
        # before the store loop so that it unrolls and acc stays in registers.
        out_at = cuda.local.array(TM, np.int64)
        for j in range(TM):
            p = p0 + tx + 16 * j
            n = p // HoWo
            out_at[j] = n * K * HoWo + p - n * HoWo if p < P else -1
        for i in range(TM):
            m = m0 + ty + 16 * i
            if m < Kg:
                k = grp * Kg + m
                bias = b[k] if has_bias != 0 else dt(0)
                for j in range(TM):
                    if out_at[j] >= 0:
                        y[out_at[j] + k * HoWo] = acc[i, j] + bias

    @ks.add("fff" + G, BOUNDS)
    def conv2d_dgrad(dy, w, dx, N, C, H, W, K, R, S, Ho, Wo, sh, sw, ph, pw, dh, dw, groups):
        Cg = C // groups
        Kg = K // groups
        RS = R * S
        Q = Kg * RS
        HW = H * W
        HoWo = Ho * Wo
        P = N * HW
        grp = cuda.blockIdx.z
        m0 = cuda.blockIdx.y * BM  # input channel (within the group) of the tile's first row
        p0 = cuda.blockIdx.x * BN  # first input pixel of the tile
        tid = cuda.threadIdx.x
        tx = tid % 16
        ty = tid // 16
        As = cuda.shared.array((BK, AS_COLS), dt)
        Bs = cuda.shared.array((BK, BN), dt)
        q_woff = cuda.shared.array((2, BK), np.int64)  # weight offset of (k, r, s), less m * R*S
        q_yoff = cuda.shared.array((2, BK), np.int64)  # k * Ho*Wo
        q_dr = cuda.shared.array((2, BK), np.int64)
        q_ds = cuda.shared.array((2, BK), np.int64)
        ra = cuda.local.array(A_LOADS, dt)
        rb = cuda.local.array(A_LOADS, dt)

        col = tid % BN
        p = p0 + col
        n = p // HW
        hi = (p - n * HW) // W
        wi = p - n * HW - hi * W
        y_base = (n * K + grp * Kg) * HoWo
        kk = tid % BK

        acc = cuda.local.array((TM, TM), dt)
        zero_tile(acc)
        n_tiles = (Q + BK - 1) // BK
        for t in range(-1, n_tiles):
            if t >= 0:
                for j in range(A_LOADS):
                    As[kk, tid // BK + j * A_ROWS] = ra[j]
                    Bs[tid // BN + j * B_ROWS, col] = rb[j]
            k1 = (t + 1) * BK
            slot = (t + 1) % 2
            if tid < BK and k1 < Q:
                k = (k1 + tid) // RS
                rs = k1 + tid - k * RS
                r = rs // S
                q_woff[slot, tid] = (grp * Kg + k) * Cg * RS + rs
                q_yoff[slot, tid] = k * HoWo
                q_dr[slot, tid] = r * dh
                q_ds[slot, tid] = (rs - r * S) * dw
            cuda.syncthreads()
            if k1 < Q:
                for j in range(A_LOADS):
                    m = tid // BK + j * A_ROWS
                    v = dt(0)
                    if m0 + m < Cg and k1 + kk < Q:
                        v = w[q_woff[slot, kk] + (m0 + m) * RS]
                    ra[j] = v
                    # grad_out pixel (ho, wo) with ho*sh - ph + r*dh == hi, if there is one.
                    kb = tid // BN + j * B_ROWS
                    th = hi + ph - q_dr[slot, kb]
                    tw = wi + pw - q_ds[slot, kb]
                    ho = th // sh
                    wo = tw // sw
                    v = dt(0)
                    if (p < P and k1 + kb < Q and th >= 0 and tw >= 0 and ho * sh == th
                            and wo * sw == tw and ho < Ho and wo < Wo):
                        v = dy[y_base + q_yoff[slot, kb] + ho * Wo + wo]
                    rb[j] = v
            if t >= 0:
                multiply_tiles(As, Bs, acc, tx, ty)
            cuda.syncthreads()

        out_at = cuda.local.array(TM, np.int64)
        for j in range(TM):
            p = p0 + tx + 16 * j
            n = p // HW
            out_at[j] = (n * C + grp * Cg) * HW + p - n * HW if p < P else -1
        for i in range(TM):
            m = m0 + ty + 16 * i
            if m < Cg:
                for j in range(TM):
                    if out_at[j] >= 0:
                        dx[out_at[j] + m * HW] = acc[i, j]

    @ks.add("fffnn" + G, BOUNDS)
    def conv2d_wgrad(dy, x, dw_parts, splits, chunk,
                     N, C, H, W, K, R, S, Ho, Wo, sh, sw, ph, pw, dh, dw, groups):
        Cg = C // groups
        Kg = K // groups
        RS = R * S
        Q = Cg * RS  # columns: (c, r, s)
        HW = H * W
        HoWo = Ho * Wo
        P = N * HoWo  # reduction: output pixels, split into `splits` chunks
        grp = cuda.blockIdx.z // splits
        split = cuda.blockIdx.z - grp * splits
        p_begin = split * chunk
        p_end = min(P, p_begin + chunk)
        m0 = cuda.blockIdx.y * BM
        q0 = cuda.blockIdx.x * BN
        tid = cuda.threadIdx.x
        tx = tid % 16
        ty = tid // 16
        As = cuda.shared.array((BK, AS_COLS), dt)
        Bs = cuda.shared.array((BK, BN), dt)
        p_y = cuda.shared.array((2, BK), np.int64)  # grad_out offset of pixel p, less m * Ho*Wo
        p_x = cuda.shared.array((2, BK), np.int64)  # input offset of the pixel's window corner
        p_hi = cuda.shared.array((2, BK), np.int64)
        p_wi = cuda.shared.array((2, BK), np.int64)
        ra = cuda.local.array(A_LOADS, dt)
        rb = cuda.local.array(A_LOADS, dt)

        # The reduction index (c, r, s) whose column of B this thread copies, decoded once.
        col = tid % BN
        q = q0 + col
        c = q // RS
        r = (q - c * RS) // S
        s = q - c * RS - r * S
        q_off = c * HW + r * dh * W + s * dw
        kk = tid % BK

        acc = cuda.local.array((TM, TM), dt)
        zero_tile(acc)
        n_tiles = (p_end - p_begin + BK - 1) // BK
        for t in range(-1, n_tiles):
            if t >= 0:
                for j in range(A_LOADS):
                    As[kk, tid // BK + j * A_ROWS] = ra[j]
                    Bs[tid // BN + j * B_ROWS, col] = rb[j]
            k1 = p_begin + (t + 1) * BK
            slot = (t + 1) % 2
            if tid < BK and k1 + tid < p_end:
                n = (k1 + tid) // HoWo
                ho = (k1 + tid - n * HoWo) // Wo
                wo = k1 + tid - n * HoWo - ho * Wo
                p_y[slot, tid] = (n * K + grp * Kg) * HoWo + ho * Wo + wo
                p_hi[slot, tid] = ho * sh - ph
                p_wi[slot, tid] = wo * sw - pw
                p_x[slot, tid] = (n * C + grp * Cg) * HW + (ho * sh - ph) * W + wo * sw - pw
            cuda.syncthreads()
            if k1 < p_end:
                for j in range(A_LOADS):
                    m = tid // BK + j * A_ROWS
                    v = dt(0)
                    if m0 + m < Kg and k1 + kk < p_end:
                        v = dy[p_y[slot, kk] + (m0 + m) * HoWo]
                    ra[j] = v
                    kb = tid // BN + j * B_ROWS
                    hi = p_hi[slot, kb] + r * dh
                    wi = p_wi[slot, kb] + s * dw
                    v = dt(0)
                    if q < Q and k1 + kb < p_end and 0 <= hi < H and 0 <= wi < W:
                        v = x[p_x[slot, kb] + q_off]
                    rb[j] = v
            if t >= 0:
                multiply_tiles(As, Bs, acc, tx, ty)
            cuda.syncthreads()

        for i in range(TM):
            m = m0 + ty + 16 * i
            if m < Kg:
                out = (split * K + grp * Kg + m) * Q
                for j in range(TM):
                    q = q0 + tx + 16 * j
                    if q < Q:
                        dw_parts[out + q] = acc[i, j]

    @ks.add("fffnf" + G)
    def depthwise_fwd(x, w, b, has_bias, y, N, C, H, W, K, R, S, Ho, Wo, sh, sw, ph, pw, dh, dw, groups):
        mult = K // C  # output channels per input channel
        HoWo = Ho * Wo
        for e in range(cuda.grid(1), N * K * HoWo, cuda.gridsize(1)):
            nk = e // HoWo
            ho = (e - nk * HoWo) // Wo
            wo = e - nk * HoWo - ho * Wo
            k = nk % K
            x_plane = (nk // K * C + k // mult) * H * W
            acc = dt(0)
            if has_bias != 0:
                acc = b[k]
            for r in range(R):
                hi = ho * sh - ph + r * dh
                if 0 <= hi < H:
                    for s in range(S):
                        wi = wo * sw - pw + s * dw
                        if 0 <= wi < W:
                            acc += x[x_plane + hi * W + wi] * w[(k * R + r) * S + s]
            y[e] = acc

    @ks.add("fff" + G)
    def depthwise_dgrad(dy, w, dx, N, C, H, W, K, R, S, Ho, Wo, sh, sw, ph, pw, dh, dw, groups):
        # One thread per input element gathers from every output that read it: no atomics.
        mult = K // C
        HW = H * W
        for e in range(cuda.grid(1), N * C * HW, cuda.gridsize(1)):
            nc = e // HW
            hi = (e - nc * HW) // W
            wi = e - nc * HW - hi * W
            n = nc // C
            c = nc - n * C
            acc = dt(0)
            for k in range(c * mult, (c + 1) * mult):
                y_plane = (n * K + k) * Ho * Wo
                for r in range(R):
                    th = hi + ph - r * dh
                    ho = th // sh
                    if th >= 0 and ho * sh == th and ho < Ho:
                        for s in range(S):
                            tw = wi + pw - s * dw
                            wo = tw // sw
                            if tw >= 0 and wo * sw == tw and wo < Wo:
                                acc += dy[y_plane + ho * Wo + wo] * w[(k * R + r) * S + s]
            dx[e] = acc

    @ks.add("fff" + G)
    def depthwise_wgrad(dy, x, dwt, N, C, H, W, K, R, S, Ho, Wo, sh, sw, ph, pw, dh, dw, groups):
        # Block (r*S + s, k) sums dy * x over all N*Ho*Wo output pixels: warps take output rows
        # (one division per row), lanes take consecutive columns (coalesced).
        buf = cuda.shared.array(REDUCE_THREADS, dt)
        rs = cuda.blockIdx.x
        k = cuda.blockIdx.y
        r = rs // S
        s = rs - r * S
        c = k // (K // C)
        lane = cuda.threadIdx.x % 32
        warp = cuda.threadIdx.x // 32
        acc = dt(0)
        for nho in range(warp, N * Ho, REDUCE_THREADS // 32):
            n = nho // Ho
            ho = nho - n * Ho
            hi = ho * sh - ph + r * dh
            if 0 <= hi < H:
                y_row = ((n * K + k) * Ho + ho) * Wo
                x_row = ((n * C + c) * H + hi) * W
                for wo in range(lane, Wo, 32):
                    wi = wo * sw - pw + s * dw
                    if 0 <= wi < W:
                        acc += dy[y_row + wo] * x[x_row + wi]
        total = block_sum(buf, acc)
        if cuda.threadIdx.x == 0:
            dwt[k * R * S + rs] = total

    @ks.add("ffnn")
    def bias_grad(dy, db, N, HoWo):
        # Block k sums channel k over the batch; a fixed-order tree makes it deterministic.
        buf = cuda.shared.array(REDUCE_THREADS, dt)
        k = cuda.blockIdx.x
        K = cuda.gridDim.x
        acc = dt(0)
        for n in range(N):
            plane = (n * K + k) * HoWo
            for i in range(cuda.threadIdx.x, HoWo, REDUCE_THREADS):
                acc += dy[plane + i]
        total = block_sum(buf, acc)
        if cuda.threadIdx.x == 0:
            db[k] = total

    return ks


# ---------------------------------------------------------------------------------------------
# Host side: allocate the outputs, pick the kernel, size the grid.


def _cdiv(a, b):
    return -(-a // b)


def is_depthwise(g) -> bool:
    return g.groups > 1 and g.groups == g.C


def wgrad_split(g, dtype):
    """(splits, chunk): grad_weight's reduction over N*Ho*Wo pixels is cut into `splits`
    chunks of `chunk` pixels (a multiple of BK) when the output tiles alone cannot fill the
    GPU; the partial sums are added afterwards in a fixed order (deterministic)."""
    tile = gemm_tile(dtype)
    P = g.N * g.Ho * g.Wo
    tiles = _cdiv(g.K // g.groups, tile) * _cdiv(g.C // g.groups * g.R * g.S, tile) * g.groups
    splits = max(1, min(_cdiv(WGRAD_TARGET_BLOCKS, tiles), _cdiv(P, WGRAD_MIN_CHUNK), 65535 // g.groups))
    chunk = _cdiv(_cdiv(P, splits), BK) * BK
    return _cdiv(P, chunk), chunk


@backend.register
def conv2d(x, w, b, g):
    y = xp.empty(g.output_shape, x.dtype)
    ks = kernels(x.dtype)
    bias = dummy(x.dtype) if b is None else b
    buffers = (flat(x), flat(w), bias, int(b is not None), flat(y))
    if is_depthwise(g):
        launch(ks.depthwise_fwd, blocks_for(y.size), THREADS,
               *geometry_args(ks.depthwise_fwd, g, *buffers))
    else:
        tile = gemm_tile(x.dtype)
        grid = (_cdiv(g.N * g.Ho * g.Wo, tile), _cdiv(g.K // g.groups, tile), g.groups)
        launch(ks.conv2d_fwd, grid, GEMM_THREADS, *geometry_args(ks.conv2d_fwd, g, *buffers))
    return y


@backend.register
def conv2d_grad_input(grad_out, w, g):
    dx = xp.empty(g.input_shape, grad_out.dtype)
    ks = kernels(grad_out.dtype)
    buffers = (flat(grad_out), flat(w), flat(dx))
    if is_depthwise(g):
        launch(ks.depthwise_dgrad, blocks_for(dx.size), THREADS,
               *geometry_args(ks.depthwise_dgrad, g, *buffers))
    else:
        tile = gemm_tile(dx.dtype)
        grid = (_cdiv(g.N * g.H * g.W, tile), _cdiv(g.C // g.groups, tile), g.groups)
        launch(ks.conv2d_dgrad, grid, GEMM_THREADS, *geometry_args(ks.conv2d_dgrad, g, *buffers))
    return dx


@backend.register
def conv2d_grad_weight(grad_out, x, g):
    ks = kernels(x.dtype)
    if is_depthwise(g):
        dw = xp.empty(g.weight_shape, x.dtype)
        launch(ks.depthwise_wgrad, (g.R * g.S, g.K), REDUCE_THREADS,
               *geometry_args(ks.depthwise_wgrad, g, flat(grad_out), flat(x), flat(dw)))
        return dw
    splits, chunk = wgrad_split(g, x.dtype)
    parts = xp.empty((splits,) + g.weight_shape, x.dtype)
    tile = gemm_tile(x.dtype)
    grid = (_cdiv(g.C // g.groups * g.R * g.S, tile), _cdiv(g.K // g.groups, tile), g.groups * splits)
    launch(ks.conv2d_wgrad, grid, GEMM_THREADS,
           *geometry_args(ks.conv2d_wgrad, g, flat(grad_out), flat(x), flat(parts), splits, chunk))
    return parts[0] if splits == 1 else parts.sum(axis=0)


@backend.register
def conv2d_grad_bias(grad_out):
    N, K = grad_out.shape[:2]
    db = xp.empty(K, grad_out.dtype)
    launch(kernels(grad_out.dtype).bias_grad, K, REDUCE_THREADS, flat(grad_out), db, N,
           math.prod(grad_out.shape[2:]))
    return db
