// The one pybind11 bindings file. Every function here validates what it is given
// (dtype, contiguity, shapes) and raises ValueError before a kernel touches memory.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
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


// ---- attention

void check_ndim(const char* fn, const char* name, const py::array& a, py::ssize_t ndim, const char* shape) {
    if (a.ndim() != ndim)
        throw py::value_error(std::string(fn) + ": " + name + " must be " + shape + ", got shape " + shape_str(a));
}

// q (B, H, T, D); k, v (B, Hkv, S, D); optional alibi_slopes (H,) of q's dtype and key_padding_mask
// (B, S) bool: validated and packed into AttentionArgs<F> (the arrays stay alive in the caller).
template <typename F>
AttentionArgs<F> attention_args(const py::array& q, const py::array& k, const py::array& v, bool causal,
                                std::int64_t window, const py::object& alibi, const py::object& mask) {
    AttentionArgs<F> a{};
    a.q = static_cast<const F*>(q.data());
    a.k = static_cast<const F*>(k.data());
    a.v = static_cast<const F*>(v.data());
    a.B = q.shape(0), a.H = q.shape(1), a.T = q.shape(2), a.D = q.shape(3);
    a.Hkv = k.shape(1), a.S = k.shape(2);
    a.causal = causal;
    a.window = window;
    a.alibi_slopes = alibi.is_none() ? nullptr : static_cast<const F*>(py::array(alibi).data());
    a.key_padding_mask = mask.is_none() ? nullptr : static_cast<const bool*>(py::array(mask).data());
    return a;
}

void check_attention_inputs(const char* fn, const py::array& q, const py::array& k, const py::array& v,
                            std::int64_t window, const py::object& alibi, const py::object& mask) {
    check_float_array(fn, "q", q);
    check_float_array(fn, "k", k);
    check_float_array(fn, "v", v);
    check_ndim(fn, "q", q, 4, "(B, H, T, D)");
    check_ndim(fn, "k", k, 4, "(B, Hkv, S, D)");
    check_same(fn, "k", k, "v", v);
    if (!q.dtype().is(k.dtype()))
        throw py::value_error(std::string(fn) + ": q and k must have the same dtype, got " +
                              std::string(py::str(q.dtype())) + " and " + std::string(py::str(k.dtype())));
    if (q.shape(0) != k.shape(0) || q.shape(3) != k.shape(3))
        throw py::value_error(std::string(fn) + ": q has shape " + shape_str(q) + " and k " + shape_str(k) +
                              "; batch (axis 0) and head dim (axis 3) must match");
    if (q.shape(3) < 1) throw py::value_error(std::string(fn) + ": the head dim D must be >= 1, got 0");
    if (k.shape(1) < 1 || q.shape(1) % k.shape(1) != 0)
        throw py::value_error(std::string(fn) + ": q has " + std::to_string(q.shape(1)) + " heads but k has " +
                              std::to_string(k.shape(1)) + "; n_heads must be a multiple of n_kv_heads >= 1");
    if (window < 0)
        throw py::value_error(std::string(fn) + ": window must be >= 0 (0 = no window), got " + std::to_string(window));
    if (!alibi.is_none()) {
        if (!py::isinstance<py::array>(alibi))
            throw py::type_error(std::string(fn) + ": alibi_slopes must be a NumPy array or None");
        py::array s(alibi);
        if (!s.dtype().is(q.dtype()) || !(s.flags() & py::array::c_style) || s.ndim() != 1 || s.shape(0) != q.shape(1))
            throw py::value_error(std::string(fn) + ": alibi_slopes must be a contiguous (" + std::to_string(q.shape(1)) +
                                  ",) array of q's dtype " + std::string(py::str(q.dtype())) + ", got shape " +
                                  shape_str(s) + " " + std::string(py::str(s.dtype())));
    }
    if (!mask.is_none()) {
        if (!py::isinstance<py::array>(mask))
            throw py::type_error(std::string(fn) + ": key_padding_mask must be a NumPy bool array or None");
        py::array m(mask);
        if (!m.dtype().is(py::dtype::of<bool>()) || !(m.flags() & py::array::c_style) || m.ndim() != 2 ||
            m.shape(0) != q.shape(0) || m.shape(1) != k.shape(2))
            throw py::value_error(std::string(fn) + ": key_padding_mask must be a contiguous bool (" +
                                  std::to_string(q.shape(0)) + ", " + std::to_string(k.shape(2)) + ") array, got shape " +
                                  shape_str(m) + " " + std::string(py::str(m.dtype())));
    }
}

template <typename F>
void attention_forward_t(const AttentionArgs<F>& a, py::array& out, py::array& lse) {
    F* outp = static_cast<F*>(out.mutable_data());
    F* lsep = static_cast<F*>(lse.mutable_data());
    py::gil_scoped_release release;
    if (a.B > 0 && a.H > 0 && a.T > 0) attention_forward<F>(a, outp, lsep);
}

py::tuple py_attention_forward(const py::array& q, const py::array& k, const py::array& v, bool causal,
                               std::int64_t window, const py::object& alibi_slopes, const py::object& key_padding_mask) {
    const char* fn = "attention_forward";
    check_attention_inputs(fn, q, k, v, window, alibi_slopes, key_padding_mask);
    py::array out = empty_like(q);
    py::array lse(q.dtype(), std::vector<py::ssize_t>{q.shape(0), q.shape(1), q.shape(2)});
    if (q.dtype().is(py::dtype::of<float>()))
        attention_forward_t(attention_args<float>(q, k, v, causal, window, alibi_slopes, key_padding_mask), out, lse);
    else
        attention_forward_t(attention_args<double>(q, k, v, causal, window, alibi_slopes, key_padding_mask), out, lse);
    return py::make_tuple(out, lse);
}

template <typename F>
void attention_backward_t(const AttentionArgs<F>& a, const py::array& dout, const py::array& out, const py::array& lse,
                          py::array& dq, py::array& dk, py::array& dv) {
    const F* doutp = static_cast<const F*>(dout.data());
    const F* outp = static_cast<const F*>(out.data());
    const F* lsep = static_cast<const F*>(lse.data());
    F* dqp = static_cast<F*>(dq.mutable_data());
    F* dkp = static_cast<F*>(dk.mutable_data());
    F* dvp = static_cast<F*>(dv.mutable_data());
    py::gil_scoped_release release;
    if (a.B > 0 && a.H > 0 && a.T > 0) {
        attention_backward<F>(a, doutp, outp, lsep, dqp, dkp, dvp);
    } else {   // no query at all: nothing flows into k and v
        std::fill(dkp, dkp + a.B * a.Hkv * a.S * a.D, F(0));
        std::fill(dvp, dvp + a.B * a.Hkv * a.S * a.D, F(0));
    }
}

py::tuple py_attention_backward(const py::array& dout, const py::array& q, const py::array& k, const py::array& v,
                                const py::array& out, const py::array& lse, bool causal, std::int64_t window,
                                const py::object& alibi_slopes, const py::object& key_padding_mask) {
    const char* fn = "attention_backward";
    check_attention_inputs(fn, q, k, v, window, alibi_slopes, key_padding_mask);
    check_float_array(fn, "dout", dout);
    check_float_array(fn, "out", out);
    check_float_array(fn, "lse", lse);
    check_same(fn, "dout", dout, "q", q);
    check_same(fn, "out", out, "q", q);
    if (!lse.dtype().is(q.dtype()) || lse.ndim() != 3 || lse.shape(0) != q.shape(0) || lse.shape(1) != q.shape(1) ||
        lse.shape(2) != q.shape(2))
        throw py::value_error(std::string(fn) + ": lse must be a (" + std::to_string(q.shape(0)) + ", " +
                              std::to_string(q.shape(1)) + ", " + std::to_string(q.shape(2)) + ") array of q's dtype, got " +
                              shape_str(lse) + " " + std::string(py::str(lse.dtype())));
    py::array dq = empty_like(q), dk = empty_like(k), dv = empty_like(v);
    if (q.dtype().is(py::dtype::of<float>()))
        attention_backward_t(attention_args<float>(q, k, v, causal, window, alibi_slopes, key_padding_mask), dout, out,
                             lse, dq, dk, dv);
    else
        attention_backward_t(attention_args<double>(q, k, v, causal, window, alibi_slopes, key_padding_mask), dout, out,
                             lse, dq, dk, dv);
    return py::make_tuple(dq, dk, dv);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
    m.doc() = "minillm native kernels (C++, OpenMP, AVX2/FMA with a scalar fallback)";

    m.def("softmax_forward", &py_softmax_forward, py::arg("x"),
          "Softmax over the last axis of a C-contiguous float32/float64 array.");
    m.def("softmax_backward", &py_softmax_backward, py::arg("dy"), py::arg("y"),
          "dx = y * (dy - sum(dy * y, axis=-1)) for y = softmax(x).");

    // ---- attention
    m.def("attention_forward", &py_attention_forward, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("causal"),
          py::arg("window"), py::arg("alibi_slopes"), py::arg("key_padding_mask"),
          "Flash-style attention: returns (out (B, H, T, D), lse (B, H, T)). window 0 = none; alibi_slopes (H,) "
          "of q's dtype or None; key_padding_mask (B, S) bool (True = keep) or None.");
    m.def("attention_backward", &py_attention_backward, py::arg("dout"), py::arg("q"), py::arg("k"), py::arg("v"),
          py::arg("out"), py::arg("lse"), py::arg("causal"), py::arg("window"), py::arg("alibi_slopes"),
          py::arg("key_padding_mask"), "Gradients (dq, dk, dv) of attention_forward, recomputing scores tile by tile.");

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
