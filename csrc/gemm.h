// What the blocked GEMM driver (gemm.cpp) needs from each instruction-set path: the register
// tile's shape, how to pack one sliver of A and of B, and the tile product itself. One Kernel per
// path: scalar (float and double) and AVX2 in gemm_kernels.cpp, AVX-512 in gemm_avx512.cpp. The
// GEMV (M = 1, gemv.cpp) streams B once and has no packing.
//
// Packed layouts (each sliver zero-padded to its full width):
//   A sliver: rows i0 .. i0 + mr of op(A), k-major: dst[k * a_stride + r]   (a_stride >= mr)
//   B sliver: columns j0 .. j0 + nr of op(B), k-major: dst[k * nr + j]      (64-byte aligned rows)
#pragma once

#include <cstdint>

#include "simd.h"

namespace minillm {
namespace blas {

template <typename T>
struct Operand {   // element (i, k) of op(X), X stored row-major with leading dimension ld
    const T* p;
    std::int64_t ld;
    bool trans;
    T at(std::int64_t i, std::int64_t k) const { return trans ? p[k * ld + i] : p[i * ld + k]; }
};

template <typename T>
struct Kernel {
    std::int64_t mr, nr;     // the register tile: mr rows of C by nr columns
    std::int64_t a_stride;   // values per k in a packed A sliver (>= mr)
    // Pack op(A)[i0 : i0 + rows, k0 : k0 + kc] (rows <= mr) as one A sliver.
    void (*pack_a)(const Operand<T>& a, std::int64_t i0, std::int64_t rows, std::int64_t k0, std::int64_t kc,
                   T* dst);
    // Pack op(B)[k0 : k0 + kc, j0 : j0 + cols] (cols <= nr) as one B sliver.
    void (*pack_b)(const Operand<T>& b, std::int64_t k0, std::int64_t kc, std::int64_t j0, std::int64_t cols,
                   T* dst);
    // C[0 : rows, 0 : cols] (leading dimension ldc) = ap . bp (+ bias) when overwrite, else += ap . bp,
    // where ap . bp = sum over k < kc of A sliver column k (outer) B sliver row k.
    void (*tile)(std::int64_t kc, const T* ap, const T* bp, T* c, std::int64_t ldc, std::int64_t rows,
                 std::int64_t cols, bool overwrite, const T* bias);
};

template <typename T>
Kernel<T> scalar_kernel();   // gemm_kernels.cpp
#if MINILLM_X86
Kernel<float> avx2_kernel();     // gemm_kernels.cpp
Kernel<float> avx512_kernel();   // gemm_avx512.cpp
#endif

// y (N) = x (K) op(B) [+ y when accumulate] [+ bias]: the M = 1 case (gemv.cpp).
template <typename T>
void gemv(const T* x, const Operand<T>& b, T* y, std::int64_t K, std::int64_t N, bool accumulate, const T* bias);

}  // namespace blas
}  // namespace minillm
