// Python bindings of the C++ kernels (module pyconv._C).
//
// The Python side (pyconv/backends/cpu.py) hands over C-contiguous arrays of the right dtype,
// allocates the outputs and passes shapes already validated by pyconv/_spec.py. The bindings
// still check every buffer against the shape it is used with, so that a direct call into _C
// with wrong arguments raises instead of reading or writing out of bounds. The GIL is released
// around every kernel.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <sstream>
#include <string>

#include "kernels.h"

namespace py = pybind11;
using namespace pyconv;

namespace {

std::string shape_str(const std::vector<int64_t>& s) {
    std::ostringstream os;
    os << "(";
    for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
    os << (s.size() == 1 ? ",)" : ")");
    return os.str();
}

// Pointer to the data of `a` after checking dtype, C-contiguity, writability and shape.
template <class T>
T* checked(const py::array& a, const std::vector<int64_t>& shape, const char* name,
           bool writable = false) {
    if (!py::isinstance<py::array_t<T>>(a) || !a.dtype().is(py::dtype::of<T>()))
        throw py::type_error(std::string(name) + ": expected dtype " +
                             std::string(py::str(py::dtype::of<T>())) + ", got " +
                             std::string(py::str(a.dtype())));
    if (!(a.flags() & py::array::c_style))
        throw py::value_error(std::string(name) + ": array must be C-contiguous");
    if (writable && !a.writeable())
        throw py::value_error(std::string(name) + ": output array is read-only");
    std::vector<int64_t> got(a.shape(), a.shape() + a.ndim());
    if (got != shape)
        throw py::value_error(std::string(name) + ": expected shape " + shape_str(shape) +
                              ", got " + shape_str(got));
    return static_cast<T*>(const_cast<void*>(a.data()));
}

template <class T>
void check_nonnegative(const PoolShape& g) {
    for (int64_t v : {g.N, g.C, g.H, g.W, g.Ho, g.Wo, g.ph, g.pw})
        if (v < 0) throw py::value_error("pool shape: negative size");
    for (int64_t v : {g.kh, g.kw, g.sh, g.sw, g.dh, g.dw})
        if (v < 1) throw py::value_error("pool shape: kernel, stride and dilation must be >= 1");
}

PoolShape pool_shape(const std::array<int64_t, 14>& a) {
    return PoolShape{a[0], a[1], a[2], a[3], a[4], a[5], a[6],
                     a[7], a[8], a[9], a[10], a[11], a[12], a[13]};
}

template <class T>
void max_pool2d_t(const py::array& x, const py::array& y, const py::object& idx,
                  const PoolShape& g) {
    check_nonnegative<T>(g);
    const T* xp = checked<T>(x, {g.N, g.C, g.H, g.W}, "x");
    T* yp = checked<T>(y, {g.N, g.C, g.Ho, g.Wo}, "y", true);
    int64_t* ip = idx.is_none()
                      ? nullptr
                      : checked<int64_t>(idx.cast<py::array>(), {g.N, g.C, g.Ho, g.Wo},
                                         "indices", true);
    // Every window must hold an input element (the spec guarantees it; re-check the extremes).
    if (g.Ho > 0 && ((g.Ho - 1) * g.sh - g.ph >= g.H || (g.Wo - 1) * g.sw - g.pw >= g.W ||
                     g.ph >= g.kh * g.dh || g.pw >= g.kw * g.dw))
        throw py::value_error("pool shape: a window lies entirely in the padding");
    py::gil_scoped_release nogil;
    kernels<T>().max_pool2d(g, xp, yp, ip);
}

// Calls f<float> or f<double> by the dtype of `x`.
template <template <class> class F, class... Args>
void by_dtype(const py::array& x, Args&&... args) {
    if (x.dtype().is(py::dtype::of<float>())) F<float>::run(x, std::forward<Args>(args)...);
    else if (x.dtype().is(py::dtype::of<double>())) F<double>::run(x, std::forward<Args>(args)...);
    else throw py::type_error("expected float32 or float64, got " + std::string(py::str(x.dtype())));
}

template <class T>
struct MaxPool2d {
    static void run(const py::array& x, const py::array& y, const py::object& idx,
                    const std::array<int64_t, 14>& shape) {
        max_pool2d_t<T>(x, y, idx, pool_shape(shape));
    }
};

// ---- Pooling, LSTM and NMS -----------------------------------------------------------------

// Data pointer of an optional array (None -> nullptr), checked like `checked`.
template <class T>
T* checked_or_null(const py::object& a, const std::vector<int64_t>& shape, const char* name,
                   bool writable = false) {
    return a.is_none() ? nullptr : checked<T>(a.cast<py::array>(), shape, name, writable);
}

void check_scatter(int64_t skipped, const char* op, const char* bound) {
    if (skipped)
        throw py::value_error(std::string(op) + ": " + std::to_string(skipped) +
                              " indices lie outside [0, " + bound + ") and were skipped");
}

template <class T>
struct MaxPool2dBackward {
    static void run(const py::array& grad_out, const py::array& idx, const py::array& grad_x) {
        if (grad_out.ndim() != 4 || grad_x.ndim() != 4)
            throw py::value_error("max_pool2d_backward: grad_out and grad_x must be 4-D");
        const int64_t N = grad_x.shape(0), C = grad_x.shape(1), H = grad_x.shape(2),
                      W = grad_x.shape(3), Ho = grad_out.shape(2), Wo = grad_out.shape(3);
        const T* gy = checked<T>(grad_out, {N, C, Ho, Wo}, "grad_out");
        const int64_t* ip = checked<int64_t>(idx, {N, C, Ho, Wo}, "indices");
        T* gx = checked<T>(grad_x, {N, C, H, W}, "grad_x", true);
        int64_t skipped;
        {
            py::gil_scoped_release nogil;
            skipped = kernels<T>().max_pool2d_backward(N * C, Ho * Wo, H * W, gy, ip, gx);
        }
        check_scatter(skipped, "max_pool2d_backward", "H*W");
    }
};

template <class T>
struct MaxUnpool2d {
    static void run(const py::array& x, const py::array& idx, const py::array& y) {
        if (x.ndim() != 4 || y.ndim() != 4)
            throw py::value_error("max_unpool2d: x and y must be 4-D");
        const int64_t N = x.shape(0), C = x.shape(1), Hi = x.shape(2), Wi = x.shape(3),
                      H = y.shape(2), W = y.shape(3);
        const T* xp = checked<T>(x, {N, C, Hi, Wi}, "x");
        const int64_t* ip = checked<int64_t>(idx, {N, C, Hi, Wi}, "indices");
        T* yp = checked<T>(y, {N, C, H, W}, "y", true);
        int64_t skipped;
        {
            py::gil_scoped_release nogil;
            skipped = kernels<T>().max_unpool2d(N * C, Hi * Wi, H * W, xp, ip, yp);
        }
        check_scatter(skipped, "max_unpool2d", "H*W");
    }
};

void check_avg_shape(const PoolShape& g) {
    check_nonnegative<float>(g);
    if (g.dh != 1 || g.dw != 1) throw py::value_error("avg_pool2d: dilation must be 1");
    if (g.Ho > 0 && ((g.Ho - 1) * g.sh - g.ph >= g.H || (g.Wo - 1) * g.sw - g.pw >= g.W ||
                     g.ph >= g.kh || g.pw >= g.kw))
        throw py::value_error("pool shape: a window lies entirely in the padding");
}

template <class T>
struct AvgPool2d {
    static void run(const py::array& x, const py::array& y, bool count_include_pad,
                    int64_t divisor, const std::array<int64_t, 14>& shape) {
        const PoolShape g = pool_shape(shape);
        check_avg_shape(g);
        const T* xp = checked<T>(x, {g.N, g.C, g.H, g.W}, "x");
        T* yp = checked<T>(y, {g.N, g.C, g.Ho, g.Wo}, "y", true);
        py::gil_scoped_release nogil;
        kernels<T>().avg_pool2d(g, count_include_pad, divisor, xp, yp);
    }
};

template <class T>
struct AvgPool2dBackward {
    static void run(const py::array& grad_out, const py::array& grad_x, bool count_include_pad,
                    int64_t divisor, const std::array<int64_t, 14>& shape) {
        const PoolShape g = pool_shape(shape);
        check_avg_shape(g);
        const T* gy = checked<T>(grad_out, {g.N, g.C, g.Ho, g.Wo}, "grad_out");
        T* gx = checked<T>(grad_x, {g.N, g.C, g.H, g.W}, "grad_x", true);
        py::gil_scoped_release nogil;
        kernels<T>().avg_pool2d_backward(g, count_include_pad, divisor, gy, gx);
    }
};

// Sizes of an LSTM call from x (T, B, I) and h0 (B, H), and its checked weights.
template <class T>
LstmShape lstm_shape(const py::array& x, const py::array& h0) {
    if (x.ndim() != 3 || h0.ndim() != 2) throw py::value_error("lstm: x must be 3-D and h0 2-D");
    return {x.shape(0), x.shape(1), x.shape(2), h0.shape(1)};
}

template <class T>
LstmWeights<T> lstm_weights(const LstmShape& s, const py::array& w_ih, const py::array& w_hh,
                            const py::object& b_ih, const py::object& b_hh) {
    return {checked<T>(w_ih, {4 * s.H, s.I}, "w_ih"), checked<T>(w_hh, {4 * s.H, s.H}, "w_hh"),
            checked_or_null<T>(b_ih, {4 * s.H}, "b_ih"),
            checked_or_null<T>(b_hh, {4 * s.H}, "b_hh")};
}

template <class T>
struct Lstm {
    static void run(const py::array& x, const py::array& h0, const py::array& c0,
                    const py::array& w_ih, const py::array& w_hh, const py::object& b_ih,
                    const py::object& b_hh, const py::array& out, const py::object& h_T,
                    const py::array& c_T, const py::object& saved_gates,
                    const py::object& saved_cells) {
        const LstmShape s = lstm_shape<T>(x, h0);
        const T* xp = checked<T>(x, {s.T, s.B, s.I}, "x");
        const T* hp = checked<T>(h0, {s.B, s.H}, "h0");
        const T* cp = checked<T>(c0, {s.B, s.H}, "c0");
        const LstmWeights<T> w = lstm_weights<T>(s, w_ih, w_hh, b_ih, b_hh);
        T* op = checked<T>(out, {s.T, s.B, s.H}, "out", true);
        T* hT = checked_or_null<T>(h_T, {s.B, s.H}, "h_T", true);
        T* cT = checked<T>(c_T, {s.B, s.H}, "c_T", true);
        if (std::min({s.T, s.B, s.I, s.H}) < 1) throw py::value_error("lstm: empty input");
        T* sg = checked_or_null<T>(saved_gates, {s.T, s.B, kernels<T>().lstm_gate_columns(s.H)},
                                   "saved_gates", true);
        T* sc = checked_or_null<T>(saved_cells, {s.T, s.B, s.H}, "saved_cells", true);
        if (!sg != !sc) throw py::value_error("lstm: pass both saved_gates and saved_cells, or neither");
        py::gil_scoped_release nogil;
        kernels<T>().lstm(s, xp, hp, cp, w, op, hT, cT, sg, sc);
    }
};

template <class T>
struct LstmBackward {
    static void run(const py::array& x, const py::object& grad_out, const py::object& grad_hT,
                    const py::object& grad_cT, const py::array& h0, const py::array& c0,
                    const py::array& w_ih, const py::array& w_hh, const py::object& b_ih,
                    const py::object& b_hh, const py::array& grad_x, const py::array& grad_h0,
                    const py::array& grad_c0, const py::array& grad_w_ih,
                    const py::array& grad_w_hh, const py::object& grad_b,
                    const py::object& saved_gates, const py::object& saved_hs,
                    const py::object& saved_cs) {
        const LstmShape s = lstm_shape<T>(x, h0);
        const std::vector<int64_t> bh{s.B, s.H}, g4{4 * s.H};
        const T* gop = checked_or_null<T>(grad_out, {s.T, s.B, s.H}, "grad_out");
        const T* ghT = checked_or_null<T>(grad_hT, bh, "grad_hT");
        const T* gcT = checked_or_null<T>(grad_cT, bh, "grad_cT");
        const T* xp = checked<T>(x, {s.T, s.B, s.I}, "x");
        const T* hp = checked<T>(h0, bh, "h0");
        const T* cp = checked<T>(c0, bh, "c0");
        const LstmWeights<T> w = lstm_weights<T>(s, w_ih, w_hh, b_ih, b_hh);
        T* gx = checked<T>(grad_x, {s.T, s.B, s.I}, "grad_x", true);
        T* gh0 = checked<T>(grad_h0, bh, "grad_h0", true);
        T* gc0 = checked<T>(grad_c0, bh, "grad_c0", true);
        T* gwi = checked<T>(grad_w_ih, {4 * s.H, s.I}, "grad_w_ih", true);
        T* gwh = checked<T>(grad_w_hh, {4 * s.H, s.H}, "grad_w_hh", true);
        T* gb = checked_or_null<T>(grad_b, g4, "grad_b", true);
        if (std::min({s.T, s.B, s.I, s.H}) < 1) throw py::value_error("lstm_backward: empty input");
        const std::vector<int64_t> states{s.T + 1, s.B, s.H};
        const T* sg = checked_or_null<T>(
            saved_gates, {s.T, s.B, kernels<T>().lstm_gate_columns(s.H)}, "saved_gates");
        const T* sh = checked_or_null<T>(saved_hs, states, "saved_hs");
        const T* sc = checked_or_null<T>(saved_cs, states, "saved_cs");
        if (!sg != !sh || !sg != !sc)
            throw py::value_error("lstm_backward: pass all of saved_gates, saved_hs and saved_cs, or none");
        py::gil_scoped_release nogil;
        kernels<T>().lstm_backward(s, gop, ghT, gcT, xp, hp, cp, w, gx, gh0, gc0, gwi, gwh, gb,
                                   sg, sh, sc);
    }
};

int64_t rows_of_boxes(const py::array& boxes, const char* name) {
    if (boxes.ndim() != 2 || boxes.shape(1) != 4)
        throw py::value_error(std::string(name) + ": expected shape (N, 4)");
    return boxes.shape(0);
}

template <class T>
struct BoxIou {
    static void run(const py::array& a, const py::array& b, const py::array& out) {
        const int64_t n = rows_of_boxes(a, "boxes1"), m = rows_of_boxes(b, "boxes2");
        const T* ap = checked<T>(a, {n, 4}, "boxes1");
        const T* bp = checked<T>(b, {m, 4}, "boxes2");
        T* op = checked<T>(out, {n, m}, "out", true);
        py::gil_scoped_release nogil;
        kernels<T>().box_iou(ap, n, bp, m, op);
    }
};

template <class T>
struct Nms {
    static int64_t run(const py::array& boxes, const py::array& scores, const py::object& idxs,
                       double iou_threshold, const py::array& keep) {
        const int64_t n = rows_of_boxes(boxes, "boxes");
        if (n > int64_t(std::numeric_limits<int32_t>::max()))
            throw py::value_error("nms: at most 2**31 - 1 boxes");
        if (std::isnan(iou_threshold)) throw py::value_error("nms: iou_threshold is NaN");
        const T* bp = checked<T>(boxes, {n, 4}, "boxes");
        const T* sp = checked<T>(scores, {n}, "scores");
        const int64_t* cat = checked_or_null<int64_t>(idxs, {n}, "idxs");
        int64_t* kp = checked<int64_t>(keep, {n}, "keep", true);
        py::gil_scoped_release nogil;
        return kernels<T>().nms(bp, sp, cat, n, iou_threshold, kp);
    }
};

// by_dtype for kernels that return a value.
template <template <class> class F, class... Args>
auto by_dtype_ret(const py::array& x, Args&&... args) {
    if (x.dtype().is(py::dtype::of<float>())) return F<float>::run(x, std::forward<Args>(args)...);
    if (x.dtype().is(py::dtype::of<double>())) return F<double>::run(x, std::forward<Args>(args)...);
    throw py::type_error("expected float32 or float64, got " + std::string(py::str(x.dtype())));
}

// ---- convolution and GEMM

ConvShape conv_shape(const std::array<int64_t, 16>& a) {
    ConvShape g{a[0], a[1], a[2],  a[3],  a[4],  a[5],  a[6],  a[7],
                a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]};
    for (int64_t v : {g.N, g.C, g.H, g.W, g.K, g.R, g.S, g.Ho, g.Wo, g.sh, g.sw, g.dh, g.dw, g.groups})
        if (v < 1) throw py::value_error("conv shape: sizes, strides, dilations and groups must be >= 1");
    if (g.ph < 0 || g.pw < 0) throw py::value_error("conv shape: negative padding");
    if (g.C % g.groups || g.K % g.groups)
        throw py::value_error("conv shape: groups must divide C and K");
    return g;
}

std::vector<int64_t> weight_dims(const ConvShape& g) { return {g.K, g.C / g.groups, g.R, g.S}; }

template <class T>
struct Conv2d {
    static void run(const py::array& x, const py::array& w, const py::object& b,
                    const py::array& y, const std::array<int64_t, 16>& shape) {
        const ConvShape g = conv_shape(shape);
        const T* xp = checked<T>(x, {g.N, g.C, g.H, g.W}, "x");
        const T* wp = checked<T>(w, weight_dims(g), "w");
        const T* bp = b.is_none() ? nullptr : checked<T>(b.cast<py::array>(), {g.K}, "b");
        T* yp = checked<T>(y, {g.N, g.K, g.Ho, g.Wo}, "y", true);
        py::gil_scoped_release nogil;
        kernels<T>().conv2d(g, xp, wp, bp, yp);
    }
};

template <class T>
struct Conv2dGradInput {
    static void run(const py::array& grad_y, const py::array& w, const py::array& grad_x,
                    const std::array<int64_t, 16>& shape) {
        const ConvShape g = conv_shape(shape);
        const T* gy = checked<T>(grad_y, {g.N, g.K, g.Ho, g.Wo}, "grad_y");
        const T* wp = checked<T>(w, weight_dims(g), "w");
        T* gx = checked<T>(grad_x, {g.N, g.C, g.H, g.W}, "grad_x", true);
        py::gil_scoped_release nogil;
        kernels<T>().conv2d_grad_input(g, gy, wp, gx);
    }
};

template <class T>
struct Conv2dGradWeight {
    static void run(const py::array& grad_y, const py::array& x, const py::array& grad_w,
                    const std::array<int64_t, 16>& shape) {
        const ConvShape g = conv_shape(shape);
        const T* gy = checked<T>(grad_y, {g.N, g.K, g.Ho, g.Wo}, "grad_y");
        const T* xp = checked<T>(x, {g.N, g.C, g.H, g.W}, "x");
        T* gw = checked<T>(grad_w, weight_dims(g), "grad_w", true);
        py::gil_scoped_release nogil;
        kernels<T>().conv2d_grad_weight(g, gy, xp, gw);
    }
};

template <class T>
struct Conv2dGradBias {
    static void run(const py::array& grad_y, const py::array& grad_b) {
        if (grad_y.ndim() != 4) throw py::value_error("grad_y: expected a 4-D array");
        const int64_t N = grad_y.shape(0), K = grad_y.shape(1);
        const int64_t plane = grad_y.shape(2) * grad_y.shape(3);
        const T* gy = checked<T>(grad_y, {N, K, grad_y.shape(2), grad_y.shape(3)}, "grad_y");
        T* gb = checked<T>(grad_b, {K}, "grad_b", true);
        py::gil_scoped_release nogil;
        kernels<T>().conv2d_grad_bias(N, K, plane, gy, gb);
    }
};

template <class T>
struct Gemm {
    static void run(const py::array& a, const py::array& b, const py::array& c, bool accumulate) {
        if (a.ndim() != 2 || b.ndim() != 2) throw py::value_error("gemm: a and b must be 2-D");
        const int64_t M = a.shape(0), K = a.shape(1), N = b.shape(1);
        const T* ap = checked<T>(a, {M, K}, "a");
        const T* bp = checked<T>(b, {K, N}, "b");
        T* cp = checked<T>(c, {M, N}, "c", true);
        py::gil_scoped_release nogil;
        kernels<T>().gemm(M, N, K, ap, bp, cp, accumulate);
    }
};

Isa parse_isa(const std::string& name) {
    for (Isa isa : {Isa::generic, Isa::avx2, Isa::avx512})
        if (name == isa_name(isa)) return isa;
    throw py::value_error("isa: expected 'generic', 'avx2' or 'avx512', got '" + name + "'");
}

}  // namespace

PYBIND11_MODULE(_C, m) {
    m.doc() = "pyconv's C++ kernels (OpenMP, run-time ISA dispatch)";

    m.def("isa", [] { return std::string(isa_name(active_isa())); },
          "ISA variant the kernels dispatch to");
    m.def("best_isa", [] { return std::string(isa_name(best_supported_isa())); },
          "best ISA variant this CPU supports");
    m.def("set_isa", [](const std::string& name) { set_active_isa(parse_isa(name)); },
          py::arg("name"), "dispatch to a lower ISA variant (tests run every variant)");
    m.def("compiled_isas", [] {
        return std::vector<std::string>{table_generic.isa, table_avx2.isa, table_avx512.isa};
    });
    m.def("get_num_threads", &num_threads);
    m.def("set_num_threads", [](int n) {
        if (n < 1) throw py::value_error("num_threads must be >= 1, got " + std::to_string(n));
        set_num_threads(n);
    });
    m.def("compiler", [] { return std::string("GCC ") + __VERSION__; });

    m.def("max_pool2d",
          [](const py::array& x, const py::array& y, const py::object& idx,
             const std::array<int64_t, 14>& shape) { by_dtype<MaxPool2d>(x, y, idx, shape); },
          py::arg("x"), py::arg("y"), py::arg("indices"), py::arg("shape"),
          "max pooling into y (and indices, unless None); shape = "
          "(N,C,H,W,Ho,Wo,kh,kw,sh,sw,ph,pw,dh,dw)");

    m.def("max_pool2d_backward",
          [](const py::array& grad_out, const py::array& indices, const py::array& grad_x) {
              by_dtype<MaxPool2dBackward>(grad_out, indices, grad_x);
          },
          py::arg("grad_out"), py::arg("indices"), py::arg("grad_x"),
          "grad_x = zeros, then grad_x.flat-per-plane[indices] += grad_out");
    m.def("max_unpool2d",
          [](const py::array& x, const py::array& indices, const py::array& y) {
              by_dtype<MaxUnpool2d>(x, indices, y);
          },
          py::arg("x"), py::arg("indices"), py::arg("y"),
          "y = zeros, then y.flat-per-plane[indices] = x (the last repeated index wins)");
    m.def("avg_pool2d",
          [](const py::array& x, const py::array& y, bool count_include_pad, int64_t divisor,
             const std::array<int64_t, 14>& shape) {
              by_dtype<AvgPool2d>(x, y, count_include_pad, divisor, shape);
          },
          py::arg("x"), py::arg("y"), py::arg("count_include_pad"), py::arg("divisor_override"),
          py::arg("shape"), "average pooling into y (divisor_override 0 = none)");
    m.def("avg_pool2d_backward",
          [](const py::array& grad_out, const py::array& grad_x, bool count_include_pad,
             int64_t divisor, const std::array<int64_t, 14>& shape) {
              by_dtype<AvgPool2dBackward>(grad_out, grad_x, count_include_pad, divisor, shape);
          },
          py::arg("grad_out"), py::arg("grad_x"), py::arg("count_include_pad"),
          py::arg("divisor_override"), py::arg("shape"), "gradient of average pooling");
    m.def("lstm",
          [](const py::array& x, const py::array& h0, const py::array& c0, const py::array& w_ih,
             const py::array& w_hh, const py::object& b_ih, const py::object& b_hh,
             const py::array& out, const py::object& h_T, const py::array& c_T,
             const py::object& saved_gates, const py::object& saved_cells) {
              by_dtype<Lstm>(x, h0, c0, w_ih, w_hh, b_ih, b_hh, out, h_T, c_T, saved_gates,
                             saved_cells);
          },
          py::arg("x"), py::arg("h0"), py::arg("c0"), py::arg("w_ih"), py::arg("w_hh"),
          py::arg("b_ih"), py::arg("b_hh"), py::arg("out"), py::arg("h_T"), py::arg("c_T"),
          py::arg("saved_gates") = py::none(), py::arg("saved_cells") = py::none(),
          "LSTM over x (T,B,I) into out (T,B,H), h_T (or None) and c_T; to keep the forward "
          "for lstm_backward, saved_gates (T,B,lstm_gate_columns(H)) and saved_cells (T,B,H) "
          "receive the activated gates and c_1..c_T");
    m.def("lstm_gate_columns",
          [](int64_t H, const py::dtype& dtype) {
              if (H < 1) throw py::value_error("lstm_gate_columns: H must be >= 1");
              if (dtype.is(py::dtype::of<float>())) return kernels<float>().lstm_gate_columns(H);
              if (dtype.is(py::dtype::of<double>())) return kernels<double>().lstm_gate_columns(H);
              throw py::type_error("expected float32 or float64, got " + std::string(py::str(dtype)));
          },
          py::arg("H"), py::arg("dtype"),
          "width of lstm's saved gate rows for H hidden units (the kernels' padded gate layout)");
    m.def("lstm_backward",
          [](const py::array& x, const py::object& grad_out, const py::object& grad_hT,
             const py::object& grad_cT, const py::array& h0, const py::array& c0,
             const py::array& w_ih, const py::array& w_hh, const py::object& b_ih,
             const py::object& b_hh, const py::array& grad_x, const py::array& grad_h0,
             const py::array& grad_c0, const py::array& grad_w_ih, const py::array& grad_w_hh,
             const py::object& grad_b, const py::object& saved_gates,
             const py::object& saved_hs, const py::object& saved_cs) {
              by_dtype<LstmBackward>(x, grad_out, grad_hT, grad_cT, h0, c0, w_ih, w_hh, b_ih,
                                     b_hh, grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_b,
                                     saved_gates, saved_hs, saved_cs);
          },
          py::arg("x"), py::arg("grad_out"), py::arg("grad_hT"), py::arg("grad_cT"),
          py::arg("h0"), py::arg("c0"), py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih"),
          py::arg("b_hh"), py::arg("grad_x"), py::arg("grad_h0"), py::arg("grad_c0"),
          py::arg("grad_w_ih"), py::arg("grad_w_hh"), py::arg("grad_b"),
          py::arg("saved_gates") = py::none(), py::arg("saved_hs") = py::none(),
          py::arg("saved_cs") = py::none(),
          "backpropagation through time of lstm (grad_* outputs written in place), from the "
          "saved forward (gates as lstm saved them, hs and cs (T+1,B,H) = h_0..h_T, c_0..c_T) "
          "or, when they are None, running the forward again");
    m.def("box_iou",
          [](const py::array& a, const py::array& b, const py::array& out) {
              by_dtype<BoxIou>(a, b, out);
          },
          py::arg("boxes1"), py::arg("boxes2"), py::arg("out"), "pairwise IoU into out (N, M)");
    m.def("nms",
          [](const py::array& boxes, const py::array& scores, const py::object& idxs,
             double iou_threshold, const py::array& keep) {
              return by_dtype_ret<Nms>(boxes, scores, idxs, iou_threshold, keep);
          },
          py::arg("boxes"), py::arg("scores"), py::arg("idxs"), py::arg("iou_threshold"),
          py::arg("keep"),
          "greedy NMS (per category when idxs is not None); writes the kept indices to keep "
          "and returns their count");

    const char* conv_shape_doc = "shape = (N,C,H,W,K,R,S,Ho,Wo,sh,sw,ph,pw,dh,dw,groups)";
    m.def("conv2d",
          [](const py::array& x, const py::array& w, const py::object& b, const py::array& y,
             const std::array<int64_t, 16>& shape) { by_dtype<Conv2d>(x, w, b, y, shape); },
          py::arg("x"), py::arg("w"), py::arg("b"), py::arg("y"), py::arg("shape"),
          (std::string("convolution into y; ") + conv_shape_doc).c_str());
    m.def("conv2d_grad_input",
          [](const py::array& grad_y, const py::array& w, const py::array& grad_x,
             const std::array<int64_t, 16>& shape) {
              by_dtype<Conv2dGradInput>(grad_y, w, grad_x, shape);
          },
          py::arg("grad_y"), py::arg("w"), py::arg("grad_x"), py::arg("shape"),
          (std::string("input gradient (= transpose convolution) into grad_x; ") + conv_shape_doc).c_str());
    m.def("conv2d_grad_weight",
          [](const py::array& grad_y, const py::array& x, const py::array& grad_w,
             const std::array<int64_t, 16>& shape) {
              by_dtype<Conv2dGradWeight>(grad_y, x, grad_w, shape);
          },
          py::arg("grad_y"), py::arg("x"), py::arg("grad_w"), py::arg("shape"),
          (std::string("weight gradient into grad_w; ") + conv_shape_doc).c_str());
    m.def("conv2d_grad_bias",
          [](const py::array& grad_y, const py::array& grad_b) { by_dtype<Conv2dGradBias>(grad_y, grad_b); },
          py::arg("grad_y"), py::arg("grad_b"), "bias gradient: grad_b[k] = grad_y[:, k].sum()");
    m.def("gemm",
          [](const py::array& a, const py::array& b, const py::array& c, bool accumulate) {
              by_dtype<Gemm>(a, b, c, accumulate);
          },
          py::arg("a"), py::arg("b"), py::arg("c"), py::arg("accumulate") = false,
          "packed GEMM: c = a @ b (or c += a @ b); row-major, C-contiguous");
}
