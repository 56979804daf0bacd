// The avx2 and avx2-vnni row paths of the quantized matmul (quant.cpp drives them): the same code,
// quant_avx2.inc, compiled once per path with that path's target attribute. See the .inc's top.
#include <algorithm>

#include "quant.h"

#if MINILLM_X86
namespace minillm {

namespace avx2_path {
#define QUANT_TARGET MINILLM_AVX2
#define QUANT_VNNI 0
#define QUANT_ENTRY rows_entry
#include "quant_avx2.inc"
#undef QUANT_TARGET
#undef QUANT_VNNI
#undef QUANT_ENTRY
}  // namespace avx2_path

void quant_rows_avx2(const QuantArgs& a, std::int64_t m0, std::int64_t m1, std::int64_t n0, std::int64_t n1,
                     const float* bias, float* y) {
    avx2_path::rows_entry(a, m0, m1, n0, n1, bias, y);
}

#if MINILLM_HAS_AVXVNNI
namespace avx2_vnni_path {
#define QUANT_TARGET MINILLM_AVX2_VNNI
#define QUANT_VNNI 1
#define QUANT_ENTRY rows_entry
#include "quant_avx2.inc"
#undef QUANT_TARGET
#undef QUANT_VNNI
#undef QUANT_ENTRY
}  // namespace avx2_vnni_path
#endif

void quant_rows_avx2_vnni(const QuantArgs& a, std::int64_t m0, std::int64_t m1, std::int64_t n0, std::int64_t n1,
                          const float* bias, float* y) {
#if MINILLM_HAS_AVXVNNI
    avx2_vnni_path::rows_entry(a, m0, m1, n0, n1, bias, y);
#else   // never reached: without the compiler's support the path is not offered (cpu.cpp)
    avx2_path::rows_entry(a, m0, m1, n0, n1, bias, y);
#endif
}

}  // namespace minillm
#endif
