// The quantized-matmul family (quant.cpp drives it; the AVX2 versions are in quant_avx2.cpp, the
// VNNI ones in quant_avx512.cpp) and the activation quantization it runs first
// (quant_activations.cpp). Contract and formulas: minillm/kernels/reference/quant.py.
#pragma once

#include <cstdint>

#include "simd.h"

namespace minillm {

constexpr std::int64_t kQuantGroup = 32;   // values per group (Q8_0 activations, q8_0/q4_* weights)

enum class QuantScheme : int { int8 = 0, q8_0 = 1, q4_0 = 2, q4_1 = 3 };   // the binding's scheme ids

// x (M, K) -> xq (M, K) int8, xd and xs (M, G), G = ceil(K / 32), per row and group of 32 (Q8_0):
// xd = max |x| / 127 (at least 2^-149 unless the group is all zeros), xq = round(x / xd) in
// [-127, 127], xs = xd * sum(xq); a group with NaN or +-inf gives xq = 0, xd = xs = NaN. The last
// group may be shorter. With xsum, also xsum[m * xsum_stride + g] = sum(xq) of the group (0 for the
// groups past G up to the stride, which the VNNI kernels read in pairs).
void quantize_activations(const float* x, std::int64_t M, std::int64_t K, std::int8_t* xq, float* xd, float* xs,
                          std::int32_t* xsum = nullptr, std::int64_t xsum_stride = 0);

// The quantized operands of y = x W^T as the kernels read them.
struct QuantArgs {
    QuantScheme scheme;
    const std::int8_t* xq;     // (M, K)
    const float* xd;           // (M, G)
    const float* xs;           // (M, G)
    const std::int32_t* xsum;  // (M, Gp): sum of each group of xq, Gp = G rounded up to even
    const std::uint8_t* wq;    // (N, K) int8 or (N, K/2) packed int4
    const float* wd;           // (N,) for int8, else (N, G)
    const float* wm;           // (N, G) for q4_1
    std::int64_t M, N, K, G, Gp;
};

#if MINILLM_X86
// AVX2 (maddubs) and AVX-VNNI versions (quant_avx2.cpp): y[m, n0 .. n1) (+ bias) for rows m0 .. m1.
void quant_rows_avx2(const QuantArgs& a, std::int64_t m0, std::int64_t m1, std::int64_t n0, std::int64_t n1,
                     const float* bias, float* y);
void quant_rows_avx2_vnni(const QuantArgs& a, std::int64_t m0, std::int64_t m1, std::int64_t n0, std::int64_t n1,
                          const float* bias, float* y);
// AVX512-VNNI (quant_avx512.cpp): the same for a few rows of x (decode), and the whole product
// through weights packed for vpdpbusd (prefill: many rows of x).
void quant_rows_avx512_vnni(const QuantArgs& a, std::int64_t m0, std::int64_t m1, std::int64_t n0, std::int64_t n1,
                            const float* bias, float* y);
void quant_packed_avx512_vnni(const QuantArgs& a, const float* bias, float* y);
#endif

}  // namespace minillm
