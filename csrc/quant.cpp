// Matmul on quantized weights (contract and formulas: minillm/kernels/reference/quant.py).
//
// y (M, N) = x W^T with x (M, K) float32 quantized on the fly to int8 per group of 32 (Q8_0,
// quant_activations.cpp) and W (N, K) stored as int8 per channel, q8_0, q4_0 or q4_1. Each group's
// integer dot product is exact and is scaled once by d_w * d_x into a float accumulator.
//
// The paths (quant_isa()), each a different way to the same integer sums:
//   scalar        the twin below: plain int loops
//   avx2          maddubs + madd with llama.cpp's sign trick (quant_avx2.cpp)
//   avx2-vnni     the same with AVX-VNNI's vpdpbusd in place of maddubs + madd (quant_avx2.cpp)
//   avx512-vnni   vpdpbusd on zmm, two groups per instruction (quant_avx512.cpp); from kPackedRows
//                 rows of x on (prefill, evaluation) the weights are first packed into vpdpbusd's
//                 layout, so the integer sums accumulate along k in registers, as a float GEMM does
// (AVX-512 without VNNI takes the avx2 code: its int8 products have nothing faster.)
//
// Loops of the row paths: the output is cut into tiles of kTileM rows of x by kTileN rows of W
// (both fit in L2), and OpenMP shares out the tiles. Bindings at the bottom: quantize_activations,
// quant_matmul.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "binding.h"
#include "parallel.h"
#include "quant.h"
#include "scratch.h"
#include "simd.h"

namespace minillm {

// The path the quantized matmul takes now (minillm.build_info()["kernel_paths"]).
Isa quant_isa() { return best_isa(active_isa(), {Isa::avx512_vnni, Isa::avx2_vnni, Isa::avx2}); }

namespace {

constexpr std::int64_t kGroup = kQuantGroup;
constexpr std::int64_t kTileM = 64, kTileN = 64;
constexpr std::int64_t kPackedRows = 4;   // from this many rows of x, avx512-vnni packs the weights

// ---- the scalar twin: one weight row against one row of x

// The 32 values of weight group g as int; q4_0 already has 8 subtracted.
void weight_group_scalar(QuantScheme s, const std::uint8_t* row, std::int64_t g, std::int64_t len, std::int32_t* w) {
    if (s == QuantScheme::q4_0 || s == QuantScheme::q4_1) {
        const std::uint8_t* b = row + g * (kGroup / 2);
        const int offset = s == QuantScheme::q4_0 ? 8 : 0;
        for (int j = 0; j < kGroup / 2; ++j) {
            w[j] = (b[j] & 0x0F) - offset;
            w[j + kGroup / 2] = (b[j] >> 4) - offset;
        }
    } else {
        const std::int8_t* b = reinterpret_cast<const std::int8_t*>(row) + g * kGroup;
        for (std::int64_t j = 0; j < len; ++j) w[j] = b[j];
    }
}

// y[m, n] = sum_g (scale_g * idot_g [+ m_g xs_g]) for one (m, n).
float dot_scalar(const QuantArgs& a, std::int64_t m, std::int64_t n) {
    const bool per_channel = a.scheme == QuantScheme::int8, int4 = a.scheme >= QuantScheme::q4_0;
    const std::uint8_t* row = a.wq + n * (int4 ? a.K / 2 : a.K);
    float acc = 0.0f;
    std::int32_t w[kGroup];
    for (std::int64_t g = 0; g < a.G; ++g) {
        const std::int64_t len = std::min(kGroup, a.K - g * kGroup);
        weight_group_scalar(a.scheme, row, g, len, w);
        const std::int8_t* xq = a.xq + m * a.K + g * kGroup;
        std::int32_t dot = 0;
        for (std::int64_t j = 0; j < len; ++j) dot += w[j] * xq[j];
        const float wd = per_channel ? 1.0f : a.wd[n * a.G + g];
        acc += static_cast<float>(dot) * (wd * a.xd[m * a.G + g]);
        if (a.scheme == QuantScheme::q4_1) acc += a.wm[n * a.G + g] * a.xs[m * a.G + g];
    }
    return per_channel ? acc * a.wd[n] : acc;
}

void quant_rows_scalar(const QuantArgs& a, std::int64_t m0, std::int64_t m1, std::int64_t n0, std::int64_t n1,
                       const float* bias, float* y) {
    for (std::int64_t m = m0; m < m1; ++m)
        for (std::int64_t n = n0; n < n1; ++n) y[m * a.N + n] = dot_scalar(a, m, n) + (bias ? bias[n] : 0.0f);
}

void quant_rows(Isa isa, const QuantArgs& a, std::int64_t m0, std::int64_t m1, std::int64_t n0, std::int64_t n1,
                const float* bias, float* y) {
#if MINILLM_X86
    switch (isa) {
        case Isa::avx512_vnni: return quant_rows_avx512_vnni(a, m0, m1, n0, n1, bias, y);
        case Isa::avx2_vnni: return quant_rows_avx2_vnni(a, m0, m1, n0, n1, bias, y);
        case Isa::avx2: return quant_rows_avx2(a, m0, m1, n0, n1, bias, y);
        default: break;
    }
#endif
    (void)isa;
    quant_rows_scalar(a, m0, m1, n0, n1, bias, y);
}

}  // namespace

void quant_matmul(QuantScheme scheme, const float* x, std::int64_t M, std::int64_t K, const std::uint8_t* wq,
                  const float* wd, const float* wm, const float* bias, std::int64_t N, float* y) {
    const std::int64_t G = (K + kGroup - 1) / kGroup, Gp = (G + 1) / 2 * 2;
    // one scratch block: xq (M, K) | xd, xs (M, G) | xsum (M, Gp)
    const std::int64_t xq_bytes = (M * K + 63) / 64 * 64;
    char* block = scratch<char>(Slot::quant_x, xq_bytes + 4 * (2 * M * G + M * Gp));
    auto* xq = reinterpret_cast<std::int8_t*>(block);
    auto* xd = reinterpret_cast<float*>(block + xq_bytes);
    float* xs = xd + M * G;
    auto* xsum = reinterpret_cast<std::int32_t*>(xs + M * G);
    quantize_activations(x, M, K, xq, xd, xs, xsum, Gp);
    const QuantArgs a{scheme, xq, xd, xs, xsum, wq, wd, wm, M, N, K, G, Gp};
    const Isa isa = quant_isa();
#if MINILLM_X86
    if (isa == Isa::avx512_vnni && M >= kPackedRows) return quant_packed_avx512_vnni(a, bias, y);
#endif
    const std::int64_t tiles_m = (M + kTileM - 1) / kTileM, tiles_n = (N + kTileN - 1) / kTileN;
    const std::int64_t tiles = tiles_m * tiles_n;
    const int threads = tiles > 1 ? threads_for(M * N * K, 8 * kParallelThreshold) : 1;
    // tiles in n-major order within each m block, so neighbouring threads share rows of x
#if defined(MINILLM_OPENMP)
#pragma omp parallel for schedule(dynamic) num_threads(threads) if (threads > 1)
#endif
    for (std::int64_t t = 0; t < tiles; ++t) {
        const std::int64_t tm = t / tiles_n, tn = t % tiles_n;
        quant_rows(isa, a, tm * kTileM, std::min(M, (tm + 1) * kTileM), tn * kTileN, std::min(N, (tn + 1) * kTileN),
                   bias, y);
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
