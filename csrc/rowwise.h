// Helpers for the row-wise kernel families (softmax, loss, norm, activation): run a body over
// rows on OpenMP threads when the work pays for a parallel region, and reduce per-thread partial
// buffers (weight gradients) without atomics.
#pragma once

#include <type_traits>
#include <vector>

#include "simd.h"

namespace minillm {

// True when a kernel on T should take its AVX2/FMA path now (float32 only; float64 is scalar).
template <typename T>
inline bool simd_path() {
#if MINILLM_X86
    return std::is_same<T, float>::value && use_avx2();
#else
    return false;
#endif
}

// Outputs of at least this many bytes (twice the 32 MiB L3) are written with non-temporal stores:
// they will not be read again before they leave the cache, and streaming skips reading each line
// before it is written.
constexpr std::int64_t kStreamBytes = std::int64_t(64) << 20;

#if MINILLM_X86
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

// body(r) for every r in [0, rows); over OpenMP threads when rows * cols elements of work
// are enough to pay for a parallel region.
template <typename F>
inline void parallel_rows(std::int64_t rows, std::int64_t cols, F&& body) {
    (void)cols;   // only the OpenMP build uses it
#if defined(MINILLM_OPENMP)
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelThreshold && rows > 1)
#endif
    for (std::int64_t r = 0; r < rows; ++r) body(r);
}

// body(r, partial) for every r in [0, rows), where `partial` is this thread's zeroed buffer of
// `width` values; then out[c] = sum over threads of partial[c]. Each thread only writes its own
// buffer, so the reduction needs no atomics, and the sum order is fixed for a given thread count.
template <typename T, typename F>
inline void parallel_rows_reduce(std::int64_t rows, std::int64_t cols, std::int64_t width, T* out, F&& body) {
    (void)cols;
    int threads = 1;
#if defined(MINILLM_OPENMP)
    if (rows * cols >= kParallelThreshold && rows > 1) threads = omp_get_max_threads();
#endif
    std::vector<T> partial(static_cast<std::size_t>(threads) * width, T(0));
#if defined(MINILLM_OPENMP)
#pragma omp parallel num_threads(threads) if (threads > 1)
#endif
    {
        int t = 0;
#if defined(MINILLM_OPENMP)
        t = omp_get_thread_num();
#pragma omp for schedule(static)
#endif
        for (std::int64_t r = 0; r < rows; ++r) body(r, partial.data() + t * width);
    }
    for (std::int64_t c = 0; c < width; ++c) {
        T s = 0;
        for (int t = 0; t < threads; ++t) s += partial[t * width + c];
        out[c] = s;
    }
}

}  // namespace minillm
