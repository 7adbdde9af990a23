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
}
