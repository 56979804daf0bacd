// The one pybind11 bindings file. Every function here validates what it is given
// (dtype, contiguity, shapes) and raises ValueError before a kernel touches memory.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>

#include <cmath>
#include <algorithm>
#include <string>
#include <utility>
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

// ---- helpers shared by the row-wise families (softmax, loss, norm, activation)

bool is_f32(const py::array& a) { return a.dtype().is(py::dtype::of<float>()); }

// (rows, C) view of an array whose last axis is C: C = last extent, rows = product of the others.
std::pair<std::int64_t, std::int64_t> rows_cols(const py::array& a) {
    const std::int64_t C = a.shape(a.ndim() - 1);
    std::int64_t rows = 1;
    for (py::ssize_t i = 0; i + 1 < a.ndim(); ++i) rows *= a.shape(i);
    return {rows, C};
}

// `v` is a C-contiguous 1-D array of x's dtype and length C (a weight or bias of x's last axis).
void check_param(const char* fn, const char* name, const py::array& v, const py::array& x) {
    check_float_array(fn, name, v);
    const std::int64_t C = x.shape(x.ndim() - 1);
    if (v.ndim() != 1 || v.shape(0) != C)
        throw py::value_error(std::string(fn) + ": " + name + " has shape " + shape_str(v) + " but x has shape " +
                              shape_str(x) + "; " + name + " must be (" + std::to_string(C) + ",)");
    if (!v.dtype().is(x.dtype()))
        throw py::value_error(std::string(fn) + ": " + name + " must have x's dtype " +
                              std::string(py::str(x.dtype())) +
                              ", got " + std::string(py::str(v.dtype())));
}

// `s` is x.shape[:-1] + (1,) of x's dtype: the per-row statistic a norm's forward returns.
void check_row_stat(const char* fn, const char* name, const py::array& s, const py::array& x) {
    check_float_array(fn, name, s);
    std::vector<py::ssize_t> want(x.shape(), x.shape() + x.ndim());
    want.back() = 1;
    bool same = s.ndim() == x.ndim() && s.dtype().is(x.dtype());
    for (py::ssize_t i = 0; same && i < s.ndim(); ++i) same = s.shape(i) == want[i];
    if (!same)
        throw py::value_error(std::string(fn) + ": " + name + " has shape " + shape_str(s) + " and dtype " +
                              std::string(py::str(s.dtype())) + "; with x of shape " + shape_str(x) +
                              " it must be x.shape[:-1] + (1,) with x's dtype (what the forward returned)");
}

void check_eps(const char* fn, double eps) {
    if (!(eps >= 0) || !std::isfinite(eps))
        throw py::value_error(std::string(fn) + ": eps must be a finite number >= 0, got " + std::to_string(eps));
}

py::array empty_of(const py::array& like, std::vector<py::ssize_t> shape) { return py::array(like.dtype(), shape); }

template <typename T>
T* ptr(py::array& a) { return static_cast<T*>(a.mutable_data()); }
template <typename T>
const T* cptr(const py::array& a) { return static_cast<const T*>(a.data()); }

// ---- softmax: log-softmax

template <typename T>
void log_softmax_forward_t(const py::array& x, py::array& y) {
    auto [rows, n] = rows_cols(x);
    const T* xp = cptr<T>(x);
    T* yp = ptr<T>(y);
    py::gil_scoped_release release;
    if (rows && n) log_softmax_forward<T>(xp, yp, rows, n);
}

template <typename T>
void log_softmax_backward_t(const py::array& dy, const py::array& y, py::array& dx) {
    auto [rows, n] = rows_cols(y);
    const T *dyp = cptr<T>(dy), *yp = cptr<T>(y);
    T* dxp = ptr<T>(dx);
    py::gil_scoped_release release;
    if (rows && n) log_softmax_backward<T>(dyp, yp, dxp, rows, n);
}

py::array py_log_softmax_forward(const py::array& x) {
    check_float_array("log_softmax_forward", "x", x);
    py::array y = empty_like(x);
    if (is_f32(x)) log_softmax_forward_t<float>(x, y);
    else log_softmax_forward_t<double>(x, y);
    return y;
}

py::array py_log_softmax_backward(const py::array& dy, const py::array& y) {
    check_float_array("log_softmax_backward", "dy", dy);
    check_float_array("log_softmax_backward", "y", y);
    check_same("log_softmax_backward", "dy", dy, "y", y);
    py::array dx = empty_like(y);
    if (is_f32(y)) log_softmax_backward_t<float>(dy, y, dx);
    else log_softmax_backward_t<double>(dy, y, dx);
    return dx;
}

// ---- loss: fused cross-entropy

template <typename T>
void cross_entropy_forward_t(const py::array& logits, const py::array& targets, std::int64_t ignore_index,
                             py::array& nll, py::array& g) {
    const std::int64_t N = logits.shape(0), V = logits.shape(1);
    const T* lp = cptr<T>(logits);
    const std::int64_t* tp = cptr<std::int64_t>(targets);
    T *np_ = ptr<T>(nll), *gp = ptr<T>(g);
    py::gil_scoped_release release;
    if (N) cross_entropy_forward<T>(lp, tp, ignore_index, np_, gp, N, V);
}

// Returns (nll (N,), g (N, V)) with g = softmax(logits) - onehot(targets), rows of ignored targets 0.
py::tuple py_cross_entropy_forward(const py::array& logits, const py::array& targets, std::int64_t ignore_index) {
    const char* fn = "cross_entropy_forward";
    check_float_array(fn, "logits", logits);
    if (logits.ndim() != 2)
        throw py::value_error(std::string(fn) + ": logits must be (N, V), got shape " + shape_str(logits));
    if (!targets.dtype().is(py::dtype::of<std::int64_t>()))
        throw py::value_error(std::string(fn) + ": targets must be int64, got " +
                              std::string(py::str(targets.dtype())));
    if (!(targets.flags() & py::array::c_style) || targets.ndim() != 1 || targets.shape(0) != logits.shape(0))
        throw py::value_error(std::string(fn) + ": targets must be a contiguous (" + std::to_string(logits.shape(0)) +
                              ",) array for logits of shape " + shape_str(logits) + ", got " + shape_str(targets));
    const std::int64_t N = logits.shape(0), V = logits.shape(1);
    const std::int64_t* tp = cptr<std::int64_t>(targets);
    for (std::int64_t r = 0; r < N; ++r)   // before any kernel reads logits[r, targets[r]]
        if (tp[r] != ignore_index && (tp[r] < 0 || tp[r] >= V))
            throw py::value_error(std::string(fn) + ": targets[" + std::to_string(r) + "] = " + std::to_string(tp[r]) +
                                  " is outside [0, " + std::to_string(V) + ") and not ignore_index (" +
                                  std::to_string(ignore_index) + ")");
    py::array nll = empty_of(logits, {N}), g = empty_like(logits);
    if (is_f32(logits)) cross_entropy_forward_t<float>(logits, targets, ignore_index, nll, g);
    else cross_entropy_forward_t<double>(logits, targets, ignore_index, nll, g);
    return py::make_tuple(nll, g);
}

template <typename T>
void cross_entropy_backward_t(const py::array& g, const py::array& scale, py::array& dlogits) {
    const std::int64_t N = g.shape(0), V = g.shape(1);
    const T *gp = cptr<T>(g), *sp = cptr<T>(scale);
    T* dp = ptr<T>(dlogits);
    py::gil_scoped_release release;
    if (N && V) cross_entropy_backward<T>(gp, sp, dp, N, V);
}

// dlogits = g * row_scale[:, None]
py::array py_cross_entropy_backward(const py::array& g, const py::array& row_scale) {
    const char* fn = "cross_entropy_backward";
    check_float_array(fn, "g", g);
    check_float_array(fn, "row_scale", row_scale);
    if (g.ndim() != 2 || row_scale.ndim() != 1 || row_scale.shape(0) != g.shape(0) || !row_scale.dtype().is(g.dtype()))
        throw py::value_error(std::string(fn) + ": g must be (N, V) and row_scale (N,) of g's dtype, got " +
                              shape_str(g) + " " + std::string(py::str(g.dtype())) + " and " + shape_str(row_scale) +
                              " " + std::string(py::str(row_scale.dtype())));
    py::array dlogits = empty_like(g);
    if (is_f32(g)) cross_entropy_backward_t<float>(g, row_scale, dlogits);
    else cross_entropy_backward_t<double>(g, row_scale, dlogits);
    return dlogits;
}

// ---- norm: rms_norm, layer_norm over the last axis

std::vector<py::ssize_t> stat_shape(const py::array& x) {   // x.shape[:-1] + (1,)
    std::vector<py::ssize_t> s(x.shape(), x.shape() + x.ndim());
    s.back() = 1;
    return s;
}

template <typename T>
void fill(py::array& a, T value) {
    T* p = ptr<T>(a);
    for (py::ssize_t i = 0; i < a.size(); ++i) p[i] = value;
}

py::tuple py_rms_norm_forward(const py::array& x, const py::array& weight, double eps) {
    const char* fn = "rms_norm_forward";
    check_float_array(fn, "x", x);
    check_param(fn, "weight", weight, x);
    check_eps(fn, eps);
    py::array y = empty_like(x), inv = empty_of(x, stat_shape(x));
    auto [rows, C] = rows_cols(x);
    auto run = [&](auto zero) {
        using T = decltype(zero);
        if (C == 0) return fill<T>(inv, T(NAN));   // mean of nothing, like NumPy
        const T *xp = cptr<T>(x), *wp = cptr<T>(weight);
        T *yp = ptr<T>(y), *ip = ptr<T>(inv);
        py::gil_scoped_release release;
        rms_norm_forward<T>(xp, wp, eps, yp, ip, rows, C);
    };
    if (is_f32(x)) run(0.0f);
    else run(0.0);
    return py::make_tuple(y, inv);
}

py::tuple py_rms_norm_backward(const py::array& dy, const py::array& x, const py::array& weight,
                               const py::array& inv_rms) {
    const char* fn = "rms_norm_backward";
    check_float_array(fn, "dy", dy);
    check_float_array(fn, "x", x);
    check_same(fn, "dy", dy, "x", x);
    check_param(fn, "weight", weight, x);
    check_row_stat(fn, "inv_rms", inv_rms, x);
    py::array dx = empty_like(x), dw = empty_like(weight);
    auto [rows, C] = rows_cols(x);
    auto run = [&](auto zero) {
        using T = decltype(zero);
        const T *dyp = cptr<T>(dy), *xp = cptr<T>(x), *wp = cptr<T>(weight), *ip = cptr<T>(inv_rms);
        T *dxp = ptr<T>(dx), *dwp = ptr<T>(dw);
        py::gil_scoped_release release;
        if (C) rms_norm_backward<T>(dyp, xp, wp, ip, dxp, dwp, rows, C);
    };
    if (is_f32(x)) run(0.0f);
    else run(0.0);
    return py::make_tuple(dx, dw);
}

py::tuple py_layer_norm_forward(const py::array& x, const py::array& weight, const py::array& bias, double eps) {
    const char* fn = "layer_norm_forward";
    check_float_array(fn, "x", x);
    check_param(fn, "weight", weight, x);
    check_param(fn, "bias", bias, x);
    check_eps(fn, eps);
    py::array y = empty_like(x), x_hat = empty_like(x), inv = empty_of(x, stat_shape(x));
    auto [rows, C] = rows_cols(x);
    auto run = [&](auto zero) {
        using T = decltype(zero);
        if (C == 0) return fill<T>(inv, T(NAN));
        const T *xp = cptr<T>(x), *wp = cptr<T>(weight), *bp = cptr<T>(bias);
        T *yp = ptr<T>(y), *hp = ptr<T>(x_hat), *ip = ptr<T>(inv);
        py::gil_scoped_release release;
        layer_norm_forward<T>(xp, wp, bp, eps, yp, hp, ip, rows, C);
    };
    if (is_f32(x)) run(0.0f);
    else run(0.0);
    return py::make_tuple(y, x_hat, inv);
}

py::tuple py_layer_norm_backward(const py::array& dy, const py::array& x_hat, const py::array& weight,
                                 const py::array& inv_std) {
    const char* fn = "layer_norm_backward";
    check_float_array(fn, "dy", dy);
    check_float_array(fn, "x_hat", x_hat);
    check_same(fn, "dy", dy, "x_hat", x_hat);
    check_param(fn, "weight", weight, x_hat);
    check_row_stat(fn, "inv_std", inv_std, x_hat);
    py::array dx = empty_like(x_hat), dw = empty_like(weight), db = empty_like(weight);
    auto [rows, C] = rows_cols(x_hat);
    auto run = [&](auto zero) {
        using T = decltype(zero);
        const T *dyp = cptr<T>(dy), *hp = cptr<T>(x_hat), *wp = cptr<T>(weight), *ip = cptr<T>(inv_std);
        T *dxp = ptr<T>(dx), *dwp = ptr<T>(dw), *dbp = ptr<T>(db);
        py::gil_scoped_release release;
        if (C) layer_norm_backward<T>(dyp, hp, wp, ip, dxp, dwp, dbp, rows, C);
    };
    if (is_f32(x_hat)) run(0.0f);
    else run(0.0);
    return py::make_tuple(dx, dw, db);
}

// ---- activation: gelu, silu (elementwise, any shape)

template <void (*F32)(const float*, float*, std::int64_t), void (*F64)(const double*, double*, std::int64_t)>
py::array elementwise_forward(const char* fn, const py::array& x) {
    check_float_array(fn, "x", x);
    py::array y = empty_like(x);
    const std::int64_t n = x.size();
    if (is_f32(x)) {
        const float* xp = cptr<float>(x);
        float* yp = ptr<float>(y);
        py::gil_scoped_release release;
        if (n) F32(xp, yp, n);
    } else {
        const double* xp = cptr<double>(x);
        double* yp = ptr<double>(y);
        py::gil_scoped_release release;
        if (n) F64(xp, yp, n);
    }
    return y;
}

template <void (*F32)(const float*, const float*, float*, std::int64_t),
          void (*F64)(const double*, const double*, double*, std::int64_t)>
py::array elementwise_backward(const char* fn, const py::array& dy, const py::array& x) {
    check_float_array(fn, "dy", dy);
    check_float_array(fn, "x", x);
    check_same(fn, "dy", dy, "x", x);
    py::array dx = empty_like(x);
    const std::int64_t n = x.size();
    if (is_f32(x)) {
        const float *dyp = cptr<float>(dy), *xp = cptr<float>(x);
        float* dxp = ptr<float>(dx);
        py::gil_scoped_release release;
        if (n) F32(dyp, xp, dxp, n);
    } else {
        const double *dyp = cptr<double>(dy), *xp = cptr<double>(x);
        double* dxp = ptr<double>(dx);
        py::gil_scoped_release release;
        if (n) F64(dyp, xp, dxp, n);
    }
    return dx;
}

// ---- bpe
// Byte-level BPE (csrc/bpe.cpp). Python str arrives as its UTF-8 buffer (which lives as long as
// the str); the GIL is released around the merge loops.

std::string_view utf8_view(const char* fn, PyObject* text) {
    if (!PyUnicode_Check(text)) throw py::type_error(std::string(fn) + ": expected str");
    Py_ssize_t n = 0;
    const char* data = PyUnicode_AsUTF8AndSize(text, &n);
    if (!data) {
        PyErr_Clear();
        throw py::value_error(std::string(fn) + ": text is not valid Unicode (it holds a lone surrogate); "
                              "it cannot be encoded as UTF-8");
    }
    return std::string_view(data, static_cast<std::size_t>(n));
}

void py_bpe_set_char_classes(const py::array& table) {
    if (!table.dtype().is(py::dtype::of<std::uint8_t>()) || table.ndim() != 1 || table.shape(0) != 0x110000 ||
        !(table.flags() & py::array::c_style))
        throw py::value_error("bpe_set_char_classes: table must be a contiguous uint8 array of shape (1114112,)");
    bpe::set_char_classes(static_cast<const std::uint8_t*>(table.data()), 0x110000);
}

void check_classes(const char* fn) {
    if (!bpe::have_char_classes())
        throw py::value_error(std::string(fn) + ": call bpe_set_char_classes first (minillm.tokenizers does)");
}

py::list py_bpe_gpt2_split(const py::str& text) {
    check_classes("bpe_gpt2_split");
    const std::string_view s = utf8_view("bpe_gpt2_split", text.ptr());
    py::list out;
    for (auto [start, len] : bpe::gpt2_split(s)) out.append(py::str(s.data() + start, len));
    return out;
}

std::unique_ptr<bpe::Encoder> py_bpe_encoder_new(const py::dict& ranks) {
    std::vector<std::pair<std::string, std::int32_t>> tokens;
    tokens.reserve(ranks.size());
    for (auto item : ranks) {
        if (!py::isinstance<py::bytes>(item.first) || !py::isinstance<py::int_>(item.second))
            throw py::value_error("BPEEncoder: ranks must map bytes to int");
        const long long r = item.second.cast<long long>();
        if (r < 0 || r >= INT32_MAX) throw py::value_error("BPEEncoder: rank " + std::to_string(r) + " is out of range");
        tokens.emplace_back(item.first.cast<std::string>(), static_cast<std::int32_t>(r));
    }
    try {
        return std::make_unique<bpe::Encoder>(tokens);
    } catch (const std::invalid_argument& e) {
        throw py::value_error(std::string("BPEEncoder: ") + e.what() + "; a byte-level vocabulary needs all 256 bytes");
    }
}

py::list py_bpe_encode_gpt2(const bpe::Encoder& enc, const py::str& text) {
    check_classes("BPEEncoder.encode_gpt2");
    const std::string_view s = utf8_view("BPEEncoder.encode_gpt2", text.ptr());
    std::vector<std::int32_t> ids;
    {
        py::gil_scoped_release release;
        ids = enc.encode_gpt2(s);
    }
    return py::cast(ids);
}

py::list py_bpe_encode_gpt2_batch(const bpe::Encoder& enc, const py::list& texts, int num_threads) {
    check_classes("BPEEncoder.encode_gpt2_batch");
    if (num_threads < 1)
        throw py::value_error("BPEEncoder.encode_gpt2_batch: num_threads must be >= 1, got " + std::to_string(num_threads));
    std::vector<std::string_view> views;
    views.reserve(texts.size());
    for (auto t : texts) views.push_back(utf8_view("BPEEncoder.encode_gpt2_batch", t.ptr()));
    std::vector<std::vector<std::int32_t>> ids;
    {
        py::gil_scoped_release release;
        ids = enc.encode_gpt2_batch(views, num_threads);
    }
    return py::cast(ids);
}

py::list py_bpe_encode_pieces(const bpe::Encoder& enc, const py::list& pieces) {
    std::vector<std::string_view> views;
    views.reserve(pieces.size());
    for (auto p : pieces) views.push_back(utf8_view("BPEEncoder.encode_pieces", p.ptr()));
    std::vector<std::int32_t> ids;
    {
        py::gil_scoped_release release;
        ids = enc.encode_pieces(views);
    }
    return py::cast(ids);
}

py::list py_bpe_train(const py::list& words, const py::list& counts, std::int64_t n_merges, py::object progress) {
    if (words.size() != counts.size())
        throw py::value_error("bpe_train: words and counts must have the same length, got " +
                              std::to_string(words.size()) + " and " + std::to_string(counts.size()));
    if (n_merges < 0) throw py::value_error("bpe_train: n_merges must be >= 0, got " + std::to_string(n_merges));
    if (words.size() >= INT32_MAX) throw py::value_error("bpe_train: too many distinct words");
    std::vector<std::string> w;
    std::vector<std::int64_t> c;
    w.reserve(words.size());
    c.reserve(words.size());
    for (std::size_t i = 0; i < words.size(); ++i) {
        if (!py::isinstance<py::bytes>(words[i])) throw py::value_error("bpe_train: words must be bytes");
        w.push_back(words[i].cast<std::string>());
        const long long n = counts[i].cast<long long>();
        if (n <= 0) throw py::value_error("bpe_train: counts must be positive, got " + std::to_string(n));
        c.push_back(n);
    }
    std::function<void(std::int64_t)> report;
    if (!progress.is_none())
        report = [&progress](std::int64_t done) { py::gil_scoped_acquire acquire; progress(done); };
    std::vector<std::pair<std::int32_t, std::int32_t>> merges;
    {
        py::gil_scoped_release release;
        merges = bpe::train(w, c, n_merges, report);
    }
    return py::cast(merges);
}

// ---- unigram
// The Unigram tokenizer's lattice loops (csrc/unigram.cpp); the GIL is released around them.

std::unique_ptr<unigram::Model> py_unigram_model_new(const py::list& pieces, const py::list& scores, double unk_score,
                                                      int max_len) {
    if (pieces.size() != scores.size())
        throw py::value_error("UnigramModel: pieces and scores must have the same length, got " +
                              std::to_string(pieces.size()) + " and " + std::to_string(scores.size()));
    if (max_len < 1) throw py::value_error("UnigramModel: max_len must be >= 1, got " + std::to_string(max_len));
    std::vector<std::string> p;
    std::vector<double> s;
    for (std::size_t i = 0; i < pieces.size(); ++i) {
        p.emplace_back(utf8_view("UnigramModel", pieces[i].ptr()));
        s.push_back(scores[i].cast<double>());
    }
    return std::make_unique<unigram::Model>(std::move(p), std::move(s), unk_score, max_len);
}

py::list py_unigram_viterbi(const unigram::Model& model, const py::list& words, int exclude) {
    std::vector<std::string_view> w;
    for (auto item : words) w.push_back(utf8_view("UnigramModel.viterbi", item.ptr()));
    if (exclude < -1 || exclude >= static_cast<int>(model.size()))
        throw py::value_error("UnigramModel.viterbi: exclude must be -1 or a piece index, got " + std::to_string(exclude));
    std::vector<std::vector<int>> paths(w.size());
    {
        py::gil_scoped_release release;
        for (std::size_t i = 0; i < w.size(); ++i) paths[i] = model.viterbi(w[i], exclude);
    }
    return py::cast(paths);
}

py::tuple py_unigram_expected_counts(const unigram::Model& model, const py::list& words, const py::list& freqs) {
    if (words.size() != freqs.size())
        throw py::value_error("UnigramModel.expected_counts: words and freqs must have the same length");
    std::vector<std::string> w;
    std::vector<double> f;
    for (std::size_t i = 0; i < words.size(); ++i) {
        w.emplace_back(utf8_view("UnigramModel.expected_counts", words[i].ptr()));
        f.push_back(freqs[i].cast<double>());
    }
    std::vector<double> expected;
    double loglik;
    {
        py::gil_scoped_release release;
        loglik = model.expected_counts(w, f, expected);
    }
    return py::make_tuple(py::cast(expected), loglik);
}

// ---- gemm

bool overlaps(const py::array& x, const py::array& y) {
    const char* x0 = static_cast<const char*>(x.data());
    const char* y0 = static_cast<const char*>(y.data());
    return x.nbytes() && y.nbytes() && x0 < y0 + y.nbytes() && y0 < x0 + x.nbytes();
}

py::array py_matmul(const py::array& a, const py::array& b, bool trans_a, bool trans_b, const py::object& out,
                    bool accumulate, const py::object& bias) {
    const char* fn = "matmul";
    check_float_array(fn, "a", a);
    check_float_array(fn, "b", b);
    if (a.ndim() != 2 || b.ndim() != 2)
        throw py::value_error(std::string(fn) + ": a and b must be 2-D, got shapes " + shape_str(a) + " and " +
                              shape_str(b));
    if (!a.dtype().is(b.dtype()))
        throw py::value_error(std::string(fn) + ": a and b must have the same dtype, got " +
                              std::string(py::str(a.dtype())) + " and " + std::string(py::str(b.dtype())));
    const std::int64_t M = trans_a ? a.shape(1) : a.shape(0), K = trans_a ? a.shape(0) : a.shape(1);
    const std::int64_t Kb = trans_b ? b.shape(1) : b.shape(0), N = trans_b ? b.shape(0) : b.shape(1);
    if (K != Kb)
        throw py::value_error(std::string(fn) + ": op(a) is (" + std::to_string(M) + ", " + std::to_string(K) +
                              ") but op(b) is (" + std::to_string(Kb) + ", " + std::to_string(N) +
                              "); the inner dimensions must match (a " + shape_str(a) + ", b " + shape_str(b) +
                              ", trans_a " + (trans_a ? "True" : "False") + ", trans_b " +
                              (trans_b ? "True" : "False") + ")");
    py::array c;
    if (out.is_none()) {
        if (accumulate) throw py::value_error(std::string(fn) + ": accumulate=True needs out= to add into");
        c = py::array(a.dtype(), std::vector<py::ssize_t>{M, N});
    } else {
        if (!py::isinstance<py::array>(out)) throw py::type_error(std::string(fn) + ": out must be a NumPy array");
        c = out.cast<py::array>();
        check_float_array(fn, "out", c);
        if (!c.dtype().is(a.dtype()) || c.ndim() != 2 || c.shape(0) != M || c.shape(1) != N)
            throw py::value_error(std::string(fn) + ": out must be (" + std::to_string(M) + ", " + std::to_string(N) +
                                  ") with dtype " + std::string(py::str(a.dtype())) + ", got " + shape_str(c) + " " +
                                  std::string(py::str(c.dtype())));
        if (!c.writeable()) throw py::value_error(std::string(fn) + ": out is read-only");
        if (overlaps(c, a) || overlaps(c, b)) throw py::value_error(std::string(fn) + ": out must not overlap a or b");
    }
    py::array bias_array;
    const bool has_bias = !bias.is_none();
    if (has_bias) {
        if (!py::isinstance<py::array>(bias)) throw py::type_error(std::string(fn) + ": bias must be a NumPy array");
        bias_array = bias.cast<py::array>();
        check_float_array(fn, "bias", bias_array);
        if (!bias_array.dtype().is(a.dtype()) || bias_array.ndim() != 1 || bias_array.shape(0) != N)
            throw py::value_error(std::string(fn) + ": bias must be (" + std::to_string(N) + ",) with dtype " +
                                  std::string(py::str(a.dtype())) + ", got " + shape_str(bias_array));
    }
    if (a.dtype().is(py::dtype::of<float>())) {
        const float *ap = cptr<float>(a), *bp = cptr<float>(b), *biasp = has_bias ? cptr<float>(bias_array) : nullptr;
        float* cp = ptr<float>(c);
        py::gil_scoped_release release;
        gemm<float>(ap, bp, cp, M, N, K, trans_a, trans_b, accumulate, biasp);
    } else {
        const double *ap = cptr<double>(a), *bp = cptr<double>(b);
        const double* biasp = has_bias ? cptr<double>(bias_array) : nullptr;
        double* cp = ptr<double>(c);
        py::gil_scoped_release release;
        gemm<double>(ap, bp, cp, M, N, K, trans_a, trans_b, accumulate, biasp);
    }
    return c;
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

// ---- quant: matmul on INT8 / INT4 weights

void check_array(const char* fn, const char* name, const py::array& a, const py::dtype& dtype, const char* dtype_name,
                 py::ssize_t ndim) {
    if (!a.dtype().is(dtype))
        throw py::value_error(std::string(fn) + ": " + name + " must be " + dtype_name + ", got " +
                              std::string(py::str(a.dtype())));
    if (!(a.flags() & py::array::c_style))
        throw py::value_error(std::string(fn) + ": " + name + " must be C-contiguous (use np.ascontiguousarray)");
    if (a.ndim() != ndim)
        throw py::value_error(std::string(fn) + ": " + name + " must have " + std::to_string(ndim) +
                              " dimensions, got shape " + shape_str(a));
}

void check_shape2(const char* fn, const char* name, const py::array& a, std::int64_t rows, std::int64_t cols) {
    if (a.shape(0) != rows || a.shape(1) != cols)
        throw py::value_error(std::string(fn) + ": " + name + " must be (" + std::to_string(rows) + ", " +
                              std::to_string(cols) + "), got " + shape_str(a));
}

py::tuple py_quantize_activations(const py::array& x) {
    const char* fn = "quantize_activations";
    check_array(fn, "x", x, py::dtype::of<float>(), "float32", 2);
    const std::int64_t M = x.shape(0), K = x.shape(1), G = (K + 31) / 32;
    py::array_t<std::int8_t> xq({M, K});
    py::array_t<float> xd({M, G}), xs({M, G});
    const float* xp = cptr<float>(x);
    std::int8_t* xqp = xq.mutable_data();
    float *xdp = xd.mutable_data(), *xsp = xs.mutable_data();
    {
        py::gil_scoped_release release;
        quantize_activations(xp, M, K, xqp, xdp, xsp);
    }
    return py::make_tuple(xq, xd, xs);
}

py::array py_quant_matmul(const py::array& x, int scheme_id, const py::array& q, const py::array& scale,
                          const py::object& min, const py::object& bias) {
    const char* fn = "quant_matmul";
    if (scheme_id < 0 || scheme_id > 3) throw py::value_error("quant_matmul: scheme must be 0..3 (int8, q8_0, q4_0, q4_1)");
    const auto scheme = static_cast<QuantScheme>(scheme_id);
    const bool int4 = scheme == QuantScheme::q4_0 || scheme == QuantScheme::q4_1;
    check_array(fn, "x", x, py::dtype::of<float>(), "float32", 2);
    if (int4) check_array(fn, "q", q, py::dtype::of<std::uint8_t>(), "uint8 (two 4-bit values per byte)", 2);
    else check_array(fn, "q", q, py::dtype::of<std::int8_t>(), "int8", 2);
    const std::int64_t M = x.shape(0), K = x.shape(1), N = q.shape(0);
    if (K < 1) throw py::value_error("quant_matmul: x must have at least one column");
    if (scheme != QuantScheme::int8 && K % 32)
        throw py::value_error("quant_matmul: x has " + std::to_string(K) +
                              " columns; group-wise schemes need a multiple of 32");
    check_shape2(fn, "q", q, N, int4 ? K / 2 : K);
    if (scheme == QuantScheme::int8) {
        check_array(fn, "scale", scale, py::dtype::of<float>(), "float32", 1);
        if (scale.shape(0) != N)
            throw py::value_error("quant_matmul: scale must be (" + std::to_string(N) + ",), got " + shape_str(scale));
    } else {
        check_array(fn, "scale", scale, py::dtype::of<float>(), "float32", 2);
        check_shape2(fn, "scale", scale, N, K / 32);
    }
    py::array min_array, bias_array;
    if (scheme == QuantScheme::q4_1) {
        if (min.is_none()) throw py::value_error("quant_matmul: q4_1 needs min");
        min_array = min.cast<py::array>();
        check_array(fn, "min", min_array, py::dtype::of<float>(), "float32", 2);
        check_shape2(fn, "min", min_array, N, K / 32);
    } else if (!min.is_none()) {
        throw py::value_error("quant_matmul: min is only for q4_1");
    }
    if (!bias.is_none()) {
        bias_array = bias.cast<py::array>();
        check_array(fn, "bias", bias_array, py::dtype::of<float>(), "float32", 1);
        if (bias_array.shape(0) != N)
            throw py::value_error("quant_matmul: bias must be (" + std::to_string(N) + ",), got " + shape_str(bias_array));
    }
    py::array_t<float> y({M, N});
    const float* xp = cptr<float>(x);
    const auto* qp = static_cast<const std::uint8_t*>(q.data());
    const float* sp = cptr<float>(scale);
    // (a default-constructed py::array is an empty array, not null: test the arguments instead)
    const float* mp = min.is_none() ? nullptr : cptr<float>(min_array);
    const float* bp = bias.is_none() ? nullptr : cptr<float>(bias_array);
    float* yp = y.mutable_data();
    {
        py::gil_scoped_release release;
        if (M && N) quant_matmul(scheme, xp, M, K, qp, sp, mp, bp, N, yp);
    }
    return y;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
    m.doc() = "minillm native kernels (C++, OpenMP, AVX2/FMA with a scalar fallback)";

    m.def("softmax_forward", &py_softmax_forward, py::arg("x"),
          "Softmax over the last axis of a C-contiguous float32/float64 array.");
    m.def("softmax_backward", &py_softmax_backward, py::arg("dy"), py::arg("y"),
          "dx = y * (dy - sum(dy * y, axis=-1)) for y = softmax(x).");

    // ---- gemm
    m.def("matmul", &py_matmul, py::arg("a"), py::arg("b"), py::arg("trans_a") = false, py::arg("trans_b") = false,
          py::arg("out") = py::none(), py::arg("accumulate") = false, py::arg("bias") = py::none(),
          "C = op(a) op(b) (+ out when accumulate) (+ bias on every row); op transposes when trans_* is set. "
          "2-D, C-contiguous float32/float64.");

    // ---- softmax: log-softmax
    m.def("log_softmax_forward", &py_log_softmax_forward, py::arg("x"),
          "y = x - logsumexp(x) over the last axis of a C-contiguous float32/float64 array.");
    m.def("log_softmax_backward", &py_log_softmax_backward, py::arg("dy"), py::arg("y"),
          "dx = dy - exp(y) * sum(dy, axis=-1) for y = log_softmax(x).");

    // ---- loss: fused cross-entropy
    m.def("cross_entropy_forward", &py_cross_entropy_forward, py::arg("logits"), py::arg("targets"),
          py::arg("ignore_index"),
          "(nll (N,), g (N, V)): per-row -log softmax(logits)[target] and g = softmax - onehot, both 0 on rows "
          "whose target is ignore_index. targets: int64 in [0, V) or ignore_index.");
    m.def("cross_entropy_backward", &py_cross_entropy_backward, py::arg("g"), py::arg("row_scale"),
          "dlogits = g * row_scale[:, None].");

    // ---- norm
    m.def("rms_norm_forward", &py_rms_norm_forward, py::arg("x"), py::arg("weight"), py::arg("eps"),
          "(y, inv_rms): y = x * inv_rms * weight, inv_rms = 1/sqrt(mean(x^2, -1) + eps) of shape "
          "x.shape[:-1] + (1,).");
    m.def("rms_norm_backward", &py_rms_norm_backward, py::arg("dy"), py::arg("x"), py::arg("weight"),
          py::arg("inv_rms"), "(dx, dweight) of rms_norm_forward.");
    m.def("layer_norm_forward", &py_layer_norm_forward, py::arg("x"), py::arg("weight"), py::arg("bias"),
          py::arg("eps"), "(y, x_hat, inv_std): y = x_hat * weight + bias, x_hat = (x - mean) * inv_std.");
    m.def("layer_norm_backward", &py_layer_norm_backward, py::arg("dy"), py::arg("x_hat"), py::arg("weight"),
          py::arg("inv_std"), "(dx, dweight, dbias) of layer_norm_forward.");

    // ---- activation
    m.def("gelu_forward", [](const py::array& x) {
        return elementwise_forward<gelu_forward<float>, gelu_forward<double>>("gelu_forward", x);
    }, py::arg("x"), "GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).");
    m.def("gelu_backward", [](const py::array& dy, const py::array& x) {
        return elementwise_backward<gelu_backward<float>, gelu_backward<double>>("gelu_backward", dy, x);
    }, py::arg("dy"), py::arg("x"), "dx = dy * gelu'(x).");
    m.def("silu_forward", [](const py::array& x) {
        return elementwise_forward<silu_forward<float>, silu_forward<double>>("silu_forward", x);
    }, py::arg("x"), "SiLU: x * sigmoid(x).");
    m.def("silu_backward", [](const py::array& dy, const py::array& x) {
        return elementwise_backward<silu_backward<float>, silu_backward<double>>("silu_backward", dy, x);
    }, py::arg("dy"), py::arg("x"), "dx = dy * sigmoid(x) (1 + x (1 - sigmoid(x))).");
    // ---- bpe
    m.def("bpe_set_char_classes", &py_bpe_set_char_classes, py::arg("table"),
          "Set the class (0 other, 1 \\p{L}, 2 \\p{N}, 3 \\s) of every code point for the GPT-2 pre-tokenizer.");
    m.def("bpe_gpt2_split", &py_bpe_gpt2_split, py::arg("text"), "GPT-2's pre-tokens of text (as regex.findall).");
    m.def("bpe_train", &py_bpe_train, py::arg("words"), py::arg("counts"), py::arg("n_merges"),
          py::arg("progress") = py::none(),
          "Byte-level BPE merges [(a, b), ...] creating ids 256, 257, ... from word bytes and counts.");
    py::class_<bpe::Encoder>(m, "BPEEncoder", "Byte-level BPE encoder over a {token bytes: rank} table.")
        .def(py::init(&py_bpe_encoder_new), py::arg("ranks"))
        .def("encode_gpt2", &py_bpe_encode_gpt2, py::arg("text"), "Ids of text, split by GPT-2's pre-tokenizer.")
        .def("encode_gpt2_batch", &py_bpe_encode_gpt2_batch, py::arg("texts"), py::arg("num_threads"),
             "encode_gpt2 of each text, on num_threads OpenMP threads (GIL released).")
        .def("encode_pieces", &py_bpe_encode_pieces, py::arg("pieces"), "Ids of already split pre-tokens.")
        .def("__len__", &bpe::Encoder::size);

    // ---- unigram
    py::class_<unigram::Model>(m, "UnigramModel", "A Unigram tokenizer's pieces and log-probabilities.")
        .def(py::init(&py_unigram_model_new), py::arg("pieces"), py::arg("scores"), py::arg("unk_score"),
             py::arg("max_len"))
        .def("viterbi", &py_unigram_viterbi, py::arg("words"), py::arg("exclude") = -1,
             "Best path of each word: piece indices, -1 for an unknown character.")
        .def("expected_counts", &py_unigram_expected_counts, py::arg("words"), py::arg("freqs"),
             "(expected uses of each piece weighted by freqs, sum of freq * log Z) by forward-backward.")
        .def("__len__", &unigram::Model::size);
    // ---- attention
    m.def("attention_forward", &py_attention_forward, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("causal"),
          py::arg("window"), py::arg("alibi_slopes"), py::arg("key_padding_mask"),
          "Flash-style attention: returns (out (B, H, T, D), lse (B, H, T)). window 0 = none; alibi_slopes (H,) "
          "of q's dtype or None; key_padding_mask (B, S) bool (True = keep) or None.");
    m.def("attention_backward", &py_attention_backward, py::arg("dout"), py::arg("q"), py::arg("k"), py::arg("v"),
          py::arg("out"), py::arg("lse"), py::arg("causal"), py::arg("window"), py::arg("alibi_slopes"),
          py::arg("key_padding_mask"), "Gradients (dq, dk, dv) of attention_forward, recomputing scores tile by tile.");

    // ---- quant
    m.def("quantize_activations", &py_quantize_activations, py::arg("x"),
          "x (M, K) float32 -> (xq int8 (M, K), xd (M, G), xs (M, G)): int8 per group of 32 (Q8_0).");
    m.def("quant_matmul", &py_quant_matmul, py::arg("x"), py::arg("scheme"), py::arg("q"), py::arg("scale"),
          py::arg("min") = py::none(), py::arg("bias") = py::none(),
          "y (M, N) = x W^T [+ bias] on quantized W; scheme 0..3 = int8, q8_0, q4_0, q4_1.");

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
