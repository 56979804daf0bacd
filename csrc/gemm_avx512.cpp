// The AVX-512 path of the GEMM (gemm.h has the interface, gemm.cpp the driver).
//
// The register tile is 14 rows x 32 columns of C: 28 zmm accumulators, two zmm for a row of the B
// sliver, and the A values broadcast straight from memory into the FMAs (embedded broadcast), so
// 30 of the 32 zmm registers are busy and each k does 2 loads, 14 broadcasts and 28 FMAs. A slivers
// keep 16 values per k (14 used) so every k starts on a 64-byte line. Edge tiles (rows < 14,
// cols < 32) are written with masked stores straight from the registers.
//
// Packing transposes where the layout needs it, 16 x 16 blocks at a time in registers:
//   A not transposed (M, K), B transposed (N, K):  rows of the operand become k-major slivers
//   A transposed (K, M), B not transposed (K, N):  a masked copy of each k-row
#include <algorithm>

#include "gemm.h"
#include "simd512.h"

#if MINILLM_X86
namespace minillm {
namespace blas {

namespace {

constexpr std::int64_t MR = 14, NR = 32, A_STRIDE = 16;

// dst[k * ldd + j] = src[j * lds + k] for j < rows (zeros for rows <= j < 16), k < kc: the rows of a
// row-major block become k-major columns, 16 k at a time.
MINILLM_AVX512 void pack_transposed(const float* src, std::int64_t lds, std::int64_t rows, std::int64_t kc, float* dst,
                                    std::int64_t ldd) {
    __m512 r[16];
    for (std::int64_t k = 0; k < kc; k += 16) {
        const __mmask16 cols = tail_mask(kc - k);
        for (int j = 0; j < 16; ++j)
            r[j] = j < rows ? _mm512_maskz_loadu_ps(cols, src + j * lds + k) : _mm512_setzero_ps();
        transpose16x16(r);
        const std::int64_t n = std::min<std::int64_t>(16, kc - k);
        for (std::int64_t i = 0; i < n; ++i) _mm512_storeu_ps(dst + (k + i) * ldd, r[i]);
    }
}

MINILLM_AVX512 void pack_a_avx512(const Operand<float>& a, std::int64_t i0, std::int64_t rows, std::int64_t k0,
                                  std::int64_t kc, float* dst) {
    if (!a.trans) return pack_transposed(a.p + i0 * a.ld + k0, a.ld, rows, kc, dst, A_STRIDE);
    const __mmask16 m = tail_mask(rows);   // A stored (K, M): each k-row holds the sliver's rows
    for (std::int64_t k = 0; k < kc; ++k)
        _mm512_store_ps(dst + k * A_STRIDE, _mm512_maskz_loadu_ps(m, a.p + (k0 + k) * a.ld + i0));
}

MINILLM_AVX512 void pack_b_avx512(const Operand<float>& b, std::int64_t k0, std::int64_t kc, std::int64_t j0,
                                  std::int64_t cols, float* dst) {
    if (b.trans) {   // B stored (N, K): columns j0 .. j0 + 32 of op(B) are rows of B, two blocks of 16
        const float* src = b.p + j0 * b.ld + k0;
        pack_transposed(src, b.ld, std::min<std::int64_t>(cols, 16), kc, dst, NR);
        if (cols > 16) {
            pack_transposed(src + 16 * b.ld, b.ld, cols - 16, kc, dst + 16, NR);
        } else {
            for (std::int64_t k = 0; k < kc; ++k) _mm512_store_ps(dst + k * NR + 16, _mm512_setzero_ps());
        }
        return;
    }
    const __mmask16 m0 = tail_mask(cols), m1 = tail_mask(std::max<std::int64_t>(cols - 16, 0));
    for (std::int64_t k = 0; k < kc; ++k) {
        const float* src = b.p + (k0 + k) * b.ld + j0;
        _mm512_store_ps(dst + k * NR, _mm512_maskz_loadu_ps(m0, src));
        _mm512_store_ps(dst + k * NR + 16, _mm512_maskz_loadu_ps(m1, src + 16));
    }
}

MINILLM_AVX512 void tile_avx512(std::int64_t kc, const float* ap, const float* bp, float* c, std::int64_t ldc,
                                std::int64_t rows, std::int64_t cols, bool overwrite, const float* bias) {
    __m512 acc[MR][2];
#pragma GCC unroll 14
    for (int r = 0; r < MR; ++r) {
        acc[r][0] = acc[r][1] = _mm512_setzero_ps();
        if (r < rows) {   // C's two lines of this row, needed after the k loop
            _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc), _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc + 16), _MM_HINT_T0);
        }
    }
    for (std::int64_t k = 0; k < kc; ++k) {
        const __m512 b0 = _mm512_load_ps(bp), b1 = _mm512_load_ps(bp + 16);
#pragma GCC unroll 14
        for (int r = 0; r < MR; ++r) {
            const __m512 a = _mm512_set1_ps(ap[r]);
            acc[r][0] = _mm512_fmadd_ps(a, b0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(a, b1, acc[r][1]);
        }
        ap += A_STRIDE;
        bp += NR;
    }
    const __mmask16 m0 = tail_mask(cols), m1 = tail_mask(std::max<std::int64_t>(cols - 16, 0));
    const __m512 bias0 = overwrite && bias ? _mm512_maskz_loadu_ps(m0, bias) : _mm512_setzero_ps();
    const __m512 bias1 = overwrite && bias ? _mm512_maskz_loadu_ps(m1, bias + 16) : _mm512_setzero_ps();
#pragma GCC unroll 14
    for (int r = 0; r < MR; ++r) {
        if (r >= rows) break;
        float* row = c + r * ldc;
        const __m512 old0 = overwrite ? bias0 : _mm512_maskz_loadu_ps(m0, row);
        const __m512 old1 = overwrite ? bias1 : _mm512_maskz_loadu_ps(m1, row + 16);
        _mm512_mask_storeu_ps(row, m0, _mm512_add_ps(acc[r][0], old0));
        _mm512_mask_storeu_ps(row + 16, m1, _mm512_add_ps(acc[r][1], old1));
    }
}

}  // namespace

Kernel<float> avx512_kernel() { return Kernel<float>{MR, NR, A_STRIDE, &pack_a_avx512, &pack_b_avx512, &tile_avx512}; }

}  // namespace blas
}  // namespace minillm
#endif
