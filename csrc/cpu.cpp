// Run-time CPU feature detection (the Isa every kernel dispatches on, see simd.h), the switch that
// forces a path, and the bindings that report how the extension was built and what it uses:
// openmp, cpu_simd, simd_in_use, supported_isas, force_isa, force_scalar, kernel_paths, cache_sizes,
// get_num_threads, set_num_threads, threads_in_use, set_adaptive_threads, adaptive_threads,
// load_sample (load.cpp adapts the threads), compiler.
#include <atomic>
#include <cstdio>
#include <string>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

#include "binding.h"
#include "cache.h"
#include "parallel.h"
#include "simd.h"

#if MINILLM_X86 && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif

namespace minillm {

namespace {

#if MINILLM_X86 && (defined(__GNUC__) || defined(__clang__))
// XCR0: which register states the OS saves on a context switch (its consent to use them).
std::uint64_t xcr0() {
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (std::uint64_t(hi) << 32) | lo;
}

struct Features {
    bool avx2 = false, avx512 = false, avx512_vnni = false, avx_vnni = false;
};

// CPUID says what the CPU has; XCR0 bits 1-2 (SSE, AVX) and 5-7 (AVX-512 opmask and upper
// registers) say whether the OS lets a program use it.
Features detect() {
    Features f;
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
    const bool osxsave = c & (1u << 27), avx = c & (1u << 28), fma = c & (1u << 12);
    if (!osxsave || !avx || !fma || __get_cpuid_max(0, nullptr) < 7) return f;
    const std::uint64_t os = xcr0();
    const bool os_avx = (os & 0x6) == 0x6, os_avx512 = (os & 0xE6) == 0xE6;
    __cpuid_count(7, 0, a, b, c, d);
    const unsigned subleaves = a;
    f.avx2 = os_avx && (b & (1u << 5));
    const bool f512 = b & (1u << 16), dq = b & (1u << 17), bw = b & (1u << 30), vl = b & (1u << 31);
    f.avx512 = f.avx2 && os_avx512 && f512 && dq && bw && vl;
    f.avx512_vnni = f.avx512 && (c & (1u << 11));
    if (subleaves >= 1) {
        __cpuid_count(7, 1, a, b, c, d);
        f.avx_vnni = f.avx2 && MINILLM_HAS_AVXVNNI && (a & (1u << 4));
    }
    return f;
}
#endif

const bool* supported_table() {
    static const auto table = [] {
        static bool t[kIsaCount] = {true, false, false, false, false};
#if MINILLM_X86 && (defined(__GNUC__) || defined(__clang__))
        const Features f = detect();
        t[int(Isa::avx2)] = f.avx2;
        t[int(Isa::avx2_vnni)] = f.avx_vnni;
        t[int(Isa::avx512)] = f.avx512;
        t[int(Isa::avx512_vnni)] = f.avx512_vnni;
#endif
        return t;
    }();
    return table;
}

std::atomic<int> g_forced{-1};   // an Isa while a path is forced, else -1

}  // namespace

bool cpu_supports(Isa isa) { return supported_table()[int(isa)]; }

Isa cpu_isa() {
    static const Isa best = [] {
        int i = kIsaCount - 1;
        while (i > 0 && !supported_table()[i]) --i;
        return Isa(i);
    }();
    return best;
}

Isa active_isa() {
    const int forced = g_forced.load(std::memory_order_relaxed);
    return forced < 0 ? cpu_isa() : Isa(forced);
}

void force_isa(Isa isa) { g_forced.store(int(isa), std::memory_order_relaxed); }
void reset_isa() { g_forced.store(-1, std::memory_order_relaxed); }

const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::avx2: return "avx2";
        case Isa::avx2_vnni: return "avx2-vnni";
        case Isa::avx512: return "avx512";
        case Isa::avx512_vnni: return "avx512-vnni";
        case Isa::scalar: break;
    }
    return "scalar";
}

// ---- cache sizes

namespace {

// "48K", "2048K", "105M" (the format of /sys/devices/system/cpu/cpu0/cache/index*/size) in bytes.
std::int64_t parse_size(const char* text) {
    char unit = 0;
    long long n = 0;
    if (std::sscanf(text, "%lld%c", &n, &unit) < 1 || n <= 0) return 0;
    if (unit == 'K' || unit == 'k') return n << 10;
    if (unit == 'M' || unit == 'm') return n << 20;
    return n;
}

// The size of the level-`level` data or unified cache in sysfs (Linux), or 0.
std::int64_t sysfs_cache(int level) {
    for (int index = 0; index < 8; ++index) {
        const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/";
        char buf[64] = {};
        FILE* f = std::fopen((dir + "level").c_str(), "r");
        if (!f) return 0;
        const bool ok = std::fgets(buf, sizeof buf, f) != nullptr;
        std::fclose(f);
        if (!ok || std::atoi(buf) != level) continue;
        f = std::fopen((dir + "type").c_str(), "r");
        if (!f) continue;
        const bool typed = std::fgets(buf, sizeof buf, f) != nullptr;
        std::fclose(f);
        if (!typed || buf[0] == 'I') continue;   // "Instruction"
        f = std::fopen((dir + "size").c_str(), "r");
        if (!f) continue;
        const bool sized = std::fgets(buf, sizeof buf, f) != nullptr;
        std::fclose(f);
        if (sized) return parse_size(buf);
    }
    return 0;
}

std::int64_t cache_size(int level, std::int64_t fallback) {
    std::int64_t bytes = 0;
#if defined(_SC_LEVEL1_DCACHE_SIZE) && defined(_SC_LEVEL2_CACHE_SIZE) && defined(_SC_LEVEL3_CACHE_SIZE)
    const int name = level == 1 ? _SC_LEVEL1_DCACHE_SIZE : level == 2 ? _SC_LEVEL2_CACHE_SIZE : _SC_LEVEL3_CACHE_SIZE;
    bytes = sysconf(name);
#endif
    if (bytes <= 0) bytes = sysfs_cache(level);
    return bytes > 0 ? bytes : fallback;
}

}  // namespace

const CacheSizes& caches() {
    // Fallbacks when neither glibc nor sysfs says: a common desktop core (32 KiB, 512 KiB, 8 MiB).
    static const CacheSizes sizes{cache_size(1, 32 << 10), cache_size(2, 512 << 10), cache_size(3, 8 << 20)};
    return sizes;
}

// The path each kernel family takes now; each is defined in its family's file, beside the dispatch.
Isa gemm_isa();
Isa gemv_isa();
Isa softmax_isa();
Isa cross_entropy_isa();
Isa norm_isa();
Isa activation_isa();
Isa attention_isa();
Isa quant_isa();
Isa quantize_activations_isa();

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

static py::list supported_isas() {
    py::list names;
    for (int i = 0; i < kIsaCount; ++i)
        if (cpu_supports(Isa(i))) names.append(isa_name(Isa(i)));
    return names;
}

static py::list isa_names() {
    py::list names;
    for (int i = 0; i < kIsaCount; ++i) names.append(isa_name(Isa(i)));
    return names;
}

// force_isa("avx2") runs every kernel on that path; force_isa(None) returns to the CPU's best.
static void py_force_isa(const py::object& name) {
    if (name.is_none()) return reset_isa();
    std::string want = py::str(name);
    if (want == "avx2+fma") want = "avx2";   // the name cpu_simd() gave before the AVX-512 paths
    std::string known;
    for (int i = 0; i < kIsaCount; ++i) {
        if (want == isa_name(Isa(i))) {
            if (!cpu_supports(Isa(i))) {
                std::string have;
                for (int j = 0; j < kIsaCount; ++j)
                    if (cpu_supports(Isa(j))) have += (have.empty() ? "" : ", ") + std::string(isa_name(Isa(j)));
                Check("force_isa").fail("this CPU does not support the '" + want + "' path; it supports " + have);
            }
            return force_isa(Isa(i));
        }
        known += (i ? ", " : "") + std::string(isa_name(Isa(i)));
    }
    Check("force_isa").fail("unknown path '" + want + "'; the paths are " + known + " (or None for the best)");
}

static py::dict kernel_paths() {
    py::dict paths;
    paths["gemm"] = isa_name(gemm_isa());
    paths["gemv"] = isa_name(gemv_isa());
    paths["softmax"] = isa_name(softmax_isa());
    paths["cross_entropy"] = isa_name(cross_entropy_isa());
    paths["norm"] = isa_name(norm_isa());
    paths["activation"] = isa_name(activation_isa());
    paths["attention"] = isa_name(attention_isa());
    paths["quant_matmul"] = isa_name(quant_isa());
    paths["quantize_activations"] = isa_name(quantize_activations_isa());
    return paths;
}

static py::dict cache_sizes() {
    const CacheSizes& c = caches();
    py::dict d;
    d["l1d"] = c.l1d;
    d["l2"] = c.l2;
    d["l3"] = c.l3;
    return d;
}

void bind_cpu(py::module_& m) {
    m.def("openmp", &built_with_openmp, "True if the extension was built with OpenMP.");
    m.def("cpu_simd", []() { return std::string(isa_name(cpu_isa())); },
          "The best SIMD path this CPU supports: 'scalar', 'avx2', 'avx2-vnni', 'avx512' or 'avx512-vnni'.");
    m.def("simd_in_use", []() { return std::string(isa_name(active_isa())); },
          "The SIMD path the kernels use now (the CPU's best unless a path is forced).");
    m.def("supported_isas", &supported_isas, "The paths this CPU supports, lowest first (always 'scalar').");
    m.def("isa_names", &isa_names, "Every path a build may have, lowest first.");
    m.def("force_isa", &py_force_isa, py::arg("name"),
          "Run every kernel on the named path (one of supported_isas()), or on the best again with None.");
    m.def("force_scalar", [](bool on) { on ? force_isa(Isa::scalar) : reset_isa(); }, py::arg("on"),
          "force_isa('scalar') when on, force_isa(None) when off.");
    m.def("kernel_paths", &kernel_paths, "The path each kernel family takes now: {family: path}.");
    m.def("cache_sizes", &cache_sizes, "The cache sizes in bytes the GEMM blocks are derived from: l1d, l2, l3.");
    m.def("get_num_threads", &get_num_threads, "Threads the kernels may use (OpenMP): set_num_threads's count.");
    m.def("threads_in_use", &kernel_threads,
          "Threads a kernel's parallel region uses now: get_num_threads(), fewer while other programs keep the "
          "CPUs busy (unless adaptive threads are off).");
    m.def("set_adaptive_threads", &set_adaptive_threads, py::arg("on"),
          "Adapt the thread count to the machine's load (the default; MINILLM_ADAPTIVE_THREADS=0 turns it off).");
    m.def("adaptive_threads", &adaptive_threads, "True while the thread count adapts to the load.");
    m.def("load_sample", []() {
        sample_load();
        const LoadSample s = last_load_sample();
        py::dict d;
        d["running"] = s.running;
        d["ours"] = s.ours;
        d["others"] = s.others;
        d["cpus"] = s.cpus;
        return d;
    }, "Sample the load now: runnable threads on the machine and in this process (-1 if unknown), the smoothed "
       "count of the others', and the CPUs this process may use.");
    m.def("set_num_threads", &set_num_threads, py::arg("n"), "Set the threads the kernels use (n >= 1).");
    m.def("compiler", &compiler, "The compiler that built the extension.");
}

}  // namespace minillm
