// GELU (tanh approximation, GPT-2) and SiLU, forward and backward, elementwise over n values.
// Both are written with the logistic sigmoid s(z) = 1 / (1 + exp(-z)):
//   gelu:  y = 0.5 x (1 + tanh(u)) = x s(2u),  u = c (x + a x^3),  c = sqrt(2/pi), a = 0.044715
//          dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3a x^2)          (t = tanh(u))
//                = s + 2 x s (1 - s) c (1 + 3a x^2)                      (1 + t = 2s, 1 - t^2 = 4 s (1 - s))
//   silu:  y = x s(x),   dy/dx = s (1 + x (1 - s))
// s and 1 - s come from e = exp(-|z|) <= 1: for z >= 0, s = 1 / (1 + e) and 1 - s = e / (1 + e),
// mirrored for z < 0, so exp never overflows and both keep full relative precision in the tails.
// GELU clamps x to [-30, 30] inside s and the derivative: beyond, 2u > 1900 and s is exactly 0 or 1
// even in float64 (exp underflows below -745), and x^3 can no longer overflow into inf * 0 = NaN.
// NaN inputs stay NaN. Bindings at the bottom: gelu_forward, gelu_backward, silu_forward, silu_backward.
#include <algorithm>
#include <cmath>

#include "binding.h"
#include "parallel.h"
#include "rowwise_avx512.h"
#include "simd.h"

namespace minillm {

constexpr std::int64_t kBlock = 4096;   // elements per OpenMP work item

// ---- scalar twins ----

// s = sigmoid(z) and oms = 1 - s, both without overflow or cancellation.
template <typename T>
static inline void sigmoid_pair(T z, T& s, T& oms) {
    const T e = std::exp(-std::abs(z)), r = T(1) / (T(1) + e);
    s = z >= 0 ? r : e * r;
    oms = z >= 0 ? e * r : r;
}

template <typename T>
static inline T gelu_clamp(T x) {   // NaN stays NaN (comparisons with NaN are false)
    return x > T(kGeluClamp) ? T(kGeluClamp) : (x < T(-kGeluClamp) ? T(-kGeluClamp) : x);
}

template <typename T>
static void gelu_forward_scalar(const T* x, T* y, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) {
        const T xc = gelu_clamp(x[i]);
        const T two_u = T(2 * kGeluC) * xc * (T(1) + T(kGeluA) * xc * xc);   // 2u = 2c (x + a x^3)
        T s, oms;
        sigmoid_pair(two_u, s, oms);
        y[i] = x[i] * s;                                                        // x s(2u)
    }
}

template <typename T>
static void gelu_backward_scalar(const T* dy, const T* x, T* dx, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) {
        const T xc = gelu_clamp(x[i]), x2 = xc * xc;
        const T two_u = T(2 * kGeluC) * xc * (T(1) + T(kGeluA) * x2);
        T s, oms;
        sigmoid_pair(two_u, s, oms);
        // d/dx [x s(2u)] = s + x s'(2u) d(2u)/dx,  s' = s (1 - s),  d(2u)/dx = 2c (1 + 3a x^2)
        const T d_two_u = T(2 * kGeluC) * (T(1) + T(3 * kGeluA) * x2);
        T grad = s;                       // term 1: s(2u)
        grad += xc * (s * oms) * d_two_u;  // term 2: x s'(2u) d(2u)/dx
        dx[i] = dy[i] * grad;
    }
}

template <typename T>
static void silu_forward_scalar(const T* x, T* y, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) {
        T s, oms;
        sigmoid_pair(x[i], s, oms);
        y[i] = x[i] * s;
    }
}

template <typename T>
static void silu_backward_scalar(const T* dy, const T* x, T* dx, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) {
        T s, oms;
        sigmoid_pair(x[i], s, oms);
        // d/dx [x s(x)] = s + x s (1 - s)
        T grad = s;                 // term 1: s(x)
        grad += x[i] * (s * oms);   // term 2: x s'(x)
        dx[i] = dy[i] * grad;
    }
}

// ---- AVX2/FMA float32: 8 lanes of the same formulas; tails of < 8 go to the scalar twin ----
#if MINILLM_X86
MINILLM_AVX2 static inline void sigmoid_pair8(__m256 z, __m256& s, __m256& oms) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 e = exp256(_mm256_or_ps(z, sign));   // exp(-|z|)
    __m256 r = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_add_ps(_mm256_set1_ps(1.0f), e));
    __m256 er = _mm256_mul_ps(e, r);
    __m256 neg = _mm256_cmp_ps(z, _mm256_setzero_ps(), _CMP_LT_OQ);
    s = _mm256_blendv_ps(r, er, neg);
    oms = _mm256_blendv_ps(er, r, neg);
}

MINILLM_AVX2 static inline __m256 gelu_clamp8(__m256 x) {   // max/min return the 2nd operand on NaN
    return _mm256_min_ps(_mm256_set1_ps(float(kGeluClamp)), _mm256_max_ps(_mm256_set1_ps(float(-kGeluClamp)), x));
}

MINILLM_AVX2 static inline __m256 gelu_z8(__m256 xc) {   // 2u = 2c x (1 + a x^2)
    __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(float(kGeluA)), _mm256_mul_ps(xc, xc), _mm256_set1_ps(1.0f));
    return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(float(2 * kGeluC)), xc), p);
}

MINILLM_AVX2 static void gelu_forward_avx2(const float* x, float* y, std::int64_t n) {
    std::int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i), s, oms;
        sigmoid_pair8(gelu_z8(gelu_clamp8(v)), s, oms);
        _mm256_storeu_ps(y + i, _mm256_mul_ps(v, s));
    }
    gelu_forward_scalar(x + i, y + i, n - i);
}

MINILLM_AVX2 static void gelu_backward_avx2(const float* dy, const float* x, float* dx, std::int64_t n) {
    std::int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 xc = gelu_clamp8(_mm256_loadu_ps(x + i)), s, oms;
        sigmoid_pair8(gelu_z8(xc), s, oms);
        // s + 2c x s (1 - s) (1 + 3a x^2)
        __m256 q = _mm256_fmadd_ps(_mm256_set1_ps(float(3 * kGeluA)), _mm256_mul_ps(xc, xc), _mm256_set1_ps(1.0f));
        __m256 t = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(float(2 * kGeluC)), xc), _mm256_mul_ps(s, oms));
        __m256 grad = _mm256_fmadd_ps(t, q, s);
        _mm256_storeu_ps(dx + i, _mm256_mul_ps(_mm256_loadu_ps(dy + i), grad));
    }
    gelu_backward_scalar(dy + i, x + i, dx + i, n - i);
}

MINILLM_AVX2 static void silu_forward_avx2(const float* x, float* y, std::int64_t n) {
    std::int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i), s, oms;
        sigmoid_pair8(v, s, oms);
        _mm256_storeu_ps(y + i, _mm256_mul_ps(v, s));
    }
    silu_forward_scalar(x + i, y + i, n - i);
}

MINILLM_AVX2 static void silu_backward_avx2(const float* dy, const float* x, float* dx, std::int64_t n) {
    std::int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i), s, oms;
        sigmoid_pair8(v, s, oms);
        __m256 grad = _mm256_mul_ps(s, _mm256_fmadd_ps(v, oms, _mm256_set1_ps(1.0f)));   // s (1 + x (1 - s))
        _mm256_storeu_ps(dx + i, _mm256_mul_ps(_mm256_loadu_ps(dy + i), grad));
    }
    silu_backward_scalar(dy + i, x + i, dx + i, n - i);
}
#endif

// ---- dispatch: the best version for T on this CPU, one block at a time

// The path this family takes now (minillm.build_info()["kernel_paths"]).
Isa activation_isa() { return float_family_isa(); }

template <typename T>
static void gelu_forward_block(Isa isa, const T* x, T* y, std::int64_t n) {
    MINILLM_USE_AVX512(T, isa, rows512::gelu_forward(x, y, n));
    MINILLM_USE_AVX2(T, isa, gelu_forward_avx2(x, y, n));
    gelu_forward_scalar(x, y, n);
}

template <typename T>
static void gelu_backward_block(Isa isa, const T* dy, const T* x, T* dx, std::int64_t n) {
    MINILLM_USE_AVX512(T, isa, rows512::gelu_backward(dy, x, dx, n));
    MINILLM_USE_AVX2(T, isa, gelu_backward_avx2(dy, x, dx, n));
    gelu_backward_scalar(dy, x, dx, n);
}

template <typename T>
static void silu_forward_block(Isa isa, const T* x, T* y, std::int64_t n) {
    MINILLM_USE_AVX512(T, isa, rows512::silu_forward(x, y, n));
    MINILLM_USE_AVX2(T, isa, silu_forward_avx2(x, y, n));
    silu_forward_scalar(x, y, n);
}

template <typename T>
static void silu_backward_block(Isa isa, const T* dy, const T* x, T* dx, std::int64_t n) {
    MINILLM_USE_AVX512(T, isa, rows512::silu_backward(dy, x, dx, n));
    MINILLM_USE_AVX2(T, isa, silu_backward_avx2(dy, x, dx, n));
    silu_backward_scalar(dy, x, dx, n);
}

// ---- kernels: elementwise over n values, OpenMP over blocks of kBlock elements

template <typename F>
static void for_blocks(std::int64_t n, F&& body) {   // body(offset, length)
    const std::int64_t blocks = (n + kBlock - 1) / kBlock;
    parallel_rows(blocks, kBlock, [&](std::int64_t b) { body(b * kBlock, std::min(kBlock, n - b * kBlock)); });
}

template <typename T>
void gelu_forward(const T* x, T* y, std::int64_t n) {
    const Isa isa = simd_isa<T>();
    for_blocks(n, [&](std::int64_t o, std::int64_t len) { gelu_forward_block(isa, x + o, y + o, len); });
}

template <typename T>
void gelu_backward(const T* dy, const T* x, T* dx, std::int64_t n) {
    const Isa isa = simd_isa<T>();
    for_blocks(n, [&](std::int64_t o, std::int64_t len) { gelu_backward_block(isa, dy + o, x + o, dx + o, len); });
}

template <typename T>
void silu_forward(const T* x, T* y, std::int64_t n) {
    const Isa isa = simd_isa<T>();
    for_blocks(n, [&](std::int64_t o, std::int64_t len) { silu_forward_block(isa, x + o, y + o, len); });
}

template <typename T>
void silu_backward(const T* dy, const T* x, T* dx, std::int64_t n) {
    const Isa isa = simd_isa<T>();
    for_blocks(n, [&](std::int64_t o, std::int64_t len) { silu_backward_block(isa, dy + o, x + o, dx + o, len); });
}

// ---- bindings: any shape (at least one dimension), elementwise

// y = f(x); `kernel` is a generic lambda over the kernel template, instantiated for x's dtype.
template <typename Kernel>
static py::array elementwise_forward(const char* fn, const py::array& x, Kernel kernel) {
    const Check check(fn);
    check.floating("x", x);
    py::array y = empty_like(x);
    const std::int64_t n = x.size();
    dispatch_float(x, [&](auto zero) {
        using T = decltype(zero);
        const T* xp = data<T>(x);
        T* yp = mutable_data<T>(y);
        py::gil_scoped_release release;
        if (n) kernel(xp, yp, n);
    });
    return y;
}

// dx = dy * f'(x).
template <typename Kernel>
static py::array elementwise_backward(const char* fn, const py::array& dy, const py::array& x, Kernel kernel) {
    const Check check(fn);
    check.floating("dy", dy);
    check.floating("x", x);
    check.same_as("dy", dy, "x", x);
    py::array dx = empty_like(x);
    const std::int64_t n = x.size();
    dispatch_float(x, [&](auto zero) {
        using T = decltype(zero);
        const T *dyp = data<T>(dy), *xp = data<T>(x);
        T* dxp = mutable_data<T>(dx);
        py::gil_scoped_release release;
        if (n) kernel(dyp, xp, dxp, n);
    });
    return dx;
}

void bind_activation(py::module_& m) {
    m.def("gelu_forward", [](const py::array& x) {
        return elementwise_forward("gelu_forward", x, [](auto... a) { gelu_forward(a...); });
    }, py::arg("x"), "GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).");
    m.def("gelu_backward", [](const py::array& dy, const py::array& x) {
        return elementwise_backward("gelu_backward", dy, x, [](auto... a) { gelu_backward(a...); });
    }, py::arg("dy"), py::arg("x"), "dx = dy * gelu'(x).");
    m.def("silu_forward", [](const py::array& x) {
        return elementwise_forward("silu_forward", x, [](auto... a) { silu_forward(a...); });
    }, py::arg("x"), "SiLU: x * sigmoid(x).");
    m.def("silu_backward", [](const py::array& dy, const py::array& x) {
        return elementwise_backward("silu_backward", dy, x, [](auto... a) { silu_backward(a...); });
    }, py::arg("dy"), py::arg("x"), "dx = dy * sigmoid(x) (1 + x (1 - sigmoid(x))).");
}

}  // namespace minillm
