// Python bindings of the C++ kernels (module pyconv._C).
//
// The Python side (pyconv/backends/cpu.py) hands over C-contiguous arrays of the right dtype,
// allocates the outputs and passes the geometry from pyconv/_spec.py (ConvGeom, PoolGeom),
// whose fields are read by name into ConvShape / PoolShape. The bindings still check every
// buffer against the shape it is used with, so that a direct call into _C with wrong arguments
// raises instead of reading or writing out of bounds. The GIL is released around every kernel.
//
// Each binding is one generic lambda, instantiated for float and double by by_dtype: it checks
// its buffers, then runs the kernel of that type without the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <iterator>
#include <optional>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/checked.h"
#include "common/denormals.h"
#include "gemm/blocking.h"
#include "kernels.h"

namespace py = pybind11;
using namespace pyconv;

// ---- Geometry, read from the Python geometry object field by field ---------------------------

namespace {

// The fields of a shape struct by the names the Python geometry gives them.
template <class Shape>
struct ShapeFields;

template <>
struct ShapeFields<ConvShape> {
    static constexpr const char* python_type = "ConvGeom";
    static constexpr std::pair<const char*, int64_t ConvShape::*> fields[] = {
        {"N", &ConvShape::N},   {"C", &ConvShape::C},   {"H", &ConvShape::H},
        {"W", &ConvShape::W},   {"K", &ConvShape::K},   {"R", &ConvShape::R},
        {"S", &ConvShape::S},   {"Ho", &ConvShape::Ho}, {"Wo", &ConvShape::Wo},
        {"sh", &ConvShape::sh}, {"sw", &ConvShape::sw}, {"ph", &ConvShape::ph},
        {"pw", &ConvShape::pw}, {"dh", &ConvShape::dh}, {"dw", &ConvShape::dw},
        {"groups", &ConvShape::groups},
    };
};

template <>
struct ShapeFields<PoolShape> {
    static constexpr const char* python_type = "PoolGeom";
    static constexpr std::pair<const char*, int64_t PoolShape::*> fields[] = {
        {"N", &PoolShape::N},   {"C", &PoolShape::C},   {"H", &PoolShape::H},
        {"W", &PoolShape::W},   {"Ho", &PoolShape::Ho}, {"Wo", &PoolShape::Wo},
        {"kh", &PoolShape::kh}, {"kw", &PoolShape::kw}, {"sh", &PoolShape::sh},
        {"sw", &PoolShape::sw}, {"ph", &PoolShape::ph}, {"pw", &PoolShape::pw},
        {"dh", &PoolShape::dh}, {"dw", &PoolShape::dw},
    };
};

// A field's name as an interned Python string, made once and kept for the process (never
// released: a static py::object would be released after the interpreter is gone). Made from
// the C string on every call, the names were most of reading a geometry: 17 fields, twice
// each, 1-2 us of a one-image kernel call.
inline PyObject* interned(const char* name) {
    PyObject* s = PyUnicode_InternFromString(name);
    if (s == nullptr) throw py::error_already_set();
    return s;
}

// A field's value as an int64 (a TypeError naming the field where it is no integer).
template <class Shape>
int64_t integer_field(PyObject* value, const char* name) {
    const long long v = PyLong_AsLongLong(value);
    if (v == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        throw py::type_error(std::string("shape: field '") + name + "' of the " +
                             ShapeFields<Shape>::python_type + " must be an integer");
    }
    return int64_t(v);
}

// geometry.<name> as an int64 (a TypeError naming the field where it is missing or no integer).
template <class Shape>
int64_t field_of(py::handle geometry, PyObject* name_object, const char* name) {
    PyObject* value = PyObject_GetAttr(geometry.ptr(), name_object);
    if (value == nullptr) {
        PyErr_Clear();
        throw py::type_error(std::string("shape: expected a ") + ShapeFields<Shape>::python_type +
                             " (fields read by name), got " + std::string(py::str(py::type::of(geometry))) +
                             " without field '" + name + "'");
    }
    const py::object owned = py::reinterpret_steal<py::object>(value);  // released on every way out
    return integer_field<Shape>(value, name);
}

// Whether `type` is a tuple type (a NamedTuple) whose _fields list Shape's fields in their
// order, then at most `optional` (ConvShape's "algorithm"), so that its items can be read by
// position.
template <class Shape>
bool tuple_of_fields(PyTypeObject* type, const char* optional) {
    if (!PyType_IsSubtype(type, &PyTuple_Type)) return false;
    PyObject* names = PyObject_GetAttrString(reinterpret_cast<PyObject*>(type), "_fields");
    if (names == nullptr) {
        PyErr_Clear();
        return false;
    }
    constexpr Py_ssize_t n = Py_ssize_t(std::size(ShapeFields<Shape>::fields));
    bool ordered = PyTuple_Check(names) && (PyTuple_GET_SIZE(names) == n ||
                                            (optional != nullptr && PyTuple_GET_SIZE(names) == n + 1));
    for (Py_ssize_t i = 0; ordered && i < PyTuple_GET_SIZE(names); ++i) {
        PyObject* name = PyTuple_GET_ITEM(names, i);
        ordered = PyUnicode_Check(name) &&
                  PyUnicode_CompareWithASCIIString(name, i < n ? ShapeFields<Shape>::fields[i].first : optional) == 0;
    }
    Py_DECREF(names);
    return ordered;
}

template <class Shape>
Shape shape_from(py::handle geometry) {
    constexpr size_t n = std::size(ShapeFields<Shape>::fields);
    static PyObject* const* const names = [] {
        auto* made = new PyObject*[n];
        for (size_t i = 0; i < n; ++i) made[i] = interned(ShapeFields<Shape>::fields[i].first);
        return made;
    }();
    Shape shape{};
    // pyconv's geometries are NamedTuples: once their type is known to hold the fields in
    // order, they are read by position (by name, the 17 lookups were a third of the fixed cost
    // of a one-image convolution call). The GIL guards the cache.
    constexpr const char* optional = std::is_same_v<Shape, ConvShape> ? "algorithm" : nullptr;
    static PyTypeObject* by_position = nullptr;
    PyTypeObject* type = Py_TYPE(geometry.ptr());
    if (type != by_position && tuple_of_fields<Shape>(type, optional)) by_position = type;
    if (type == by_position && PyTuple_GET_SIZE(geometry.ptr()) >= Py_ssize_t(n)) {
        for (size_t i = 0; i < n; ++i) {
            const auto& [name, member] = ShapeFields<Shape>::fields[i];
            shape.*member = integer_field<Shape>(PyTuple_GET_ITEM(geometry.ptr(), Py_ssize_t(i)), name);
        }
        if constexpr (std::is_same_v<Shape, ConvShape>) {
            if (PyTuple_GET_SIZE(geometry.ptr()) > Py_ssize_t(n))
                shape.algorithm = integer_field<Shape>(PyTuple_GET_ITEM(geometry.ptr(), Py_ssize_t(n)), optional);
        }
        return shape;
    }
    for (size_t i = 0; i < n; ++i) {
        const auto& [name, member] = ShapeFields<Shape>::fields[i];
        shape.*member = field_of<Shape>(geometry, names[i], name);
    }
    if constexpr (std::is_same_v<Shape, ConvShape>) {  // optional: absent means automatic
        static PyObject* const algorithm = interned("algorithm");
        if (PyObject_HasAttr(geometry.ptr(), algorithm))
            shape.algorithm = field_of<Shape>(geometry, algorithm, "algorithm");
    }
    return shape;
}

}  // namespace

// ConvShape and PoolShape arguments of the bindings accept the Python geometry objects.
namespace pybind11 {
namespace detail {

template <class Shape>
struct shape_caster {
    PYBIND11_TYPE_CASTER(Shape, const_name("geometry"));
    bool load(handle src, bool) {
        value = shape_from<Shape>(src);
        return true;
    }
    static handle cast(const Shape&, return_value_policy, handle) {
        throw type_error("shapes are not returned to Python");
    }
};

template <>
struct type_caster<ConvShape> : shape_caster<ConvShape> {};
template <>
struct type_caster<PoolShape> : shape_caster<PoolShape> {};

}  // namespace detail
}  // namespace pybind11

// ---- Checked buffers and dtype dispatch ---------------------------------------------------------

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
    if (!py::isinstance<py::array_t<T>>(a))
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

// Data pointer of an optional array (None -> nullptr), checked like `checked`.
template <class T>
T* checked_or_null(const py::object& a, const std::vector<int64_t>& shape, const char* name,
                   bool writable = false) {
    return a.is_none() ? nullptr : checked<T>(a.cast<py::array>(), shape, name, writable);
}

// Whether `dtype` is T's dtype. Compared by value as NumPy does (the check array_t<T> makes),
// not by object identity: an array that was pickled and loaded again (as a multiprocessing
// worker's are) carries an equal dtype that is another object.
template <class T>
bool is_dtype(const py::dtype& dtype) {
    return py::detail::npy_api::get().PyArray_EquivTypes_(py::dtype::of<T>().ptr(), dtype.ptr());
}

// body(T()) with T the C++ type of `dtype`: one binding body serves float32 and float64.
template <class Body>
decltype(auto) by_dtype(const py::dtype& dtype, Body&& body) {
    if (is_dtype<float>(dtype)) return body(float());
    if (is_dtype<double>(dtype)) return body(double());
    throw py::type_error("expected float32 or float64, got " + std::string(py::str(dtype)));
}

// Runs a kernel call with the GIL released, and subnormal floats flushed to zero on the calling
// thread (the thread pool's workers run each task with the caller's MXCSR; common/denormals.h).
template <class Call>
decltype(auto) without_gil(Call&& call) {
    py::gil_scoped_release nogil;
    const generic::FlushDenormals ftz;
    return call();
}

// ---- Geometry checks (the spec has validated it; a direct call may not have) --------------------

// The kernels index rows up to (out - 1) * stride + (taps - 1) * dilation from -pad, and add
// the input size, the padding and the stride to such positions: all of that must fit int64_t
// (checked_add / checked_mul throw std::length_error, a ValueError naming the op, if not).
void check_reach(int64_t out, int64_t stride, int64_t taps, int64_t dilation, int64_t in, int64_t pad) {
    const int64_t reach = checked_add(checked_mul(out - 1, stride), checked_mul(taps - 1, dilation), 1);
    checked_add(reach, in, pad, stride, dilation);
}

void check_pool_shape(const PoolShape& g) {
    for (int64_t v : {g.N, g.C, g.H, g.W, g.Ho, g.Wo, g.ph, g.pw})
        if (v < 0) throw py::value_error("pool shape: negative size");
    for (int64_t v : {g.kh, g.kw, g.sh, g.sw, g.dh, g.dw})
        if (v < 1) throw py::value_error("pool shape: kernel, stride and dilation must be >= 1");
    check_reach(std::max<int64_t>(g.Ho, 1), g.sh, g.kh, g.dh, g.H, g.ph);
    check_reach(std::max<int64_t>(g.Wo, 1), g.sw, g.kw, g.dw, g.W, g.pw);
}

// Every window must hold an input element (the spec guarantees it; re-check the extremes).
void check_windows_inside(const PoolShape& g) {
    if (g.Ho > 0 && ((g.Ho - 1) * g.sh - g.ph >= g.H || (g.Wo - 1) * g.sw - g.pw >= g.W ||
                     g.ph >= g.kh * g.dh || g.pw >= g.kw * g.dw))
        throw py::value_error("pool shape: a window lies entirely in the padding");
}

void check_avg_shape(const PoolShape& g) {
    check_pool_shape(g);
    if (g.dh != 1 || g.dw != 1) throw py::value_error("avg_pool2d: dilation must be 1");
    check_windows_inside(g);
}

void check_conv_shape(const ConvShape& g) {
    for (int64_t v : {g.N, g.C, g.H, g.W, g.K, g.R, g.S, g.Ho, g.Wo, g.sh, g.sw, g.dh, g.dw, g.groups})
        if (v < 1) throw py::value_error("conv shape: sizes, strides, dilations and groups must be >= 1");
    if (g.ph < 0 || g.pw < 0) throw py::value_error("conv shape: negative padding");
    if (g.C % g.groups || g.K % g.groups)
        throw py::value_error("conv shape: groups must divide C and K");
    check_reach(g.Ho, g.sh, g.R, g.dh, g.H, g.ph);
    check_reach(g.Wo, g.sw, g.S, g.dw, g.W, g.pw);
    if (g.algorithm < conv_auto || g.algorithm > conv_direct)
        throw py::value_error("conv shape: algorithm must be 0 (auto), 1 (gemm), 2 (winograd) or 3 (direct)");
    // F(4x4, 3x3) for 3x3 stride 1, F(4x4, 2x2) over stride phases for 4x4 stride 2.
    const bool winograd_applies = ((g.R == 3 && g.S == 3 && g.sh == 1 && g.sw == 1) ||
                                   (g.R == 4 && g.S == 4 && g.sh == 2 && g.sw == 2)) &&
                                  g.dh == 1 && g.dw == 1 && g.groups == 1;
    if (g.algorithm == conv_winograd && !winograd_applies)
        throw py::value_error("conv shape: algorithm winograd needs a 3x3 kernel with stride 1 or a 4x4 kernel "
                              "with stride 2, and dilation 1, groups 1");
}

std::vector<int64_t> input_dims(const ConvShape& g) { return {g.N, g.C, g.H, g.W}; }
std::vector<int64_t> weight_dims(const ConvShape& g) { return {g.K, g.C / g.groups, g.R, g.S}; }
std::vector<int64_t> output_dims(const ConvShape& g) { return {g.N, g.K, g.Ho, g.Wo}; }

void check_scatter(int64_t skipped, const char* op, const char* bound) {
    if (skipped)
        throw py::value_error(std::string(op) + ": " + std::to_string(skipped) +
                              " indices lie outside [0, " + bound + ") and were skipped");
}

int64_t rows_of_boxes(const py::array& boxes, const char* name) {
    if (boxes.ndim() != 2 || boxes.shape(1) != 4)
        throw py::value_error(std::string(name) + ": expected shape (N, 4)");
    return boxes.shape(0);
}

int64_t rows_of_rotated_boxes(const py::array& boxes, const char* name) {
    if (boxes.ndim() != 2 || boxes.shape(1) != 5)
        throw py::value_error(std::string(name) + ": expected shape (N, 5)");
    return boxes.shape(0);
}

// Sizes of an LSTM call from x (T, B, I) and h0 (B, H), and its checked weights.
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

// ---- GEMM cache blocking: the caches as a dict, and the element size of a dtype name

constexpr std::pair<const char*, int64_t CpuCaches::*> kCacheFields[] = {
    {"l1d", &CpuCaches::l1d}, {"l1d_ways", &CpuCaches::l1d_ways},
    {"l2", &CpuCaches::l2},   {"l2_shared_by", &CpuCaches::l2_shared_by},
    {"l3", &CpuCaches::l3},   {"l3_shared_by", &CpuCaches::l3_shared_by},
    {"line", &CpuCaches::line}, {"cpus", &CpuCaches::cpus},
};

py::dict caches_to_dict(const CpuCaches& c) {
    py::dict d;
    for (const auto& [name, field] : kCacheFields) d[name] = c.*field;
    d["source"] = c.source;
    return d;
}

CpuCaches caches_from_dict(const py::dict& d) {
    CpuCaches c{0, 0, 0, 1, 0, 1, 0, 1, "given"};
    for (const auto& [name, field] : kCacheFields)
        if (d.contains(name)) c.*field = d[name].cast<int64_t>();
    return c;
}

int dtype_size(const std::string& dtype) {
    if (dtype == "float32") return 4;
    if (dtype == "float64") return 8;
    throw py::value_error("dtype: expected 'float32' or 'float64', got '" + dtype + "'");
}

Isa parse_isa(const std::string& name) {
    for (Isa isa : {Isa::generic, Isa::avx2, Isa::avx512})
        if (name == isa_name(isa)) return isa;
    throw py::value_error("isa: expected 'generic', 'avx2' or 'avx512', got '" + name + "'");
}

const GemmTileShape& gemm_tile_of(Isa isa, int elem_size) {
    const KernelTable& t = isa == Isa::avx512 ? table_avx512 : isa == Isa::avx2 ? table_avx2 : table_generic;
    return elem_size == 4 ? t.f32.gemm_tile : t.f64.gemm_tile;
}

using Array = const py::array&;
using Optional = const py::object&;  // an array or None

// batch_norm's activation code (0 none, 1 relu, 2 leaky_relu), checked: its gradient is taken
// from the output, which needs a slope >= 0 (y > 0 exactly where the input is).
NormActivation norm_activation(int code, double negative_slope) {
    if (code < 0 || code > 2) throw py::value_error("activation: expected 0 (none), 1 (relu) or 2 (leaky_relu)");
    if (code == 2 && !(negative_slope >= 0 && negative_slope < std::numeric_limits<double>::infinity()))
        throw py::value_error("negative_slope: must be finite and >= 0 for the fused leaky_relu");
    return NormActivation(code);
}

// conv2d_prepare's result: the transformed filters (none where the shape's algorithm
// transforms none) and the weight array they were made from, which conv2d must be given
// with them.
struct Conv2dFilters {
    std::shared_ptr<const PreparedFilters> prepared;
    py::object weights;
};

// The prepared filters `filters` holds for op's call with weights w (None: nullptr); a
// TypeError if it is not a Conv2dFilters, a ValueError if it was made from another array.
const PreparedFilters* prepared_for(const std::string& op, const py::object& filters, const Array& w) {
    if (filters.is_none()) return nullptr;
    if (!py::isinstance<Conv2dFilters>(filters))
        throw py::type_error(op + ": filters must come from " + op + "_prepare");
    const Conv2dFilters& f = py::cast<const Conv2dFilters&>(filters);
    if (!f.weights.is(w)) throw py::value_error(op + ": filters were prepared from another array than w");
    return f.prepared.get();
}

[[noreturn]] void throw_memory_error(const std::string& message) {
    PyErr_SetString(PyExc_MemoryError, message.c_str());
    throw py::error_already_set();
}

// A kernel binding whose C++ errors name the op: a size that overflows 64-bit arithmetic
// (std::length_error) becomes a ValueError, a failed allocation a MemoryError (with its size
// when it was scratch memory).
template <class R, class... Args>
auto naming_errors(const char* op, std::function<R(Args...)> body) {
    return [op, body](Args... args) -> R {
        try {
            return body(std::forward<Args>(args)...);
        } catch (const std::length_error& e) {
            throw py::value_error(std::string(op) + ": " + e.what());
        } catch (const OutOfMemory& e) {
            throw_memory_error(std::string(op) + ": " + e.what());
        } catch (const std::bad_alloc&) {
            throw_memory_error(std::string(op) + ": out of memory");
        }
    };
}

template <class Body, class... Extra>
void def_op(py::module_& m, const char* op, Body&& body, const Extra&... extra) {
    m.def(op, naming_errors(op, std::function(std::forward<Body>(body))), extra...);
}

// ---- Rows of classes and lists of tensors (losses, optimiser steps) -----------------------------

// (M, C) of a 2-D array of rows.
std::vector<int64_t> rows_of(const py::array& x, const char* name) {
    if (x.ndim() != 2) throw py::value_error(std::string(name) + ": expected shape (M, C)");
    return {x.shape(0), x.shape(1)};
}

// The shapes of a list of parameter arrays.
std::vector<std::vector<int64_t>> shapes_of(const py::list& params) {
    std::vector<std::vector<int64_t>> shapes;
    for (size_t k = 0; k < params.size(); ++k) {
        if (!py::isinstance<py::array>(params[k]))
            throw py::type_error("params[" + std::to_string(k) + "]: expected an array");
        const auto a = params[k].cast<py::array>();
        shapes.emplace_back(a.shape(), a.shape() + a.ndim());
    }
    return shapes;
}

// Data pointers of a list of arrays, entry k checked like `checked` against shapes[k].
template <class T>
std::vector<T*> checked_list(const py::list& arrays, const std::vector<std::vector<int64_t>>& shapes,
                             const char* name, bool writable = false) {
    if (arrays.size() != shapes.size())
        throw py::value_error(std::string(name) + ": expected " + std::to_string(shapes.size()) +
                              " arrays, got " + std::to_string(arrays.size()));
    std::vector<T*> pointers;
    for (size_t k = 0; k < shapes.size(); ++k) {
        const std::string entry = std::string(name) + "[" + std::to_string(k) + "]";
        if (!py::isinstance<py::array>(arrays[k])) throw py::type_error(entry + ": expected an array");
        pointers.push_back(checked<T>(arrays[k].cast<py::array>(), shapes[k], entry.c_str(), writable));
    }
    return pointers;
}

std::vector<int64_t> sizes_of(const std::vector<std::vector<int64_t>>& shapes) {
    std::vector<int64_t> sizes;
    for (const auto& s : shapes) {
        int64_t n = 1;
        for (int64_t d : s) n = checked_mul(n, d);
        sizes.push_back(n);
    }
    return sizes;
}

// Class targets (M,): each in [0, C) or ignore_index (the kernels index rows with them).
const int64_t* checked_targets(const py::array& target, int64_t M, int64_t C, int64_t ignore_index) {
    const int64_t* t = checked<int64_t>(target, {M}, "target");
    for (int64_t i = 0; i < M; ++i)
        if (t[i] != ignore_index && (t[i] < 0 || t[i] >= C))
            throw py::value_error("target: class " + std::to_string(t[i]) + " outside [0, " +
                                  std::to_string(C) + ")");
    return t;
}

// The class scores x of a cross-entropy as (N, C, P), row (n, p) holding x[n, :, p]: x (M, C)
// is (M, C, 1). Rows of at least one class.
std::array<int64_t, 3> class_rows_of(const py::array& x) {
    if (x.ndim() != 2 && x.ndim() != 3) throw py::value_error("x: expected (M, C) or (N, C, P)");
    const int64_t N = x.shape(0), C = x.shape(1), P = x.ndim() == 3 ? x.shape(2) : 1;
    if (C < 1 && N * P > 0) throw py::value_error("x: needs at least one class");
    return {N, C, P};
}

// body(T(), shapes, sizes) for a non-empty list of parameter arrays of element type T (the
// optimiser steps); nothing for an empty list.
template <class Body>
void for_parameters(const py::list& params, Body&& body) {
    if (params.empty()) return;
    const auto shapes = shapes_of(params);
    const auto sizes = sizes_of(shapes);
    by_dtype(params[0].cast<py::array>().dtype(), [&](auto t) { body(t, shapes, sizes); });
}

// ---- Elementwise ops over arrays of any shape ---------------------------------------------------

std::vector<int64_t> shape_of(const py::array& a) { return {a.shape(), a.shape() + a.ndim()}; }

// prelu's x as N rows of C channels of `inner` elements (without a channel axis, fewer than 2
// dimensions: one row of one channel), and its w of 1 or C slopes.
struct PreluShape {
    std::vector<int64_t> x;
    int64_t N, C, inner, w_size;
};

PreluShape prelu_shape(const py::array& x, const py::array& w) {
    const std::vector<int64_t> shape = shape_of(x);
    const bool channels = x.ndim() >= 2;
    const int64_t N = channels ? shape[0] : 1, C = channels ? shape[1] : 1;
    const int64_t inner = N * C > 0 ? int64_t(x.size()) / (N * C) : 0;
    const int64_t w_size = w.ndim() == 1 ? w.shape(0) : -1;
    if (w_size != 1 && w_size != C) throw py::value_error("w: expected 1 or x.shape[1] slopes");
    return {shape, N, C, inner, w_size};
}

// gated_tanh's x as (outer, 2, inner) around axis `dim` (its length even), and y's shape: x's
// with that axis halved.
struct GateShape {
    std::vector<int64_t> x, y;
    int64_t outer = 1, inner = 1;
};

GateShape gate_shape(const py::array& x, int64_t dim) {
    GateShape s{shape_of(x), shape_of(x)};
    if (dim < 0 || dim >= int64_t(s.x.size()) || s.x[size_t(dim)] % 2 != 0)
        throw py::value_error("dim: expected an axis of x of even length");
    s.y[size_t(dim)] /= 2;
    for (int64_t i = 0; i < int64_t(s.x.size()); ++i) {
        if (i < dim) s.outer *= s.x[size_t(i)];
        else s.inner *= s.y[size_t(i)];
    }
    return s;
}

// One double argument for each name in a pack of parameter names.
template <class Name>
using Scalar = double;

// Binds `name`(x, parameters..., y): y = f(x, parameters...) by the kernel that `pick` takes
// from a kernel table, called as (n, x, T(parameters)..., y).
template <class Pick, class... Names>
void def_map(py::module_& m, const char* name, Pick pick, const char* doc, Names... parameters) {
    def_op(m, name,
          [pick](Array x, Scalar<Names>... values, Array y) {
              by_dtype(x.dtype(), [&](auto t) {
                  using T = decltype(t);
                  const auto shape = shape_of(x);
                  const T* xp = checked<T>(x, shape, "x");
                  T* yp = checked<T>(y, shape, "y", true);
                  without_gil([&] { pick(kernels<T>())(x.size(), xp, T(values)..., yp); });
              });
          },
          py::arg("x"), py::arg(parameters)..., py::arg("y"), doc);
}

// Binds `name`(grad_y, input, parameters..., grad_x): the gradient of such a map from the
// forward's input x or its output y (`input` names which), by the kernel that `pick` takes from
// a kernel table, called as (n, grad_y, input, T(parameters)..., grad_x).
template <class Pick, class... Names>
void def_map_gradient(py::module_& m, const char* name, const char* input, Pick pick,
                      const char* doc, Names... parameters) {
    def_op(m, name,
          [pick, input](Array grad_y, Array a, Scalar<Names>... values, Array grad_x) {
              by_dtype(a.dtype(), [&](auto t) {
                  using T = decltype(t);
                  const auto shape = shape_of(a);
                  const T* gy = checked<T>(grad_y, shape, "grad_y");
                  const T* ap = checked<T>(a, shape, input);
                  T* gx = checked<T>(grad_x, shape, "grad_x", true);
                  without_gil([&] { pick(kernels<T>())(a.size(), gy, ap, T(values)..., gx); });
              });
          },
          py::arg("grad_y"), py::arg(input), py::arg(parameters)..., py::arg("grad_x"), doc);
}

// Binds `name`(a, b, y): y = f(a, b) elementwise by the kernel that `pick` takes from a kernel
// table, called as (n, a, b, y), with subnormals flushed (as every kernel) where `flush`.
template <class Pick>
void def_sum(py::module_& m, const char* name, Pick pick, bool flush, const char* doc) {
    def_op(m, name,
          [pick, flush](Array a, Array b, Array y) {
              by_dtype(a.dtype(), [&](auto t) {
                  using T = decltype(t);
                  const auto shape = shape_of(a);
                  const T* ap = checked<T>(a, shape, "a");
                  const T* bp = checked<T>(b, shape, "b");
                  T* yp = checked<T>(y, shape, "y", true);
                  auto call = [&] { pick(kernels<T>())(a.size(), ap, bp, yp); };
                  if (flush) return without_gil(call);
                  py::gil_scoped_release nogil;
                  call();
              });
          },
          py::arg("a"), py::arg("b"), py::arg("y"), doc);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
    m.doc() = "pyconv's C++ kernels (thread pool, run-time ISA dispatch)";

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
    // ---- GEMM cache blocking (gemm/blocking.h)
    m.def("cpu_caches",
          [](const std::optional<std::string>& cpu_dir, const std::optional<std::string>& override_spec) {
              if (!cpu_dir && !override_spec) return caches_to_dict(cpu_caches());
              bool ok = true;
              const CpuCaches c = detect_cpu_caches(cpu_dir ? cpu_dir->c_str() : "/sys/devices/system/cpu",
                                                    override_spec ? override_spec->c_str() : nullptr, &ok);
              if (!ok) throw py::value_error("cpu_caches: malformed override '" + *override_spec + "'");
              return caches_to_dict(c);
          },
          py::arg("cpu_dir") = py::none(), py::arg("override") = py::none(),
          "the CPU's caches (detected once), or detected afresh under cpu_dir with an override");
    m.def("model_gemm_blocking",
          [](const std::string& isa, const std::string& dtype, const py::dict& caches) {
              const GemmTileShape& t = gemm_tile_of(parse_isa(isa), dtype_size(dtype));
              const GemmBlocking b = model_gemm_blocking(caches_from_dict(caches), t.mr, t.nr, dtype_size(dtype));
              return py::make_tuple(b.kc, b.mc, b.nc);
          },
          py::arg("isa"), py::arg("dtype"), py::arg("caches"), "(kc, mc, nc) of the cache model");
    m.def("gemm_blocking",
          [](const std::string& isa, const std::string& dtype) {
              const int level = static_cast<int>(parse_isa(isa)), size = dtype_size(dtype);
              const GemmBlocking b = gemm_blocking(level, size);
              const GemmTileShape& t = gemm_tile_of(parse_isa(isa), size);
              py::dict d;
              d["kc"] = b.kc, d["mc"] = b.mc, d["nc"] = b.nc;
              d["source"] = gemm_blocking_source(level, size);
              d["mr"] = t.mr, d["nr"] = t.nr;
              d["compiled"] = py::make_tuple(t.kc, t.mc, t.nc);
              return d;
          },
          py::arg("isa"), py::arg("dtype"), "the packed GEMM's blocking now, and where it comes from");
    m.def("set_gemm_blocking",
          [](const std::string& isa, const std::string& dtype, int64_t kc, int64_t mc, int64_t nc,
             const std::string& source) {
              if (kc < 1 || mc < 1 || nc < 1)
                  throw py::value_error("set_gemm_blocking: kc, mc, nc must be >= 1");
              if (source != "tuned" && source != "set")
                  throw py::value_error("set_gemm_blocking: source must be 'tuned' or 'set'");
              const GemmBlocking b = set_gemm_blocking(static_cast<int>(parse_isa(isa)), dtype_size(dtype),
                                                       GemmBlocking{kc, mc, nc}, source == "tuned" ? "tuned" : "set");
              return py::make_tuple(b.kc, b.mc, b.nc);
          },
          py::arg("isa"), py::arg("dtype"), py::arg("kc"), py::arg("mc"), py::arg("nc"),
          py::arg("source") = "set", "run the GEMM with these blocks (rounded to whole panels)");
    m.def("reset_gemm_blocking", &reset_gemm_blocking,
          "back to the blocking of PYCONV_GEMM_BLOCKING, the cache model or the compile-time default");
    m.def("compiler", [] { return std::string("GCC ") + __VERSION__; });
    m.def("mxcsr", [] { return _mm_getcsr(); },
          "this thread's MXCSR (SSE control and status: FTZ is bit 15, DAZ bit 6)");
    m.def("worker_mxcsrs", &pool_idle_mxcsrs,
          "the MXCSR of each worker thread of the kernels' pool between jobs (none before the first job)");

    // ---- Pooling

    def_op(m, "max_pool2d",
          [](Array x, Array y, Optional indices, const PoolShape& g, bool relu) {
              by_dtype(x.dtype(), [&](auto t) {
                  using T = decltype(t);
                  check_pool_shape(g);
                  const T* xp = checked<T>(x, {g.N, g.C, g.H, g.W}, "x");
                  T* yp = checked<T>(y, {g.N, g.C, g.Ho, g.Wo}, "y", true);
                  int64_t* ip = checked_or_null<int64_t>(indices, {g.N, g.C, g.Ho, g.Wo}, "indices", true);
                  check_windows_inside(g);
                  without_gil([&] { kernels<T>().max_pool2d(g, xp, yp, ip, relu); });
              });
          },
          py::arg("x"), py::arg("y"), py::arg("indices"), py::arg("shape"), py::arg("relu") = false,
          "max pooling into y (and indices, unless None); shape: a PoolGeom; relu: then "
          "y = max(y, 0), NaN and -0 kept, in the same pass");
    def_op(m, "max_pool2d_backward",
          [](Array grad_out, Array indices, Array grad_x) {
              by_dtype(grad_out.dtype(), [&](auto t) {
                  using T = decltype(t);
                  if (grad_out.ndim() != 4 || grad_x.ndim() != 4)
                      throw py::value_error("max_pool2d_backward: grad_out and grad_x must be 4-D");
                  const int64_t N = grad_x.shape(0), C = grad_x.shape(1), H = grad_x.shape(2),
                                W = grad_x.shape(3), Ho = grad_out.shape(2), Wo = grad_out.shape(3);
                  const T* gy = checked<T>(grad_out, {N, C, Ho, Wo}, "grad_out");
                  const int64_t* ip = checked<int64_t>(indices, {N, C, Ho, Wo}, "indices");
                  T* gx = checked<T>(grad_x, {N, C, H, W}, "grad_x", true);
                  const int64_t skipped = without_gil(
                      [&] { return kernels<T>().max_pool2d_backward(N * C, Ho * Wo, H * W, gy, ip, gx); });
                  check_scatter(skipped, "max_pool2d_backward", "H*W");
              });
          },
          py::arg("grad_out"), py::arg("indices"), py::arg("grad_x"),
          "grad_x = zeros, then grad_x.flat-per-plane[indices] += grad_out");
    def_op(m, "max_unpool2d",
          [](Array x, Array indices, Array y) {
              by_dtype(x.dtype(), [&](auto t) {
                  using T = decltype(t);
                  if (x.ndim() != 4 || y.ndim() != 4)
                      throw py::value_error("max_unpool2d: x and y must be 4-D");
                  const int64_t N = x.shape(0), C = x.shape(1), Hi = x.shape(2), Wi = x.shape(3),
                                H = y.shape(2), W = y.shape(3);
                  const T* xp = checked<T>(x, {N, C, Hi, Wi}, "x");
                  const int64_t* ip = checked<int64_t>(indices, {N, C, Hi, Wi}, "indices");
                  T* yp = checked<T>(y, {N, C, H, W}, "y", true);
                  const int64_t skipped = without_gil(
                      [&] { return kernels<T>().max_unpool2d(N * C, Hi * Wi, H * W, xp, ip, yp); });
                  check_scatter(skipped, "max_unpool2d", "H*W");
              });
          },
          py::arg("x"), py::arg("indices"), py::arg("y"),
          "y = zeros, then y.flat-per-plane[indices] = x (the last repeated index wins)");
    def_op(m, "avg_pool2d",
          [](Array x, Array y, bool count_include_pad, int64_t divisor, const PoolShape& g) {
              by_dtype(x.dtype(), [&](auto t) {
                  using T = decltype(t);
                  check_avg_shape(g);
                  const T* xp = checked<T>(x, {g.N, g.C, g.H, g.W}, "x");
                  T* yp = checked<T>(y, {g.N, g.C, g.Ho, g.Wo}, "y", true);
                  without_gil([&] { kernels<T>().avg_pool2d(g, count_include_pad, divisor, xp, yp); });
              });
          },
          py::arg("x"), py::arg("y"), py::arg("count_include_pad"), py::arg("divisor_override"),
          py::arg("shape"), "average pooling into y (divisor_override 0 = none); shape: a PoolGeom");
    def_op(m, "avg_pool2d_backward",
          [](Array grad_out, Array grad_x, bool count_include_pad, int64_t divisor,
             const PoolShape& g) {
              by_dtype(grad_out.dtype(), [&](auto t) {
                  using T = decltype(t);
                  check_avg_shape(g);
                  const T* gy = checked<T>(grad_out, {g.N, g.C, g.Ho, g.Wo}, "grad_out");
                  T* gx = checked<T>(grad_x, {g.N, g.C, g.H, g.W}, "grad_x", true);
                  without_gil([&] {
                      kernels<T>().avg_pool2d_backward(g, count_include_pad, divisor, gy, gx);
                  });
              });
          },
          py::arg("grad_out"), py::arg("grad_x"), py::arg("count_include_pad"),
          py::arg("divisor_override"), py::arg("shape"),
          "gradient of average pooling; shape: a PoolGeom");

    // ---- LSTM

    def_op(m, "lstm",
          [](Array x, Array h0, Array c0, Array w_ih, Array w_hh, Optional b_ih, Optional b_hh,
             Array out, Optional h_T, Array c_T, Optional saved_gates, Optional saved_cells) {
              by_dtype(x.dtype(), [&](auto t) {
                  using T = decltype(t);
                  const LstmShape s = lstm_shape(x, h0);
                  const T* xp = checked<T>(x, {s.T, s.B, s.I}, "x");
                  const T* hp = checked<T>(h0, {s.B, s.H}, "h0");
                  const T* cp = checked<T>(c0, {s.B, s.H}, "c0");
                  const LstmWeights<T> w = lstm_weights<T>(s, w_ih, w_hh, b_ih, b_hh);
                  T* op = checked<T>(out, {s.T, s.B, s.H}, "out", true);
                  T* hT = checked_or_null<T>(h_T, {s.B, s.H}, "h_T", true);
                  T* cT = checked<T>(c_T, {s.B, s.H}, "c_T", true);
                  if (std::min({s.T, s.B, s.I, s.H}) < 1) throw py::value_error("lstm: empty input");
                  T* sg = checked_or_null<T>(saved_gates,
                                             {s.T, s.B, kernels<T>().lstm_gate_columns(s.H)},
                                             "saved_gates", true);
                  T* sc = checked_or_null<T>(saved_cells, {s.T, s.B, s.H}, "saved_cells", true);
                  if (!sg != !sc)
                      throw py::value_error("lstm: pass both saved_gates and saved_cells, or neither");
                  without_gil([&] { kernels<T>().lstm(s, xp, hp, cp, w, op, hT, cT, sg, sc); });
              });
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
              return by_dtype(dtype, [&](auto t) {
                  return kernels<decltype(t)>().lstm_gate_columns(H);
              });
          },
          py::arg("H"), py::arg("dtype"),
          "width of lstm's saved gate rows for H hidden units (the kernels' padded gate layout)");
    def_op(m, "lstm_backward",
          [](Array x, Optional grad_out, Optional grad_hT, Optional grad_cT, Array h0, Array c0,
             Array w_ih, Array w_hh, Optional b_ih, Optional b_hh, Array grad_x, Array grad_h0,
             Array grad_c0, Array grad_w_ih, Array grad_w_hh, Optional grad_b,
             Optional saved_gates, Optional saved_hs, Optional saved_cs, bool overwrite_saved_gates) {
              by_dtype(x.dtype(), [&](auto t) {
                  using T = decltype(t);
                  const LstmShape s = lstm_shape(x, h0);
                  const std::vector<int64_t> bh{s.B, s.H};
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
                  T* gb = checked_or_null<T>(grad_b, {4 * s.H}, "grad_b", true);
                  if (std::min({s.T, s.B, s.I, s.H}) < 1)
                      throw py::value_error("lstm_backward: empty input");
                  const std::vector<int64_t> states{s.T + 1, s.B, s.H};
                  if (overwrite_saved_gates && saved_gates.is_none())
                      throw py::value_error("lstm_backward: overwrite_saved_gates needs saved_gates");
                  T* sg = checked_or_null<T>(saved_gates, {s.T, s.B, kernels<T>().lstm_gate_columns(s.H)},
                                             "saved_gates", overwrite_saved_gates);
                  const T* sh = checked_or_null<T>(saved_hs, states, "saved_hs");
                  const T* sc = checked_or_null<T>(saved_cs, states, "saved_cs");
                  if (!sg != !sh || !sg != !sc)
                      throw py::value_error(
                          "lstm_backward: pass all of saved_gates, saved_hs and saved_cs, or none");
                  without_gil([&] {
                      kernels<T>().lstm_backward(s, gop, ghT, gcT, xp, hp, cp, w, gx, gh0, gc0, gwi,
                                                 gwh, gb, sg, sh, sc, overwrite_saved_gates ? sg : nullptr);
                  });
              });
          },
          py::arg("x"), py::arg("grad_out"), py::arg("grad_hT"), py::arg("grad_cT"),
          py::arg("h0"), py::arg("c0"), py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih"),
          py::arg("b_hh"), py::arg("grad_x"), py::arg("grad_h0"), py::arg("grad_c0"),
          py::arg("grad_w_ih"), py::arg("grad_w_hh"), py::arg("grad_b"),
          py::arg("saved_gates") = py::none(), py::arg("saved_hs") = py::none(),
          py::arg("saved_cs") = py::none(), py::arg("overwrite_saved_gates") = false,
          "backpropagation through time of lstm (grad_* outputs written in place), from the "
          "saved forward (gates as lstm saved them, hs and cs (T+1,B,H) = h_0..h_T, c_0..c_T) "
          "or, when they are None, running the forward again; overwrite_saved_gates: the last "
          "use of the saved forward, whose gates then hold the gate gradients afterwards");

    // ---- Boxes

    def_op(m, "box_iou",
          [](Array boxes1, Array boxes2, Array out) {
              by_dtype(boxes1.dtype(), [&](auto t) {
                  using T = decltype(t);
                  const int64_t n = rows_of_boxes(boxes1, "boxes1"), m = rows_of_boxes(boxes2, "boxes2");
                  const T* ap = checked<T>(boxes1, {n, 4}, "boxes1");
                  const T* bp = checked<T>(boxes2, {m, 4}, "boxes2");
                  T* op = checked<T>(out, {n, m}, "out", true);
                  without_gil([&] { kernels<T>().box_iou(ap, n, bp, m, op); });
              });
          },
          py::arg("boxes1"), py::arg("boxes2"), py::arg("out"), "pairwise IoU into out (N, M)");
    def_op(m, "nms",
          [](Array boxes, Array scores, Optional idxs, double iou_threshold, Array keep) {
              return by_dtype(boxes.dtype(), [&](auto t) {
                  using T = decltype(t);
                  const int64_t n = rows_of_boxes(boxes, "boxes");
                  if (n > int64_t(std::numeric_limits<int32_t>::max()))
                      throw py::value_error("nms: at most 2**31 - 1 boxes");
                  if (std::isnan(iou_threshold)) throw py::value_error("nms: iou_threshold is NaN");
                  const T* bp = checked<T>(boxes, {n, 4}, "boxes");
                  const T* sp = checked<T>(scores, {n}, "scores");
                  const int64_t* cat = checked_or_null<int64_t>(idxs, {n}, "idxs");
                  int64_t* kp = checked<int64_t>(keep, {n}, "keep", true);
                  return without_gil([&] { return kernels<T>().nms(bp, sp, cat, n, iou_threshold, kp); });
              });
          },
          py::arg("boxes"), py::arg("scores"), py::arg("idxs"), py::arg("iou_threshold"),
          py::arg("keep"),
          "greedy NMS (per category when idxs is not None); writes the kept indices to keep "
          "and returns their count");
    def_op(m, "soft_nms",
          [](Array boxes, Array scores, double sigma, double iou_threshold,
             double score_threshold, bool gaussian, Array keep, Array kept_scores) {
              return by_dtype(boxes.dtype(), [&](auto t) {
                  using T = decltype(t);
                  const int64_t n = rows_of_boxes(boxes, "boxes");
                  if (n > int64_t(std::numeric_limits<int32_t>::max()))
                      throw py::value_error("soft_nms: at most 2**31 - 1 boxes");
                  for (double v : {iou_threshold, score_threshold})
                      if (!std::isfinite(v)) throw py::value_error("soft_nms: thresholds must be finite");
                  if (!(sigma > 0) || !std::isfinite(sigma)) throw py::value_error("soft_nms: sigma must be > 0");
                  const T* bp = checked<T>(boxes, {n, 4}, "boxes");
                  const T* sp = checked<T>(scores, {n}, "scores");
                  int64_t* kp = checked<int64_t>(keep, {n}, "keep", true);
                  T* ksp = checked<T>(kept_scores, {n}, "kept_scores", true);
                  return without_gil([&] {
                      return kernels<T>().soft_nms(bp, sp, n, sigma, iou_threshold, score_threshold,
                                                   gaussian, kp, ksp);
                  });
              });
          },
          py::arg("boxes"), py::arg("scores"), py::arg("sigma"), py::arg("iou_threshold"),
          py::arg("score_threshold"), py::arg("gaussian"), py::arg("keep"), py::arg("kept_scores"),
          "soft-NMS; writes the picked indices and their scores and returns their count");
    def_op(m, "diou_nms",
          [](Array boxes, Array scores, double iou_threshold, Array keep) {
              return by_dtype(boxes.dtype(), [&](auto t) {
                  using T = decltype(t);
                  const int64_t n = rows_of_boxes(boxes, "boxes");
                  if (n > int64_t(std::numeric_limits<int32_t>::max()))
                      throw py::value_error("diou_nms: at most 2**31 - 1 boxes");
                  if (std::isnan(iou_threshold)) throw py::value_error("diou_nms: iou_threshold is NaN");
                  const T* bp = checked<T>(boxes, {n, 4}, "boxes");
                  const T* sp = checked<T>(scores, {n}, "scores");
                  int64_t* kp = checked<int64_t>(keep, {n}, "keep", true);
                  return without_gil([&] { return kernels<T>().diou_nms(bp, sp, n, iou_threshold, kp); });
              });
          },
          py::arg("boxes"), py::arg("scores"), py::arg("iou_threshold"), py::arg("keep"),
          "greedy DIoU-NMS; writes the kept indices to keep and returns their count");
    def_op(m, "matrix_nms",
          [](Array boxes, Array scores, Array labels, bool gaussian, double sigma, Array out) {
              by_dtype(boxes.dtype(), [&](auto t) {
                  using T = decltype(t);
                  const int64_t n = rows_of_boxes(boxes, "boxes");
                  if (n > int64_t(std::numeric_limits<int32_t>::max()))
                      throw py::value_error("matrix_nms: at most 2**31 - 1 boxes");
                  if (!(sigma > 0) || !std::isfinite(sigma)) throw py::value_error("matrix_nms: sigma must be > 0");
                  const T* bp = checked<T>(boxes, {n, 4}, "boxes");
                  const T* sp = checked<T>(scores, {n}, "scores");
                  const int64_t* lp = checked<int64_t>(labels, {n}, "labels");
                  T* op = checked<T>(out, {n}, "out", true);
                  without_gil([&] { kernels<T>().matrix_nms(bp, sp, lp, n, gaussian, sigma, op); });
              });
          },
          py::arg("boxes"), py::arg("scores"), py::arg("labels"), py::arg("gaussian"), py::arg("sigma"),
          py::arg("out"), "Matrix NMS: every box's decayed score into out (N,)");

    // ---- Convolution and GEMM

    py::class_<Conv2dFilters>(m, "Conv2dFilters",
                              "a convolution's filters transformed once (conv2d_prepare), for conv2d's filters=")
        .def_property_readonly("kept", [](const Conv2dFilters& f) { return f.prepared != nullptr; },
                               "whether the shape's algorithm keeps anything (else every call works from w)");
    def_op(m, "conv2d",
          [](Array x, Array w, Optional b, Array y, const ConvShape& g, Optional residual, bool relu,
             const py::object& filters) {
              const PreparedFilters* prepared = prepared_for("conv2d", filters, w);
              by_dtype(x.dtype(), [&](auto t) {
                  using T = decltype(t);
                  check_conv_shape(g);
                  const T* xp = checked<T>(x, input_dims(g), "x");
                  const T* wp = checked<T>(w, weight_dims(g), "w");
                  const T* bp = checked_or_null<T>(b, {g.K}, "b");
                  T* yp = checked<T>(y, output_dims(g), "y", true);
                  const T* rp = checked_or_null<T>(residual, output_dims(g), "residual");
                  without_gil([&] { kernels<T>().conv2d(g, xp, wp, bp, yp, rp, relu, prepared); });
              });
          },
          py::arg("x"), py::arg("w"), py::arg("b"), py::arg("y"), py::arg("shape"),
          py::arg("residual") = py::none(), py::arg("relu") = false, py::arg("filters") = py::none(),
          "convolution into y; shape: a ConvGeom; then + residual (of y's shape) unless None, "
          "then relu if asked. filters: conv2d_prepare(w, ...)'s result, or None; w must not "
          "have changed since");
    // w's filters as the kernel that pick(kernels<T>()) names prepares them.
    auto prepare_with = [](Array w, const ConvShape& g, auto pick) {
        return by_dtype(w.dtype(), [&](auto t) {
            using T = decltype(t);
            check_conv_shape(g);
            const T* wp = checked<T>(w, weight_dims(g), "w");
            Conv2dFilters f{nullptr, w};
            without_gil([&] { f.prepared = pick(kernels<T>())(g, wp); });
            return f;
        });
    };
    def_op(m, "conv2d_prepare",
          [prepare_with](Array w, const ConvShape& g) {
              return prepare_with(w, g, [](const auto& k) { return k.conv2d_prepare; });
          },
          py::arg("w"), py::arg("shape"),
          "w's filters as conv2d transforms or packs them for shape (a ConvGeom), once, for later "
          "conv2d(..., filters=) calls with this same w, unchanged (they hold nothing where the "
          "shape's algorithm keeps nothing); under another ISA conv2d recomputes them");
    def_op(m, "conv2d_algorithm",
          [](const ConvShape& g, py::dtype dtype, bool prepared) {
              return by_dtype(dtype, [&](auto t) {
                  using T = decltype(t);
                  check_conv_shape(g);
                  return std::string(kernels<T>().conv2d_algorithm(g, prepared));
              });
          },
          py::arg("shape"), py::arg("dtype"), py::arg("prepared") = false,
          "the name of the algorithm conv2d runs for shape, given filters from conv2d_prepare "
          "(prepared=True) or not");
    def_op(m, "conv2d_grad_input",
          [](Array grad_y, Array w, Array grad_x, const ConvShape& g, const py::object& filters, Optional bias,
             bool relu) {
              const PreparedFilters* prepared = prepared_for("conv2d_grad_input", filters, w);
              by_dtype(grad_y.dtype(), [&](auto t) {
                  using T = decltype(t);
                  check_conv_shape(g);
                  const T* gy = checked<T>(grad_y, output_dims(g), "grad_y");
                  const T* wp = checked<T>(w, weight_dims(g), "w");
                  T* gx = checked<T>(grad_x, input_dims(g), "grad_x", true);
                  const T* bp = checked_or_null<T>(bias, {g.C}, "bias");
                  without_gil([&] { kernels<T>().conv2d_grad_input(g, gy, wp, gx, bp, relu, prepared); });
              });
          },
          py::arg("grad_y"), py::arg("w"), py::arg("grad_x"), py::arg("shape"), py::arg("filters") = py::none(),
          py::arg("bias") = py::none(), py::arg("relu") = false,
          "input gradient (= transpose convolution) into grad_x; shape: a ConvGeom. filters: "
          "conv2d_grad_input_prepare(w, ...)'s result, or None; w must not have changed since. "
          "Then, as a transposed convolution: + bias (C,) per channel of grad_x unless None, then "
          "relu if asked");
    def_op(m, "conv2d_grad_input_prepare",
          [prepare_with](Array w, const ConvShape& g) {
              return prepare_with(w, g, [](const auto& k) { return k.conv2d_grad_input_prepare; });
          },
          py::arg("w"), py::arg("shape"),
          "w's filters as conv2d_grad_input packs them for shape (a ConvGeom), once, for later "
          "conv2d_grad_input(..., filters=) calls with this same w, unchanged (they hold nothing "
          "where the shape's algorithm keeps nothing)");
    def_op(m, "conv2d_grad_weight",
          [](Array grad_y, Array x, Array grad_w, const ConvShape& g) {
              by_dtype(grad_y.dtype(), [&](auto t) {
                  using T = decltype(t);
                  check_conv_shape(g);
                  const T* gy = checked<T>(grad_y, output_dims(g), "grad_y");
                  const T* xp = checked<T>(x, input_dims(g), "x");
                  T* gw = checked<T>(grad_w, weight_dims(g), "grad_w", true);
                  without_gil([&] { kernels<T>().conv2d_grad_weight(g, gy, xp, gw); });
              });
          },
          py::arg("grad_y"), py::arg("x"), py::arg("grad_w"), py::arg("shape"),
          "weight gradient into grad_w; shape: a ConvGeom");
    def_op(m, "conv2d_grad_bias",
          [](Array grad_y, Array grad_b) {
              by_dtype(grad_y.dtype(), [&](auto t) {
                  using T = decltype(t);
                  if (grad_y.ndim() != 4) throw py::value_error("grad_y: expected a 4-D array");
                  const int64_t N = grad_y.shape(0), K = grad_y.shape(1);
                  const int64_t plane = grad_y.shape(2) * grad_y.shape(3);
                  const T* gy = checked<T>(grad_y, {N, K, grad_y.shape(2), grad_y.shape(3)}, "grad_y");
                  T* gb = checked<T>(grad_b, {K}, "grad_b", true);
                  without_gil([&] { kernels<T>().conv2d_grad_bias(N, K, plane, gy, gb); });
              });
          },
          py::arg("grad_y"), py::arg("grad_b"), "bias gradient: grad_b[k] = grad_y[:, k].sum()");
    def_op(m, "gemm",
          [](Array a, Array b, Array c, bool accumulate) {
              by_dtype(a.dtype(), [&](auto t) {
                  using T = decltype(t);
                  if (a.ndim() != 2 || b.ndim() != 2) throw py::value_error("gemm: a and b must be 2-D");
                  const int64_t M = a.shape(0), K = a.shape(1), N = b.shape(1);
                  const T* ap = checked<T>(a, {M, K}, "a");
                  const T* bp = checked<T>(b, {K, N}, "b");
                  T* cp = checked<T>(c, {M, N}, "c", true);
                  without_gil([&] { kernels<T>().gemm(M, N, K, ap, bp, cp, accumulate); });
              });
          },
          py::arg("a"), py::arg("b"), py::arg("c"), py::arg("accumulate") = false,
          "packed GEMM: c = a @ b (or c += a @ b); row-major, C-contiguous");
    def_op(m, "matmul",
          [](Array a, bool trans_a, Array b, bool trans_b, Array c, bool accumulate) {
              by_dtype(a.dtype(), [&](auto t) {
                  using T = decltype(t);
                  if (a.ndim() != 2 || b.ndim() != 2) throw py::value_error("matmul: a and b must be 2-D");
                  const int64_t M = trans_a ? a.shape(1) : a.shape(0), K = trans_a ? a.shape(0) : a.shape(1);
                  const int64_t N = trans_b ? b.shape(0) : b.shape(1);
                  const T* ap = checked<T>(a, {a.shape(0), a.shape(1)}, "a");
                  const T* bp = checked<T>(b, trans_b ? std::vector<int64_t>{N, K} : std::vector<int64_t>{K, N}, "b");
                  T* cp = checked<T>(c, {M, N}, "c", true);
                  without_gil([&] { kernels<T>().matmul(M, N, K, ap, trans_a, bp, trans_b, cp, accumulate); });
              });
          },
          py::arg("a"), py::arg("trans_a"), py::arg("b"), py::arg("trans_b"), py::arg("c"),
          py::arg("accumulate") = false,
          "c = op(a) @ op(b) (or c += ...), op(x) = x.T where trans_x; C-contiguous operands");
    def_op(m, "rnn_cell",
          [](Array x, Array h, Array w_ih, Array w_hh, Optional b_ih, Optional b_hh, bool tanh, Array y) {
              by_dtype(x.dtype(), [&](auto t) {
                  using T = decltype(t);
                  if (x.ndim() != 2 || w_ih.ndim() != 2) throw py::value_error("rnn_cell: x and w_ih must be 2-D");
                  const int64_t B = x.shape(0), I = x.shape(1), H = w_ih.shape(0);
                  const T* xp = checked<T>(x, {B, I}, "x");
                  const T* hp = checked<T>(h, {B, H}, "h");
                  const T* wi = checked<T>(w_ih, {H, I}, "w_ih");
                  const T* wh = checked<T>(w_hh, {H, H}, "w_hh");
                  const T* bi = checked_or_null<T>(b_ih, {H}, "b_ih");
                  const T* bh = checked_or_null<T>(b_hh, {H}, "b_hh");
                  T* yp = checked<T>(y, {B, H}, "y", true);
                  if (std::min({B, I, H}) < 1) throw py::value_error("rnn_cell: empty input");
                  without_gil([&] { kernels<T>().rnn_cell(B, I, H, xp, hp, wi, wh, bi, bh, tanh, yp); });
              });
          },
          py::arg("x"), py::arg("h"), py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"),
          py::arg("tanh"), py::arg("y"),
          "one Elman RNN step into y (B,H): act(x w_ih^T + b_ih + h w_hh^T + b_hh), act tanh "
          "(else relu)");
    def_op(m, "rnn_cell_backward",
          [](Array grad_y, Array x, Array h, Array y, Array w_ih, Array w_hh, bool tanh, Array grad_x,
             Array grad_h, Array grad_w_ih, Array grad_w_hh, Optional grad_b) {
              by_dtype(x.dtype(), [&](auto t) {
                  using T = decltype(t);
                  if (x.ndim() != 2 || w_ih.ndim() != 2) throw py::value_error("rnn_cell_backward: x and w_ih must be 2-D");
                  const int64_t B = x.shape(0), I = x.shape(1), H = w_ih.shape(0);
                  const T* gy = checked<T>(grad_y, {B, H}, "grad_y");
                  const T* xp = checked<T>(x, {B, I}, "x");
                  const T* hp = checked<T>(h, {B, H}, "h");
                  const T* yp = checked<T>(y, {B, H}, "y");
                  const T* wi = checked<T>(w_ih, {H, I}, "w_ih");
                  const T* wh = checked<T>(w_hh, {H, H}, "w_hh");
                  T* gx = checked<T>(grad_x, {B, I}, "grad_x", true);
                  T* gh = checked<T>(grad_h, {B, H}, "grad_h", true);
                  T* gwi = checked<T>(grad_w_ih, {H, I}, "grad_w_ih", true);
                  T* gwh = checked<T>(grad_w_hh, {H, H}, "grad_w_hh", true);
                  T* gb = checked_or_null<T>(grad_b, {H}, "grad_b", true);
                  if (std::min({B, I, H}) < 1) throw py::value_error("rnn_cell_backward: empty input");
                  without_gil([&] {
                      kernels<T>().rnn_cell_backward(B, I, H, gy, xp, hp, yp, wi, wh, tanh, gx, gh, gwi, gwh, gb);
                  });
              });
          },
          py::arg("grad_y"), py::arg("x"), py::arg("h"), py::arg("y"), py::arg("w_ih"), py::arg("w_hh"),
          py::arg("tanh"), py::arg("grad_x"), py::arg("grad_h"), py::arg("grad_w_ih"), py::arg("grad_w_hh"),
          py::arg("grad_b"),
          "gradients of rnn_cell given grad_y and its output y (grad_* written in place; grad_b "
          "None when not wanted)");
    def_op(m, "batch_norm_forward",
          [](Array x, py::object w, py::object b, double eps, Array y, Array mean, Array var, int activation,
             double negative_slope) {
              const NormActivation act = norm_activation(activation, negative_slope);
              by_dtype(x.dtype(), [&](auto t) {
                  using T = decltype(t);
                  if (x.ndim() < 2) throw py::value_error("x: expected (N, C, ...)");
                  const std::vector<int64_t> shape(x.shape(), x.shape() + x.ndim());
                  const int64_t N = shape[0], C = shape[1];
                  int64_t L = 1;
                  for (size_t i = 2; i < shape.size(); ++i) L *= shape[i];
                  const T* xp = checked<T>(x, shape, "x");
                  const T* wp = checked_or_null<T>(w, {C}, "w");
                  const T* bp = checked_or_null<T>(b, {C}, "b");
                  T* yp = checked<T>(y, shape, "y", true);
                  T* mp = checked<T>(mean, {C}, "mean", true);
                  T* vp = checked<T>(var, {C}, "var", true);
                  if (N * L < 1) throw py::value_error("x: needs at least one value per channel");
                  without_gil([&] {
                      kernels<T>().batch_norm_forward(N, C, L, xp, wp, bp, eps, act, T(negative_slope), yp, mp, vp);
                  });
              });
          },
          py::arg("x"), py::arg("w"), py::arg("b"), py::arg("eps"), py::arg("y"), py::arg("mean"),
          py::arg("var"), py::arg("activation") = 0, py::arg("negative_slope") = 0.0,
          "batch normalisation with batch statistics; mean and var (biased) out; activation: 0 none, "
          "1 relu, 2 leaky_relu (negative_slope >= 0) applied to y as it is stored");
    def_op(m, "batch_norm_backward",
          [](Array grad_y, Array x, Array mean, Array invstd, py::object w, Array grad_x,
             Array grad_w, Array grad_b, py::object y, int activation, double negative_slope) {
              const NormActivation act = norm_activation(activation, negative_slope);
              by_dtype(x.dtype(), [&](auto t) {
                  using T = decltype(t);
                  if (x.ndim() < 2) throw py::value_error("x: expected (N, C, ...)");
                  const std::vector<int64_t> shape(x.shape(), x.shape() + x.ndim());
                  const int64_t N = shape[0], C = shape[1];
                  int64_t L = 1;
                  for (size_t i = 2; i < shape.size(); ++i) L *= shape[i];
                  const T* gy = checked<T>(grad_y, shape, "grad_y");
                  const T* xp = checked<T>(x, shape, "x");
                  const T* mp = checked<T>(mean, {C}, "mean");
                  const T* ip = checked<T>(invstd, {C}, "invstd");
                  const T* wp = checked_or_null<T>(w, {C}, "w");
                  const T* yp = checked_or_null<T>(y, shape, "y");
                  if (act != NormActivation::none && yp == nullptr)
                      throw py::value_error("y: the forward's output is needed for its activation's gradient");
                  T* gx = checked<T>(grad_x, shape, "grad_x", true);
                  T* gw = checked<T>(grad_w, {C}, "grad_w", true);
                  T* gb = checked<T>(grad_b, {C}, "grad_b", true);
                  if (N * L < 1) throw py::value_error("x: needs at least one value per channel");
                  without_gil([&] {
                      kernels<T>().batch_norm_backward(N, C, L, gy, xp, mp, ip, wp, act, T(negative_slope), yp, gx,
                                                       gw, gb);
                  });
              });
          },
          py::arg("grad_y"), py::arg("x"), py::arg("mean"), py::arg("invstd"), py::arg("w"),
          py::arg("grad_x"), py::arg("grad_w"), py::arg("grad_b"), py::arg("y") = py::none(),
          py::arg("activation") = 0, py::arg("negative_slope") = 0.0,
          "gradients of batch_norm_forward (training) into grad_x, grad_w, grad_b; with an activation, "
          "grad_y is its output's gradient and y the forward's output");

    // ---- Softmax and losses over rows (M, C) ---------------------------------------------------
    for (const bool log : {false, true}) {
        def_op(m, log ? "log_softmax" : "softmax",
              [log](Array x, Array y) {
                  by_dtype(x.dtype(), [&](auto t) {
                      using T = decltype(t);
                      const auto shape = rows_of(x, "x");
                      const T* xp = checked<T>(x, shape, "x");
                      T* yp = checked<T>(y, shape, "y", true);
                      without_gil([&] { kernels<T>().softmax_forward(shape[0], shape[1], xp, log, yp); });
                  });
              },
              py::arg("x"), py::arg("y"), "softmax (log_softmax) over each row of x (M, C) into y");
        def_op(m, log ? "log_softmax_backward" : "softmax_backward",
              [log](Array grad_y, Array y, Array grad_x) {
                  by_dtype(y.dtype(), [&](auto t) {
                      using T = decltype(t);
                      const auto shape = rows_of(y, "y");
                      const T* gy = checked<T>(grad_y, shape, "grad_y");
                      const T* yp = checked<T>(y, shape, "y");
                      T* gx = checked<T>(grad_x, shape, "grad_x", true);
                      without_gil([&] {
                          kernels<T>().softmax_backward(shape[0], shape[1], gy, yp, log, gx);
                      });
                  });
              },
              py::arg("grad_y"), py::arg("y"), py::arg("grad_x"),
              "gradient of softmax (log_softmax) given its output y, into grad_x");
    }
    def_op(m, "cross_entropy",
          [](Array x, Array target, Optional weight, int64_t ignore_index, double label_smoothing,
             Array loss, Array lse) {
              by_dtype(x.dtype(), [&](auto t) {
                  using T = decltype(t);
                  const auto [N, C, P] = class_rows_of(x);
                  const int64_t M = N * P;
                  const T* xp = checked<T>(x, shape_of(x), "x");
                  const int64_t* tp = checked_targets(target, M, C, ignore_index);
                  const T* wp = checked_or_null<T>(weight, {C}, "weight");
                  T* lp = checked<T>(loss, {M}, "loss", true);
                  T* sp = checked<T>(lse, {M}, "lse", true);
                  without_gil([&] {
                      kernels<T>().cross_entropy_forward(N, C, P, xp, tp, wp, ignore_index,
                                                         label_smoothing, lp, sp);
                  });
              });
          },
          py::arg("x"), py::arg("target"), py::arg("weight"), py::arg("ignore_index"),
          py::arg("label_smoothing"), py::arg("loss"), py::arg("lse"),
          "per-row cross-entropy of x (M, C), or (N, C, P) with rows (n, p), against target (M,) "
          "(M = N P) into loss, log-sum-exp into lse");
    def_op(m, "cross_entropy_backward",
          [](Array grad_loss, Array x, Array target, Optional weight, Array lse,
             int64_t ignore_index, double label_smoothing, Array grad_x) {
              by_dtype(x.dtype(), [&](auto t) {
                  using T = decltype(t);
                  const auto [N, C, P] = class_rows_of(x);
                  const int64_t M = N * P;
                  const T* gl = checked<T>(grad_loss, {M}, "grad_loss");
                  const T* xp = checked<T>(x, shape_of(x), "x");
                  const int64_t* tp = checked_targets(target, M, C, ignore_index);
                  const T* wp = checked_or_null<T>(weight, {C}, "weight");
                  const T* sp = checked<T>(lse, {M}, "lse");
                  T* gx = checked<T>(grad_x, shape_of(x), "grad_x", true);
                  without_gil([&] {
                      kernels<T>().cross_entropy_backward(N, C, P, gl, xp, tp, wp, sp, ignore_index,
                                                          label_smoothing, gx);
                  });
              });
          },
          py::arg("grad_loss"), py::arg("x"), py::arg("target"), py::arg("weight"), py::arg("lse"),
          py::arg("ignore_index"), py::arg("label_smoothing"), py::arg("grad_x"),
          "gradient of cross_entropy with respect to x, into grad_x");
    def_op(m, "binary_cross_entropy_with_logits",
          [](Array x, Array target, Optional pos_weight, Array loss) {
              by_dtype(x.dtype(), [&](auto t) {
                  using T = decltype(t);
                  const auto shape = rows_of(x, "x");
                  const T* xp = checked<T>(x, shape, "x");
                  const T* tp = checked<T>(target, shape, "target");
                  const T* pw = checked_or_null<T>(pos_weight, {shape[1]}, "pos_weight");
                  T* lp = checked<T>(loss, shape, "loss", true);
                  without_gil([&] {
                      kernels<T>().bce_with_logits_forward(shape[0], shape[1], xp, tp, pw, lp);
                  });
              });
          },
          py::arg("x"), py::arg("target"), py::arg("pos_weight"), py::arg("loss"),
          "element-wise binary cross-entropy of logits x (M, C) into loss");
    def_op(m, "binary_cross_entropy_with_logits_backward",
          [](Array grad_y, Array x, Array target, Optional pos_weight, Array grad_x) {
              by_dtype(x.dtype(), [&](auto t) {
                  using T = decltype(t);
                  const auto shape = rows_of(x, "x");
                  const T* gy = checked<T>(grad_y, shape, "grad_y");
                  const T* xp = checked<T>(x, shape, "x");
                  const T* tp = checked<T>(target, shape, "target");
                  const T* pw = checked_or_null<T>(pos_weight, {shape[1]}, "pos_weight");
                  T* gx = checked<T>(grad_x, shape, "grad_x", true);
                  without_gil([&] {
                      kernels<T>().bce_with_logits_backward(shape[0], shape[1], gy, xp, tp, pw, gx);
                  });
              });
          },
          py::arg("grad_y"), py::arg("x"), py::arg("target"), py::arg("pos_weight"),
          py::arg("grad_x"), "gradient of binary_cross_entropy_with_logits, into grad_x");

    // ---- Optimiser steps over lists of tensors, in place -------------------------------------
    def_op(m, "sgd_step",
          [](const py::list& params, const py::list& grads, Optional momentum_buffers, double lr,
             double momentum, double dampening, bool nesterov, double weight_decay,
             bool first_step) {
              for_parameters(params, [&](auto t, const auto& shapes, const auto& sizes) {
                  using T = decltype(t);
                  const auto p = checked_list<T>(params, shapes, "params", true);
                  const auto g = checked_list<T>(grads, shapes, "grads");
                  std::vector<T*> b;
                  if (momentum != 0) {
                      if (momentum_buffers.is_none())
                          throw py::value_error("momentum_buffers: needed with a momentum");
                      b = checked_list<T>(momentum_buffers.cast<py::list>(), shapes,
                                          "momentum_buffers", true);
                  }
                  without_gil([&] {
                      kernels<T>().sgd_step(int64_t(shapes.size()), sizes.data(), p.data(),
                                            const_cast<const T* const*>(g.data()),
                                            b.empty() ? nullptr : b.data(), lr, momentum,
                                            dampening, nesterov, weight_decay, first_step);
                  });
              });
          },
          py::arg("params"), py::arg("grads"), py::arg("momentum_buffers"), py::arg("lr"),
          py::arg("momentum"), py::arg("dampening"), py::arg("nesterov"), py::arg("weight_decay"),
          py::arg("first_step"), "one SGD step over lists of arrays, in place");
    def_op(m, "adam_step",
          [](const py::list& params, const py::list& grads, const py::list& exp_avgs,
             const py::list& exp_avg_sqs, int64_t step, double lr, double beta1, double beta2,
             double eps, double weight_decay, bool decoupled_weight_decay) {
              for_parameters(params, [&](auto t, const auto& shapes, const auto& sizes) {
                  using T = decltype(t);
                  const auto p = checked_list<T>(params, shapes, "params", true);
                  const auto g = checked_list<T>(grads, shapes, "grads");
                  const auto m1 = checked_list<T>(exp_avgs, shapes, "exp_avgs", true);
                  const auto m2 = checked_list<T>(exp_avg_sqs, shapes, "exp_avg_sqs", true);
                  without_gil([&] {
                      kernels<T>().adam_step(int64_t(shapes.size()), sizes.data(), p.data(),
                                             const_cast<const T* const*>(g.data()), m1.data(),
                                             m2.data(), step, lr, beta1, beta2, eps, weight_decay,
                                             decoupled_weight_decay);
                  });
              });
          },
          py::arg("params"), py::arg("grads"), py::arg("exp_avgs"), py::arg("exp_avg_sqs"),
          py::arg("step"), py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
          py::arg("weight_decay"), py::arg("decoupled_weight_decay"),
          "one Adam (AdamW) step over lists of arrays, in place");

    // ---- Elementwise (elementwise/activation.h) ------------------------------------------------
    def_map(m, "relu", [](const auto& k) { return k.relu; }, "y = max(x, 0), NaN and -0 kept");
    def_sum(m, "add_relu", [](const auto& k) { return k.add_relu; }, true,
            "y = max(a + b, 0) (relu's NaN and -0 rules), in one pass; y may be a or b");
    def_map_gradient(m, "relu_backward", "y", [](const auto& k) { return k.relu_backward; },
                     "grad_x = 0 where y <= 0, else grad_y");
    def_map(m, "leaky_relu", [](const auto& k) { return k.leaky_relu; },
            "y = x where x > 0, else negative_slope * x", "negative_slope");
    def_map_gradient(m, "leaky_relu_backward", "x",
                     [](const auto& k) { return k.leaky_relu_backward; },
                     "grad_x = grad_y where x > 0, else negative_slope * grad_y", "negative_slope");

    // ---- Fused activations and dropout (elementwise/activation.h, elementwise/dropout.h)
    def_map(m, "elu", [](const auto& k) { return k.elu; },
            "y = x where x > 0, else alpha * expm1(x)", "alpha");
    def_map_gradient(m, "elu_backward", "x", [](const auto& k) { return k.elu_backward; },
                     "grad_x = grad_y where x > 0, else grad_y * alpha * exp(x)", "alpha");
    def_map(m, "sigmoid", [](const auto& k) { return k.sigmoid; }, "y = 1 / (1 + exp(-x))");
    def_map_gradient(m, "sigmoid_backward", "y", [](const auto& k) { return k.sigmoid_backward; },
                     "grad_x = grad_y * (1 - y) * y");
    def_map(m, "tanh", [](const auto& k) { return k.tanh; }, "y = tanh(x)");
    def_map_gradient(m, "tanh_backward", "y", [](const auto& k) { return k.tanh_backward; },
                     "grad_x = grad_y * (1 - y * y)");
    // No flush of subnormals: the sums are NumPy's bits.
    def_sum(m, "add", [](const auto& k) { return k.add; }, false,
            "y = a + b (IEEE, subnormals kept) on the pool's threads; y may be a or b");
    def_op(m, "gated_tanh",
          [](Array x, int64_t dim, Array y) {
              by_dtype(x.dtype(), [&](auto t) {
                  using T = decltype(t);
                  const GateShape s = gate_shape(x, dim);
                  const T* xp = checked<T>(x, s.x, "x");
                  T* yp = checked<T>(y, s.y, "y", true);
                  without_gil([&] { kernels<T>().gated_tanh(s.outer, s.inner, xp, yp); });
              });
          },
          py::arg("x"), py::arg("dim"), py::arg("y"),
          "y = tanh(a) * sigmoid(b) for x = [a, b] split in halves along axis dim");
    def_op(m, "gated_tanh_backward",
          [](Array grad_y, Array x, int64_t dim, Array grad_x) {
              by_dtype(x.dtype(), [&](auto t) {
                  using T = decltype(t);
                  const GateShape s = gate_shape(x, dim);
                  const T* gy = checked<T>(grad_y, s.y, "grad_y");
                  const T* xp = checked<T>(x, s.x, "x");
                  T* gx = checked<T>(grad_x, s.x, "grad_x", true);
                  without_gil([&] { kernels<T>().gated_tanh_backward(s.outer, s.inner, gy, xp, gx); });
              });
          },
          py::arg("grad_y"), py::arg("x"), py::arg("dim"), py::arg("grad_x"),
          "the gradient of gated_tanh into grad_x (x's shape)");
    def_op(m, "prelu",
          [](Array x, Array w, Array y) {
              by_dtype(x.dtype(), [&](auto t) {
                  using T = decltype(t);
                  const PreluShape s = prelu_shape(x, w);
                  const T* xp = checked<T>(x, s.x, "x");
                  const T* wp = checked<T>(w, {s.w_size}, "w");
                  T* yp = checked<T>(y, s.x, "y", true);
                  without_gil([&] { kernels<T>().prelu(s.N, s.C, s.inner, xp, wp, s.w_size, yp); });
              });
          },
          py::arg("x"), py::arg("w"), py::arg("y"),
          "y = x where x > 0, else w[channel] * x (channels on axis 1)");
    def_op(m, "prelu_backward",
          [](Array grad_y, Array x, Array w, Array grad_x, Array grad_w) {
              by_dtype(x.dtype(), [&](auto t) {
                  using T = decltype(t);
                  const PreluShape s = prelu_shape(x, w);
                  const T* gy = checked<T>(grad_y, s.x, "grad_y");
                  const T* xp = checked<T>(x, s.x, "x");
                  const T* wp = checked<T>(w, {s.w_size}, "w");
                  T* gx = checked<T>(grad_x, s.x, "grad_x", true);
                  T* gw = checked<T>(grad_w, {s.w_size}, "grad_w", true);
                  without_gil([&] {
                      kernels<T>().prelu_backward(s.N, s.C, s.inner, gy, xp, wp, s.w_size, gx, gw);
                  });
              });
          },
          py::arg("grad_y"), py::arg("x"), py::arg("w"), py::arg("grad_x"), py::arg("grad_w"),
          "gradients of prelu into grad_x and grad_w");
    // ---- Embedding rows (dense/embedding.h)
    def_op(m, "embedding",
          [](Array weight, Array indices, Array out) {
              by_dtype(weight.dtype(), [&](auto t) {
                  using T = decltype(t);
                  if (weight.ndim() != 2) throw py::value_error("embedding: weight must be 2-D");
                  const int64_t rows = weight.shape(0), dim = weight.shape(1), n = indices.size();
                  const T* wp = checked<T>(weight, {rows, dim}, "weight");
                  const int64_t* ip = checked<int64_t>(indices, shape_of(indices), "indices");
                  T* outp = checked<T>(out, {n, dim}, "out", true);
                  const int64_t skipped = without_gil([&] { return kernels<T>().embedding(n, dim, rows, wp, ip, outp); });
                  check_scatter(skipped, "embedding", "num_embeddings");
              });
          },
          py::arg("weight"), py::arg("indices"), py::arg("out"),
          "out (n, dim) = weight[indices] for the n indices (any shape, int64)");
    def_op(m, "embedding_backward",
          [](Array grad_out, Array indices, int64_t padding_idx, Array grad_weight) {
              by_dtype(grad_out.dtype(), [&](auto t) {
                  using T = decltype(t);
                  if (grad_weight.ndim() != 2) throw py::value_error("embedding_backward: grad_weight must be 2-D");
                  const int64_t rows = grad_weight.shape(0), dim = grad_weight.shape(1), n = indices.size();
                  const T* gp = checked<T>(grad_out, {n, dim}, "grad_out");
                  const int64_t* ip = checked<int64_t>(indices, shape_of(indices), "indices");
                  T* wp = checked<T>(grad_weight, {rows, dim}, "grad_weight", true);
                  const int64_t skipped = without_gil(
                      [&] { return kernels<T>().embedding_backward(n, dim, rows, ip, gp, padding_idx, wp); });
                  check_scatter(skipped, "embedding_backward", "num_embeddings");
              });
          },
          py::arg("grad_out"), py::arg("indices"), py::arg("padding_idx"), py::arg("grad_weight"),
          "grad_weight (rows, dim) = grad_out's rows (n, dim) summed by their indices (int64), "
          "row padding_idx (if >= 0) zero");
    def_op(m, "dropout",
          [](Array x, uint64_t seed, uint32_t keep_threshold, double scale, Array y, Array mask) {
              if (keep_threshold > (uint32_t(1) << 24))
                  throw py::value_error("keep_threshold: must be at most 2^24");
              by_dtype(x.dtype(), [&](auto t) {
                  using T = decltype(t);
                  const auto shape = shape_of(x);
                  const T* xp = checked<T>(x, shape, "x");
                  T* yp = checked<T>(y, shape, "y", true);
                  uint8_t* mp = checked<uint8_t>(mask, shape, "mask", true);
                  without_gil([&] {
                      kernels<T>().dropout(x.size(), xp, seed, keep_threshold, T(scale), yp, mp);
                  });
              });
          },
          py::arg("x"), py::arg("seed"), py::arg("keep_threshold"), py::arg("scale"), py::arg("y"),
          py::arg("mask"),
          "y = x * scale where Philox4x32-10 keeps the element (mask 1), else x * 0 (mask 0)");
    def_op(m, "dropout_backward",
          [](Array grad_y, Array mask, double scale, Array grad_x) {
              by_dtype(grad_y.dtype(), [&](auto t) {
                  using T = decltype(t);
                  const auto shape = shape_of(grad_y);
                  const T* gy = checked<T>(grad_y, shape, "grad_y");
                  const uint8_t* mp = checked<uint8_t>(mask, shape, "mask");
                  T* gx = checked<T>(grad_x, shape, "grad_x", true);
                  without_gil([&] {
                      kernels<T>().dropout_backward(grad_y.size(), gy, mp, T(scale), gx);
                  });
              });
          },
          py::arg("grad_y"), py::arg("mask"), py::arg("scale"), py::arg("grad_x"),
          "grad_x = grad_y * scale where mask, else grad_y * 0");

    // ---- Rotated boxes

    def_op(m, "box_iou_rotated",
          [](Array boxes1, Array boxes2, Array out) {
              by_dtype(boxes1.dtype(), [&](auto t) {
                  using T = decltype(t);
                  const int64_t n = rows_of_rotated_boxes(boxes1, "boxes1");
                  const int64_t m = rows_of_rotated_boxes(boxes2, "boxes2");
                  const T* ap = checked<T>(boxes1, {n, 5}, "boxes1");
                  const T* bp = checked<T>(boxes2, {m, 5}, "boxes2");
                  T* op = checked<T>(out, {n, m}, "out", true);
                  without_gil([&] { kernels<T>().box_iou_rotated(ap, n, bp, m, op); });
              });
          },
          py::arg("boxes1"), py::arg("boxes2"), py::arg("out"),
          "pairwise IoU of rotated boxes (cx, cy, w, h, angle in degrees) into out (N, M)");
    def_op(m, "nms_rotated",
          [](Array boxes, Array scores, double iou_threshold, Array keep) {
              return by_dtype(boxes.dtype(), [&](auto t) {
                  using T = decltype(t);
                  const int64_t n = rows_of_rotated_boxes(boxes, "boxes");
                  if (n > int64_t(std::numeric_limits<int32_t>::max()))
                      throw py::value_error("nms_rotated: at most 2**31 - 1 boxes");
                  if (std::isnan(iou_threshold))
                      throw py::value_error("nms_rotated: iou_threshold is NaN");
                  const T* bp = checked<T>(boxes, {n, 5}, "boxes");
                  const T* sp = checked<T>(scores, {n}, "scores");
                  int64_t* kp = checked<int64_t>(keep, {n}, "keep", true);
                  return without_gil([&] { return kernels<T>().nms_rotated(bp, sp, n, iou_threshold, kp); });
              });
          },
          py::arg("boxes"), py::arg("scores"), py::arg("iou_threshold"), py::arg("keep"),
          "greedy NMS of rotated boxes; writes the kept indices to keep and returns their count");
}
