// The one pybind11 bindings file. Every function here validates what it is given
// (dtype, contiguity, shapes) and raises ValueError before a kernel touches memory.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "kernels.h"
#include "simd.h"

namespace py = pybind11;
using namespace minillm;

namespace {

std::string shape_str(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
    return s + (a.ndim() == 1 ? ",)" : ")");
}

// Checks that `a` is a C-contiguous float32/float64 array with at least one dimension.
void check_float_array(const char* fn, const char* name, const py::array& a) {
    if (!(a.dtype().is(py::dtype::of<float>()) || a.dtype().is(py::dtype::of<double>())))
        throw py::value_error(std::string(fn) + ": " + name + " must be float32 or float64, got " +
                              std::string(py::str(a.dtype())));
    if (!(a.flags() & py::array::c_style))
        throw py::value_error(std::string(fn) + ": " + name + " must be C-contiguous (use np.ascontiguousarray)");
    if (a.ndim() < 1) throw py::value_error(std::string(fn) + ": " + name + " must have at least one dimension");
}

void check_same(const char* fn, const char* name_a, const py::array& a, const char* name_b, const py::array& b) {
    if (!a.dtype().is(b.dtype()))
        throw py::value_error(std::string(fn) + ": " + name_a + " and " + name_b + " must have the same dtype, got " +
                              std::string(py::str(a.dtype())) + " and " + std::string(py::str(b.dtype())));
    bool same = a.ndim() == b.ndim();
    for (py::ssize_t i = 0; same && i < a.ndim(); ++i) same = a.shape(i) == b.shape(i);
    if (!same)
        throw py::value_error(std::string(fn) + ": " + name_a + " has shape " + shape_str(a) + " but " + name_b +
                              " has shape " + shape_str(b) + "; they must match");
}

py::array empty_like(const py::array& a) {
    std::vector<py::ssize_t> shape(a.shape(), a.shape() + a.ndim());
    return py::array(a.dtype(), shape);
}

template <typename T>
void softmax_forward_t(const py::array& x, py::array& y) {
    const std::int64_t n = x.shape(x.ndim() - 1), rows = n ? x.size() / n : 0;
    const T* xp = static_cast<const T*>(x.data());
    T* yp = static_cast<T*>(y.mutable_data());
    py::gil_scoped_release release;
    if (rows) softmax_forward<T>(xp, yp, rows, n);
}

template <typename T>
void softmax_backward_t(const py::array& dy, const py::array& y, py::array& dx) {
    const std::int64_t n = y.shape(y.ndim() - 1), rows = n ? y.size() / n : 0;
    const T* dyp = static_cast<const T*>(dy.data());
    const T* yp = static_cast<const T*>(y.data());
    T* dxp = static_cast<T*>(dx.mutable_data());
    py::gil_scoped_release release;
    if (rows) softmax_backward<T>(dyp, yp, dxp, rows, n);
}

py::array py_softmax_forward(const py::array& x) {
    check_float_array("softmax_forward", "x", x);
    py::array y = empty_like(x);
    if (x.dtype().is(py::dtype::of<float>())) softmax_forward_t<float>(x, y);
    else softmax_forward_t<double>(x, y);
    return y;
}

py::array py_softmax_backward(const py::array& dy, const py::array& y) {
    check_float_array("softmax_backward", "dy", dy);
    check_float_array("softmax_backward", "y", y);
    check_same("softmax_backward", "dy", dy, "y", y);
    py::array dx = empty_like(y);
    if (y.dtype().is(py::dtype::of<float>())) softmax_backward_t<float>(dy, y, dx);
    else softmax_backward_t<double>(dy, y, dx);
    return dx;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
    m.doc() = "minillm native kernels (C++, OpenMP, AVX2/FMA with a scalar fallback)";

    m.def("softmax_forward", &py_softmax_forward, py::arg("x"),
          "Softmax over the last axis of a C-contiguous float32/float64 array.");
    m.def("softmax_backward", &py_softmax_backward, py::arg("dy"), py::arg("y"),
          "dx = y * (dy - sum(dy * y, axis=-1)) for y = softmax(x).");

    m.def("openmp", []() {
#if defined(MINILLM_OPENMP)
        return true;
#else
        return false;
#endif
    }, "True if the extension was built with OpenMP.");
    m.def("cpu_simd", []() { return std::string(cpu_simd()); },
          "The SIMD level this CPU supports: 'avx2+fma' or 'scalar'.");
    m.def("simd_in_use", []() { return std::string(use_avx2() ? "avx2+fma" : "scalar"); },
          "The SIMD level the kernels use now (scalar when forced).");
    m.def("force_scalar", &force_scalar, py::arg("on"),
          "Force the portable scalar path (for tests that hold both paths equal).");
    m.def("get_num_threads", []() {
#if defined(MINILLM_OPENMP)
        return omp_get_max_threads();
#else
        return 1;
#endif
    });
    m.def("set_num_threads", [](int n) {
        if (n < 1) throw py::value_error("set_num_threads: n must be >= 1, got " + std::to_string(n));
#if defined(MINILLM_OPENMP)
        omp_set_num_threads(n);
#endif
    }, py::arg("n"));
    m.def("compiler", []() {
#if defined(__clang__)
        return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
        return std::string("gcc ") + __VERSION__;
#elif defined(_MSC_VER)
        return std::string("msvc ") + std::to_string(_MSC_VER);
#else
        return std::string("unknown");
#endif
    });
}
