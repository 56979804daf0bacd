// Run-time CPU feature detection, shared by every kernel family.
#include "simd.h"

namespace minillm {

static bool g_force_scalar = false;

static bool cpu_has_avx2_fma() {
#if MINILLM_X86 && (defined(__GNUC__) || defined(__clang__))
    static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return has;
#else
    return false;
#endif
}

bool use_avx2() { return !g_force_scalar && cpu_has_avx2_fma(); }
void force_scalar(bool on) { g_force_scalar = on; }
const char* cpu_simd() { return cpu_has_avx2_fma() ? "avx2+fma" : "scalar"; }

}  // namespace minillm
