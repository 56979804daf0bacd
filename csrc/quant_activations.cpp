// Activation quantization for the quantized matmul (quant.cpp): each row of x, per group of 32
// values, to int8 with one scale (llama.cpp's Q8_0), plus the group's scaled sum that q4_1 needs.
//     xd = max |x_group| / 127,  xq = round(x / xd) in [-127, 127],  xs = xd * sum(xq)
// Rounding is to nearest, ties to even, and the division is a multiplication by 1 / xd, exactly
// as minillm/kernels/reference/quant.py does it. Its binding is in quant.cpp.
#include <algorithm>
#include <cmath>

#include "quant.h"
#include "simd.h"

namespace minillm {

constexpr std::int64_t kGroup = kQuantGroup;

Isa quantize_activations_isa() { return best_isa(active_isa(), {Isa::avx2}); }

static void quantize_row_scalar(const float* x, std::int64_t K, std::int8_t* xq, float* xd, float* xs) {
    for (std::int64_t g0 = 0, g = 0; g0 < K; g0 += kGroup, ++g) {
        const std::int64_t n = std::min(kGroup, K - g0);
        float amax = 0.0f;
        for (std::int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[g0 + i]));
        const float d = amax / 127.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
        std::int32_t sum = 0;
        for (std::int64_t i = 0; i < n; ++i) {
            float v = std::nearbyint(x[g0 + i] * id);
            v = std::min(127.0f, std::max(-127.0f, v));
            xq[g0 + i] = static_cast<std::int8_t>(v);
            sum += static_cast<std::int32_t>(v);
        }
        xd[g] = d;
        xs[g] = d * static_cast<float>(sum);
    }
}

#if MINILLM_X86
MINILLM_AVX2 static void quantize_row_avx2(const float* x, std::int64_t K, std::int8_t* xq, float* xd, float* xs) {
    const std::int64_t full = K / kGroup;
    const __m256 sign_bit = _mm256_set1_ps(-0.0f);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (std::int64_t g = 0; g < full; ++g) {
        const float* p = x + g * kGroup;
        __m256 v0 = _mm256_loadu_ps(p), v1 = _mm256_loadu_ps(p + 8);
        __m256 v2 = _mm256_loadu_ps(p + 16), v3 = _mm256_loadu_ps(p + 24);
        __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign_bit, v0), _mm256_andnot_ps(sign_bit, v1)),
                                 _mm256_max_ps(_mm256_andnot_ps(sign_bit, v2), _mm256_andnot_ps(sign_bit, v3)));
        const float d = hmax(m) / 127.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
        const __m256 vid = _mm256_set1_ps(id);
        const int mode = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
        // |x * id| <= 127 up to rounding, and round(127.00001) = 127, so no clamp is needed
        __m256i i0 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v0, vid), mode));
        __m256i i1 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v1, vid), mode));
        __m256i i2 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v2, vid), mode));
        __m256i i3 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v3, vid), mode));
        __m256i sum = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
        __m128i s = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        s = _mm_hadd_epi32(s, s);
        s = _mm_hadd_epi32(s, s);
        // pack 32 int32 -> 32 int8; packs interleave 128-bit lanes, the permute restores the order
        __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(xq + g * kGroup), _mm256_permutevar8x32_epi32(packed, perm));
        xd[g] = d;
        xs[g] = d * static_cast<float>(_mm_cvtsi128_si32(s));
    }
    if (full * kGroup < K)
        quantize_row_scalar(x + full * kGroup, K - full * kGroup, xq + full * kGroup, xd + full, xs + full);
}
#endif

static void quantize_row(Isa isa, const float* x, std::int64_t K, std::int8_t* xq, float* xd, float* xs) {
    MINILLM_USE_AVX2(float, isa, quantize_row_avx2(x, K, xq, xd, xs));
    quantize_row_scalar(x, K, xq, xd, xs);
}

void quantize_activations(const float* x, std::int64_t M, std::int64_t K, std::int8_t* xq, float* xd, float* xs) {
    const std::int64_t G = (K + kGroup - 1) / kGroup;
    const Isa isa = active_isa();
#if defined(MINILLM_OPENMP)
#pragma omp parallel for schedule(static) if (M * K >= kParallelThreshold)
#endif
    for (std::int64_t m = 0; m < M; ++m) quantize_row(isa, x + m * K, K, xq + m * K, xd + m * G, xs + m * G);
}

}  // namespace minillm
