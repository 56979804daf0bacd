// Run-time CPU feature detection (the Isa every kernel dispatches on, see simd.h), and the
// bindings that report how the extension was built and what it uses: openmp, cpu_simd,
// simd_in_use, force_scalar, get_num_threads, set_num_threads, compiler.
#include <string>

#include "binding.h"
#include "simd.h"

namespace minillm {

static bool g_force_scalar = false;

Isa cpu_isa() {
#if MINILLM_X86 && (defined(__GNUC__) || defined(__clang__))
    // __builtin_cpu_supports also checks that the OS saves the AVX state (XCR0).
    static const Isa best =
        __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? Isa::avx2 : Isa::scalar;
    return best;
#else
    return Isa::scalar;
#endif
}

Isa active_isa() { return g_force_scalar ? Isa::scalar : cpu_isa(); }

void force_scalar(bool on) { g_force_scalar = on; }

const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::avx2: return "avx2+fma";
        case Isa::scalar: break;
    }
    return "scalar";
}

// ---- bindings

static std::string compiler() {
#if defined(__clang__)
    return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
    return std::string("gcc ") + __VERSION__;
#elif defined(_MSC_VER)
    return std::string("msvc ") + std::to_string(_MSC_VER);
#else
    return "unknown";
#endif
}

static void set_num_threads(int n) {
    if (n < 1) Check("set_num_threads").fail("n must be >= 1, got " + std::to_string(n));
#if defined(MINILLM_OPENMP)
    omp_set_num_threads(n);
#endif
}

static int get_num_threads() {
#if defined(MINILLM_OPENMP)
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static bool built_with_openmp() {
#if defined(MINILLM_OPENMP)
    return true;
#else
    return false;
#endif
}

void bind_cpu(py::module_& m) {
    m.def("openmp", &built_with_openmp, "True if the extension was built with OpenMP.");
    m.def("cpu_simd", []() { return std::string(isa_name(cpu_isa())); },
          "The SIMD level this CPU supports: 'avx2+fma' or 'scalar'.");
    m.def("simd_in_use", []() { return std::string(isa_name(active_isa())); },
          "The SIMD level the kernels use now (scalar when forced).");
    m.def("force_scalar", &force_scalar, py::arg("on"),
          "Force the portable scalar path (for tests that hold both paths equal).");
    m.def("get_num_threads", &get_num_threads, "Threads the kernels use (OpenMP).");
    m.def("set_num_threads", &set_num_threads, py::arg("n"), "Set the threads the kernels use (n >= 1).");
    m.def("compiler", &compiler, "The compiler that built the extension.");
}

}  // namespace minillm
