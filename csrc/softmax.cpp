// Softmax and log-softmax over the last axis of a (rows, n) array, forward and backward.
//   softmax:      y = exp(x - m) / sum(exp(x - m)),  m = max(x);   dx = y * (dy - sum(dy * y))
//   log-softmax:  y = (x - m) - log(sum(exp(x - m)));               dx = dy - exp(y) * sum(dy)
// The scalar functions are the obviously-right twins of the AVX2 ones; OpenMP runs over rows.
#include <algorithm>
#include <cmath>

#include "kernels.h"
#include "rowwise.h"

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

template <typename T>
void softmax_forward(const T* x, T* y, std::int64_t rows, std::int64_t n) {
    const bool simd = simd_path<T>();
    parallel_rows(rows, n, [&](std::int64_t r) {
#if MINILLM_X86
        if constexpr (std::is_same<T, float>::value)
            if (simd) return softmax_row_avx2(x + r * n, y + r * n, n);
#endif
        softmax_row_scalar(x + r * n, y + r * n, n);
    });
    (void)simd;
}

template <typename T>
void softmax_backward(const T* dy, const T* y, T* dx, std::int64_t rows, std::int64_t n) {
    const bool simd = simd_path<T>(), stream = rows * n * std::int64_t(sizeof(T)) >= kStreamBytes;
    parallel_rows(rows, n, [&](std::int64_t r) {
#if MINILLM_X86
        if constexpr (std::is_same<T, float>::value)
            if (simd) return softmax_backward_row_avx2(dy + r * n, y + r * n, dx + r * n, n, stream);
#endif
        softmax_backward_row_scalar(dy + r * n, y + r * n, dx + r * n, n);
    });
    (void)simd, (void)stream;
}

template <typename T>
void log_softmax_forward(const T* x, T* y, std::int64_t rows, std::int64_t n) {
    const bool simd = simd_path<T>();
    parallel_rows(rows, n, [&](std::int64_t r) {
#if MINILLM_X86
        if constexpr (std::is_same<T, float>::value)
            if (simd) return log_softmax_row_avx2(x + r * n, y + r * n, n);
#endif
        log_softmax_row_scalar(x + r * n, y + r * n, n);
    });
    (void)simd;
}

template <typename T>
void log_softmax_backward(const T* dy, const T* y, T* dx, std::int64_t rows, std::int64_t n) {
    const bool simd = simd_path<T>(), stream = rows * n * std::int64_t(sizeof(T)) >= kStreamBytes;
    parallel_rows(rows, n, [&](std::int64_t r) {
#if MINILLM_X86
        if constexpr (std::is_same<T, float>::value)
            if (simd) return log_softmax_backward_row_avx2(dy + r * n, y + r * n, dx + r * n, n, stream);
#endif
        log_softmax_backward_row_scalar(dy + r * n, y + r * n, dx + r * n, n);
    });
    (void)simd, (void)stream;
}

template void softmax_forward<float>(const float*, float*, std::int64_t, std::int64_t);
template void softmax_forward<double>(const double*, double*, std::int64_t, std::int64_t);
template void softmax_backward<float>(const float*, const float*, float*, std::int64_t, std::int64_t);
template void softmax_backward<double>(const double*, const double*, double*, std::int64_t, std::int64_t);
template void log_softmax_forward<float>(const float*, float*, std::int64_t, std::int64_t);
template void log_softmax_forward<double>(const double*, double*, std::int64_t, std::int64_t);
template void log_softmax_backward<float>(const float*, const float*, float*, std::int64_t, std::int64_t);
template void log_softmax_backward<double>(const double*, const double*, double*, std::int64_t, std::int64_t);

}  // namespace minillm
