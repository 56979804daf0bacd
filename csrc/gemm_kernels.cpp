// The scalar and AVX2 paths of the GEMM (gemm.h has the interface, gemm.cpp the driver):
// packing one sliver of A or B, and the register-tile product. The scalar tile is the obviously
// right twin every SIMD tile must equal; float64 always takes it.
//   scalar: 6 x 16 tile in a temporary, plain loops
//   AVX2:   6 x 16 tile in 12 ymm accumulators; B slivers of NT (y = x W^T) transposed 8 x 8 in
//           registers
#include <algorithm>
#include <cstring>

#include "gemm.h"

namespace minillm {
namespace blas {

namespace {

constexpr std::int64_t MR = 6, NR = 16;   // both paths: 6 x 16 floats = 12 ymm accumulators on AVX2

template <typename T>
void pack_a_scalar(const Operand<T>& a, std::int64_t i0, std::int64_t rows, std::int64_t k0, std::int64_t kc,
                   T* dst) {
    for (std::int64_t k = 0; k < kc; ++k)
        for (std::int64_t r = 0; r < MR; ++r) dst[k * MR + r] = r < rows ? a.at(i0 + r, k0 + k) : T(0);
}

template <typename T>
void pack_b_scalar(const Operand<T>& b, std::int64_t k0, std::int64_t kc, std::int64_t j0, std::int64_t cols,
                   T* dst) {
    if (!b.trans) {   // rows of B are contiguous: copy kc rows of cols values
        for (std::int64_t k = 0; k < kc; ++k) {
            const T* src = b.p + (k0 + k) * b.ld + j0;
            T* d = dst + k * NR;
            std::int64_t j = 0;
            for (; j < cols; ++j) d[j] = src[j];
            for (; j < NR; ++j) d[j] = T(0);
        }
    } else {          // B stored (N, K): read each of the NR rows of B along k
        for (std::int64_t j = 0; j < NR; ++j)
            for (std::int64_t k = 0; k < kc; ++k) dst[k * NR + j] = j < cols ? b.p[(j0 + j) * b.ld + k0 + k] : T(0);
    }
}

// C tile (rows x cols at c) = acc (MR x NR, row-major) (+ bias) when overwrite, else += acc.
template <typename T>
void write_tile(const T* acc, T* c, std::int64_t ldc, std::int64_t rows, std::int64_t cols, bool overwrite,
                const T* bias) {
    for (std::int64_t r = 0; r < rows; ++r) {
        T* row = c + r * ldc;
        const T* a = acc + r * NR;
        if (overwrite) {
            for (std::int64_t j = 0; j < cols; ++j) row[j] = a[j] + (bias ? bias[j] : T(0));
        } else {
            for (std::int64_t j = 0; j < cols; ++j) row[j] += a[j];
        }
    }
}

template <typename T>
void tile_scalar(std::int64_t kc, const T* ap, const T* bp, T* c, std::int64_t ldc, std::int64_t rows,
                 std::int64_t cols, bool overwrite, const T* bias) {
    T acc[MR * NR] = {};
    for (std::int64_t k = 0; k < kc; ++k)
        for (std::int64_t r = 0; r < MR; ++r)
            for (std::int64_t j = 0; j < NR; ++j) acc[r * NR + j] += ap[k * MR + r] * bp[k * NR + j];
    write_tile(acc, c, ldc, rows, cols, overwrite, bias);
}

#if MINILLM_X86
// Rows [0, 8) x columns [0, 8) of src (leading dimension lds) transposed into dst (leading dimension ldd).
MINILLM_AVX2 inline void transpose8x8(const float* src, std::int64_t lds, float* dst, std::int64_t ldd) {
    __m256 r[8], t[8];
    for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * lds);
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int i = 0; i < 4; ++i) {
        _mm256_storeu_ps(dst + i * ldd, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
        _mm256_storeu_ps(dst + (i + 4) * ldd, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
    }
}

// B stored (N, K) (the forward's W): 8 x 8 blocks of the sliver's 16 rows transposed in registers,
// edges (k % 8, and rows past `cols`) by the scalar loop.
MINILLM_AVX2 void pack_b_avx2(const Operand<float>& b, std::int64_t k0, std::int64_t kc, std::int64_t j0,
                              std::int64_t cols, float* dst) {
    if (!b.trans || cols < NR) return pack_b_scalar(b, k0, kc, j0, cols, dst);
    const std::int64_t k8 = kc / 8 * 8;
    for (std::int64_t k = 0; k < k8; k += 8)
        for (std::int64_t j = 0; j < NR; j += 8) transpose8x8(b.p + (j0 + j) * b.ld + k0 + k, b.ld, dst + k * NR + j, NR);
    for (std::int64_t k = k8; k < kc; ++k)
        for (std::int64_t j = 0; j < NR; ++j) dst[k * NR + j] = b.p[(j0 + j) * b.ld + k0 + k];
}

// The 6 x 16 tile in 12 ymm registers: per k, two loads of B, six broadcasts of A, twelve FMAs.
MINILLM_AVX2 void tile_avx2(std::int64_t kc, const float* ap, const float* bp, float* c, std::int64_t ldc,
                            std::int64_t rows, std::int64_t cols, bool overwrite, const float* bias) {
    __m256 acc[MR][2];
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (std::int64_t k = 0; k < kc; ++k) {
        const __m256 b0 = _mm256_load_ps(bp), b1 = _mm256_load_ps(bp + 8);   // 64-byte aligned rows
#pragma GCC unroll 6
        for (int r = 0; r < MR; ++r) {
            const __m256 a = _mm256_broadcast_ss(ap + r);
            acc[r][0] = _mm256_fmadd_ps(a, b0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(a, b1, acc[r][1]);
        }
        ap += MR;
        bp += NR;
    }
    if (rows == MR && cols == NR) {   // a full tile: straight from the registers
        const __m256 bias0 = overwrite && bias ? _mm256_loadu_ps(bias) : _mm256_setzero_ps();
        const __m256 bias1 = overwrite && bias ? _mm256_loadu_ps(bias + 8) : _mm256_setzero_ps();
#pragma GCC unroll 6
        for (int r = 0; r < MR; ++r) {
            float* row = c + r * ldc;
            const __m256 old0 = overwrite ? bias0 : _mm256_loadu_ps(row);
            const __m256 old1 = overwrite ? bias1 : _mm256_loadu_ps(row + 8);
            _mm256_storeu_ps(row, _mm256_add_ps(acc[r][0], old0));
            _mm256_storeu_ps(row + 8, _mm256_add_ps(acc[r][1], old1));
        }
        return;
    }
    alignas(32) float tmp[MR * NR];   // an edge tile goes through a temporary
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) {
        _mm256_store_ps(tmp + r * NR, acc[r][0]);
        _mm256_store_ps(tmp + r * NR + 8, acc[r][1]);
    }
    write_tile(tmp, c, ldc, rows, cols, overwrite, bias);
}
#endif

}  // namespace

template <typename T>
Kernel<T> scalar_kernel() {
    return Kernel<T>{MR, NR, MR, &pack_a_scalar<T>, &pack_b_scalar<T>, &tile_scalar<T>};
}
template Kernel<float> scalar_kernel<float>();
template Kernel<double> scalar_kernel<double>();

#if MINILLM_X86
Kernel<float> avx2_kernel() { return Kernel<float>{MR, NR, MR, &pack_a_scalar<float>, &pack_b_avx2, &tile_avx2}; }
#endif

}  // namespace blas
}  // namespace minillm
