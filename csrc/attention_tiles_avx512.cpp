// The AVX-512 versions of attention's tile products and row helpers (contracts: attention_tiles.h;
// the scalar twins and the AVX2 versions: attention_tiles.cpp). Column tails are lane masks, so no
// scalar loop is left: a D = 64 head is two zmm per row, a 32-key tile two.
#include <algorithm>
#include <cmath>

#include "attention_tiles.h"
#include "simd512.h"

#if MINILLM_X86
namespace minillm {
namespace attn {

namespace {

// An MR x 16 NV block of C in MR * NV zmm accumulators, k rank-1 updates; the last of the NV vectors
// covers `last` columns (1 .. 16), loaded and stored through a mask.
template <int MR, int NV>
MINILLM_AVX512 void micro(std::int64_t k, float alpha, const float* A, std::int64_t lda, bool trans_a, const float* B,
                          std::int64_t ldb, float* C, std::int64_t ldc, bool accumulate, std::int64_t last) {
    __m512 c[MR][NV];
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) c[i][v] = _mm512_setzero_ps();
    const __mmask16 tail = tail_mask(last);
    const std::int64_t a_row = trans_a ? 1 : lda, a_col = trans_a ? lda : 1;   // element (i, p) at i*a_row + p*a_col
    for (std::int64_t p = 0; p < k; ++p) {
        __m512 b[NV];
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v)
            b[v] = v == NV - 1 ? _mm512_maskz_loadu_ps(tail, B + p * ldb + 16 * v) : _mm512_loadu_ps(B + p * ldb + 16 * v);
        const float* a = A + p * a_col;
#pragma GCC unroll 8
        for (int i = 0; i < MR; ++i) {
            const __m512 ai = _mm512_set1_ps(a[i * a_row]);
#pragma GCC unroll 2
            for (int v = 0; v < NV; ++v) c[i][v] = _mm512_fmadd_ps(ai, b[v], c[i][v]);
        }
    }
    const __m512 va = _mm512_set1_ps(alpha);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) {
            float* out = C + i * ldc + 16 * v;
            const __mmask16 m = v == NV - 1 ? tail : __mmask16(0xFFFF);
            __m512 r = _mm512_mul_ps(va, c[i][v]);
            if (accumulate) r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(m, out));
            _mm512_mask_storeu_ps(out, m, r);
        }
}

// MR rows of C: columns in blocks of 32, then one block of 1 .. 16 (or 17 .. 31 as 16 + the rest).
template <int MR>
MINILLM_AVX512 void row_block(std::int64_t n, std::int64_t k, float alpha, const float* A, std::int64_t lda,
                              bool trans_a, const float* B, std::int64_t ldb, float* C, std::int64_t ldc, bool accumulate) {
    std::int64_t j = 0;
    for (; j + 32 <= n; j += 32) micro<MR, 2>(k, alpha, A, lda, trans_a, B + j, ldb, C + j, ldc, accumulate, 16);
    if (n - j > 16) micro<MR, 2>(k, alpha, A, lda, trans_a, B + j, ldb, C + j, ldc, accumulate, n - j - 16);
    else if (n > j) micro<MR, 1>(k, alpha, A, lda, trans_a, B + j, ldb, C + j, ldc, accumulate, n - j);
}

}  // namespace

void matmul_tile_avx512(std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* A, std::int64_t lda,
                        bool trans_a, const float* B, std::int64_t ldb, float* C, std::int64_t ldc, bool accumulate) {
    constexpr int MR = 8;   // 8 x 32 block: 16 accumulators, 2 rows of B, a broadcast
    for (std::int64_t i = 0; i < m; i += MR) {
        const float* a = A + i * (trans_a ? 1 : lda);
        float* c = C + i * ldc;
        switch (std::min<std::int64_t>(MR, m - i)) {
            case 8: row_block<8>(n, k, alpha, a, lda, trans_a, B, ldb, c, ldc, accumulate); break;
            case 7: row_block<7>(n, k, alpha, a, lda, trans_a, B, ldb, c, ldc, accumulate); break;
            case 6: row_block<6>(n, k, alpha, a, lda, trans_a, B, ldb, c, ldc, accumulate); break;
            case 5: row_block<5>(n, k, alpha, a, lda, trans_a, B, ldb, c, ldc, accumulate); break;
            case 4: row_block<4>(n, k, alpha, a, lda, trans_a, B, ldb, c, ldc, accumulate); break;
            case 3: row_block<3>(n, k, alpha, a, lda, trans_a, B, ldb, c, ldc, accumulate); break;
            case 2: row_block<2>(n, k, alpha, a, lda, trans_a, B, ldb, c, ldc, accumulate); break;
            default: row_block<1>(n, k, alpha, a, lda, trans_a, B, ldb, c, ldc, accumulate); break;
        }
    }
}

// 16 x 16 blocks in registers, edges through masks.
MINILLM_AVX512 void transpose_tile_avx512(std::int64_t m, std::int64_t n, const float* A, std::int64_t lda, float* At) {
    __m512 r[16];
    for (std::int64_t i = 0; i < m; i += 16) {
        const std::int64_t rows = std::min<std::int64_t>(16, m - i);
        for (std::int64_t j = 0; j < n; j += 16) {
            const std::int64_t cols = std::min<std::int64_t>(16, n - j);
            const __mmask16 load = tail_mask(cols), store = tail_mask(rows);
            for (int t = 0; t < 16; ++t)
                r[t] = t < rows ? _mm512_maskz_loadu_ps(load, A + (i + t) * lda + j) : _mm512_setzero_ps();
            transpose16x16(r);
            for (int t = 0; t < cols; ++t) _mm512_mask_storeu_ps(At + (j + t) * m + i, store, r[t]);
        }
    }
}

MINILLM_AVX512 float row_max_avx512(const float* x, std::int64_t n) {
    __m512 vm = _mm512_set1_ps(-INFINITY);
    __mmask16 nan = 0;
    for (std::int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        const __m512 v = _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), m, x + i);
        vm = _mm512_max_ps(vm, v);
        nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);   // max_ps may drop a NaN: keep count
    }
    return nan ? NAN : _mm512_reduce_max_ps(vm);
}

MINILLM_AVX512 float exp_shifted_avx512(const float* x, float* y, std::int64_t n, float shift) {
    const __m512 vs = _mm512_set1_ps(shift);
    __m512 acc = _mm512_setzero_ps();
    for (std::int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        const __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vs));
        _mm512_mask_storeu_ps(y + i, m, e);
        acc = _mm512_mask_add_ps(acc, m, acc, e);
    }
    return _mm512_reduce_add_ps(acc);
}

MINILLM_AVX512 void scale_row_avx512(float* x, std::int64_t n, float c) {
    const __m512 vc = _mm512_set1_ps(c);
    for (std::int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        _mm512_mask_storeu_ps(x + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), vc));
    }
}

MINILLM_AVX512 float dot_row_avx512(const float* a, const float* b, std::int64_t n) {
    __m512 acc = _mm512_setzero_ps();
    for (std::int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc);
    }
    return _mm512_reduce_add_ps(acc);
}

MINILLM_AVX512 void softmax_grad_row_avx512(const float* p, float* dp, std::int64_t n, float d) {
    const __m512 vd = _mm512_set1_ps(d);
    for (std::int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        const __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, p + i), _mm512_sub_ps(_mm512_maskz_loadu_ps(m, dp + i), vd));
        _mm512_mask_storeu_ps(dp + i, m, v);
    }
}

}  // namespace attn
}  // namespace minillm
#endif
