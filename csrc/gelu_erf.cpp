// GELU in its exact form (BERT's), forward and backward, elementwise over n values:
//   y = x Phi(x),  Phi(x) = 0.5 erfc(-x / sqrt(2))          (the normal CDF)
//   dy/dx = Phi(x) + x phi(x),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
// Phi is taken from erfc, never as 0.5 (1 + erf), so that Phi(x) keeps its relative precision for
// x << 0, where 1 + erf(x / sqrt(2)) would cancel.
//
// The scalar twin calls std::erfc and std::exp (float32 in double, then rounded). The AVX2 version
// uses the Chebyshev fit of Numerical Recipes (erfcc), relative error < 1.1e-7 for every z >= 0:
//   erfc(z) = t exp(-z^2 + P(t)),  t = 1 / (1 + z/2),  P a polynomial of degree 9
// with z^2 = x^2 / 2 = hi + lo split exactly by an FMA (from x, not from the rounded z), so
// exp(-z^2) = exp(-hi) (1 - lo) keeps full precision even when z^2 is large (rounding z or z^2 would
// cost |z^2| ulp). phi(x) = exp(-z^2) / sqrt(2 pi) reuses exp(-hi).
// The derivative clamps x to [-40, 40] (beyond, Phi is 0 or 1 and phi 0 even in float64), so x = +-inf gives
// 1 and 0; the forward gives x Phi(x): inf at +inf, NaN (inf * 0) at -inf. NaN stays NaN.
// Bindings at the bottom: gelu_erf_forward, gelu_erf_backward.
#include <algorithm>
#include <cmath>

#include "binding.h"
#include "parallel.h"
#include "simd.h"

namespace minillm {

constexpr double kSqrtHalf = 0.70710678118654752440;      // 1 / sqrt(2)
constexpr double kInvSqrt2Pi = 0.39894228040143267794;    // 1 / sqrt(2 pi)
constexpr double kErfClamp = 40.0;         // beyond, Phi is 0 or 1 and phi 0 even in float64
constexpr std::int64_t kErfBlock = 4096;                  // elements per OpenMP work item

// ---- scalar twins (double arithmetic; float32 is rounded once at the end)

static inline double erf_clamp(double x) {   // NaN stays NaN (comparisons with NaN are false)
    return x > kErfClamp ? kErfClamp : (x < -kErfClamp ? -kErfClamp : x);
}

static inline double normal_cdf(double x) { return 0.5 * std::erfc(-x * kSqrtHalf); }
static inline double normal_pdf(double x) { return kInvSqrt2Pi * std::exp(-0.5 * x * x); }

template <typename T>
static void gelu_erf_forward_scalar(const T* x, T* y, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) {
        const double xi = double(x[i]);
        y[i] = T(xi * normal_cdf(xi));      // Phi(-inf) = 0, so gelu(-inf) is NaN, as in the AVX2 version
    }
}

template <typename T>
static void gelu_erf_backward_scalar(const T* dy, const T* x, T* dx, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) {
        const double xc = erf_clamp(double(x[i]));
        dx[i] = T(double(dy[i]) * (normal_cdf(xc) + xc * normal_pdf(xc)));
    }
}

// ---- AVX2/FMA float32: 8 lanes; tails of < 8 go to the scalar twin
#if MINILLM_X86
// Numerical Recipes' erfcc coefficients, P(t) = c0 + c1 t + ... + c9 t^9.
static const float kErfcP[10] = {-1.26551223f, 1.00002368f, 0.37409196f, 0.09678418f, -0.18628806f,
                                 0.27886807f, -1.13520398f, 1.48851587f, -0.82215223f, 0.17087277f};

// For x (already clamped): Phi(x) and phi(x) of 8 lanes.
MINILLM_AVX2 static inline void normal_cdf_pdf8(__m256 x, __m256& cdf, __m256& pdf) {
    const __m256 one = _mm256_set1_ps(1.0f), half = _mm256_set1_ps(0.5f);
    const __m256 z = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), _mm256_mul_ps(x, _mm256_set1_ps(float(kSqrtHalf))));
    const __m256 xx = _mm256_mul_ps(x, x);                                // z^2 = x^2 / 2 from x itself: z is
    const __m256 hi = _mm256_mul_ps(half, xx);                            // rounded, x is exact
    const __m256 lo = _mm256_mul_ps(half, _mm256_fmsub_ps(x, x, xx));     // z^2 = hi + lo exactly
    const __m256 e_hi = exp256_nonpos(_mm256_sub_ps(_mm256_setzero_ps(), hi));
    const __m256 one_m_lo = _mm256_sub_ps(one, lo);                       // exp(-lo), |lo| < 1e-5
    const __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(half, z, one));
    __m256 p = _mm256_set1_ps(kErfcP[9]);
    for (int k = 8; k >= 0; --k) p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(kErfcP[k]));
    // erfc(z) = t exp(-hi) exp(-lo) exp(P(t)); P(t) is in [-1.27, 3e-8], where exp256_nonpos is exact
    const __m256 erfc = _mm256_mul_ps(_mm256_mul_ps(t, e_hi), _mm256_mul_ps(one_m_lo, exp256_nonpos(p)));
    const __m256 half_erfc = _mm256_mul_ps(half, erfc);
    const __m256 positive = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GE_OQ);
    cdf = _mm256_blendv_ps(half_erfc, _mm256_sub_ps(one, half_erfc), positive);   // Phi(x) = 1 - Phi(-x)
    pdf = _mm256_mul_ps(_mm256_set1_ps(float(kInvSqrt2Pi)), _mm256_mul_ps(e_hi, one_m_lo));
}

MINILLM_AVX2 static inline __m256 erf_clamp8(__m256 x) {   // max/min return the 2nd operand on NaN
    return _mm256_min_ps(_mm256_set1_ps(float(kErfClamp)), _mm256_max_ps(_mm256_set1_ps(float(-kErfClamp)), x));
}

MINILLM_AVX2 static void gelu_erf_forward_avx2(const float* x, float* y, std::int64_t n) {
    std::int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        __m256 cdf, pdf;
        normal_cdf_pdf8(erf_clamp8(v), cdf, pdf);
        _mm256_storeu_ps(y + i, _mm256_mul_ps(v, cdf));
    }
    gelu_erf_forward_scalar(x + i, y + i, n - i);
}

MINILLM_AVX2 static void gelu_erf_backward_avx2(const float* dy, const float* x, float* dx, std::int64_t n) {
    std::int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 xc = erf_clamp8(_mm256_loadu_ps(x + i));
        __m256 cdf, pdf;
        normal_cdf_pdf8(xc, cdf, pdf);
        const __m256 grad = _mm256_fmadd_ps(xc, pdf, cdf);                  // Phi + x phi
        _mm256_storeu_ps(dx + i, _mm256_mul_ps(_mm256_loadu_ps(dy + i), grad));
    }
    gelu_erf_backward_scalar(dy + i, x + i, dx + i, n - i);
}
#endif

// ---- dispatch: the best version for T on this CPU, one block at a time

template <typename T>
static void gelu_erf_forward_block(Isa isa, const T* x, T* y, std::int64_t n) {
    MINILLM_USE_AVX2(T, isa, gelu_erf_forward_avx2(x, y, n));
    gelu_erf_forward_scalar(x, y, n);
}

template <typename T>
static void gelu_erf_backward_block(Isa isa, const T* dy, const T* x, T* dx, std::int64_t n) {
    MINILLM_USE_AVX2(T, isa, gelu_erf_backward_avx2(dy, x, dx, n));
    gelu_erf_backward_scalar(dy, x, dx, n);
}

template <typename F>
static void for_erf_blocks(std::int64_t n, F&& body) {   // body(offset, length), OpenMP over blocks
    const std::int64_t blocks = (n + kErfBlock - 1) / kErfBlock;
    parallel_rows(blocks, kErfBlock, [&](std::int64_t b) { body(b * kErfBlock, std::min(kErfBlock, n - b * kErfBlock)); });
}

// ---- bindings: any shape, elementwise

static py::array py_gelu_erf_forward(const py::array& x) {
    const Check check("gelu_erf_forward");
    check.floating("x", x);
    py::array y = empty_like(x);
    const std::int64_t n = x.size();
    dispatch_float(x, [&](auto zero) {
        using T = decltype(zero);
        const T* xp = data<T>(x);
        T* yp = mutable_data<T>(y);
        py::gil_scoped_release release;
        const Isa isa = simd_isa<T>();
        for_erf_blocks(n, [&](std::int64_t o, std::int64_t len) { gelu_erf_forward_block(isa, xp + o, yp + o, len); });
    });
    return y;
}

static py::array py_gelu_erf_backward(const py::array& dy, const py::array& x) {
    const Check check("gelu_erf_backward");
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
        const Isa isa = simd_isa<T>();
        for_erf_blocks(n, [&](std::int64_t o, std::int64_t len) {
            gelu_erf_backward_block(isa, dyp + o, xp + o, dxp + o, len);
        });
    });
    return dx;
}

void bind_gelu_erf(py::module_& m) {
    m.def("gelu_erf_forward", &py_gelu_erf_forward, py::arg("x"),
          "GELU, exact form: x Phi(x) = 0.5 x erfc(-x / sqrt(2)).");
    m.def("gelu_erf_backward", &py_gelu_erf_backward, py::arg("dy"), py::arg("x"),
          "dx = dy * (Phi(x) + x phi(x)).");
}

}  // namespace minillm
