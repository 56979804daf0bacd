// Activation quantization for the quantized matmul (quant.cpp): each row of x, per group of 32
// values, to int8 with one scale (llama.cpp's Q8_0), plus the group's scaled sum that q4_1 needs.
//     xd = max |x_group| / 127 (at least 2^-149 unless all zeros),  xq = round(x / xd) in [-127, 127],
//     xs = xd * sum(xq);   a group holding NaN or +-inf: xq = 0, xd = xs = NaN
// Rounding is to nearest, ties to even, and x / xd is a true division, exactly as
// minillm/kernels/reference/quant.py does it. Scalar, AVX2 and AVX-512 twins, bit for bit equal.
// Its binding is in quant.cpp.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>

#include "parallel.h"
#include "quant.h"
#include "simd512.h"

namespace minillm {

Isa quantize_activations_isa() { return float_family_isa(); }

namespace {

constexpr std::int64_t kGroup = kQuantGroup;
constexpr float kTiny = 1.40129846e-45f;   // 2^-149, the smallest denormal

// One group's outputs from its max |x| (or +inf / NaN when the group is not finite): the scale d,
// or NaN with every q = 0.
struct GroupScale {
    float d;
    bool finite;
};
inline GroupScale group_scale(float amax, bool finite) {
    if (!finite) return {std::numeric_limits<float>::quiet_NaN(), false};
    const float d = amax / 127.0f;
    return {amax > 0.0f ? std::max(d, kTiny) : d, true};
}

void quantize_row_scalar(const float* x, std::int64_t K, std::int8_t* xq, float* xd, float* xs, std::int32_t* xsum) {
    for (std::int64_t g0 = 0, g = 0; g0 < K; g0 += kGroup, ++g) {
        const std::int64_t n = std::min(kGroup, K - g0);
        float amax = 0.0f;
        bool finite = true;
        for (std::int64_t i = 0; i < n; ++i) {
            const float a = std::fabs(x[g0 + i]);
            finite = finite && a <= FLT_MAX;   // false for inf and for NaN
            amax = std::max(amax, a);
        }
        const GroupScale s = group_scale(amax, finite);
        std::int32_t sum = 0;
        for (std::int64_t i = 0; i < n; ++i) {
            float v = s.finite && s.d > 0.0f ? std::nearbyint(x[g0 + i] / s.d) : 0.0f;
            v = std::min(127.0f, std::max(-127.0f, v));
            xq[g0 + i] = static_cast<std::int8_t>(v);
            sum += static_cast<std::int32_t>(v);
        }
        xd[g] = s.d;
        xs[g] = s.d * static_cast<float>(sum);
        if (xsum) xsum[g] = sum;
    }
}

#if MINILLM_X86
MINILLM_AVX2 void quantize_row_avx2(const float* x, std::int64_t K, std::int8_t* xq, float* xd, float* xs,
                                    std::int32_t* xsum) {
    const std::int64_t full = K / kGroup;
    const __m256 sign_bit = _mm256_set1_ps(-0.0f), big = _mm256_set1_ps(FLT_MAX);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (std::int64_t g = 0; g < full; ++g) {
        const float* p = x + g * kGroup;
        __m256 v[4], a[4];
        for (int i = 0; i < 4; ++i) v[i] = _mm256_loadu_ps(p + 8 * i), a[i] = _mm256_andnot_ps(sign_bit, v[i]);
        // !(|x| <= FLT_MAX) holds for inf and NaN (an unordered compare is true)
        const __m256 bad = _mm256_or_ps(_mm256_or_ps(_mm256_cmp_ps(a[0], big, _CMP_NLE_UQ), _mm256_cmp_ps(a[1], big, _CMP_NLE_UQ)),
                                        _mm256_or_ps(_mm256_cmp_ps(a[2], big, _CMP_NLE_UQ), _mm256_cmp_ps(a[3], big, _CMP_NLE_UQ)));
        const float amax = hmax(_mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3])));
        const GroupScale s = group_scale(amax, _mm256_movemask_ps(bad) == 0);
        std::int8_t* out = xq + g * kGroup;
        if (!(s.finite && s.d > 0.0f)) {   // all zeros, or not finite
            std::fill(out, out + kGroup, std::int8_t(0));
            xd[g] = s.d, xs[g] = s.finite ? 0.0f : s.d;
            if (xsum) xsum[g] = 0;
            continue;
        }
        const __m256 vd = _mm256_set1_ps(s.d);
        __m256i q[4];   // |x / d| <= 127 up to rounding, and round(127.00001) = 127: no clamp needed
        for (int i = 0; i < 4; ++i) q[i] = _mm256_cvtps_epi32(_mm256_div_ps(v[i], vd));   // nearest, ties to even
        const __m256i sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        s4 = _mm_hadd_epi32(s4, s4);
        s4 = _mm_hadd_epi32(s4, s4);
        // pack 32 int32 -> 32 int8; packs interleave 128-bit lanes, the permute restores the order
        const __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_permutevar8x32_epi32(packed, perm));
        const std::int32_t total = _mm_cvtsi128_si32(s4);
        xd[g] = s.d, xs[g] = s.d * static_cast<float>(total);
        if (xsum) xsum[g] = total;
    }
    if (full * kGroup < K)
        quantize_row_scalar(x + full * kGroup, K - full * kGroup, xq + full * kGroup, xd + full, xs + full,
                            xsum ? xsum + full : nullptr);
}

MINILLM_AVX512 void quantize_row_avx512(const float* x, std::int64_t K, std::int8_t* xq, float* xd, float* xs,
                                        std::int32_t* xsum) {
    const std::int64_t groups = (K + kGroup - 1) / kGroup;
    const __m512 big = _mm512_set1_ps(FLT_MAX);
    for (std::int64_t g = 0; g < groups; ++g) {   // the last group may be short: masked loads and stores
        const std::int64_t n = std::min(kGroup, K - g * kGroup);
        const __mmask16 m0 = tail_mask(n), m1 = tail_mask(std::max<std::int64_t>(n - 16, 0));
        const float* p = x + g * kGroup;
        const __m512 v0 = _mm512_maskz_loadu_ps(m0, p), v1 = _mm512_maskz_loadu_ps(m1, p + 16);
        const __m512 a0 = _mm512_abs_ps(v0), a1 = _mm512_abs_ps(v1);
        const bool finite = (_mm512_cmp_ps_mask(a0, big, _CMP_NLE_UQ) | _mm512_cmp_ps_mask(a1, big, _CMP_NLE_UQ)) == 0;
        const GroupScale s = group_scale(_mm512_reduce_max_ps(_mm512_max_ps(a0, a1)), finite);
        std::int32_t total = 0;
        __m512i q0 = _mm512_setzero_si512(), q1 = q0;
        if (s.finite && s.d > 0.0f) {
            const __m512 vd = _mm512_set1_ps(s.d);
            q0 = _mm512_cvtps_epi32(_mm512_div_ps(v0, vd));   // nearest, ties to even; masked lanes are 0
            q1 = _mm512_cvtps_epi32(_mm512_div_ps(v1, vd));
            total = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
        }
        _mm_mask_storeu_epi8(xq + g * kGroup, m0, _mm512_cvtsepi32_epi8(q0));
        _mm_mask_storeu_epi8(xq + g * kGroup + 16, m1, _mm512_cvtsepi32_epi8(q1));
        xd[g] = s.d, xs[g] = s.finite ? s.d * static_cast<float>(total) : s.d;
        if (xsum) xsum[g] = total;
    }
}
#endif

void quantize_row(Isa isa, const float* x, std::int64_t K, std::int8_t* xq, float* xd, float* xs, std::int32_t* xsum) {
    MINILLM_USE_AVX512(float, isa, quantize_row_avx512(x, K, xq, xd, xs, xsum));
    MINILLM_USE_AVX2(float, isa, quantize_row_avx2(x, K, xq, xd, xs, xsum));
    quantize_row_scalar(x, K, xq, xd, xs, xsum);
}

}  // namespace

void quantize_activations(const float* x, std::int64_t M, std::int64_t K, std::int8_t* xq, float* xd, float* xs,
                          std::int32_t* xsum, std::int64_t xsum_stride) {
    const std::int64_t G = (K + kGroup - 1) / kGroup;
    const Isa isa = active_isa();
    const int threads = M > 1 ? threads_for(M * K) : 1;
    (void)threads;
#if defined(MINILLM_OPENMP)
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
#endif
    for (std::int64_t m = 0; m < M; ++m) {
        std::int32_t* sums = xsum ? xsum + m * xsum_stride : nullptr;
        quantize_row(isa, x + m * K, K, xq + m * K, xd + m * G, xs + m * G, sums);
        if (sums)
            for (std::int64_t g = G; g < xsum_stride; ++g) sums[g] = 0;
    }
}

}  // namespace minillm
