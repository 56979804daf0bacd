// The AVX-512 versions of the row-wise kernels (declared, with their families, in rowwise_avx512.h).
// Each follows its AVX2 twin line by line at 16 lanes; a row's last 1 .. 15 values go through lane
// masks (loads of 0, or -inf where a max is taken), so no scalar tail loop is left. Large outputs
// (`stream`) are written with non-temporal stores once the row reaches a 64-byte boundary.
#include <algorithm>
#include <cmath>

#include "rowwise_avx512.h"
#include "simd512.h"

#if MINILLM_X86
namespace minillm {
namespace rows512 {

namespace {

MINILLM_AVX512 inline float row_max(const float* x, std::int64_t n) {
    const __m512 neg_inf = _mm512_set1_ps(-__builtin_inff());
    __m512 vm = neg_inf;
    for (std::int64_t i = 0; i < n; i += 16) vm = _mm512_max_ps(vm, _mm512_mask_loadu_ps(neg_inf, tail_mask(n - i), x + i));
    return _mm512_reduce_max_ps(vm);
}

// out[i] = f(i) for i < n, where f(i) gives the 16 values at i; non-temporal once out + i is aligned
// when stream (then the tail and the unaligned head are ordinary masked stores).
template <typename F>
MINILLM_AVX512 inline void store_row(float* out, std::int64_t n, bool stream, F&& f) {
    std::int64_t i = 0;
    if (stream) {
        const std::int64_t head = std::min<std::int64_t>(n, ((64 - (reinterpret_cast<std::uintptr_t>(out) & 63)) & 63) / 4);
        if (head) _mm512_mask_storeu_ps(out, tail_mask(head), f(0));
        for (i = head; i + 16 <= n; i += 16) _mm512_stream_ps(out + i, f(i));
        _mm_sfence();
    }
    for (; i < n; i += 16) _mm512_mask_storeu_ps(out + i, tail_mask(n - i), f(i));
}

}  // namespace

// ---- softmax, log-softmax

MINILLM_AVX512 void softmax_row(const float* x, float* y, std::int64_t n) {
    const __m512 vmax = _mm512_set1_ps(row_max(x, n));
    __m512 vs = _mm512_setzero_ps();
    for (std::int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        const __m512 e = exp512_nonpos(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vmax));
        _mm512_mask_storeu_ps(y + i, m, e);
        vs = _mm512_mask_add_ps(vs, m, vs, e);
    }
    const __m512 vinv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(vs));
    for (std::int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, y + i), vinv));
    }
}

MINILLM_AVX512 void softmax_backward_row(const float* dy, const float* y, float* dx, std::int64_t n, bool stream) {
    __m512 vd = _mm512_setzero_ps();
    for (std::int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        vd = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, dy + i), _mm512_maskz_loadu_ps(m, y + i), vd);
    }
    const __m512 vdot = _mm512_set1_ps(_mm512_reduce_add_ps(vd));
    store_row(dx, n, stream, [&](std::int64_t i) MINILLM_AVX512 {   // dx = y (dy - dot)
        const __mmask16 m = tail_mask(n - i);
        return _mm512_mul_ps(_mm512_maskz_loadu_ps(m, y + i), _mm512_sub_ps(_mm512_maskz_loadu_ps(m, dy + i), vdot));
    });
}

MINILLM_AVX512 void log_softmax_row(const float* x, float* y, std::int64_t n) {
    const __m512 vmax = _mm512_set1_ps(row_max(x, n));
    __m512 vs = _mm512_setzero_ps();
    for (std::int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        vs = _mm512_mask_add_ps(vs, m, vs, exp512_nonpos(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vmax)));
    }
    const __m512 vlog = _mm512_set1_ps(std::log(_mm512_reduce_add_ps(vs)));
    for (std::int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        _mm512_mask_storeu_ps(y + i, m, _mm512_sub_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vmax), vlog));
    }
}

MINILLM_AVX512 void log_softmax_backward_row(const float* dy, const float* y, float* dx, std::int64_t n, bool stream) {
    __m512 vsum = _mm512_setzero_ps();
    for (std::int64_t i = 0; i < n; i += 16) vsum = _mm512_add_ps(vsum, _mm512_maskz_loadu_ps(tail_mask(n - i), dy + i));
    const __m512 vs = _mm512_set1_ps(_mm512_reduce_add_ps(vsum));
    store_row(dx, n, stream, [&](std::int64_t i) MINILLM_AVX512 {   // dx = dy - exp(y) sum
        const __mmask16 m = tail_mask(n - i);
        const __m512 p = exp512_nonpos(_mm512_mask_loadu_ps(_mm512_set1_ps(-__builtin_inff()), m, y + i));
        return _mm512_fnmadd_ps(p, vs, _mm512_maskz_loadu_ps(m, dy + i));
    });
}

// ---- cross-entropy: g = softmax(x) - onehot(t), returns -log softmax(x)[t]

MINILLM_AVX512 float cross_entropy_row(const float* x, std::int64_t t, float* g, std::int64_t V) {
    const float mx = row_max(x, V);
    const __m512 vmax = _mm512_set1_ps(mx);
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();   // two chains hide the add latency
    std::int64_t i = 0;
    for (; i + 32 <= V; i += 32) {
        const __m512 e0 = exp512_nonpos(_mm512_sub_ps(_mm512_loadu_ps(x + i), vmax));
        const __m512 e1 = exp512_nonpos(_mm512_sub_ps(_mm512_loadu_ps(x + i + 16), vmax));
        _mm512_storeu_ps(g + i, e0);
        _mm512_storeu_ps(g + i + 16, e1);
        s0 = _mm512_add_ps(s0, e0), s1 = _mm512_add_ps(s1, e1);
    }
    for (; i < V; i += 16) {
        const __mmask16 m = tail_mask(V - i);
        const __m512 e = exp512_nonpos(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vmax));
        _mm512_mask_storeu_ps(g + i, m, e);
        s0 = _mm512_mask_add_ps(s0, m, s0, e);
    }
    const float s = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
    const __m512 vinv = _mm512_set1_ps(1.0f / s);   // the row is still in L2: V = 32000 floats is 125 KiB
    for (i = 0; i < V; i += 16) {
        const __mmask16 m = tail_mask(V - i);
        _mm512_mask_storeu_ps(g + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, g + i), vinv));
    }
    g[t] -= 1.0f;
    return (mx - x[t]) + std::log(s);
}

MINILLM_AVX512 void scale_row(const float* g, float scale, float* out, std::int64_t V, bool stream) {
    const __m512 vs = _mm512_set1_ps(scale);
    store_row(out, V, stream, [&](std::int64_t i) MINILLM_AVX512 {
        return _mm512_mul_ps(_mm512_maskz_loadu_ps(tail_mask(V - i), g + i), vs);
    });
}

// ---- RMSNorm, LayerNorm

MINILLM_AVX512 float rms_forward_row(const float* x, const float* w, float* y, std::int64_t C, double eps) {
    __m512 acc = _mm512_setzero_ps();
    for (std::int64_t i = 0; i < C; i += 16) {
        const __m512 v = _mm512_maskz_loadu_ps(tail_mask(C - i), x + i);
        acc = _mm512_fmadd_ps(v, v, acc);
    }
    const float inv = float(1.0 / std::sqrt(double(_mm512_reduce_add_ps(acc)) / C + eps));
    const __m512 vinv = _mm512_set1_ps(inv);
    for (std::int64_t i = 0; i < C; i += 16) {
        const __mmask16 m = tail_mask(C - i);
        _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), vinv),
                                                      _mm512_maskz_loadu_ps(m, w + i)));
    }
    return inv;
}

MINILLM_AVX512 void rms_backward_row(const float* dy, const float* x, const float* w, float inv, float* dx, float* dw,
                                     std::int64_t C) {
    const __m512 vinv = _mm512_set1_ps(inv);
    __m512 acc = _mm512_setzero_ps();
    for (std::int64_t i = 0; i < C; i += 16) {   // acc += (dy * w) * x_hat
        const __mmask16 m = tail_mask(C - i);
        const __m512 g = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, dy + i), _mm512_maskz_loadu_ps(m, w + i));
        acc = _mm512_fmadd_ps(g, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), vinv), acc);
    }
    const __m512 vm = _mm512_set1_ps(_mm512_reduce_add_ps(acc) / float(C));
    for (std::int64_t i = 0; i < C; i += 16) {
        const __mmask16 m = tail_mask(C - i);
        const __m512 d = _mm512_maskz_loadu_ps(m, dy + i), x_hat = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), vinv);
        const __m512 g = _mm512_mul_ps(d, _mm512_maskz_loadu_ps(m, w + i));
        _mm512_mask_storeu_ps(dx + i, m, _mm512_mul_ps(vinv, _mm512_fnmadd_ps(x_hat, vm, g)));
        _mm512_mask_storeu_ps(dw + i, m, _mm512_fmadd_ps(d, x_hat, _mm512_maskz_loadu_ps(m, dw + i)));
    }
}

MINILLM_AVX512 float layer_forward_row(const float* x, const float* w, const float* b, float* y, float* x_hat,
                                       std::int64_t C, double eps) {
    const __m512 vk = _mm512_set1_ps(x[0]);   // sums shifted by x[0], so a large mean does not cancel
    __m512 a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps();
    for (std::int64_t i = 0; i < C; i += 16) {
        const __mmask16 m = tail_mask(C - i);
        const __m512 d = _mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, x + i), vk);
        a1 = _mm512_add_ps(a1, d);
        a2 = _mm512_fmadd_ps(d, d, a2);
    }
    const float mean_d = _mm512_reduce_add_ps(a1) / float(C);
    const float var = std::max(_mm512_reduce_add_ps(a2) / float(C) - mean_d * mean_d, 0.0f);
    const float inv = float(1.0 / std::sqrt(double(var) + eps));
    const __m512 vmean = _mm512_set1_ps(x[0] + mean_d), vinv = _mm512_set1_ps(inv);
    for (std::int64_t i = 0; i < C; i += 16) {
        const __mmask16 m = tail_mask(C - i);
        const __m512 h = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vmean), vinv);
        _mm512_mask_storeu_ps(x_hat + i, m, h);
        _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(h, _mm512_maskz_loadu_ps(m, w + i), _mm512_maskz_loadu_ps(m, b + i)));
    }
    return inv;
}

MINILLM_AVX512 void layer_backward_row(const float* dy, const float* x_hat, const float* w, float inv, float* dx,
                                       float* dw, float* db, std::int64_t C) {
    __m512 ag = _mm512_setzero_ps(), agx = _mm512_setzero_ps();
    for (std::int64_t i = 0; i < C; i += 16) {
        const __mmask16 m = tail_mask(C - i);
        const __m512 g = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, dy + i), _mm512_maskz_loadu_ps(m, w + i));
        ag = _mm512_add_ps(ag, g);
        agx = _mm512_fmadd_ps(g, _mm512_maskz_loadu_ps(m, x_hat + i), agx);
    }
    const __m512 vinv = _mm512_set1_ps(inv), vmg = _mm512_set1_ps(_mm512_reduce_add_ps(ag) / float(C));
    const __m512 vmgx = _mm512_set1_ps(_mm512_reduce_add_ps(agx) / float(C));
    for (std::int64_t i = 0; i < C; i += 16) {
        const __mmask16 m = tail_mask(C - i);
        const __m512 d = _mm512_maskz_loadu_ps(m, dy + i), h = _mm512_maskz_loadu_ps(m, x_hat + i);
        const __m512 g = _mm512_sub_ps(_mm512_mul_ps(d, _mm512_maskz_loadu_ps(m, w + i)), vmg);
        _mm512_mask_storeu_ps(dx + i, m, _mm512_mul_ps(vinv, _mm512_fnmadd_ps(h, vmgx, g)));
        _mm512_mask_storeu_ps(dw + i, m, _mm512_fmadd_ps(d, h, _mm512_maskz_loadu_ps(m, dw + i)));
        _mm512_mask_storeu_ps(db + i, m, _mm512_add_ps(d, _mm512_maskz_loadu_ps(m, db + i)));
    }
}

// ---- GELU (tanh form, as x s(2u)), SiLU (x s(x)); s from e = exp(-|z|), never overflowing

namespace {

MINILLM_AVX512 inline void sigmoid_pair(__m512 z, __m512& s, __m512& oms) {
    const __m512 e = exp512(_mm512_or_ps(z, _mm512_set1_ps(-0.0f)));   // exp(-|z|)
    const __m512 r = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_add_ps(_mm512_set1_ps(1.0f), e));
    const __m512 er = _mm512_mul_ps(e, r);
    const __mmask16 neg = _mm512_cmp_ps_mask(z, _mm512_setzero_ps(), _CMP_LT_OQ);
    s = _mm512_mask_blend_ps(neg, r, er);
    oms = _mm512_mask_blend_ps(neg, er, r);
}

MINILLM_AVX512 inline __m512 gelu_clamp(__m512 x) {   // max/min return the 2nd operand on NaN
    return _mm512_min_ps(_mm512_set1_ps(float(kGeluClamp)), _mm512_max_ps(_mm512_set1_ps(float(-kGeluClamp)), x));
}

MINILLM_AVX512 inline __m512 gelu_z(__m512 xc) {   // 2u = 2c x (1 + a x^2)
    const __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(float(kGeluA)), _mm512_mul_ps(xc, xc), _mm512_set1_ps(1.0f));
    return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(float(2 * kGeluC)), xc), p);
}

}  // namespace

MINILLM_AVX512 void gelu_forward(const float* x, float* y, std::int64_t n) {
    for (std::int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        __m512 s, oms;
        sigmoid_pair(gelu_z(gelu_clamp(v)), s, oms);
        _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(v, s));
    }
}

MINILLM_AVX512 void gelu_backward(const float* dy, const float* x, float* dx, std::int64_t n) {
    for (std::int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        const __m512 xc = gelu_clamp(_mm512_maskz_loadu_ps(m, x + i));
        __m512 s, oms;
        sigmoid_pair(gelu_z(xc), s, oms);
        // s + 2c x s (1 - s) (1 + 3a x^2)
        const __m512 q = _mm512_fmadd_ps(_mm512_set1_ps(float(3 * kGeluA)), _mm512_mul_ps(xc, xc), _mm512_set1_ps(1.0f));
        const __m512 t = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(float(2 * kGeluC)), xc), _mm512_mul_ps(s, oms));
        _mm512_mask_storeu_ps(dx + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, dy + i), _mm512_fmadd_ps(t, q, s)));
    }
}

MINILLM_AVX512 void silu_forward(const float* x, float* y, std::int64_t n) {
    for (std::int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        __m512 s, oms;
        sigmoid_pair(v, s, oms);
        _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(v, s));
    }
}

MINILLM_AVX512 void silu_backward(const float* dy, const float* x, float* dx, std::int64_t n) {
    for (std::int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        __m512 s, oms;
        sigmoid_pair(v, s, oms);
        const __m512 grad = _mm512_mul_ps(s, _mm512_fmadd_ps(v, oms, _mm512_set1_ps(1.0f)));   // s (1 + x (1 - s))
        _mm512_mask_storeu_ps(dx + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, dy + i), grad));
    }
}

}  // namespace rows512
}  // namespace minillm
#endif
