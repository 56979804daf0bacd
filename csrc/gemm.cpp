// GEMM: C (M, N) = op(A) op(B) (+ C when accumulating) (+ bias on every row), float32 and float64.
//
// op(A) is (M, K): A is stored (M, K) row-major, or (K, M) when trans_a. op(B) is (K, N): B is
// stored (K, N), or (N, K) when trans_b. Transposes are absorbed by the packing, never copied.
//
// The BLIS structure, loops from the outside in:
//   jc over N in NC columns
//     pack op(B)[:, jc:jc+NC] into NR-wide slivers, K cut in KC blocks   (all threads; one barrier)
//     tasks: row chunks (x column chunks when M is small), taken by the threads dynamically
//       pc over K in KC:     pack op(A)[chunk rows, pc:pc+KC] into MR-tall slivers (this thread's)
//         jr over the chunk's slivers of B      (a KC x NR sliver of B stays in L1)
//           ir over the chunk's slivers of A    (the chunk's packed A stays in L2)
//             tile: KC rank-1 updates of an MR x NR tile held in registers
// The register tile and the packing come from the path (gemm.h: scalar and AVX2 6 x 16 in
// gemm_kernels.cpp, AVX-512 14 x 32 in gemm_avx512.cpp); KC, MC and NC from the CPU's cache sizes,
// read at run time (cache.h). The first pc block writes C (with the bias), later ones add to it.
//
// Threads: one parallel region per call, none below kParallelWork multiply-adds. The B panel is
// packed once and shared, so the only barriers are one after packing and one at the end of each
// NC panel (one of each for all but very wide N); each thread packs the A rows of the chunks it
// takes. The chunks are small enough (about four per thread) that on a busy machine a thread that
// gets less CPU time takes fewer of them instead of holding the others up.
// M = 1 (a decode step's GEMV) has its own path, gemv.cpp: it streams B once.
// Binding at the bottom: matmul.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "binding.h"
#include "cache.h"
#include "gemm.h"
#include "parallel.h"
#include "scratch.h"
#include "simd.h"

namespace minillm {

using blas::Kernel;
using blas::Operand;

// The GEMM's path now (also the GEMV's, which has the same versions).
Isa gemm_isa() { return float_family_isa(); }

namespace {

// Below this many multiply-adds a parallel region costs more than it saves (measured: ~64 x 128 x 128).
constexpr std::int64_t kParallelWork = std::int64_t(1) << 20;

std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }
std::int64_t round_up(std::int64_t a, std::int64_t b) { return ceil_div(a, b) * b; }

template <typename T>
Kernel<T> kernel_for(Isa isa) {
#if MINILLM_X86
    if constexpr (std::is_same<T, float>::value) {
        if (isa >= Isa::avx512) return blas::avx512_kernel();
        if (isa >= Isa::avx2) return blas::avx2_kernel();
    }
#endif
    (void)isa;
    return blas::scalar_kernel<T>();
}

// Block sizes from the cache sizes: a KC x NR sliver of B takes 1/32 of L2, an MC x KC block of A a
// quarter of L2, and the packed B panel (K x NC) at most a quarter of L3 (16 MiB at most). KC is
// balanced so the last K block is not a sliver of the others. On a Zen 3 core (512 KiB L2, AVX2's
// 6 x 16 tile) that gives BLIS's KC = 256 and MC ~ 128; on a Sapphire Rapids core (2 MiB L2, the
// 14 x 32 tile) KC = 512 and MC = 224, where measured KC = 192 (a sliver in L1) was ~10% slower: the
// tile's C loads and stores then come too often, and L2 feeds a sliver of B fast enough.
struct Blocks {
    std::int64_t kc, mc, nc;
};

Blocks g_blocks_override{0, 0, 0};   // set by gemm_blocks() (tests and tuning); 0 = from the caches

template <typename T>
Blocks blocks_for(const Kernel<T>& kern, std::int64_t N, std::int64_t K) {
    const CacheSizes& c = caches();
    const Blocks& force = g_blocks_override;
    const std::int64_t elem = sizeof(T);
    const std::int64_t kc_target =
        force.kc ? force.kc : std::clamp<std::int64_t>(c.l2 / 32 / (kern.nr * elem) / 16 * 16, 64, 1024);
    const std::int64_t kc = round_up(ceil_div(K, ceil_div(K, kc_target)), 8);
    const std::int64_t a_row_bytes = kc * elem * kern.a_stride / kern.mr;
    const std::int64_t mc_rows = force.mc ? force.mc : c.l2 / 4 / a_row_bytes;
    const std::int64_t mc = std::clamp<std::int64_t>(mc_rows / kern.mr, 1, 1024 / kern.mr) * kern.mr;
    const std::int64_t budget = std::clamp<std::int64_t>(c.l3 / 4, 1 << 20, 16 << 20);
    const std::int64_t nc_cols = force.nc ? force.nc : budget / (K * elem);
    const std::int64_t nc = std::max<std::int64_t>(1, nc_cols / kern.nr) * kern.nr;
    return {kc, mc, std::min(nc, round_up(N, kern.nr))};
}

}  // namespace

template <typename T>
void gemm_blocked(const T* A, const T* B, T* C, std::int64_t M, std::int64_t N, std::int64_t K, bool trans_a,
                  bool trans_b, bool accumulate, const T* bias) {
    const Operand<T> a{A, trans_a ? M : K, trans_a}, b{B, trans_b ? K : N, trans_b};
    const Kernel<T> kern = kernel_for<T>(simd_isa<T>());
    const Blocks blk = blocks_for(kern, N, K);
    const std::int64_t mr = kern.mr, nr = kern.nr, kc_max = std::min(blk.kc, K);
    const int threads = threads_for(M * N * K, kParallelWork);

    // Tasks: about 4 per thread, as row chunks of whole A slivers spread evenly (at least 4 slivers
    // each, at most MC rows); when that gives too few, each row chunk is also cut into column chunks.
    const std::int64_t target = threads > 1 ? 4 * threads : 1, m_all = ceil_div(M, mr);
    const std::int64_t row_chunks = std::max(std::min(target, ceil_div(m_all, 4)), ceil_div(m_all, blk.mc / mr));
    const std::int64_t a_size = ceil_div(m_all, row_chunks) * kc_max * kern.a_stride;   // one thread's packed A
    T* packed_b = scratch<T>(Slot::gemm_b, K * blk.nc);
    T* packed_a = scratch<T>(Slot::gemm_a, a_size * threads);
    const std::int64_t k_blocks = ceil_div(K, blk.kc);

#if defined(MINILLM_OPENMP)
#pragma omp parallel num_threads(threads) if (threads > 1)
#endif
    {
        int thread = 0;
#if defined(MINILLM_OPENMP)
        thread = omp_get_thread_num();
#endif
        T* my_a = packed_a + thread * a_size;
        for (std::int64_t jc = 0; jc < N; jc += blk.nc) {
            const std::int64_t nc = std::min(blk.nc, N - jc), n_slivers = ceil_div(nc, nr);
            const std::int64_t nc_pad = n_slivers * nr;
            // packed B: K block p (rows pc .. pc + kc) at packed_b + pc * nc_pad, its slivers kc * nr apart
#if defined(MINILLM_OPENMP)
#pragma omp for schedule(static)
#endif
            for (std::int64_t t = 0; t < k_blocks * n_slivers; ++t) {
                const std::int64_t pc = (t / n_slivers) * blk.kc, s = t % n_slivers, kc = std::min(blk.kc, K - pc);
                kern.pack_b(b, pc, kc, jc + s * nr, std::min(nr, nc - s * nr), packed_b + pc * nc_pad + s * kc * nr);
            }
            // the implicit barrier: the panel is complete
            const std::int64_t col_chunks = row_chunks >= target ? 1 : std::min(n_slivers, ceil_div(target, row_chunks));
#if defined(MINILLM_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
            for (std::int64_t task = 0; task < row_chunks * col_chunks; ++task) {
                const std::int64_t rt = task / col_chunks, ct = task % col_chunks;   // slivers split evenly
                const std::int64_t i0 = rt * m_all / row_chunks * mr, i1 = std::min(M, (rt + 1) * m_all / row_chunks * mr);
                const std::int64_t s0 = ct * n_slivers / col_chunks, s1 = (ct + 1) * n_slivers / col_chunks;
                const std::int64_t m_slivers = ceil_div(i1 - i0, mr);
                for (std::int64_t pc = 0; pc < K; pc += blk.kc) {
                    const std::int64_t kc = std::min(blk.kc, K - pc);
                    const bool overwrite = pc == 0 && !accumulate;
                    for (std::int64_t s = 0; s < m_slivers; ++s)
                        kern.pack_a(a, i0 + s * mr, std::min(mr, i1 - i0 - s * mr), pc, kc, my_a + s * kc * kern.a_stride);
                    for (std::int64_t jr = s0; jr < s1; ++jr) {
                        const std::int64_t j = jc + jr * nr, cols = std::min(nr, N - j);
                        const T* bp = packed_b + pc * nc_pad + jr * kc * nr;
                        const T* tile_bias = bias && overwrite ? bias + j : nullptr;
                        for (std::int64_t ir = 0; ir < m_slivers; ++ir) {
                            const std::int64_t i = i0 + ir * mr;
                            kern.tile(kc, my_a + ir * kc * kern.a_stride, bp, C + i * N + j, N, std::min(mr, i1 - i),
                                      cols, overwrite, tile_bias);
                        }
                    }
                }
            }
            // the implicit barrier: no thread repacks B while another still reads it
        }
    }
}

template <typename T>
void gemm(const T* A, const T* B, T* C, std::int64_t M, std::int64_t N, std::int64_t K, bool trans_a, bool trans_b,
          bool accumulate, const T* bias) {
    if (M == 0 || N == 0) return;
    if (K == 0) {   // an empty sum: C = bias (or 0), or unchanged when accumulating
        if (!accumulate)
            for (std::int64_t i = 0; i < M; ++i)
                for (std::int64_t j = 0; j < N; ++j) C[i * N + j] = bias ? bias[j] : T(0);
        return;
    }
    if (M == 1) return blas::gemv(A, Operand<T>{B, trans_b ? K : N, trans_b}, C, K, N, accumulate, bias);
    gemm_blocked(A, B, C, M, N, K, trans_a, trans_b, accumulate, bias);
}

// ---- binding

static bool overlaps(const py::array& x, const py::array& y) {
    const char* x0 = static_cast<const char*>(x.data());
    const char* y0 = static_cast<const char*>(y.data());
    return x.nbytes() && y.nbytes() && x0 < y0 + y.nbytes() && y0 < x0 + x.nbytes();
}

static py::array py_matmul(const py::array& a, const py::array& b, bool trans_a, bool trans_b, const py::object& out,
                           bool accumulate, const py::object& bias) {
    const Check check("matmul");
    check.floating("a", a);
    check.floating("b", b);
    check.ndim("a", a, 2);
    check.ndim("b", b, 2);
    check.same_dtype("a", a, "b", b);
    const std::int64_t M = trans_a ? a.shape(1) : a.shape(0), K = trans_a ? a.shape(0) : a.shape(1);
    const std::int64_t Kb = trans_b ? b.shape(1) : b.shape(0), N = trans_b ? b.shape(0) : b.shape(1);
    if (K != Kb)
        check.fail("op(a) is (" + std::to_string(M) + ", " + std::to_string(K) + ") but op(b) is (" +
                   std::to_string(Kb) + ", " + std::to_string(N) + "); the inner dimensions must match (a " +
                   shape_str(a) + ", b " + shape_str(b) + ", trans_a " + (trans_a ? "True" : "False") +
                   ", trans_b " + (trans_b ? "True" : "False") + ")");
    py::array c;
    if (!check.optional("out", out, c)) {
        if (accumulate) check.fail("accumulate=True needs out= to add into");
        c = empty_like(a, {M, N});
    } else {
        check.floating("out", c);
        check.shape("out", c, {M, N});
        check.dtype_of("out", c, "a", a);
        if (!c.writeable()) check.fail("out is read-only");
        if (overlaps(c, a) || overlaps(c, b)) check.fail("out must not overlap a or b");
    }
    py::array bias_array;
    const bool has_bias = check.optional("bias", bias, bias_array);
    if (has_bias) {
        check.floating("bias", bias_array);
        check.shape("bias", bias_array, {N});
        check.dtype_of("bias", bias_array, "a", a);
    }
    dispatch_float(a, [&](auto zero) {
        using T = decltype(zero);
        const T *ap = data<T>(a), *bp = data<T>(b), *biasp = has_bias ? data<T>(bias_array) : nullptr;
        T* cp = mutable_data<T>(c);
        py::gil_scoped_release release;
        gemm(ap, bp, cp, M, N, K, trans_a, trans_b, accumulate, biasp);
    });
    return c;
}

// gemm_blocks(kc, mc, nc) overrides the block sizes (0 = derive from the cache sizes) and returns
// the ones the AVX-512/AVX2/scalar float32 path would now use for a (M, K) x (K, N) product.
static py::tuple py_gemm_blocks(std::int64_t kc, std::int64_t mc, std::int64_t nc, std::int64_t N, std::int64_t K) {
    if (kc < 0 || mc < 0 || nc < 0) Check("gemm_blocks").fail("block sizes must be >= 0 (0 = from the caches)");
    g_blocks_override = Blocks{kc, mc, nc};
    const Blocks b = blocks_for(kernel_for<float>(simd_isa<float>()), std::max<std::int64_t>(N, 1),
                                std::max<std::int64_t>(K, 1));
    return py::make_tuple(b.kc, b.mc, b.nc);
}

void bind_gemm(py::module_& m) {
    m.def("gemm_blocks", &py_gemm_blocks, py::arg("kc") = 0, py::arg("mc") = 0, py::arg("nc") = 0,
          py::arg("N") = 1024, py::arg("K") = 1024,
          "Override the GEMM's block sizes KC, MC, NC (0 = from the cache sizes; for tests and tuning); returns "
          "the (kc, mc, nc) a float32 (M, K) x (K, N) product now uses.");
    m.def("matmul", &py_matmul, py::arg("a"), py::arg("b"), py::arg("trans_a") = false, py::arg("trans_b") = false,
          py::arg("out") = py::none(), py::arg("accumulate") = false, py::arg("bias") = py::none(),
          "C = op(a) op(b) (+ out when accumulate) (+ bias on every row); op transposes when trans_* is set. "
          "2-D, C-contiguous float32/float64.");
}

}  // namespace minillm
