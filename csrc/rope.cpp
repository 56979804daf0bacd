// Rotary position embedding, rotate-half convention (GPT-NeoX, Llama): the contract is
// minillm/kernels/reference/rope.py. x (B, H, T, D) with D = 2h; cos, sin (T, D) shared by the
// batch, or (B, 1, T, D) per batch row (left-padded prompts). Pair (x_i, x_{i+h}) turns by its angle:
//     forward   y_i = x_i cos_i - x_{i+h} sin_i          y_{i+h} = x_{i+h} cos_{i+h} + x_i sin_{i+h}
//     backward  dx_i = dy_i cos_i + dy_{i+h} sin_{i+h}   dx_{i+h} = dy_{i+h} cos_{i+h} - dy_i sin_i
// (a rotation's transpose is the rotation back). The loops are plain: the compiler vectorises them,
// and the work is a few flops per element read. Rows (b, h, t) are split over OpenMP threads.
// Bindings at the bottom: rope_forward, rope_backward.
#include <cstdint>

#include "binding.h"
#include "parallel.h"

namespace minillm {

using std::int64_t;

namespace {

// One row of D values at table row c, s: forward (sign +1) or backward (sign -1, the transpose).
template <typename T>
void rotate_row(const T* x, const T* c, const T* s, T* y, int64_t D, bool backward) {
    const int64_t h = D / 2;
    if (!backward) {
        for (int64_t i = 0; i < h; ++i) {
            y[i] = x[i] * c[i] - x[i + h] * s[i];
            y[i + h] = x[i + h] * c[i + h] + x[i] * s[i + h];
        }
    } else {
        for (int64_t i = 0; i < h; ++i) {
            y[i] = x[i] * c[i] + x[i + h] * s[i + h];
            y[i + h] = x[i + h] * c[i + h] - x[i] * s[i];
        }
    }
}

// x, y (B, H, T, D); cos, sin (T, D), or (B, T, D) when per_batch.
template <typename T>
void rope(const T* x, const T* cos, const T* sin, T* y, int64_t B, int64_t H, int64_t Tn, int64_t D, bool per_batch,
          bool backward) {
    parallel_rows(B * H * Tn, D, [&](int64_t r) {
        const int64_t t = r % Tn, b = r / (H * Tn);
        const int64_t table = (per_batch ? b * Tn + t : t) * D;
        rotate_row(x + r * D, cos + table, sin + table, y + r * D, D, backward);
    });
}

py::array py_rope(const char* fn, const py::array& x, const py::array& cos, const py::array& sin, bool backward) {
    const Check check(fn);
    const char* xname = backward ? "dy" : "x";
    check.floating(xname, x);
    check.floating("cos", cos);
    check.floating("sin", sin);
    check.ndim(xname, x, 4, "(B, H, T, D)");
    const int64_t B = x.shape(0), H = x.shape(1), Tn = x.shape(2), D = x.shape(3);
    if (D % 2) check.fail(std::string(xname) + " has shape " + shape_str(x) + "; the head dim D must be even");
    check.same_as("sin", sin, "cos", cos);
    check.dtype_of("cos", cos, xname, x);
    const bool per_batch = cos.ndim() == 4;
    if (per_batch)
        check.shape("cos", cos, {B, 1, Tn, D}, xname, x, "(T, D), or (B, 1, T, D) per batch row");
    else
        check.shape("cos", cos, {Tn, D}, xname, x, "(T, D), or (B, 1, T, D) per batch row");
    py::array y = empty_like(x);
    dispatch_float(x, [&](auto zero) {
        using T = decltype(zero);
        const T *xp = data<T>(x), *cp = data<T>(cos), *sp = data<T>(sin);
        T* yp = mutable_data<T>(y);
        py::gil_scoped_release release;
        rope(xp, cp, sp, yp, B, H, Tn, D, per_batch, backward);
    });
    return y;
}

}  // namespace

void bind_rope(py::module_& m) {
    m.def("rope_forward", [](const py::array& x, const py::array& cos, const py::array& sin) {
        return py_rope("rope_forward", x, cos, sin, false);
    }, py::arg("x"), py::arg("cos"), py::arg("sin"),
          "y = x * cos + rotate_half(x) * sin; x (B, H, T, D), cos and sin (T, D) or (B, 1, T, D).");
    m.def("rope_backward", [](const py::array& dy, const py::array& cos, const py::array& sin) {
        return py_rope("rope_backward", dy, cos, sin, true);
    }, py::arg("dy"), py::arg("cos"), py::arg("sin"), "dx of rope_forward: the rotation back.");
}

}  // namespace minillm
