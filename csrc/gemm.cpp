// GEMM: C (M, N) = op(A) op(B) (+ C when accumulating) (+ bias on every row), float32 and float64.
//
// op(A) is (M, K): A is stored (M, K) row-major, or (K, M) when trans_a. op(B) is (K, N): B is
// stored (K, N), or (N, K) when trans_b. Transposes are absorbed by the packing, never copied.
//
// The BLIS structure, loops from the outside in:
//   jc over N in NC columns
//     pc over K in KC:     pack op(B)[pc:pc+KC, jc:jc+NC] into NR-wide slivers (k-major, zero-padded)
//       ic over M in MC:   pack op(A)[ic:ic+MC, pc:pc+KC] into MR-tall slivers (k-major, zero-padded)
//         jr over NC in NR   (OpenMP: the threads share the packed A block and split the slivers of B)
//           ir over MC in MR
//             micro-kernel: KC rank-1 updates of an MR x NR tile held in registers
// The first pc block writes C (with the bias), later ones add to it; edge tiles go through a
// small temporary tile. M = 1 (a decode step's GEMV) has its own path: it streams B once.
// Binding at the bottom: matmul.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "binding.h"
#include "simd.h"

namespace minillm {

namespace {

constexpr std::int64_t MR = 6, NR = 16;       // 6 x 16 floats = 12 ymm accumulators
constexpr std::int64_t MC = 144, KC = 256;    // an A block (MC x KC floats, 144 KiB) fits the 512 KiB L2
constexpr std::int64_t NC = 4080;             // a B panel (KC x NC, 4 MiB) stays in the shared L3

template <typename T>
struct Operand {   // element (i, k) of op(X), X stored row-major with leading dimension ld
    const T* p;
    std::int64_t ld;
    bool trans;
    T at(std::int64_t i, std::int64_t k) const { return trans ? p[k * ld + i] : p[i * ld + k]; }
};

// Pack op(A)[i0:i0+mc, k0:k0+kc] as ceil(mc/MR) slivers, each kc columns of MR values (zero-padded).
template <typename T>
void pack_a_sliver(const Operand<T>& a, std::int64_t i0, std::int64_t rows, std::int64_t k0, std::int64_t kc,
                   T* dst) {
    if (!a.trans) {
        for (std::int64_t r = 0; r < MR; ++r) {
            const T* src = a.p + (i0 + r) * a.ld + k0;
            for (std::int64_t k = 0; k < kc; ++k) dst[k * MR + r] = r < rows ? src[k] : T(0);
        }
    } else {
        for (std::int64_t k = 0; k < kc; ++k) {
            const T* src = a.p + (k0 + k) * a.ld + i0;
            for (std::int64_t r = 0; r < MR; ++r) dst[k * MR + r] = r < rows ? src[r] : T(0);
        }
    }
}

// Pack op(B)[k0:k0+kc, j0:j0+cols] as one sliver: kc rows of NR values (zero-padded).
template <typename T>
void pack_b_sliver(const Operand<T>& b, std::int64_t k0, std::int64_t kc, std::int64_t j0, std::int64_t cols,
                   T* dst) {
    if (!b.trans) {   // b.at(k, j) = B[k][j]: rows of B are contiguous
        for (std::int64_t k = 0; k < kc; ++k) {
            const T* src = b.p + (k0 + k) * b.ld + j0;
            T* d = dst + k * NR;
            std::int64_t j = 0;
            for (; j < cols; ++j) d[j] = src[j];
            for (; j < NR; ++j) d[j] = T(0);
        }
    } else {          // b.at(k, j) = B[j][k]: read each of the NR rows of B along k
        for (std::int64_t j = 0; j < NR; ++j) {
            if (j < cols) {
                const T* src = b.p + (j0 + j) * b.ld + k0;
                for (std::int64_t k = 0; k < kc; ++k) dst[k * NR + j] = src[k];
            } else {
                for (std::int64_t k = 0; k < kc; ++k) dst[k * NR + j] = T(0);
            }
        }
    }
}

// acc (MR x NR, row-major) = sum over k of Ap[k] (MR) outer Bp[k] (NR): the obviously-right twin.
template <typename T>
void micro_kernel_scalar(std::int64_t kc, const T* ap, const T* bp, T* acc) {
    for (std::int64_t i = 0; i < MR * NR; ++i) acc[i] = T(0);
    for (std::int64_t k = 0; k < kc; ++k)
        for (std::int64_t r = 0; r < MR; ++r)
            for (std::int64_t j = 0; j < NR; ++j) acc[r * NR + j] += ap[k * MR + r] * bp[k * NR + j];
}

#if MINILLM_X86
// The same product with the 6 x 16 tile in 12 ymm registers: per k, two loads of B, six
// broadcasts of A, twelve FMAs.
MINILLM_AVX2 void micro_kernel_avx2(std::int64_t kc, const float* ap, const float* bp, float* acc) {
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    for (std::int64_t k = 0; k < kc; ++k) {
        const __m256 b0 = _mm256_load_ps(bp), b1 = _mm256_load_ps(bp + 8);   // 64-byte aligned rows
        __m256 a = _mm256_broadcast_ss(ap + 0);
        c00 = _mm256_fmadd_ps(a, b0, c00), c01 = _mm256_fmadd_ps(a, b1, c01);
        a = _mm256_broadcast_ss(ap + 1);
        c10 = _mm256_fmadd_ps(a, b0, c10), c11 = _mm256_fmadd_ps(a, b1, c11);
        a = _mm256_broadcast_ss(ap + 2);
        c20 = _mm256_fmadd_ps(a, b0, c20), c21 = _mm256_fmadd_ps(a, b1, c21);
        a = _mm256_broadcast_ss(ap + 3);
        c30 = _mm256_fmadd_ps(a, b0, c30), c31 = _mm256_fmadd_ps(a, b1, c31);
        a = _mm256_broadcast_ss(ap + 4);
        c40 = _mm256_fmadd_ps(a, b0, c40), c41 = _mm256_fmadd_ps(a, b1, c41);
        a = _mm256_broadcast_ss(ap + 5);
        c50 = _mm256_fmadd_ps(a, b0, c50), c51 = _mm256_fmadd_ps(a, b1, c51);
        ap += MR;
        bp += NR;
    }
    _mm256_storeu_ps(acc + 0, c00), _mm256_storeu_ps(acc + 8, c01);
    _mm256_storeu_ps(acc + 16, c10), _mm256_storeu_ps(acc + 24, c11);
    _mm256_storeu_ps(acc + 32, c20), _mm256_storeu_ps(acc + 40, c21);
    _mm256_storeu_ps(acc + 48, c30), _mm256_storeu_ps(acc + 56, c31);
    _mm256_storeu_ps(acc + 64, c40), _mm256_storeu_ps(acc + 72, c41);
    _mm256_storeu_ps(acc + 80, c50), _mm256_storeu_ps(acc + 88, c51);
}

// A full MR x NR tile of C (leading dim ldc) = acc (+ bias) when overwrite, else += acc.
MINILLM_AVX2 void write_full_tile_avx2(const float* acc, float* c, std::int64_t ldc, bool overwrite,
                                       const float* bias) {
    const __m256 bias0 = bias ? _mm256_loadu_ps(bias) : _mm256_setzero_ps();
    const __m256 bias1 = bias ? _mm256_loadu_ps(bias + 8) : _mm256_setzero_ps();
    for (int r = 0; r < MR; ++r) {
        float* row = c + r * ldc;
        __m256 v0 = _mm256_loadu_ps(acc + r * NR), v1 = _mm256_loadu_ps(acc + r * NR + 8);
        if (overwrite) {
            v0 = _mm256_add_ps(v0, bias0), v1 = _mm256_add_ps(v1, bias1);
        } else {
            v0 = _mm256_add_ps(v0, _mm256_loadu_ps(row)), v1 = _mm256_add_ps(v1, _mm256_loadu_ps(row + 8));
        }
        _mm256_storeu_ps(row, v0);
        _mm256_storeu_ps(row + 8, v1);
    }
}
#endif

template <typename T>
void micro_kernel(Isa isa, std::int64_t kc, const T* ap, const T* bp, T* acc) {
    MINILLM_USE_AVX2(T, isa, micro_kernel_avx2(kc, ap, bp, acc));
    micro_kernel_scalar(kc, ap, bp, acc);
}

// C tile (rows x cols at c, leading dim ldc) = acc (+ bias) when overwrite, else += acc.
template <typename T>
void write_tile(const T* acc, T* c, std::int64_t ldc, std::int64_t rows, std::int64_t cols, bool overwrite,
                const T* bias) {
    for (std::int64_t r = 0; r < rows; ++r) {
        T* row = c + r * ldc;
        const T* a = acc + r * NR;
        if (overwrite) {
            if (bias) for (std::int64_t j = 0; j < cols; ++j) row[j] = a[j] + bias[j];
            else for (std::int64_t j = 0; j < cols; ++j) row[j] = a[j];
        } else {
            for (std::int64_t j = 0; j < cols; ++j) row[j] += a[j];
        }
    }
}

// The same with a full MR x NR tile in registers when the CPU allows.
template <typename T>
void store_tile(Isa isa, const T* acc, T* c, std::int64_t ldc, std::int64_t rows, std::int64_t cols, bool overwrite,
                const T* bias) {
    if (rows == MR && cols == NR) {
        MINILLM_USE_AVX2(T, isa, write_full_tile_avx2(acc, c, ldc, overwrite, bias));
    }
    write_tile(acc, c, ldc, rows, cols, overwrite, bias);
}

#if MINILLM_X86
// <x, row> over K floats with two 8-wide FMA accumulators.
MINILLM_AVX2 float dot_avx2(const float* x, const float* row, std::int64_t K) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    std::int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), _mm256_loadu_ps(row + k), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 8), _mm256_loadu_ps(row + k + 8), s1);
    }
    float s = hsum(_mm256_add_ps(s0, s1));
    for (; k < K; ++k) s += x[k] * row[k];
    return s;
}
#endif

template <typename T>
T dot(Isa isa, const T* x, const T* row, std::int64_t K) {
    MINILLM_USE_AVX2(T, isa, dot_avx2(x, row, K));
    T s0 = 0, s1 = 0, s2 = 0, s3 = 0;   // four partial sums: independent chains
    std::int64_t k = 0;
    for (; k + 4 <= K; k += 4) {
        s0 += x[k] * row[k], s1 += x[k + 1] * row[k + 1];
        s2 += x[k + 2] * row[k + 2], s3 += x[k + 3] * row[k + 3];
    }
    for (; k < K; ++k) s0 += x[k] * row[k];
    return (s0 + s1) + (s2 + s3);
}

// y (N) = x (K) op(B) [+ y] [+ bias]: the M = 1 case, memory-bound, so B is read exactly once.
template <typename T>
void gemv(const T* x, const Operand<T>& b, T* y, std::int64_t K, std::int64_t N, bool accumulate, const T* bias) {
    const Isa isa = simd_isa<T>();
    if (b.trans) {    // B (N, K): y_j = <x, B_j>, rows of B contiguous; threads split the rows
#if defined(MINILLM_OPENMP)
#pragma omp parallel for schedule(static) if (N * K >= kParallelThreshold)
#endif
        for (std::int64_t j = 0; j < N; ++j) {
            const T s = dot(isa, x, b.p + j * b.ld, K) + (bias ? bias[j] : T(0));
            y[j] = accumulate ? y[j] + s : s;
        }
    } else {          // B (K, N): y = sum_k x_k B[k, :]; threads split the columns
        constexpr std::int64_t CHUNK = 512;
        const std::int64_t chunks = (N + CHUNK - 1) / CHUNK;
#if defined(MINILLM_OPENMP)
#pragma omp parallel for schedule(static) if (N * K >= kParallelThreshold)
#endif
        for (std::int64_t c = 0; c < chunks; ++c) {
            const std::int64_t j0 = c * CHUNK, j1 = std::min(N, j0 + CHUNK);
            T acc[CHUNK];
            for (std::int64_t j = j0; j < j1; ++j) acc[j - j0] = bias ? bias[j] : T(0);
            for (std::int64_t k = 0; k < K; ++k) {
                const T xk = x[k];
                const T* row = b.p + k * b.ld;
                for (std::int64_t j = j0; j < j1; ++j) acc[j - j0] += xk * row[j];   // vectorised by -O3
            }
            for (std::int64_t j = j0; j < j1; ++j) y[j] = accumulate ? y[j] + acc[j - j0] : acc[j - j0];
        }
    }
}

// A zero-initialised array of n T's starting on a 64-byte boundary.
template <typename T>
class AlignedBuffer {
  public:
    explicit AlignedBuffer(std::int64_t n) : storage_(static_cast<size_t>(n) + 64 / sizeof(T)) {
        auto address = reinterpret_cast<std::uintptr_t>(storage_.data());
        data_ = reinterpret_cast<T*>((address + 63) & ~std::uintptr_t(63));
    }
    T* data() { return data_; }

  private:
    std::vector<T> storage_;
    T* data_;
};

}  // namespace

template <typename T>
void gemm(const T* A, const T* B, T* C, std::int64_t M, std::int64_t N, std::int64_t K, bool trans_a, bool trans_b,
          bool accumulate, const T* bias) {
    const Operand<T> a{A, trans_a ? M : K, trans_a}, b{B, trans_b ? K : N, trans_b};
    if (M == 0 || N == 0) return;
    if (K == 0) {   // an empty sum: C = bias (or 0), or unchanged when accumulating
        if (!accumulate)
            for (std::int64_t i = 0; i < M; ++i)
                for (std::int64_t j = 0; j < N; ++j) C[i * N + j] = bias ? bias[j] : T(0);
        return;
    }
    if (M == 1) return gemv(A, b, C, K, N, accumulate, bias);

    const Isa isa = simd_isa<T>();
    const std::int64_t nc_max = std::min(NC, (N + NR - 1) / NR * NR), kc_max = std::min(KC, K);
    const std::int64_t mc_max = std::min(MC, (M + MR - 1) / MR * MR);
    // packed panels start on a cache line, so each k-row of a B sliver (16 floats = 64 bytes) is one line
    AlignedBuffer<T> packed_b(kc_max * nc_max), packed_a(kc_max * mc_max);
    const bool parallel = M * N * K >= 64 * 64 * 64;

    for (std::int64_t jc = 0; jc < N; jc += NC) {
        const std::int64_t nc = std::min(NC, N - jc), n_slivers = (nc + NR - 1) / NR;
        for (std::int64_t pc = 0; pc < K; pc += KC) {
            const std::int64_t kc = std::min(KC, K - pc);
            const bool overwrite = pc == 0 && !accumulate;
#if defined(MINILLM_OPENMP)
#pragma omp parallel if (parallel)
#endif
            {
#if defined(MINILLM_OPENMP)
#pragma omp for schedule(static)
#endif
                for (std::int64_t s = 0; s < n_slivers; ++s)
                    pack_b_sliver(b, pc, kc, jc + s * NR, std::min(NR, nc - s * NR), packed_b.data() + s * kc * NR);

                for (std::int64_t ic = 0; ic < M; ic += MC) {
                    const std::int64_t mc = std::min(MC, M - ic), m_slivers = (mc + MR - 1) / MR;
#if defined(MINILLM_OPENMP)
#pragma omp for schedule(static)
#endif
                    for (std::int64_t s = 0; s < m_slivers; ++s)
                        pack_a_sliver(a, ic + s * MR, std::min(MR, mc - s * MR), pc, kc, packed_a.data() + s * kc * MR);

                    // the implicit barrier above: packed A is complete; now split the slivers of B
#if defined(MINILLM_OPENMP)
#pragma omp for schedule(static)
#endif
                    for (std::int64_t jr = 0; jr < n_slivers; ++jr) {
                        alignas(32) T acc[MR * NR];
                        const std::int64_t j = jc + jr * NR, cols = std::min(NR, N - j);
                        const T* bp = packed_b.data() + jr * kc * NR;
                        const T* tile_bias = bias && overwrite ? bias + j : nullptr;
                        for (std::int64_t ir = 0; ir < m_slivers; ++ir) {
                            const std::int64_t i = ic + ir * MR, rows = std::min(MR, M - i);
                            micro_kernel(isa, kc, packed_a.data() + ir * kc * MR, bp, acc);
                            store_tile(isa, acc, C + i * N + j, N, rows, cols, overwrite, tile_bias);
                        }
                    }
                    // the implicit barrier: no thread repacks A while another still reads it
                }
            }
        }
    }
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

void bind_gemm(py::module_& m) {
    m.def("matmul", &py_matmul, py::arg("a"), py::arg("b"), py::arg("trans_a") = false, py::arg("trans_b") = false,
          py::arg("out") = py::none(), py::arg("accumulate") = false, py::arg("bias") = py::none(),
          "C = op(a) op(b) (+ out when accumulate) (+ bias on every row); op transposes when trans_* is set. "
          "2-D, C-contiguous float32/float64.");
}

}  // namespace minillm
