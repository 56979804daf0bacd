// GEMV: y (N) = x (K) op(B) [+ y] [+ bias], the M = 1 case of the GEMM (gemm.cpp), as in every
// decode step. It is bound by reading B, so B is read exactly once, in long contiguous runs:
//   B stored (N, K) (trans_b, the forward's y = x W^T): y_j = <x, B_j>, four rows of B at a time
//       against one load of x, eight independent FMA chains (four rows x two halves of k);
//   B stored (K, N): y += x_k B_k over blocks of eight rows of B, each thread owning a contiguous
//       range of columns, so the eight rows stream side by side and y stays in L1/L2.
// Threads split the rows (or columns) of B when it holds at least kParallelGemv values.
#include <algorithm>

#include "gemm.h"
#include "parallel.h"
#include "simd512.h"

namespace minillm {

Isa gemv_isa() { return float_family_isa(); }

namespace blas {

namespace {

constexpr std::int64_t kParallelGemv = std::int64_t(1) << 17;   // values of B (512 KiB of float32)

// ---- B stored (N, K): 4 dot products <x, B_j> .. <x, B_{j+3}> at a time

template <typename T>
void dot4_scalar(const T* x, const T* b, std::int64_t ld, std::int64_t K, T* out) {
    for (int r = 0; r < 4; ++r) {
        const T* row = b + r * ld;
        T s0 = 0, s1 = 0;   // two partial sums: independent chains
        std::int64_t k = 0;
        for (; k + 2 <= K; k += 2) s0 += x[k] * row[k], s1 += x[k + 1] * row[k + 1];
        if (k < K) s0 += x[k] * row[k];
        out[r] = s0 + s1;
    }
}

#if MINILLM_X86
MINILLM_AVX2 void dot4_avx2(const float* x, const float* b, std::int64_t ld, std::int64_t K, float* out) {
    __m256 acc[4][2];
    for (int r = 0; r < 4; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    std::int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        const __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
        for (int r = 0; r < 4; ++r) {
            acc[r][0] = _mm256_fmadd_ps(x0, _mm256_loadu_ps(b + r * ld + k), acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(x1, _mm256_loadu_ps(b + r * ld + k + 8), acc[r][1]);
        }
    }
    for (int r = 0; r < 4; ++r) {
        float s = hsum(_mm256_add_ps(acc[r][0], acc[r][1]));
        for (std::int64_t i = k; i < K; ++i) s += x[i] * b[r * ld + i];
        out[r] = s;
    }
}

MINILLM_AVX512 void dot4_avx512(const float* x, const float* b, std::int64_t ld, std::int64_t K, float* out) {
    __m512 acc[4][2];
    for (int r = 0; r < 4; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    std::int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        const __m512 x0 = _mm512_loadu_ps(x + k), x1 = _mm512_loadu_ps(x + k + 16);
        for (int r = 0; r < 4; ++r) {
            acc[r][0] = _mm512_fmadd_ps(x0, _mm512_loadu_ps(b + r * ld + k), acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(x1, _mm512_loadu_ps(b + r * ld + k + 16), acc[r][1]);
        }
    }
    for (; k < K; k += 16) {   // the last 1 .. 31 values, masked
        const __mmask16 m = tail_mask(K - k);
        const __m512 xv = _mm512_maskz_loadu_ps(m, x + k);
        for (int r = 0; r < 4; ++r) acc[r][0] = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(m, b + r * ld + k), acc[r][0]);
    }
    for (int r = 0; r < 4; ++r) out[r] = hsum512(_mm512_add_ps(acc[r][0], acc[r][1]));
}
#endif

template <typename T>
void dot4(Isa isa, const T* x, const T* b, std::int64_t ld, std::int64_t K, T* out) {
    MINILLM_USE_AVX512(T, isa, dot4_avx512(x, b, ld, K, out));
    MINILLM_USE_AVX2(T, isa, dot4_avx2(x, b, ld, K, out));
    dot4_scalar(x, b, ld, K, out);
}

// ---- B stored (K, N): y[j0 .. j1) += sum over rows k0 .. k0 + 8 of x_k B[k, j0 .. j1)

template <typename T>
void axpy8_scalar(const T* x, const T* b, std::int64_t ld, std::int64_t rows, std::int64_t j0, std::int64_t j1, T* y) {
    for (std::int64_t r = 0; r < rows; ++r) {
        const T xr = x[r];
        const T* row = b + r * ld;
        for (std::int64_t j = j0; j < j1; ++j) y[j] += xr * row[j];
    }
}

#if MINILLM_X86
MINILLM_AVX2 void axpy8_avx2(const float* x, const float* b, std::int64_t ld, std::int64_t rows, std::int64_t j0,
                             std::int64_t j1, float* y) {
    if (rows < 8) return axpy8_scalar(x, b, ld, rows, j0, j1, y);
    __m256 xr[8];
    for (int r = 0; r < 8; ++r) xr[r] = _mm256_set1_ps(x[r]);
    std::int64_t j = j0;
    for (; j + 8 <= j1; j += 8) {
        __m256 v = _mm256_loadu_ps(y + j);
        for (int r = 0; r < 8; ++r) v = _mm256_fmadd_ps(xr[r], _mm256_loadu_ps(b + r * ld + j), v);
        _mm256_storeu_ps(y + j, v);
    }
    axpy8_scalar(x, b, ld, 8, j, j1, y);
}

MINILLM_AVX512 void axpy8_avx512(const float* x, const float* b, std::int64_t ld, std::int64_t rows, std::int64_t j0,
                                 std::int64_t j1, float* y) {
    __m512 xr[8];
    for (int r = 0; r < 8; ++r) xr[r] = _mm512_set1_ps(r < rows ? x[r] : 0.0f);
    for (std::int64_t j = j0; j < j1; j += 16) {
        const __mmask16 m = tail_mask(j1 - j);
        __m512 v = _mm512_maskz_loadu_ps(m, y + j);
        for (int r = 0; r < 8; ++r)
            if (r < rows) v = _mm512_fmadd_ps(xr[r], _mm512_maskz_loadu_ps(m, b + r * ld + j), v);
        _mm512_mask_storeu_ps(y + j, m, v);
    }
}
#endif

template <typename T>
void axpy8(Isa isa, const T* x, const T* b, std::int64_t ld, std::int64_t rows, std::int64_t j0, std::int64_t j1,
           T* y) {
    MINILLM_USE_AVX512(T, isa, axpy8_avx512(x, b, ld, rows, j0, j1, y));
    MINILLM_USE_AVX2(T, isa, axpy8_avx2(x, b, ld, rows, j0, j1, y));
    axpy8_scalar(x, b, ld, rows, j0, j1, y);
}

}  // namespace

template <typename T>
void gemv(const T* x, const Operand<T>& b, T* y, std::int64_t K, std::int64_t N, bool accumulate, const T* bias) {
    const Isa isa = simd_isa<T>();
    const int threads = threads_for(N * K, kParallelGemv);
    if (b.trans) {   // B (N, K): blocks of 4 rows, shared out in chunks so a busy thread takes fewer
        const std::int64_t blocks = N / 4;
#if defined(MINILLM_OPENMP)
#pragma omp parallel for schedule(dynamic, 16) num_threads(threads) if (threads > 1)
#endif
        for (std::int64_t blk = 0; blk < blocks + (N % 4 ? 1 : 0); ++blk) {
            T out[4];
            const std::int64_t j = blk * 4;
            if (blk < blocks) {
                dot4(isa, x, b.p + j * b.ld, b.ld, K, out);
            } else {   // the last 1 .. 3 rows
                for (std::int64_t r = 0; r < N - j; ++r) {
                    T s = 0;
                    for (std::int64_t k = 0; k < K; ++k) s += x[k] * b.p[(j + r) * b.ld + k];
                    out[r] = s;
                }
            }
            for (std::int64_t r = 0; r < std::min<std::int64_t>(4, N - j); ++r) {
                const T v = out[r] + (bias ? bias[j + r] : T(0));
                y[j + r] = accumulate ? y[j + r] + v : v;
            }
        }
        return;
    }
    // B (K, N): each thread a contiguous range of columns (a multiple of 16), all K rows, 8 at a time
#if defined(MINILLM_OPENMP)
#pragma omp parallel num_threads(threads) if (threads > 1)
#endif
    {
        int t = 0, nt = 1;
#if defined(MINILLM_OPENMP)
        t = omp_get_thread_num(), nt = omp_get_num_threads();
#endif
        const std::int64_t per = ((N + nt - 1) / nt + 15) / 16 * 16;
        const std::int64_t j0 = std::min(N, t * per), j1 = std::min(N, j0 + per);
        for (std::int64_t j = j0; j < j1; ++j) y[j] = (accumulate ? y[j] : T(0)) + (bias ? bias[j] : T(0));
        for (std::int64_t k = 0; k < K && j0 < j1; k += 8)
            axpy8(isa, x + k, b.p + k * b.ld, b.ld, std::min<std::int64_t>(8, K - k), j0, j1, y);
    }
}

template void gemv<float>(const float*, const Operand<float>&, float*, std::int64_t, std::int64_t, bool, const float*);
template void gemv<double>(const double*, const Operand<double>&, double*, std::int64_t, std::int64_t, bool,
                           const double*);

}  // namespace blas
}  // namespace minillm
