// Matmul on quantized weights (contract and formulas: minillm/kernels/reference/quant.py).
//
// y (M, N) = x W^T with x (M, K) float32 quantized on the fly to int8 per group of 32 (Q8_0) and
// W (N, K) stored as int8 per channel, q8_0, q4_0 or q4_1. Each group's integer dot product is exact
// (AVX2: maddubs + madd, llama.cpp's sign trick for signed x signed) and is scaled once by
// d_w * d_x into a float accumulator.
//
// Loops: the output is cut into tiles of kTileM rows of x by kTileN rows of W (both fit in L2), and
// OpenMP shares out the tiles. Inside a tile each weight row is unpacked once per group and used
// for up to 4 rows of x at a time.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels.h"
#include "simd.h"

namespace minillm {
namespace {

constexpr std::int64_t kGroup = 32;
constexpr std::int64_t kTileM = 64, kTileN = 64;

struct QuantArgs {
    QuantScheme scheme;
    const std::int8_t* xq;  // (M, K)
    const float* xd;        // (M, G)
    const float* xs;        // (M, G)
    const std::uint8_t* wq; // (N, K) int8 or (N, K/2) packed int4
    const float* wd;        // (N,) for int8, else (N, G)
    const float* wm;        // (N, G) for q4_1
    std::int64_t M, N, K, G;
};

inline std::int64_t row_bytes(QuantScheme s, std::int64_t K) {
    return (s == QuantScheme::q4_0 || s == QuantScheme::q4_1) ? K / 2 : K;
}

// ---- activations: x -> xq, xd, xs per group of 32 (the last group may be shorter)

void quantize_row_scalar(const float* x, std::int64_t K, std::int8_t* xq, float* xd, float* xs) {
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
MINILLM_AVX2 void quantize_row_avx2(const float* x, std::int64_t K, std::int8_t* xq, float* xd, float* xs) {
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

// ---- one weight row against up to 4 rows of x:  out[r] = sum_g (scale_g * idot_g [+ m_g xs_g])

// The 32 values of weight group g as int (scalar path); q4_0 already has 8 subtracted.
inline void weight_group_scalar(QuantScheme s, const std::uint8_t* row, std::int64_t g, std::int32_t* w) {
    if (s == QuantScheme::q4_0 || s == QuantScheme::q4_1) {
        const std::uint8_t* b = row + g * (kGroup / 2);
        const int offset = s == QuantScheme::q4_0 ? 8 : 0;
        for (int j = 0; j < kGroup / 2; ++j) {
            w[j] = (b[j] & 0x0F) - offset;
            w[j + kGroup / 2] = (b[j] >> 4) - offset;
        }
    } else {
        const std::int8_t* b = reinterpret_cast<const std::int8_t*>(row) + g * kGroup;
        for (int j = 0; j < kGroup; ++j) w[j] = b[j];
    }
}

template <int R>
void dot_rows_scalar(const QuantArgs& a, std::int64_t m, std::int64_t n, float* out) {
    const std::uint8_t* row = a.wq + n * row_bytes(a.scheme, a.K);
    const bool per_channel = a.scheme == QuantScheme::int8;
    float acc[R] = {};
    std::int32_t w[kGroup];
    for (std::int64_t g = 0; g < a.G; ++g) {
        const std::int64_t len = std::min(kGroup, a.K - g * kGroup);
        if (per_channel) {
            const std::int8_t* b = reinterpret_cast<const std::int8_t*>(row) + g * kGroup;
            for (std::int64_t j = 0; j < len; ++j) w[j] = b[j];
        } else {
            weight_group_scalar(a.scheme, row, g, w);
        }
        const float wd = per_channel ? 1.0f : a.wd[n * a.G + g];
        for (int r = 0; r < R; ++r) {
            const std::int8_t* xq = a.xq + (m + r) * a.K + g * kGroup;
            std::int32_t dot = 0;
            for (std::int64_t j = 0; j < len; ++j) dot += w[j] * xq[j];
            acc[r] += static_cast<float>(dot) * (wd * a.xd[(m + r) * a.G + g]);
            if (a.scheme == QuantScheme::q4_1) acc[r] += a.wm[n * a.G + g] * a.xs[(m + r) * a.G + g];
        }
    }
    for (int r = 0; r < R; ++r) out[r] = per_channel ? acc[r] * a.wd[n] : acc[r];
}

#if MINILLM_X86
// The 32 values of weight group g in one register: int8 for int8/q8_0, int8 in [-8, 7] for q4_0,
// uint8 in [0, 15] for q4_1.
MINILLM_AVX2 inline __m256i weight_group_avx2(QuantScheme s, const std::uint8_t* row, std::int64_t g) {
    if (s == QuantScheme::q4_0 || s == QuantScheme::q4_1) {
        const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + g * (kGroup / 2)));
        const __m256i both = _mm256_set_m128i(_mm_srli_epi16(b, 4), b);    // high nibbles in the upper lane
        const __m256i v = _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
        return s == QuantScheme::q4_0 ? _mm256_sub_epi8(v, _mm256_set1_epi8(8)) : v;
    }
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + g * kGroup));
}

template <int R>
MINILLM_AVX2 void dot_rows_avx2(const QuantArgs& a, std::int64_t m, std::int64_t n, float* out) {
    const std::uint8_t* row = a.wq + n * row_bytes(a.scheme, a.K);
    const bool per_channel = a.scheme == QuantScheme::int8, unsigned_w = a.scheme == QuantScheme::q4_1;
    const std::int64_t full = a.K / kGroup;   // groups of exactly 32 (all of them unless int8 has a tail)
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[R];
    float min_terms[R] = {};
    for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
    for (std::int64_t g = 0; g < full; ++g) {
        const __m256i w = weight_group_avx2(a.scheme, row, g);
        const __m256i w_abs = unsigned_w ? w : _mm256_sign_epi8(w, w);
        const float wd = per_channel ? 1.0f : a.wd[n * a.G + g];
        for (int r = 0; r < R; ++r) {
            const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.xq + (m + r) * a.K + g * kGroup));
            // signed x signed: |w| * (x with w's sign), so maddubs sees an unsigned first operand
            const __m256i x_signed = unsigned_w ? x : _mm256_sign_epi8(x, w);
            const __m256i dot = _mm256_madd_epi16(_mm256_maddubs_epi16(w_abs, x_signed), ones);   // 8 x int32
            const __m256 scale = _mm256_set1_ps(wd * a.xd[(m + r) * a.G + g]);
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[r]);
            if (unsigned_w) min_terms[r] += a.wm[n * a.G + g] * a.xs[(m + r) * a.G + g];
        }
    }
    for (int r = 0; r < R; ++r) {
        float total = hsum(acc[r]) + min_terms[r];
        if (full < a.G) {   // the short last group of an int8 per-channel row
            const std::int8_t* w = reinterpret_cast<const std::int8_t*>(row) + full * kGroup;
            const std::int8_t* x = a.xq + (m + r) * a.K + full * kGroup;
            std::int32_t dot = 0;
            for (std::int64_t j = 0; j < a.K - full * kGroup; ++j) dot += w[j] * x[j];
            total += static_cast<float>(dot) * a.xd[(m + r) * a.G + full];
        }
        out[r] = per_channel ? total * a.wd[n] : total;
    }
}
#endif

template <int R>
void dot_rows(const QuantArgs& a, bool avx2, std::int64_t m, std::int64_t n, float* out) {
#if MINILLM_X86
    if (avx2) return dot_rows_avx2<R>(a, m, n, out);
#endif
    (void)avx2;
    dot_rows_scalar<R>(a, m, n, out);
}

// All outputs of one (kTileM x kTileN) tile, 4 rows of x at a time.
void quant_tile(const QuantArgs& a, bool avx2, std::int64_t m0, std::int64_t m1, std::int64_t n0, std::int64_t n1,
                const float* bias, float* y) {
    float out[4];
    for (std::int64_t m = m0; m < m1; m += 4) {
        const std::int64_t rows = std::min<std::int64_t>(4, m1 - m);
        for (std::int64_t n = n0; n < n1; ++n) {
            switch (rows) {
                case 4: dot_rows<4>(a, avx2, m, n, out); break;
                case 3: dot_rows<3>(a, avx2, m, n, out); break;
                case 2: dot_rows<2>(a, avx2, m, n, out); break;
                default: dot_rows<1>(a, avx2, m, n, out); break;
            }
            const float b = bias ? bias[n] : 0.0f;
            for (std::int64_t r = 0; r < rows; ++r) y[(m + r) * a.N + n] = out[r] + b;
        }
    }
}

}  // namespace

void quantize_activations(const float* x, std::int64_t M, std::int64_t K, std::int8_t* xq, float* xd, float* xs) {
    const std::int64_t G = (K + kGroup - 1) / kGroup;
    const bool avx2 = use_avx2();
#if defined(MINILLM_OPENMP)
#pragma omp parallel for schedule(static) if (M * K >= kParallelThreshold)
#endif
    for (std::int64_t m = 0; m < M; ++m) {
#if MINILLM_X86
        if (avx2) {
            quantize_row_avx2(x + m * K, K, xq + m * K, xd + m * G, xs + m * G);
            continue;
        }
#endif
        quantize_row_scalar(x + m * K, K, xq + m * K, xd + m * G, xs + m * G);
    }
    (void)avx2;
}

void quant_matmul(QuantScheme scheme, const float* x, std::int64_t M, std::int64_t K, const std::uint8_t* wq,
                  const float* wd, const float* wm, const float* bias, std::int64_t N, float* y) {
    const std::int64_t G = (K + kGroup - 1) / kGroup;
    std::vector<std::int8_t> xq(static_cast<std::size_t>(M * K));
    std::vector<float> xd(static_cast<std::size_t>(M * G)), xs(static_cast<std::size_t>(M * G));
    quantize_activations(x, M, K, xq.data(), xd.data(), xs.data());
    const QuantArgs a{scheme, xq.data(), xd.data(), xs.data(), wq, wd, wm, M, N, K, G};
    const bool avx2 = use_avx2();
    const std::int64_t tiles_m = (M + kTileM - 1) / kTileM, tiles_n = (N + kTileN - 1) / kTileN;
    const std::int64_t tiles = tiles_m * tiles_n;
    // tiles in n-major order within each m block, so neighbouring threads share rows of x
#if defined(MINILLM_OPENMP)
#pragma omp parallel for schedule(static) if (M * N * K >= 8 * kParallelThreshold)
#endif
    for (std::int64_t t = 0; t < tiles; ++t) {
        const std::int64_t tm = t / tiles_n, tn = t % tiles_n;
        quant_tile(a, avx2, tm * kTileM, std::min(M, (tm + 1) * kTileM), tn * kTileN, std::min(N, (tn + 1) * kTileN),
                   bias, y);
    }
}

}  // namespace minillm
