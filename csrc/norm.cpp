// RMSNorm and LayerNorm over the last axis of a (rows, C) array, forward and backward.
//   rms_norm:    y = x * inv_rms * w,  inv_rms = 1 / sqrt(mean(x^2) + eps)
//                dx = inv_rms * (g - x_hat * mean(g * x_hat)),  g = dy * w,  x_hat = x * inv_rms
//                dw = sum over rows of dy * x_hat
//   layer_norm:  y = x_hat * w + b,  x_hat = (x - mean) * inv_std,  inv_std = 1 / sqrt(var + eps)
//                dx = inv_std * (g - mean(g) - x_hat * mean(g * x_hat)),  g = dy * w
//                dw = sum over rows of dy * x_hat,  db = sum over rows of dy
// The statistics take one pass over the row (LayerNorm's variance from sums shifted by x[0], so
// a large mean does not cancel); dw and db are summed in per-thread buffers (parallel.h).
// Bindings at the bottom: rms_norm_forward, rms_norm_backward, layer_norm_forward, layer_norm_backward.
#include <algorithm>
#include <cmath>
#include <vector>

#include "binding.h"
#include "parallel.h"
#include "rowwise_avx512.h"
#include "simd.h"

namespace minillm {

// ---- scalar twins (float64 always, float32 when forced), one line per term ----

template <typename T>
static T rms_forward_row_scalar(const T* x, const T* w, T* y, std::int64_t C, double eps) {
    T sum_sq = 0;   // sum(x^2)
    for (std::int64_t i = 0; i < C; ++i) sum_sq += x[i] * x[i];
    const T inv_rms = T(1.0 / std::sqrt(double(sum_sq) / C + eps));   // 1 / sqrt(mean(x^2) + eps)
    for (std::int64_t i = 0; i < C; ++i) {
        const T x_hat = x[i] * inv_rms;
        y[i] = x_hat * w[i];
    }
    return inv_rms;
}

template <typename T>
static void rms_backward_row_scalar(const T* dy, const T* x, const T* w, T inv_rms, T* dx, T* dw, std::int64_t C) {
    // first pass: the mean that carries the gradient through rms(x)
    T sum_g_xhat = 0;   // sum(g * x_hat)
    for (std::int64_t i = 0; i < C; ++i) {
        const T x_hat = x[i] * inv_rms;
        const T g = dy[i] * w[i];   // the gradient reaching x_hat
        sum_g_xhat += g * x_hat;
    }
    const T mean_g_xhat = sum_g_xhat / T(C);
    // second pass: the gradients
    for (std::int64_t i = 0; i < C; ++i) {
        const T x_hat = x[i] * inv_rms;
        const T g = dy[i] * w[i];
        dw[i] += dy[i] * x_hat;          // weight: dy * x_hat
        T dval = g;                      // input, term 1: through x_hat directly
        dval -= x_hat * mean_g_xhat;     // term 2: through rms(x)
        dval *= inv_rms;                 // final scale
        dx[i] = dval;
    }
}

template <typename T>
static T layer_forward_row_scalar(const T* x, const T* w, const T* b, T* y, T* x_hat, std::int64_t C, double eps) {
    // var = mean((x - k)^2) - mean(x - k)^2 with the shift k = x[0], so a large |mean| does not cancel
    const T k = x[0];
    T sum_d = 0, sum_d2 = 0;   // sum(x - k), sum((x - k)^2)
    for (std::int64_t i = 0; i < C; ++i) {
        const T d = x[i] - k;
        sum_d += d;
        sum_d2 += d * d;
    }
    const T mean_d = sum_d / T(C);
    const T var = std::max(sum_d2 / T(C) - mean_d * mean_d, T(0));
    const T mean = k + mean_d;
    const T inv_std = T(1.0 / std::sqrt(double(var) + eps));
    for (std::int64_t i = 0; i < C; ++i) {
        x_hat[i] = (x[i] - mean) * inv_std;
        y[i] = x_hat[i] * w[i] + b[i];
    }
    return inv_std;
}

template <typename T>
static void layer_backward_row_scalar(const T* dy, const T* x_hat, const T* w, T inv_std, T* dx, T* dw, T* db,
                                      std::int64_t C) {
    // first pass: the two means that carry the gradient through the mean and the variance
    T sum_g = 0, sum_g_xhat = 0;   // sum(g), sum(g * x_hat)
    for (std::int64_t i = 0; i < C; ++i) {
        const T g = dy[i] * w[i];   // the gradient reaching x_hat
        sum_g += g;
        sum_g_xhat += g * x_hat[i];
    }
    const T mean_g = sum_g / T(C), mean_g_xhat = sum_g_xhat / T(C);
    // second pass: the gradients
    for (std::int64_t i = 0; i < C; ++i) {
        const T g = dy[i] * w[i];
        db[i] += dy[i];                     // bias: dy
        dw[i] += dy[i] * x_hat[i];          // weight: dy * x_hat
        T dval = g;                         // input, term 1: through x_hat directly
        dval -= mean_g;                     // term 2: through the mean
        dval -= x_hat[i] * mean_g_xhat;     // term 3: through the variance
        dval *= inv_std;                    // final scale
        dx[i] = dval;
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

// ---- dispatch: the best version for T on this CPU, one row at a time

// The path this family takes now (minillm.build_info()["kernel_paths"]).
Isa norm_isa() { return float_family_isa(); }

template <typename T>
static T rms_forward_row(Isa isa, const T* x, const T* w, T* y, std::int64_t C, double eps) {
    MINILLM_USE_AVX512(T, isa, rows512::rms_forward_row(x, w, y, C, eps));
    MINILLM_USE_AVX2(T, isa, rms_forward_row_avx2(x, w, y, C, eps));
    return rms_forward_row_scalar(x, w, y, C, eps);
}

template <typename T>
static void rms_backward_row(Isa isa, const T* dy, const T* x, const T* w, T inv, T* dx, T* dw, std::int64_t C) {
    MINILLM_USE_AVX512(T, isa, rows512::rms_backward_row(dy, x, w, inv, dx, dw, C));
    MINILLM_USE_AVX2(T, isa, rms_backward_row_avx2(dy, x, w, inv, dx, dw, C));
    rms_backward_row_scalar(dy, x, w, inv, dx, dw, C);
}

template <typename T>
static T layer_forward_row(Isa isa, const T* x, const T* w, const T* b, T* y, T* x_hat, std::int64_t C,
                           double eps) {
    MINILLM_USE_AVX512(T, isa, rows512::layer_forward_row(x, w, b, y, x_hat, C, eps));
    MINILLM_USE_AVX2(T, isa, layer_forward_row_avx2(x, w, b, y, x_hat, C, eps));
    return layer_forward_row_scalar(x, w, b, y, x_hat, C, eps);
}

template <typename T>
static void layer_backward_row(Isa isa, const T* dy, const T* x_hat, const T* w, T inv, T* dx, T* dw, T* db,
                               std::int64_t C) {
    MINILLM_USE_AVX512(T, isa, rows512::layer_backward_row(dy, x_hat, w, inv, dx, dw, db, C));
    MINILLM_USE_AVX2(T, isa, layer_backward_row_avx2(dy, x_hat, w, inv, dx, dw, db, C));
    layer_backward_row_scalar(dy, x_hat, w, inv, dx, dw, db, C);
}

// ---- kernels: x, y, x_hat, dy, dx (rows, C); weight, bias, dw, db (C,); inv_rms, inv_std (rows,).
// OpenMP over rows; dw and db are summed in one buffer per thread (parallel_rows_reduce).

template <typename T>
void rms_norm_forward(const T* x, const T* w, double eps, T* y, T* inv_rms, std::int64_t rows, std::int64_t C) {
    const Isa isa = simd_isa<T>();
    parallel_rows(rows, C, [&](std::int64_t r) { inv_rms[r] = rms_forward_row(isa, x + r * C, w, y + r * C, C, eps); });
}

template <typename T>
void rms_norm_backward(const T* dy, const T* x, const T* w, const T* inv_rms, T* dx, T* dw, std::int64_t rows,
                       std::int64_t C) {
    const Isa isa = simd_isa<T>();
    parallel_rows_reduce<T>(rows, C, C, dw, [&](std::int64_t r, T* dw_part) {
        rms_backward_row(isa, dy + r * C, x + r * C, w, inv_rms[r], dx + r * C, dw_part, C);
    });
}

template <typename T>
void layer_norm_forward(const T* x, const T* w, const T* b, double eps, T* y, T* x_hat, T* inv_std,
                        std::int64_t rows, std::int64_t C) {
    const Isa isa = simd_isa<T>();
    parallel_rows(rows, C, [&](std::int64_t r) {
        inv_std[r] = layer_forward_row(isa, x + r * C, w, b, y + r * C, x_hat + r * C, C, eps);
    });
}

// dw and db share one per-thread buffer of 2C values: [dw | db].
template <typename T>
void layer_norm_backward(const T* dy, const T* x_hat, const T* w, const T* inv_std, T* dx, T* dw, T* db,
                         std::int64_t rows, std::int64_t C) {
    const Isa isa = simd_isa<T>();
    std::vector<T> sums(2 * C);
    parallel_rows_reduce<T>(rows, C, 2 * C, sums.data(), [&](std::int64_t r, T* part) {
        layer_backward_row(isa, dy + r * C, x_hat + r * C, w, inv_std[r], dx + r * C, part, part + C, C);
    });
    std::copy(sums.begin(), sums.begin() + C, dw);
    std::copy(sums.begin() + C, sums.end(), db);
}

// ---- bindings: over the last axis of x, any shape

// `v` is a weight or bias of x's last axis: a (C,) array of x's dtype.
static void check_param(const Check& check, const char* name, const py::array& v, const py::array& x) {
    check.floating(name, v);
    check.shape(name, v, {x.shape(x.ndim() - 1)}, "x", x);
    check.dtype_of(name, v, "x", x);
}

// The shape of a per-row statistic (inv_rms, inv_std): x.shape[:-1] + (1,).
static std::vector<std::int64_t> stat_shape(const py::array& x) {
    std::vector<std::int64_t> s = shape_of(x);
    s.back() = 1;
    return s;
}

// `s` is the per-row statistic the forward returned: stat_shape(x), x's dtype.
static void check_row_stat(const Check& check, const char* name, const py::array& s, const py::array& x) {
    check.floating(name, s);
    check.shape(name, s, stat_shape(x), "x", x, "x.shape[:-1] + (1,), what the forward returned");
    check.dtype_of(name, s, "x", x);
}

static void check_eps(const Check& check, double eps) {
    if (!(eps >= 0) || !std::isfinite(eps)) check.fail("eps must be a finite number >= 0, got " + std::to_string(eps));
}

static py::tuple py_rms_norm_forward(const py::array& x, const py::array& weight, double eps) {
    const Check check("rms_norm_forward");
    check.floating("x", x);
    check_param(check, "weight", weight, x);
    check_eps(check, eps);
    py::array y = empty_like(x), inv_rms = empty_like(x, stat_shape(x));
    const auto [rows, C] = rows_cols(x);
    dispatch_float(x, [&](auto zero) {
        using T = decltype(zero);
        const T *xp = data<T>(x), *wp = data<T>(weight);   // C = 0 gives inv_rms = 0/0 = NaN, as NumPy
        T *yp = mutable_data<T>(y), *ip = mutable_data<T>(inv_rms);
        py::gil_scoped_release release;
        rms_norm_forward(xp, wp, eps, yp, ip, rows, C);
    });
    return py::make_tuple(y, inv_rms);
}

static py::tuple py_rms_norm_backward(const py::array& dy, const py::array& x, const py::array& weight,
                                      const py::array& inv_rms) {
    const Check check("rms_norm_backward");
    check.floating("dy", dy);
    check.floating("x", x);
    check.same_as("dy", dy, "x", x);
    check_param(check, "weight", weight, x);
    check_row_stat(check, "inv_rms", inv_rms, x);
    py::array dx = empty_like(x), dw = empty_like(weight);
    const auto [rows, C] = rows_cols(x);
    dispatch_float(x, [&](auto zero) {
        using T = decltype(zero);
        const T *dyp = data<T>(dy), *xp = data<T>(x), *wp = data<T>(weight), *ip = data<T>(inv_rms);
        T *dxp = mutable_data<T>(dx), *dwp = mutable_data<T>(dw);
        py::gil_scoped_release release;
        if (C) rms_norm_backward(dyp, xp, wp, ip, dxp, dwp, rows, C);
    });
    return py::make_tuple(dx, dw);
}

static py::tuple py_layer_norm_forward(const py::array& x, const py::array& weight, const py::array& bias,
                                       double eps) {
    const Check check("layer_norm_forward");
    check.floating("x", x);
    check_param(check, "weight", weight, x);
    check_param(check, "bias", bias, x);
    check_eps(check, eps);
    py::array y = empty_like(x), x_hat = empty_like(x), inv_std = empty_like(x, stat_shape(x));
    const auto [rows, C] = rows_cols(x);
    dispatch_float(x, [&](auto zero) {
        using T = decltype(zero);
        if (C == 0) {   // the statistics of nothing are NaN, as in NumPy (and there is no x[0] to shift by)
            std::fill_n(mutable_data<T>(inv_std), rows, T(NAN));
            return;
        }
        const T *xp = data<T>(x), *wp = data<T>(weight), *bp = data<T>(bias);
        T *yp = mutable_data<T>(y), *hp = mutable_data<T>(x_hat), *ip = mutable_data<T>(inv_std);
        py::gil_scoped_release release;
        layer_norm_forward(xp, wp, bp, eps, yp, hp, ip, rows, C);
    });
    return py::make_tuple(y, x_hat, inv_std);
}

static py::tuple py_layer_norm_backward(const py::array& dy, const py::array& x_hat, const py::array& weight,
                                        const py::array& inv_std) {
    const Check check("layer_norm_backward");
    check.floating("dy", dy);
    check.floating("x_hat", x_hat);
    check.same_as("dy", dy, "x_hat", x_hat);
    check_param(check, "weight", weight, x_hat);
    check_row_stat(check, "inv_std", inv_std, x_hat);
    py::array dx = empty_like(x_hat), dw = empty_like(weight), db = empty_like(weight);
    const auto [rows, C] = rows_cols(x_hat);
    dispatch_float(x_hat, [&](auto zero) {
        using T = decltype(zero);
        const T *dyp = data<T>(dy), *hp = data<T>(x_hat), *wp = data<T>(weight), *ip = data<T>(inv_std);
        T *dxp = mutable_data<T>(dx), *dwp = mutable_data<T>(dw), *dbp = mutable_data<T>(db);
        py::gil_scoped_release release;
        if (C) layer_norm_backward(dyp, hp, wp, ip, dxp, dwp, dbp, rows, C);
    });
    return py::make_tuple(dx, dw, db);
}

void bind_norm(py::module_& m) {
    m.def("rms_norm_forward", &py_rms_norm_forward, py::arg("x"), py::arg("weight"), py::arg("eps"),
          "(y, inv_rms): y = x * inv_rms * weight, inv_rms = 1/sqrt(mean(x^2, -1) + eps) of shape "
          "x.shape[:-1] + (1,).");
    m.def("rms_norm_backward", &py_rms_norm_backward, py::arg("dy"), py::arg("x"), py::arg("weight"),
          py::arg("inv_rms"), "(dx, dweight) of rms_norm_forward.");
    m.def("layer_norm_forward", &py_layer_norm_forward, py::arg("x"), py::arg("weight"), py::arg("bias"),
          py::arg("eps"), "(y, x_hat, inv_std): y = x_hat * weight + bias, x_hat = (x - mean) * inv_std.");
    m.def("layer_norm_backward", &py_layer_norm_backward, py::arg("dy"), py::arg("x_hat"), py::arg("weight"),
          py::arg("inv_std"), "(dx, dweight, dbias) of layer_norm_forward.");
}

}  // namespace minillm
