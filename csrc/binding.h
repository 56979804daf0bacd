// What every family's pybind11 wrappers share (the bind_<family>() at the bottom of each kernel
// file): one family of argument checks with one error style, one float32/float64 dispatch, and
// output arrays. A wrapper checks every argument and allocates its outputs, then releases the GIL
// and hands raw pointers and sizes to the kernel; no kernel ever sees a Python object.
//
//     py::array py_softmax_forward(const py::array& x) {
//         const Check check("softmax_forward");
//         check.floating("x", x);
//         py::array y = empty_like(x);
//         const auto [rows, n] = rows_cols(x);
//         dispatch_float(x, [&](auto zero) {                 // T = float or double, x's dtype
//             using T = decltype(zero);
//             const T* xp = data<T>(x);
//             T* yp = mutable_data<T>(y);
//             py::gil_scoped_release release;
//             if (rows && n) softmax_forward(xp, yp, rows, n);
//         });
//         return y;
//     }
//
// Every error is a ValueError (a TypeError where an argument is not an array at all) that starts
// with the function's name, names the argument, says what it is and what it must be.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace minillm {

namespace py = pybind11;

// "(4, 6)", "(5,)" or "()".
inline std::string shape_str(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
    return s + (a.ndim() == 1 ? ",)" : ")");
}

inline std::string shape_str(const std::vector<std::int64_t>& shape) {
    std::string s = "(";
    for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + (shape.size() == 1 ? ",)" : ")");
}

inline std::string dtype_str(const py::array& a) { return std::string(py::str(a.dtype())); }

template <typename T>
bool has_dtype(const py::array& a) { return a.dtype().is(py::dtype::of<T>()); }

// The checks of one binding's arguments; every message starts with the binding's name.
class Check {
  public:
    explicit Check(const char* fn) : fn_(fn) {}

    // ValueError("fn: message").
    [[noreturn]] void fail(const std::string& message) const {
        throw py::value_error(std::string(fn_) + ": " + message);
    }

    void contiguous(const char* name, const py::array& a) const {
        if (!(a.flags() & py::array::c_style))
            fail(std::string(name) + " must be C-contiguous (use np.ascontiguousarray)");
    }

    // `a` has `ndim` dimensions; `layout` names them ("(N, V)"), or nullptr for "2-D".
    void ndim(const char* name, const py::array& a, py::ssize_t ndim, const char* layout = nullptr) const {
        if (a.ndim() != ndim)
            fail(std::string(name) + " must be " + (layout ? layout : std::to_string(ndim) + "-D") + ", got shape " +
                 shape_str(a));
    }

    // `a` is a C-contiguous float32 or float64 array with at least one dimension.
    void floating(const char* name, const py::array& a) const {
        if (!(has_dtype<float>(a) || has_dtype<double>(a)))
            fail(std::string(name) + " must be float32 or float64, got " + dtype_str(a));
        contiguous(name, a);
        if (a.ndim() < 1) fail(std::string(name) + " must have at least one dimension");
    }

    // `a` is a C-contiguous `ndim`-D array of T; `dtype` is how the message names T.
    template <typename T>
    void typed(const char* name, const py::array& a, py::ssize_t ndim, const char* dtype) const {
        if (!has_dtype<T>(a)) fail(std::string(name) + " must be " + dtype + ", got " + dtype_str(a));
        contiguous(name, a);
        this->ndim(name, a, ndim);
    }

    // `a` has exactly the shape `want`; `why` (optional) says where the shape comes from.
    void shape(const char* name, const py::array& a, const std::vector<std::int64_t>& want,
               const char* why = nullptr) const {
        if (!shape_is(a, want))
            fail(std::string(name) + " must be " + shape_str(want) + (why ? std::string(" (") + why + ")" : "") +
                 ", got " + shape_str(a));
    }

    // The same, for a shape that follows from another argument `ref`:
    // "weight has shape (5,) but x has shape (4, 6); weight must be (6,)".
    void shape(const char* name, const py::array& a, const std::vector<std::int64_t>& want, const char* ref_name,
               const py::array& ref, const char* why = nullptr) const {
        if (!shape_is(a, want))
            fail(std::string(name) + " has shape " + shape_str(a) + " but " + ref_name + " has shape " +
                 shape_str(ref) + "; " + name + " must be " + shape_str(want) +
                 (why ? std::string(" (") + why + ")" : ""));
    }

    // `a` has `ref`'s dtype: "bias must have x's dtype float32, got float64".
    void dtype_of(const char* name, const py::array& a, const char* ref_name, const py::array& ref) const {
        if (!a.dtype().is(ref.dtype()))
            fail(std::string(name) + " must have " + ref_name + "'s dtype " + dtype_str(ref) + ", got " +
                 dtype_str(a));
    }

    // `a` and `b` have one dtype: "a and b must have the same dtype, got float32 and float64".
    void same_dtype(const char* name_a, const py::array& a, const char* name_b, const py::array& b) const {
        if (!a.dtype().is(b.dtype()))
            fail(std::string(name_a) + " and " + name_b + " must have the same dtype, got " + dtype_str(a) +
                 " and " + dtype_str(b));
    }

    // `a` is like `b`: the same dtype and the same shape.
    void same_as(const char* name_a, const py::array& a, const char* name_b, const py::array& b) const {
        same_dtype(name_a, a, name_b, b);
        if (!shape_is(a, std::vector<std::int64_t>(b.shape(), b.shape() + b.ndim())))
            fail(std::string(name_a) + " has shape " + shape_str(a) + " but " + name_b + " has shape " +
                 shape_str(b) + "; they must match");
    }

    // An optional array argument: None gives false; anything but a NumPy array is a TypeError.
    bool optional(const char* name, const py::object& obj, py::array& out) const {
        if (obj.is_none()) return false;
        if (!py::isinstance<py::array>(obj))
            throw py::type_error(std::string(fn_) + ": " + name + " must be a NumPy array or None");
        out = obj.cast<py::array>();
        return true;
    }

    // The UTF-8 bytes of a Python str. They live as long as the str does: hold on to it (or copy,
    // see utf8_strings) while the GIL is released.
    std::string_view utf8(const py::handle& text) const {
        if (!PyUnicode_Check(text.ptr())) throw py::type_error(std::string(fn_) + ": expected str");
        Py_ssize_t n = 0;
        const char* bytes = PyUnicode_AsUTF8AndSize(text.ptr(), &n);
        if (!bytes) {
            PyErr_Clear();
            fail("text is not valid Unicode (it holds a lone surrogate); it cannot be encoded as UTF-8");
        }
        return std::string_view(bytes, static_cast<std::size_t>(n));
    }

    // Copies of the UTF-8 bytes of a list of str: a kernel may read them with the GIL released,
    // while another thread changes the list and frees its strings.
    std::vector<std::string> utf8_strings(const py::list& texts) const {
        std::vector<std::string> out;
        out.reserve(texts.size());
        for (auto t : texts) out.emplace_back(utf8(t));
        return out;
    }

    const char* name() const { return fn_; }

  private:
    static bool shape_is(const py::array& a, const std::vector<std::int64_t>& want) {
        bool same = a.ndim() == static_cast<py::ssize_t>(want.size());
        for (py::ssize_t i = 0; same && i < a.ndim(); ++i) same = a.shape(i) == want[i];
        return same;
    }

    const char* fn_;
};

// body(T{}) with T the element type of `a`: float or double (checked before by Check::floating).
// The one float/double dispatch of the bindings.
template <typename Body>
decltype(auto) dispatch_float(const py::array& a, Body&& body) {
    if (has_dtype<float>(a)) return body(float{});
    return body(double{});
}

template <typename T>
const T* data(const py::array& a) { return static_cast<const T*>(a.data()); }
template <typename T>
T* mutable_data(py::array& a) { return static_cast<T*>(a.mutable_data()); }

// A new C-contiguous array of `like`'s dtype: with `like`'s shape, or the given one.
inline py::array empty_like(const py::array& like) {
    return py::array(like.dtype(), std::vector<py::ssize_t>(like.shape(), like.shape() + like.ndim()));
}
inline py::array empty_like(const py::array& like, const std::vector<std::int64_t>& shape) {
    return py::array(like.dtype(), std::vector<py::ssize_t>(shape.begin(), shape.end()));
}

// The (rows, C) view of an array whose last axis is C: C = the last extent, rows = the product
// of the others.
inline std::pair<std::int64_t, std::int64_t> rows_cols(const py::array& a) {
    const std::int64_t C = a.shape(a.ndim() - 1);
    std::int64_t rows = 1;
    for (py::ssize_t i = 0; i + 1 < a.ndim(); ++i) rows *= a.shape(i);
    return {rows, C};
}

// The shape of `a` as a vector.
inline std::vector<std::int64_t> shape_of(const py::array& a) {
    return std::vector<std::int64_t>(a.shape(), a.shape() + a.ndim());
}

}  // namespace minillm
