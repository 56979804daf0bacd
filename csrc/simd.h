// Shared helpers for the native kernels: run-time CPU feature detection and AVX2/FMA
// building blocks. Every SIMD kernel has a scalar twin that it must equal; the SIMD
// version is compiled per function with __attribute__((target("avx2,fma"))) so the
// library builds and runs on any x86-64 (and on ARM, where only the scalar code exists).
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#define MINILLM_X86 1
#include <immintrin.h>
#define MINILLM_AVX2 __attribute__((target("avx2,fma")))
#else
#define MINILLM_X86 0
#endif

#if defined(MINILLM_OPENMP)
#include <omp.h>
#endif

namespace minillm {

// True when the CPU has AVX2 and FMA and the scalar path has not been forced.
bool use_avx2();
// Force the portable scalar path (tests use it to hold both paths equal).
void force_scalar(bool on);
// "avx2+fma" or "scalar": what use_avx2() would pick on this CPU, ignoring force_scalar.
const char* cpu_simd();

// Below this many elements of work a parallel region costs more than it saves.
constexpr std::int64_t kParallelThreshold = 1 << 15;

#if MINILLM_X86
// Horizontal sum and max of the 8 lanes.
MINILLM_AVX2 inline float hsum(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
    return _mm_cvtss_f32(lo);
}

MINILLM_AVX2 inline float hmax(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_max_ps(lo, hi);
    lo = _mm_max_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_max_ss(lo, _mm_shuffle_ps(lo, lo, 1));
    return _mm_cvtss_f32(lo);
}

// exp(x) for 8 floats, relative error ~2 ulp: x = n ln2 + r with |r| <= ln2/2,
// exp(r) by a degree-6 polynomial (Cephes expf), times 2^n built in the exponent bits.
// Inputs below -87.3 give 0, above 88.7 give +inf (like expf).
MINILLM_AVX2 inline __m256 exp256(__m256 x) {
    const __m256 hi = _mm256_set1_ps(88.7228f), lo = _mm256_set1_ps(-87.3365f);
    __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    __m256 over = _mm256_cmp_ps(x, hi, _CMP_GT_OQ);
    x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    // r = x - n*ln2 in two steps (Cody-Waite) for accuracy.
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    __m256 r2 = _mm256_mul_ps(r, r);
    p = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    // 2^n: n in [-126, 128]; split so 2^n never overflows the exponent field.
    __m256i ni = _mm256_cvtps_epi32(n);
    __m256i half = _mm256_srai_epi32(ni, 1);
    __m256 pow_a = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(half, _mm256_set1_epi32(127)), 23));
    __m256 pow_b = _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ni, half), _mm256_set1_epi32(127)), 23));
    __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, pow_a), pow_b);
    y = _mm256_andnot_ps(under, y);
    return _mm256_blendv_ps(y, _mm256_set1_ps(__builtin_inff()), over);
}
#endif

}  // namespace minillm
