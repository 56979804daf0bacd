// Softmax and log-softmax over the last axis of a (rows, n) array, forward and backward.
//   softmax:      y = exp(x - m) / sum(exp(x - m)),  m = max(x);   dx = y * (dy - sum(dy * y))
//   log-softmax:  y = (x - m) - log(sum(exp(x - m)));               dx = dy - exp(y) * sum(dy)
// The scalar functions are the obviously-right twins of the AVX2 ones; OpenMP runs over rows.
// Bindings at the bottom: softmax_forward, softmax_backward, log_softmax_forward, log_softmax_backward.
#include <algorithm>
#include <cmath>

#include "binding.h"
#include "parallel.h"
#include "rowwise_avx512.h"
#include "simd.h"

namespace minillm {

template <typename T>
static void softmax_row_scalar(const T* x, T* y, std::int64_t n) {
    T m = x[0];
    for (std::int64_t i = 1; i < n; ++i) m = std::max(m, x[i]);
    T s = 0;
    for (std::int64_t i = 0; i < n; ++i) {
        y[i] = std::exp(x[i] - m);
        s += y[i];
    }
    const T inv = T(1) / s;
    for (std::int64_t i = 0; i < n; ++i) y[i] *= inv;
}

template <typename T>
static void softmax_backward_row_scalar(const T* dy, const T* y, T* dx, std::int64_t n) {
    T dot = 0;
    for (std::int64_t i = 0; i < n; ++i) dot += dy[i] * y[i];
    for (std::int64_t i = 0; i < n; ++i) dx[i] = y[i] * (dy[i] - dot);
}

template <typename T>
static void log_softmax_row_scalar(const T* x, T* y, std::int64_t n) {
    T m = x[0];
    for (std::int64_t i = 1; i < n; ++i) m = std::max(m, x[i]);
    T s = 0;
    for (std::int64_t i = 0; i < n; ++i) s += std::exp(x[i] - m);
    const T log_s = std::log(s);
    for (std::int64_t i = 0; i < n; ++i) y[i] = (x[i] - m) - log_s;
}

template <typename T>
static void log_softmax_backward_row_scalar(const T* dy, const T* y, T* dx, std::int64_t n) {
    T sum = 0;
    for (std::int64_t i = 0; i < n; ++i) sum += dy[i];
    for (std::int64_t i = 0; i < n; ++i) dx[i] = dy[i] - std::exp(y[i]) * sum;
}

#if MINILLM_X86
MINILLM_AVX2 static void softmax_row_avx2(const float* x, float* y, std::int64_t n) {
    std::int64_t i = 0;
    __m256 vm = _mm256_set1_ps(-__builtin_inff());
    for (; i + 8 <= n; i += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(x + i));
    float m = hmax(vm);
    for (; i < n; ++i) m = std::max(m, x[i]);

    const __m256 vmax = _mm256_set1_ps(m);
    __m256 vs = _mm256_setzero_ps();
    for (i = 0; i + 8 <= n; i += 8) {
        __m256 e = exp256_nonpos(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmax));
        _mm256_storeu_ps(y + i, e);
        vs = _mm256_add_ps(vs, e);
    }
    float s = hsum(vs);
    for (; i < n; ++i) {
        y[i] = std::exp(x[i] - m);
        s += y[i];
    }

    const __m256 vinv = _mm256_set1_ps(1.0f / s);
    for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(y + i), vinv));
    for (; i < n; ++i) y[i] *= 1.0f / s;
}

// With `stream` (a large output, see kStreamBytes) dx is written with non-temporal stores once
// dx + i is 32-byte aligned.
MINILLM_AVX2 static void softmax_backward_row_avx2(const float* dy, const float* y, float* dx, std::int64_t n,
                                                   bool stream) {
    std::int64_t i = 0;
    __m256 vd = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) vd = _mm256_fmadd_ps(_mm256_loadu_ps(dy + i), _mm256_loadu_ps(y + i), vd);
    float dot = hsum(vd);
    for (; i < n; ++i) dot += dy[i] * y[i];
    const __m256 vdot = _mm256_set1_ps(dot);
    i = 0;
    if (stream) {
        for (; i < n && (reinterpret_cast<std::uintptr_t>(dx + i) & 31); ++i) dx[i] = y[i] * (dy[i] - dot);
        for (; i + 8 <= n; i += 8) {
            __m256 g = _mm256_sub_ps(_mm256_loadu_ps(dy + i), vdot);
            _mm256_stream_ps(dx + i, _mm256_mul_ps(_mm256_loadu_ps(y + i), g));
        }
        _mm_sfence();
    }
    for (; i + 8 <= n; i += 8) {
        __m256 g = _mm256_sub_ps(_mm256_loadu_ps(dy + i), vdot);
        _mm256_storeu_ps(dx + i, _mm256_mul_ps(_mm256_loadu_ps(y + i), g));
    }
    for (; i < n; ++i) dx[i] = y[i] * (dy[i] - dot);
}

MINILLM_AVX2 static void log_softmax_row_avx2(const float* x, float* y, std::int64_t n) {
    std::int64_t i = 0;
    __m256 vm = _mm256_set1_ps(-__builtin_inff());
    for (; i + 8 <= n; i += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(x + i));
    float m = hmax(vm);
    for (; i < n; ++i) m = std::max(m, x[i]);

    const __m256 vmax = _mm256_set1_ps(m);
    __m256 vs = _mm256_setzero_ps();
    for (i = 0; i + 8 <= n; i += 8) vs = _mm256_add_ps(vs, exp256_nonpos(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmax)));
    float s = hsum(vs);
    for (; i < n; ++i) s += std::exp(x[i] - m);

    const float log_s = std::log(s);
    const __m256 vlog = _mm256_set1_ps(log_s);
    for (i = 0; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_sub_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmax), vlog));
    for (; i < n; ++i) y[i] = (x[i] - m) - log_s;
}

MINILLM_AVX2 static void log_softmax_backward_row_avx2(const float* dy, const float* y, float* dx, std::int64_t n,
                                                       bool stream) {
    std::int64_t i = 0;
    __m256 vsum = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) vsum = _mm256_add_ps(vsum, _mm256_loadu_ps(dy + i));
    float sum = hsum(vsum);
    for (; i < n; ++i) sum += dy[i];
    const __m256 vs = _mm256_set1_ps(sum);
    i = 0;
    if (stream) {   // as in softmax_backward_row_avx2
        for (; i < n && (reinterpret_cast<std::uintptr_t>(dx + i) & 31); ++i) dx[i] = dy[i] - std::exp(y[i]) * sum;
        for (; i + 8 <= n; i += 8) {
            __m256 p = exp256_nonpos(_mm256_loadu_ps(y + i));
            _mm256_stream_ps(dx + i, _mm256_fnmadd_ps(p, vs, _mm256_loadu_ps(dy + i)));
        }
        _mm_sfence();
    }
    for (; i + 8 <= n; i += 8)   // dx = dy - exp(y) * sum
        _mm256_storeu_ps(dx + i, _mm256_fnmadd_ps(exp256_nonpos(_mm256_loadu_ps(y + i)), vs, _mm256_loadu_ps(dy + i)));
    for (; i < n; ++i) dx[i] = dy[i] - std::exp(y[i]) * sum;
}
#endif

// ---- dispatch: the best version for T on this CPU, one row at a time

// The path this family takes now (minillm.build_info()["kernel_paths"]).
Isa softmax_isa() { return float_family_isa(); }

template <typename T>
static void softmax_row(Isa isa, const T* x, T* y, std::int64_t n) {
    MINILLM_USE_AVX512(T, isa, rows512::softmax_row(x, y, n));
    MINILLM_USE_AVX2(T, isa, softmax_row_avx2(x, y, n));
    softmax_row_scalar(x, y, n);
}

template <typename T>
static void softmax_backward_row(Isa isa, const T* dy, const T* y, T* dx, std::int64_t n, bool stream) {
    MINILLM_USE_AVX512(T, isa, rows512::softmax_backward_row(dy, y, dx, n, stream));
    MINILLM_USE_AVX2(T, isa, softmax_backward_row_avx2(dy, y, dx, n, stream));
    (void)stream;   // only the SIMD version streams its stores
    softmax_backward_row_scalar(dy, y, dx, n);
}

template <typename T>
static void log_softmax_row(Isa isa, const T* x, T* y, std::int64_t n) {
    MINILLM_USE_AVX512(T, isa, rows512::log_softmax_row(x, y, n));
    MINILLM_USE_AVX2(T, isa, log_softmax_row_avx2(x, y, n));
    log_softmax_row_scalar(x, y, n);
}

template <typename T>
static void log_softmax_backward_row(Isa isa, const T* dy, const T* y, T* dx, std::int64_t n, bool stream) {
    MINILLM_USE_AVX512(T, isa, rows512::log_softmax_backward_row(dy, y, dx, n, stream));
    MINILLM_USE_AVX2(T, isa, log_softmax_backward_row_avx2(dy, y, dx, n, stream));
    (void)stream;
    log_softmax_backward_row_scalar(dy, y, dx, n);
}

// ---- kernels on (rows, n) arrays, OpenMP over rows

template <typename T>
void softmax_forward(const T* x, T* y, std::int64_t rows, std::int64_t n) {
    const Isa isa = simd_isa<T>();
    parallel_rows(rows, n, [&](std::int64_t r) { softmax_row(isa, x + r * n, y + r * n, n); });
}

template <typename T>
void softmax_backward(const T* dy, const T* y, T* dx, std::int64_t rows, std::int64_t n) {
    const Isa isa = simd_isa<T>();
    const bool stream = rows * n * std::int64_t(sizeof(T)) >= kStreamBytes;
    parallel_rows(rows, n, [&](std::int64_t r) {
        softmax_backward_row(isa, dy + r * n, y + r * n, dx + r * n, n, stream);
    });
}

template <typename T>
void log_softmax_forward(const T* x, T* y, std::int64_t rows, std::int64_t n) {
    const Isa isa = simd_isa<T>();
    parallel_rows(rows, n, [&](std::int64_t r) { log_softmax_row(isa, x + r * n, y + r * n, n); });
}

template <typename T>
void log_softmax_backward(const T* dy, const T* y, T* dx, std::int64_t rows, std::int64_t n) {
    const Isa isa = simd_isa<T>();
    const bool stream = rows * n * std::int64_t(sizeof(T)) >= kStreamBytes;
    parallel_rows(rows, n, [&](std::int64_t r) {
        log_softmax_backward_row(isa, dy + r * n, y + r * n, dx + r * n, n, stream);
    });
}

// ---- bindings: any shape, over the last axis

// A forward y = f(x) over the last axis.
template <typename Kernel>
static py::array rowwise_forward(const char* fn, const py::array& x, Kernel kernel) {
    const Check check(fn);
    check.floating("x", x);
    py::array y = empty_like(x);
    const auto [rows, n] = rows_cols(x);
    dispatch_float(x, [&](auto zero) {
        using T = decltype(zero);
        const T* xp = data<T>(x);
        T* yp = mutable_data<T>(y);
        py::gil_scoped_release release;
        if (rows && n) kernel(xp, yp, rows, n);
    });
    return y;
}

// Its backward dx = f'(dy, y), from the forward's output y.
template <typename Kernel>
static py::array rowwise_backward(const char* fn, const py::array& dy, const py::array& y, Kernel kernel) {
    const Check check(fn);
    check.floating("dy", dy);
    check.floating("y", y);
    check.same_as("dy", dy, "y", y);
    py::array dx = empty_like(y);
    const auto [rows, n] = rows_cols(y);
    dispatch_float(y, [&](auto zero) {
        using T = decltype(zero);
        const T *dyp = data<T>(dy), *yp = data<T>(y);
        T* dxp = mutable_data<T>(dx);
        py::gil_scoped_release release;
        if (rows && n) kernel(dyp, yp, dxp, rows, n);
    });
    return dx;
}

void bind_softmax(py::module_& m) {
    m.def("softmax_forward", [](const py::array& x) {
        return rowwise_forward("softmax_forward", x, [](auto... a) { softmax_forward(a...); });
    }, py::arg("x"), "Softmax over the last axis of a C-contiguous float32/float64 array.");
    m.def("softmax_backward", [](const py::array& dy, const py::array& y) {
        return rowwise_backward("softmax_backward", dy, y, [](auto... a) { softmax_backward(a...); });
    }, py::arg("dy"), py::arg("y"), "dx = y * (dy - sum(dy * y, axis=-1)) for y = softmax(x).");
    m.def("log_softmax_forward", [](const py::array& x) {
        return rowwise_forward("log_softmax_forward", x, [](auto... a) { log_softmax_forward(a...); });
    }, py::arg("x"), "y = x - logsumexp(x) over the last axis of a C-contiguous float32/float64 array.");
    m.def("log_softmax_backward", [](const py::array& dy, const py::array& y) {
        return rowwise_backward("log_softmax_backward", dy, y, [](auto... a) { log_softmax_backward(a...); });
    }, py::arg("dy"), py::arg("y"), "dx = dy - exp(y) * sum(dy, axis=-1) for y = log_softmax(x).");
}

}  // namespace minillm
