// The quantized-matmul family (quant.cpp) and the activation quantization it runs first
// (quant_activations.cpp). Contract and formulas: minillm/kernels/reference/quant.py.
#pragma once

#include <cstdint>

namespace minillm {

constexpr std::int64_t kQuantGroup = 32;   // values per group (Q8_0 activations, q8_0/q4_* weights)

// x (M, K) -> xq (M, K) int8, xd and xs (M, G), G = ceil(K / 32), per row and group of 32 (Q8_0):
// xd = max |x| / 127, xq = round(x / xd) in [-127, 127], xs = xd * sum(xq). The last group may be shorter.
void quantize_activations(const float* x, std::int64_t M, std::int64_t K, std::int8_t* xq, float* xd, float* xs);

}  // namespace minillm
