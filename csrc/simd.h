// SIMD dispatch for every kernel family: the instruction-set paths a kernel may take, which one
// runs now, and the AVX2/FMA building blocks the kernels share (the AVX-512 ones: simd512.h).
//
// The dispatch idiom. A kernel has a scalar twin (float64 always takes it, float32 too when
// forced) and, for float32, one version per instruction set it was written for, compiled per
// function with a target attribute (MINILLM_AVX2, MINILLM_AVX512, ...) so one build runs on any
// x86-64; on other CPUs only the scalar code exists. The driver reads the path once,
// `const Isa isa = simd_isa<T>();`, and a small dispatch function picks the version, best first:
//
//     template <typename T>
//     void softmax_row(Isa isa, const T* x, T* y, std::int64_t n) {
//         MINILLM_USE_AVX512(T, isa, softmax_row_avx512(x, y, n));   // returns when it ran
//         MINILLM_USE_AVX2(T, isa, softmax_row_avx2(x, y, n));
//         softmax_row_scalar(x, y, n);
//     }
//
// The paths are ordered: each float path implies the ones below it (avx512 >= avx2 >= scalar).
// The two VNNI paths add the int8 dot-product instruction to the level below them and matter
// only to the quantized matmul: avx2-vnni (AVX-VNNI, the VEX form) is not implied by avx512, so
// a kernel tests it with `isa == Isa::avx2_vnni`, never with >=. A new instruction set adds an Isa
// value, its detection in cpu.cpp, a MINILLM_<ISA> target attribute and a MINILLM_USE_<ISA>
// line in the kernels that have such a version; the others keep running their best.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#define MINILLM_X86 1
#include <immintrin.h>
#define MINILLM_AVX2 __attribute__((target("avx2,fma")))
#define MINILLM_AVX512 __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq")))
#define MINILLM_AVX512_VNNI __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))
// AVX-VNNI (_mm256_dpbusd_avx_epi32) needs GCC 11 or Clang 12; older compilers build without that path.
#if (defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11)
#define MINILLM_HAS_AVXVNNI 1
#define MINILLM_AVX2_VNNI __attribute__((target("avx2,fma,avxvnni")))
#else
#define MINILLM_HAS_AVXVNNI 0
#endif
#else
#define MINILLM_X86 0
#define MINILLM_HAS_AVXVNNI 0
#endif

#if defined(MINILLM_OPENMP)
#include <omp.h>
#endif

namespace minillm {

// The instruction-set paths, in increasing order (see the top of this file for what implies what).
enum class Isa : int {
    scalar = 0,        // portable C++
    avx2 = 1,          // AVX2 + FMA (x86-64)
    avx2_vnni = 2,     // AVX2 + FMA + AVX-VNNI (vpdpbusd on ymm, VEX encoded)
    avx512 = 3,        // AVX2 + FMA + AVX-512 F/BW/VL/DQ
    avx512_vnni = 4,   // AVX-512 + AVX512-VNNI (vpdpbusd on zmm)
};
constexpr int kIsaCount = 5;

// The best path this CPU (and its OS) supports, ignoring any forcing.
Isa cpu_isa();
// True when this CPU and OS can run `isa` (and this build compiled it).
bool cpu_supports(Isa isa);
// What the kernels use now: cpu_isa(), or the path forced by force_isa.
Isa active_isa();
// Run every kernel on `isa` (which the CPU must support: callers check with cpu_supports), or on
// the CPU's best again with `reset_isa()`. Tests use it to hold every version equal to its twin.
void force_isa(Isa isa);
void reset_isa();
// "scalar", "avx2", "avx2-vnni", "avx512", "avx512-vnni".
const char* isa_name(Isa isa);

// The level a kernel on T runs at now: the SIMD versions are float32 only; float64 is scalar.
template <typename T>
inline Isa simd_isa() {
    return std::is_same<T, float>::value ? active_isa() : Isa::scalar;
}

// The path a family takes under `active`, given the versions it has (best first, ending in
// scalar): the first one `active` allows. avx2_vnni is allowed only by itself (see the top).
inline bool isa_allows(Isa active, Isa version) {
    if (version == Isa::avx2_vnni) return active == Isa::avx2_vnni;
    return active >= version;
}
inline Isa best_isa(Isa active, std::initializer_list<Isa> versions) {
    for (Isa v : versions)
        if (isa_allows(active, v)) return v;
    return Isa::scalar;
}
// The path of a float32 family whose versions are avx512, avx2 and scalar (most of them).
inline Isa float_family_isa() { return best_isa(active_isa(), {Isa::avx512, Isa::avx2}); }

// In a function on T (a template parameter, or float itself): `return call;` when T is float and
// `isa` allows the instruction set, else nothing (the line vanishes on CPUs without such code).
#if MINILLM_X86
#define MINILLM_USE_ISA_(T, isa, level, call)                      \
    if constexpr (std::is_same<T, float>::value) {                 \
        if ((isa) >= ::minillm::Isa::level) return call;           \
    }
#define MINILLM_USE_AVX2(T, isa, call) MINILLM_USE_ISA_(T, isa, avx2, call)
#define MINILLM_USE_AVX512(T, isa, call) MINILLM_USE_ISA_(T, isa, avx512, call)
#else
#define MINILLM_USE_AVX2(T, isa, call) (void)(isa);
#define MINILLM_USE_AVX512(T, isa, call) (void)(isa);
#endif

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
// Inputs below -87.3 give 0, above 88.7 give +inf (like expf); NaN stays NaN (max_ps and min_ps
// return their second operand when one is NaN, so x goes second).
MINILLM_AVX2 inline __m256 exp256(__m256 x) {
    const __m256 hi = _mm256_set1_ps(88.7228f), lo = _mm256_set1_ps(-87.3365f);
    __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    __m256 over = _mm256_cmp_ps(x, hi, _CMP_GT_OQ);
    x = _mm256_min_ps(hi, _mm256_max_ps(lo, x));
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

// exp(x) for x <= 0: the softmax family only exponentiates x - max(x) and log-probabilities. It is
// exp256 (same polynomial, same accuracy) without the overflow branch, and since the clamp at
// -87.34 keeps n = round(x / ln2) in [-126, 0], 2^n is built in one step. Below -87.34 gives 0;
// NaN stays NaN (max_ps returns its second operand when one is NaN).
MINILLM_AVX2 inline __m256 exp256_nonpos(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.3365f);
    const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_max_ps(lo, x);
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);   // r = x - n ln2 (Cody-Waite)
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}
#endif

}  // namespace minillm
