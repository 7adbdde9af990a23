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

#include <array>
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
