// Fused cross-entropy over the rows of (N, V) logits: the loss and the gradient in one pass per row.
//   nll_n    = logsumexp(x_n) - x_n[t_n] = m + log(s) - x_n[t_n],  m = max(x_n), s = sum(exp(x_n - m))
//   g_n      = softmax(x_n) - onehot(t_n)          (the gradient of nll_n; 0 for ignored rows)
// The forward writes nll (N,) and the unscaled gradient g (N, V); the backward only scales each
// row of g by dloss (and 1/kept rows for "mean"), which the Python wrapper turns into row_scale.
// Bindings at the bottom: cross_entropy_forward, cross_entropy_backward.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "binding.h"
#include "parallel.h"
#include "rowwise_avx512.h"
#include "simd.h"

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
    for (std::int64_t i = 0; i < V; ++i) g[i] *= inv;   // softmax(x)
    g[t] -= T(1);                                        // - onehot(t)
    // nll = logsumexp(x) - x[t] = (m - x[t]) + log(s)
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

// ---- dispatch: the best version for T on this CPU, one row at a time

// The path this family takes now (minillm.build_info()["kernel_paths"]).
Isa cross_entropy_isa() { return float_family_isa(); }

template <typename T>
static T cross_entropy_row(Isa isa, const T* x, std::int64_t t, T* g, std::int64_t V) {
    MINILLM_USE_AVX512(T, isa, rows512::cross_entropy_row(x, t, g, V));
    MINILLM_USE_AVX2(T, isa, cross_entropy_row_avx2(x, t, g, V));
    return cross_entropy_row_scalar(x, t, g, V);
}

template <typename T>
static void scale_row(Isa isa, const T* g, T scale, T* out, std::int64_t V, bool stream) {
    MINILLM_USE_AVX512(T, isa, rows512::scale_row(g, scale, out, V, stream));
    MINILLM_USE_AVX2(T, isa, scale_row_avx2(g, scale, out, V, stream));
    (void)stream;   // only the SIMD version streams its stores
    scale_row_scalar(g, scale, out, V);
}

// ---- kernels: logits, g, dlogits (N, V); targets, nll, row_scale (N,); OpenMP over rows.
// Targets are in [0, V) or ignore_index (the binding checks).

template <typename T>
void cross_entropy_forward(const T* logits, const std::int64_t* targets, std::int64_t ignore_index, T* nll,
                           T* g, std::int64_t N, std::int64_t V) {
    const Isa isa = simd_isa<T>();
    parallel_rows(N, V, [&](std::int64_t r) {
        const std::int64_t t = targets[r];
        if (t == ignore_index) {   // an ignored row: no loss, no gradient
            nll[r] = 0;
            std::memset(g + r * V, 0, sizeof(T) * V);
            return;
        }
        nll[r] = cross_entropy_row(isa, logits + r * V, t, g + r * V, V);
    });
}

// dlogits = g * row_scale[:, None]
template <typename T>
void cross_entropy_backward(const T* g, const T* row_scale, T* dlogits, std::int64_t N, std::int64_t V) {
    const Isa isa = simd_isa<T>();
    const bool stream = N * V * std::int64_t(sizeof(T)) >= kStreamBytes;
    parallel_rows(N, V, [&](std::int64_t r) { scale_row(isa, g + r * V, row_scale[r], dlogits + r * V, V, stream); });
}

// ---- bindings

// Returns (nll (N,), g (N, V)) with g = softmax(logits) - onehot(targets), rows of ignored targets 0.
static py::tuple py_cross_entropy_forward(const py::array& logits, const py::array& targets,
                                          std::int64_t ignore_index) {
    const Check check("cross_entropy_forward");
    check.floating("logits", logits);
    check.ndim("logits", logits, 2, "(N, V)");
    const std::int64_t N = logits.shape(0), V = logits.shape(1);
    if (!has_dtype<std::int64_t>(targets)) check.fail("targets must be int64, got " + dtype_str(targets));
    if (!(targets.flags() & py::array::c_style) || targets.ndim() != 1 || targets.shape(0) != N)
        check.fail("targets must be a contiguous (" + std::to_string(N) + ",) array for logits of shape " +
                   shape_str(logits) + ", got " + shape_str(targets));
    const std::int64_t* tp = data<std::int64_t>(targets);
    for (std::int64_t r = 0; r < N; ++r)   // before any kernel reads logits[r, targets[r]]
        if (tp[r] != ignore_index && (tp[r] < 0 || tp[r] >= V))
            check.fail("targets[" + std::to_string(r) + "] = " + std::to_string(tp[r]) + " is outside [0, " +
                       std::to_string(V) + ") and not ignore_index (" + std::to_string(ignore_index) + ")");
    py::array nll = empty_like(logits, {N}), g = empty_like(logits);
    dispatch_float(logits, [&](auto zero) {
        using T = decltype(zero);
        const T* lp = data<T>(logits);
        T *nllp = mutable_data<T>(nll), *gp = mutable_data<T>(g);
        py::gil_scoped_release release;
        if (N) cross_entropy_forward(lp, tp, ignore_index, nllp, gp, N, V);
    });
    return py::make_tuple(nll, g);
}

static py::array py_cross_entropy_backward(const py::array& g, const py::array& row_scale) {
    const Check check("cross_entropy_backward");
    check.floating("g", g);
    check.ndim("g", g, 2, "(N, V)");
    check.floating("row_scale", row_scale);
    check.shape("row_scale", row_scale, {g.shape(0)}, "g", g);
    check.dtype_of("row_scale", row_scale, "g", g);
    const std::int64_t N = g.shape(0), V = g.shape(1);
    py::array dlogits = empty_like(g);
    dispatch_float(g, [&](auto zero) {
        using T = decltype(zero);
        const T *gp = data<T>(g), *sp = data<T>(row_scale);
        T* dp = mutable_data<T>(dlogits);
        py::gil_scoped_release release;
        if (N && V) cross_entropy_backward(gp, sp, dp, N, V);
    });
    return dlogits;
}

void bind_loss(py::module_& m) {
    m.def("cross_entropy_forward", &py_cross_entropy_forward, py::arg("logits"), py::arg("targets"),
          py::arg("ignore_index"),
          "(nll (N,), g (N, V)): per-row -log softmax(logits)[target] and g = softmax - onehot, both 0 on rows "
          "whose target is ignore_index. targets: int64 in [0, V) or ignore_index.");
    m.def("cross_entropy_backward", &py_cross_entropy_backward, py::arg("g"), py::arg("row_scale"),
          "dlogits = g * row_scale[:, None].");
}

}  // namespace minillm
