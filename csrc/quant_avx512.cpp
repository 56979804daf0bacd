// The avx512-vnni path of the quantized matmul (quant.cpp drives it): vpdpbusd on zmm registers,
// which multiplies 64 unsigned by 64 signed bytes and adds each group of four into 16 int32 lanes,
// exactly (no int16 saturation, unlike maddubs). Its unsigned operand takes an offset instead of
// the sign trick, and the integer sums subtract it back before any scaling:
//
//   rows (decode, a few rows of x):  a = the weights as u8, b = x (s8), two groups per instruction;
//       int8 / q8_0 weights go in as w + 128 (c = 128), q4_0 as its stored nibble q + 8 (c = 8),
//       q4_1 as its nibble (c = 0), and the sum starts at -c * sum(x of the group).
//   packed (prefill, kPackedRows rows of x or more):  the weights of 32 output columns are first
//       packed into vpdpbusd's layout (for each 4 values along k, the 16 columns side by side), so
//       a 6 x 32 tile of y accumulates a whole group in 12 int32 registers, four k at a time, from
//       one broadcast of x per row, like a float GEMM; a = x + 128 (u8), b = the weights as s8, and
//       each group's sum starts at -128 * sum(w) of its column, computed once while packing.
//
// Each group's exact sum is then scaled by d_w d_x (and q4_1 adds m_w xs) into float accumulators.
#include <algorithm>
#include <cstring>

#include "parallel.h"
#include "quant.h"
#include "scratch.h"
#include "simd512.h"

#if MINILLM_X86
namespace minillm {

namespace {

constexpr std::int64_t kGroup = kQuantGroup;

template <QuantScheme S>
constexpr bool is_int4 = S == QuantScheme::q4_0 || S == QuantScheme::q4_1;

// Bytes [0, n) of a 64-byte load, 0 <= n <= 64.
inline __mmask64 byte_mask(std::int64_t n) { return n >= 64 ? ~__mmask64(0) : (__mmask64(1) << n) - 1; }

// 32 packed int4 bytes (two groups: 16 bytes each, value j in the low nibble of byte j and value
// j + 16 in its high nibble) -> the 64 values in order, as u8 in [0, 15].
MINILLM_AVX512_VNNI inline __m512i unpack_int4_pair(__m256i b) {
    const __m512i doubled = _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 1, 0, 1, 2, 3, 2, 3), _mm512_castsi256_si512(b));
    const __m512i shifted = _mm512_srlv_epi64(doubled, _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4));
    return _mm512_and_si512(shifted, _mm512_set1_epi8(0x0F));
}

// Two floats (v[0], v[1] when both exist) spread as [v0 x 8 lanes, v1 x 8 lanes].
MINILLM_AVX512_VNNI inline __m512 pair_vector(const float* v, bool both) {
    const __m128 two = _mm_maskz_loadu_ps(both ? 0x3 : 0x1, v);
    return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
                                 _mm512_castps128_ps512(two));
}

// ---- rows: one row of x against J weight rows

template <QuantScheme S>
constexpr int kOffset = S == QuantScheme::q4_0 ? 8 : S == QuantScheme::q4_1 ? 0 : 128;

// Weight groups g, g + 1 of a row as the unsigned operand (see the top); `bytes` of x are valid.
template <QuantScheme S>
MINILLM_AVX512_VNNI inline __m512i weight_pair(const std::uint8_t* row, std::int64_t g, std::int64_t bytes) {
    if constexpr (is_int4<S>) {
        const __m256i b = _mm256_maskz_loadu_epi8(__mmask32(byte_mask(bytes / 2)), row + g * (kGroup / 2));
        return unpack_int4_pair(b);
    }
    const __m512i w = _mm512_maskz_loadu_epi8(byte_mask(bytes), row + g * kGroup);
    return _mm512_xor_si512(w, _mm512_set1_epi8(char(0x80)));   // w + 128 as u8 (padding becomes 128 * 0)
}

// One row of x as the kernels read it: per pair of groups, the 64 bytes, -c * sum(x), the scales.
struct XPair {
    __m512i x, start;
    __m512 xd;
};

template <QuantScheme S>
MINILLM_AVX512_VNNI void x_pairs(const QuantArgs& a, std::int64_t m, XPair* out) {
    const std::int8_t* xrow = a.xq + m * a.K;
    for (std::int64_t g = 0, p = 0; g < a.G; g += 2, ++p) {
        const std::int64_t bytes = std::min<std::int64_t>(2 * kGroup, a.K - g * kGroup);
        out[p].x = _mm512_maskz_loadu_epi8(byte_mask(bytes), xrow + g * kGroup);
        const __m512i sums = _mm512_castsi128_si512(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(a.xsum + m * a.Gp + g)));
        const __m512i spread = _mm512_maskz_permutexvar_epi32(0x0101, _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0), sums);
        out[p].start = _mm512_mullo_epi32(spread, _mm512_set1_epi32(-kOffset<S>));
        out[p].xd = pair_vector(a.xd + m * a.G + g, g + 1 < a.G);
    }
}

template <QuantScheme S, int J>
MINILLM_AVX512_VNNI void dot_weight_rows(const QuantArgs& a, const XPair* xp, std::int64_t m, std::int64_t n, float* out) {
    constexpr bool per_channel = S == QuantScheme::int8;
    const std::int64_t stride = is_int4<S> ? a.K / 2 : a.K;
    const std::uint8_t* row = a.wq + n * stride;
    __m512 acc[J];
    float min_terms[J] = {};
    for (int j = 0; j < J; ++j) acc[j] = _mm512_setzero_ps();
    for (std::int64_t g = 0, p = 0; g < a.G; g += 2, ++p) {
        const std::int64_t bytes = std::min<std::int64_t>(2 * kGroup, a.K - g * kGroup);
        const bool both = g + 1 < a.G;
        for (int j = 0; j < J; ++j) {
            // fetch the same groups of the next J rows now: decode streams the weights from memory
            _mm_prefetch(reinterpret_cast<const char*>(row + (J + j) * stride + g * (is_int4<S> ? 16 : 32)), _MM_HINT_T0);
            const __m512i w = weight_pair<S>(row + j * stride, g, bytes);
            const __m512 dot = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(xp[p].start, w, xp[p].x));
            const __m512 scale = per_channel ? xp[p].xd : _mm512_mul_ps(xp[p].xd, pair_vector(a.wd + (n + j) * a.G + g, both));
            acc[j] = _mm512_fmadd_ps(dot, scale, acc[j]);
            if constexpr (S == QuantScheme::q4_1) {
                const float* wm = a.wm + (n + j) * a.G + g;
                const float* xs = a.xs + m * a.G + g;
                min_terms[j] += wm[0] * xs[0] + (both ? wm[1] * xs[1] : 0.0f);
            }
        }
    }
    for (int j = 0; j < J; ++j) {
        const float total = _mm512_reduce_add_ps(acc[j]) + min_terms[j];
        out[j] = per_channel ? total * a.wd[n + j] : total;
    }
}

template <QuantScheme S>
MINILLM_AVX512_VNNI void rows(const QuantArgs& a, std::int64_t m0, std::int64_t m1, std::int64_t n0, std::int64_t n1,
                              const float* bias, float* y) {
    XPair* xp = scratch<XPair>(Slot::quant_w, a.Gp / 2);   // this thread's: per row of x
    float out[4];
    for (std::int64_t m = m0; m < m1; ++m) {
        x_pairs<S>(a, m, xp);
        std::int64_t n = n0;
        for (; n + 4 <= n1; n += 4) {
            dot_weight_rows<S, 4>(a, xp, m, n, out);
            for (int j = 0; j < 4; ++j) y[m * a.N + n + j] = out[j] + (bias ? bias[n + j] : 0.0f);
        }
        for (; n < n1; ++n) {
            dot_weight_rows<S, 1>(a, xp, m, n, out);
            y[m * a.N + n] = out[0] + (bias ? bias[n] : 0.0f);
        }
    }
}

// ---- packed: 32 columns of W in vpdpbusd's layout, and a 6 x 32 tile of y

constexpr std::int64_t kRows = 6, kCols = 32;   // the tile: 6 x 2 zmm of int32 sums, 12 of float sums

// One chunk of packed weights: columns n0 .. n0 + 32 as two blocks of 16; per group g:
//   quads[g][q][b]: 16 columns x values 4q .. 4q + 3 of the group (64 s8 bytes)
//   start[g][b]:    -128 * sum of the group's values, per column (int32)
//   wd[g][b], wm[g][b]: the columns' scales and mins (float; per column only, in wd[0], for int8)
struct PackedChunk {
    __m512i* quads;
    __m512i* start;
    __m512* wd;
    __m512* wm;
    static std::int64_t bytes(std::int64_t G) { return G * (16 + 2 + 2 + 2) * 64; }
    PackedChunk(void* p, std::int64_t G)
        : quads(static_cast<__m512i*>(p)), start(quads + G * 16), wd(reinterpret_cast<__m512*>(start + G * 2)),
          wm(wd + G * 2) {}
};

// The 64 values of groups g, g + 1 of weight row n as s8 (int8, q4_0 - 8, q4_1 as stored); 0 past K.
template <QuantScheme S>
MINILLM_AVX512_VNNI inline __m512i weight_values(const QuantArgs& a, std::int64_t n, std::int64_t g) {
    const std::int64_t bytes = std::min<std::int64_t>(2 * kGroup, a.K - g * kGroup);
    if constexpr (is_int4<S>) {
        const std::uint8_t* row = a.wq + n * (a.K / 2) + g * (kGroup / 2);
        const __m512i v = unpack_int4_pair(_mm256_maskz_loadu_epi8(__mmask32(byte_mask(bytes / 2)), row));
        if constexpr (S == QuantScheme::q4_0) return _mm512_maskz_sub_epi8(byte_mask(bytes), v, _mm512_set1_epi8(8));
        return v;
    }
    return _mm512_maskz_loadu_epi8(byte_mask(bytes), a.wq + n * a.K + g * kGroup);
}

template <QuantScheme S>
MINILLM_AVX512_VNNI void pack_chunk(const QuantArgs& a, std::int64_t n0, PackedChunk& c) {
    const __m512i ones = _mm512_set1_epi8(1);
    for (std::int64_t b = 0; b < 2; ++b) {
        const std::int64_t first = n0 + 16 * b;
        for (std::int64_t g = 0; g < a.G; g += 2) {
            __m512 r[16];   // 16 rows x 64 bytes, transposed as 32-bit units: r[q] = quad q of the 16 rows
            for (int i = 0; i < 16; ++i)
                r[i] = first + i < a.N ? _mm512_castsi512_ps(weight_values<S>(a, first + i, g)) : _mm512_setzero_ps();
            transpose16x16(r);
            for (std::int64_t h = g; h < std::min(a.G, g + 2); ++h) {
                __m512i sum = _mm512_setzero_si512();
                for (int q = 0; q < 8; ++q) {
                    const __m512i quad = _mm512_castps_si512(r[(h - g) * 8 + q]);
                    c.quads[(h * 8 + q) * 2 + b] = quad;
                    sum = _mm512_dpbusd_epi32(sum, ones, quad);
                }
                c.start[h * 2 + b] = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(sum, 7));
            }
        }
        alignas(64) float wd[16], wm[16];
        for (std::int64_t h = 0; h < (S == QuantScheme::int8 ? 1 : a.G); ++h) {
            for (int i = 0; i < 16; ++i) {
                const bool real = first + i < a.N;
                wd[i] = real ? (S == QuantScheme::int8 ? a.wd[first + i] : a.wd[(first + i) * a.G + h]) : 0.0f;
                wm[i] = real && S == QuantScheme::q4_1 ? a.wm[(first + i) * a.G + h] : 0.0f;
            }
            c.wd[h * 2 + b] = _mm512_load_ps(wd);
            c.wm[h * 2 + b] = _mm512_load_ps(wm);
        }
    }
}

// y[m .. m + rows, n0 .. n0 + cols) from the packed chunk; xu = x + 128 (M, Kp) as u8.
template <QuantScheme S>
MINILLM_AVX512_VNNI void packed_tile(const QuantArgs& a, const std::uint8_t* xu, std::int64_t Kp, const PackedChunk& c,
                                     std::int64_t m, std::int64_t rows, std::int64_t n0, std::int64_t cols,
                                     const float* bias, float* y) {
    std::int64_t row_of[kRows];   // past the last row, repeat it (computed, never stored)
    for (int r = 0; r < kRows; ++r) row_of[r] = m + std::min<std::int64_t>(r, rows - 1);
    __m512 f[kRows][2];
    for (int r = 0; r < kRows; ++r) f[r][0] = f[r][1] = _mm512_setzero_ps();
    for (std::int64_t g = 0; g < a.G; ++g) {
        __m512i s[kRows][2];
#pragma GCC unroll 6
        for (int r = 0; r < kRows; ++r) s[r][0] = c.start[g * 2], s[r][1] = c.start[g * 2 + 1];
#pragma GCC unroll 8
        for (int q = 0; q < 8; ++q) {
            const __m512i w0 = c.quads[(g * 8 + q) * 2], w1 = c.quads[(g * 8 + q) * 2 + 1];
#pragma GCC unroll 6
            for (int r = 0; r < kRows; ++r) {
                std::int32_t four;
                std::memcpy(&four, xu + row_of[r] * Kp + g * kGroup + 4 * q, 4);
                const __m512i x = _mm512_set1_epi32(four);
                s[r][0] = _mm512_dpbusd_epi32(s[r][0], x, w0);
                s[r][1] = _mm512_dpbusd_epi32(s[r][1], x, w1);
            }
        }
#pragma GCC unroll 6
        for (int r = 0; r < kRows; ++r) {
            const __m512 xd = _mm512_set1_ps(a.xd[row_of[r] * a.G + g]);
            for (int b = 0; b < 2; ++b) {
                const __m512 scale = S == QuantScheme::int8 ? xd : _mm512_mul_ps(xd, c.wd[g * 2 + b]);
                f[r][b] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[r][b]), scale, f[r][b]);
                if constexpr (S == QuantScheme::q4_1)
                    f[r][b] = _mm512_fmadd_ps(c.wm[g * 2 + b], _mm512_set1_ps(a.xs[row_of[r] * a.G + g]), f[r][b]);
            }
        }
    }
    const __mmask16 mask[2] = {tail_mask(cols), tail_mask(std::max<std::int64_t>(cols - 16, 0))};
    for (int b = 0; b < 2; ++b) {
        const __m512 per_column = S == QuantScheme::int8 ? c.wd[b] : _mm512_set1_ps(1.0f);
        const __m512 add = bias ? _mm512_maskz_loadu_ps(mask[b], bias + n0 + 16 * b) : _mm512_setzero_ps();
        for (int r = 0; r < rows; ++r)
            _mm512_mask_storeu_ps(y + (m + r) * a.N + n0 + 16 * b, mask[b], _mm512_fmadd_ps(f[r][b], per_column, add));
    }
}

template <QuantScheme S>
void packed(const QuantArgs& a, const float* bias, float* y) {
    const std::int64_t Kp = a.G * kGroup, chunks = (a.N + kCols - 1) / kCols;
    const int threads = chunks > 1 ? threads_for(a.M * a.N * a.K, 8 * kParallelThreshold) : 1;
    // x + 128 as u8, rows padded to whole groups with 128 (= x 0, which meets packed zeros)
    std::uint8_t* xu = scratch<std::uint8_t>(Slot::quant_x_u8, a.M * Kp);
    for (std::int64_t m = 0; m < a.M; ++m) {
        for (std::int64_t k = 0; k < a.K; ++k) xu[m * Kp + k] = std::uint8_t(a.xq[m * a.K + k] ^ 0x80);
        std::memset(xu + m * Kp + a.K, 0x80, std::size_t(Kp - a.K));
    }
    const std::int64_t chunk_bytes = PackedChunk::bytes(a.G);
    char* buffers = scratch<char>(Slot::quant_w, chunk_bytes * threads);
#if defined(MINILLM_OPENMP)
#pragma omp parallel num_threads(threads) if (threads > 1)
#endif
    {
        int t = 0;
#if defined(MINILLM_OPENMP)
        t = omp_get_thread_num();
#endif
        PackedChunk c(buffers + t * chunk_bytes, a.G);
#if defined(MINILLM_OPENMP)
#pragma omp for schedule(dynamic)
#endif
        for (std::int64_t chunk = 0; chunk < chunks; ++chunk) {
            const std::int64_t n0 = chunk * kCols, cols = std::min(kCols, a.N - n0);
            pack_chunk<S>(a, n0, c);
            for (std::int64_t m = 0; m < a.M; m += kRows)
                packed_tile<S>(a, xu, Kp, c, m, std::min(kRows, a.M - m), n0, cols, bias, y);
        }
    }
}

}  // namespace

void quant_rows_avx512_vnni(const QuantArgs& a, std::int64_t m0, std::int64_t m1, std::int64_t n0, std::int64_t n1,
                            const float* bias, float* y) {
    switch (a.scheme) {
        case QuantScheme::int8: return rows<QuantScheme::int8>(a, m0, m1, n0, n1, bias, y);
        case QuantScheme::q8_0: return rows<QuantScheme::q8_0>(a, m0, m1, n0, n1, bias, y);
        case QuantScheme::q4_0: return rows<QuantScheme::q4_0>(a, m0, m1, n0, n1, bias, y);
        case QuantScheme::q4_1: return rows<QuantScheme::q4_1>(a, m0, m1, n0, n1, bias, y);
    }
}

void quant_packed_avx512_vnni(const QuantArgs& a, const float* bias, float* y) {
    switch (a.scheme) {
        case QuantScheme::int8: return packed<QuantScheme::int8>(a, bias, y);
        case QuantScheme::q8_0: return packed<QuantScheme::q8_0>(a, bias, y);
        case QuantScheme::q4_0: return packed<QuantScheme::q4_0>(a, bias, y);
        case QuantScheme::q4_1: return packed<QuantScheme::q4_1>(a, bias, y);
    }
}

}  // namespace minillm
#endif
