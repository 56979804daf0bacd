// The AdamW update of one parameter, in place and in one pass (minillm/kernels/reference/optim.py
// is the contract; torch.optim.AdamW's formula):
//     p <- p * (1 - lr * wd)                                   (decoupled weight decay)
//     m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g g
//     p <- p - step_size * m / (sqrt(v) / bias2 + eps)         step_size = lr / (1 - b1^t), bias2 = sqrt(1 - b2^t)
// NumPy spends one pass over memory (and a temporary array) per operator; here every element is
// read and written once. The coefficients are rounded to the parameter's dtype first and the
// operations run in the reference's order, so both give the same bits. Binding at the bottom:
// adamw_step.
#include <cmath>
#include <cstdint>

#include "binding.h"
#include "parallel.h"

namespace minillm {

namespace {

template <typename T>
struct AdamW {
    T b1, one_minus_b1, b2, one_minus_b2, decay, step_size, bias2, eps;
    bool decays;
};

template <typename T>
void adamw_step(T* p, const T* g, T* m, T* v, std::int64_t n, const AdamW<T>& c) {
    constexpr std::int64_t kChunk = 4096;
    parallel_rows((n + kChunk - 1) / kChunk, kChunk, [&](std::int64_t chunk) {
        const std::int64_t end = std::min(n, (chunk + 1) * kChunk);
        for (std::int64_t i = chunk * kChunk; i < end; ++i) {
            const T gi = g[i];
            m[i] = m[i] * c.b1 + c.one_minus_b1 * gi;
            v[i] = v[i] * c.b2 + c.one_minus_b2 * gi * gi;
            T pi = c.decays ? p[i] * c.decay : p[i];
            p[i] = pi - c.step_size * m[i] / (std::sqrt(v[i]) / c.bias2 + c.eps);
        }
    });
}

void py_adamw_step(py::array& p, const py::array& g, py::array& m, py::array& v, double lr, double beta1,
                   double beta2, double eps, double weight_decay, std::int64_t step) {
    const Check check("adamw_step");
    check.floating("p", p);
    check.same_as("g", g, "p", p);
    check.same_as("m", m, "p", p);
    check.same_as("v", v, "p", p);
    check.floating("g", g);
    check.floating("m", m);
    check.floating("v", v);
    if (!p.writeable() || !m.writeable() || !v.writeable()) check.fail("p, m and v must be writeable");
    if (step < 1) check.fail("step must be >= 1 (the count of updates including this one), got " + std::to_string(step));
    dispatch_float(p, [&](auto zero) {
        using T = decltype(zero);
        const AdamW<T> c{T(beta1), T(1 - beta1), T(beta2), T(1 - beta2), T(1 - lr * weight_decay),
                         T(lr / (1 - std::pow(beta1, double(step)))), T(std::sqrt(1 - std::pow(beta2, double(step)))),
                         T(eps), weight_decay != 0};
        T *pp = mutable_data<T>(p), *mp = mutable_data<T>(m), *vp = mutable_data<T>(v);
        const T* gp = data<T>(g);
        const std::int64_t n = p.size();
        py::gil_scoped_release release;
        adamw_step(pp, gp, mp, vp, n, c);
    });
}

}  // namespace

void bind_optim(py::module_& m) {
    m.def("adamw_step", &py_adamw_step, py::arg("p"), py::arg("g"), py::arg("m"), py::arg("v"), py::arg("lr"),
          py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"), py::arg("step"),
          "One AdamW update of p, m and v in place, from the gradient g (all one shape and dtype, C-contiguous); "
          "step counts the updates including this one.");
}

}  // namespace minillm
