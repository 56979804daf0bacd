// NF4 weights (the QLoRA paper's 4-bit NormalFloat with double-quantized block scales): dequantize,
// and y = x W^T with W dequantized a panel at a time. The contract and the layout are
// minillm/kernels/reference/nf4.py:
//     q uint8 (N, K/2)      byte j of a block of 64 values: value j in the low nibble, j + 32 in the high
//     scale uint8 (N, K/64) each block's absmax as an 8-bit log code: c = scale2[g] * 2^(-code/16)
//     scale2 float32 (G2,)  the largest absmax of each group of 256 blocks (numbered row-major)
//     w = LEVELS[nibble] * c, one float32 product, on both paths (so they agree bit for bit).
//
// nf4_matmul: the weight rows are cut into panels of kPanel rows, shared out by OpenMP. Each panel is
// dequantized once into a float buffer (kPanel x K floats, in L2) and multiplied with every row of x:
// a register block of 4 rows of x by 2 weight rows (8 accumulators, 6 loads per 8 FMAs) runs along K.
// x is used as float32 as it is (NF4 does not quantize activations).
// Bindings at the bottom: nf4_dequantize, nf4_matmul.
#include <algorithm>
#include <cmath>
#include <vector>

#include "binding.h"
#include "simd.h"

namespace minillm {

namespace {

constexpr std::int64_t kBlock = 64, kGroup2 = 256, kPanel = 16;
constexpr float kLevels[16] = {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
                               -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
                               0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f,
                               0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
                               0.7229568362236023f, 1.0f};

// EXP2[c] = float32(2^(-c / 16)), as the reference computes it (in double, then rounded).
const float* exp2_codes() {
    static const std::vector<float> table = [] {
        std::vector<float> t(256);
        for (int c = 0; c < 256; ++c) t[c] = static_cast<float>(std::exp2(-c / 16.0));
        return t;
    }();
    return table.data();
}

struct Nf4Weights {
    const std::uint8_t* q;       // (N, K/2)
    const std::uint8_t* scale;   // (N, K/64)
    const float* scale2;         // (G2,)
    std::int64_t N, K;
};

// The dequantized absmax of block b of row n.
inline float block_scale(const Nf4Weights& w, std::int64_t n, std::int64_t b) {
    const std::int64_t index = n * (w.K / kBlock) + b;
    return w.scale2[index / kGroup2] * exp2_codes()[w.scale[index]];
}

// ---- dequantize one weight row: out[k] = LEVELS[nibble k] * c

void dequantize_row_scalar(const Nf4Weights& w, std::int64_t n, float* out) {
    const std::uint8_t* bytes = w.q + n * (w.K / 2);
    for (std::int64_t b = 0; b < w.K / kBlock; ++b) {
        const float c = block_scale(w, n, b);
        const std::uint8_t* block = bytes + b * (kBlock / 2);
        float* o = out + b * kBlock;
        for (int j = 0; j < kBlock / 2; ++j) {
            o[j] = kLevels[block[j] & 0x0F] * c;
            o[j + kBlock / 2] = kLevels[block[j] >> 4] * c;
        }
    }
}

#if MINILLM_X86
// LEVELS[idx] for 8 indices in [0, 16): two 8-entry permutes, picked by bit 3.
MINILLM_AVX2 inline __m256 lookup_levels(__m256i idx, __m256 low, __m256 high) {
    const __m256 from_low = _mm256_permutevar8x32_ps(low, idx);
    const __m256 from_high = _mm256_permutevar8x32_ps(high, idx);
    return _mm256_blendv_ps(from_low, from_high, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

MINILLM_AVX2 void dequantize_row_avx2(const Nf4Weights& w, std::int64_t n, float* out) {
    const __m256 low = _mm256_loadu_ps(kLevels), high = _mm256_loadu_ps(kLevels + 8);
    const __m256i nibble = _mm256_set1_epi32(0x0F);
    const std::uint8_t* bytes = w.q + n * (w.K / 2);
    for (std::int64_t b = 0; b < w.K / kBlock; ++b) {
        const __m256 c = _mm256_set1_ps(block_scale(w, n, b));
        const std::uint8_t* block = bytes + b * (kBlock / 2);
        float* o = out + b * kBlock;
        for (int j = 0; j < kBlock / 2; j += 8) {
            const __m256i packed = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(block + j)));
            const __m256i lo = _mm256_and_si256(packed, nibble), hi = _mm256_srli_epi32(packed, 4);
            _mm256_storeu_ps(o + j, _mm256_mul_ps(lookup_levels(lo, low, high), c));
            _mm256_storeu_ps(o + j + kBlock / 2, _mm256_mul_ps(lookup_levels(hi, low, high), c));
        }
    }
}
#endif

void dequantize_row(const Nf4Weights& w, Isa isa, std::int64_t n, float* out) {
    MINILLM_USE_AVX2(float, isa, dequantize_row_avx2(w, n, out));
    dequantize_row_scalar(w, n, out);
}

// ---- y[m, n] = x[m] . panel[r] for a block of R rows of x and C rows of the panel

template <int R, int C>
void dot_block_scalar(const float* x, std::int64_t ldx, const float* wp, std::int64_t K, float* acc) {
    for (int i = 0; i < R; ++i)
        for (int j = 0; j < C; ++j) {
            float s = 0.0f;
            for (std::int64_t k = 0; k < K; ++k) s += x[i * ldx + k] * wp[j * K + k];
            acc[i * C + j] = s;
        }
}

#if MINILLM_X86
template <int R, int C>
MINILLM_AVX2 void dot_block_avx2(const float* x, std::int64_t ldx, const float* wp, std::int64_t K, float* acc) {
    __m256 sum[R][C];
    for (int i = 0; i < R; ++i)
        for (int j = 0; j < C; ++j) sum[i][j] = _mm256_setzero_ps();
    std::int64_t k = 0;
    for (; k + 8 <= K; k += 8) {   // K is a multiple of 64
        __m256 wv[C];
        for (int j = 0; j < C; ++j) wv[j] = _mm256_loadu_ps(wp + j * K + k);
        for (int i = 0; i < R; ++i) {
            const __m256 xv = _mm256_loadu_ps(x + i * ldx + k);
            for (int j = 0; j < C; ++j) sum[i][j] = _mm256_fmadd_ps(xv, wv[j], sum[i][j]);
        }
    }
    for (int i = 0; i < R; ++i)
        for (int j = 0; j < C; ++j) acc[i * C + j] = hsum(sum[i][j]);
}
#endif

template <int R, int C>
void dot_block(Isa isa, const float* x, std::int64_t ldx, const float* wp, std::int64_t K, float* acc) {
    MINILLM_USE_AVX2(float, isa, (dot_block_avx2<R, C>(x, ldx, wp, K, acc)));
    dot_block_scalar<R, C>(x, ldx, wp, K, acc);
}

template <int C>
void dot_rows(Isa isa, int rows, const float* x, std::int64_t ldx, const float* wp, std::int64_t K, float* acc) {
    switch (rows) {
        case 4: return dot_block<4, C>(isa, x, ldx, wp, K, acc);
        case 3: return dot_block<3, C>(isa, x, ldx, wp, K, acc);
        case 2: return dot_block<2, C>(isa, x, ldx, wp, K, acc);
        default: return dot_block<1, C>(isa, x, ldx, wp, K, acc);
    }
}

// y[:, n0:n0+rows] for one dequantized panel of `rows` weight rows.
void panel_matmul(Isa isa, const float* x, std::int64_t M, std::int64_t K, const float* panel, std::int64_t n0,
                  std::int64_t rows, std::int64_t N, const float* bias, float* y) {
    float acc[8];
    for (std::int64_t m = 0; m < M; m += 4) {
        const int mr = static_cast<int>(std::min<std::int64_t>(4, M - m));
        for (std::int64_t r = 0; r < rows; r += 2) {
            const int nr = static_cast<int>(std::min<std::int64_t>(2, rows - r));
            if (nr == 2) dot_rows<2>(isa, mr, x + m * K, K, panel + r * K, K, acc);
            else dot_rows<1>(isa, mr, x + m * K, K, panel + r * K, K, acc);
            for (int i = 0; i < mr; ++i)
                for (int j = 0; j < nr; ++j) {
                    const std::int64_t n = n0 + r + j;
                    y[(m + i) * N + n] = acc[i * nr + j] + (bias ? bias[n] : 0.0f);
                }
        }
    }
}

}  // namespace

void nf4_dequantize(const Nf4Weights& w, float* out) {
    const Isa isa = active_isa();
#if defined(MINILLM_OPENMP)
#pragma omp parallel for schedule(static) if (w.N * w.K >= kParallelThreshold)
#endif
    for (std::int64_t n = 0; n < w.N; ++n) dequantize_row(w, isa, n, out + n * w.K);
}

void nf4_matmul(const Nf4Weights& w, const float* x, std::int64_t M, const float* bias, float* y) {
    const Isa isa = active_isa();
    const std::int64_t panels = (w.N + kPanel - 1) / kPanel;
#if defined(MINILLM_OPENMP)
#pragma omp parallel if (M * w.N * w.K >= 4 * kParallelThreshold)
#endif
    {
        std::vector<float> panel(static_cast<std::size_t>(kPanel * w.K));
#if defined(MINILLM_OPENMP)
#pragma omp for schedule(static)
#endif
        for (std::int64_t p = 0; p < panels; ++p) {
            const std::int64_t n0 = p * kPanel, rows = std::min(kPanel, w.N - n0);
            for (std::int64_t r = 0; r < rows; ++r) dequantize_row(w, isa, n0 + r, panel.data() + r * w.K);
            panel_matmul(isa, x, M, w.K, panel.data(), n0, rows, w.N, bias, y);
        }
    }
}

// ---- bindings

static Nf4Weights check_weights(const Check& check, const py::array& q, const py::array& scale,
                                const py::array& scale2) {
    check.typed<std::uint8_t>("q", q, 2, "uint8 (two 4-bit values per byte)");
    const std::int64_t N = q.shape(0), K = 2 * q.shape(1);
    if (K % kBlock) check.fail("q has " + std::to_string(q.shape(1)) + " bytes per row; NF4 rows hold blocks of " +
                               std::to_string(kBlock) + " values (32 bytes)");
    check.typed<std::uint8_t>("scale", scale, 2, "uint8 (the blocks' absmax codes)");
    check.shape("scale", scale, {N, K / kBlock}, "q", q, "one code per block of 64 values");
    check.typed<float>("scale2", scale2, 1, "float32");
    check.shape("scale2", scale2, {(N * (K / kBlock) + kGroup2 - 1) / kGroup2}, "one per 256 blocks");
    return Nf4Weights{data<std::uint8_t>(q), data<std::uint8_t>(scale), data<float>(scale2), N, K};
}

static py::array py_nf4_dequantize(const py::array& q, const py::array& scale, const py::array& scale2) {
    const Check check("nf4_dequantize");
    const Nf4Weights w = check_weights(check, q, scale, scale2);
    py::array_t<float> out({w.N, w.K});
    float* op = out.mutable_data();
    {
        py::gil_scoped_release release;
        nf4_dequantize(w, op);
    }
    return out;
}

static py::array py_nf4_matmul(const py::array& x, const py::array& q, const py::array& scale,
                               const py::array& scale2, const py::object& bias) {
    const Check check("nf4_matmul");
    const Nf4Weights w = check_weights(check, q, scale, scale2);
    check.typed<float>("x", x, 2, "float32");
    if (x.shape(1) != w.K)
        check.fail("x has shape " + shape_str(x) + " but the weight has " + std::to_string(w.K) + " input features");
    py::array bias_array;
    const bool has_bias = check.optional("bias", bias, bias_array);
    if (has_bias) {
        check.typed<float>("bias", bias_array, 1, "float32");
        check.shape("bias", bias_array, {w.N});
    }
    const std::int64_t M = x.shape(0);
    py::array_t<float> y({M, w.N});
    const float* xp = data<float>(x);
    const float* bp = has_bias ? data<float>(bias_array) : nullptr;
    float* yp = y.mutable_data();
    {
        py::gil_scoped_release release;
        if (M && w.N) nf4_matmul(w, xp, M, bp, yp);
    }
    return y;
}

void bind_nf4(py::module_& m) {
    m.def("nf4_dequantize", &py_nf4_dequantize, py::arg("q"), py::arg("scale"), py::arg("scale2"),
          "The float32 (N, K) weight that NF4 arrays stand for (see minillm/kernels/reference/nf4.py).");
    m.def("nf4_matmul", &py_nf4_matmul, py::arg("x"), py::arg("q"), py::arg("scale"), py::arg("scale2"),
          py::arg("bias") = py::none(), "y (M, N) = x W^T [+ bias] with W in NF4, dequantized a panel at a time.");
}

}  // namespace minillm
