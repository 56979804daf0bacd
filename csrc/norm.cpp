// RMSNorm and LayerNorm over the last axis of a (rows, C) array, forward and backward.
//   rms_norm:    y = x * inv_rms * w,  inv_rms = 1 / sqrt(mean(x^2) + eps)
//                dx = inv_rms * (g - x_hat * mean(g * x_hat)),  g = dy * w,  x_hat = x * inv_rms
//                dw = sum over rows of dy * x_hat
//   layer_norm:  y = x_hat * w + b,  x_hat = (x - mean) * inv_std,  inv_std = 1 / sqrt(var + eps)
//                dx = inv_std * (g - mean(g) - x_hat * mean(g * x_hat)),  g = dy * w
//                dw = sum over rows of dy * x_hat,  db = sum over rows of dy
// The statistics take one pass over the row (LayerNorm's variance from sums shifted by x[0], so
// a large mean does not cancel); dw and db are summed in per-thread buffers (rowwise.h).
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels.h"
#include "rowwise.h"

namespace minillm {

// ---- scalar twins (float64 always, float32 when forced) ----

template <typename T>
static T rms_forward_row_scalar(const T* x, const T* w, T* y, std::int64_t C, double eps) {
    T ss = 0;
    for (std::int64_t i = 0; i < C; ++i) ss += x[i] * x[i];
    const T inv = T(1.0 / std::sqrt(double(ss) / C + eps));
    for (std::int64_t i = 0; i < C; ++i) y[i] = x[i] * inv * w[i];
    return inv;
}

template <typename T>
static void rms_backward_row_scalar(const T* dy, const T* x, const T* w, T inv, T* dx, T* dw, std::int64_t C) {
    T dot = 0;   // sum(g * x_hat)
    for (std::int64_t i = 0; i < C; ++i) dot += dy[i] * w[i] * (x[i] * inv);
    const T mean_gx = dot / T(C);
    for (std::int64_t i = 0; i < C; ++i) {
        const T x_hat = x[i] * inv;
        dx[i] = inv * (dy[i] * w[i] - x_hat * mean_gx);
        dw[i] += dy[i] * x_hat;
    }
}

template <typename T>
static T layer_forward_row_scalar(const T* x, const T* w, const T* b, T* y, T* x_hat, std::int64_t C, double eps) {
    const T k = x[0];   // shift: var = mean((x - k)^2) - mean(x - k)^2 without cancellation when |mean| >> std
    T s1 = 0, s2 = 0;
    for (std::int64_t i = 0; i < C; ++i) {
        const T d = x[i] - k;
        s1 += d;
        s2 += d * d;
    }
    const T mean_d = s1 / T(C), var = std::max(s2 / T(C) - mean_d * mean_d, T(0));
    const T mean = k + mean_d, inv = T(1.0 / std::sqrt(double(var) + eps));
    for (std::int64_t i = 0; i < C; ++i) {
        x_hat[i] = (x[i] - mean) * inv;
        y[i] = x_hat[i] * w[i] + b[i];
    }
    return inv;
}

template <typename T>
static void layer_backward_row_scalar(const T* dy, const T* x_hat, const T* w, T inv, T* dx, T* dw, T* db,
                                      std::int64_t C) {
    T sg = 0, sgx = 0;   // sum(g), sum(g * x_hat)
    for (std::int64_t i = 0; i < C; ++i) {
        sg += dy[i] * w[i];
        sgx += dy[i] * w[i] * x_hat[i];
    }
    const T mean_g = sg / T(C), mean_gx = sgx / T(C);
    for (std::int64_t i = 0; i < C; ++i) {
        dx[i] = inv * (dy[i] * w[i] - mean_g - x_hat[i] * mean_gx);
        dw[i] += dy[i] * x_hat[i];
        db[i] += dy[i];
    }
}

// ---- AVX2/FMA float32 ----
#if MINILLM_X86
MINILLM_AVX2 static float rms_forward_row_avx2(const float* x, const float* w, float* y, std::int64_t C, double eps) {
    std::int64_t i = 0;
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= C; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        acc = _mm256_fmadd_ps(v, v, acc);
    }
    float ss = hsum(acc);
    for (; i < C; ++i) ss += x[i] * x[i];
    const float inv = float(1.0 / std::sqrt(double(ss) / C + eps));
    const __m256 vinv = _mm256_set1_ps(inv);
    for (i = 0; i + 8 <= C; i += 8)
        _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vinv), _mm256_loadu_ps(w + i)));
    for (; i < C; ++i) y[i] = x[i] * inv * w[i];
    return inv;
}

MINILLM_AVX2 static void rms_backward_row_avx2(const float* dy, const float* x, const float* w, float inv, float* dx,
                                               float* dw, std::int64_t C) {
    const __m256 vinv = _mm256_set1_ps(inv);
    std::int64_t i = 0;
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= C; i += 8) {   // acc += (dy * w) * x_hat
        __m256 g = _mm256_mul_ps(_mm256_loadu_ps(dy + i), _mm256_loadu_ps(w + i));
        acc = _mm256_fmadd_ps(g, _mm256_mul_ps(_mm256_loadu_ps(x + i), vinv), acc);
    }
    float dot = hsum(acc);
    for (; i < C; ++i) dot += dy[i] * w[i] * (x[i] * inv);
    const float mean_gx = dot / float(C);
    const __m256 vm = _mm256_set1_ps(mean_gx);
    for (i = 0; i + 8 <= C; i += 8) {
        __m256 d = _mm256_loadu_ps(dy + i);
        __m256 x_hat = _mm256_mul_ps(_mm256_loadu_ps(x + i), vinv);
        __m256 g = _mm256_mul_ps(d, _mm256_loadu_ps(w + i));
        _mm256_storeu_ps(dx + i, _mm256_mul_ps(vinv, _mm256_fnmadd_ps(x_hat, vm, g)));
        _mm256_storeu_ps(dw + i, _mm256_fmadd_ps(d, x_hat, _mm256_loadu_ps(dw + i)));
    }
    for (; i < C; ++i) {
        const float x_hat = x[i] * inv;
        dx[i] = inv * (dy[i] * w[i] - x_hat * mean_gx);
        dw[i] += dy[i] * x_hat;
    }
}

MINILLM_AVX2 static float layer_forward_row_avx2(const float* x, const float* w, const float* b, float* y,
                                                 float* x_hat, std::int64_t C, double eps) {
    const float k = x[0];
    const __m256 vk = _mm256_set1_ps(k);
    std::int64_t i = 0;
    __m256 a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps();
    for (; i + 8 <= C; i += 8) {
        __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + i), vk);
        a1 = _mm256_add_ps(a1, d);
        a2 = _mm256_fmadd_ps(d, d, a2);
    }
    float s1 = hsum(a1), s2 = hsum(a2);
    for (; i < C; ++i) {
        const float d = x[i] - k;
        s1 += d;
        s2 += d * d;
    }
    const float mean_d = s1 / float(C), var = std::max(s2 / float(C) - mean_d * mean_d, 0.0f);
    const float mean = k + mean_d, inv = float(1.0 / std::sqrt(double(var) + eps));
    const __m256 vmean = _mm256_set1_ps(mean), vinv = _mm256_set1_ps(inv);
    for (i = 0; i + 8 <= C; i += 8) {
        __m256 h = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmean), vinv);
        _mm256_storeu_ps(x_hat + i, h);
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(h, _mm256_loadu_ps(w + i), _mm256_loadu_ps(b + i)));
    }
    for (; i < C; ++i) {
        x_hat[i] = (x[i] - mean) * inv;
        y[i] = x_hat[i] * w[i] + b[i];
    }
    return inv;
}

MINILLM_AVX2 static void layer_backward_row_avx2(const float* dy, const float* x_hat, const float* w, float inv,
                                                 float* dx, float* dw, float* db, std::int64_t C) {
    std::int64_t i = 0;
    __m256 ag = _mm256_setzero_ps(), agx = _mm256_setzero_ps();
    for (; i + 8 <= C; i += 8) {
        __m256 g = _mm256_mul_ps(_mm256_loadu_ps(dy + i), _mm256_loadu_ps(w + i));
        ag = _mm256_add_ps(ag, g);
        agx = _mm256_fmadd_ps(g, _mm256_loadu_ps(x_hat + i), agx);
    }
    float sg = hsum(ag), sgx = hsum(agx);
    for (; i < C; ++i) {
        sg += dy[i] * w[i];
        sgx += dy[i] * w[i] * x_hat[i];
    }
    const float mean_g = sg / float(C), mean_gx = sgx / float(C);
    const __m256 vinv = _mm256_set1_ps(inv), vmg = _mm256_set1_ps(mean_g), vmgx = _mm256_set1_ps(mean_gx);
    for (i = 0; i + 8 <= C; i += 8) {
        __m256 d = _mm256_loadu_ps(dy + i), h = _mm256_loadu_ps(x_hat + i);
        __m256 g = _mm256_sub_ps(_mm256_mul_ps(d, _mm256_loadu_ps(w + i)), vmg);
        _mm256_storeu_ps(dx + i, _mm256_mul_ps(vinv, _mm256_fnmadd_ps(h, vmgx, g)));
        _mm256_storeu_ps(dw + i, _mm256_fmadd_ps(d, h, _mm256_loadu_ps(dw + i)));
        _mm256_storeu_ps(db + i, _mm256_add_ps(d, _mm256_loadu_ps(db + i)));
    }
    for (; i < C; ++i) {
        dx[i] = inv * (dy[i] * w[i] - mean_g - x_hat[i] * mean_gx);
        dw[i] += dy[i] * x_hat[i];
        db[i] += dy[i];
    }
}
#endif

// ---- drivers: OpenMP over rows; the AVX2 row function for float32 (unless forced scalar) ----

template <typename T>
void rms_norm_forward(const T* x, const T* w, double eps, T* y, T* inv_rms, std::int64_t rows, std::int64_t C) {
    const bool simd = simd_path<T>();
    parallel_rows(rows, C, [&](std::int64_t r) {
#if MINILLM_X86
        if constexpr (std::is_same<T, float>::value)
            if (simd) {
                inv_rms[r] = rms_forward_row_avx2(x + r * C, w, y + r * C, C, eps);
                return;
            }
#endif
        inv_rms[r] = rms_forward_row_scalar(x + r * C, w, y + r * C, C, eps);
    });
    (void)simd;
}

// dw is summed over rows in one buffer per thread (parallel_rows_reduce), never with atomics.
template <typename T>
void rms_norm_backward(const T* dy, const T* x, const T* w, const T* inv_rms, T* dx, T* dw, std::int64_t rows,
                       std::int64_t C) {
    const bool simd = simd_path<T>();
    parallel_rows_reduce<T>(rows, C, C, dw, [&](std::int64_t r, T* dw_part) {
        const std::int64_t o = r * C;
#if MINILLM_X86
        if constexpr (std::is_same<T, float>::value)
            if (simd) return rms_backward_row_avx2(dy + o, x + o, w, inv_rms[r], dx + o, dw_part, C);
#endif
        rms_backward_row_scalar(dy + o, x + o, w, inv_rms[r], dx + o, dw_part, C);
    });
    (void)simd;
}

template <typename T>
void layer_norm_forward(const T* x, const T* w, const T* b, double eps, T* y, T* x_hat, T* inv_std,
                        std::int64_t rows, std::int64_t C) {
    const bool simd = simd_path<T>();
    parallel_rows(rows, C, [&](std::int64_t r) {
        const std::int64_t o = r * C;
#if MINILLM_X86
        if constexpr (std::is_same<T, float>::value)
            if (simd) {
                inv_std[r] = layer_forward_row_avx2(x + o, w, b, y + o, x_hat + o, C, eps);
                return;
            }
#endif
        inv_std[r] = layer_forward_row_scalar(x + o, w, b, y + o, x_hat + o, C, eps);
    });
    (void)simd;
}

// dw and db share one per-thread buffer of 2C values: [dw | db].
template <typename T>
void layer_norm_backward(const T* dy, const T* x_hat, const T* w, const T* inv_std, T* dx, T* dw, T* db,
                         std::int64_t rows, std::int64_t C) {
    const bool simd = simd_path<T>();
    std::vector<T> sums(2 * C);
    parallel_rows_reduce<T>(rows, C, 2 * C, sums.data(), [&](std::int64_t r, T* part) {
        const std::int64_t o = r * C;
#if MINILLM_X86
        if constexpr (std::is_same<T, float>::value)
            if (simd) return layer_backward_row_avx2(dy + o, x_hat + o, w, inv_std[r], dx + o, part, part + C, C);
#endif
        layer_backward_row_scalar(dy + o, x_hat + o, w, inv_std[r], dx + o, part, part + C, C);
    });
    std::copy(sums.begin(), sums.begin() + C, dw);
    std::copy(sums.begin() + C, sums.end(), db);
    (void)simd;
}

template void rms_norm_forward<float>(const float*, const float*, double, float*, float*, std::int64_t, std::int64_t);
template void rms_norm_forward<double>(const double*, const double*, double, double*, double*, std::int64_t,
                                       std::int64_t);
template void rms_norm_backward<float>(const float*, const float*, const float*, const float*, float*, float*,
                                       std::int64_t, std::int64_t);
template void rms_norm_backward<double>(const double*, const double*, const double*, const double*, double*, double*,
                                        std::int64_t, std::int64_t);
template void layer_norm_forward<float>(const float*, const float*, const float*, double, float*, float*, float*,
                                        std::int64_t, std::int64_t);
template void layer_norm_forward<double>(const double*, const double*, const double*, double, double*, double*,
                                         double*, std::int64_t, std::int64_t);
template void layer_norm_backward<float>(const float*, const float*, const float*, const float*, float*, float*,
                                         float*, std::int64_t, std::int64_t);
template void layer_norm_backward<double>(const double*, const double*, const double*, const double*, double*,
                                          double*, double*, std::int64_t, std::int64_t);

}  // namespace minillm
