// Pooling kernels. Included inside namespace pyconv::<isa> by kernels_isa.inc.

// Max pooling with PyTorch's semantics: the window is clipped to the input, ties keep the first
// position in row-major window order, and a NaN wins over any number (the last NaN's index is
// reported, as PyTorch does). The spec guarantees every window holds at least one input element.
template <class T>
void max_pool2d(const PoolShape& g, const T* x, T* y, int64_t* idx) {
    const int64_t planes = g.N * g.C, plane_in = g.H * g.W, plane_out = g.Ho * g.Wo;
#pragma omp parallel for num_threads(num_threads()) schedule(static)
    for (int64_t p = 0; p < planes; ++p) {
        const T* xp = x + p * plane_in;
        T* yp = y + p * plane_out;
        int64_t* ip = idx ? idx + p * plane_out : nullptr;
        for (int64_t oh = 0; oh < g.Ho; ++oh) {
            // First and one-past-last kernel rows whose input row lies inside the plane.
            const int64_t h0 = oh * g.sh - g.ph;
            const int64_t r_lo = h0 >= 0 ? 0 : (-h0 + g.dh - 1) / g.dh;
            const int64_t r_hi = std::min(g.kh, (g.H - h0 + g.dh - 1) / g.dh);
            for (int64_t ow = 0; ow < g.Wo; ++ow) {
                const int64_t w0 = ow * g.sw - g.pw;
                const int64_t s_lo = w0 >= 0 ? 0 : (-w0 + g.dw - 1) / g.dw;
                const int64_t s_hi = std::min(g.kw, (g.W - w0 + g.dw - 1) / g.dw);
                T best = -std::numeric_limits<T>::infinity();
                int64_t best_at = (h0 + r_lo * g.dh) * g.W + (w0 + s_lo * g.dw);
                for (int64_t r = r_lo; r < r_hi; ++r) {
                    const int64_t row = (h0 + r * g.dh) * g.W;
                    for (int64_t s = s_lo; s < s_hi; ++s) {
                        const int64_t at = row + w0 + s * g.dw;
                        const T v = xp[at];
                        if (v > best || std::isnan(v)) {
                            best = v;
                            best_at = at;
                        }
                    }
                }
                yp[oh * g.Wo + ow] = best;
                if (ip) ip[oh * g.Wo + ow] = best_at;
            }
        }
    }
}
