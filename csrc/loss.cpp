// Fused cross-entropy over the rows of (N, V) logits: the loss and the gradient in one pass per row.
//   nll_n    = logsumexp(x_n) - x_n[t_n] = m + log(s) - x_n[t_n],  m = max(x_n), s = sum(exp(x_n - m))
//   g_n      = softmax(x_n) - onehot(t_n)          (the gradient of nll_n; 0 for ignored rows)
// The forward writes nll (N,) and the unscaled gradient g (N, V); the backward only scales each
// row of g by dloss (and 1/kept rows for "mean"), which the Python wrapper turns into row_scale.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels.h"
#include "rowwise.h"

namespace minillm {


// One row: returns nll and writes g = softmax(x) - onehot(t). x, g: (V,).
template <typename T>
static T cross_entropy_row_scalar(const T* x, std::int64_t t, T* g, std::int64_t V) {
    T m = x[0];
    for (std::int64_t i = 1; i < V; ++i) m = std::max(m, x[i]);
    T s = 0;
    for (std::int64_t i = 0; i < V; ++i) {
        g[i] = std::exp(x[i] - m);
        s += g[i];
    }
    const T inv = T(1) / s;
    for (std::int64_t i = 0; i < V; ++i) g[i] *= inv;
    g[t] -= T(1);
    return (m - x[t]) + std::log(s);
}

template <typename T>
static void scale_row_scalar(const T* g, T scale, T* out, std::int64_t V) {
    for (std::int64_t i = 0; i < V; ++i) out[i] = g[i] * scale;
}

#if MINILLM_X86
MINILLM_AVX2 static float cross_entropy_row_avx2(const float* x, std::int64_t t, float* g, std::int64_t V) {
    std::int64_t i = 0;
    __m256 vm = _mm256_set1_ps(-__builtin_inff());
    for (; i + 8 <= V; i += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(x + i));
    float m = hmax(vm);
    for (; i < V; ++i) m = std::max(m, x[i]);

    // g = exp(x - m), s = sum(g); two accumulators to hide the add latency.
    const __m256 vmax = _mm256_set1_ps(m);
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    for (i = 0; i + 16 <= V; i += 16) {
        __m256 e0 = exp256_nonpos(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmax));
        __m256 e1 = exp256_nonpos(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), vmax));
        _mm256_storeu_ps(g + i, e0);
        _mm256_storeu_ps(g + i + 8, e1);
        s0 = _mm256_add_ps(s0, e0);
        s1 = _mm256_add_ps(s1, e1);
    }
    for (; i + 8 <= V; i += 8) {
        __m256 e = exp256_nonpos(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmax));
        _mm256_storeu_ps(g + i, e);
        s0 = _mm256_add_ps(s0, e);
    }
    float s = hsum(_mm256_add_ps(s0, s1));
    for (; i < V; ++i) {
        g[i] = std::exp(x[i] - m);
        s += g[i];
    }

    // g = g / s (the row is still in L2: V = 32000 floats is 125 KiB), then g[t] -= 1.
    const __m256 vinv = _mm256_set1_ps(1.0f / s);
    for (i = 0; i + 8 <= V; i += 8) _mm256_storeu_ps(g + i, _mm256_mul_ps(_mm256_loadu_ps(g + i), vinv));
    for (; i < V; ++i) g[i] *= 1.0f / s;
    g[t] -= 1.0f;
    return (m - x[t]) + std::log(s);
}

// out = g * scale. With `stream`, the stores bypass the cache (non-temporal): for an output far
// larger than the L3 that saves reading each line before writing it and keeps g's lines cached.
MINILLM_AVX2 static void scale_row_avx2(const float* g, float scale, float* out, std::int64_t V, bool stream) {
    const __m256 vs = _mm256_set1_ps(scale);
    std::int64_t i = 0;
    if (stream) {
        for (; i < V && (reinterpret_cast<std::uintptr_t>(out + i) & 31); ++i) out[i] = g[i] * scale;
        for (; i + 8 <= V; i += 8) _mm256_stream_ps(out + i, _mm256_mul_ps(_mm256_loadu_ps(g + i), vs));
        _mm_sfence();   // order the non-temporal stores before anything this thread does next
    }
    for (; i + 8 <= V; i += 8) _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_loadu_ps(g + i), vs));
    for (; i < V; ++i) out[i] = g[i] * scale;
}
#endif

template <typename T>
void cross_entropy_forward(const T* logits, const std::int64_t* targets, std::int64_t ignore_index, T* nll,
                           T* g, std::int64_t N, std::int64_t V) {
    const bool simd = simd_path<T>();
    parallel_rows(N, V, [&](std::int64_t r) {
        const std::int64_t t = targets[r];
        if (t == ignore_index) {   // an ignored row: no loss, no gradient
            nll[r] = 0;
            std::memset(g + r * V, 0, sizeof(T) * V);
            return;
        }
#if MINILLM_X86
        if constexpr (std::is_same<T, float>::value)
            if (simd) {
                nll[r] = cross_entropy_row_avx2(logits + r * V, t, g + r * V, V);
                return;
            }
#endif
        nll[r] = cross_entropy_row_scalar(logits + r * V, t, g + r * V, V);
    });
    (void)simd;
}

template <typename T>
void cross_entropy_backward(const T* g, const T* row_scale, T* dlogits, std::int64_t N, std::int64_t V) {
    const bool simd = simd_path<T>(), stream = N * V * std::int64_t(sizeof(T)) >= kStreamBytes;
    parallel_rows(N, V, [&](std::int64_t r) {
#if MINILLM_X86
        if constexpr (std::is_same<T, float>::value)
            if (simd) return scale_row_avx2(g + r * V, row_scale[r], dlogits + r * V, V, stream);
#endif
        scale_row_scalar(g + r * V, row_scale[r], dlogits + r * V, V);
    });
    (void)simd, (void)stream;
}

template void cross_entropy_forward<float>(const float*, const std::int64_t*, std::int64_t, float*, float*,
                                           std::int64_t, std::int64_t);
template void cross_entropy_forward<double>(const double*, const std::int64_t*, std::int64_t, double*, double*,
                                            std::int64_t, std::int64_t);
template void cross_entropy_backward<float>(const float*, const float*, float*, std::int64_t, std::int64_t);
template void cross_entropy_backward<double>(const double*, const double*, double*, std::int64_t, std::int64_t);

}  // namespace minillm
