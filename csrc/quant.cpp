// Matmul on quantized weights (contract and formulas: minillm/kernels/reference/quant.py).
//
// y (M, N) = x W^T with x (M, K) float32 quantized on the fly to int8 per group of 32 (Q8_0) and
// W (N, K) stored as int8 per channel, q8_0, q4_0 or q4_1. Each group's integer dot product is exact
// (AVX2: maddubs + madd, llama.cpp's sign trick for signed x signed) and is scaled once by
// d_w * d_x into a float accumulator.
//
// Loops: the output is cut into tiles of kTileM rows of x by kTileN rows of W (both fit in L2), and
// OpenMP shares out the tiles. Inside a tile each weight row is unpacked once per group and used
// for up to 4 rows of x at a time. The activations are quantized first (quant_activations.cpp).
// Bindings at the bottom: quantize_activations, quant_matmul.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "binding.h"
#include "quant.h"
#include "simd.h"

namespace minillm {

// The path the quantized matmul takes now (minillm.build_info()["kernel_paths"]).
Isa quant_isa() { return best_isa(active_isa(), {Isa::avx2}); }

enum class QuantScheme : int { int8 = 0, q8_0 = 1, q4_0 = 2, q4_1 = 3 };   // the binding's scheme ids

namespace {

constexpr std::int64_t kGroup = kQuantGroup;
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

// ---- one weight row against up to 4 rows of x:  out[r] = sum_g (scale_g * idot_g [+ m_g xs_g])

// The scheme is a template parameter from here on, so no branch on it is left inside the loops.
template <QuantScheme S>
constexpr bool is_int4 = S == QuantScheme::q4_0 || S == QuantScheme::q4_1;

template <QuantScheme S>
inline std::int64_t row_bytes(std::int64_t K) { return is_int4<S> ? K / 2 : K; }

// The 32 values of weight group g as int (scalar path); q4_0 already has 8 subtracted.
template <QuantScheme S>
inline void weight_group_scalar(const std::uint8_t* row, std::int64_t g, std::int64_t len, std::int32_t* w) {
    if constexpr (is_int4<S>) {
        const std::uint8_t* b = row + g * (kGroup / 2);
        const int offset = S == QuantScheme::q4_0 ? 8 : 0;
        for (int j = 0; j < kGroup / 2; ++j) {
            w[j] = (b[j] & 0x0F) - offset;
            w[j + kGroup / 2] = (b[j] >> 4) - offset;
        }
    } else {
        const std::int8_t* b = reinterpret_cast<const std::int8_t*>(row) + g * kGroup;
        for (std::int64_t j = 0; j < len; ++j) w[j] = b[j];
    }
}

template <QuantScheme S, int R>
void dot_rows_scalar(const QuantArgs& a, std::int64_t m, std::int64_t n, float* out) {
    constexpr bool per_channel = S == QuantScheme::int8;
    const std::uint8_t* row = a.wq + n * row_bytes<S>(a.K);
    float acc[R] = {};
    std::int32_t w[kGroup];
    for (std::int64_t g = 0; g < a.G; ++g) {
        const std::int64_t len = std::min(kGroup, a.K - g * kGroup);
        weight_group_scalar<S>(row, g, len, w);
        const float wd = per_channel ? 1.0f : a.wd[n * a.G + g];
        for (int r = 0; r < R; ++r) {
            const std::int8_t* xq = a.xq + (m + r) * a.K + g * kGroup;
            std::int32_t dot = 0;
            for (std::int64_t j = 0; j < len; ++j) dot += w[j] * xq[j];
            acc[r] += static_cast<float>(dot) * (wd * a.xd[(m + r) * a.G + g]);
            if constexpr (S == QuantScheme::q4_1) acc[r] += a.wm[n * a.G + g] * a.xs[(m + r) * a.G + g];
        }
    }
    for (int r = 0; r < R; ++r) out[r] = per_channel ? acc[r] * a.wd[n] : acc[r];
}

#if MINILLM_X86
// The 32 values of weight group g in one register: int8 for int8/q8_0, int8 in [-8, 7] for q4_0,
// uint8 in [0, 15] for q4_1.
template <QuantScheme S>
MINILLM_AVX2 inline __m256i weight_group_avx2(const std::uint8_t* row, std::int64_t g) {
    if constexpr (is_int4<S>) {
        const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + g * (kGroup / 2)));
        const __m256i both = _mm256_set_m128i(_mm_srli_epi16(b, 4), b);    // high nibbles in the upper lane
        const __m256i v = _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
        if constexpr (S == QuantScheme::q4_0) return _mm256_sub_epi8(v, _mm256_set1_epi8(8));
        return v;
    }
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + g * kGroup));
}

// acc[r] += (integer dot of weight group g with x row m + r) * scale, for r < R.
template <QuantScheme S, int R>
MINILLM_AVX2 inline void accumulate_group(const QuantArgs& a, const std::uint8_t* row, std::int64_t m,
                                          std::int64_t n, std::int64_t g, __m256* acc, float* min_terms) {
    constexpr bool per_channel = S == QuantScheme::int8, unsigned_w = S == QuantScheme::q4_1;
    const __m256i w = weight_group_avx2<S>(row, g);
    const __m256i w_abs = unsigned_w ? w : _mm256_sign_epi8(w, w);
    const float wd = per_channel ? 1.0f : a.wd[n * a.G + g];
    for (int r = 0; r < R; ++r) {
        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.xq + (m + r) * a.K + g * kGroup));
        // signed x signed: |w| * (x with w's sign), so maddubs sees an unsigned first operand
        const __m256i x_signed = unsigned_w ? x : _mm256_sign_epi8(x, w);
        const __m256i dot = _mm256_madd_epi16(_mm256_maddubs_epi16(w_abs, x_signed), _mm256_set1_epi16(1));
        const __m256 scale = _mm256_set1_ps(wd * a.xd[(m + r) * a.G + g]);
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[r]);
        if constexpr (unsigned_w) min_terms[r] += a.wm[n * a.G + g] * a.xs[(m + r) * a.G + g];
    }
}

template <QuantScheme S, int R>
MINILLM_AVX2 void dot_rows_avx2(const QuantArgs& a, std::int64_t m, std::int64_t n, float* out) {
    constexpr bool per_channel = S == QuantScheme::int8;
    const std::uint8_t* row = a.wq + n * row_bytes<S>(a.K);
    const std::int64_t full = a.K / kGroup;   // groups of exactly 32 (all of them unless int8 has a tail)
    // two sets of accumulators, for even and odd groups: two independent FMA chains hide the
    // FMA latency when there are only one or two rows of x
    __m256 even[R], odd[R];
    float min_terms[R] = {};
    for (int r = 0; r < R; ++r) even[r] = odd[r] = _mm256_setzero_ps();
    std::int64_t g = 0;
    for (; g + 1 < full; g += 2) {
        accumulate_group<S, R>(a, row, m, n, g, even, min_terms);
        accumulate_group<S, R>(a, row, m, n, g + 1, odd, min_terms);
    }
    if (g < full) accumulate_group<S, R>(a, row, m, n, g, even, min_terms);
    for (int r = 0; r < R; ++r) {
        float total = hsum(_mm256_add_ps(even[r], odd[r])) + min_terms[r];
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

#if MINILLM_X86
// One row of x against 4 weight rows n..n+3 (the decode GEMV): x's group is loaded once and its
// sign moved onto the weights (maddubs(|x|, sign(w, x))), four independent FMA chains.
template <QuantScheme S>
MINILLM_AVX2 void dot_4_weight_rows_avx2(const QuantArgs& a, std::int64_t m, std::int64_t n, float* out) {
    constexpr bool per_channel = S == QuantScheme::int8, unsigned_w = S == QuantScheme::q4_1;
    constexpr std::int64_t kGroupBytes = is_int4<S> ? kGroup / 2 : kGroup;
    const std::int64_t stride = row_bytes<S>(a.K), full = a.K / kGroup;
    const std::uint8_t* row = a.wq + n * stride;
    const std::int8_t* xrow = a.xq + m * a.K;
    const float* xd = a.xd + m * a.G;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    float min_terms[4] = {};
    for (std::int64_t g = 0; g < full; ++g) {
        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xrow + g * kGroup));
        const __m256i x_abs = _mm256_sign_epi8(x, x);
        for (int j = 0; j < 4; ++j) {
            // fetch the same group of the next four rows now: decode streams the weights from memory
            _mm_prefetch(reinterpret_cast<const char*>(row + (4 + j) * stride + g * kGroupBytes), _MM_HINT_T0);
            const __m256i w = weight_group_avx2<S>(row + j * stride, g);
            const __m256i prod = unsigned_w ? _mm256_maddubs_epi16(w, x)
                                            : _mm256_maddubs_epi16(x_abs, _mm256_sign_epi8(w, x));
            const __m256i dot = _mm256_madd_epi16(prod, _mm256_set1_epi16(1));
            const float scale = per_channel ? xd[g] : a.wd[(n + j) * a.G + g] * xd[g];
            acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(scale), acc[j]);
            if constexpr (unsigned_w) min_terms[j] += a.wm[(n + j) * a.G + g] * a.xs[m * a.G + g];
        }
    }
    for (int j = 0; j < 4; ++j) {
        float total = hsum(acc[j]) + min_terms[j];
        if (full < a.G) {   // the short last group of an int8 per-channel row
            const std::int8_t* w = reinterpret_cast<const std::int8_t*>(row + j * stride) + full * kGroup;
            std::int32_t dot = 0;
            for (std::int64_t k = 0; k < a.K - full * kGroup; ++k) dot += w[k] * xrow[full * kGroup + k];
            total += static_cast<float>(dot) * xd[full];
        }
        out[j] = per_channel ? total * a.wd[n + j] : total;
    }
}
#endif

template <QuantScheme S, int R>
void dot_rows(const QuantArgs& a, Isa isa, std::int64_t m, std::int64_t n, float* out) {
    MINILLM_USE_AVX2(float, isa, (dot_rows_avx2<S, R>(a, m, n, out)));
    dot_rows_scalar<S, R>(a, m, n, out);
}

// All outputs of one (kTileM x kTileN) tile, 4 rows of x at a time.
template <QuantScheme S>
void quant_tile(const QuantArgs& a, Isa isa, std::int64_t m0, std::int64_t m1, std::int64_t n0, std::int64_t n1,
                const float* bias, float* y) {
    float out[4];
    for (std::int64_t m = m0; m < m1; m += 4) {
        const std::int64_t rows = std::min<std::int64_t>(4, m1 - m);
        std::int64_t n = n0;
#if MINILLM_X86
        if (rows == 1 && isa >= Isa::avx2) {   // a single row of x (decode): four weight rows at a time
            for (; n + 4 <= n1; n += 4) {
                dot_4_weight_rows_avx2<S>(a, m, n, out);
                for (int j = 0; j < 4; ++j) y[m * a.N + n + j] = out[j] + (bias ? bias[n + j] : 0.0f);
            }
        }
#endif
        for (; n < n1; ++n) {
            switch (rows) {
                case 4: dot_rows<S, 4>(a, isa, m, n, out); break;
                case 3: dot_rows<S, 3>(a, isa, m, n, out); break;
                case 2: dot_rows<S, 2>(a, isa, m, n, out); break;
                default: dot_rows<S, 1>(a, isa, m, n, out); break;
            }
            const float b = bias ? bias[n] : 0.0f;
            for (std::int64_t r = 0; r < rows; ++r) y[(m + r) * a.N + n] = out[r] + b;
        }
    }
}

template <QuantScheme S>
void quant_tiles(const QuantArgs& a, const float* bias, float* y) {
    const Isa isa = active_isa();
    const std::int64_t tiles_m = (a.M + kTileM - 1) / kTileM, tiles_n = (a.N + kTileN - 1) / kTileN;
    const std::int64_t tiles = tiles_m * tiles_n;
    // tiles in n-major order within each m block, so neighbouring threads share rows of x
#if defined(MINILLM_OPENMP)
#pragma omp parallel for schedule(static) if (a.M * a.N * a.K >= 8 * kParallelThreshold)
#endif
    for (std::int64_t t = 0; t < tiles; ++t) {
        const std::int64_t tm = t / tiles_n, tn = t % tiles_n;
        quant_tile<S>(a, isa, tm * kTileM, std::min(a.M, (tm + 1) * kTileM), tn * kTileN,
                      std::min(a.N, (tn + 1) * kTileN), bias, y);
    }
}

}  // namespace

void quant_matmul(QuantScheme scheme, const float* x, std::int64_t M, std::int64_t K, const std::uint8_t* wq,
                  const float* wd, const float* wm, const float* bias, std::int64_t N, float* y) {
    const std::int64_t G = (K + kGroup - 1) / kGroup;
    std::vector<std::int8_t> xq(static_cast<std::size_t>(M * K));
    std::vector<float> xd(static_cast<std::size_t>(M * G)), xs(static_cast<std::size_t>(M * G));
    quantize_activations(x, M, K, xq.data(), xd.data(), xs.data());
    const QuantArgs a{scheme, xq.data(), xd.data(), xs.data(), wq, wd, wm, M, N, K, G};
    switch (scheme) {
        case QuantScheme::int8: quant_tiles<QuantScheme::int8>(a, bias, y); break;
        case QuantScheme::q8_0: quant_tiles<QuantScheme::q8_0>(a, bias, y); break;
        case QuantScheme::q4_0: quant_tiles<QuantScheme::q4_0>(a, bias, y); break;
        case QuantScheme::q4_1: quant_tiles<QuantScheme::q4_1>(a, bias, y); break;
    }
}

// ---- bindings

static py::tuple py_quantize_activations(const py::array& x) {
    const Check check("quantize_activations");
    check.typed<float>("x", x, 2, "float32");
    const std::int64_t M = x.shape(0), K = x.shape(1), G = (K + kGroup - 1) / kGroup;
    py::array_t<std::int8_t> xq({M, K});
    py::array_t<float> xd({M, G}), xs({M, G});
    const float* xp = data<float>(x);
    std::int8_t* xqp = xq.mutable_data();
    float *xdp = xd.mutable_data(), *xsp = xs.mutable_data();
    {
        py::gil_scoped_release release;
        quantize_activations(xp, M, K, xqp, xdp, xsp);
    }
    return py::make_tuple(xq, xd, xs);
}

// x (M, K) float32; q (N, K) int8, or (N, K/2) uint8 for q4_*; scale (N,) for int8, else (N, K/32);
// min (N, K/32) for q4_1 only; bias None or (N,).
static py::array py_quant_matmul(const py::array& x, int scheme_id, const py::array& q, const py::array& scale,
                                 const py::object& min, const py::object& bias) {
    const Check check("quant_matmul");
    if (scheme_id < 0 || scheme_id > 3) check.fail("scheme must be 0..3 (int8, q8_0, q4_0, q4_1)");
    const auto scheme = static_cast<QuantScheme>(scheme_id);
    const bool int4 = scheme == QuantScheme::q4_0 || scheme == QuantScheme::q4_1;
    check.typed<float>("x", x, 2, "float32");
    if (int4) check.typed<std::uint8_t>("q", q, 2, "uint8 (two 4-bit values per byte)");
    else check.typed<std::int8_t>("q", q, 2, "int8");
    const std::int64_t M = x.shape(0), K = x.shape(1), N = q.shape(0);
    if (K < 1) check.fail("x must have at least one column");
    if (scheme != QuantScheme::int8 && K % kGroup)
        check.fail("x has " + std::to_string(K) + " columns; group-wise schemes need a multiple of 32");
    check.shape("q", q, {N, int4 ? K / 2 : K});
    const bool per_channel = scheme == QuantScheme::int8;
    check.typed<float>("scale", scale, per_channel ? 1 : 2, "float32");
    if (per_channel) check.shape("scale", scale, {N});
    else check.shape("scale", scale, {N, K / kGroup});
    py::array min_array, bias_array;
    const bool has_min = check.optional("min", min, min_array);
    if (scheme == QuantScheme::q4_1 && !has_min) check.fail("q4_1 needs min");
    if (scheme != QuantScheme::q4_1 && has_min) check.fail("min is only for q4_1");
    if (has_min) {
        check.typed<float>("min", min_array, 2, "float32");
        check.shape("min", min_array, {N, K / kGroup});
    }
    const bool has_bias = check.optional("bias", bias, bias_array);
    if (has_bias) {
        check.typed<float>("bias", bias_array, 1, "float32");
        check.shape("bias", bias_array, {N});
    }
    py::array_t<float> y({M, N});
    const float *xp = data<float>(x), *sp = data<float>(scale);
    const auto* qp = data<std::uint8_t>(q);
    const float* mp = has_min ? data<float>(min_array) : nullptr;
    const float* bp = has_bias ? data<float>(bias_array) : nullptr;
    float* yp = y.mutable_data();
    {
        py::gil_scoped_release release;
        if (M && N) quant_matmul(scheme, xp, M, K, qp, sp, mp, bp, N, yp);
    }
    return y;
}

void bind_quant(py::module_& m) {
    m.def("quantize_activations", &py_quantize_activations, py::arg("x"),
          "x (M, K) float32 -> (xq int8 (M, K), xd (M, G), xs (M, G)): int8 per group of 32 (Q8_0).");
    m.def("quant_matmul", &py_quant_matmul, py::arg("x"), py::arg("scheme"), py::arg("q"), py::arg("scale"),
          py::arg("min") = py::none(), py::arg("bias") = py::none(),
          "y (M, N) = x W^T [+ bias] on quantized W; scheme 0..3 = int8, q8_0, q4_0, q4_1.");
}

}  // namespace minillm
