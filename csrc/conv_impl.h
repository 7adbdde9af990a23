// Convolution kernels on the packed GEMM (gemm_impl.h), plus a direct kernel for grouped /
// depthwise convolutions. Included inside namespace pyconv::<isa> by kernels_isa.inc.
//
// Notation (ConvShape): input x (N, C, H, W), weight w (K, Cg, R, S) with Cg = C / groups,
// output y (N, K, Ho, Wo), Kg = K / groups. Output (ho, wo) reads input row ho*sh - ph + r*dh
// and column wo*sw - pw + s*dw.
//
// As GEMMs, per group, with X the im2col matrix X[(c,r,s), (n,ho,wo)] (never stored whole):
//   forward      y[k, (n,ho,wo)] = sum_{(c,r,s)} w[k, (c,r,s)] X[(c,r,s), (n,ho,wo)]
//                With 64+ output channels per group (and a kernel larger than 1x1) transposed,
//                vectorised over output channels, X broadcast element by element from a padded
//                copy of x (see "Channel-vectorised kernels"). Otherwise vectorised over pixels:
//                B read from a "phase grid" (x copied once, padded and split by stride phase, so
//                each tap reads contiguous pixels) or, when the grid would waste many columns on
//                a wide GEMM, gathered from x row run by row run.
//   grad weight  dw[k, (c,r,s)] = sum_{(n,ho,wo)} dy[k, (n,ho,wo)] X[(c,r,s), (n,ho,wo)]
//                vectorised over output channels from 16 per group; else on the phase grid in
//                the GEMM's dot-product form (both operands run along pixels), else with X
//                transposed while packing.
//   grad input   stride 1: the forward convolution of dy with flipped, transposed weights;
//                otherwise col[(c,r,s), (n,ho,wo)] = sum_k w[k, (c,r,s)] dy[k, (n,ho,wo)] with
//                each tile of col added into grad_x where it belongs (col2im), vectorised over
//                channels and added into a channels-last copy of grad_x from 64 channels on.
//                This is also the transpose convolution's forward pass.
// Grouped convolutions with few channels per group (depthwise) run a direct kernel instead.

// ---------------------------------------------------------------------------------------------
// Implicit im2col.

// [lo, hi): the t < len for which first + t * step lies in [0, width). Stride 1, the common
// case, needs no division.
inline void inside(int64_t first, int64_t step, int64_t width, int64_t len, int64_t& lo, int64_t& hi) {
    if (step == 1) {
        lo = std::clamp<int64_t>(-first, 0, len);
        hi = std::clamp<int64_t>(width - first, lo, len);
        return;
    }
    lo = std::min(len, first >= 0 ? 0 : (-first + step - 1) / step);
    hi = std::max(lo, std::min(len, first >= width ? 0 : (width - first + step - 1) / step));
}

// dst[t * dst_step] = row[first + t * step] where that lies in [0, width), else 0, t < len.
template <class T>
inline void gather_row(const T* row, int64_t width, int64_t first, int64_t step, int64_t len,
                       T* dst, int64_t dst_step) {
    int64_t lo, hi;
    inside(first, step, width, len, lo, hi);
    for (int64_t t = 0; t < lo; ++t) dst[t * dst_step] = T(0);
    if (step == 1 && dst_step == 1) {
        if (hi > lo) std::memcpy(dst + lo, row + first + lo, sizeof(T) * (hi - lo));
    } else {
        for (int64_t t = lo; t < hi; ++t) dst[t * dst_step] = row[first + t * step];
    }
    for (int64_t t = hi; t < len; ++t) dst[t * dst_step] = T(0);
}

// Consecutive pixel indices j = (n * rows + a) * cols + b that share an image n and a row a:
// b in [b0, b0 + len), the first of them at position `pos` of the range being split.
struct PixelRun {
    int64_t n, a, b0, len, pos;
};

// Splits pixels [j0, j0 + count) into runs; `out` has room for `count` runs. Returns how many.
inline int64_t pixel_runs(int64_t j0, int64_t count, int64_t rows, int64_t cols, PixelRun* out) {
    int64_t n = j0 / (rows * cols), a = (j0 / cols) % rows, b = j0 % cols, used = 0;
    for (int64_t pos = 0; pos < count;) {
        const int64_t len = std::min(cols - b, count - pos);
        out[used++] = PixelRun{n, a, b, len, pos};
        pos += len;
        b = 0;
        if (++a == rows) a = 0, ++n;
    }
    return used;
}

// One reduction row of the im2col matrix: which source channel plane and which offsets.
struct Tap {
    int64_t plane;       // channel offset within an image of the source, in elements
    int64_t dh, dw;      // source row = a * sh + dh, column = b * sw + dw
};

// The im2col matrix X[tap, pixel] of a source tensor (images of `image_stride` elements, planes
// Hs x Ws), pixels (n, a, b) over an output grid rows x cols, read with strides sh, sw.
template <class T>
struct Im2col {
    const T* src;
    int64_t image_stride, Hs, Ws;
    int64_t rows, cols, sh, sw;
    const Tap* taps;

    // Row `tap` of X over pixels of `run`, into dst (element t at dst[t * dst_step]).
    void gather(const Tap& tap, const PixelRun& run, T* dst, int64_t dst_step) const {
        const int64_t h = run.a * sh + tap.dh;
        if (h < 0 || h >= Hs) {
            for (int64_t t = 0; t < run.len; ++t) dst[t * dst_step] = T(0);
            return;
        }
        const T* row = src + run.n * image_stride + tap.plane + h * Ws;
        gather_row(row, Ws, run.b0 * sw + tap.dw, sw, run.len, dst, dst_step);
    }

    // As GEMM operand B (taps x pixels): dst[k * NR + j] = X[k0 + k, j0 + j].
    void pack_panel(int64_t k0, int64_t kc, int64_t j0, int64_t count, T* dst) const {
        constexpr int NR = gemm_nr<T>();
        PixelRun runs[NR];
        const int64_t n_runs = pixel_runs(j0, count, rows, cols, runs);
        for (int64_t k = 0; k < kc; ++k) {
            T* d = dst + k * NR;
            for (int64_t r = 0; r < n_runs; ++r) gather(taps[k0 + k], runs[r], d + runs[r].pos, 1);
            for (int64_t j = count; j < NR; ++j) d[j] = T(0);
        }
    }
};

// X transposed (pixels x taps): operand B of the weight gradient.
template <class T>
struct Im2colTransposed {
    Im2col<T> x;

    // dst[k * NR + j] = X[j0 + j, k0 + k]: pixels k0.. (the reduction), taps j0...
    void pack_panel(int64_t k0, int64_t kc, int64_t j0, int64_t count, T* dst) const {
        constexpr int NR = gemm_nr<T>();
        PixelRun runs[GemmTile<T>::KC];
        const int64_t n_runs = pixel_runs(k0, kc, x.rows, x.cols, runs);
        for (int64_t j = 0; j < NR; ++j) {
            if (j >= count) {
                for (int64_t k = 0; k < kc; ++k) dst[k * NR + j] = T(0);
                continue;
            }
            for (int64_t r = 0; r < n_runs; ++r)
                x.gather(x.taps[j0 + j], runs[r], dst + runs[r].pos * NR + j, NR);
        }
    }
};

// The taps of a direct convolution over a source with planes H x W: (c, r, s) row-major.
inline void direct_taps(const ConvShape& g, Tap* taps) {
    const int64_t Cg = g.C / g.groups;
    Tap* t = taps;
    for (int64_t c = 0; c < Cg; ++c)
        for (int64_t r = 0; r < g.R; ++r)
            for (int64_t s = 0; s < g.S; ++s)
                *t++ = Tap{c * g.H * g.W, r * g.dh - g.ph, s * g.dw - g.pw};
}

// ---------------------------------------------------------------------------------------------
// The phase grid: x copied once into zero-padded planes split by stride phase, so that every
// tap of the convolution reads a *contiguous* run of the output grid.
//
// Tap (c, r, s) at output (ho, wo) reads x row (ho + qh)*sh + rh - ph with qh = r*dh / sh and
// rh = r*dh % sh (columns alike). Phase plane (c, rh, rw) holds x[h'*sh + rh - ph, w'*sw + rw - pw]
// for h' < Hq, w' < Wq, where Hq = Ho + max qh and Wq = Wo + max qw. On a grid of Wq columns
// per output row, output q = ho*Wq + wo reads plane offset q + qh*Wq + qw: the packing of B is a
// plain copy. Columns wo >= Wo of the grid are computed and dropped (Wq - Wo of every Wq).

struct PhaseGrid {
    int64_t phases, Hq, Wq, plane, image, slack;
    explicit PhaseGrid(const ConvShape& g)
        : phases(g.sh * g.sw),
          Hq(g.Ho + (g.R - 1) * g.dh / g.sh),
          Wq(g.Wo + (g.S - 1) * g.dw / g.sw),
          plane(Hq * Wq),
          image(g.C * phases * plane),
          slack((g.S - 1) * g.dw / g.sw) {}  // the last taps read this far past the last plane
    int64_t pixels(const ConvShape& g) const { return g.Ho * Wq; }
    // True when the grid is x itself (1x1, stride 1, no padding): no copy needed.
    bool is_input(const ConvShape& g) const {
        return phases == 1 && g.ph == 0 && g.pw == 0 && Hq == g.H && Wq == g.W && slack == 0;
    }
    int64_t size(const ConvShape& g) const { return g.N * image + slack; }

    // Offset of tap (c, r, s) from the start of an image's planes (c counted within the group).
    int64_t tap_offset(const ConvShape& g, int64_t c, int64_t r, int64_t s) const {
        const int64_t phase = (r * g.dh % g.sh) * g.sw + s * g.dw % g.sw;
        return (c * phases + phase) * plane + (r * g.dh / g.sh) * Wq + s * g.dw / g.sw;
    }
};

// Offsets of the taps (c, r, s) of one group, row-major, in a source layout that has
// tap_offset(g, c, r, s) (PhaseGrid, PaddedInput).
template <class Layout>
std::vector<int64_t> tap_offsets(const ConvShape& g, const Layout& source) {
    std::vector<int64_t> offsets;
    offsets.reserve(g.C / g.groups * g.R * g.S);
    for (int64_t c = 0; c < g.C / g.groups; ++c)
        for (int64_t r = 0; r < g.R; ++r)
            for (int64_t s = 0; s < g.S; ++s) offsets.push_back(source.tap_offset(g, c, r, s));
    return offsets;
}

// Worth it when few columns are wasted, or when the GEMM has so few rows (output channels)
// that packing, which the grid makes a copy, is the larger cost.
inline bool phase_grid_pays(const ConvShape& g) {
    const PhaseGrid pg(g);
    return g.K / g.groups <= 64 || pg.Wq * 10 <= g.Wo * 11;
}

template <class T>
void fill_phase_grid(const ConvShape& g, const PhaseGrid& pg, const T* x, T* xq) {
    const int64_t planes = g.N * g.C;
#pragma omp parallel for num_threads(num_threads()) schedule(static)
    for (int64_t p = 0; p < planes; ++p) {
        const T* src = x + p * g.H * g.W;
        for (int64_t ph_h = 0; ph_h < g.sh; ++ph_h)
            for (int64_t ph_w = 0; ph_w < g.sw; ++ph_w) {
                T* dst = xq + (p * pg.phases + ph_h * g.sw + ph_w) * pg.plane;
                const int64_t first = ph_w - g.pw;  // input column of grid column 0
                int64_t lo, hi;                     // grid columns inside the input, for every row
                inside(first, g.sw, g.W, pg.Wq, lo, hi);
                for (int64_t hq = 0; hq < pg.Hq; ++hq) {
                    const int64_t h = hq * g.sh + ph_h - g.ph;
                    T* d = dst + hq * pg.Wq;
                    if (h < 0 || h >= g.H) {
                        std::fill(d, d + pg.Wq, T(0));
                        continue;
                    }
                    const T* row = src + h * g.W;
                    std::fill(d, d + lo, T(0));
                    if (g.sw == 1) std::copy(row + first + lo, row + first + hi, d + lo);
                    else for (int64_t t = lo; t < hi; ++t) d[t] = row[first + t * g.sw];
                    std::fill(d + hi, d + pg.Wq, T(0));
                }
            }
    }
    std::fill(xq + g.N * pg.image, xq + pg.size(g), T(0));
}

// The phase grid of x: x itself where they coincide, else a copy filled into `storage`.
template <class T>
const T* phase_grid_of(const ConvShape& g, const PhaseGrid& pg, const T* x, Scratch<T>& storage) {
    if (pg.is_input(g)) return x;
    storage = scratch<T>(pg.size(g));
    fill_phase_grid(g, pg, x, storage.get());
    return storage.get();
}

// Forward convolution on the phase grid: per group, y[k, (n, ho, wo)] over the grid's columns.
template <class T>
void conv2d_forward_grid(const ConvShape& g, const T* x, const T* w, const T* bias, T* y) {
    const int64_t Cg = g.C / g.groups, Kg = g.K / g.groups, taps_n = Cg * g.R * g.S;
    const int64_t HoWo = g.Ho * g.Wo;
    const PhaseGrid pg(g);
    Scratch<T> storage;
    const T* xq = phase_grid_of(g, pg, x, storage);
    const std::vector<int64_t> offsets = tap_offsets(g, pg);
    for (int64_t grp = 0; grp < g.groups; ++grp) {
        const PrepackedA<T> A(Kg, taps_n, InMatrixA<T>::plain(w + grp * Kg * taps_n, taps_n, taps_n));
        InMatrixB<T> B{xq + grp * Cg * pg.phases * pg.plane, 0, pg.pixels(g), pg.image};
        B.row_offsets = offsets.data();
        // Grid column (n, ho, wo) -> y[n, k, ho, wo], dropped when wo >= Wo. With no columns to
        // drop (kernels no wider than the stride, e.g. 1x1) an image's pixels are one contiguous
        // run, so whole tiles store in place instead of going through the edge tile in runs of Wo.
        OutMatrix<T> C{y + grp * Kg * HoWo, HoWo, pg.Wq, 1, g.Ho, g.Wo, g.K * HoWo};
        if (pg.Wq == g.Wo) C = OutMatrix<T>{y + grp * Kg * HoWo, HoWo, HoWo, 1, 1, 0, g.K * HoWo};
        else C.n0_valid = g.Wo;
        C.bias = bias ? bias + grp * Kg : nullptr;
        gemm_parallel<T>(Kg, g.N * pg.pixels(g), taps_n, A, B, C);
    }
}

// Weight gradient on the phase grid, in the GEMM's dot-product form: both dy and the grid run
// along pixels, so no packing has to transpose. dy is copied onto the grid's columns first,
// with zeros in the columns wo >= Wo that the grid computes and drops.
template <class T>
void conv2d_grad_weight_grid(const ConvShape& g, const T* dy, const T* x, T* dw) {
    const int64_t Cg = g.C / g.groups, Kg = g.K / g.groups, taps_n = Cg * g.R * g.S;
    const PhaseGrid pg(g);
    const int64_t pixels = pg.pixels(g);
    Scratch<T> storage;
    const T* xq = phase_grid_of(g, pg, x, storage);
    Scratch<T> dyq = scratch<T>(g.N * g.K * pixels);
#pragma omp parallel for num_threads(num_threads()) schedule(static)
    for (int64_t p = 0; p < g.N * g.K; ++p)
        for (int64_t ho = 0; ho < g.Ho; ++ho) {
            T* d = dyq.get() + p * pixels + ho * pg.Wq;
            std::copy(dy + (p * g.Ho + ho) * g.Wo, dy + (p * g.Ho + ho + 1) * g.Wo, d);
            std::fill(d + g.Wo, d + pg.Wq, T(0));
        }
    const std::vector<int64_t> offsets = tap_offsets(g, pg);
    for (int64_t grp = 0; grp < g.groups; ++grp) {
        const PixelRows<T> A{dyq.get() + grp * Kg * pixels, pixels, nullptr, pixels, g.K * pixels};
        const PixelRows<T> B{xq + grp * Cg * pg.phases * pg.plane, 0, offsets.data(), pixels,
                             pg.image};
        gemm_dot_parallel<T>(Kg, taps_n, g.N * pixels, A, B, dw + grp * Kg * taps_n);
    }
}

// ---------------------------------------------------------------------------------------------
// Direct kernels for grouped convolutions with few channels per group (depthwise: Cg = Kg = 1),
// where a GEMM would have a handful of rows. Each works on zero-padded copies of input planes,
// so the inner loops have no bounds checks and vectorise over output columns.

inline bool direct_pays(const ConvShape& g) {
    return g.groups > 1 && (g.C / g.groups) * (g.K / g.groups) <= 16;
}

// Padded plane geometry: every input position any output reads, padding included.
// Rows are widened so that whole vectors of outputs (a last one past Wo included) read inside.
struct PaddedPlane {
    int64_t Hp, Wp;
    PaddedPlane(const ConvShape& g, int64_t lanes = 1)
        : Hp((g.Ho - 1) * g.sh + (g.R - 1) * g.dh + 1),
          Wp(((g.Wo + lanes - 1) / lanes * lanes - 1) * g.sw + (g.S - 1) * g.dw + 1) {}
    int64_t size() const { return Hp * Wp; }
};

// dst (Hp x Wp) = plane (H x W) shifted by the top/left padding, zeros around.
template <class T>
void pad_plane(const ConvShape& g, const PaddedPlane& p, const T* plane, T* dst) {
    for (int64_t hp = 0; hp < p.Hp; ++hp) {
        const int64_t h = hp - g.ph;
        T* d = dst + hp * p.Wp;
        if (h < 0 || h >= g.H) {
            std::fill(d, d + p.Wp, T(0));
            continue;
        }
        gather_row(plane + h * g.W, g.W, -g.pw, 1, p.Wp, d, 1);
    }
}

template <class T>
void conv2d_forward_direct(const ConvShape& g, const T* x, const T* w, const T* bias, T* y) {
    using V = Simd<T>;
    const int64_t Cg = g.C / g.groups, Kg = g.K / g.groups, RS = g.R * g.S;
    const PaddedPlane pp(g, V::lanes);
    const int64_t jobs = g.N * g.groups;
    const int threads = std::max<int64_t>(1, std::min<int64_t>(num_threads(), jobs));
    std::vector<Scratch<T>> pads;
    for (int t = 0; t < threads; ++t) pads.push_back(scratch<T>(Cg * pp.size() + V::lanes));
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t job = 0; job < jobs; ++job) {
        const int64_t n = job / g.groups, grp = job % g.groups;
        T* xp = pads[omp_get_thread_num()].get();
        T* last = xp + Cg * pp.size();  // the vector of outputs that straddles Wo
        for (int64_t c = 0; c < Cg; ++c)
            pad_plane(g, pp, x + ((n * g.C) + grp * Cg + c) * g.H * g.W, xp + c * pp.size());
        for (int64_t kk = 0; kk < Kg; ++kk) {
            const int64_t k = grp * Kg + kk;
            const T* wk = w + k * Cg * RS;
            T* yk = y + (n * g.K + k) * g.Ho * g.Wo;
            const T b0 = bias ? bias[k] : T(0);
            for (int64_t ho = 0; ho < g.Ho; ++ho) {
                T* yrow = yk + ho * g.Wo;
                const T* xrow = xp + ho * g.sh * pp.Wp;
                // A vector of outputs accumulates every tap in registers and is stored once.
                for (int64_t wo = 0; g.sw == 1 && wo < g.Wo; wo += V::lanes) {
                    typename V::reg acc = V::broadcast(&b0);
                    for (int64_t c = 0; c < Cg; ++c)
                        for (int64_t r = 0; r < g.R; ++r)
                            for (int64_t s = 0; s < g.S; ++s)
                                acc = V::fma(V::broadcast(wk + c * RS + r * g.S + s),
                                             V::load(xrow + c * pp.size() + r * g.dh * pp.Wp + wo + s * g.dw), acc);
                    if (wo + V::lanes <= g.Wo) {
                        V::store(yrow + wo, acc);
                    } else {
                        V::store(last, acc);
                        std::copy(last, last + (g.Wo - wo), yrow + wo);
                    }
                }
                for (int64_t wo = 0; g.sw != 1 && wo < g.Wo; ++wo) {
                    T acc = b0;
                    for (int64_t c = 0; c < Cg; ++c)
                        for (int64_t r = 0; r < g.R; ++r)
                            for (int64_t s = 0; s < g.S; ++s)
                                acc += wk[c * RS + r * g.S + s] *
                                       xrow[c * pp.size() + r * g.dh * pp.Wp + wo * g.sw + s * g.dw];
                    yrow[wo] = acc;
                }
            }
        }
    }
}

// grad_x: each output gradient element scatters into a zero-padded copy of the input planes,
// whose interior is then copied out.
template <class T>
void conv2d_grad_input_direct(const ConvShape& g, const T* dy, const T* w, T* dx) {
    const int64_t Cg = g.C / g.groups, Kg = g.K / g.groups, RS = g.R * g.S;
    const PaddedPlane pp(g);
    const int64_t jobs = g.N * g.groups;
    const int threads = std::max<int64_t>(1, std::min<int64_t>(num_threads(), jobs));
    std::vector<Scratch<T>> pads;
    for (int t = 0; t < threads; ++t) pads.push_back(scratch<T>(Cg * pp.size()));
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t job = 0; job < jobs; ++job) {
        const int64_t n = job / g.groups, grp = job % g.groups;
        T* dxp = pads[omp_get_thread_num()].get();
        std::fill(dxp, dxp + Cg * pp.size(), T(0));
        for (int64_t kk = 0; kk < Kg; ++kk) {
            const int64_t k = grp * Kg + kk;
            const T* wk = w + k * Cg * RS;
            const T* dyk = dy + (n * g.K + k) * g.Ho * g.Wo;
            for (int64_t ho = 0; ho < g.Ho; ++ho) {
                const T* dyrow = dyk + ho * g.Wo;
                for (int64_t c = 0; c < Cg; ++c)
                    for (int64_t r = 0; r < g.R; ++r) {
                        T* drow = dxp + c * pp.size() + (ho * g.sh + r * g.dh) * pp.Wp;
                        for (int64_t s = 0; s < g.S; ++s) {
                            const T wv = wk[c * RS + r * g.S + s];
                            T* ds = drow + s * g.dw;
#pragma omp simd
                            for (int64_t wo = 0; wo < g.Wo; ++wo) ds[wo * g.sw] += wv * dyrow[wo];
                        }
                    }
            }
        }
        // Interior of the padded planes; input rows/columns no output reads get zero.
        for (int64_t c = 0; c < Cg; ++c) {
            T* out = dx + (n * g.C + grp * Cg + c) * g.H * g.W;
            for (int64_t h = 0; h < g.H; ++h) {
                const int64_t hp = h + g.ph;
                if (hp >= pp.Hp) {
                    std::fill(out + h * g.W, out + (h + 1) * g.W, T(0));
                    continue;
                }
                gather_row(dxp + c * pp.size() + hp * pp.Wp, pp.Wp, g.pw, 1, g.W, out + h * g.W, 1);
            }
        }
    }
}

// grad_w: one dot product over (n, ho, wo) per weight; jobs are (group, output channel).
template <class T>
void conv2d_grad_weight_direct(const ConvShape& g, const T* dy, const T* x, T* dw) {
    const int64_t Cg = g.C / g.groups, Kg = g.K / g.groups, RS = g.R * g.S;
    const PaddedPlane pp(g);
    const int threads = std::max<int64_t>(1, std::min<int64_t>(num_threads(), g.K));
    std::vector<Scratch<T>> pads;
    for (int t = 0; t < threads; ++t) pads.push_back(scratch<T>(pp.size()));
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t k = 0; k < g.K; ++k) {
        const int64_t grp = k / Kg;
        T* xp = pads[omp_get_thread_num()].get();
        T* dwk = dw + k * Cg * RS;
        std::fill(dwk, dwk + Cg * RS, T(0));
        for (int64_t n = 0; n < g.N; ++n) {
            const T* dyk = dy + (n * g.K + k) * g.Ho * g.Wo;
            for (int64_t c = 0; c < Cg; ++c) {
                pad_plane(g, pp, x + (n * g.C + grp * Cg + c) * g.H * g.W, xp);
                for (int64_t r = 0; r < g.R; ++r)
                    for (int64_t s = 0; s < g.S; ++s) {
                        T acc = T(0);
                        for (int64_t ho = 0; ho < g.Ho; ++ho) {
                            const T* xs = xp + (ho * g.sh + r * g.dh) * pp.Wp + s * g.dw;
                            const T* dyrow = dyk + ho * g.Wo;
#pragma omp simd reduction(+ : acc)
                            for (int64_t wo = 0; wo < g.Wo; ++wo) acc += dyrow[wo] * xs[wo * g.sw];
                        }
                        dwk[c * RS + r * g.S + s] += acc;
                    }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Channel-vectorised kernels.

// x zero-padded for the channel-vectorised kernels, which read single elements and so need
// no phase split for strides: planes of Hp x Wp covering every position an output reads
// (padding included), or x itself when nothing is padded. Input (c, h, w) of image n, counted
// from the top-left padding, is at data + n*image + c*plane + h*row + w.
template <class T>
struct PaddedInput {
    const T* data;
    int64_t image, plane, row;
    Scratch<T> storage;

    PaddedInput(const ConvShape& g, const T* x) {
        const PaddedPlane pp(g);
        if (g.ph == 0 && g.pw == 0 && pp.Hp <= g.H && pp.Wp <= g.W) {
            data = x, image = g.C * g.H * g.W, plane = g.H * g.W, row = g.W;
            return;
        }
        storage = scratch<T>(g.N * g.C * pp.size());
        data = storage.get(), image = g.C * pp.size(), plane = pp.size(), row = pp.Wp;
#pragma omp parallel for num_threads(num_threads()) schedule(static)
        for (int64_t p = 0; p < g.N * g.C; ++p) pad_plane(g, pp, x + p * g.H * g.W, storage.get() + p * plane);
    }
    int64_t tap_offset(const ConvShape& g, int64_t c, int64_t r, int64_t s) const {
        return c * plane + r * g.dh * row + s * g.dw;
    }
    // Offset of output pixel p = (n, ho, wo), counted over the whole batch.
    int64_t pixel(const ConvShape& g, int64_t p) const {
        const int64_t HoWo = g.Ho * g.Wo, q = p % HoWo;
        return (p / HoWo) * image + (q / g.Wo) * g.sh * row + (q % g.Wo) * g.sw;
    }
};

// Forward convolution vectorised over output channels: the GEMM transposed,
//   y^T[(n,ho,wo), k] = sum_{(c,r,s)} X^T[(n,ho,wo), (c,r,s)] w^T[(c,r,s), k],
// so a micro-tile is MR pixels x NR output channels. x is not packed at all: the micro-kernel
// broadcasts each pixel's tap straight from the padded input (tap offset + pixel offset), and
// only the weights are packed, once. The MR pixels of a tile are any consecutive outputs, so
// nothing is wasted at row or image ends, where the pixel-vectorised GEMM drops grid columns
// and stores tiles through the edge buffer in runs of Wo. The price: tiles are stored
// transposed (output channels are HoWo apart in NCHW), once per MC pixels after the whole
// reduction, from a per-thread accumulator that stays in cache. Measured faster than the
// pixel-vectorised GEMM from 7x7 to 56x56 images with 64 or more output channels (1 thread:
// VGG 8x64x56x56 0.85x -> 1.0x PyTorch, 8x256x14x14 0.82x -> 0.94x); 1x1 convolutions read
// x in place and stay with the GEMM.
inline bool forward_by_channels_pays(const ConvShape& g) {
    return g.K / g.groups >= 64 && g.C / g.groups > 0 && g.R * g.S > 1;
}

// Its register tile: MR pixels x NV vectors of channels. With AVX-512, 6 x 4: 64 channels, so
// the usual channel counts fill every panel.
#if PYCONV_ISA_LEVEL == 2
template <class T> struct ChannelTile { static constexpr int MR = 6, NV = 4; };
#else
template <class T> struct ChannelTile { static constexpr int MR = GemmTile<T>::MR, NV = GemmTile<T>::NV; };
#endif

// w (Kg, taps) of one group as NR-channel panels [panel][tap][NR], zero-padded past Kg.
template <class T, int NR>
Scratch<T> channel_panels(const T* w, int64_t Kg, int64_t taps_n) {
    const int64_t panels = (Kg + NR - 1) / NR;
    Scratch<T> packed = scratch<T>(panels * taps_n * NR);
    // A transpose, 16 taps at a time: each weight row is read a cache line at a time (rows a
    // power of two apart would otherwise evict each other from L1 on every tap).
    constexpr int64_t step = 16;
    for (int64_t p = 0; p < panels; ++p)
        for (int64_t k0 = 0; k0 < taps_n; k0 += step) {
            const int64_t kn = std::min(step, taps_n - k0);
            T* dst = packed.get() + (p * taps_n + k0) * NR;
            for (int64_t j = 0; j < NR; ++j) {
                const T* src = p * NR + j < Kg ? w + (p * NR + j) * taps_n + k0 : nullptr;
                for (int64_t k = 0; k < kn; ++k) dst[k * NR + j] = src ? src[k] : T(0);
            }
        }
    return packed;
}

template <class T>
void conv2d_forward_by_channels(const ConvShape& g, const T* x, const T* w, const T* bias, T* y) {
    constexpr int MR = ChannelTile<T>::MR, NV = ChannelTile<T>::NV, L = Simd<T>::lanes, NR = NV * L;
    // A weight panel of KC x NR (32 KiB) is shared by the MC pixels of a block (KC from 64 to
    // 256 measured the same).
    constexpr int64_t KC = 128, MC = 16 * MR, tiles_max = MC / MR;
    const int64_t Cg = g.C / g.groups, Kg = g.K / g.groups, taps_n = Cg * g.R * g.S, HoWo = g.Ho * g.Wo;
    const int64_t M = g.N * HoWo, blocks = (M + MC - 1) / MC, panels = (Kg + NR - 1) / NR;
    const int64_t k_blocks = std::max<int64_t>(1, (taps_n + KC - 1) / KC);
    const int64_t kc_step = std::max<int64_t>(1, (taps_n + k_blocks - 1) / k_blocks);
    const PaddedInput<T> xp(g, x);
    const std::vector<int64_t> offsets = tap_offsets(g, xp);
    std::vector<Scratch<T>> weights;
    for (int64_t grp = 0; grp < g.groups; ++grp) weights.push_back(channel_panels<T, NR>(w + grp * Kg * taps_n, Kg, taps_n));
    const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads(), blocks * g.groups)));
    // Every group's GEMM in one parallel region; threads move on to the next group without waiting.
#pragma omp parallel num_threads(threads)
    {
        Scratch<T> acc = scratch<T>(tiles_max * panels * MR * NR);
        OffsetCols<T, MR> tiles[tiles_max];
        for (int64_t grp = 0; grp < g.groups; ++grp) {
#pragma omp for schedule(static) nowait
            for (int64_t block = 0; block < blocks; ++block) {
                const int64_t i0 = block * MC, mc = std::min(MC, M - i0), n_tiles = (mc + MR - 1) / MR;
                // Offsets of the block's pixels; a last partial tile repeats its last pixel.
                for (int64_t t = 0; t < n_tiles; ++t) {
                    tiles[t].base = xp.data + grp * Cg * xp.plane;
                    for (int i = 0; i < MR; ++i) tiles[t].i_offsets[i] = xp.pixel(g, std::min(i0 + t * MR + i, i0 + mc - 1));
                }
                for (int64_t pc = 0; pc < taps_n; pc += kc_step) {
                    const int64_t kc = std::min(kc_step, taps_n - pc);
                    const Store store = pc == 0 ? Store::overwrite : Store::accumulate;
                    for (int64_t jp = 0; jp < panels; ++jp) {
                        const int nv = static_cast<int>((std::min<int64_t>(NR, Kg - jp * NR) + L - 1) / L);
                        const PackedRows<T, NR> b{weights[grp].get() + (jp * taps_n + pc) * NR};
                        for (int64_t t = 0; t < n_tiles; ++t) {
                            tiles[t].k_offsets = offsets.data() + pc;
                            micro_kernel_cols<T, NV>(nv, kc, tiles[t], b, acc.get() + (t * panels + jp) * MR * NR,
                                                     NR, store, nullptr);
                        }
                    }
                }
                // Transposed store: channel by channel, the tile's pixels are (mostly) adjacent in y.
                for (int64_t t = 0; t < n_tiles; ++t) {
                    const int rows = static_cast<int>(std::min<int64_t>(MR, mc - t * MR));
                    T* dst[MR];
                    for (int i = 0; i < rows; ++i) {
                        const int64_t p = i0 + t * MR + i;
                        dst[i] = y + ((p / HoWo) * g.K + grp * Kg) * HoWo + p % HoWo;
                    }
                    for (int64_t k = 0; k < Kg; ++k) {
                        const T* src = acc.get() + (t * panels + k / NR) * MR * NR + k % NR;
                        const T b = bias ? bias[grp * Kg + k] : T(0);
                        for (int i = 0; i < rows; ++i) dst[i][k * HoWo] = src[i * NR] + b;
                    }
                }
            }
        }
    }
}

// Weight gradient vectorised over output channels, the forward's counterpart:
//   dw^T[(c,r,s), k] = sum_{(n,ho,wo)} X[(c,r,s), (n,ho,wo)] dy^T[(n,ho,wo), k],
// a micro-tile is MR taps x NR output channels and the reduction runs over pixels. The
// micro-kernel broadcasts X straight from the padded input (pixel offset + tap offset: the
// forward's addressing with the roles of the two offsets swapped); dy is transposed once into
// NR-channel panels. Threads split the taps, so each owns its rows of dw.
// Here one vector of output channels (LeNet's 16) is already worth it: the dot-product form it
// replaces reduces every accumulator across lanes and pads the grid's rows (1 thread, LeNet-5
// conv2: 0.45 -> 0.38 ms).
inline bool weight_grad_by_channels_pays(const ConvShape& g) {
    return g.K / g.groups >= 16 && g.C / g.groups > 0 && g.R * g.S > 1;
}

template <class T>
void conv2d_grad_weight_by_channels(const ConvShape& g, const T* dy, const T* x, T* dw) {
    constexpr int MR = ChannelTile<T>::MR, NV = ChannelTile<T>::NV, L = Simd<T>::lanes, NR = NV * L;
    constexpr int64_t KC = 128;  // pixels per reduction block: a dy panel block is KC x NR
    const int64_t Cg = g.C / g.groups, Kg = g.K / g.groups, taps_n = Cg * g.R * g.S;
    const int64_t HoWo = g.Ho * g.Wo, P = g.N * HoWo, panels = (Kg + NR - 1) / NR;
    const int64_t tiles = (taps_n + MR - 1) / MR;
    const PaddedInput<T> xp(g, x);
    std::vector<int64_t> taps = tap_offsets(g, xp), pixels(P);
    taps.resize(tiles * MR, taps.back());  // a partial last tile repeats the last tap
    for (int64_t p = 0; p < P; ++p) pixels[p] = xp.pixel(g, p);
    Scratch<T> dyt = scratch<T>(panels * P * NR), dwt = scratch<T>(tiles * panels * MR * NR);
    const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads(), tiles)));
    for (int64_t grp = 0; grp < g.groups; ++grp) {
#pragma omp parallel num_threads(threads)
        {
            // dy^T panels: dyt[(jp * P + p) * NR + j] = dy[n, grp*Kg + jp*NR + j, q], zero past Kg.
            // By chunks of 64 pixels of one image: each channel's chunk is read contiguously and
            // the chunk's panel rows (64 x NR) stay in L1 while every channel is written in.
            constexpr int64_t chunk = 64;
            const int64_t chunks = (HoWo + chunk - 1) / chunk;
#pragma omp for schedule(static)
            for (int64_t job = 0; job < g.N * chunks; ++job) {
                const int64_t n = job / chunks, q0 = job % chunks * chunk, len = std::min(chunk, HoWo - q0);
                T* dst = dyt.get() + (n * HoWo + q0) * NR;
                for (int64_t k = 0; k < panels * NR; ++k) {
                    T* d = dst + (k / NR) * P * NR + k % NR;
                    const T* src = dy + ((n * g.K + grp * Kg + k) * HoWo + q0);
                    if (k < Kg) for (int64_t q = 0; q < len; ++q) d[q * NR] = src[q];
                    else for (int64_t q = 0; q < len; ++q) d[q * NR] = T(0);
                }
            }
            // Each thread's share of the tap tiles over every pixel block.
            const int t = omp_get_thread_num(), team = omp_get_num_threads();
            const int64_t tile0 = tiles * t / team, tile1 = tiles * (t + 1) / team;
            OffsetCols<T, MR> a{};
            a.base = xp.data + grp * Cg * xp.plane;
            for (int64_t pc = 0; pc < P; pc += KC) {
                const int64_t kc = std::min(KC, P - pc);
                const Store store = pc == 0 ? Store::overwrite : Store::accumulate;
                a.k_offsets = pixels.data() + pc;
                for (int64_t tile = tile0; tile < tile1; ++tile) {
                    for (int i = 0; i < MR; ++i) a.i_offsets[i] = taps[tile * MR + i];
                    for (int64_t jp = 0; jp < panels; ++jp) {
                        const int nv = static_cast<int>((std::min<int64_t>(NR, Kg - jp * NR) + L - 1) / L);
                        micro_kernel_cols<T, NV>(nv, kc, a, PackedRows<T, NR>{dyt.get() + (jp * P + pc) * NR},
                                                 dwt.get() + (tile * panels + jp) * MR * NR, NR, store, nullptr);
                    }
                }
            }
            // dw[grp*Kg + k, tap] from this thread's tiles.
            for (int64_t tap = tile0 * MR; tap < std::min(taps_n, tile1 * MR); ++tap)
                for (int64_t k = 0; k < Kg; ++k)
                    dw[(grp * Kg + k) * taps_n + tap] =
                        dwt[((tap / MR) * panels + k / NR) * MR * NR + (tap % MR) * NR + k % NR];
        }
    }
}

// ---------------------------------------------------------------------------------------------
// GEMM-based kernels.

template <class T>
void conv2d_forward(const ConvShape& g, const T* x, const T* w, const T* bias, T* y) {
    if (direct_pays(g)) return conv2d_forward_direct(g, x, w, bias, y);
    if (forward_by_channels_pays(g)) return conv2d_forward_by_channels(g, x, w, bias, y);
    if (phase_grid_pays(g)) return conv2d_forward_grid(g, x, w, bias, y);
    const int64_t Cg = g.C / g.groups, Kg = g.K / g.groups, taps_n = Cg * g.R * g.S;
    const int64_t HoWo = g.Ho * g.Wo;
    std::vector<Tap> taps(taps_n);
    direct_taps(g, taps.data());
    for (int64_t grp = 0; grp < g.groups; ++grp) {
        const PrepackedA<T> A(Kg, taps_n, InMatrixA<T>::plain(w + grp * Kg * taps_n, taps_n, taps_n));
        const Im2col<T> B{x + grp * Cg * g.H * g.W, g.C * g.H * g.W, g.H, g.W,
                          g.Ho, g.Wo, g.sh, g.sw, taps.data()};
        OutMatrix<T> C{y + grp * Kg * HoWo, HoWo, HoWo, 1, 1, 0, g.K * HoWo};
        C.bias = bias ? bias + grp * Kg : nullptr;
        gemm_parallel<T>(Kg, g.N * HoWo, taps_n, A, B, C);
    }
}

template <class T>
void conv2d_grad_weight(const ConvShape& g, const T* dy, const T* x, T* dw) {
    if (direct_pays(g)) return conv2d_grad_weight_direct(g, dy, x, dw);
    if (weight_grad_by_channels_pays(g)) return conv2d_grad_weight_by_channels(g, dy, x, dw);
    if (phase_grid_pays(g)) return conv2d_grad_weight_grid(g, dy, x, dw);
    const int64_t Cg = g.C / g.groups, Kg = g.K / g.groups, taps_n = Cg * g.R * g.S;
    const int64_t HoWo = g.Ho * g.Wo;
    std::vector<Tap> taps(taps_n);
    direct_taps(g, taps.data());
    for (int64_t grp = 0; grp < g.groups; ++grp) {
        // dy as A: rows k, columns (n, pixel) with images g.K * HoWo apart.
        const InMatrixA<T> A{dy + grp * Kg * HoWo, HoWo, HoWo, g.K * HoWo};
        const Im2colTransposed<T> B{Im2col<T>{x + grp * Cg * g.H * g.W, g.C * g.H * g.W, g.H, g.W,
                                              g.Ho, g.Wo, g.sh, g.sw, taps.data()}};
        gemm_parallel_split_k<T>(Kg, taps_n, g.N * HoWo, A, B, dw + grp * Kg * taps_n);
    }
}

// A row (c, r, s) of the input-gradient GEMM, seen from grad_x: the plane it adds into, its
// offsets, and the output columns [wo_lo, wo_hi) whose input column lies inside the image
// (precomputed: a division per tile row would cost as much as the tile's arithmetic).
struct ScatterTap {
    int64_t plane, dh, dw, wo_lo, wo_hi;
};

inline void scatter_taps(const ConvShape& g, ScatterTap* taps) {
    const int64_t Cg = g.C / g.groups;
    for (int64_t c = 0; c < Cg; ++c)
        for (int64_t r = 0; r < g.R; ++r)
            for (int64_t s = 0; s < g.S; ++s) {
                const int64_t dw = s * g.dw - g.pw;
                int64_t lo, hi;
                inside(dw, g.sw, g.W, g.Wo, lo, hi);
                *taps++ = ScatterTap{c * g.H * g.W, r * g.dh - g.ph, dw, lo, hi};
            }
}

// The destination of the input-gradient GEMM: C[(c,r,s), (n,ho,wo)] is added to
// dx[n, c, ho*sh - ph + r*dh, wo*sw - pw + s*dw] where that lies inside the image (col2im).
// Tiles are never stored in place; the caller zeroes dx first.
template <class T>
struct Col2im {
    T* dx;                 // channel 0 of the group in image 0
    int64_t image_stride;  // C * H * W
    int64_t H, W, Ho, Wo, sh, sw;
    const ScatterTap* rows;
    static constexpr int64_t row_stride = 0;
    static constexpr const T* bias = nullptr;

    T* tile_ptr(int64_t, int64_t, int64_t) const { return nullptr; }

    void scatter(int64_t i0, int64_t j0, int64_t mr, int64_t nr, const T* tile, int64_t ld,
                 Store) const {
        PixelRun runs[gemm_nr<T>()];
        const int64_t n_runs = pixel_runs(j0, nr, Ho, Wo, runs);
        for (int64_t i = 0; i < mr; ++i) {
            const ScatterTap& tap = rows[i0 + i];
            for (int64_t r = 0; r < n_runs; ++r) {
                const PixelRun& run = runs[r];
                const int64_t h = run.a * sh + tap.dh;
                if (h < 0 || h >= H) continue;
                T* drow = dx + run.n * image_stride + tap.plane + h * W;
                const T* src = tile + i * ld + run.pos - run.b0;  // indexed by wo
                const int64_t lo = std::max(tap.wo_lo, run.b0), hi = std::min(tap.wo_hi, run.b0 + run.len);
                if (sw == 1) {
                    for (int64_t wo = lo; wo < hi; ++wo) drow[wo + tap.dw] += src[wo];
                } else {
                    for (int64_t wo = lo; wo < hi; ++wo) drow[wo * sw + tap.dw] += src[wo];
                }
            }
        }
    }
};

// grad_x = col2im(W^T dy), per group: a GEMM with rows (c, r, s) and columns (n, ho, wo) whose
// tiles are added into grad_x. Threads own whole images (or, for small batches, whole
// channels), so no two threads ever add into the same element. This is also the transpose
// convolution's forward pass, which is why it must be fast for one output channel too.
// With stride 1, grad_x is itself a convolution: dy convolved with the weights flipped in
// space and transposed in channels, padded by (R-1)*dh - ph. That runs on the forward kernel,
// which stores tiles in place instead of scattering them; with few input channels (the rows
// of that GEMM) the col2im form, whose rows are (c, r, s), fills the micro-tiles better.
inline bool grad_input_as_forward(const ConvShape& g) {
    return g.sh == 1 && g.sw == 1 && g.ph <= (g.R - 1) * g.dh && g.pw <= (g.S - 1) * g.dw &&
           g.C / g.groups >= 32;
}

template <class T>
void conv2d_grad_input_by_forward(const ConvShape& g, const T* dy, const T* w, T* dx) {
    const int64_t Cg = g.C / g.groups, Kg = g.K / g.groups, RS = g.R * g.S;
    const ConvShape f{g.N, g.K, g.Ho, g.Wo, g.C, g.R, g.S, g.H, g.W, 1, 1,
                      (g.R - 1) * g.dh - g.ph, (g.S - 1) * g.dw - g.pw, g.dh, g.dw, g.groups};
    Scratch<T> wf = scratch<T>(g.C * Kg * RS);  // (C, Kg, R, S), flipped
    for (int64_t grp = 0; grp < g.groups; ++grp)
        for (int64_t c = 0; c < Cg; ++c)
            for (int64_t k = 0; k < Kg; ++k)
                for (int64_t rs = 0; rs < RS; ++rs)
                    wf[((grp * Cg + c) * Kg + k) * RS + (RS - 1 - rs)] = w[((grp * Kg + k) * Cg + c) * RS + rs];
    conv2d_forward(f, dy, wf.get(), static_cast<const T*>(nullptr), dx);
}

// grad_x vectorised over input channels, for the transpose convolutions of generators (stride
// 2, 64+ channels): per image, the GEMM dy^T[pixels, k] w[k, (r, s, c)] in tiles of 6 dy pixels
// x 64 channels c of one tap (r, s), dy broadcast straight from NCHW. Each tile row is the
// contribution of one dy pixel through one tap to 64 channels of one grad_x position, so it
// is added into a per-thread channels-last copy of the image's grad_x with 4 vector adds; that
// copy, padded so every position any tap reaches exists, goes to NCHW once at the end. col2im
// instead adds every GEMM element into grad_x with scalar, strided read-modify-writes in runs
// of Wo (half the time on 7x7 inputs).
inline bool grad_input_channels_last_pays(const ConvShape& g, size_t element_bytes) {
    // One image's channels-last grad_x per thread, kept within the L3 share of a thread.
    const double copy_bytes = double(PaddedPlane(g).size()) * double((g.C + 63) / 64 * 64) * double(element_bytes);
    return g.groups == 1 && g.C >= 64 && g.K > 0 && g.N >= num_threads() && copy_bytes <= 16.0 * (1 << 20);
}

template <class T>
void conv2d_grad_input_channels_last(const ConvShape& g, const T* dy, const T* w, T* dx) {
    constexpr int MR = ChannelTile<T>::MR, NV = ChannelTile<T>::NV, L = Simd<T>::lanes, NR = NV * L;
    constexpr int64_t KC = 128;  // a weight panel block of KC x NR (32 KiB)
    const int64_t HoWo = g.Ho * g.Wo, RS = g.R * g.S, c_panels = (g.C + NR - 1) / NR, Cp = c_panels * NR;
    const PaddedPlane pp(g);  // every grad_x position a tap reaches, from (-ph, -pw)
    // w as B: per tap (r, s) and block of NR channels, a K x NR panel [k][NR] (zero past C).
    Scratch<T> B = scratch<T>(RS * c_panels * g.K * NR);
    for (int64_t rs = 0; rs < RS; ++rs)
        for (int64_t cp = 0; cp < c_panels; ++cp)
            for (int64_t k = 0; k < g.K; ++k) {
                T* dst = B.get() + ((rs * c_panels + cp) * g.K + k) * NR;
                for (int64_t j = 0; j < NR; ++j) {
                    const int64_t c = cp * NR + j;
                    dst[j] = c < g.C ? w[(k * g.C + c) * RS + rs] : T(0);
                }
            }
    std::vector<int64_t> channel_offsets(g.K);  // dy's channel k of an image, for the broadcasts
    for (int64_t k = 0; k < g.K; ++k) channel_offsets[k] = k * HoWo;
    const int64_t tiles = (HoWo + MR - 1) / MR;
#pragma omp parallel num_threads(num_threads())
    {
        Scratch<T> acc = scratch<T>(pp.size() * Cp);  // grad_x of one image, channels last
        alignas(64) T tile[MR * NR];
#pragma omp for schedule(static)
        for (int64_t n = 0; n < g.N; ++n) {
            std::fill(acc.get(), acc.get() + pp.size() * Cp, T(0));
            OffsetCols<T, MR> a{};
            a.base = dy + n * g.K * HoWo;
            for (int64_t rs = 0; rs < RS; ++rs) {
                const int64_t tap = (rs / g.S) * g.dh * pp.Wp + (rs % g.S) * g.dw;
                for (int64_t cp = 0; cp < c_panels; ++cp) {
                    const int nv = static_cast<int>((std::min<int64_t>(NR, g.C - cp * NR) + L - 1) / L);
                    const T* panel = B.get() + (rs * c_panels + cp) * g.K * NR;
                    for (int64_t t = 0; t < tiles; ++t) {
                        const int rows = static_cast<int>(std::min<int64_t>(MR, HoWo - t * MR));
                        for (int i = 0; i < MR; ++i) a.i_offsets[i] = t * MR + std::min(i, rows - 1);
                        for (int64_t pc = 0; pc < g.K; pc += KC) {
                            a.k_offsets = channel_offsets.data() + pc;
                            micro_kernel_cols<T, NV>(nv, std::min(KC, g.K - pc), a,
                                                     PackedRows<T, NR>{panel + pc * NR}, tile, NR,
                                                     Store::overwrite, nullptr);
                            // Row i: dy pixel (ho, wo) through tap (r, s) to position
                            // (ho*sh + r*dh, wo*sw + s*dw) of the padded image.
                            for (int i = 0; i < rows; ++i) {
                                const int64_t q = t * MR + i, pos = (q / g.Wo) * g.sh * pp.Wp + (q % g.Wo) * g.sw + tap;
                                T* dst = acc.get() + pos * Cp + cp * NR;
                                for (int v = 0; v < nv; ++v)
                                    Simd<T>::store(dst + v * L, Simd<T>::load(dst + v * L) + Simd<T>::load(tile + i * NR + v * L));
                            }
                        }
                    }
                }
            }
            // Channels last -> NCHW, dropping the padding; grad_x rows or columns no tap reaches are 0.
            for (int64_t c = 0; c < g.C; ++c) {
                T* out = dx + (n * g.C + c) * g.H * g.W;
                for (int64_t h = 0; h < g.H; ++h)
                    for (int64_t x = 0; x < g.W; ++x) {
                        const int64_t hp = h + g.ph, wp = x + g.pw;
                        out[h * g.W + x] = hp < pp.Hp && wp < pp.Wp ? acc[(hp * pp.Wp + wp) * Cp + c] : T(0);
                    }
            }
        }
    }
}

template <class T>
void conv2d_grad_input(const ConvShape& g, const T* dy, const T* w, T* dx) {
    if (direct_pays(g)) return conv2d_grad_input_direct(g, dy, w, dx);
    if (grad_input_as_forward(g)) return conv2d_grad_input_by_forward(g, dy, w, dx);
    if (grad_input_channels_last_pays(g, sizeof(T))) return conv2d_grad_input_channels_last(g, dy, w, dx);
    const int64_t Cg = g.C / g.groups, Kg = g.K / g.groups, RS = g.R * g.S, rows = Cg * RS;
    const int64_t HW = g.H * g.W, HoWo = g.Ho * g.Wo;
    std::vector<ScatterTap> taps(rows);
    scatter_taps(g, taps.data());
    // w^T per group, as a plain (c, r, s) x k matrix.
    Scratch<T> wt = scratch<T>(g.K * rows);
    for (int64_t grp = 0; grp < g.groups; ++grp)
        for (int64_t k = 0; k < Kg; ++k)
            for (int64_t i = 0; i < rows; ++i)
                wt[grp * rows * Kg + i * Kg + k] = w[(grp * Kg + k) * rows + i];
    const int threads = num_threads();
    const bool by_image = g.N >= threads;
    std::vector<GemmBuffers<T>> bufs(threads);
#pragma omp parallel num_threads(threads)
    {
        const int t = omp_get_thread_num(), team = omp_get_num_threads();
        const int64_t n0 = by_image ? g.N * t / team : 0, n1 = by_image ? g.N * (t + 1) / team : g.N;
        const int64_t c0 = by_image ? 0 : Cg * t / team, c1 = by_image ? Cg : Cg * (t + 1) / team;
        for (int64_t n = n0; n < n1; ++n)
            for (int64_t grp = 0; grp < g.groups; ++grp)
                std::fill(dx + (n * g.C + grp * Cg + c0) * HW, dx + (n * g.C + grp * Cg + c1) * HW, T(0));
        for (int64_t grp = 0; grp < g.groups && c0 < c1 && n0 < n1; ++grp) {
            const InMatrixA<T> A = InMatrixA<T>::plain(wt.get() + grp * rows * Kg, Kg, Kg);
            const InMatrixB<T> B{dy + grp * Kg * HoWo, HoWo, HoWo, g.K * HoWo};
            const Col2im<T> C{dx + grp * Cg * HW, g.C * HW, g.H, g.W, g.Ho, g.Wo, g.sh, g.sw, taps.data()};
            gemm_block<T>(c0 * RS, c1 * RS, n0 * HoWo, n1 * HoWo, 0, Kg, A, B, C, Store::accumulate,
                          bufs[t]);
        }
    }
}

template <class T>
void conv2d_grad_bias(int64_t N, int64_t K, int64_t plane, const T* dy, T* db) {
    const int threads = std::max<int64_t>(1, std::min<int64_t>(num_threads(), K));
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t k = 0; k < K; ++k) {
        double acc = 0.0;  // float32 sums of ~10^5 terms lose digits; double costs nothing here
        for (int64_t n = 0; n < N; ++n) {
            const T* p = dy + (n * K + k) * plane;
#pragma omp simd reduction(+ : acc)
            for (int64_t i = 0; i < plane; ++i) acc += double(p[i]);
        }
        db[k] = T(acc);
    }
}
