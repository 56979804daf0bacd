// Tile products and row helpers for attention.cpp (see attention_tiles.h for the contracts).
// The scalar functions are the obviously-right twins of the AVX2 ones here and of the AVX-512 ones
// in attention_tiles_avx512.cpp.
#include "attention_tiles.h"

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "simd.h"

namespace minillm {
namespace attn {

// ---- scalar twins (float64, and float32 under force_scalar)

template <typename F>
static void matmul_tile_scalar(std::int64_t m, std::int64_t n, std::int64_t k, F alpha, const F* A,
                               std::int64_t lda, bool trans_a, const F* B, std::int64_t ldb, F* C,
                               std::int64_t ldc, bool accumulate) {
    for (std::int64_t i = 0; i < m; ++i)
        for (std::int64_t j = 0; j < n; ++j) {
            F sum = 0;
            for (std::int64_t p = 0; p < k; ++p) sum += (trans_a ? A[p * lda + i] : A[i * lda + p]) * B[p * ldb + j];
            C[i * ldc + j] = alpha * sum + (accumulate ? C[i * ldc + j] : F(0));
        }
}

// Rows [i0, i1) x columns [j0, j1) of At (n, m) = A^T.
template <typename F>
static void transpose_part(std::int64_t m, std::int64_t i0, std::int64_t i1, std::int64_t j0, std::int64_t j1,
                           const F* A, std::int64_t lda, F* At) {
    for (std::int64_t i = i0; i < i1; ++i)
        for (std::int64_t j = j0; j < j1; ++j) At[j * m + i] = A[i * lda + j];
}

// NaN if any x is NaN (std::max would drop it, and a NaN score must poison its row).
template <typename F>
static F row_max_scalar(const F* x, std::int64_t n) {
    F m = -INFINITY;
    for (std::int64_t i = 0; i < n; ++i) {
        if (x[i] != x[i]) return x[i];
        m = std::max(m, x[i]);
    }
    return m;
}

template <typename F>
static F exp_shifted_scalar(const F* x, F* y, std::int64_t n, F shift) {
    F sum = 0;
    for (std::int64_t i = 0; i < n; ++i) {
        y[i] = std::exp(x[i] - shift);
        sum += y[i];
    }
    return sum;
}

template <typename F>
static F dot_row_scalar(const F* a, const F* b, std::int64_t n) {
    F sum = 0;
    for (std::int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
    return sum;
}

#if MINILLM_X86
// ---- AVX2/FMA, float32

// Lanes [0, r) of a mask for maskload/maskstore, 0 < r <= 8.
MINILLM_AVX2 static inline __m256i lane_mask(std::int64_t r) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(r)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// The register micro-kernel: an MR x (8 NV) block of C held in MR * NV ymm accumulators, k rank-1
// updates (NV loads of a row of B, MR broadcasts of a column of op(A)). MASKED: the last vector
// has only `mask` lanes (the n % 8 tail), loaded and stored with masks so nothing is overread.
template <int MR, int NV, bool MASKED>
MINILLM_AVX2 static void micro_avx2(std::int64_t k, float alpha, const float* A, std::int64_t lda, bool trans_a,
                                    const float* B, std::int64_t ldb, float* C, std::int64_t ldc, bool accumulate,
                                    __m256i mask) {
    __m256 c[MR][NV];   // GCC keeps these in registers only when every loop over them is unrolled
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) c[i][v] = _mm256_setzero_ps();
    const std::int64_t a_row = trans_a ? 1 : lda, a_col = trans_a ? lda : 1;   // element (i, p) at i*a_row + p*a_col
    for (std::int64_t p = 0; p < k; ++p) {
        __m256 b[NV];
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v)
            b[v] = (MASKED && v == NV - 1) ? _mm256_maskload_ps(B + p * ldb + 8 * v, mask)
                                           : _mm256_loadu_ps(B + p * ldb + 8 * v);
        const float* a = A + p * a_col;
#pragma GCC unroll 8
        for (int i = 0; i < MR; ++i) {
            const __m256 ai = _mm256_broadcast_ss(a + i * a_row);
#pragma GCC unroll 2
            for (int v = 0; v < NV; ++v) c[i][v] = _mm256_fmadd_ps(ai, b[v], c[i][v]);
        }
    }
    const __m256 va = _mm256_set1_ps(alpha);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) {
            float* out = C + i * ldc + 8 * v;
            const bool tail = MASKED && v == NV - 1;
            __m256 r = _mm256_mul_ps(va, c[i][v]);
            if (accumulate) r = _mm256_add_ps(r, tail ? _mm256_maskload_ps(out, mask) : _mm256_loadu_ps(out));
            if (tail) _mm256_maskstore_ps(out, mask, r);
            else _mm256_storeu_ps(out, r);
        }
}

// MR rows of C: columns in blocks of 16, then 8, then the masked tail.
template <int MR>
MINILLM_AVX2 static void row_block_avx2(std::int64_t n, std::int64_t k, float alpha, const float* A, std::int64_t lda,
                                        bool trans_a, const float* B, std::int64_t ldb, float* C, std::int64_t ldc,
                                        bool accumulate) {
    const __m256i all = _mm256_set1_epi32(-1);
    std::int64_t j = 0;
    for (; j + 16 <= n; j += 16) micro_avx2<MR, 2, false>(k, alpha, A, lda, trans_a, B + j, ldb, C + j, ldc, accumulate, all);
    for (; j + 8 <= n; j += 8) micro_avx2<MR, 1, false>(k, alpha, A, lda, trans_a, B + j, ldb, C + j, ldc, accumulate, all);
    if (j < n)
        micro_avx2<MR, 1, true>(k, alpha, A, lda, trans_a, B + j, ldb, C + j, ldc, accumulate, lane_mask(n - j));
}

MINILLM_AVX2 static void matmul_tile_avx2(std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* A,
                                          std::int64_t lda, bool trans_a, const float* B, std::int64_t ldb, float* C,
                                          std::int64_t ldc, bool accumulate) {
    constexpr int MR = 6;   // 6 x 16 block: 12 accumulators + 2 rows of B + 1 broadcast = 15 of 16 ymm
    std::int64_t i = 0;
    for (; i < m; i += MR) {
        const float* a = A + i * (trans_a ? 1 : lda);
        float* c = C + i * ldc;
        switch (std::min<std::int64_t>(MR, m - i)) {
            case 6: row_block_avx2<6>(n, k, alpha, a, lda, trans_a, B, ldb, c, ldc, accumulate); break;
            case 5: row_block_avx2<5>(n, k, alpha, a, lda, trans_a, B, ldb, c, ldc, accumulate); break;
            case 4: row_block_avx2<4>(n, k, alpha, a, lda, trans_a, B, ldb, c, ldc, accumulate); break;
            case 3: row_block_avx2<3>(n, k, alpha, a, lda, trans_a, B, ldb, c, ldc, accumulate); break;
            case 2: row_block_avx2<2>(n, k, alpha, a, lda, trans_a, B, ldb, c, ldc, accumulate); break;
            default: row_block_avx2<1>(n, k, alpha, a, lda, trans_a, B, ldb, c, ldc, accumulate); break;
        }
    }
}

// 8 x 8 block transpose in registers: unpack pairs, shuffle quads, swap 128-bit halves.
MINILLM_AVX2 static void transpose8x8_avx2(const float* A, std::int64_t lda, float* B, std::int64_t ldb) {
    __m256 r[8], t[8];
    for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(A + i * lda);
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int i = 0; i < 4; ++i) {
        _mm256_storeu_ps(B + i * ldb, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
        _mm256_storeu_ps(B + (i + 4) * ldb, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
    }
}

MINILLM_AVX2 static void transpose_tile_avx2(std::int64_t m, std::int64_t n, const float* A, std::int64_t lda,
                                             float* At) {
    const std::int64_t m8 = m / 8 * 8, n8 = n / 8 * 8;
    for (std::int64_t i = 0; i < m8; i += 8)
        for (std::int64_t j = 0; j < n8; j += 8) transpose8x8_avx2(A + i * lda + j, lda, At + j * m + i, m);
    transpose_part(m, 0, m, n8, n, A, lda, At);    // right edge
    transpose_part(m, m8, m, 0, n8, A, lda, At);   // bottom edge
}

MINILLM_AVX2 static float row_max_avx2(const float* x, std::int64_t n) {
    __m256 vm = _mm256_set1_ps(-INFINITY), nan = _mm256_setzero_ps();
    std::int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        vm = _mm256_max_ps(vm, v);
        nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));   // max_ps may drop a NaN: keep count
    }
    const float tail = row_max_scalar(x + i, n - i);
    if (_mm256_movemask_ps(nan) || tail != tail) return NAN;
    return std::max(hmax(vm), tail);
}

MINILLM_AVX2 static float exp_shifted_avx2(const float* x, float* y, std::int64_t n, float shift) {
    const __m256 vs = _mm256_set1_ps(shift);
    __m256 acc = _mm256_setzero_ps();
    std::int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), vs));
        _mm256_storeu_ps(y + i, e);
        acc = _mm256_add_ps(acc, e);
    }
    float sum = hsum(acc);
    for (; i < n; ++i) {
        y[i] = std::exp(x[i] - shift);
        sum += y[i];
    }
    return sum;
}

MINILLM_AVX2 static void scale_row_avx2(float* x, std::int64_t n, float c) {
    const __m256 vc = _mm256_set1_ps(c);
    std::int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), vc));
    for (; i < n; ++i) x[i] *= c;
}

MINILLM_AVX2 static float dot_row_avx2(const float* a, const float* b, std::int64_t n) {
    __m256 acc = _mm256_setzero_ps();
    std::int64_t i = 0;
    for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    float sum = hsum(acc);
    for (; i < n; ++i) sum += a[i] * b[i];
    return sum;
}

MINILLM_AVX2 static void softmax_grad_row_avx2(const float* p, float* dp, std::int64_t n, float d) {
    const __m256 vd = _mm256_set1_ps(d);
    std::int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dp + i, _mm256_mul_ps(_mm256_loadu_ps(p + i), _mm256_sub_ps(_mm256_loadu_ps(dp + i), vd)));
    for (; i < n; ++i) dp[i] = p[i] * (dp[i] - d);
}
#endif

// ---- dispatch: the best version for F on this CPU

template <typename F>
void matmul_tile(Isa isa, std::int64_t m, std::int64_t n, std::int64_t k, F alpha, const F* A, std::int64_t lda,
                 bool trans_a, const F* B, std::int64_t ldb, F* C, std::int64_t ldc, bool accumulate) {
    MINILLM_USE_AVX512(F, isa, matmul_tile_avx512(m, n, k, alpha, A, lda, trans_a, B, ldb, C, ldc, accumulate));
    MINILLM_USE_AVX2(F, isa, matmul_tile_avx2(m, n, k, alpha, A, lda, trans_a, B, ldb, C, ldc, accumulate));
    matmul_tile_scalar(m, n, k, alpha, A, lda, trans_a, B, ldb, C, ldc, accumulate);
}

template <typename F>
void transpose_tile(Isa isa, std::int64_t m, std::int64_t n, const F* A, std::int64_t lda, F* At) {
    MINILLM_USE_AVX512(F, isa, transpose_tile_avx512(m, n, A, lda, At));
    MINILLM_USE_AVX2(F, isa, transpose_tile_avx2(m, n, A, lda, At));
    transpose_part(m, 0, m, 0, n, A, lda, At);
}

template <typename F>
F row_max(Isa isa, const F* x, std::int64_t n) {
    MINILLM_USE_AVX512(F, isa, row_max_avx512(x, n));
    MINILLM_USE_AVX2(F, isa, row_max_avx2(x, n));
    return row_max_scalar(x, n);
}

template <typename F>
F exp_shifted(Isa isa, const F* x, F* y, std::int64_t n, F shift) {
    MINILLM_USE_AVX512(F, isa, exp_shifted_avx512(x, y, n, shift));
    MINILLM_USE_AVX2(F, isa, exp_shifted_avx2(x, y, n, shift));
    return exp_shifted_scalar(x, y, n, shift);
}

template <typename F>
void scale_row(Isa isa, F* x, std::int64_t n, F c) {
    MINILLM_USE_AVX512(F, isa, scale_row_avx512(x, n, c));
    MINILLM_USE_AVX2(F, isa, scale_row_avx2(x, n, c));
    for (std::int64_t i = 0; i < n; ++i) x[i] *= c;
}

template <typename F>
F dot_row(Isa isa, const F* a, const F* b, std::int64_t n) {
    MINILLM_USE_AVX512(F, isa, dot_row_avx512(a, b, n));
    MINILLM_USE_AVX2(F, isa, dot_row_avx2(a, b, n));
    return dot_row_scalar(a, b, n);
}

template <typename F>
void softmax_grad_row(Isa isa, const F* p, F* dp, std::int64_t n, F d) {
    MINILLM_USE_AVX512(F, isa, softmax_grad_row_avx512(p, dp, n, d));
    MINILLM_USE_AVX2(F, isa, softmax_grad_row_avx2(p, dp, n, d));
    for (std::int64_t i = 0; i < n; ++i) dp[i] = p[i] * (dp[i] - d);
}

// ---- hiding keys

template <typename F>
void zero_hidden(const Visibility& vis, std::int64_t p0, std::int64_t j0, std::int64_t br, std::int64_t bc, F* t) {
    for (std::int64_t r = 0; r < br; ++r) {
        std::int64_t lo, hi;
        vis.keys_of(p0 + r, lo, hi);
        lo = std::min(std::max<std::int64_t>(lo - j0, 0), bc);
        hi = std::min(std::max<std::int64_t>(hi - j0, lo), bc);
        F* row = t + r * bc;
        std::fill(row, row + lo, F(0));
        std::fill(row + hi, row + bc, F(0));
        if (vis.keep)
            for (std::int64_t c = lo; c < hi; ++c)
                if (!vis.keep[j0 + c]) row[c] = F(0);
    }
}

// ---- masked scores of a tile

// S (br, bc) of positions p0.. and keys j0..: add ALiBi and set hidden entries to -inf.
template <typename F>
static void bias_and_mask(const Visibility& vis, bool mask, const F* slope, std::int64_t p0, std::int64_t j0,
                          std::int64_t br, std::int64_t bc, F* s) {
    for (std::int64_t r = 0; r < br; ++r) {
        const std::int64_t p = p0 + r;
        F* row = s + r * bc;
        std::int64_t lo = 0, hi = bc;                // the visible columns [lo, hi) of this row
        if (mask) {
            vis.keys_of(p, lo, hi);
            lo = std::min(std::max<std::int64_t>(lo - j0, 0), bc);
            hi = std::min(std::max<std::int64_t>(hi - j0, lo), bc);
            std::fill(row, row + lo, F(-INFINITY));
            std::fill(row + hi, row + bc, F(-INFINITY));
        }
        if (mask && vis.keep)
            for (std::int64_t c = lo; c < hi; ++c)
                if (!vis.keep[j0 + c]) row[c] = F(-INFINITY);
        if (slope)                                   // -inf stays -inf
            for (std::int64_t c = lo; c < hi; ++c) {
                const std::int64_t distance = vis.causal ? p - (j0 + c) : std::abs(p - (j0 + c));
                row[c] -= *slope * F(distance);
            }
    }
}

template <typename F>
void scores(Isa isa, const Visibility& vis, const F* slope, std::int64_t D, const F* q, const F* k, const F* kt,
            std::int64_t p0, std::int64_t j0, std::int64_t br, std::int64_t bc, F* s) {
    const F scale = F(1) / std::sqrt(F(D));
    if (kt) {
        matmul_tile<F>(isa, br, bc, D, scale, q, D, false, kt, bc, s, bc, false);
    } else {
        for (std::int64_t r = 0; r < br; ++r)
            for (std::int64_t c = 0; c < bc; ++c) s[r * bc + c] = scale * dot_row(isa, q + r * D, k + c * D, D);
    }
    const bool mask = !vis.all_visible(p0, p0 + br - 1, j0, j0 + bc);
    if (mask || slope) bias_and_mask(vis, mask, slope, p0, j0, br, bc, s);
}

#define MINILLM_ATTN_INSTANTIATE(F)                                                                              \
    template void matmul_tile<F>(Isa, std::int64_t, std::int64_t, std::int64_t, F, const F*, std::int64_t, bool, \
                                 const F*, std::int64_t, F*, std::int64_t, bool);                                 \
    template void transpose_tile<F>(Isa, std::int64_t, std::int64_t, const F*, std::int64_t, F*);                     \
    template F row_max<F>(Isa, const F*, std::int64_t);                                                          \
    template F exp_shifted<F>(Isa, const F*, F*, std::int64_t, F);                                               \
    template void scale_row<F>(Isa, F*, std::int64_t, F);                                                        \
    template F dot_row<F>(Isa, const F*, const F*, std::int64_t);                                                \
    template void softmax_grad_row<F>(Isa, const F*, F*, std::int64_t, F);                                      \
    template void zero_hidden<F>(const Visibility&, std::int64_t, std::int64_t, std::int64_t, std::int64_t, F*); \
    template void scores<F>(Isa, const Visibility&, const F*, std::int64_t, const F*, const F*, const F*,      \
                            std::int64_t, std::int64_t, std::int64_t, std::int64_t, F*);
MINILLM_ATTN_INSTANTIATE(float)
MINILLM_ATTN_INSTANTIATE(double)

}  // namespace attn
}  // namespace minillm
